"""Step 6: ONNX export with metadata, ``onnx.checker`` and parity against PyTorch on real images.

A segmentation model (``task.kind: segmentation``) exports with dynamic spatial axes and its own
metadata (:func:`segmentation_metadata`), its parity measured as voxel agreement of the arg-max
masks (:mod:`medimg.export.segmentation_parity`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np
import torch

from medimg import artifacts, preprocess, tracking
from medimg.artifacts import (
    META_ABNORMAL_CLASSES,
    META_ARCHITECTURE,
    META_BODY_PART,
    META_CLASS_NAMES,
    META_CODE_HASH,
    META_DATA_VERSION,
    META_ENSEMBLE,
    META_GIT_COMMIT,
    META_INPUT_CHECKS,
    META_INPUT_LAYOUT,
    META_INPUT_NAME,
    META_MLFLOW_RUN_ID,
    META_MODALITIES,
    META_MODEL_NAME,
    META_OUTPUT,
    META_PARAMS_HASH,
    META_POSITIVE_CLASS,
    META_PREPROCESSING,
    META_PREPROCESSING_HASH,
    META_TASK_KIND,
    META_THRESHOLD,
)
from medimg.config import Params, PreprocessConfig, TaskConfig
from medimg.contracts import EvaluationSummary, ExportSummary, ParityCheck, TrainingData, TrainSummary
from medimg.data import manifest
from medimg.export.onnx_export import INPUT_NAME, OUTPUT_NAME, ExportError, check_parity, export
from medimg.export.segmentation_parity import check_segmentation_parity
from medimg.input_checks import InputRules
from medimg.provenance import code_hash, file_sha256, git_commit
from medimg.segmentation import contract as segmentation_contract
from medimg.segmentation.contract import network_input
from medimg.segmentation.geometry import fit
from medimg.training.data import load_split, split_rows
from medimg.training.models import load_model
from medimg.tuning import ensemble
from medimg.tuning.ensemble import load_trained
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
    params: Params,
    run_id: str,
    data_version: str,
    threshold: float | None,
    trained_modalities: Iterable[str | None] = (),
) -> dict[str, object]:
    """The ONNX file's ``metadata_props`` (keys: :mod:`medimg.artifacts` ``META_*``); non-strings become JSON.

    ``medimg.input_checks`` holds the validation limits the training data passed and
    ``medimg.modalities`` the modalities the model is for (:func:`model_modalities`; not written
    when none is known, and then not checked), which ``medimg predict`` enforces
    (:mod:`medimg.input_checks`); ``medimg.body_part`` is written when ``task.body_part`` is set.
    ``medimg.task_kind``, ``medimg.abnormal_classes`` and ``medimg.output`` (:func:`output_description`)
    say how to read the output; ``medimg.threshold`` applies to p_abnormal (segmentation has none: None, written
    as JSON null); ``medimg.positive_class`` (the abnormal class, which may be index 0) is written for binary
    tasks only. ``medimg.input_layout``
    is the contract's: ``NCHW float32`` for images, ``NCDHW float32`` for volumes (``preprocess.dims: 3``).
    """
    modalities = model_modalities(params, trained_modalities)
    rules = InputRules.from_validation(params.validation)
    known = {META_MODALITIES: modalities} if modalities else {}
    body_part = {META_BODY_PART: params.task.body_part} if params.task.body_part else {}
    task = params.task
    contract = preprocess.contract(params.preprocess)  # the 3D contract (medimg.volume_contract) when dims is 3
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
        META_INPUT_LAYOUT: contract["layout"],  # NCHW float32, or NCDHW float32 for volumes
        META_PREPROCESSING: contract,
        META_PREPROCESSING_HASH: preprocess.contract_hash(params.preprocess),
        META_DATA_VERSION: data_version,
        META_GIT_COMMIT: git_commit(),
        META_CODE_HASH: code_hash(),
        META_MLFLOW_RUN_ID: run_id,
        META_ARCHITECTURE: params.model.architecture,
        META_PARAMS_HASH: params.fingerprint(),
    }


def segmentation_output_description(task: TaskConfig) -> str:
    """The ``medimg.output`` sentence of a segmentation model: logits per voxel, the mask by arg-max."""
    k = len(task.class_names)
    labels = ", ".join(f"{i} {name}" for i, name in enumerate(task.class_names))
    return (
        f"{OUTPUT_NAME}: [N, {k}, D, H, W] float32 logits, one per class in medimg.class_names order for every voxel "
        f"of the input [N, C, D, H, W] (D, H, W: any multiples of the contract's pad_multiple); softmax over axis 1 "
        f"gives each voxel's class probabilities; the mask is the arg-max over axis 1, its values the label values "
        f"({labels}; 0 is background); no threshold. The mask lies on the padded grid: the input volume's voxels are "
        "its region at the contract's offset, in the contract's orientation (medimg.preprocessing fit)"
    )


def segmentation_metadata(
    params: Params, run_id: str, data_version: str, trained_modalities: Iterable[str | None] = ()
) -> dict[str, object]:
    """The ONNX ``metadata_props`` of a segmentation model (the keys of :func:`metadata`, for segmentation).

    ``medimg.task_kind`` is ``segmentation``; ``medimg.class_names`` the mask's label values (index 0
    background); ``medimg.abnormal_classes`` the structures (``class_names[1:]``); no threshold and no
    positive class (the mask is the arg-max); ``medimg.preprocessing`` the segmentation contract
    (:func:`medimg.segmentation.contract.contract`: the volume contract plus orientation, stored shape,
    pad_multiple and no resampling); ``medimg.output`` :func:`segmentation_output_description`;
    ``medimg.model_name`` the registered name (``registry.model_name``). ``ValueError`` for a task that is
    not segmentation.
    """
    task = params.task
    if task.kind != "segmentation":
        raise ValueError(f"segmentation_metadata: task.kind is {task.kind}, not segmentation")
    modalities = model_modalities(params, trained_modalities)
    known = {META_MODALITIES: modalities} if modalities else {}
    body_part = {META_BODY_PART: task.body_part} if task.body_part else {}
    contract = segmentation_contract.contract(params.preprocess)
    return {
        **known,
        **body_part,
        META_INPUT_CHECKS: InputRules.from_validation(params.validation).limits_json(),
        META_CLASS_NAMES: list(task.class_names),
        META_TASK_KIND: task.kind,
        META_ABNORMAL_CLASSES: list(task.structures),
        META_OUTPUT: segmentation_output_description(task),
        META_INPUT_NAME: INPUT_NAME,
        META_INPUT_LAYOUT: contract["layout"],
        META_PREPROCESSING: contract,
        META_PREPROCESSING_HASH: preprocess.contract_hash(params.preprocess),
        META_DATA_VERSION: data_version,
        META_GIT_COMMIT: git_commit(),
        META_CODE_HASH: code_hash(),
        META_MLFLOW_RUN_ID: run_id,
        META_ARCHITECTURE: params.model.architecture,
        META_PARAMS_HASH: params.fingerprint(),
        META_MODEL_NAME: params.registry.model_name,
    }


def segmentation_parity_inputs(images: np.ndarray, config: PreprocessConfig) -> list[np.ndarray]:
    """Network inputs ``[1, C, D, H, W]`` for parity: each stored case ``[N, D, H, W]`` uint8 as it is, and the
    first again centred in a grid one ``pad_multiple`` larger on every axis (the spatial axes are dynamic)."""
    inputs = [network_input(case, config) for case in images]
    if len(images):
        m = config.volume.pad_multiple
        d, h, w = images[0].shape
        larger, _ = fit(images[0], (d + m, h + m, w + m))
        inputs.append(network_input(larger, config))
    return inputs


def run(
    params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary, evaluated: EvaluationSummary
) -> ExportSummary:
    """The trained model as ``runs/<run_id>/model.onnx``, checked, with its metadata and ``evaluated.threshold``.

    A segmentation task goes to :func:`run_segmentation`.

    ``onnx.checker`` (full check) must accept it and ONNX Runtime must match PyTorch on up to
    ``export.parity_images`` real test images (``data.data_version``, without ``data.dropped_ids``;
    stored volumes, input ``[N, C, D, H, W]``, for a 3D model):
    max |logit difference| <= ``export.parity_atol`` and identical labels. Raises
    :class:`~medimg.export.onnx_export.ExportError` otherwise. Logs the parity report to MLflow run ``run_id``.
    """
    if params.task.kind == "segmentation":
        return run_segmentation(params, ws, run_id, data, trained)
    model = load_trained(params, trained)  # a plain model, or the ensemble of model.ensemble
    frame = manifest.read(ws.data)
    rows = split_rows(frame, "test", set(data.dropped_ids))
    test = load_split(ws.data, rows.head(params.export.parity_images), "test")
    x = preprocess.apply(test.images, params.preprocess)
    path = ws.run_dir(run_id) / artifacts.ONNX_FILE
    meta = metadata(params, run_id, data.data_version, evaluated.threshold, frame["modality"].tolist())
    if params.model.ensemble.enabled:  # the members and views, and what the output is
        meta[META_ENSEMBLE] = ensemble.description(params, trained, run_id)
        meta[META_OUTPUT] = f"{meta[META_OUTPUT]}{ensemble.OUTPUT_NOTE}"
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


def run_segmentation(
    params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary
) -> ExportSummary:
    """A segmentation model as ``runs/<run_id>/model.onnx``: input ``[N, C, D, H, W]`` float32 with dynamic batch and
    spatial axes (multiples of ``preprocess.volume.pad_multiple``), output logits ``[N, K, D, H, W]``, the metadata
    of :func:`segmentation_metadata`.

    ``onnx.checker`` (full check) must accept it, and on up to ``export.parity_images`` real stored test cases
    (plus the first one on a larger grid, :func:`segmentation_parity_inputs`) ONNX Runtime's arg-max masks must
    agree with PyTorch's on at least :data:`~medimg.export.segmentation_parity.MIN_VOXEL_AGREEMENT` of the voxels
    of every case, with max |logit difference| <= ``export.parity_atol`` x max(1, max |logit|). Raises
    :class:`~medimg.export.onnx_export.ExportError` otherwise. Logs the parity report to MLflow run ``run_id``.
    """
    model = load_model(params.model, params.preprocess.channels, len(params.task.class_names), trained.checkpoint)
    frame = manifest.read(ws.data)
    rows = split_rows(frame, "test", set(data.dropped_ids))
    test = load_split(ws.data, rows.head(params.export.parity_images), "test")
    if len(test.images) == 0:
        raise ExportError("segmentation export: no test case to check ONNX parity on")
    inputs = segmentation_parity_inputs(test.images, params.preprocess)
    path = ws.run_dir(run_id) / artifacts.ONNX_FILE
    meta = segmentation_metadata(params, run_id, data.data_version, frame["modality"].tolist())
    stored = inputs[: len(test.images)]  # at the stored grid; the exporter traces a batch of two (not 1: specialised)
    example = torch.from_numpy(np.concatenate((stored * 2)[:2]))
    export(model, example, path, params.export.opset, meta, params.preprocess.volume.pad_multiple)
    parity = check_segmentation_parity(model, path, inputs, params.export.parity_atol)
    sha256 = file_sha256(path)
    tracking.log_json(run_id, parity.to_json(), artifacts.PARITY_REPORT)
    tracking.log_metrics(
        run_id, {"onnx_parity_max_abs_diff": parity.max_abs_diff, "onnx_parity_voxel_agreement": parity.voxel_agreement}
    )
    log.info(
        "ONNX %s sha256 %s; parity on %d test volumes (grids %s): voxel agreement %.6f, max |logit diff| %.2e",
        path.name,
        sha256,
        parity.n_images,
        parity.shapes,
        parity.voxel_agreement,
        parity.max_abs_diff,
    )
    if not parity.passed:
        raise ExportError(f"{path}: ONNX parity failed: {json.dumps(parity.to_json())}")
    check = ParityCheck(
        n_images=parity.n_images,
        max_abs_diff=parity.max_abs_diff,
        labels_identical=parity.labels_identical,
        atol=parity.atol,
        provider=parity.provider,
        passed=parity.passed,
        voxel_agreement=parity.voxel_agreement,
    )
    return ExportSummary(onnx=path, sha256=sha256, parity=check, size_bytes=path.stat().st_size)
