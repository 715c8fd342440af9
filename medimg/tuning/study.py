"""Optuna I/O: the study's storage, name, sampler and pruner; asking, reattaching to and telling trials.

The flow asks for every trial (one sampler, in one process) and tells every result; a Dask worker reattaches to
its trial by storage id (:func:`attach`) only to report the per-epoch metric and ask the pruner. The storage is a
database both can reach: SQLite in the workspace by default (``<workspace>/tuning/optuna.db``: workers on this
host), or the SQLAlchemy URL in ``tune.storage`` (PostgreSQL: workers on other hosts).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from medimg.config import Params, SearchDimension, TuneConfig
from medimg.tuning import space
from medimg.tuning.results import TrialOutcome, TrialSpec
from medimg.workspace import Workspace

#: How long an SQLite connection waits for another process's write to finish, s.
SQLITE_TIMEOUT_S = 120
STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}


def tuning_dir(ws: Workspace) -> Path:
    """``<workspace>/tuning``: the default study database, and one folder per study (figures, best params)."""
    return ws.root / "tuning"


def storage_url(cfg: TuneConfig, ws: Workspace) -> str:
    """``tune.storage``, else SQLite at ``<workspace>/tuning/optuna.db`` (its folder created)."""
    if cfg.storage:
        return cfg.storage
    tuning_dir(ws).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{tuning_dir(ws) / 'optuna.db'}"


def redacted(url: str) -> str:
    """The storage URL without its password, for logs, tags and summaries."""
    return make_url(url).render_as_string(hide_password=True)


def study_name(params: Params, data_version: str, dims: Sequence[SearchDimension]) -> str:
    """``tune.study_name``, else ``<experiment>-<data version>-<hash>``, the hash over the params fingerprint, the
    metric and the search space: a later ``medimg tune`` with the same data, params and space continues the study,
    any change starts a new one."""
    if params.tune.study_name:
        return params.tune.study_name
    key = f"{params.fingerprint()}|{params.tune.metric}|{space.digest(dims)}"
    return f"{params.registry.experiment}-{data_version[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def sampler(cfg: TuneConfig) -> optuna.samplers.BaseSampler:
    """TPE (seeded, ``constant_liar`` so trials running at once are not all drawn alike) or random search."""
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, constant_liar=True)


def pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """The median rule on the per-epoch metric (after ``startup_trials`` trials and ``warmup_epochs`` epochs), or
    none."""
    if cfg.pruner.kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.pruner.startup_trials, n_warmup_steps=cfg.pruner.warmup_epochs
    )


@functools.lru_cache(maxsize=8)
def storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url``, one per process and URL: a long-lived Dask worker reuses its connection pool
    across trials instead of opening a new one each time. SQLite connections wait up to :data:`SQLITE_TIMEOUT_S`
    for another process's lock."""
    sqlite = make_url(url).get_backend_name() == "sqlite"
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def open_study(cfg: TuneConfig, url: str, name: str) -> optuna.Study:
    """The study ``name`` at ``url``, created when new (direction from ``tune.metric``), else continued."""
    return optuna.create_study(
        storage=storage(url),
        study_name=name,
        direction=cfg.objective_direction,
        sampler=sampler(cfg),
        pruner=pruner(cfg),
        load_if_exists=True,
    )


def ask(study: optuna.Study, dims: Sequence[SearchDimension]) -> TrialSpec:
    """A new trial of ``study`` with its suggestions for ``dims``."""
    trial = study.ask()
    values = space.suggest(trial, dims)
    # the storage id: the one handle by which another process reopens this trial (optuna.trial.Trial(study, id))
    return TrialSpec(number=trial.number, trial_id=trial._trial_id, values=values)


def attach(cfg: TuneConfig, url: str, name: str, trial_id: int) -> optuna.Trial:
    """The running trial ``trial_id`` of study ``name``, reopened in this process (a Dask worker) to report to and
    to ask the pruner (``tune.pruner``, over the other trials in the storage)."""
    study = optuna.load_study(study_name=name, storage=storage(url), sampler=sampler(cfg), pruner=pruner(cfg))
    return optuna.trial.Trial(study, trial_id)


def tell(study: optuna.Study, outcome: TrialOutcome) -> None:
    """Record a trial's end: its value when complete, pruned (Optuna keeps the last reported value) or failed."""
    if outcome.state == "complete" and outcome.value is not None and math.isfinite(outcome.value):
        study.tell(outcome.number, outcome.value)
    elif outcome.state == "pruned":
        study.tell(outcome.number, state=STATES["pruned"])
    else:
        study.tell(outcome.number, state=STATES["failed"])


def best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial of the whole study (every call's), or None when none completed."""
    complete = study.get_trials(deepcopy=False, states=(STATES["complete"],))
    return study.best_trial if complete else None


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials of the whole study by state: complete, pruned, failed, running."""
    trials = study.get_trials(deepcopy=False)
    named = {**{k: v for k, v in STATES.items()}, "running": optuna.trial.TrialState.RUNNING}
    return {name: sum(t.state == state for t in trials) for name, state in named.items()}
