"""Point metrics of a binary classifier at one operating threshold.

Why: the promotion gates, the model card and the tracked run must all quote the same numbers
computed the same way. This module is that single definition. Positive class is ``1``
(pneumonia); a sample is *predicted* positive when its probability is ``>= threshold``.

Promises:

* ``binary_metrics`` never raises for a degenerate but valid test set (one class only, a
  threshold above or below every probability): a metric whose denominator is zero, or that is
  undefined for one class (ROC AUC, PR AUC), is ``float('nan')`` -- never a silent 0 -- and no
  warnings are emitted.
* Invalid input (wrong shapes, labels other than 0/1, probabilities outside [0, 1] or not
  finite, an empty set) raises ``ValueError`` with a message saying what was wrong.
* ``METRIC_NAMES`` lists, in a fixed order, the float metrics that get confidence intervals.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

N_CALIBRATION_BINS = 10
"""Number of equal-width probability bins used for the expected calibration error."""

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)
"""The float metrics of ``binary_metrics`` that get bootstrap confidence intervals, in order."""

COUNT_NAMES: tuple[str, ...] = ("tp", "fp", "tn", "fn", "n")
"""The integer counts of ``binary_metrics``."""

NAN = float("nan")


def check_binary_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Validate labels and probabilities and return them as 1-D ``int64`` / ``float64`` arrays.

    Why: every evaluation function must reject the same bad inputs with the same clear message
    rather than return a plausible-looking wrong number.

    Raises ``ValueError`` unless both are 1-D, non-empty and of equal length, every label is 0
    or 1, and every probability is finite and within [0, 1].
    """
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y_true and y_prob must be 1-D, got shapes {y.shape} and {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_prob must have the same length, got {y.shape[0]} and {p.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate an empty set: y_true and y_prob have no samples")
    bad_labels = ~np.isin(y, (0, 1))
    if bad_labels.any():
        found = sorted({v.item() for v in np.unique(y[bad_labels])})[:5]
        raise ValueError(f"y_true must contain only 0 and 1, found {found}")
    if not np.isfinite(p).all():
        raise ValueError("y_prob must be finite: found NaN or infinity")
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"y_prob must lie in [0, 1], found values in [{p.min():.6g}, {p.max():.6g}]")
    return y.astype(np.int64), p


def calibration_bins(y_prob: ArrayLike) -> NDArray[np.intp]:
    """Index (0..9) of the equal-width calibration bin of each probability.

    Bin ``k`` holds ``[k/10, (k+1)/10)``; the last bin also holds exactly 1.0. Shared by every
    ECE computation so that point estimates and bootstrap replicates bin identically.
    """
    p = np.asarray(y_prob, dtype=np.float64)
    bins = np.floor(p * N_CALIBRATION_BINS).astype(np.intp)
    return np.clip(bins, 0, N_CALIBRATION_BINS - 1)


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Expected calibration error with 10 equal-width bins, weighted by bin count.

    ``sum_b (n_b / n) * |mean(y in b) - mean(p in b)|``; empty bins contribute nothing.
    0 means the predicted probabilities match observed frequencies within every bin.
    """
    y, p = check_binary_inputs(y_true, y_prob)
    bins = calibration_bins(p)
    sum_y = np.bincount(bins, weights=y.astype(np.float64), minlength=N_CALIBRATION_BINS)
    sum_p = np.bincount(bins, weights=p, minlength=N_CALIBRATION_BINS)
    # (n_b / n) * |sum_y/n_b - sum_p/n_b| == |sum_y - sum_p| / n
    return float(np.abs(sum_y - sum_p).sum() / y.shape[0])


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else NAN


def binary_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> dict[str, float]:
    """All point metrics of predictions ``y_prob`` against labels ``y_true`` at ``threshold``.

    Returns exactly these keys:

    * ``accuracy, sensitivity, specificity, precision, npv, f1`` -- at the threshold
      (predicted positive when ``prob >= threshold``); nan where the denominator is zero.
      ``f1`` is ``2tp / (2tp + fp + fn)``: 0 when there are positives (true or predicted) but
      none is found, nan only when there are neither.
    * ``roc_auc, pr_auc`` -- threshold-free; ``pr_auc`` is average precision. nan when
      ``y_true`` holds one class only.
    * ``brier`` -- mean squared error of the probabilities; ``ece`` -- expected calibration
      error (10 equal-width bins).
    * ``tp, fp, tn, fn, n`` -- counts (ints); ``prevalence`` -- fraction positive;
      ``threshold`` -- the threshold used, echoed.
    """
    y, p = check_binary_inputs(y_true, y_prob)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    n = int(y.shape[0])
    both_classes = 0 < tp + fn < n

    with warnings.catch_warnings():
        # zero_division=nan already encodes the undefined cases; keep the output quiet.
        warnings.simplefilter("ignore")
        sensitivity = float(recall_score(y, pred, pos_label=1, zero_division=np.nan))
        specificity = float(recall_score(y, pred, pos_label=0, zero_division=np.nan))
        precision = float(precision_score(y, pred, pos_label=1, zero_division=np.nan))
        npv = float(precision_score(y, pred, pos_label=0, zero_division=np.nan))
        f1 = float(f1_score(y, pred, pos_label=1, zero_division=np.nan))
        roc_auc = float(roc_auc_score(y, p)) if both_classes else NAN
        pr_auc = float(average_precision_score(y, p, pos_label=1)) if both_classes else NAN
        brier = float(brier_score_loss(y, p, pos_label=1))

    return {
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "npv": npv,
        "f1": f1,
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": brier,
        "ece": expected_calibration_error(y, p),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
        "prevalence": _ratio(tp + fn, n),
        "threshold": threshold,
    }
