"""The ``tune`` flow: an Optuna study whose trials are Prefect tasks on a Dask cluster, then the best trial through
the normal retrain flow.

1. Ingest (as the retrain flow does: skipped when the source is unchanged) and validate the data; every trial
   trains on that one data version.
2. The study (:mod:`medimg.tuning.study`): created, or continued when one with the same name exists (the name
   follows the experiment, data version, params and search space). One MLflow parent run per call, in the
   experiment ``<registry.experiment>-tune``.
3. Trials: the flow asks Optuna for a trial and submits it as a ``trial`` task to the flow's task runner, a
   :class:`prefect_dask.DaskTaskRunner` (a Dask scheduler's address from ``medimg tune --dask``, else a local
   cluster of ``tune.workers`` processes). As many trials run at once as the cluster has worker threads
   (``tune.parallel`` to say otherwise); as each ends the flow tells Optuna its value and asks for the next. A
   trial reports its per-epoch validation metric to Optuna and is pruned by the median rule; each is an MLflow
   child run of the parent (:mod:`medimg.tuning.objective`).
4. The study's figures (optimisation history, parameter importances, per-epoch curves), its trials table and the
   best trial's params file (:mod:`medimg.tuning.best_params`) become artifacts of the parent run.
5. That params file goes through :func:`flows.retrain.retrain` as a subflow: trained again, evaluated, gated,
   exported and registered like any candidate; its gates decide about promotion.

Workers need what the trials read and write: the workspace's dataset (the same path: one host, or a shared file
system), the Optuna storage (SQLite in the workspace on one host; PostgreSQL, ``tune.storage``, across hosts), the
MLflow tracking server, and the Prefect API (a local ephemeral Prefect server is handed to the workers by URL, so
they report to the flow's server instead of starting their own).

The workspace's retrain lock is held from the ingest to the end of the study (a retrain meanwhile would replace
the dataset under the trials) and released before the retrain subflow takes it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner

from medimg import artifacts, tracking
from medimg.config import ConfigError, Params, SearchDimension, load_params
from medimg.contracts import RetrainSummary
from medimg.provenance import code_hash, git_commit
from medimg.tuning import best_params, plots, runs, space, study
from medimg.tuning.results import StudyRef, TrialOutcome, TuneSummary, Values
from medimg.workspace import Workspace, activate, exclusive
from tasks.retrain import ingest_data, result_storage, validate_data
from tasks.tune import run_trial

#: The parent run's artifact folder for the study's figures, trials table and best params file.
ARTIFACT_DIR = "tuning"


def dask_runner(address: str | None, workers: int | None) -> TaskRunner[Any]:
    """The flow's task runner: the Dask scheduler at ``address`` (``tcp://host:port``), else a local cluster of
    ``workers`` processes (None: one per CPU) with one thread each, the CPUs shared out between them as torch
    threads (``OMP_NUM_THREADS``)."""
    if address:
        return DaskTaskRunner(address=address)
    cpus = os.cpu_count() or 1
    n = workers or cpus
    threads = str(max(1, cpus // n))
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "silence_logs": 30,  # logging.WARNING
            "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        },
    )


@flow(name="tune", log_prints=True)
def tune(
    params_path: str = "params.yaml", overrides: dict | None = None, retrain_best: bool = True
) -> State[Any] | TuneSummary:
    """Run ``tune.trials`` trials of the study on the flow's task runner, then (``retrain_best``) the best trial's
    params through the retrain flow. ``Cancelled`` when another run holds the workspace."""
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    with exclusive(ws) as acquired:
        if not acquired:
            message = f"another run holds {ws.lock_file}; this tune did nothing"
            logger.warning(message)
            return Cancelled(message=message)
        summary = _study(params, ws, Path(params_path), overrides, logger)
    if not retrain_best:
        return summary
    return _retrain_best(summary, logger)


def _retrain_best(summary: TuneSummary, logger) -> TuneSummary:
    """The best params file through the normal flow (a subflow); its outcome recorded on the parent run."""
    from flows.retrain import retrain  # here: the retrain flow imports its steps lazily too

    logger.info("best trial %d -> the retrain flow: %s", summary.best_number, summary.best_params_file)
    state = retrain(params_path=str(summary.best_params_file), return_state=True)
    tags = {"medimg.retrain_state": state.name or "unknown", "medimg.retrain_message": (state.message or "")[:500]}
    if state.is_failed():
        tracking.set_tags(summary.parent_run_id, tags)
        state.result()  # raises the retrain's error: the tune failed at its last step
    result = state.result() if state.is_completed() else None
    version, promoted = None, None
    if isinstance(result, RetrainSummary):
        version, promoted = result.model.version, result.model.promoted
        tags.update({"medimg.retrain_run_id": result.mlflow_run_id, artifacts.TAG_MODEL_VERSION: version})
    tracking.set_tags(summary.parent_run_id, tags)
    return replace(
        summary, retrain_state=state.name, retrain_message=state.message, model_version=version, promoted=promoted
    )


def _study(params: Params, ws: Workspace, params_path: Path, overrides: dict | None, logger) -> TuneSummary:
    from medimg.steps.validate import raise_if_failed  # here: pydicom, Pillow, GX (as the retrain flow)

    cfg = params.tune
    dims = cfg.space.for_task(params.task.kind)
    if not dims:
        raise ConfigError(f"tune.space.{params.task.kind} is empty: nothing to tune")
    ingested = ingest_data(params, ws)
    version = ingested.data_version
    url = study.storage_url(cfg, ws)
    name = study.study_name(params, version, dims)
    experiment, parent = runs.start_parent(
        params,
        ws,
        name,
        {
            runs.TAG_STORAGE: study.redacted(url),
            artifacts.TAG_DATA_VERSION: version,
            artifacts.TAG_FLOW_RUN: str(flow_run.id or "none"),
            artifacts.TAG_GIT_COMMIT: git_commit(),
            artifacts.TAG_CODE_HASH: code_hash(),
            artifacts.TAG_PARAMS_HASH: params.fingerprint(),
        },
    )
    logger.info("study %s (storage %s), MLflow parent run %s", name, study.redacted(url), parent)
    try:
        validated = validate_data.with_options(result_storage=result_storage(ws))(params, ws, parent, version)
        raise_if_failed(validated)
        opened = study.open_study(cfg, url, name)
        ref = StudyRef(
            study_name=name,
            storage_url=url,
            tracking_uri=runs.tracking_uri(),
            experiment_id=experiment,
            parent_run_id=parent,
            workspace=ws,
            data_version=version,
            dropped_ids=tuple(validated.training_data.dropped_ids),
        )
        slots, workers = _slots(cfg.parallel)
        logger.info("%d trial(s), %d at once on %d Dask worker(s)", cfg.trials, slots, workers)
        started = time.perf_counter()
        with _api_for_workers():
            outcomes = _run_trials(opened, params, ref, dims, slots, logger)
        seconds = time.perf_counter() - started
        summary = _record(opened, params, ws, params_path, overrides, ref, dims, outcomes, seconds, workers)
    except BaseException as err:
        reason = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        tracking.set_tags(parent, {artifacts.TAG_OUTCOME: "failed", artifacts.TAG_REASON: reason})
        tracking.finish(parent, "FAILED")
        raise
    tracking.finish(parent)
    return summary


def _slots(parallel: int | None) -> tuple[int, int]:
    """(trials at once, Dask workers): ``tune.parallel`` or the cluster's worker threads."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if isinstance(runner, DaskTaskRunner):
        threads = runner.client.nthreads()
        if not threads:
            raise RuntimeError(f"the Dask cluster ({runner.client.scheduler.address}) has no worker: start one")
        return parallel or sum(threads.values()), len(threads)
    return parallel or 1, 1


@contextmanager
def _api_for_workers() -> Iterator[None]:
    """Task runs submitted here carry the Prefect API URL to the workers: with no server configured this process
    runs an ephemeral one, and a worker without a URL would start its own instead of reporting to it."""
    # here: only this helper needs the client and the settings module
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _failed(spec, reason: str) -> TrialOutcome:
    return TrialOutcome(spec.number, "failed", None, 0, 0, 0.0, None, spec.values, reason)


def _run_trials(opened, params: Params, ref: StudyRef, dims, slots: int, logger) -> list[TrialOutcome]:
    """``tune.trials`` trials, ``slots`` at a time: ask, submit, and tell each as it ends. Trials the flow leaves
    behind (it was stopped or broke) are told as failed."""
    pending: dict = {}
    outcomes: list[TrialOutcome] = []
    asked = 0
    try:
        while asked < params.tune.trials or pending:
            while asked < params.tune.trials and len(pending) < slots:
                spec = study.ask(opened, dims)
                asked += 1
                try:
                    trial_params = space.apply(params, spec.values)
                except ConfigError as err:  # a combination the params refuse: failed, never trained
                    outcome = _failed(spec, str(err).replace("\n", " "))
                    study.tell(opened, outcome)
                    outcomes.append(outcome)
                    logger.warning("trial %d refused by the params: %s", spec.number, outcome.reason)
                    continue
                pending[run_trial.submit(trial_params, ref, spec)] = spec
            if not pending:
                continue
            future = next(as_completed(list(pending)))
            spec = pending.pop(future)
            try:
                outcome = future.result()
            except Exception as err:  # the trial broke: recorded as failed, the study goes on
                outcome = _failed(spec, f"{type(err).__name__}: {err}")
            study.tell(opened, outcome)
            outcomes.append(outcome)
            if outcome.state == "failed":
                logger.warning("trial %d failed: %s", outcome.number, outcome.reason)
            logger.info(
                "trial %d %s: %s %s (%.0f s, %d epochs) %s",
                outcome.number,
                outcome.state,
                params.tune.metric,
                "n/a" if outcome.value is None else f"{outcome.value:.4f}",
                outcome.seconds,
                outcome.epochs_run,
                dict(outcome.values),
            )
    finally:
        for spec in pending.values():
            study.tell(opened, _failed(spec, "the flow stopped before the trial ended"))
    return outcomes


def _best_values(best, dims: tuple[SearchDimension, ...]) -> Values:
    return tuple((d.key, best.params[d.key]) for d in dims if d.key in best.params)


def _record(
    opened,
    params: Params,
    ws: Workspace,
    params_path: Path,
    overrides: dict | None,
    ref: StudyRef,
    dims,
    outcomes: list[TrialOutcome],
    seconds: float,
    workers: int,
) -> TuneSummary:
    """The study's figures, trials table and best params file, logged to the parent run; the summary."""
    best = study.best(opened)
    counted = study.counts(opened)
    if best is None or best.value is None:
        raise RuntimeError(f"study {ref.study_name}: no trial completed ({counted}); see the child runs")
    folder = study.tuning_dir(ws) / ref.study_name
    figures = plots.study_figures(opened, params.tune.metric, folder)
    table = folder / "trials.csv"
    opened.trials_dataframe().to_csv(table, index=False)
    values = _best_values(best, dims)
    text = best_params.best_params_text(
        params_path, overrides, values, ref.study_name, best.number, params.tune.metric, float(best.value)
    )
    best_file = best_params.write_best_params(folder / best_params.FILE_NAME, text)
    parent = ref.parent_run_id
    for path in (*figures.paths, table, best_file):
        tracking.log_artifact(parent, path, ARTIFACT_DIR)
    tracking.log_json(
        parent,
        {"importances": figures.importances, "figures_not_drawn": figures.missing, "trials": counted},
        f"{ARTIFACT_DIR}/study.json",
    )
    per_hour = len(outcomes) / seconds * 3600 if seconds > 0 else math.nan
    tracking.log_metrics(
        parent,
        {
            "best_value": float(best.value),
            "trials_this_call": len(outcomes),
            "trials_per_hour": per_hour,
            "dask_workers": workers,
            **{f"trials_{state}": n for state, n in counted.items()},
            **{f"importance_{key}": v for key, v in figures.importances.items()},
        },
    )
    tracking.set_tags(
        parent,
        {
            runs.TAG_BEST_TRIAL: best.number,
            runs.TAG_BEST_PARAMS_FILE: str(best_file),
            artifacts.TAG_OUTCOME: "tuned",
            artifacts.TAG_REASON: f"best trial {best.number}: {params.tune.metric} {best.value:.4f}",
        },
    )
    return TuneSummary(
        study_name=ref.study_name,
        storage=study.redacted(ref.storage_url),
        parent_run_id=parent,
        data_version=ref.data_version,
        trials=tuple(outcomes),
        best_number=best.number,
        best_value=float(best.value),
        best_values=values,
        best_params_file=best_file,
        figures=figures.paths,
        trials_seconds=round(seconds, 1),
        workers=workers,
    )
