"""Multi-class point metrics, against cases worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medimg.evaluation.multiclass import (
    check_multiclass_inputs,
    confusion_counts,
    multiclass_metric_names,
    multiclass_metrics,
)

NAMES = ("a", "b", "c")

# Case A: six samples, two per class; decision = arg-max.
#   i  y  p(a, b, c)         decided  correct  confidence
#   0  a  0.7 0.2 0.1        a        yes      0.7
#   1  a  0.4 0.5 0.1        b        no       0.5
#   2  b  0.2 0.6 0.2        b        yes      0.6
#   3  b  0.1 0.8 0.1        b        yes      0.8
#   4  c  0.3 0.3 0.4        c        yes      0.4
#   5  c  0.5 0.1 0.4        a        no       0.5
# Confusion (rows true, columns decided): a [1 1 0], b [0 2 0], c [1 0 1]; accuracy 4/6.
# Per class (one-vs-rest at the decision):
#   a: tp 1 fn 1 fp 1 (i5) tn 3 -> sens 1/2, spec 3/4, ppv 1/2, npv 3/4, f1 2/(2+1+1) = 1/2
#   b: tp 2 fn 0 fp 1 (i1) tn 3 -> sens 1,   spec 3/4, ppv 2/3, npv 1,   f1 4/(4+1)   = 4/5
#   c: tp 1 fn 1 fp 0      tn 4 -> sens 1/2, spec 1,   ppv 1,   npv 4/5, f1 2/(2+1)   = 2/3
# balanced accuracy = (1/2 + 1 + 1/2) / 3 = 2/3; macro F1 = (1/2 + 4/5 + 2/3) / 3
# kappa: po = 4/6; true totals (2, 2, 2), decided totals (2, 3, 1) -> pe = (4 + 6 + 2) / 36 = 1/3;
#   (2/3 - 1/3) / (1 - 1/3) = 1/2
# OvR AUC: a: members 0.7, 0.4 vs 0.2 0.1 0.3 0.5: 0.7 beats 4, 0.4 beats 3 -> 7/8
#          b: members 0.6, 0.8 beat 0.2 0.5 0.3 0.1 -> 1;  c: members 0.4, 0.4 beat 0.1 0.1 0.2 0.1 -> 1
#   macro = (7/8 + 1 + 1) / 3
# Brier, sum_k (p_k - onehot_k)^2 per sample:
#   0: .09+.04+.01 = .14; 1: .36+.25+.01 = .62; 2: .04+.16+.04 = .24; 3: .01+.04+.01 = .06;
#   4: .09+.09+.36 = .54; 5: .25+.01+.36 = .62; total 2.22 / 6 = 0.37
# Top-label ECE, bins of the confidence: bin 7 |1 - .7| = .3; bin 5 (i1, i5) |0 - 1.0| = 1.0;
#   bin 6 |1 - .6| = .4; bin 8 |1 - .8| = .2; bin 4 |1 - .4| = .6; total 2.5 / 6
Y_A = np.array([0, 0, 1, 1, 2, 2])
P_A = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.6, 0.2],
        [0.1, 0.8, 0.1],
        [0.3, 0.3, 0.4],
        [0.5, 0.1, 0.4],
    ]
)
EXPECTED_A = {
    "accuracy": 4 / 6,
    "balanced_accuracy": 2 / 3,
    "macro_roc_auc": (7 / 8 + 1 + 1) / 3,
    "macro_f1": (1 / 2 + 4 / 5 + 2 / 3) / 3,
    "kappa": 0.5,
    "brier": 0.37,
    "ece": 2.5 / 6,
    "n": 6,
    "roc_auc_a": 7 / 8,
    "sensitivity_a": 1 / 2,
    "specificity_a": 3 / 4,
    "ppv_a": 1 / 2,
    "npv_a": 3 / 4,
    "f1_a": 1 / 2,
    "n_a": 2,
    "roc_auc_b": 1.0,
    "sensitivity_b": 1.0,
    "specificity_b": 3 / 4,
    "ppv_b": 2 / 3,
    "npv_b": 1.0,
    "f1_b": 4 / 5,
    "n_b": 2,
    "roc_auc_c": 1.0,
    "sensitivity_c": 1 / 2,
    "specificity_c": 1.0,
    "ppv_c": 1.0,
    "npv_c": 4 / 5,
    "f1_c": 2 / 3,
    "n_c": 2,
}

# Case B: class c absent from y_true, class b never decided.
#   i  y  p(a, b, c)      decided
#   0  a  0.6 0.3 0.1     a
#   1  a  0.5 0.2 0.3     a
#   2  b  0.7 0.2 0.1     a
#   3  b  0.3 0.3 0.4     c
# Confusion: a [2 0 0], b [1 0 1], c [0 0 0]; accuracy 2/4.
#   a: tp 2 fn 0 fp 1 tn 1 -> sens 1, spec 1/2, ppv 2/3, npv 1, f1 4/5
#   b: tp 0 fn 2 fp 0 tn 2 -> sens 0, spec 1, ppv 0/0 = nan (never decided), npv 2/4, f1 0/(0+0+2) = 0
#   c: tp 0 fn 0 fp 1 tn 3 -> sens 0/0 = nan (absent), spec 3/4, ppv 0/1 = 0, npv 3/3, f1 0/(0+1+0) = 0
# balanced accuracy over the present classes a, b: (1 + 0) / 2
# macro F1 = (4/5 + 0 + 0) / 3
# AUC a: members 0.6, 0.5 vs 0.7, 0.3 -> each beats 0.3 only: 2/4
#     b: members 0.2, 0.3 vs 0.3, 0.2 -> 0.2: lose + tie(.5); 0.3: tie(.5) + win -> 2/4
#     c: absent -> nan; macro over a, b = 1/2
# kappa: po = 1/2; true totals (2, 2, 0), decided (3, 0, 1): pe = (6 + 0 + 0) / 16 = 3/8;
#   (1/2 - 3/8) / (5/8) = 1/5
# Brier: .16+.09+.01 = .26; .25+.04+.09 = .38; .49+.64+.01 = 1.14; .09+.49+.16 = .74 -> 2.52 / 4 = .63
# ECE: confidences .6 (right), .5 (right), .7 (wrong), .4 (wrong), each alone in its bin:
#   .4 + .5 + .7 + .4 = 2.0 -> 2.0 / 4
Y_B = np.array([0, 0, 1, 1])
P_B = np.array([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
EXPECTED_B = {
    "accuracy": 0.5,
    "balanced_accuracy": 0.5,
    "macro_roc_auc": 0.5,
    "macro_f1": 0.8 / 3,
    "kappa": 0.2,
    "brier": 0.63,
    "ece": 0.5,
    "n": 4,
    "roc_auc_a": 0.5,
    "sensitivity_a": 1.0,
    "specificity_a": 0.5,
    "ppv_a": 2 / 3,
    "npv_a": 1.0,
    "f1_a": 0.8,
    "n_a": 2,
    "roc_auc_b": 0.5,
    "sensitivity_b": 0.0,
    "specificity_b": 1.0,
    "ppv_b": math.nan,
    "npv_b": 0.5,
    "f1_b": 0.0,
    "n_b": 2,
    "roc_auc_c": math.nan,
    "sensitivity_c": math.nan,
    "specificity_c": 0.75,
    "ppv_c": 0.0,
    "npv_c": 1.0,
    "f1_c": 0.0,
    "n_c": 0,
}


def _assert_metrics(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, abs=1e-12), name
    assert all(isinstance(got[k], int) for k in got if k == "n" or k.startswith("n_"))


def test_hand_computed_three_classes() -> None:
    _assert_metrics(multiclass_metrics(Y_A, P_A, NAMES), EXPECTED_A)


def test_absent_class_and_never_decided_class_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = multiclass_metrics(Y_B, P_B, NAMES)
    _assert_metrics(got, EXPECTED_B)


def test_kappa_and_aucs_undefined_for_one_class_decided_as_itself() -> None:
    # Every sample is class a and decided a: po = 1, pe = 1 -> kappa 0/0 = nan; no class has both
    # members and non-members -> every AUC and the macro AUC are nan; accuracy 1, balanced accuracy 1.
    y = np.zeros(3, dtype=int)
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = multiclass_metrics(y, p, NAMES)
    assert math.isnan(m["kappa"]) and math.isnan(m["macro_roc_auc"]) and math.isnan(m["roc_auc_a"])
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert math.isnan(m["sensitivity_b"]) and math.isnan(m["ppv_b"]) and math.isnan(m["f1_b"])  # 0/0 everywhere


def test_kappa_is_zero_when_decisions_ignore_the_truth() -> None:
    # Everything decided a, truth (a, b): po = 1/2, pe = (1*2 + 1*0) / 4 = 1/2 -> kappa (1/2 - 1/2) / (1/2) = 0
    y = np.array([0, 1])
    p = np.array([[0.6, 0.4], [0.7, 0.3]])
    assert multiclass_metrics(y, p, ("a", "b"))["kappa"] == pytest.approx(0.0, abs=1e-12)


def test_argmax_tie_goes_to_the_lower_index() -> None:
    # numpy.argmax: a full tie (0.5, 0.5) decides the lower index, class a, for both samples.
    y = np.array([0, 1])
    p = np.array([[0.5, 0.5], [0.5, 0.5]])
    m = multiclass_metrics(y, p, ("a", "b"))
    assert m["sensitivity_a"] == 1.0 and m["sensitivity_b"] == 0.0


def test_metric_names_fixed_order() -> None:
    names = multiclass_metric_names(("glioma", "no_tumor"))
    assert names == (
        "accuracy",
        "balanced_accuracy",
        "macro_roc_auc",
        "macro_f1",
        "kappa",
        "brier",
        "ece",
        "roc_auc_glioma",
        "sensitivity_glioma",
        "specificity_glioma",
        "ppv_glioma",
        "npv_glioma",
        "f1_glioma",
        "roc_auc_no_tumor",
        "sensitivity_no_tumor",
        "specificity_no_tumor",
        "ppv_no_tumor",
        "npv_no_tumor",
        "f1_no_tumor",
    )
    point = multiclass_metrics(Y_A, P_A, NAMES)
    assert set(point) - set(multiclass_metric_names(NAMES)) == {"n", "n_a", "n_b", "n_c"}


def test_confusion_counts_rows_true_columns_decided() -> None:
    counts = confusion_counts(Y_A, P_A.argmax(axis=1), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert confusion_counts([0, 0], [0, 0], 3).tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"0\.\.2"):
        confusion_counts([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_counts([0, 1], [0], 3)


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1], [[0.5, 0.5, 0.0]], "same number of samples"),
        ([0, 1], [0.5, 0.5], "2-D"),
        ([0, 3], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], r"0\.\.2"),
        ([0, -1], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], r"0\.\.2"),
        ([0, 1.5], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], "integer"),
        (["a", "b"], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], "integer"),
        ([0, 1], [[0.5, 0.5], [0.2, 0.8]], "one column per class"),
        ([0, 1], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.6]], "sum to 1"),
        ([0, 1], [[1.2, -0.2, 0.0], [0.2, 0.3, 0.5]], r"\[0, 1\]"),
        ([0, 1], [[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]], "finite"),
        ([], np.zeros((0, 3)), "empty"),
    ],
)
def test_bad_inputs_raise(y, p, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_multiclass_inputs(y, p, 3)
    with pytest.raises(ValueError, match=match):
        multiclass_metrics(y, p, NAMES)


def test_rows_within_tolerance_and_float_labels_are_accepted() -> None:
    p = P_A.astype(np.float32).astype(np.float64)  # float32 softmax rounding, rows off by ~1e-8
    y, checked = check_multiclass_inputs(Y_A.astype(float), p, 3)
    assert y.dtype == np.int64 and checked.dtype == np.float64


@pytest.mark.parametrize("names", [("a",), ("a", "a"), ("a", "b c"), ("a", "b/c"), "ab"])
def test_bad_class_names_raise(names) -> None:
    with pytest.raises(ValueError, match="class"):
        multiclass_metric_names(names)
