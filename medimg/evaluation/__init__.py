"""Evaluation of a classifier's test-set predictions (binary, or K classes decided by arg-max).

Everything a promotion decision rests on is computed here, from one set of definitions, so that
the number in a report, in an MLflow run and in a gate is the same number:

* ``metrics``   -- point metrics at an operating threshold (sensitivity, AUC, calibration, ...);
* ``multiclass`` -- point metrics of a K-class task (balanced accuracy, macro AUC, kappa, per class);
* ``threshold`` -- how the operating threshold is chosen from predictions;
* ``bootstrap`` -- stratified bootstrap confidence intervals and a paired AUC comparison;
* ``multiclass_bootstrap`` -- their class-stratified multi-class counterparts (macro AUC paired);
* ``gates``     -- the promotion rules, each a small pure function with a readable verdict;
* ``plots``     -- PNG figures for reports (the only module here that writes files).

The modules take plain arrays and numbers and return plain data; none of them knows about
training, tracking or orchestration.
"""
