"""Stratified bootstrap intervals and the paired AUC comparison, on real numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medimg.evaluation.bootstrap import (
    _stratified_weights,
    _weighted_metrics,
    bootstrap_ci,
    paired_auc_difference,
)
from medimg.evaluation.metrics import METRIC_NAMES, binary_metrics


def _synthetic(n: int, n_pos: int, seed: int, shift: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A noisy but informative model; probabilities rounded to 2 decimals so there are ties."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) < n_pos).astype(int)
    rng.shuffle(y)
    p = np.clip(np.round(rng.normal(0.35 + shift * y, 0.2), 2), 0.0, 1.0)
    return y, p


Y, P = _synthetic(300, 180, seed=1)


def test_replicates_match_binary_metrics_exactly() -> None:
    # The vectorised replicate metrics must be the binary_metrics definitions, ties included.
    weights = next(_stratified_weights(Y, 15, seed=3))
    fast = _weighted_metrics(Y, P, 0.5, weights)
    for r in range(weights.shape[0]):
        idx = np.repeat(np.arange(Y.size), weights[r].astype(int))
        slow = binary_metrics(Y[idx], P[idx], 0.5)
        for name in METRIC_NAMES:
            assert fast[name][r] == pytest.approx(slow[name], abs=1e-12), name


def test_resampling_is_stratified() -> None:
    weights = np.concatenate(list(_stratified_weights(Y, 50, seed=0)))
    assert weights.shape == (50, Y.size)
    assert np.all(weights[:, Y == 1].sum(axis=1) == (Y == 1).sum())
    assert np.all(weights[:, Y == 0].sum(axis=1) == (Y == 0).sum())


def test_intervals_contain_point_estimates() -> None:
    point = binary_metrics(Y, P, 0.5)
    ci = bootstrap_ci(Y, P, 0.5, n_boot=500, seed=0)
    assert set(ci) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        lower, upper = ci[name]
        assert lower <= point[name] <= upper, (name, lower, point[name], upper)
        assert lower < upper, name


def test_intervals_narrow_with_more_data() -> None:
    small = bootstrap_ci(Y, P, 0.5, n_boot=400, seed=0)
    large = bootstrap_ci(np.tile(Y, 4), np.tile(P, 4), 0.5, n_boot=400, seed=0)
    for name in ("accuracy", "sensitivity", "roc_auc", "brier"):
        width_small = small[name][1] - small[name][0]
        width_large = large[name][1] - large[name][0]
        assert width_large < 0.75 * width_small, name  # ~ 1/sqrt(4) = 0.5 expected


def test_seed_makes_results_reproducible() -> None:
    a = bootstrap_ci(Y, P, 0.5, n_boot=200, seed=7)
    b = bootstrap_ci(Y, P, 0.5, n_boot=200, seed=7)
    c = bootstrap_ci(Y, P, 0.5, n_boot=200, seed=8)
    assert a == b
    assert a != c


def test_alpha_controls_width() -> None:
    wide = bootstrap_ci(Y, P, 0.5, n_boot=300, seed=0, alpha=0.05)["roc_auc"]
    narrow = bootstrap_ci(Y, P, 0.5, n_boot=300, seed=0, alpha=0.5)["roc_auc"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_one_class_gives_nan_intervals_without_crashing() -> None:
    y = np.zeros(40, dtype=int)
    p = np.linspace(0.0, 0.9, 40)
    ci = bootstrap_ci(y, p, 0.5, n_boot=100, seed=0)
    for name in ("roc_auc", "pr_auc", "sensitivity"):
        assert all(math.isnan(v) for v in ci[name]), name
    lower, upper = ci["specificity"]
    assert 0.0 <= lower <= upper <= 1.0


def test_precision_interval_ignores_undefined_replicates() -> None:
    # Only one sample is predicted positive; replicates missing it have precision 0/0 = nan.
    y = np.array([1] * 10 + [0] * 10)
    p = np.array([0.9] + [0.2] * 9 + [0.1] * 10)
    ci = bootstrap_ci(y, p, 0.5, n_boot=200, seed=0)
    assert ci["precision"] == (1.0, 1.0)


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(Y, P, 0.5, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(Y, P, 0.5, alpha=1.0)


# --- paired AUC difference ------------------------------------------------------------------


def test_model_against_itself_is_exactly_zero() -> None:
    result = paired_auc_difference(Y, P, P, n_boot=300, seed=0)
    assert result == {"delta": 0.0, "lower": 0.0, "upper": 0.0, "n_boot": 300}


def test_hand_computed_delta() -> None:
    # Model a separates perfectly (AUC 1); model b ranks one negative above one positive
    # (pairs 2 x 2 = 4, 3 of them right: AUC 0.75). delta = 0.25.
    y = [0, 0, 1, 1]
    result = paired_auc_difference(y, [0.1, 0.2, 0.8, 0.9], [0.1, 0.7, 0.6, 0.9], n_boot=200)
    assert result["delta"] == pytest.approx(0.25)
    assert 0.0 <= result["lower"] <= result["delta"] <= result["upper"] <= 1.0


def test_paired_difference_is_antisymmetric_and_reproducible() -> None:
    rng = np.random.default_rng(5)
    other = np.clip(P + rng.normal(0, 0.1, P.size), 0, 1)
    ab = paired_auc_difference(Y, P, other, n_boot=300, seed=4)
    ba = paired_auc_difference(Y, other, P, n_boot=300, seed=4)
    assert ab == paired_auc_difference(Y, P, other, n_boot=300, seed=4)
    assert ab["delta"] == pytest.approx(-ba["delta"])
    assert ab["lower"] == pytest.approx(-ba["upper"])
    assert ab["upper"] == pytest.approx(-ba["lower"])
    assert ab["lower"] <= ab["delta"] <= ab["upper"]


def test_paired_difference_detects_a_better_model() -> None:
    y, good = _synthetic(400, 200, seed=9, shift=0.4)
    rng = np.random.default_rng(10)
    noisy = np.clip(good + rng.normal(0, 0.3, good.size), 0, 1)
    result = paired_auc_difference(y, good, noisy, n_boot=500, seed=0)
    assert result["lower"] > 0


def test_paired_difference_needs_both_classes_and_matching_lengths() -> None:
    with pytest.raises(ValueError, match="one class"):
        paired_auc_difference([1, 1, 1], [0.2, 0.4, 0.6], [0.3, 0.5, 0.7])
    with pytest.raises(ValueError, match="same length"):
        paired_auc_difference([0, 1, 1], [0.2, 0.4, 0.6], [0.3, 0.5])
