"""Choosing the operating threshold of a binary classifier from labelled predictions.

Why: sensitivity, specificity and the benchmark gate are only meaningful at a stated
threshold, and that threshold must be chosen by a rule written down once, not by hand.

Promises:

* Thresholds are taken from the distinct predicted probabilities (the thresholds of
  ``sklearn.metrics.roc_curve``), with the convention of ``binary_metrics``: predicted
  positive when ``prob >= threshold``.
* Both functions raise ``ValueError`` when ``y_true`` holds one class only (no ROC curve
  exists), and for any input ``check_binary_inputs`` rejects.
* Ties are resolved towards the largest threshold, i.e. the most specific operating point.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_curve

from medimg.evaluation.metrics import check_binary_inputs

_SENSITIVITY_TOL = 1e-12


def _roc_counts(
    y_true: ArrayLike, y_prob: ArrayLike, purpose: str
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], int, int]:
    """ROC points as exact integer counts (tp, fp) with their thresholds, largest first."""
    y, p = check_binary_inputs(y_true, y_prob)
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "negatives (0)" if n_pos == 0 else "positives (1)"
        raise ValueError(
            f"cannot choose a {purpose} threshold: y_true holds only {only}; both classes are needed for a ROC curve"
        )
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    tp = np.rint(tpr * n_pos).astype(np.int64)
    fp = np.rint(fpr * n_neg).astype(np.int64)
    return tp, fp, thresholds, n_pos, n_neg


def _finite_threshold(value: float) -> float:
    # roc_curve's first threshold is +inf ("predict nothing positive"); the highest threshold
    # that can be stated as a probability is 1.0.
    return 1.0 if not math.isfinite(value) or value > 1.0 else float(value)


def youden_threshold(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1.

    Why: with no clinical costs stated, J weighs a missed pneumonia and a false alarm equally.
    The maximum is searched over every ROC threshold and compared exactly (integer counts), so
    equal J values are true ties; ties go to the largest threshold. The result is a finite
    float in (0, 1] (sklearn's infinite first threshold becomes 1.0).
    """
    tp, fp, thresholds, n_pos, n_neg = _roc_counts(y_true, y_prob, "Youden")
    j_scaled = tp * n_neg - fp * n_pos  # J * n_pos * n_neg, exact in integers
    best = int(np.flatnonzero(j_scaled == j_scaled.max())[0])  # thresholds are decreasing
    return _finite_threshold(float(thresholds[best]))


def max_accuracy_threshold(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """The threshold of highest accuracy, (TP + TN) / N, on ``(y_true, y_prob)``.

    Why: where a benchmark reports accuracy (the MedMNIST tables), the operating point that
    serves it is the one most accurate on validation, not Youden's J, which weighs the classes
    equally and so gives up accuracy on imbalanced data (VesselMNIST3D: 11% aneurysms).
    Compared exactly in integer counts over every ROC threshold; ties go to the largest
    threshold. The result is a finite float in (0, 1].
    """
    tp, fp, thresholds, _n_pos, n_neg = _roc_counts(y_true, y_prob, "maximum-accuracy")
    correct = tp + (n_neg - fp)
    best = int(np.flatnonzero(correct == correct.max())[0])  # thresholds are decreasing
    return _finite_threshold(float(thresholds[best]))


def threshold_for_sensitivity(y_true: ArrayLike, y_prob: ArrayLike, target: float) -> float:
    """The largest threshold whose sensitivity on ``(y_true, y_prob)`` is at least ``target``.

    Why: a screening tool is specified by the sensitivity it must reach; the largest threshold
    reaching it keeps specificity as high as possible. ``target`` must lie in [0, 1]; a
    sensitivity equal to ``target`` up to 1e-12 counts as reaching it. The result lies in
    [0, 1] (0 only if the positives that must be caught have probability 0).
    """
    target = float(target)
    if not (0.0 <= target <= 1.0):
        raise ValueError(f"target sensitivity must lie in [0, 1], got {target}")
    tp, _fp, thresholds, n_pos, _n_neg = _roc_counts(y_true, y_prob, "target-sensitivity")
    reached = np.flatnonzero(tp / n_pos >= target - _SENSITIVITY_TOL)
    # The last ROC point has sensitivity 1, so ``reached`` is never empty.
    return _finite_threshold(float(thresholds[int(reached[0])]))
