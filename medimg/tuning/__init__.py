"""Hyperparameter studies and ensembles.

``space`` (the search space, pure), ``study`` (Optuna storage, sampler, pruner), ``objective`` (one trial on a Dask
worker), ``runs`` (the MLflow parent and child runs), ``plots`` (the study's figures), ``best_params`` (the best trial
as a params file for the normal flow), ``results`` (the records handed between them) and ``ensemble`` (members and
test-time flips as one network, exported as one ONNX graph). :mod:`flows.tune` puts them together.
"""
