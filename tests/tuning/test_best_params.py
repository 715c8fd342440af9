"""The best trial as a params file (issue 17): ``base:`` the original, the study's overrides and the trial's
values, valid params that the normal flow loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medimg.config import ConfigError, load_params
from medimg.tuning.best_params import best_params_text, write_best_params

ROOT = Path(__file__).resolve().parents[2]


def test_best_params_file_loads_as_the_original_with_the_trials_values(tmp_path):
    original = tmp_path / "variant.yaml"
    original.write_text(f"base: {ROOT / 'params.yaml'}\nmodel: {{width: 16}}\ntrain: {{epochs: 5}}\n")
    values = (("train.lr", 0.0042), ("model.dropout", 0.31))
    overrides = {"train": {"batch_size": 64, "lr": 0.1}, "tune": {"trials": 3}}
    text = best_params_text(original, overrides, values, "study-x", 7, "val_auc", 0.9731)
    assert text.startswith("# The best trial of Optuna study study-x (medimg tune): trial 7, val_auc 0.973100.")
    path = write_best_params(tmp_path / "out" / "best_params.yaml", text)
    raw = yaml.safe_load(path.read_text())
    assert raw["base"] == str(original.resolve())
    params = load_params(path)
    original_params = load_params(original)
    assert params.train.lr == 0.0042  # the trial's value wins over the study's own override
    assert params.model.dropout == 0.31 and params.train.batch_size == 64  # the override the study ran with
    assert params.model.width == 16 and params.train.epochs == 5  # inherited through base
    assert params.train.weight_decay == original_params.train.weight_decay
    assert not list(path.parent.glob(".*partial"))


def test_an_invalid_best_file_is_not_written(tmp_path):
    original = tmp_path / "params.yaml"
    original.write_text(f"base: {ROOT / 'params.yaml'}\n")
    text = best_params_text(original, None, (("train.lr", -1.0),), "s", 0, "val_auc", 0.5)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        write_best_params(tmp_path / "best_params.yaml", text)
    assert not (tmp_path / "best_params.yaml").exists() and not list(tmp_path.glob(".*partial"))


def test_a_non_finite_value_is_no_best_trial(tmp_path):
    with pytest.raises(ValueError, match="no finite val_auc"):
        best_params_text(tmp_path / "p.yaml", None, (), "s", 0, "val_auc", float("nan"))
