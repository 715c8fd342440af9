"""Optuna I/O of a study (issue 17), on a real SQLite storage: the flow asks and tells, a second handle (what a
Dask worker opens) reports per-epoch values and is pruned by the median rule; the figures; the names."""

from __future__ import annotations

import optuna
import pytest

from medimg.config import parse_params
from medimg.tuning import plots, study
from medimg.tuning.results import TrialOutcome
from medimg.workspace import Workspace

PARAMS = parse_params(
    {
        "tune": {
            "pruner": {"startup_trials": 2, "warmup_epochs": 1},
            "space": {"binary": [{"key": "train.lr", "kind": "float", "low": 1e-4, "high": 1e-2, "log": True}]},
        }
    }
)


def _outcome(spec, state, value, epochs=3) -> TrialOutcome:
    return TrialOutcome(spec.number, state, value, 1, epochs, 1.0, None, spec.values)


def _run(opened, url, name, curve) -> tuple[object, bool]:
    """Ask a trial, report ``curve`` epoch by epoch through a handle of its own (as a worker does); pruned?"""
    spec = study.ask(opened, PARAMS.tune.space.binary)
    worker_side = study.attach(PARAMS.tune, url, name, spec.trial_id)
    for epoch, value in enumerate(curve, start=1):
        worker_side.report(value, epoch)
        if worker_side.should_prune():
            study.tell(opened, _outcome(spec, "pruned", value, epoch))
            return spec, True
    study.tell(opened, _outcome(spec, "complete", max(curve)))
    return spec, False


def test_trials_reported_from_another_handle_are_pruned_by_the_median_rule(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    url = study.storage_url(PARAMS.tune, ws)
    assert url == f"sqlite:///{ws.root / 'tuning' / 'optuna.db'}"
    name = study.study_name(PARAMS, "abcdef0123456789", PARAMS.tune.space.binary)
    opened = study.open_study(PARAMS.tune, url, name)
    assert study.best(opened) is None
    _, pruned_a = _run(opened, url, name, [0.80, 0.85, 0.90])
    _, pruned_b = _run(opened, url, name, [0.82, 0.86, 0.88])
    weak, pruned_c = _run(opened, url, name, [0.60, 0.61, 0.62])  # below the median after epoch 1 (the warm-up)
    assert (pruned_a, pruned_b, pruned_c) == (False, False, True)
    reopened = study.open_study(PARAMS.tune, url, name)  # a later call continues the same study
    assert study.counts(reopened) == {"complete": 2, "pruned": 1, "failed": 0, "running": 0}
    best = study.best(reopened)
    assert best is not None and best.value == pytest.approx(0.90) and best.number == 0
    pruned = reopened.trials[weak.number]
    assert pruned.state == optuna.trial.TrialState.PRUNED and sorted(pruned.intermediate_values) == [1]

    figures = plots.study_figures(reopened, "val_auc", tmp_path / "figures")
    assert {p.name for p in figures.paths} == {plots.HISTORY, plots.IMPORTANCES, plots.INTERMEDIATE}
    assert all(p.stat().st_size > 1000 for p in figures.paths) and set(figures.importances) == {"train.lr"}


def test_a_failed_trial_is_told_as_failed_and_figures_say_what_they_cannot_draw(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    url = study.storage_url(PARAMS.tune, ws)
    opened = study.open_study(PARAMS.tune, url, "failing")
    spec = study.ask(opened, PARAMS.tune.space.binary)
    study.tell(opened, TrialOutcome(spec.number, "failed", None, 0, 0, 0.0, None, spec.values, "boom"))
    assert study.counts(opened)["failed"] == 1 and study.best(opened) is None
    figures = plots.study_figures(opened, "val_auc", tmp_path / "figures")
    assert figures.paths == () and set(figures.missing) == {plots.HISTORY, plots.IMPORTANCES, plots.INTERMEDIATE}


def test_names_and_the_redacted_storage():
    dims = PARAMS.tune.space.binary
    name = study.study_name(PARAMS, "abcdef0123456789", dims)
    assert name.startswith("medimg-retrain-abcdef012345-") and name == study.study_name(
        PARAMS, "abcdef0123456789", dims
    )
    assert name != study.study_name(parse_params({"train": {"epochs": 3}}), "abcdef0123456789", dims)
    assert study.study_name(parse_params({"tune": {"study_name": "mine"}}), "v", dims) == "mine"
    shown = study.redacted("postgresql+psycopg2://medimg:s3cret@127.0.0.1:5432/optuna")
    assert "s3cret" not in shown and shown.endswith("@127.0.0.1:5432/optuna")
