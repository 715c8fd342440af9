"""Class-stratified bootstrap confidence intervals for multi-class metrics, and a paired macro-AUC comparison.

Why: a multi-class test set of a few hundred images, some classes small, gives metrics with wide
uncertainty; the gates compare lower confidence bounds, and the champion comparison is paired on
the same images. Each class is resampled within itself, with replacement and keeping its count,
so every replicate has the test set's class mix and every present class keeps a defined
sensitivity and one-vs-rest AUC.

Promises:

* Every replicate's metrics follow exactly the definitions of ``multiclass_metrics``; they are
  computed in vectorised form (a replicate is a vector of per-sample counts, as in
  ``medimg.evaluation.bootstrap``), which is checked against ``multiclass_metrics`` on
  explicitly resampled data by the tests.
* Results depend only on the inputs and ``seed``.
* Intervals are percentile intervals, NaN-safe: replicates where a metric is undefined are
  ignored, and a metric undefined in every replicate (e.g. the AUC of a class absent from the
  test set) gets ``(nan, nan)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medimg.evaluation.bootstrap import (
    _check_boot_args,
    _divide,
    _grouped_weights,
    _percentile_interval,
    _weighted_ranking_metrics,
)
from medimg.evaluation.metrics import N_CALIBRATION_BINS, calibration_bins
from medimg.evaluation.multiclass import (
    PER_CLASS_NAMES,
    check_class_names,
    check_multiclass_inputs,
    macro_average,
    multiclass_metric_names,
    one_vs_rest_aucs,
)


def _class_groups(y: NDArray[np.int64], n_classes: int) -> list[NDArray[np.intp]]:
    return [np.flatnonzero(y == c) for c in range(n_classes)]


def _row_nanmean(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of each row's defined entries; nan for a row with none (no warning)."""
    defined = ~np.isnan(values)
    return _divide(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1).astype(np.float64))


def _weighted_macro_auc(y: NDArray[np.int64], p: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-class one-vs-rest ROC AUC of each weighted replicate, ``[replicates, K]``."""
    return np.stack(
        [_weighted_ranking_metrics((y == c).astype(np.int64), p[:, c], w)[0] for c in range(p.shape[1])], axis=1
    )


def _weighted_multiclass_metrics(
    y: NDArray[np.int64], p: NDArray[np.float64], class_names: tuple[str, ...], w: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """Every metric in ``multiclass_metric_names`` for each weighted replicate (rows of ``w``).

    Same definitions as ``multiclass_metrics``; a row of ones reproduces the point estimates.
    """
    n_samples, k = p.shape
    decided = p.argmax(axis=1)
    cells = np.zeros((n_samples, k * k))
    cells[np.arange(n_samples), y * k + decided] = 1.0
    counts = (w @ cells).reshape(-1, k, k)  # [R, true, decided]
    n = w.sum(axis=1)
    tp = np.diagonal(counts, axis1=1, axis2=2)
    true = counts.sum(axis=2)
    pred = counts.sum(axis=1)
    fn, fp = true - tp, pred - tp
    tn = n[:, None] - tp - fn - fp
    sensitivity = _divide(tp, true)
    f1 = _divide(2.0 * tp, 2.0 * tp + fp + fn)
    auc = _weighted_macro_auc(y, p, w)
    correct = tp.sum(axis=1)
    # Cohen's kappa as sklearn computes it: 1 - observed / expected disagreement (off-diagonal sums).
    expected_disagreement = _divide(n**2 - (true * pred).sum(axis=1), n)
    kappa = 1.0 - _divide(n - correct, expected_disagreement)
    onehot = np.zeros((n_samples, k))
    onehot[np.arange(n_samples), y] = 1.0
    confidence = p.max(axis=1)
    bins = np.zeros((n_samples, N_CALIBRATION_BINS))
    bins[np.arange(n_samples), calibration_bins(confidence)] = 1.0
    gap = w @ (bins * ((decided == y) - confidence)[:, None])
    out = {
        "accuracy": _divide(correct, n),
        "balanced_accuracy": _row_nanmean(sensitivity),
        "macro_roc_auc": _row_nanmean(auc),
        "macro_f1": _row_nanmean(f1),
        "kappa": kappa,
        "brier": _divide(w @ ((p - onehot) ** 2).sum(axis=1), n),
        "ece": _divide(np.abs(gap).sum(axis=1), n),
    }
    per_class = {
        "roc_auc": auc,
        "sensitivity": sensitivity,
        "specificity": _divide(tn, tn + fp),
        "ppv": _divide(tp, pred),
        "npv": _divide(tn, tn + fn),
        "f1": f1,
    }
    for c, name in enumerate(class_names):
        for metric in PER_CLASS_NAMES:
            out[f"{metric}_{name}"] = per_class[metric][:, c]
    return out


def multiclass_bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile ``1 - alpha`` intervals for every metric in ``multiclass_metric_names(class_names)``.

    Class-stratified bootstrap of labels ``[N]`` and probabilities ``[N, K]`` with ``n_boot``
    replicates: each class is resampled within itself, with replacement, keeping its count, so
    every replicate has the test set's class mix and every present class keeps a defined
    sensitivity and one-vs-rest AUC. Returns ``{name: (lower, upper)}`` in that fixed order;
    ``(nan, nan)`` for a metric undefined in every replicate (e.g. the AUC of a class absent
    from ``y_true``). ``ValueError`` for invalid input.
    """
    names = check_class_names(class_names)
    y, p = check_multiclass_inputs(y_true, y_prob, len(names))
    _check_boot_args(n_boot, alpha)
    weights = _grouped_weights(_class_groups(y, len(names)), y.shape[0], int(n_boot), seed)
    blocks = [_weighted_multiclass_metrics(y, p, names, w) for w in weights]
    return {
        name: _percentile_interval(np.concatenate([b[name] for b in blocks]), alpha)
        for name in multiclass_metric_names(names)
    }


def paired_macro_auc_difference(
    y_true: ArrayLike,
    prob_a: ArrayLike,
    prob_b: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | int]:
    """Macro one-vs-rest ROC AUC of model ``a`` minus that of model ``b``, with a paired CI.

    Multi-class counterpart of ``paired_auc_difference``: labels ``[N]`` and probabilities
    ``[N, K]`` of both models on the same images, resampled together, class-stratified. The
    macro AUC averages over the classes with members and non-members in ``y_true`` (the same
    classes in every replicate). Returns ``{"delta", "lower", "upper", "n_boot"}``; a model
    compared with itself gives exactly 0 with interval [0, 0]. Raises ``ValueError`` when
    ``y_true`` holds one class only (no AUC is defined) or the inputs disagree in shape.
    """
    pa_raw = np.asarray(prob_a, dtype=np.float64)
    if pa_raw.ndim != 2:
        raise ValueError(f"prob_a must be 2-D [N, K], got shape {pa_raw.shape}")
    y, pa = check_multiclass_inputs(y_true, pa_raw, pa_raw.shape[1])
    _, pb = check_multiclass_inputs(y, prob_b, pa.shape[1])
    _check_boot_args(n_boot, alpha)
    if np.unique(y).size < 2:
        raise ValueError("cannot compare macro AUCs: y_true holds one class only, so no AUC is defined")
    delta = macro_average(one_vs_rest_aucs(y, pa)) - macro_average(one_vs_rest_aucs(y, pb))
    diffs = [
        _row_nanmean(_weighted_macro_auc(y, pa, w)) - _row_nanmean(_weighted_macro_auc(y, pb, w))
        for w in _grouped_weights(_class_groups(y, pa.shape[1]), y.shape[0], int(n_boot), seed)
    ]
    lower, upper = _percentile_interval(np.concatenate(diffs), alpha)
    return {"delta": float(delta), "lower": lower, "upper": upper, "n_boot": int(n_boot)}
