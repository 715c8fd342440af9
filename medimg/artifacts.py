"""Where a retrain run's records lie among its MLflow artifacts.

One layout, shared by the steps that write the records and by lineage, pull, drift and reproduce
that read them back, so a reader never looks where nothing was written. The paths are part of
what auditors and deployment pipelines rely on: renaming one is a breaking change for runs
already recorded. Artifact paths are POSIX paths whatever the platform.
"""

from __future__ import annotations

import posixpath

INGEST_REPORT = "data/ingest.json"
DRIFT_REPORT = "data/drift.json"
QUARANTINE_DIR = "data"  # the CSV of the files set aside at ingest: pseudonyms and reason codes
VALIDATION_DIR = "validation"  # the Great Expectations report, JSON and HTML
EVALUATION_DIR = "evaluation"  # metrics.json and the prediction CSVs
TEST_PREDICTIONS = "evaluation/test_predictions.csv"
VAL_PREDICTIONS = "evaluation/val_predictions.csv"
FIGURES_DIR = "evaluation/figures"
ROC_CURVE = "evaluation/figures/roc_curve.png"
GATE_REPORT = "gates/gate_report.json"
PARITY_REPORT = "export/parity.json"
REPRODUCTION_REPORT = "reproduction/comparison.json"


def folder(artifact: str) -> str:
    """The artifact folder to log a local file into so that it lands at ``artifact``."""
    return posixpath.dirname(artifact)


def filename(artifact: str) -> str:
    """The local file name that lands at ``artifact`` when logged into :func:`folder`."""
    return posixpath.basename(artifact)
