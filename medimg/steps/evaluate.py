"""Step 4: threshold chosen on validation, then the task's metrics with bootstrap CIs on the test split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from medimg import artifacts, preprocess, tracking
from medimg.config import Params, TaskConfig
from medimg.contracts import EvaluationSummary, TrainingData, TrainSummary
from medimg.data import manifest
from medimg.evaluation import plots
from medimg.evaluation.gates import to_jsonable
from medimg.evaluation.gradcam import grad_cam, pick_examples
from medimg.evaluation.task_metrics import (
    decided_classes,
    headline_metrics,
    is_abnormal,
    task_ci,
    task_confusion,
    task_metrics,
)
from medimg.evaluation.threshold import max_accuracy_threshold, threshold_for_sensitivity, youden_threshold
from medimg.probabilities import abnormal_probability
from medimg.segmentation import evaluation
from medimg.segmentation.inference import predict_probabilities
from medimg.segmentation.metrics import case_table, voxel_confusion
from medimg.training.data import load_split
from medimg.training.loop import predict_proba
from medimg.training.models import load_model
from medimg.tuning.ensemble import explained, load_trained
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def choose_threshold(params: Params, y_val: np.ndarray, p_val: np.ndarray) -> float:
    """The threshold on validation abnormality probabilities ``p_val`` (``y_val`` 1 = abnormal) by ``gates.threshold``.

    fixed: ``gates.fixed_threshold``; target_sensitivity: the highest threshold reaching
    ``gates.target_sensitivity``; youden: the one maximising sensitivity + specificity - 1;
    max_accuracy: the one of highest accuracy.
    """
    if params.gates.threshold == "fixed":
        return params.gates.fixed_threshold
    if params.gates.threshold == "target_sensitivity":
        return threshold_for_sensitivity(y_val, p_val, params.gates.target_sensitivity)
    if params.gates.threshold == "max_accuracy":
        return max_accuracy_threshold(y_val, p_val)
    return youden_threshold(y_val, p_val)


def gradcam_review(model, split, probs: np.ndarray, threshold: float, params: Params, path):
    """Grad-CAM of the predicted class for the most confident true and false positives and negatives.

    Positive means flagged abnormal (``p_abnormal >= threshold``); ``probs`` ``[N, K]``. Images
    (``preprocess.dims`` 2): two of each kind side by side, each title naming the image's
    predicted class and its probability. Volumes (``preprocess.dims`` 3): one of each kind as a
    slice montage (:func:`medimg.evaluation.plots.gradcam_montage_png`), each row titled with the
    true class, the decided class and its probability.
    """
    task = params.task
    volumetric = params.preprocess.dims == 3
    p_abnormal = abnormal_probability(probs, task.abnormal_indices)
    chosen = pick_examples(
        is_abnormal(split.labels, task.abnormal_indices), p_abnormal, threshold, per_kind=1 if volumetric else 2
    )
    order = [(kind, i) for kind, idx in chosen.items() for i in idx]
    if not order:
        return None
    index = [i for _, i in order]
    decided = decided_classes(task, probs[index], threshold)
    heat = grad_cam(model, preprocess.apply(split.images[index], params.preprocess), target_class=decided.tolist())
    if volumetric:
        titles = [
            f"{kind}: true {task.class_names[split.labels[i]]}, decided {task.class_names[c]} p={probs[i, c]:.2f}"
            for (kind, i), c in zip(order, decided, strict=True)
        ]
        return plots.gradcam_montage_png(split.images[index], heat, titles, path)
    titles = [f"{kind} {task.class_names[c]} p={probs[i, c]:.2f}" for (kind, i), c in zip(order, decided, strict=True)]
    return plots.gradcam_grid_png(split.images[index], heat, titles, path)


GROUP_COLUMNS = ("modality", "site", "sex")


def subgroup_metrics(
    task: TaskConfig, frame: pd.DataFrame, ids: list[str], labels: np.ndarray, probs: np.ndarray, threshold: float
) -> dict:
    """Test metrics of the task per value of each group column the manifest has with more than one value."""
    rows = frame.set_index("id").reindex(ids)
    out: dict = {}
    for column in GROUP_COLUMNS:
        if column not in rows.columns or rows[column].nunique(dropna=True) < 2:
            continue
        out[column] = {}
        for value, index in rows.reset_index().groupby(column).indices.items():
            out[column][str(value)] = task_metrics(task, labels[index], probs[index], threshold)
    return out


def class_counts(frame: pd.DataFrame, class_names: tuple[str, ...], exclude: set[str]) -> dict[str, dict[str, int]]:
    """Images per split and class of the manifest (without ``exclude``): ``{split: {class: n}}``, every class listed."""
    kept = frame[~frame["id"].isin(exclude)]
    out: dict[str, dict[str, int]] = {}
    for split, rows in kept.groupby("split"):
        counts = rows["label"].value_counts()
        out[str(split)] = {name: int(counts.get(i, 0)) for i, name in enumerate(class_names)}
    return out


def structure_counts(frame: pd.DataFrame, class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Segmentation: cases per split whose reference mask holds each structure (``labels_present``), and under
    ``class_names[0]`` (background) every case: ``{split: {name: n}}``."""
    out: dict[str, dict[str, int]] = {}
    for split, rows in frame.groupby("split"):
        present = [set(str(v).split(";")) - {""} for v in rows["labels_present"].fillna("")]
        counts = {class_names[0]: len(rows)}
        counts.update({name: sum(str(i) in p for p in present) for i, name in enumerate(class_names) if i > 0})
        out[str(split)] = counts
    return out


def figures(
    params: Params, labels: np.ndarray, probs: np.ndarray, threshold: float, confusion: np.ndarray, folder
) -> list:
    """The test split's PNGs: ROC, PR and calibration of the abnormality probability; per-class ROC
    curves (multiclass); the confusion matrix (counts for binary, row-normalised for multiclass)."""
    task = params.task
    y_abnormal = is_abnormal(labels, task.abnormal_indices)
    p_abnormal = abnormal_probability(probs, task.abnormal_indices)
    what = "abnormal vs normal, " if task.kind == "multiclass" else ""
    pngs = [
        plots.roc_curve_png(
            y_abnormal, p_abnormal, folder / artifacts.filename(artifacts.ROC_CURVE), f"ROC, {what}test split"
        ),
        plots.pr_curve_png(y_abnormal, p_abnormal, folder / "pr_curve.png", f"Precision-recall, {what}test split"),
        plots.calibration_png(y_abnormal, p_abnormal, folder / "calibration.png", f"Calibration, {what}test split"),
    ]
    names = list(task.class_names)
    if task.kind == "binary":
        positive = task.positive_index
        negative = 1 - positive
        pngs.append(
            plots.confusion_matrix_png(
                int(confusion[positive, positive]),
                int(confusion[negative, positive]),
                int(confusion[negative, negative]),
                int(confusion[positive, negative]),
                [names[negative], names[positive]],
                folder / "confusion_matrix.png",
                f"Test split, threshold {threshold:.3f}",
            )
        )
    else:
        pngs.append(
            plots.class_roc_curves_png(
                labels, probs, names, folder / "class_roc_curves.png", "ROC per class, test split"
            )
        )
        pngs.append(
            plots.normalized_confusion_matrix_png(
                confusion, names, folder / "confusion_matrix.png", "Test split, arg-max (rows: true class)"
            )
        )
    return pngs


def run(params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary) -> EvaluationSummary:
    """The trained model on the val and test splits (without ``data.dropped_ids``): threshold, metrics, figures.

    The threshold on the abnormality probability is chosen on validation by ``gates.threshold``;
    the task's test metrics (:mod:`medimg.evaluation.task_metrics`) come with bootstrap 95% CIs
    resampled within each class (``gates.bootstrap_samples``, seeded by ``train.seed``). Writes
    ``runs/<run_id>/metrics.json``, the test and validation prediction CSVs (``id, label,
    probability`` = p_abnormal, and ``p_<class>`` per class) and the figures, and logs all of them
    and every metric (``test_*``, ``val_*``) to MLflow run ``run_id``. A segmentation task is evaluated by
    :func:`run_segmentation`.
    """
    if params.task.kind == "segmentation":
        return run_segmentation(params, ws, run_id, data, trained)
    task = params.task
    frame = manifest.read(ws.data)
    exclude = set(data.dropped_ids)
    val_split = load_split(ws.data, frame, "val", exclude)
    test_split = load_split(ws.data, frame, "test", exclude)
    model = load_trained(params, trained)  # a plain model, or the ensemble of model.ensemble
    p_val = predict_proba(model, preprocess.apply(val_split.images, params.preprocess))
    p_test = predict_proba(model, preprocess.apply(test_split.images, params.preprocess))
    threshold = choose_threshold(
        params,
        is_abnormal(val_split.labels, task.abnormal_indices),
        abnormal_probability(p_val, task.abnormal_indices),
    )

    metrics = task_metrics(task, test_split.labels, p_test, threshold)
    ci = task_ci(task, test_split.labels, p_test, threshold, params.gates.bootstrap_samples, params.train.seed)
    val_metrics = task_metrics(task, val_split.labels, p_val, threshold)
    confusion = task_confusion(task, test_split.labels, p_test, threshold)

    out = ws.run_dir(run_id)
    predictions = out / artifacts.filename(artifacts.TEST_PREDICTIONS)
    prediction_frame(task, test_split.ids, test_split.labels, p_test).to_csv(predictions, index=False)
    val_predictions = out / artifacts.filename(artifacts.VAL_PREDICTIONS)
    prediction_frame(task, val_split.ids, val_split.labels, p_val).to_csv(val_predictions, index=False)
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    pngs = figures(params, test_split.labels, p_test, threshold, confusion, folder)
    if trained.history:
        pngs.append(plots.training_curves_png(trained.history, folder / "training_curves.png"))
    pngs.append(gradcam_review(explained(model), test_split, p_test, threshold, params, folder / "gradcam_grid.png"))

    report = to_jsonable(
        {
            "task_kind": task.kind,
            "class_names": list(task.class_names),
            "abnormal_classes": list(task.abnormal),
            "threshold": threshold,
            "threshold_rule": params.gates.threshold,
            "test": metrics,
            "test_ci95": {k: list(v) for k, v in ci.items()},
            "val": val_metrics,
            "confusion_matrix": confusion.tolist(),
            "class_counts": class_counts(frame, task.class_names, exclude),
            "n_test": len(test_split.labels),
            "subgroups": subgroup_metrics(task, frame, test_split.ids, test_split.labels, p_test, threshold),
            "bootstrap_samples": params.gates.bootstrap_samples,
        }
    )
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(report, indent=1))

    tracking.log_metrics(run_id, {f"test_{k}": v for k, v in metrics.items()})
    tracking.log_metrics(run_id, {f"test_{k}_ci_low": v[0] for k, v in ci.items()})
    tracking.log_metrics(run_id, {f"test_{k}_ci_high": v[1] for k, v in ci.items()})
    tracking.log_metrics(run_id, {f"val_{k}": v for k, v in val_metrics.items()})
    tracking.log_artifact(run_id, metrics_file, artifacts.EVALUATION_DIR)
    tracking.log_artifact(run_id, predictions, artifacts.folder(artifacts.TEST_PREDICTIONS))
    tracking.log_artifact(run_id, val_predictions, artifacts.folder(artifacts.VAL_PREDICTIONS))
    for png in filter(None, pngs):
        tracking.log_artifact(run_id, png, artifacts.FIGURES_DIR)
    log.info(
        "test (n=%d, threshold %.3f): %s",
        len(test_split.labels),
        threshold,
        ", ".join(
            f"{name} {metrics[name]:.4f} [{ci[name][0]:.4f}, {ci[name][1]:.4f}]" for name in headline_metrics(task.kind)
        ),
    )
    return EvaluationSummary(metrics_file=metrics_file, predictions=predictions, **report)


def prediction_frame(task: TaskConfig, ids: list[str], labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """One row per image: ``id, label, probability`` (p_abnormal) and ``p_<class>`` for every class."""
    columns = {"id": ids, "label": labels, "probability": abnormal_probability(probs, task.abnormal_indices)}
    columns.update({f"p_{name}": probs[:, k] for k, name in enumerate(task.class_names)})
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- segmentation

SEGMENTATION_OVERLAYS = "segmentation_overlays.png"
"""The overlay montage of the best, median and worst test cases, in the figures folder."""


def case_spacings(frame: pd.DataFrame, ids: list[str]) -> np.ndarray:
    """The voxel spacing ``[N, 3]`` (z, y, x) mm of the cases ``ids`` along the stored axes (manifest ``spacing_*``).

    ``ValueError`` naming a case whose spacing is unknown or not positive (distances and volumes need it).
    """
    spacing = frame.set_index("id").loc[ids, ["spacing_z", "spacing_y", "spacing_x"]].to_numpy(np.float64)
    bad = ~(np.isfinite(spacing) & (spacing > 0)).all(axis=1)
    if bad.any():
        raise ValueError(f"case {ids[int(np.flatnonzero(bad)[0])]}: no usable voxel spacing in the manifest")
    return spacing


def segmentation_tables(params: Params, model, frame: pd.DataFrame, split) -> tuple[pd.DataFrame, np.ndarray]:
    """The per-case table (:func:`medimg.segmentation.metrics.case_table`, with the manifest ``label`` second) of
    the model on ``split`` (:class:`~medimg.training.data.SplitArrays` with masks) and its label maps uint8
    ``[N, D, H, W]`` (arg-max of :func:`medimg.segmentation.inference.predict_probabilities`)."""
    if split.masks is None:
        raise ValueError("a segmentation evaluation needs the stored masks (manifest mask_path): re-ingest")
    labels = np.concatenate(
        [
            predict_probabilities(model, split.images[i : i + 16], params.preprocess, params.train.batch_size)
            .argmax(1)
            .astype(np.uint8)
            for i in range(0, len(split.images), 16)
        ]
    )
    table = case_table(split.ids, labels, split.masks, case_spacings(frame, split.ids), params.task.structures)
    table.insert(1, "label", split.labels)
    return table, labels


def segmentation_outputs(
    params: Params, model, frame: pd.DataFrame, val_split, test_split, history, out
) -> tuple[dict, list]:
    """Everything the segmentation evaluation writes into the run folder ``out`` for the cases of ``frame`` (the
    manifest without the dropped rows): the prediction CSVs (one row per case: ``id, label`` and every figure of
    :func:`~medimg.segmentation.metrics.case_table`), the figures (overlay montage of the best, median and worst
    test cases, training curves) and ``metrics.json``.

    Returns the report (``metrics.json``'s content, the fields of
    :class:`~medimg.contracts.EvaluationSummary` but its paths) and the PNGs. Metrics are computed on the stored
    grid (``preprocess.volume.shape``), with each case's spacing from the manifest; CIs are the percentile
    bootstrap over test cases (``gates.bootstrap_samples`` replicates, seeded by ``train.seed``).
    """
    task, structures = params.task, params.task.structures
    test_table, test_labels = segmentation_tables(params, model, frame, test_split)
    val_table, _ = segmentation_tables(params, model, frame, val_split)
    metrics = evaluation.summary(test_table, structures)
    ci = evaluation.bootstrap_ci(test_table, structures, params.gates.bootstrap_samples, params.train.seed)
    test_table.to_csv(out / artifacts.filename(artifacts.TEST_PREDICTIONS), index=False)
    val_table.to_csv(out / artifacts.filename(artifacts.VAL_PREDICTIONS), index=False)

    folder = out / "figures"
    ranked = evaluation.ranked_cases(test_table)
    kinds = ("best", "median", "worst")
    index = [ranked[kind] for kind in kinds]
    pngs = [
        evaluation.overlay_montage_png(
            test_split.images[index],
            test_split.masks[index],
            test_labels[index],
            [evaluation.case_title(kind, test_table.iloc[ranked[kind]], structures) for kind in kinds],
            structures,
            folder / SEGMENTATION_OVERLAYS,
        )
    ]
    if history:
        pngs.append(plots.training_curves_png(history, folder / "training_curves.png"))
    rows = frame.set_index("id").reindex(test_table["id"])
    subgroups: dict = {}
    for column in GROUP_COLUMNS:
        if column in rows.columns and rows[column].nunique(dropna=True) >= 2:
            groups = rows.reset_index().groupby(column).indices.items()
            subgroups[column] = {str(v): evaluation.summary(test_table.iloc[i], structures) for v, i in groups}
    report = to_jsonable(
        {
            "task_kind": task.kind,
            "class_names": list(task.class_names),
            "abnormal_classes": list(task.abnormal),
            "threshold": None,
            "threshold_rule": "argmax",
            "test": metrics,
            "test_ci95": {k: list(v) for k, v in ci.items()},
            "val": evaluation.summary(val_table, structures),
            "confusion_matrix": voxel_confusion(test_labels, test_split.masks, len(task.class_names)).tolist(),
            "class_counts": structure_counts(frame, task.class_names),
            "split_counts": {str(s): int(n) for s, n in frame["split"].value_counts().items()},
            "n_test": len(test_table),
            "subgroups": subgroups,
            "bootstrap_samples": params.gates.bootstrap_samples,
        }
    )
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    return report, pngs


def run_segmentation(
    params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary
) -> EvaluationSummary:
    """The trained segmentation model on the val and test cases (without ``data.dropped_ids``): per case and
    structure Dice, HD95 (mm) and volume error (mL), their means with bootstrap 95% CIs over cases
    (:mod:`medimg.segmentation.evaluation`), the overlay montage; the same files and MLflow logging as
    :func:`run`. There is no threshold: each voxel takes its arg-max label (``threshold`` None,
    ``threshold_rule`` ``argmax``); ``confusion_matrix`` counts test voxels of the stored grids (rows the
    reference label).
    """
    task = params.task
    frame = manifest.read(ws.data)
    exclude = set(data.dropped_ids)
    val_split = load_split(ws.data, frame, "val", exclude)
    test_split = load_split(ws.data, frame, "test", exclude)
    model = load_model(params.model, params.preprocess.channels, len(task.class_names), trained.checkpoint)
    out = ws.run_dir(run_id)
    report, pngs = segmentation_outputs(
        params, model, frame[~frame["id"].isin(exclude)], val_split, test_split, trained.history, out
    )
    metrics, ci = report["test"], report["test_ci95"]
    predictions = out / artifacts.filename(artifacts.TEST_PREDICTIONS)
    val_predictions = out / artifacts.filename(artifacts.VAL_PREDICTIONS)
    metrics_file = out / "metrics.json"
    tracking.log_metrics(run_id, {f"test_{k}": v for k, v in metrics.items()})
    tracking.log_metrics(run_id, {f"test_{k}_ci_low": v[0] for k, v in ci.items()})
    tracking.log_metrics(run_id, {f"test_{k}_ci_high": v[1] for k, v in ci.items()})
    tracking.log_metrics(run_id, {f"val_{k}": v for k, v in report["val"].items()})
    tracking.log_artifact(run_id, metrics_file, artifacts.EVALUATION_DIR)
    tracking.log_artifact(run_id, predictions, artifacts.folder(artifacts.TEST_PREDICTIONS))
    tracking.log_artifact(run_id, val_predictions, artifacts.folder(artifacts.VAL_PREDICTIONS))
    for png in pngs:
        tracking.log_artifact(run_id, png, artifacts.FIGURES_DIR)
    log.info(
        "test (n=%d cases): %s",
        metrics["n"],
        ", ".join(
            f"{name} {_fmt(metrics[name])} [{_fmt(ci[name][0])}, {_fmt(ci[name][1])}]"
            for name in ("mean_dice", *(f"dice_{s}" for s in task.structures), "mean_hd95")
        ),
    )
    return EvaluationSummary(metrics_file=metrics_file, predictions=predictions, **report)


def _fmt(value) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.4f}"
