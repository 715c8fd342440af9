"""Promotion gate rules around their boundaries, and the JSON-ready decision."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from medimg.evaluation.gates import (
    GateResult,
    benchmark_noninferiority,
    champion_noninferiority,
    decide,
    minimum_metrics,
)

BENCHMARK = {
    "id": "test_readers",
    "sensitivity": 0.90,
    "specificity": 0.88,
    "source": "Example et al. 2020",
    "readers": 3,
    "reference_standard": "consensus of two thoracic radiologists",
}


def _benchmark(sens_lower: float, spec_lower: float, margin: float = 0.05) -> GateResult:
    return benchmark_noninferiority(
        sensitivity=0.91,
        sensitivity_ci=(sens_lower, 0.95),
        specificity=0.90,
        specificity_ci=(spec_lower, 0.93),
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
        benchmark_noninferiority(0.9, (0.8, 0.95), 0.9, (0.8, 0.95), partial, 0.05)


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
