"""One trial, on a Dask worker: the existing training code on the study's data version, the per-epoch validation
metric reported to the trial, pruned by the study's pruner.

The worker reattaches to the trial the flow asked for (:func:`medimg.tuning.study.attach`), opens the trial's MLflow
child run, trains one network with :func:`medimg.training.loop.train` (segmentation:
:func:`medimg.segmentation.training.train_segmentation`) on the workspace's dataset (the train and val splits of
``ref.data_version`` without its dropped images; read once per worker process and data version), reports the
tuned metric after every epoch and raises ``optuna.TrialPruned`` when the pruner says so. Nothing is written to the
workspace: a trial's weights are not kept (the normal flow trains the best trial's params again, and its gates
decide).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path

import distributed
import optuna

from medimg.config import Params
from medimg.data import manifest
from medimg.training.data import SplitArrays, load_split
from medimg.training.loop import report_epochs, train
from medimg.tuning import runs, study
from medimg.tuning.results import StudyRef, TrialOutcome, TrialSpec

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def splits(dataset: Path, data_version: str, dropped_ids: tuple[str, ...]) -> tuple[SplitArrays, SplitArrays]:
    """The train and val splits of the dataset at ``dataset`` (data version ``data_version``: the cache key),
    without ``dropped_ids``; decoded once per worker process."""
    frame = manifest.read(dataset)
    exclude = set(dropped_ids)
    return load_split(dataset, frame, "train", exclude), load_split(dataset, frame, "val", exclude)


def worker_name() -> str:
    """``<Dask worker address> pid <pid>`` of the worker running this trial (``none pid <pid>`` outside Dask)."""
    try:
        address = distributed.get_worker().address
    except ValueError:  # not in a Dask worker (a trial run directly, e.g. by the benchmark's bare script)
        address = "none"
    return f"{address} pid {os.getpid()}"


def run_trial(params: Params, ref: StudyRef, spec: TrialSpec) -> TrialOutcome:
    """Train trial ``spec`` with its params ``params`` (the study's params with the trial's values); its outcome.

    The value is the metric (``tune.metric``) at the best epoch (the epoch the training keeps, by validation
    AUC / macro AUC / mean Dice); a pruned trial's is the last one reported. Per-epoch metrics go to the trial's
    child run (step = epoch) and, when finite, to the trial (step = epoch). A training error marks the child run
    FAILED and is raised (the flow records the trial as failed).
    """
    started = time.perf_counter()
    runs.use_tracking(ref.tracking_uri)
    trial = study.attach(params.tune, ref.storage_url, ref.study_name, spec.trial_id)
    run_id = runs.start_child(ref, spec, params, worker_name())
    metric = params.tune.metric
    epochs: list[dict] = []
    to_mlflow = report_epochs(run_id, params.train.epochs)

    def on_epoch(row: dict) -> None:
        to_mlflow(row)
        epochs.append(row)
        value = float(row[metric])
        if math.isfinite(value):
            trial.report(value, row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}: {metric} {value:.4f}")

    def outcome(state, value, best_epoch, reason="") -> TrialOutcome:
        return TrialOutcome(
            number=spec.number,
            state=state,
            value=value,
            best_epoch=best_epoch,
            epochs_run=len(epochs),
            seconds=round(time.perf_counter() - started, 2),
            mlflow_run_id=run_id,
            values=spec.values,
            reason=reason,
        )

    try:
        train_split, val_split = splits(ref.workspace.data, ref.data_version, ref.dropped_ids)
        trainer = train
        if params.task.kind == "segmentation":
            from medimg.segmentation.training import train_segmentation  # here: it imports MONAI (seconds)

            trainer = train_segmentation
        result = trainer(params, train_split, val_split, on_epoch=on_epoch)
    except optuna.TrialPruned as err:
        last = next((float(r[metric]) for r in reversed(epochs) if math.isfinite(float(r[metric]))), None)
        done = outcome("pruned", last, 0, str(err))
        runs.finish_child(run_id, done)
        log.info("trial %d %s", spec.number, err)
        return done
    except Exception as err:
        runs.finish_child(run_id, outcome("failed", None, 0, f"{type(err).__name__}: {err}"))
        raise
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    value = result.best_val_auc if metric == "val_auc" else float(best.get(metric, math.nan))
    done = outcome("complete", value, result.best_epoch)
    runs.finish_child(run_id, done)
    log.info("trial %d: %s %.4f at epoch %d (%.1f s)", spec.number, metric, value, result.best_epoch, done.seconds)
    return done
