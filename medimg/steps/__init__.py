"""One module per step of the retraining pipeline: plain functions that Prefect tasks wrap.

Each step takes typed params, the workspace and the earlier steps' contracts (frozen pydantic
models of :mod:`medimg.contracts`, or the one value it needs: a data version), does its I/O
through the modules named for it (versioning, :mod:`medimg.tracking` and :mod:`medimg.registry`
for MLflow, ...) and returns its own contract. Nothing here imports Prefect or MLflow, and no
step imports another (shared paths live on :class:`medimg.workspace.Workspace`), so each step
also runs and tests alone.
"""
