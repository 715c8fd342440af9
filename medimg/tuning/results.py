"""The records a study hands between the flow and its trials: what a trial is to train, where the study
and its runs live, what a trial came to, and what a call of ``medimg tune`` came to. Frozen and picklable: they
travel to Dask workers and back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medimg.workspace import Workspace

#: A suggested value of a params key.
Value = bool | int | float | str
#: A trial's suggestions: (dotted params key, value), in the search space's order.
Values = tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class TrialSpec:
    """One trial to train: its Optuna number, the storage id a worker reattaches to it by, and its suggestions."""

    number: int
    trial_id: int
    values: Values


@dataclass(frozen=True)
class StudyRef:
    """Where a study and its records live, for a worker: the Optuna storage URL (may hold a password: never log
    it), the MLflow tracking URI, experiment and parent run, and the data the trials train on (the workspace's
    dataset at ``data_version`` without ``dropped_ids``)."""

    study_name: str
    storage_url: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    workspace: Workspace
    data_version: str
    dropped_ids: tuple[str, ...]


TrialState = Literal["complete", "pruned", "failed"]


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial came to: ``value`` is the metric at its best epoch (complete), at its last reported epoch
    (pruned), or None (failed, ``reason`` says why); ``seconds`` its wall time on the worker."""

    number: int
    state: TrialState
    value: float | None
    best_epoch: int
    epochs_run: int
    seconds: float
    mlflow_run_id: str | None
    values: Values
    reason: str = ""


@dataclass(frozen=True)
class TuneSummary:
    """One call of the tune flow: the study, this call's trials, the best trial of the whole study, its params
    file, the figures, and (when it ran) the outcome of the normal flow on that file."""

    study_name: str
    storage: str  # redacted: no password
    parent_run_id: str
    data_version: str
    trials: tuple[TrialOutcome, ...]
    best_number: int
    best_value: float
    best_values: Values
    best_params_file: Path
    figures: tuple[Path, ...]
    trials_seconds: float
    workers: int
    retrain_state: str | None = None
    retrain_message: str | None = None
    model_version: str | None = None
    promoted: bool | None = None
