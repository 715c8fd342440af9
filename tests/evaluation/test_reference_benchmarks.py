"""The shipped benchmark entries (medimg/reference/benchmarks.yaml): schema, figures, and the gate reads them."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from medimg.evaluation.gates import OPERATING_POINTS, benchmark_noninferiority
from medimg.reference import benchmark, benchmarks


def test_every_entry_has_the_schema_and_a_source() -> None:
    raw = yaml.safe_load(resources.files("medimg.reference").joinpath("benchmarks.yaml").read_text())["benchmarks"]
    ids = [entry["id"] for entry in raw]
    assert len(ids) == len(set(ids)), "benchmark ids must be unique"
    for entry in raw:
        assert entry["operating_point"] in OPERATING_POINTS, entry["id"]
        assert str(entry["source"]).strip() and str(entry["reference_standard"]).strip(), entry["id"]
        assert ("readers" in entry) != ("model" in entry), entry["id"]
        assert entry["metrics"] and all(0 < v <= 1 for v in entry["metrics"].values()), entry["id"]
        for name, (low, high) in entry.get("metrics_ci", {}).items():
            assert low <= entry["metrics"][name] <= high, (entry["id"], name)
        # the gate accepts the entry: with the benchmark's own figures as lower bounds it passes
        figures = entry["metrics"]
        result = benchmark_noninferiority(figures, {k: (v, v) for k, v in figures.items()}, entry, 0.0)
        assert result.passed, result.reason


@pytest.mark.parametrize(
    ("entry_id", "point", "figures"),
    [
        ("self2012_radiologists_ed", "any_abnormality", {"sensitivity": 0.435, "specificity": 0.930}),
        ("mahomed2020_cad4kids", "any_abnormality", {"sensitivity": 0.76, "specificity": 0.80}),
        ("seed_target", "any_abnormality", {"sensitivity": 0.90, "specificity": 0.92}),
        ("kermany2018_cell_pneumonia", "any_abnormality", {"sensitivity": 0.932, "specificity": 0.901}),
        ("medmnist_breastmnist_best_published", "arg_max", {"roc_auc": 0.919, "accuracy": 0.863}),
        ("brain_mri_plain_script_floor", "arg_max", {"roc_auc": 0.9755, "accuracy": 0.798}),
    ],
)
def test_figures_as_in_the_reference_file(entry_id: str, point: str, figures: dict) -> None:
    entry = benchmark(entry_id)
    assert entry["operating_point"] == point
    assert entry["metrics"] == figures


def test_self2012_keeps_its_published_intervals() -> None:
    assert benchmark("self2012_radiologists_ed")["metrics_ci"] == {
        "sensitivity": [0.364, 0.508],
        "specificity": [0.921, 0.939],
    }


def test_unknown_id_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="seed_target"):
        benchmark("no_such_benchmark")
    assert "brain_mri_plain_script_floor" in benchmarks()
