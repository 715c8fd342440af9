"""Step 4: threshold chosen on validation, then metrics with bootstrap CIs on the test split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from medimg import artifacts, preprocess, tracking
from medimg.config import Params
from medimg.contracts import EvaluationSummary, TrainingData, TrainSummary
from medimg.data import manifest
from medimg.evaluation import plots
from medimg.evaluation.bootstrap import bootstrap_ci
from medimg.evaluation.gates import to_jsonable
from medimg.evaluation.gradcam import grad_cam, pick_examples
from medimg.evaluation.metrics import binary_metrics
from medimg.evaluation.threshold import threshold_for_sensitivity, youden_threshold
from medimg.training.data import load_split
from medimg.training.loop import predict_proba
from medimg.training.models import load_model
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def choose_threshold(params: Params, y_val: np.ndarray, p_val: np.ndarray) -> float:
    """The decision threshold on validation probabilities ``p_val`` (labels ``y_val``, 0/1) by ``gates.threshold``.

    fixed: ``gates.fixed_threshold``; target_sensitivity: the highest threshold reaching
    ``gates.target_sensitivity``; youden: the one maximising sensitivity + specificity - 1.
    """
    if params.gates.threshold == "fixed":
        return params.gates.fixed_threshold
    if params.gates.threshold == "target_sensitivity":
        return threshold_for_sensitivity(y_val, p_val, params.gates.target_sensitivity)
    return youden_threshold(y_val, p_val)


def gradcam_review(model, split, probs: np.ndarray, threshold: float, params: Params, path):
    """Grad-CAM of the most confident true and false positives and negatives of the test split."""
    chosen = pick_examples(split.labels, probs, threshold)
    order = [(kind, i) for kind, idx in chosen.items() for i in idx]
    if not order:
        return None
    index = [i for _, i in order]
    heat = grad_cam(model, preprocess.apply(split.images[index], params.preprocess))
    titles = [f"{kind} p={probs[i]:.2f}" for kind, i in order]
    return plots.gradcam_grid_png(split.images[index], heat, titles, path)


GROUP_COLUMNS = ("modality", "site", "sex")


def subgroup_metrics(
    frame: pd.DataFrame, ids: list[str], labels: np.ndarray, probs: np.ndarray, threshold: float
) -> dict:
    """Test metrics per value of each group column the manifest has with more than one value."""
    rows = frame.set_index("id").reindex(ids)
    out: dict = {}
    for column in GROUP_COLUMNS:
        if column not in rows.columns or rows[column].nunique(dropna=True) < 2:
            continue
        out[column] = {}
        for value, index in rows.reset_index().groupby(column).indices.items():
            out[column][str(value)] = binary_metrics(labels[index], probs[index], threshold)
    return out


def run(params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary) -> EvaluationSummary:
    """The trained model on the val and test splits (without ``data.dropped_ids``): threshold, metrics, figures.

    The threshold is chosen on validation by ``gates.threshold``; test metrics at it come with
    stratified bootstrap 95% CIs (``gates.bootstrap_samples``, seeded by ``train.seed``). Writes
    ``runs/<run_id>/metrics.json``, the test and validation prediction CSVs and the figures, and
    logs all of them and every metric (``test_*``, ``val_*``) to MLflow run ``run_id``.
    """
    frame = manifest.read(ws.data)
    exclude = set(data.dropped_ids)
    val_split = load_split(ws.data, frame, "val", exclude)
    test_split = load_split(ws.data, frame, "test", exclude)
    model = load_model(params.model, params.preprocess.channels, len(params.task.class_names), trained.checkpoint)
    p_val = predict_proba(model, preprocess.apply(val_split.images, params.preprocess))
    p_test = predict_proba(model, preprocess.apply(test_split.images, params.preprocess))
    threshold = choose_threshold(params, val_split.labels, p_val)

    metrics = binary_metrics(test_split.labels, p_test, threshold)
    ci = bootstrap_ci(
        test_split.labels, p_test, threshold, n_boot=params.gates.bootstrap_samples, seed=params.train.seed
    )
    val_metrics = binary_metrics(val_split.labels, p_val, threshold)

    out = ws.run_dir(run_id)
    predictions = out / artifacts.filename(artifacts.TEST_PREDICTIONS)
    pd.DataFrame({"id": test_split.ids, "label": test_split.labels, "probability": p_test}).to_csv(
        predictions, index=False
    )
    val_predictions = out / artifacts.filename(artifacts.VAL_PREDICTIONS)
    pd.DataFrame({"id": val_split.ids, "label": val_split.labels, "probability": p_val}).to_csv(
        val_predictions, index=False
    )
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    names = list(params.task.class_names)
    pngs = [
        plots.roc_curve_png(
            test_split.labels, p_test, figures / artifacts.filename(artifacts.ROC_CURVE), "ROC, test split"
        ),
        plots.pr_curve_png(test_split.labels, p_test, figures / "pr_curve.png", "Precision-recall, test split"),
        plots.calibration_png(test_split.labels, p_test, figures / "calibration.png", "Calibration, test split"),
        plots.confusion_matrix_png(
            int(metrics["tp"]),
            int(metrics["fp"]),
            int(metrics["tn"]),
            int(metrics["fn"]),
            names,
            figures / "confusion_matrix.png",
            f"Test split, threshold {threshold:.3f}",
        ),
    ]
    if trained.history:
        pngs.append(plots.training_curves_png(trained.history, figures / "training_curves.png"))
    pngs.append(gradcam_review(model, test_split, p_test, threshold, params, figures / "gradcam_grid.png"))

    report = to_jsonable(
        {
            "threshold": threshold,
            "threshold_rule": params.gates.threshold,
            "test": metrics,
            "test_ci95": {k: list(v) for k, v in ci.items()},
            "val": val_metrics,
            "n_test": len(test_split.labels),
            "subgroups": subgroup_metrics(frame, test_split.ids, test_split.labels, p_test, threshold),
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
        "test (n=%d, threshold %.3f): AUC %.4f [%.4f, %.4f], accuracy %.4f [%.4f, %.4f], "
        "sensitivity %.4f, specificity %.4f",
        len(test_split.labels),
        threshold,
        metrics["roc_auc"],
        *ci["roc_auc"],
        metrics["accuracy"],
        *ci["accuracy"],
        metrics["sensitivity"],
        metrics["specificity"],
    )
    return EvaluationSummary(metrics_file=metrics_file, predictions=predictions, **report)
