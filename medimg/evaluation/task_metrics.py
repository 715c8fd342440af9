"""The metrics of a task (binary or multi-class), one definition for evaluate, gate, status and card.

Why: every stage after training must read the same numbers under the same names whatever the
task. This module maps a task (:class:`medimg.config.TaskConfig`) and a model's class
probabilities to one flat dict of metrics and their bootstrap CIs:

* binary: :func:`~medimg.evaluation.metrics.binary_metrics` of the abnormal (positive) class at
  the threshold, under the names used since the first version (``roc_auc``, ``sensitivity``...);
* multiclass: :func:`~medimg.evaluation.multiclass.multiclass_metrics` of the arg-max decision,
  plus the "any abnormality vs normal" operating point at the threshold, every name prefixed
  ``abnormal_`` (``abnormal_sensitivity``...).

Shapes: ``labels`` int ``[N]`` in ``0..K-1``; ``probs`` float ``[N, K]`` (softmax of the logits,
rows sum to 1); the threshold applies to ``p_abnormal``, the summed probability of the abnormal
classes (for the default pneumonia task exactly the old ``softmax[:, 1]``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from medimg.config import TaskConfig
from medimg.evaluation.bootstrap import bootstrap_ci
from medimg.evaluation.metrics import METRIC_NAMES, binary_metrics
from medimg.evaluation.multiclass import confusion_counts, multiclass_metrics
from medimg.evaluation.multiclass_bootstrap import multiclass_bootstrap_ci
from medimg.probabilities import abnormal_probability, decide

ABNORMAL_PREFIX = "abnormal_"
"""Prefix of the "any abnormality vs normal" operating point's metrics in a multi-class task."""

BINARY_HEADLINE = ("roc_auc", "accuracy", "sensitivity", "specificity")
MULTICLASS_HEADLINE = (
    "macro_roc_auc",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "kappa",
    "abnormal_sensitivity",
    "abnormal_specificity",
)

SEGMENTATION_HEADLINE = ("mean_dice", "mean_hd95")
"""Segmentation (:mod:`medimg.segmentation.evaluation`); the per-structure figures are named by the structures."""


def headline_metrics(task_kind: str, class_names: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The metrics a summary shows first for ``task_kind`` (binary | multiclass: AUC first; segmentation: the mean
    Dice and HD95, then each structure's Dice, ``class_names[1:]``)."""
    if task_kind == "segmentation":
        return (*SEGMENTATION_HEADLINE, *(f"dice_{s}" for s in class_names[1:]))
    return BINARY_HEADLINE if task_kind == "binary" else MULTICLASS_HEADLINE


def is_abnormal(labels: NDArray[np.int64], abnormal_indices: tuple[int, ...]) -> NDArray[np.int64]:
    """1 where the true class is abnormal, else 0, ``[N]`` int64."""
    return np.isin(np.asarray(labels), abnormal_indices).astype(np.int64)


def decided_classes(task: TaskConfig, probs: NDArray[np.float64], threshold: float) -> NDArray[np.int64]:
    """The class each image is decided to be, ``[N]`` (:func:`medimg.probabilities.decide` for the task)."""
    return decide(probs, task.kind, task.abnormal_indices, threshold)


def task_metrics(
    task: TaskConfig, labels: NDArray[np.int64], probs: NDArray[np.float64], threshold: float
) -> dict[str, float | int]:
    """Every point metric of the task (flat; names in the module docstring). ``ValueError`` on bad input."""
    labels = np.asarray(labels, dtype=np.int64)
    p_abnormal = abnormal_probability(probs, task.abnormal_indices)
    operating_point = binary_metrics(is_abnormal(labels, task.abnormal_indices), p_abnormal, threshold)
    if task.kind == "binary":
        return operating_point
    out: dict[str, float | int] = dict(multiclass_metrics(labels, probs, task.class_names))
    out.update({ABNORMAL_PREFIX + k: v for k, v in operating_point.items()})
    return out


def task_ci(
    task: TaskConfig,
    labels: NDArray[np.int64],
    probs: NDArray[np.float64],
    threshold: float,
    n_boot: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% CIs of every float metric of :func:`task_metrics`, resampling within each class.

    Binary: :func:`~medimg.evaluation.bootstrap.bootstrap_ci` as before (within positives and
    negatives, which are the two classes). Multiclass: the class-stratified
    :func:`~medimg.evaluation.multiclass_bootstrap.multiclass_bootstrap_ci`, and the operating
    point's CIs resampled within each of the K classes too.
    """
    labels = np.asarray(labels, dtype=np.int64)
    p_abnormal = abnormal_probability(probs, task.abnormal_indices)
    y_abnormal = is_abnormal(labels, task.abnormal_indices)
    if task.kind == "binary":
        return bootstrap_ci(y_abnormal, p_abnormal, threshold, n_boot=n_boot, seed=seed)
    out = dict(multiclass_bootstrap_ci(labels, probs, task.class_names, n_boot=n_boot, seed=seed))
    point = bootstrap_ci(y_abnormal, p_abnormal, threshold, n_boot=n_boot, seed=seed, strata=labels)
    out.update({ABNORMAL_PREFIX + name: point[name] for name in METRIC_NAMES})
    return out


def task_confusion(
    task: TaskConfig, labels: NDArray[np.int64], probs: NDArray[np.float64], threshold: float
) -> NDArray[np.int64]:
    """Confusion counts ``[K, K]``: rows the true class, columns the decided class (:func:`decided_classes`)."""
    decided = decided_classes(task, probs, threshold)
    return confusion_counts(np.asarray(labels, dtype=np.int64), decided, len(task.class_names))
