"""Point metrics and threshold choice, against cases worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medimg.evaluation.metrics import (
    METRIC_NAMES,
    binary_metrics,
    calibration_bins,
    expected_calibration_error,
)
from medimg.evaluation.threshold import max_accuracy_threshold, threshold_for_sensitivity, youden_threshold

# Ten samples, 4 positives then 6 negatives.
#
# threshold 0.5 -> predicted positive: 0.9, 0.8, 0.6 (all positives) and 0.7 (a negative)
#   TP = 3, FN = 1 (0.3), FP = 1 (0.7), TN = 5
#   accuracy = 8/10, sensitivity = 3/4, specificity = 5/6, precision = 3/4, npv = 5/6,
#   f1 = 2*3 / (2*3 + 1 + 1) = 3/4, prevalence = 4/10
# AUC = pairs (pos, neg) with pos > neg / 24:
#   0.9 beats 6, 0.8 beats 6, 0.6 beats 5 (not 0.7), 0.3 beats 4 (0.2, 0.2, 0.1, 0.05)
#   = 21/24 = 0.875
# Average precision, ranking 0.9P 0.8P 0.7N 0.6P 0.4N 0.3P ...:
#   recall steps of 1/4 at precisions 1/1, 2/2, 3/4, 4/6 -> (1 + 1 + 0.75 + 2/3) / 4
# Brier: positives 0.1^2+0.2^2+0.4^2+0.7^2 = 0.70; negatives 0.49+0.16+0.04+0.04+0.01+0.0025
#   = 0.7425 -> 1.4425 / 10
# ECE: every sample is alone in its bin except 0.2, 0.2 (bin 2, both 0); sum of |y - p| per bin
#   = 0.1+0.2+0.4+0.7 (positives) + 0.7+0.4+0.4+0.1+0.05 (negatives) = 3.05 -> 3.05 / 10
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.2, 0.1, 0.05])

EXPECTED_KEYS = {
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
    "tp",
    "fp",
    "tn",
    "fn",
    "n",
    "prevalence",
    "threshold",
}


def test_hand_computed_ten_samples() -> None:
    m = binary_metrics(Y10, P10, 0.5)
    assert set(m) == EXPECTED_KEYS
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (3, 1, 5, 1, 10)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(0.75)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(0.75)
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert m["pr_auc"] == pytest.approx((1 + 1 + 0.75 + 2 / 3) / 4)
    assert m["brier"] == pytest.approx(0.14425)
    assert m["ece"] == pytest.approx(0.305)
    assert m["prevalence"] == pytest.approx(0.4)
    assert m["threshold"] == 0.5


def test_metric_names_are_the_float_metrics_in_order() -> None:
    assert METRIC_NAMES == (
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


def test_threshold_is_inclusive() -> None:
    # 0.6 is a positive: at threshold 0.6 it is still predicted positive.
    m = binary_metrics(Y10, P10, 0.6)
    assert (m["tp"], m["fp"]) == (3, 1)
    m = binary_metrics(Y10, P10, 0.6000001)
    assert (m["tp"], m["fp"]) == (2, 1)


def test_threshold_above_all_probabilities() -> None:
    # Nothing predicted positive: TP = FP = 0, so precision is 0/0 -> nan; F1 = 0/(0+0+4) = 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(Y10, P10, 0.95)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 6, 4)
    assert m["sensitivity"] == 0.0
    assert m["specificity"] == 1.0
    assert math.isnan(m["precision"])
    assert m["npv"] == pytest.approx(0.6)
    assert m["f1"] == 0.0
    assert m["roc_auc"] == pytest.approx(0.875)  # threshold-free metrics are unaffected


def test_only_negatives() -> None:
    y = np.zeros(5, dtype=int)
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(y, p, 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert math.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["precision"] == 0.0  # 2 predicted positives, both wrong
    assert m["npv"] == 1.0
    assert m["f1"] == 0.0  # 2tp + fp + fn = 2 > 0
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.36 + 0.81) / 5)
    assert m["prevalence"] == 0.0


def test_only_positives_and_none_predicted() -> None:
    y = np.ones(4, dtype=int)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(y, p, 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert math.isnan(m["specificity"])
    assert m["sensitivity"] == 0.0
    assert math.isnan(m["precision"])  # nothing predicted positive
    assert m["npv"] == 0.0  # 4 predicted negatives, all wrong
    assert m["brier"] == pytest.approx((0.81 + 0.64 + 0.49 + 0.36) / 4)


def test_f1_is_nan_only_without_any_positive() -> None:
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert math.isnan(m["f1"])


def test_all_predictions_equal_give_chance_auc() -> None:
    m = binary_metrics(Y10, np.full(10, 0.5), 0.5)
    assert m["roc_auc"] == pytest.approx(0.5)
    assert m["pr_auc"] == pytest.approx(0.4)  # one tied block: precision = prevalence
    assert (m["tp"], m["fp"]) == (4, 6)


def test_ece_bins_and_perfect_calibration() -> None:
    assert calibration_bins([0.0, 0.05, 0.1, 0.3, 0.7, 0.99, 1.0]).tolist() == [0, 0, 1, 3, 7, 9, 9]
    # Bin 2 holds 0.2 x 5 with 1 positive: observed 0.2 = predicted 0.2 -> ECE 0.
    assert expected_calibration_error([1, 0, 0, 0, 0], [0.2] * 5) == pytest.approx(0.0)
    # All 1.0 on negatives: worst possible.
    assert expected_calibration_error([0, 0], [1.0, 1.0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "only 0 and 1"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([0, 1], [0.1], "same length"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_invalid_inputs_raise(y: list, p: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, p, 0.5)


def test_non_finite_threshold_raises() -> None:
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(Y10, P10, float("inf"))


# --- thresholds -----------------------------------------------------------------------------
# Youden's J over the ten samples' ROC thresholds (P = 4, N = 6):
#   0.9: 1/4 - 0 = .25   0.8: 2/4 - 0 = .5    0.7: 2/4 - 1/6 = .333   0.6: 3/4 - 1/6 = .583
#   0.4: 3/4 - 2/6 = .417   0.3: 4/4 - 2/6 = .667 (max)   0.2: 1 - 4/6   0.1: 1 - 5/6   ...


def test_youden_hand_computed() -> None:
    assert youden_threshold(Y10, P10) == 0.3


def test_youden_ties_go_to_the_largest_threshold() -> None:
    # P = N = 2: J(0.8) = 1/2 - 0 = 0.5, J(0.6) = 0, J(0.4) = 1 - 1/2 = 0.5, J(0.2) = 0.
    assert youden_threshold([1, 0, 1, 0], [0.8, 0.6, 0.4, 0.2]) == 0.8


def test_youden_uninformative_model_gives_a_finite_threshold() -> None:
    # All equal: only J = 0 points, the largest is sklearn's +inf threshold -> clipped to 1.0.
    t = youden_threshold(Y10, np.full(10, 0.3))
    assert t == 1.0 and math.isfinite(t)


def test_youden_perfect_separation() -> None:
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9]) == 0.6


# Correct decisions (TP + TN) over the same thresholds: inf 6, 0.9 7, 0.8 8, 0.7 7, 0.6 8, 0.4 7,
# 0.3 8, 0.2 6, 0.1 5, 0.05 4: three ties at 8, the largest threshold wins.
def test_max_accuracy_hand_computed_ties_go_to_the_largest_threshold() -> None:
    assert max_accuracy_threshold(Y10, P10) == 0.8


def test_max_accuracy_perfect_separation() -> None:
    assert max_accuracy_threshold([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9]) == 0.6


def test_max_accuracy_differs_from_youden_on_imbalanced_data() -> None:
    # 8 negatives (one at 0.5), 2 positives at 0.45 and 0.9. Youden: J(0.45) = 1 - 1/8 beats J(0.9) = 1/2;
    # accuracy: 0.45 and 0.9 both give 9 of 10 correct, the tie goes to 0.9; 0.5 gives 8.
    y = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    p = [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.5, 0.45, 0.9]
    assert youden_threshold(y, p) == 0.45
    assert max_accuracy_threshold(y, p) == 0.9
    assert binary_metrics(y, p, 0.9)["accuracy"] == 0.9


@pytest.mark.parametrize(
    ("target", "expected"),
    [(1.0, 0.3), (0.75, 0.6), (0.76, 0.3), (0.5, 0.8), (0.25, 0.9), (0.0, 1.0)],
)
def test_threshold_for_sensitivity(target: float, expected: float) -> None:
    t = threshold_for_sensitivity(Y10, P10, target)
    assert t == expected
    assert binary_metrics(Y10, P10, t)["sensitivity"] >= target


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_thresholds_need_both_classes(y: list) -> None:
    with pytest.raises(ValueError, match=r"one class|only"):
        youden_threshold(y, [0.2, 0.5, 0.7])
    with pytest.raises(ValueError, match=r"one class|only"):
        max_accuracy_threshold(y, [0.2, 0.5, 0.7])
    with pytest.raises(ValueError, match=r"one class|only"):
        threshold_for_sensitivity(y, [0.2, 0.5, 0.7], 0.9)


def test_threshold_for_sensitivity_rejects_bad_target() -> None:
    with pytest.raises(ValueError, match="target"):
        threshold_for_sensitivity(Y10, P10, 1.5)


def test_subgroup_metrics_split_by_group_columns_only_when_they_vary():
    import pandas as pd

    from medimg.config import TaskConfig
    from medimg.steps.evaluate import subgroup_metrics

    frame = pd.DataFrame({"id": list("abcdef"), "modality": ["CR", "CR", "CR", "DX", "DX", "DX"], "sex": ["F"] * 6})
    labels = np.array([1, 0, 1, 1, 0, 0])
    p_positive = np.array([0.9, 0.2, 0.4, 0.8, 0.7, 0.1])
    probs = np.stack([1 - p_positive, p_positive], axis=1)  # [N, K] class probabilities
    out = subgroup_metrics(TaskConfig(), frame, list("abcdef"), labels, probs, 0.5)
    assert set(out) == {"modality"}, "a column with one value is not a subgroup"
    assert out["modality"]["CR"]["n"] == 3 and out["modality"]["CR"]["sensitivity"] == 0.5
    assert out["modality"]["DX"]["specificity"] == 0.5 and out["modality"]["DX"]["tp"] == 1
