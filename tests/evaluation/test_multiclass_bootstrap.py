"""Class-stratified bootstrap of the multi-class metrics, the paired macro-AUC comparison, and
the binary bootstrap's ``strata`` option."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medimg.evaluation.bootstrap import _grouped_weights, _strata_groups, bootstrap_ci
from medimg.evaluation.metrics import METRIC_NAMES, binary_metrics
from medimg.evaluation.multiclass import multiclass_metric_names, multiclass_metrics
from medimg.evaluation.multiclass_bootstrap import (
    _class_groups,
    _weighted_multiclass_metrics,
    multiclass_bootstrap_ci,
    paired_macro_auc_difference,
)

NAMES = ("glioma", "meningioma", "pituitary", "no_tumor")


def _synthetic(n: int, seed: int, k: int = 4, shift: float = 1.2, absent: int | None = None):
    """Labels and softmax probabilities of a noisy but informative model, rounded so there are ties."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(k) if c != absent]
    y = rng.choice(classes, size=n, p=np.linspace(1.0, 2.0, len(classes)) / np.linspace(1.0, 2.0, len(classes)).sum())
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += shift
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)
    p[:, -1] = 1.0 - p[:, :-1].sum(axis=1)  # rows sum to 1 (within float rounding)
    p = np.clip(p, 0.0, 1.0)
    return y, p / p.sum(axis=1, keepdims=True)


Y, P = _synthetic(240, seed=1)


def _equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def _check_against_resampled(y, p, names, weights) -> None:
    fast = _weighted_multiclass_metrics(y, p, names, weights)
    assert list(fast) == list(multiclass_metric_names(names))
    for r in range(weights.shape[0]):
        idx = np.repeat(np.arange(y.size), weights[r].astype(int))
        slow = multiclass_metrics(y[idx], p[idx], names)
        for name in fast:
            assert _equal(fast[name][r], slow[name]), (r, name, fast[name][r], slow[name])


def test_replicates_match_multiclass_metrics_exactly() -> None:
    weights = next(_grouped_weights(_class_groups(Y, 4), Y.size, 15, seed=3))
    _check_against_resampled(Y, P, NAMES, weights)


def test_replicates_match_with_a_class_absent_from_the_test_set() -> None:
    y, p = _synthetic(150, seed=2, absent=2)
    weights = next(_grouped_weights(_class_groups(y, 4), y.size, 10, seed=0))
    _check_against_resampled(y, p, NAMES, weights)


# Hand-computed replicates of the six samples of test_multiclass.py's case A (classes a, b, c):
#   i  y  p(a, b, c)        decided
#   0  a  0.7 0.2 0.1       a
#   1  a  0.4 0.5 0.1       b
#   2  b  0.2 0.6 0.2       b
#   3  b  0.1 0.8 0.1       b
#   4  c  0.3 0.3 0.4       c
#   5  c  0.5 0.1 0.4       a
Y_A = np.array([0, 0, 1, 1, 2, 2])
P_A = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.6, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])


def test_hand_computed_replicate_where_a_class_is_never_decided() -> None:
    # Weights (2, 0, 1, 1, 0, 2): a class-stratified draw (each class keeps 2). Sample 4, the only
    # one decided c, is not drawn. Confusion: a [2 0 0], b [0 2 0], c [2 0 0].
    #   accuracy 4/6; c: tp 0 fn 2 fp 0 -> sensitivity 0, ppv 0/0 = nan, f1 0/(0+0+2) = 0
    #   a: tp 2 fp 2 -> ppv 2/4; balanced accuracy (1 + 1 + 0) / 3 = 2/3
    #   kappa: po 4/6, true (2, 2, 2), decided (4, 2, 0): pe = (8 + 4 + 0) / 36 = 1/3 -> 1/2
    #   AUC c: members 0.4, 0.4 (i5 twice) beat 0.1 0.1 0.2 0.1 -> 1
    #   Brier: 2 x .14 + .24 + .06 + 2 x .62 = 1.82 -> 1.82 / 6
    w = np.array([[2.0, 0.0, 1.0, 1.0, 0.0, 2.0]])
    m = _weighted_multiclass_metrics(Y_A, P_A, ("a", "b", "c"), w)
    assert m["accuracy"][0] == pytest.approx(4 / 6)
    assert m["sensitivity_c"][0] == 0.0 and math.isnan(m["ppv_c"][0]) and m["f1_c"][0] == 0.0
    assert m["ppv_a"][0] == pytest.approx(0.5)
    assert m["balanced_accuracy"][0] == pytest.approx(2 / 3)
    assert m["kappa"][0] == pytest.approx(0.5)
    assert m["roc_auc_c"][0] == pytest.approx(1.0)
    assert m["brier"][0] == pytest.approx(1.82 / 6)


def test_hand_computed_replicate_where_a_class_is_absent() -> None:
    # Weights (1, 1, 1, 1, 0, 0): class c is not in this sample (possible when resampling is not
    # stratified, e.g. by another stratum). c: sensitivity and AUC nan; the macro figures average
    # over a and b only:
    #   AUC a: members 0.7, 0.4 vs 0.2, 0.1 -> 1; AUC b: members 0.6, 0.8 vs 0.2, 0.5 -> 1; macro 1
    #   recall a 1/2 (i1 decided b), b 1 -> balanced accuracy 3/4
    #   F1 a: tp 1 fp 0 fn 1 -> 2/3; b: tp 2 fp 1 -> 4/5; c: never decided, absent -> nan; macro (2/3 + 4/5) / 2
    w = np.array([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    m = _weighted_multiclass_metrics(Y_A, P_A, ("a", "b", "c"), w)
    assert math.isnan(m["roc_auc_c"][0]) and math.isnan(m["sensitivity_c"][0]) and math.isnan(m["f1_c"][0])
    assert m["macro_roc_auc"][0] == pytest.approx(1.0)
    assert m["balanced_accuracy"][0] == pytest.approx(0.75)
    assert m["macro_f1"][0] == pytest.approx((2 / 3 + 4 / 5) / 2)
    _check_against_resampled(Y_A, P_A, ("a", "b", "c"), w)


def test_resampling_keeps_every_class_count() -> None:
    y = Y
    weights = np.concatenate(list(_grouped_weights(_class_groups(y, 4), y.size, 60, seed=0)))
    assert weights.shape == (60, y.size)
    for c in range(4):
        assert np.all(weights[:, y == c].sum(axis=1) == (y == c).sum())
        assert (weights[:, y == c] > 1).any()  # really resampled, not the identity


def test_intervals_contain_point_estimates_and_are_reproducible() -> None:
    point = multiclass_metrics(Y, P, NAMES)
    ci = multiclass_bootstrap_ci(Y, P, NAMES, n_boot=400, seed=0)
    assert list(ci) == list(multiclass_metric_names(NAMES))
    for name, (lower, upper) in ci.items():
        assert lower <= point[name] <= upper, (name, lower, point[name], upper)
    assert ci["macro_roc_auc"][0] < ci["macro_roc_auc"][1]
    assert ci == multiclass_bootstrap_ci(Y, P, NAMES, n_boot=400, seed=0)
    assert ci != multiclass_bootstrap_ci(Y, P, NAMES, n_boot=400, seed=1)


def test_class_absent_from_the_test_set_gets_nan_intervals() -> None:
    y, p = _synthetic(200, seed=4, absent=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = multiclass_bootstrap_ci(y, p, NAMES, n_boot=200, seed=0)
    assert all(math.isnan(v) for v in ci["roc_auc_no_tumor"]) and all(math.isnan(v) for v in ci["sensitivity_no_tumor"])
    # macro AUC over the three present classes: each replicate is finite, so is the interval
    assert all(math.isfinite(v) for v in ci["macro_roc_auc"])
    point = multiclass_metrics(y, p, NAMES)
    assert ci["macro_roc_auc"][0] <= point["macro_roc_auc"] <= ci["macro_roc_auc"][1]


def test_multiclass_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        multiclass_bootstrap_ci(Y, P, NAMES, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        multiclass_bootstrap_ci(Y, P, NAMES, alpha=0.0)
    with pytest.raises(ValueError, match="one column per class"):
        multiclass_bootstrap_ci(Y, P, NAMES[:3])


# --- paired macro AUC difference ------------------------------------------------------------


def test_model_against_itself_is_exactly_zero() -> None:
    result = paired_macro_auc_difference(Y, P, P, n_boot=300, seed=0)
    assert result == {"delta": 0.0, "lower": 0.0, "upper": 0.0, "n_boot": 300}


def test_hand_computed_macro_delta() -> None:
    # Model a = case A above: OvR AUCs 7/8, 1, 1 -> macro 23/24.
    # Model b: swap a's and b's columns for sample 0 (0.2, 0.7, 0.1):
    #   AUC a: members 0.2, 0.4 vs 0.2 0.1 0.3 0.5: 0.2 beats 0.1 and ties 0.2 (1.5); 0.4 beats 3 -> 4.5/8
    #   AUC b: members 0.6, 0.8 vs 0.7 0.5 0.3 0.1: 0.6 beats 3, 0.8 beats 4 -> 7/8
    #   AUC c unchanged 1 -> macro (4.5/8 + 7/8 + 1) / 3 = 19.5/24
    # delta = 23/24 - 19.5/24 = 3.5/24
    pb = P_A.copy()
    pb[0] = [0.2, 0.7, 0.1]
    result = paired_macro_auc_difference(Y_A, P_A, pb, n_boot=200, seed=0)
    assert result["delta"] == pytest.approx(3.5 / 24)
    assert result["lower"] <= result["delta"] <= result["upper"]


def test_paired_macro_difference_is_antisymmetric_and_detects_a_better_model() -> None:
    rng = np.random.default_rng(5)
    noisy = np.clip(P + rng.normal(0, 0.15, P.shape), 0.0, None)
    noisy /= noisy.sum(axis=1, keepdims=True)
    ab = paired_macro_auc_difference(Y, P, noisy, n_boot=400, seed=4)
    ba = paired_macro_auc_difference(Y, noisy, P, n_boot=400, seed=4)
    assert ab["delta"] == pytest.approx(-ba["delta"])
    assert ab["lower"] == pytest.approx(-ba["upper"]) and ab["upper"] == pytest.approx(-ba["lower"])
    assert ab["lower"] > 0


def test_paired_macro_difference_needs_two_classes_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match="one class"):
        paired_macro_auc_difference([1, 1], [[0.2, 0.8], [0.4, 0.6]], [[0.3, 0.7], [0.5, 0.5]])
    with pytest.raises(ValueError, match="one column per class"):
        paired_macro_auc_difference(Y, P, P[:, :3])


# --- binary bootstrap_ci with strata --------------------------------------------------------


def test_strata_resample_within_each_stratum() -> None:
    # "any abnormality" (classes 1..3 abnormal) resampled within each of the four classes
    y_abnormal = (Y > 0).astype(int)
    y = Y
    weights = np.concatenate(list(_grouped_weights(_strata_groups(y, y.size), y.size, 40, seed=0)))
    for c in range(4):
        assert np.all(weights[:, y == c].sum(axis=1) == (y == c).sum())
    p_abnormal = P[:, 1:].sum(axis=1).clip(0, 1)
    point = binary_metrics(y_abnormal, p_abnormal, 0.5)
    ci = bootstrap_ci(y_abnormal, p_abnormal, 0.5, n_boot=300, seed=0, strata=Y)
    assert list(ci) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert ci[name][0] <= point[name] <= ci[name][1], name
    assert ci != bootstrap_ci(y_abnormal, p_abnormal, 0.5, n_boot=300, seed=0)  # other strata, other draws
    assert ci == bootstrap_ci(y_abnormal, p_abnormal, 0.5, n_boot=300, seed=0, strata=Y)


def test_strata_must_match_the_samples() -> None:
    with pytest.raises(ValueError, match="strata"):
        bootstrap_ci([0, 1, 1], [0.2, 0.6, 0.7], 0.5, n_boot=10, strata=[0, 1])
