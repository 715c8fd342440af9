"""Promotion gate rules around their boundaries, and the JSON-ready decision."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from medimg.evaluation.gates import (
    GateResult,
    benchmark_metric_key,
    benchmark_noninferiority,
    champion_noninferiority,
    class_sensitivity,
    decide,
    minimum_metrics,
)

BENCHMARK = {
    "id": "test_readers",
    "operating_point": "any_abnormality",
    "metrics": {"sensitivity": 0.90, "specificity": 0.88},
    "source": "Example et al. 2020",
    "readers": 3,
    "reference_standard": "consensus of two thoracic radiologists",
}


def _benchmark(sens_lower: float, spec_lower: float, margin: float = 0.05) -> GateResult:
    return benchmark_noninferiority(
        estimates={"sensitivity": 0.91, "specificity": 0.90},
        intervals={"sensitivity": (sens_lower, 0.95), "specificity": (spec_lower, 0.93)},
        benchmark=BENCHMARK,
        margin=margin,
    )


def test_benchmark_passes_exactly_at_the_bound() -> None:
    # Required lower bounds: 0.90 - 0.05 = 0.85 and 0.88 - 0.05 = 0.83 (0.9 - 0.05 is
    # 0.8500000000000001 in floating point; the bound itself must still pass).
    result = _benchmark(0.85, 0.83)
    assert result.passed
    assert result.name == "benchmark_noninferiority"
    assert "Example et al. 2020" in result.reason
    assert "0.910" in result.reason and "0.850" in result.reason and "0.900" in result.reason
    assert result.inputs["required_sensitivity_lower"] == pytest.approx(0.85)
    assert result.inputs["benchmark"]["readers"] == 3


def test_benchmark_fails_just_below_on_either_metric() -> None:
    sens_fail = _benchmark(0.849, 0.90)
    assert not sens_fail.passed and "sensitivity lower bound 0.849" in sens_fail.reason
    spec_fail = _benchmark(0.90, 0.829)
    assert not spec_fail.passed and "specificity lower bound 0.829" in spec_fail.reason
    assert "sensitivity lower bound" not in spec_fail.reason


def test_benchmark_margin_zero_and_nan_lower_bound() -> None:
    assert not _benchmark(0.86, 0.87, margin=0.0).passed
    assert _benchmark(0.90, 0.88, margin=0.0).passed
    nan_result = _benchmark(float("nan"), 0.90)
    assert not nan_result.passed and "nan" in nan_result.reason
    assert nan_result.inputs["sensitivity_ci"][0] is None
    json.dumps(nan_result.inputs, allow_nan=False)


def test_benchmark_requires_complete_benchmark() -> None:
    partial = {k: v for k, v in BENCHMARK.items() if k != "source"}
    with pytest.raises(ValueError, match="source"):
        benchmark_noninferiority({"sensitivity": 0.9}, {"sensitivity": (0.8, 0.95)}, partial, 0.05)


ARG_MAX_BENCHMARK = {
    "id": "published_models",
    "operating_point": "arg_max",
    "metrics": {"roc_auc": 0.919, "accuracy": 0.863},
    "source": "Example 2023",
    "model": "best per column",
    "reference_standard": "the data set's labels",
    "tasks": "an example",
}


def test_benchmark_on_two_arg_max_metrics_names_each() -> None:
    # margin 0.01: required lower bounds 0.919 - 0.01 = 0.909 and 0.863 - 0.01 = 0.853.
    # roc_auc lower 0.930 >= 0.909 (met); accuracy lower 0.850 < 0.853 (not met) -> fails on accuracy only.
    result = benchmark_noninferiority(
        {"roc_auc": 0.95, "accuracy": 0.88},
        {"roc_auc": (0.93, 0.97), "accuracy": (0.85, 0.91)},
        ARG_MAX_BENCHMARK,
        0.01,
    )
    assert not result.passed
    assert "accuracy lower bound 0.850 < 0.853" in result.reason and "roc_auc lower bound" not in result.reason
    assert "roc_auc 0.950 (CI 0.930-0.970) vs 0.919" in result.reason
    assert "model: best per column" in result.reason and "Example 2023" in result.reason
    assert "reference standard: the data set's labels" in result.reason and "arg_max" in result.reason
    assert result.inputs["failed"] == ["accuracy"]
    assert result.inputs["required_roc_auc_lower"] == pytest.approx(0.909)
    assert result.inputs["accuracy_ci"] == [0.85, 0.91]
    assert result.inputs["benchmark"]["tasks"] == "an example"
    json.dumps(result.inputs, allow_nan=False)
    # the same figures pass with margin 0.02 (required 0.843 for accuracy)
    assert benchmark_noninferiority(
        {"roc_auc": 0.95, "accuracy": 0.88},
        {"roc_auc": (0.93, 0.97), "accuracy": (0.85, 0.91)},
        ARG_MAX_BENCHMARK,
        0.02,
    ).passed


def test_benchmark_fails_closed_on_missing_or_nan_metrics() -> None:
    missing = benchmark_noninferiority({"roc_auc": 0.95}, {"roc_auc": (0.93, 0.97)}, ARG_MAX_BENCHMARK, 0.0)
    assert not missing.passed and "accuracy missing" in missing.reason
    assert missing.inputs["failed"] == ["accuracy"] and missing.inputs["accuracy"] is None
    nan_estimate = benchmark_noninferiority(
        {"roc_auc": float("nan"), "accuracy": 0.9},
        {"roc_auc": (0.93, 0.97), "accuracy": (0.88, 0.92)},
        ARG_MAX_BENCHMARK,
        0.0,
    )
    assert not nan_estimate.passed and "roc_auc is nan/undefined" in nan_estimate.reason
    none_bound = benchmark_noninferiority(
        {"roc_auc": 0.95, "accuracy": 0.9},
        {"roc_auc": (None, 0.97), "accuracy": (0.88, 0.92)},
        ARG_MAX_BENCHMARK,
        0.0,
    )
    assert not none_bound.passed and none_bound.inputs["roc_auc_ci"] == [None, 0.97]


def test_benchmark_entry_needs_readers_or_model_and_metrics() -> None:
    anonymous = {k: v for k, v in ARG_MAX_BENCHMARK.items() if k != "model"}
    with pytest.raises(ValueError, match="readers"):
        benchmark_noninferiority({}, {}, anonymous, 0.0)
    with pytest.raises(ValueError, match="metrics"):
        benchmark_noninferiority({}, {}, {**ARG_MAX_BENCHMARK, "metrics": {}}, 0.0)
    with pytest.raises(ValueError, match="margin"):
        benchmark_noninferiority({}, {}, ARG_MAX_BENCHMARK, 1.5)


@pytest.mark.parametrize(
    ("kind", "point", "name", "key"),
    [
        ("binary", "any_abnormality", "sensitivity", "sensitivity"),
        ("binary", "arg_max", "roc_auc", "roc_auc"),
        ("multiclass", "any_abnormality", "sensitivity", "abnormal_sensitivity"),
        ("multiclass", "any_abnormality", "roc_auc", "abnormal_roc_auc"),
        ("multiclass", "arg_max", "roc_auc", "macro_roc_auc"),
        ("multiclass", "arg_max", "accuracy", "accuracy"),
    ],
)
def test_benchmark_metric_key(kind: str, point: str, name: str, key: str) -> None:
    assert benchmark_metric_key(kind, point, name) == key


def test_benchmark_metric_key_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="task kind"):
        benchmark_metric_key("segmentation", "arg_max", "roc_auc")
    with pytest.raises(ValueError, match="operating_point"):
        benchmark_metric_key("binary", "youden", "roc_auc")


def test_class_sensitivity_floors() -> None:
    floors = {"glioma": 0.9, "meningioma": 0.8}
    ok = class_sensitivity({"glioma": 0.9, "meningioma": 0.95, "pituitary": 0.1}, floors)
    assert ok.passed and ok.name == "class_sensitivity" and "glioma 0.900 >= 0.900" in ok.reason
    low = class_sensitivity({"glioma": 0.899, "meningioma": 0.95}, floors)
    assert not low.passed and "glioma 0.899 < 0.900" in low.reason and low.inputs["failed"] == ["glioma"]
    nan = class_sensitivity({"glioma": float("nan"), "meningioma": np.float64(0.95)}, floors)
    assert not nan.passed and "glioma is nan/undefined" in nan.reason
    assert nan.inputs["sensitivities"] == {"glioma": None, "meningioma": 0.95}
    missing = class_sensitivity({"glioma": 0.95}, floors)
    assert not missing.passed and "meningioma missing" in missing.reason
    none = class_sensitivity({"glioma": None, "meningioma": 0.95}, floors)
    assert not none.passed and none.inputs["failed"] == ["glioma"]
    assert class_sensitivity({"glioma": 0.1}, {}).passed
    json.dumps(nan.inputs, allow_nan=False)


def test_champion_metric_label() -> None:
    delta = {"delta": -0.004, "lower": -0.012, "upper": 0.004, "n_boot": 500}
    result = champion_noninferiority(delta, 0.01, "2", metric="macro ROC AUC")
    assert not result.passed
    assert "Candidate macro ROC AUC minus champion (version 2) macro ROC AUC is -0.004" in result.reason
    assert result.inputs["metric"] == "macro ROC AUC"
    assert champion_noninferiority(None, 0.01, "2").inputs["metric"] == "ROC AUC"
    assert "paired macro ROC AUC comparison" in champion_noninferiority(None, 0.01, "2", metric="macro ROC AUC").reason


def test_champion_absent_passes_and_says_first_run() -> None:
    result = champion_noninferiority(None, 0.01, None)
    assert result.passed
    assert "no champion" in result.reason.lower() and "first run" in result.reason


@pytest.mark.parametrize(("lower", "passed"), [(-0.01, True), (-0.0099, True), (-0.0101, False), (0.02, True)])
def test_champion_margin_boundary(lower: float, passed: bool) -> None:
    delta = {"delta": 0.005, "lower": lower, "upper": 0.03, "n_boot": 1000}
    result = champion_noninferiority(delta, 0.01, "7")
    assert result.passed is passed
    assert "version 7" in result.reason and f"{lower:.3f}" in result.reason
    assert result.inputs["required_lower"] == -0.01


def test_champion_without_comparison_or_with_nan_fails() -> None:
    assert not champion_noninferiority(None, 0.01, "3").passed
    nan_delta = {"delta": float("nan"), "lower": float("nan"), "upper": float("nan"), "n_boot": 0}
    assert not champion_noninferiority(nan_delta, 0.01, "3").passed


def test_minimum_metrics_pass_fail_nan_missing() -> None:
    minimums = {"roc_auc": 0.9, "accuracy": 0.8}
    ok = minimum_metrics({"roc_auc": 0.9, "accuracy": 0.95, "f1": 0.1}, minimums)
    assert ok.passed and "roc_auc 0.900 >= 0.900" in ok.reason
    low = minimum_metrics({"roc_auc": 0.899, "accuracy": 0.95}, minimums)
    assert not low.passed and "roc_auc 0.899 < 0.900" in low.reason
    assert low.inputs["failed"] == ["roc_auc"]
    nan = minimum_metrics({"roc_auc": float("nan"), "accuracy": np.float64(0.95)}, minimums)
    assert not nan.passed and "nan" in nan.reason
    missing = minimum_metrics({"roc_auc": 0.95}, minimums)
    assert not missing.passed and "accuracy missing" in missing.reason
    assert minimum_metrics({"roc_auc": 0.5}, {}).passed


def test_gate_result_is_frozen() -> None:
    result = minimum_metrics({"roc_auc": 0.95}, {"roc_auc": 0.9})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = False  # type: ignore[misc]


def test_decide_is_strict_json_with_nan_and_numpy_inputs() -> None:
    results = [
        champion_noninferiority(None, 0.01, None),
        minimum_metrics({"roc_auc": float("nan"), "accuracy": np.float32(0.9)}, {"roc_auc": 0.9, "accuracy": 0.8}),
        GateResult("custom", True, "hand-made", {"x": np.int64(3), "y": (np.nan, 1.0)}),
    ]
    decision = decide(results)
    text = json.dumps(decision, allow_nan=False)
    assert json.loads(text) == decision
    assert decision["passed"] is False
    assert decision["failed"] == ["minimum_metrics"]
    assert [rule["name"] for rule in decision["rules"]] == [
        "champion_noninferiority",
        "minimum_metrics",
        "custom",
    ]
    assert decision["rules"][1]["inputs"]["values"]["roc_auc"] is None
    assert decision["rules"][2]["inputs"] == {"x": 3, "y": [None, 1.0]}
    assert math.isclose(decision["rules"][1]["inputs"]["values"]["accuracy"], 0.9, rel_tol=1e-6)


def test_decide_all_passed_and_empty() -> None:
    decision = decide([champion_noninferiority(None, 0.01, None), _benchmark(0.86, 0.85)])
    assert decision["passed"] is True and decision["failed"] == []
    with pytest.raises(ValueError, match="at least one"):
        decide([])
