"""The search space (issue 17): typed entries checked at load against the keys' own types, Optuna suggestions,
the trial's params, and the ``tune`` section outside the run fingerprint."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from medimg.config import ConfigError, SearchDimension, load_params, parse_params
from medimg.tuning import space

ROOT = Path(__file__).resolve().parents[2]


def _space(*entries: dict) -> dict:
    return {"tune": {"space": {"binary": list(entries)}}}


def test_the_shipped_space_parses_for_every_task_kind():
    params = load_params(ROOT / "params.yaml")
    for kind in ("binary", "multiclass", "segmentation"):
        keys = [d.key for d in params.tune.space.for_task(kind)]
        assert "train.lr" in keys and len(keys) == len(set(keys))
    assert params.tune.objective_direction == "maximize"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"key": "train.lrr", "kind": "float", "low": 1e-4, "high": 1}, r"binary\[0\]\.key: train\.lrr: unknown key"),
        ({"key": "modle.width", "kind": "int", "low": 8, "high": 16}, r"modle\.width: only keys of model, train"),
        ({"key": "preprocess.size", "kind": "int", "low": 28, "high": 64}, r"preprocess\.size: only keys of"),
        ({"key": "train.augment", "kind": "float", "low": 0, "high": 1}, r"train\.augment: a section"),
        ({"key": "train.lr.max", "kind": "float", "low": 0.1, "high": 1}, r"train\.lr is not a section"),
        ({"key": "train.lr", "kind": "float", "low": -1, "high": 1e-2}, r"train\.lr does not accept -1\.0"),
        ({"key": "train.optimizer", "kind": "categorical", "choices": ["adamw", "adam"]}, r"does not accept 'adam'"),
        ({"key": "train.epochs", "kind": "int", "low": 1.5, "high": 3}, r"whole-number"),
        ({"key": "train.lr", "kind": "float", "low": 0, "high": 1, "log": True}, r"log needs low > 0"),
        ({"key": "train.lr", "kind": "float", "low": 0.1, "high": 0.01}, r"needs low <= high"),
        ({"key": "model.width", "kind": "categorical", "choices": [8]}, r"at least two choices"),
        ({"key": "model.width", "kind": "categorical", "choices": [8, 16], "low": 1}, r"not low/high"),
    ],
)
def test_a_bad_entry_fails_at_load_naming_the_key(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(_space(entry))


def test_a_key_named_twice_and_a_direction_against_the_metric_are_refused():
    lr = {"key": "train.lr", "kind": "float", "low": 1e-3, "high": 1e-2}
    with pytest.raises(ConfigError, match=r"binary\[1\]\.key: train\.lr is named twice"):
        parse_params(_space(lr, lr))
    with pytest.raises(ConfigError, match=r"contradicts tune\.metric val_loss"):
        parse_params({"tune": {"metric": "val_loss", "direction": "maximize"}})
    assert parse_params({"tune": {"metric": "val_loss"}}).tune.objective_direction == "minimize"


def test_tune_is_outside_the_fingerprint():
    base = parse_params({})
    space_only = {"key": "model.width", "kind": "categorical", "choices": [8, 16]}
    other = parse_params(
        {"tune": {"trials": 3, "storage": "postgresql://db/optuna", "seed": 1, "space": {"binary": [space_only]}}}
    )
    assert other.fingerprint() == base.fingerprint()


def _dims() -> tuple[SearchDimension, ...]:
    return parse_params(
        _space(
            {"key": "train.lr", "kind": "float", "low": 1e-4, "high": 1e-2, "log": True},
            {"key": "model.width", "kind": "categorical", "choices": [8, 16, 32]},
            {"key": "train.epochs", "kind": "int", "low": 2, "high": 10, "step": 2},
            {"key": "train.augment.hflip", "kind": "categorical", "choices": [True, False]},
        )
    ).tune.space.binary


def test_suggestions_respect_the_space_and_are_seeded():
    dims = _dims()
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        runs.append([space.suggest(study.ask(), dims) for _ in range(20)])
    assert runs[0] == runs[1]
    for values in runs[0]:
        got = dict(values)
        assert [k for k, _ in values] == [d.key for d in dims]
        assert 1e-4 <= got["train.lr"] <= 1e-2 and got["model.width"] in (8, 16, 32)
        assert got["train.epochs"] in (2, 4, 6, 8, 10) and isinstance(got["train.epochs"], int)
        assert got["train.augment.hflip"] in (True, False)
    assert len({dict(v)["train.lr"] for v in runs[0]}) == 20


def test_nested_and_apply_give_the_trials_params():
    values = (("train.lr", 0.002), ("model.width", 16), ("train.augment.hflip", False))
    assert space.nested(values) == {"train": {"lr": 0.002, "augment": {"hflip": False}}, "model": {"width": 16}}
    base = parse_params({"model": {"ensemble": {"members": 3, "tta_flips": ["horizontal"]}}})
    trial = space.apply(base, values)
    assert trial.train.lr == 0.002 and trial.model.width == 16 and trial.train.augment.hflip is False
    assert trial.train.epochs == base.train.epochs  # the rest as it was
    assert not trial.model.ensemble.enabled  # a trial trains one network


def test_a_combination_the_params_refuse_fails_as_a_config_error():
    with pytest.raises(ConfigError, match="scale_min must not exceed scale_max"):
        space.apply(parse_params({}), (("train.augment.scale_min", 1.5),))


def test_the_space_digest_follows_the_entries():
    dims = _dims()
    assert space.digest(dims) == space.digest(_dims())
    assert space.digest(dims) != space.digest(dims[:-1])
