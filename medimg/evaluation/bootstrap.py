"""Stratified bootstrap confidence intervals for test-set metrics, and a paired AUC comparison.

Why: a test set of a few hundred images gives metrics with wide uncertainty; the gates compare
*lower confidence bounds* against benchmarks and champions so that a lucky split cannot promote
a model. Resampling is stratified -- positives and negatives are resampled separately (or,
given ``strata``, each stratum, e.g. the classes behind an "any abnormality" operating point),
each with replacement and keeping its count -- so every replicate has the test set's prevalence
and (when the test set has both classes) an AUC. ``medimg.evaluation.multiclass_bootstrap``
builds the class-stratified multi-class intervals on the same replicate machinery.

Promises:

* Every replicate's metrics follow exactly the definitions of ``binary_metrics``; they are
  computed in vectorised form (a replicate is a vector of per-sample counts), which is checked
  against ``binary_metrics`` on explicitly resampled data by the tests.
* Results depend only on the inputs and ``seed``: the same call returns the same numbers.
* Intervals are percentile intervals, NaN-safe: replicates where a metric is undefined are
  ignored, and a metric undefined in every replicate gets ``(nan, nan)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_auc_score

from medimg.evaluation.metrics import (
    METRIC_NAMES,
    N_CALIBRATION_BINS,
    calibration_bins,
    check_binary_inputs,
)

_MAX_CHUNK_ELEMENTS = 2_000_000  # replicates x samples held in memory at once


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def _grouped_weights(groups: list[NDArray[np.intp]], n: int, n_boot: int, seed: int) -> Iterator[NDArray[np.float64]]:
    """Yield blocks of replicates as per-sample counts, shape ``(replicates, n)``.

    Row ``r`` column ``i`` is how many times sample ``i`` was drawn in replicate ``r``; each
    row draws, for every group in order, as many samples as the group holds from that group,
    with replacement (so every group keeps its count). Block sizes depend only on ``n``, so
    results depend only on the inputs and the seed.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        drawn = np.empty((rows, n), dtype=np.int64)
        start = 0
        for group in groups:
            if group.size:
                drawn[:, start : start + group.size] = group[rng.integers(0, group.size, size=(rows, group.size))]
                start += group.size
        flat = (drawn + (np.arange(rows, dtype=np.int64) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        done += rows


def _stratified_weights(y: NDArray[np.int64], n_boot: int, seed: int) -> Iterator[NDArray[np.float64]]:
    """Replicate blocks (see ``_grouped_weights``) drawing positives from positives, negatives from negatives."""
    return _grouped_weights([np.flatnonzero(y == 1), np.flatnonzero(y == 0)], y.shape[0], n_boot, seed)


def _strata_groups(strata: ArrayLike, n: int) -> list[NDArray[np.intp]]:
    """Sample indices of each stratum, strata in sorted order; ``ValueError`` unless ``strata`` is ``[n]``."""
    s = np.asarray(strata)
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"strata must be 1-D with one entry per sample ({n}), got shape {s.shape}")
    values, inverse = np.unique(s, return_inverse=True)
    return [np.flatnonzero(inverse == i) for i in range(values.size)]


def _divide(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _weighted_ranking_metrics(
    y: NDArray[np.int64], p: NDArray[np.float64], w: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """ROC AUC and average precision of each weighted replicate (rows of ``w``), tie-exact."""
    order = np.argsort(-p, kind="stable")
    p_sorted = p[order]
    # last position of each group of equal probabilities, in decreasing-probability order
    ends = np.flatnonzero(np.append(p_sorted[1:] != p_sorted[:-1], True))
    w_sorted = w[:, order]
    is_pos = y[order].astype(np.float64)
    tp = np.cumsum(w_sorted * is_pos, axis=1)[:, ends]  # positives with prob >= group value
    fp = np.cumsum(w_sorted * (1.0 - is_pos), axis=1)[:, ends]
    n_pos = tp[:, -1:]
    n_neg = fp[:, -1:]
    pos_in_group = np.diff(tp, axis=1, prepend=0.0)
    neg_in_group = np.diff(fp, axis=1, prepend=0.0)
    # Mann-Whitney: each positive beats the negatives strictly below it, ties count half.
    beaten = pos_in_group * (n_neg - fp + 0.5 * neg_in_group)
    auc = _divide(beaten.sum(axis=1), (n_pos * n_neg)[:, 0])
    # Average precision: sum over thresholds of (recall increase) x (precision there).
    precision = _divide(tp, tp + fp)
    ap_terms = np.where(pos_in_group > 0, pos_in_group * np.nan_to_num(precision), 0.0)
    ap = _divide(ap_terms.sum(axis=1), n_pos[:, 0])
    defined = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0)
    auc[~defined] = np.nan
    ap[~defined] = np.nan
    return auc, ap


def _weighted_metrics(
    y: NDArray[np.int64], p: NDArray[np.float64], threshold: float, w: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """Every metric in ``METRIC_NAMES`` for each weighted replicate (rows of ``w``).

    Same definitions as ``binary_metrics``; a row of ones reproduces the point estimate.
    """
    yf = y.astype(np.float64)
    pred = (p >= threshold).astype(np.float64)
    tp = w @ (yf * pred)
    fp = w @ ((1.0 - yf) * pred)
    fn = w @ (yf * (1.0 - pred))
    tn = w @ ((1.0 - yf) * (1.0 - pred))
    n = tp + fp + fn + tn
    bins = calibration_bins(p)
    onehot = np.zeros((p.shape[0], N_CALIBRATION_BINS))
    onehot[np.arange(p.shape[0]), bins] = 1.0
    gap = w @ (onehot * (yf - p)[:, None])  # per bin: sum(y) - sum(p)
    auc, ap = _weighted_ranking_metrics(y, p, w)
    return {
        "accuracy": _divide(tp + tn, n),
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, tp + fp),
        "npv": _divide(tn, tn + fn),
        "f1": _divide(2.0 * tp, 2.0 * tp + fp + fn),
        "roc_auc": auc,
        "pr_auc": ap,
        "brier": _divide(w @ (p - yf) ** 2, n),
        "ece": _divide(np.abs(gap).sum(axis=1), n),
    }


def _percentile_interval(values: NDArray[np.float64], alpha: float) -> tuple[float, float]:
    if not np.isfinite(values).any():
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lower, upper = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lower), float(upper))


def bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    strata: ArrayLike | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile ``1 - alpha`` confidence intervals for every metric in ``METRIC_NAMES``.

    Stratified bootstrap with ``n_boot`` replicates at the fixed ``threshold`` (the threshold
    is not re-chosen per replicate). By default positives and negatives are resampled
    separately; with ``strata`` (``[N]``, any sortable labels, e.g. the class index of a
    multi-class task whose "any abnormality" operating point this is) each stratum is
    resampled within itself, keeping its count. Returns ``{name: (lower, upper)}`` with
    ``lower <= upper``, or ``(nan, nan)`` for a metric that is undefined in every replicate
    (e.g. AUC when ``y_true`` holds one class). ``ValueError`` for invalid input.
    """
    y, p = check_binary_inputs(y_true, y_prob)
    _check_boot_args(n_boot, alpha)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if strata is None:
        weights = _stratified_weights(y, int(n_boot), seed)
    else:
        weights = _grouped_weights(_strata_groups(strata, y.shape[0]), y.shape[0], int(n_boot), seed)
    blocks = [_weighted_metrics(y, p, threshold, w) for w in weights]
    return {name: _percentile_interval(np.concatenate([b[name] for b in blocks]), alpha) for name in METRIC_NAMES}


def paired_auc_difference(
    y_true: ArrayLike,
    prob_a: ArrayLike,
    prob_b: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | int]:
    """ROC AUC of model ``a`` minus that of model ``b`` on the same test set, with a paired CI.

    Why: two models scored on the same images are correlated; resampling the *same* images for
    both (paired, stratified bootstrap) gives a much tighter and honest interval for the
    difference than two separate intervals would.

    Returns ``{"delta": AUC_a - AUC_b on the full data, "lower": ..., "upper": ...,
    "n_boot": n_boot}`` with the percentile ``1 - alpha`` interval of the replicate
    differences. A model compared with itself gives exactly 0 with interval [0, 0]. Raises
    ``ValueError`` when ``y_true`` holds one class (AUC undefined) or the inputs disagree.
    """
    y, pa = check_binary_inputs(y_true, prob_a)
    _, pb = check_binary_inputs(y, prob_b)
    _check_boot_args(n_boot, alpha)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        raise ValueError("cannot compare AUCs: y_true holds one class only, so AUC is undefined")
    delta = float(roc_auc_score(y, pa) - roc_auc_score(y, pb))
    diffs = []
    for w in _stratified_weights(y, int(n_boot), seed):
        auc_a, _ = _weighted_ranking_metrics(y, pa, w)
        auc_b, _ = _weighted_ranking_metrics(y, pb, w)
        diffs.append(auc_a - auc_b)
    lower, upper = _percentile_interval(np.concatenate(diffs), alpha)
    return {"delta": delta, "lower": lower, "upper": upper, "n_boot": int(n_boot)}
