"""The names a retrain run records under: MLflow artifact paths, run and model-version tags, ONNX metadata keys.

One vocabulary, shared by the steps and modules that write the records and by lineage, pull,
status, drift, predict and reproduce that read them back, so a reader never looks where nothing
was written and no name is spelled twice. The names are part of what auditors and deployment
pipelines rely on: renaming one is a breaking change for runs and models already recorded.
Artifact paths are POSIX paths whatever the platform. The MLflow I/O itself lives in
:mod:`medimg.tracking` (runs) and :mod:`medimg.registry` (registered models).
"""

from __future__ import annotations

import posixpath

# --------------------------------------------------------------------------- MLflow run artifacts

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
EVALUATION_REPORT = "evaluation/metrics.json"  # the evaluate step's metrics.json
#: The register step's model card (medimg.model_card): JSON, and its Markdown (the version's description).
MODEL_CARD = "model_card/model_card.json"
MODEL_CARD_MD = "model_card/model_card.md"
PARITY_REPORT = "export/parity.json"
REPRODUCTION_REPORT = "reproduction/comparison.json"
#: The registered model's artifact folder in its run, and the ONNX file in it.
MODEL_ARTIFACT = "model"
ONNX_FILE = "model.onnx"

# --------------------------------------------------------------------------- tags (MLflow runs and model versions)
# Lineage tags: on the retrain's MLflow run and on the model version registered from it.
TAG_DATA_VERSION = "medimg.data_version"
TAG_GIT_COMMIT = "medimg.git_commit"
#: Content hash of the package source (:func:`medimg.provenance.code_hash`): the code part of the run key.
TAG_CODE_HASH = "medimg.code_hash"
TAG_PARAMS_HASH = "medimg.params_hash"
TAG_FLOW_RUN = "medimg.flow_run_id"
TAG_VALIDATION = "medimg.validation_passed"
TAG_GATE = "medimg.gate_passed"
TAG_GATE_FAILED = "medimg.gate_failed_rules"  # comma-separated rule names, or "none"

# Run tags: the retrain's bookkeeping (medimg.tracking).
TAG_RUN_KEY = "medimg.run_key"
TAG_RUN_KEY_CHECKED = "medimg.run_key_checked"  # on a run that trained nothing: the key it found done
TAG_OUTCOME = "medimg.outcome"  # promoted, not_promoted, failed, up_to_date, no_drift
TAG_REASON = "medimg.reason"
TAG_FLOW_RUN_NAME = "medimg.flow_run_name"
TAG_RESUMED_BY = "medimg.resumed_by_flow_run"
TAG_MODEL_VERSION = "medimg.model_version"
TAG_ALIAS = "medimg.alias"

# Run tags of a reproduction (medimg.reproduce).
TAG_REPRODUCES = "medimg.reproduces"
TAG_REPRODUCES_RUN = "medimg.reproduces_run_id"
TAG_REPRODUCES_MODEL = "medimg.reproduces_model"
TAG_REPRODUCTION_WITHIN_CI = "medimg.reproduction_auc_within_ci"
TAG_REPRODUCTION_IDENTICAL = "medimg.reproduction_identical"

# Model-version tags: the file, and the alias history (medimg.promotion).
TAG_ONNX_SHA256 = "medimg.onnx_sha256"
TAG_PARITY = "medimg.onnx_parity_max_abs_diff"
TAG_PROMOTED_AT = "medimg.promoted_at"
TAG_PROMOTION_REASON = "medimg.promotion_reason"
TAG_PREVIOUS_CHAMPION = "medimg.previous_champion"
TAG_PROMOTION_FORCED = "medimg.promotion_forced"
TAG_ROLLED_BACK_AT = "medimg.rolled_back_at"
TAG_ROLLBACK_REASON = "medimg.rollback_reason"
#: Registered-model tags ``medimg.audit.000001``, ``...000002``: one JSON audit event each, the same
#: line as in the workspace's ``audit.jsonl``, readable in the MLflow UI beside the model.
AUDIT_TAG_PREFIX = "medimg.audit."
#: Every medimg tag name starts with this.
TAG_PREFIX = "medimg."

# --------------------------------------------------------------------------- ONNX metadata_props keys
# Written by medimg.steps.export.metadata, read by medimg.scoring, pull and lineage. Values are
# strings; lists and dicts are JSON.
META_CLASS_NAMES = "medimg.class_names"  # JSON list, index = class
META_TASK_KIND = "medimg.task_kind"  # binary | multiclass; absent in models exported before issue 12: binary
#: JSON list of the abnormal class names; p_abnormal = sum of softmax(logits) over them. Absent in models
#: exported before issue 12: the class at index 1.
META_ABNORMAL_CLASSES = "medimg.abnormal_classes"
META_POSITIVE_CLASS = "medimg.positive_class"  # binary tasks only: the abnormal class (may be index 0)
META_THRESHOLD = "medimg.threshold"  # flagged abnormal when p_abnormal >= threshold
META_OUTPUT = "medimg.output"  # one sentence: what the output means for the task
META_INPUT_NAME = "medimg.input_name"
META_INPUT_LAYOUT = "medimg.input_layout"
META_PREPROCESSING = "medimg.preprocessing"  # the preprocessing contract (JSON) consumers rebuild the input from
META_PREPROCESSING_HASH = "medimg.preprocessing_hash"
META_DATA_VERSION = "medimg.data_version"
META_GIT_COMMIT = "medimg.git_commit"
META_CODE_HASH = "medimg.code_hash"
#: JSON {min_pixel_std, bit_depth_range, original_side_range}: the validation limits the training data passed
META_INPUT_CHECKS = "medimg.input_checks"
META_MODALITIES = "medimg.modalities"  # JSON list of DICOM Modality values the model is for
META_BODY_PART = "medimg.body_part"  # DICOM Body Part Examined the model is for, when known
META_MLFLOW_RUN_ID = "medimg.mlflow_run_id"
META_ARCHITECTURE = "medimg.architecture"
META_PARAMS_HASH = "medimg.params_hash"
#: The registered model name (``registry.model_name``) the model was exported for; segmentation models name it in
#: the DICOM Segmentation objects they write when predicted from a file rather than from the registry.
META_MODEL_NAME = "medimg.model_name"
#: An ensemble / test-time augmentation graph (:mod:`medimg.tuning.ensemble`): JSON naming the members
#: (index, seed, MLflow run), the flips and how they are combined; absent for a plain model.
META_ENSEMBLE = "medimg.ensemble"


def folder(artifact: str) -> str:
    """The artifact folder to log a local file into so that it lands at ``artifact``."""
    return posixpath.dirname(artifact)


def filename(artifact: str) -> str:
    """The local file name that lands at ``artifact`` when logged into :func:`folder`."""
    return posixpath.basename(artifact)
