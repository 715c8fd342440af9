"""Step 6: ONNX export with metadata, ``onnx.checker`` and parity against PyTorch on real images."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from medimg import artifacts, preprocess, tracking
from medimg.artifacts import (
    META_ABNORMAL_CLASSES,
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
    META_TASK_KIND,
    META_THRESHOLD,
)
from medimg.config import Params, TaskConfig
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


def output_description(task: TaskConfig) -> str:
    """The ``medimg.output`` sentence: what the model's output means for ``task``, and how to decide from it.

    One definition everywhere (issue 12): softmax(logits) gives each class's probability in
    ``medimg.class_names`` order; p_abnormal is their sum over ``medimg.abnormal_classes``; a case
    is flagged abnormal when p_abnormal >= ``medimg.threshold``. Binary: the class is decided by
    that threshold; multiclass: by arg-max.
    """
    k = len(task.class_names)
    head = (
        f"{OUTPUT_NAME}: [N, {k}] logits, one per class in medimg.class_names order; softmax over the {k} "
        "gives each class's probability"
    )
    if task.kind == "binary":
        positive = task.positive_index
        normal = task.class_names[1 - positive]
        return (
            f"{head}; p_abnormal = softmax[:, {positive}] ({task.class_names[positive]}, medimg.positive_class); "
            f"flagged abnormal and classed {task.class_names[positive]} when p_abnormal >= medimg.threshold, "
            f"else {normal}"
        )
    indices = ", ".join(map(str, task.abnormal_indices))
    names = ", ".join(task.class_names[i] for i in task.abnormal_indices)
    return (
        f"{head}; predicted class = arg-max; p_abnormal = sum of softmax[:, [{indices}]] (medimg.abnormal_classes: "
        f"{names}); flagged abnormal when p_abnormal >= medimg.threshold"
    )


def metadata(
    params: Params, run_id: str, data_version: str, threshold: float, trained_modalities: Iterable[str | None] = ()
) -> dict[str, object]:
    """The ONNX file's ``metadata_props`` (keys: :mod:`medimg.artifacts` ``META_*``); non-strings become JSON.

    ``medimg.input_checks`` holds the validation limits the training data passed and
    ``medimg.modalities`` the modalities the model is for (:func:`model_modalities`; not written
    when none is known, and then not checked), which ``medimg predict`` enforces
    (:mod:`medimg.input_checks`); ``medimg.body_part`` is written when ``task.body_part`` is set.
    ``medimg.task_kind``, ``medimg.abnormal_classes`` and ``medimg.output`` (:func:`output_description`)
    say how to read the output; ``medimg.threshold`` applies to p_abnormal; ``medimg.positive_class``
    (the abnormal class, which may be index 0) is written for binary tasks only.
    """
    modalities = model_modalities(params, trained_modalities)
    rules = InputRules.from_validation(params.validation)
    known = {META_MODALITIES: modalities} if modalities else {}
    body_part = {META_BODY_PART: params.task.body_part} if params.task.body_part else {}
    task = params.task
    positive = {META_POSITIVE_CLASS: task.class_names[task.positive_index]} if task.kind == "binary" else {}
    return {
        **known,
        **body_part,
        META_INPUT_CHECKS: rules.limits_json(),
        **positive,
        META_CLASS_NAMES: list(task.class_names),
        META_TASK_KIND: task.kind,
        META_ABNORMAL_CLASSES: [task.class_names[i] for i in task.abnormal_indices],  # class order
        META_THRESHOLD: threshold,
        META_OUTPUT: output_description(task),
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
