"""The segmentation gate rules on constructed per-case tables: the nnU-Net benchmark by the lower CI bounds, the
Dice floors, and the paired champion comparison, each verdict with its reason and numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medimg.config import ConfigError, load_params
from medimg.evaluation import gates
from medimg.reference import benchmark
from medimg.segmentation import evaluation
from medimg.segmentation import gates as segmentation_gates
from seg_eval_cases import ROOT, hippocampus_params

STRUCTURES = ("anterior", "posterior")
BENCH = benchmark("msd_hippocampus_nnunet")


def _table(anterior: float, posterior: float, n: int = 60, spread: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """A per-case table of ``n`` cases with Dice about ``anterior``/``posterior`` (normal, sd ``spread``)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {"id": [f"case{i:03d}" for i in range(n)]}
    for name, centre in zip(STRUCTURES, (anterior, posterior), strict=True):
        columns[f"dice_{name}"] = np.clip(rng.normal(centre, spread, n), 0, 1)
        columns[f"hd95_{name}"] = rng.uniform(1.0, 2.0, n)
        columns[f"volume_error_ml_{name}"] = rng.uniform(0.0, 0.2, n)
    table = pd.DataFrame(columns)
    table["mean_dice"] = table[[f"dice_{s}" for s in STRUCTURES]].mean(axis=1)
    return table


def _judge(table: pd.DataFrame, margin: float = 0.07, min_dice=0.85) -> list[gates.GateResult]:
    metrics = evaluation.summary(table, STRUCTURES)
    ci = evaluation.bootstrap_ci(table, STRUCTURES, n_boot=1000, seed=42)
    return segmentation_gates.rules(metrics, ci, STRUCTURES, BENCH, margin, min_dice)


def test_a_model_near_nnunet_passes_the_benchmark_and_the_floors() -> None:
    table = _table(0.90, 0.89)
    bench_rule, floor_rule = _judge(table)
    assert bench_rule.name == "benchmark_noninferiority" and bench_rule.passed, bench_rule.reason
    assert floor_rule.name == "minimum_metrics" and floor_rule.passed, floor_rule.reason
    ci = evaluation.bootstrap_ci(table, STRUCTURES, n_boot=1000, seed=42)
    # every number in the inputs, and the sentence quotes them
    inputs = bench_rule.inputs
    assert inputs["metrics"] == ["dice_anterior", "dice_posterior"]
    assert inputs["required_dice_anterior_lower"] == pytest.approx(0.83)
    assert inputs["required_dice_posterior_lower"] == pytest.approx(0.82)
    assert inputs["dice_anterior_ci"] == pytest.approx(list(ci["dice_anterior"]))
    assert inputs["benchmark"]["id"] == "msd_hippocampus_nnunet" and inputs["margin"] == 0.07
    assert "vs 0.900" in bench_rule.reason and "vs 0.890" in bench_rule.reason and "passed" in bench_rule.reason
    assert "nnU-Net" in bench_rule.reason and "operating point: segmentation" in bench_rule.reason
    assert floor_rule.inputs["minimums"] == {"dice_anterior": 0.85, "dice_posterior": 0.85}
    json.dumps(bench_rule.inputs, allow_nan=False)  # JSON-native, strict


def test_a_weaker_model_fails_on_its_lower_bounds_and_floors() -> None:
    # anterior about 0.84: the point estimate alone would reach 0.83, its lower CI bound does not
    table = _table(0.84, 0.89, n=20, spread=0.05)
    metrics = evaluation.summary(table, STRUCTURES)
    low = evaluation.bootstrap_ci(table, STRUCTURES, n_boot=1000, seed=42)["dice_anterior"][0]
    assert metrics["dice_anterior"] > 0.83 > low
    bench_rule, floor_rule = _judge(table)
    assert not bench_rule.passed and bench_rule.inputs["failed"] == ["dice_anterior"]
    assert f"dice_anterior lower bound {low:.3f} < 0.830" in bench_rule.reason
    assert not floor_rule.passed and floor_rule.inputs["failed"] == ["dice_anterior"]
    assert f"dice_anterior {metrics['dice_anterior']:.3f} < 0.850" in floor_rule.reason
    assert "dice_posterior" in floor_rule.reason and "1 of 2 metrics miss their minimums" in floor_rule.reason
    # a wider margin lets the benchmark rule through; no floors pass vacuously
    wide_bench, no_floor = _judge(table, margin=0.15, min_dice=None)
    assert wide_bench.passed and no_floor.passed and "No minimum metrics" in no_floor.reason


def test_per_structure_floors() -> None:
    table = _table(0.84, 0.89)
    _, floor_rule = _judge(table, min_dice={"posterior": 0.88})
    assert floor_rule.passed and floor_rule.inputs["minimums"] == {"dice_posterior": 0.88}
    assert segmentation_gates.dice_floors(STRUCTURES, 0.8) == {"dice_anterior": 0.8, "dice_posterior": 0.8}
    assert segmentation_gates.dice_floors(STRUCTURES, None) == {}
    with pytest.raises(ValueError, match="hippo"):
        segmentation_gates.dice_floors(STRUCTURES, {"hippo": 0.8})


def test_a_missing_or_undefined_figure_fails_closed() -> None:
    table = _table(0.9, 0.89)
    metrics = evaluation.summary(table, STRUCTURES)
    ci = evaluation.bootstrap_ci(table, STRUCTURES, n_boot=200, seed=0)
    del metrics["dice_posterior"], ci["dice_posterior"]
    rule = segmentation_gates.benchmark_rule(metrics, ci, BENCH, 0.07)
    assert not rule.passed and "dice_posterior missing" in rule.reason
    metrics["dice_posterior"] = float("nan")
    floor = segmentation_gates.minimum_dice_rule(metrics, STRUCTURES, 0.85)
    assert not floor.passed and "dice_posterior is nan/undefined" in floor.reason


def test_a_classification_benchmark_cannot_judge_masks() -> None:
    with pytest.raises(ValueError, match="operating_point"):
        segmentation_gates.benchmark_rule({}, {}, benchmark("seed_target"), 0.0)


def test_champion_rule_on_the_paired_mean_dice_difference() -> None:
    candidate = _table(0.88, 0.87, seed=1)["mean_dice"].to_numpy()
    # the same model: difference 0, interval [0, 0]
    same = evaluation.paired_mean_dice_difference(candidate, candidate, n_boot=500, seed=0)
    rule = segmentation_gates.champion_rule(same, 0.01, "3")
    assert rule.passed and rule.inputs["metric"] == "mean Dice" and rule.inputs["delta"] == 0.0
    assert "Candidate mean Dice minus champion (version 3) mean Dice is 0.000" in rule.reason
    # a champion 0.03 better on every case: the lower bound -0.03 is below -0.01
    better = evaluation.paired_mean_dice_difference(candidate, candidate + 0.03, n_boot=500, seed=0)
    rule = segmentation_gates.champion_rule(better, 0.01, "3")
    assert not rule.passed and rule.inputs["lower"] == pytest.approx(-0.03)
    assert "must be >= -0.010" in rule.reason and "failed" in rule.reason
    # within the margin: 0.005 worse passes a 0.01 margin
    close = evaluation.paired_mean_dice_difference(candidate, candidate + 0.005, n_boot=500, seed=0)
    assert segmentation_gates.champion_rule(close, 0.01, "3").passed
    # first run: nothing to compare with; a champion but no comparison: fails
    assert segmentation_gates.champion_rule(None, 0.01, None).passed
    assert not segmentation_gates.champion_rule(None, 0.01, "3").passed


def test_benchmark_metric_key_for_segmentation() -> None:
    assert gates.benchmark_metric_key("segmentation", "segmentation", "dice_anterior") == "dice_anterior"
    with pytest.raises(ValueError, match="segmentation operating point"):
        gates.benchmark_metric_key("binary", "segmentation", "dice_anterior")
    with pytest.raises(ValueError, match="segmentation operating point"):
        gates.benchmark_metric_key("segmentation", "arg_max", "roc_auc")


def test_gate_configuration_is_checked_when_params_load() -> None:
    assert hippocampus_params().gates.min_dice == 0.85  # params/hippocampus.yaml: issue 14's 0.85 per label
    assert hippocampus_params({"gates": {"min_dice": {"posterior": 0.8}}}).gates.min_dice == {"posterior": 0.8}
    with pytest.raises(ConfigError, match=r"gates\.min_dice names \['hippo'\], which are not structures"):
        hippocampus_params({"gates": {"min_dice": {"hippo": 0.8}}})
    with pytest.raises(ConfigError, match="less than or equal to 1"):
        hippocampus_params({"gates": {"min_dice": 1.2}})
    with pytest.raises(ConfigError, match="'seed_target' states figures at operating point 'any_abnormality'"):
        hippocampus_params({"gates": {"benchmark": {"id": "seed_target"}}})
    with pytest.raises(ConfigError, match=r"gates\.min_dice is for task\.kind segmentation"):
        load_params(ROOT / "params.yaml", {"gates": {"min_dice": 0.8}})
    with pytest.raises(ConfigError, match=r"operating point 'segmentation', which does not fit task\.kind binary"):
        load_params(ROOT / "params.yaml", {"gates": {"benchmark": {"id": "msd_hippocampus_nnunet"}}})
