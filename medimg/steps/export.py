"""Step 6: ONNX export with metadata, ``onnx.checker`` and parity against PyTorch on real images."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from medimg import artifacts, preprocess, tracking
from medimg.artifacts import (
    META_ARCHITECTURE,
    META_BODY_PART,
    META_CLASS_NAMES,
    META_CODE_HASH,
    META_DATA_VERSION,
    META_GIT_COMMIT,
    META_INPUT_CHECKS,
    META_INPUT_LAYOUT,
    META_INPUT_NAME,
    META_MLFLOW_RUN_ID,
    META_MODALITIES,
    META_OUTPUT,
    META_PARAMS_HASH,
    META_POSITIVE_CLASS,
    META_PREPROCESSING,
    META_PREPROCESSING_HASH,
    META_THRESHOLD,
)
from medimg.config import Params
from medimg.contracts import EvaluationSummary, ExportSummary, ParityCheck, TrainingData, TrainSummary
from medimg.data import manifest
from medimg.export.onnx_export import INPUT_NAME, OUTPUT_NAME, ExportError, check_parity, export
from medimg.input_checks import InputRules
from medimg.provenance import code_hash, file_sha256, git_commit
from medimg.training.data import load_split, split_rows
from medimg.training.models import load_model
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def model_modalities(params: Params, trained: Iterable[str | None] = ()) -> list[str]:
    """The DICOM modalities the model is for: ``task.modalities`` when set, else those its training data has.

    ``trained`` is the training manifest's ``modality`` column (DICOM's own, else ``data.modality``).
    """
    if params.task.modalities is not None:
        return sorted(params.task.modalities)
    return sorted({str(m).upper() for m in trained if m})


def metadata(
    params: Params, run_id: str, data_version: str, threshold: float, trained_modalities: Iterable[str | None] = ()
) -> dict[str, object]:
    """The ONNX file's ``metadata_props`` (keys: :mod:`medimg.artifacts` ``META_*``); non-strings become JSON.

    ``medimg.input_checks`` holds the validation limits the training data passed and
    ``medimg.modalities`` the modalities the model is for (:func:`model_modalities`; not written
    when none is known, and then not checked), which ``medimg predict`` enforces
    (:mod:`medimg.input_checks`); ``medimg.body_part`` is written when ``task.body_part`` is set.
    """
    modalities = model_modalities(params, trained_modalities)
    rules = InputRules.from_validation(params.validation)
    known = {META_MODALITIES: modalities} if modalities else {}
    body_part = {META_BODY_PART: params.task.body_part} if params.task.body_part else {}
    return {
        **known,
        **body_part,
        META_INPUT_CHECKS: rules.limits_json(),
        META_CLASS_NAMES: list(params.task.class_names),
        META_POSITIVE_CLASS: params.task.class_names[1],
        META_THRESHOLD: threshold,
        META_OUTPUT: f"{OUTPUT_NAME}: [N, {len(params.task.class_names)}] logits; "
        "softmax[:, 1] is the positive-class probability",
        META_INPUT_NAME: INPUT_NAME,
        META_INPUT_LAYOUT: "NCHW float32",
        META_PREPROCESSING: preprocess.contract(params.preprocess),
        META_PREPROCESSING_HASH: preprocess.contract_hash(params.preprocess),
        META_DATA_VERSION: data_version,
        META_GIT_COMMIT: git_commit(),
        META_CODE_HASH: code_hash(),
        META_MLFLOW_RUN_ID: run_id,
        META_ARCHITECTURE: params.model.architecture,
        META_PARAMS_HASH: params.fingerprint(),
    }


def run(
    params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary, evaluated: EvaluationSummary
) -> ExportSummary:
    """The trained model as ``runs/<run_id>/model.onnx``, checked, with its metadata and ``evaluated.threshold``.

    ``onnx.checker`` (full check) must accept it and ONNX Runtime must match PyTorch on up to
    ``export.parity_images`` real test images (``data.data_version``, without ``data.dropped_ids``):
    max |logit difference| <= ``export.parity_atol`` and identical labels. Raises
    :class:`~medimg.export.onnx_export.ExportError` otherwise. Logs the parity report to MLflow run ``run_id``.
    """
    model = load_model(params.model, params.preprocess.channels, len(params.task.class_names), trained.checkpoint)
    frame = manifest.read(ws.data)
    rows = split_rows(frame, "test", set(data.dropped_ids))
    test = load_split(ws.data, rows.head(params.export.parity_images), "test")
    x = preprocess.apply(test.images, params.preprocess)
    path = ws.run_dir(run_id) / artifacts.ONNX_FILE
    meta = metadata(params, run_id, data.data_version, evaluated.threshold, frame["modality"].tolist())
    export(model, x, path, params.export.opset, meta)
    parity = check_parity(model, path, x, params.export.parity_atol)
    sha256 = file_sha256(path)
    tracking.log_json(run_id, parity.to_json(), artifacts.PARITY_REPORT)
    tracking.log_metrics(run_id, {"onnx_parity_max_abs_diff": parity.max_abs_diff})
    log.info(
        "ONNX %s sha256 %s; parity on %d test images: max |logit diff| %.2e, labels identical: %s",
        path.name,
        sha256,
        parity.n_images,
        parity.max_abs_diff,
        parity.labels_identical,
    )
    if not parity.passed:
        raise ExportError(f"{path}: ONNX parity failed: {json.dumps(parity.to_json())}")
    return ExportSummary(
        onnx=path, sha256=sha256, parity=ParityCheck(**parity.to_json()), size_bytes=path.stat().st_size
    )
