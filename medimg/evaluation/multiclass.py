"""Point metrics of a K-class classifier, decided by arg-max.

Why: a multi-class task (brain tumour types, normal / bacterial / viral pneumonia) is judged on
every class, not on one positive class; the gates, the model card and the tracked run must all
quote the same numbers computed the same way. This module is that single definition for
``task.kind: multiclass``; ``medimg.evaluation.metrics`` stays the definition for binary tasks.

Definitions (``K = len(class_names)``, label ``k`` is ``class_names[k]``):

* The decision is the arg-max of the probabilities (``numpy.argmax``: a tie goes to the lower
  class index). Per-class figures are one-vs-rest at that decision.
* ``balanced_accuracy`` is the mean recall over the classes present in ``y_true``;
  ``macro_roc_auc`` the mean one-vs-rest ROC AUC over the classes with both members and
  non-members; ``macro_f1`` the mean F1 over the classes where F1 is defined.
* ``brier`` is the multi-class Brier score, ``mean_i sum_k (p_ik - [y_i = k])^2`` (Brier 1950,
  Monthly Weather Review 78:1), in [0, 2]. ``ece`` is the top-label expected calibration error
  (Guo et al. 2017, ICML): 10 equal-width bins of the largest probability,
  ``sum_b (n_b / n) |accuracy_b - mean confidence_b|``. ``kappa`` is Cohen's kappa of the
  decision against the truth.

Promises:

* A metric with a zero denominator is ``nan`` -- never 0 -- and no warnings are emitted: a class
  absent from ``y_true`` has nan sensitivity and ROC AUC; a class never decided has nan PPV (and
  F1 0 when it has members).
* Invalid input raises ``ValueError`` saying what was wrong (``check_multiclass_inputs``).
* ``multiclass_metric_names`` lists, in a fixed order, the float metrics that get confidence
  intervals; ``multiclass_metrics`` returns exactly those plus the counts ``n`` and ``n_<class>``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from medimg.evaluation.metrics import N_CALIBRATION_BINS, calibration_bins

NAN = float("nan")

ROW_SUM_TOLERANCE = 1e-6
"""How far a row of probabilities may sum from 1 (softmax output in float32 is within ~1e-7)."""

OVERALL_NAMES: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_roc_auc", "macro_f1", "kappa", "brier", "ece")
"""The float metrics over all classes, in order."""

PER_CLASS_NAMES: tuple[str, ...] = ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "f1")
"""The float metrics of each class (named ``<metric>_<class>``), in order."""

_CLASS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """``class_names`` as a tuple, checked: at least two, unique, each matching ``^[A-Za-z0-9_-]+$``.

    Why: class names become metric names (``sensitivity_<class>``), MLflow keys and file names.
    Raises ``ValueError`` naming the offending entries.
    """
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a sequence of names, got the string {class_names!r}")
    names = tuple(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names must name at least two classes, got {list(names)}")
    bad = [name for name in names if not isinstance(name, str) or not _CLASS_NAME.match(name)]
    if bad:
        raise ValueError(f"class names may hold only letters, digits, _ and -, got {bad}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {list(names)}")
    return names


def check_multiclass_inputs(
    y_true: ArrayLike, y_prob: ArrayLike, n_classes: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Validate labels ``[N]`` and probabilities ``[N, K]``; return them as ``int64`` / ``float64``.

    Raises ``ValueError`` unless ``n_classes >= 2``, ``y_true`` is 1-D and ``y_prob`` is 2-D with
    ``N`` rows (``N > 0``) and ``n_classes`` columns, every label is an integer in
    ``0..n_classes-1``, and every probability is finite, within [0, 1], and each row sums to 1
    within ``ROW_SUM_TOLERANCE``.
    """
    if int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    n_classes = int(n_classes)
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2:
        raise ValueError(f"y_true must be 1-D [N] and y_prob 2-D [N, K], got shapes {y.shape} and {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_prob must have the same number of samples, got {y.shape[0]} and {p.shape[0]}")
    if p.shape[1] != n_classes:
        raise ValueError(f"y_prob must have one column per class ({n_classes}), got {p.shape[1]} columns")
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate an empty set: y_true and y_prob have no samples")
    whole = y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
    if y.dtype.kind not in "iub" and not whole:
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    bad_labels = (y < 0) | (y >= n_classes)
    if bad_labels.any():
        found = sorted({v.item() for v in np.unique(y[bad_labels])})[:5]
        raise ValueError(f"y_true must hold class indices 0..{n_classes - 1}, found {found}")
    if not np.isfinite(p).all():
        raise ValueError("y_prob must be finite: found NaN or infinity")
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"y_prob must lie in [0, 1], found values in [{p.min():.6g}, {p.max():.6g}]")
    off = np.abs(p.sum(axis=1) - 1.0)
    if (off > ROW_SUM_TOLERANCE).any():
        row = int(np.argmax(off))
        raise ValueError(
            f"each row of y_prob must sum to 1 (within {ROW_SUM_TOLERANCE:g}); row {row} sums to {p[row].sum():.9g}"
        )
    return y.astype(np.int64), p


def confusion_counts(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """``[K, K]`` counts: row = true class, column = decided class (sklearn ``confusion_matrix``).

    Every class ``0..n_classes-1`` has a row and a column, present or not. Raises ``ValueError``
    for shapes that differ, an empty set, or an index outside ``0..n_classes-1``.
    """
    y = np.asarray(y_true)
    d = np.asarray(y_pred)
    if y.ndim != 1 or d.shape != y.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of the same length, got shapes {y.shape} and {d.shape}")
    if y.shape[0] == 0:
        raise ValueError("cannot count an empty set: y_true and y_pred have no samples")
    for what, values in (("y_true", y), ("y_pred", d)):
        if values.dtype.kind not in "iu" or (values < 0).any() or (values >= n_classes).any():
            raise ValueError(f"{what} must hold integer class indices 0..{n_classes - 1}")
    return confusion_matrix(y, d, labels=list(range(n_classes))).astype(np.int64)


def multiclass_metric_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """The float metrics that get confidence intervals, in a fixed order.

    ``OVERALL_NAMES``, then for each class in order ``roc_auc_<c>, sensitivity_<c>,
    specificity_<c>, ppv_<c>, npv_<c>, f1_<c>``.
    """
    names = check_class_names(class_names)
    return OVERALL_NAMES + tuple(f"{metric}_{name}" for name in names for metric in PER_CLASS_NAMES)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else NAN


def top_label_ece(y_true: NDArray[np.int64], y_prob: NDArray[np.float64]) -> float:
    """Top-label expected calibration error (Guo et al. 2017) of checked inputs ``[N]``, ``[N, K]``.

    Confidence is the largest probability, correctness is arg-max == truth; 10 equal-width
    confidence bins (``calibration_bins``); ``sum_b |sum(correct in b) - sum(confidence in b)| / N``.
    """
    confidence = y_prob.max(axis=1)
    correct = (y_prob.argmax(axis=1) == y_true).astype(np.float64)
    bins = calibration_bins(confidence)
    gap = np.bincount(bins, weights=correct - confidence, minlength=N_CALIBRATION_BINS)
    return float(np.abs(gap).sum() / y_true.shape[0])


def one_vs_rest_aucs(y_true: NDArray[np.int64], y_prob: NDArray[np.float64]) -> NDArray[np.float64]:
    """ROC AUC ``[K]`` of each class against the rest (sklearn ``roc_auc_score`` on column ``k``).

    Takes checked inputs (``check_multiclass_inputs``). A class without both members and
    non-members in ``y_true`` gets nan.
    """
    n = y_true.shape[0]
    aucs = np.full(y_prob.shape[1], np.nan)
    for c in range(y_prob.shape[1]):
        members = y_true == c
        if 0 < members.sum() < n:
            aucs[c] = roc_auc_score(members, y_prob[:, c])
    return aucs


def macro_average(values: ArrayLike) -> float:
    """Mean of the defined (non-nan) entries of ``values``; nan when none is defined (no warning)."""
    v = np.asarray(values, dtype=np.float64)
    defined = v[~np.isnan(v)]
    return float(defined.mean()) if defined.size else NAN


def multiclass_metrics(y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str]) -> dict[str, float | int]:
    """All point metrics of probabilities ``y_prob [N, K]`` against labels ``y_true [N]``.

    Returns a flat dict with exactly the keys of ``multiclass_metric_names(class_names)``
    (floats, nan where undefined) plus ``n`` (int, samples) and ``n_<class>`` (int, true count of
    each class). See the module docstring for the definitions; raises ``ValueError`` for invalid
    input (``check_multiclass_inputs``, ``check_class_names``).
    """
    names = check_class_names(class_names)
    k = len(names)
    y, p = check_multiclass_inputs(y_true, y_prob, k)
    decided = p.argmax(axis=1)
    counts = confusion_counts(y, decided, k)
    n = int(y.shape[0])
    labels = list(range(k))
    aucs = one_vs_rest_aucs(y, p)

    with warnings.catch_warnings():
        # nan already encodes every undefined case (zero_division, replace_undefined_by); keep quiet.
        warnings.simplefilter("ignore")
        f1 = f1_score(y, decided, labels=labels, average=None, zero_division=np.nan)
        out: dict[str, float | int] = {
            "accuracy": float(accuracy_score(y, decided)),
            # sklearn drops classes absent from y_true (they have no recall): the mean over present classes.
            "balanced_accuracy": float(balanced_accuracy_score(y, decided)),
            "macro_roc_auc": macro_average(aucs),
            "macro_f1": float(f1_score(y, decided, labels=labels, average="macro", zero_division=np.nan)),
            "kappa": float(cohen_kappa_score(y, decided, labels=labels, replace_undefined_by=np.nan)),
            "brier": float(brier_score_loss(y, p, labels=labels, scale_by_half=False)),
            "ece": top_label_ece(y, p),
            "n": n,
        }
        for c, name in enumerate(names):
            tp = int(counts[c, c])
            fn = int(counts[c].sum()) - tp
            fp = int(counts[:, c].sum()) - tp
            tn = n - tp - fn - fp
            out[f"roc_auc_{name}"] = float(aucs[c])
            out[f"sensitivity_{name}"] = _ratio(tp, tp + fn)
            out[f"specificity_{name}"] = _ratio(tn, tn + fp)
            out[f"ppv_{name}"] = _ratio(tp, tp + fp)
            out[f"npv_{name}"] = _ratio(tn, tn + fn)
            out[f"f1_{name}"] = float(f1[c])
            out[f"n_{name}"] = tp + fn
    return out
