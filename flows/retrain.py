"""The ``retrain`` flow: ingest -> (up to date?) -> drift -> validate -> train -> evaluate -> gate -> export ->
register.

Outcomes, as the flow run's final state:
- ``Completed``: a new champion was promoted.
- ``NotPromoted`` (a Completed state): the candidate failed a gate and is registered as
  ``challenger``; the message lists the failed rules, a ``medimg.retrain.not-promoted`` event is
  emitted and the configured notification sent.
- ``UpToDate`` / ``NoDrift`` (Completed states): nothing to train; the message says why.
- ``Failed``: validation failed (or a step broke): event ``medimg.retrain.failed`` and a
  notification; the champion is untouched.
- ``Cancelled``: another retrain holds this workspace; nothing was done.

When a run is skipped or reused (the one list; README "When a run is skipped or reused" says the same):

1. Ingest: :mod:`medimg.steps.source_check` skips it when nothing it reads changed (files' names,
   sizes, mtimes; data and preprocess params; de-identification key; ingest code; the workspace's
   dataset). Needed on its own: the run key needs the data version only an ingest yields.
2. Whole run: the run key (:func:`medimg.tracking.run_key`: data version, params hash, code). An
   MLflow run with the key that finished end to end makes this run ``UpToDate``; with
   ``drift.retrain_on: drift`` a version without drift is ``NoDrift``. ``force`` (and
   ``orchestration.skip_if_up_to_date: false`` for the first) trains anyway, in a new MLflow run.
3. Steps of a crashed run: the next run with the key reopens its MLflow run
   (:func:`medimg.tracking.unfinished`), and the validate, train, evaluate and export tasks return
   that run's persisted results (Prefect cache keyed by step and MLflow run id,
   :mod:`tasks.retrain`); train resumes from its epoch checkpoint; register finds the version
   already registered from the run. A new MLflow run never gets another run's steps.
4. ``dvc repro`` (``dvc.yaml``, ``dvc.lock``): rule 1 for the DVC pipeline's entry point; the flow
   does not use it.

Each step hands the next a frozen contract of :mod:`medimg.contracts`; a trained run returns a
:class:`~medimg.contracts.RetrainSummary`, one that trained nothing a
:class:`~medimg.contracts.RunSkipped` as its state's data.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, State

from medimg import artifacts, tracking
from medimg.config import load_params
from medimg.contracts import DriftCheck, RetrainSummary, RunSkipped
from medimg.provenance import code_hash, git_commit
from medimg.workspace import Workspace, activate, exclusive
from tasks.notify import retry_transient, signal
from tasks.retrain import (
    check_drift,
    evaluate_model,
    export_model,
    gate_model,
    ingest_data,
    open_run,
    register_model,
    result_storage,
    train_model,
    validate_data,
)


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml", overrides: dict | None = None, force: bool = False
) -> State[Any] | RetrainSummary:
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    with exclusive(ws) as acquired:
        if not acquired:
            message = f"another retrain holds {ws.lock_file}; this run did nothing"
            logger.warning(message)
            return Cancelled(message=message)
        return _retrain(params, ws, force, logger)


def _signal(logger, params, outcome: str, message: str, payload: dict) -> None:
    """Notify without letting a dead webhook change the run's outcome (the model is already registered)."""
    state = signal(params, outcome, message, payload, return_state=True)
    if state.is_failed():
        logger.warning("notification for outcome %s could not be delivered: %s", outcome, state.message)


def _tags(version: str, key: str, params) -> dict[str, str]:
    return {
        artifacts.TAG_DATA_VERSION: version,
        artifacts.TAG_PARAMS_HASH: params.fingerprint(),
        artifacts.TAG_FLOW_RUN: str(flow_run.id or "none"),
        artifacts.TAG_GIT_COMMIT: git_commit(),
        artifacts.TAG_CODE_HASH: code_hash(),
        artifacts.TAG_RUN_KEY_CHECKED: key,
    }


def _retrain(params, ws, force: bool, logger) -> State[Any] | RetrainSummary:
    opts = params.orchestration
    io = {
        "retries": opts.task_retries,
        "retry_delay_seconds": opts.retry_delay_seconds,
        "retry_condition_fn": retry_transient,
        "timeout_seconds": opts.io_timeout_seconds,
    }
    timings: dict[str, float] = {}

    storage = result_storage(ws)

    def timed(name, task, *args, **options):
        started = time.perf_counter()
        if task.cache_key_fn is not None:
            options["result_storage"] = storage
        result = (task.with_options(**options) if options else task)(*args)
        timings[name] = round(time.perf_counter() - started, 2)
        return result

    ingested = timed("ingest", ingest_data, params, ws, **io)
    version = ingested.data_version
    key = tracking.run_key(version, params.fingerprint(), code_hash())
    done = tracking.last_completed(params.registry.experiment, key)
    if done is not None and opts.skip_if_up_to_date and not force:
        message = (
            f"up to date: data version {version}, params {params.fingerprint()} and code {code_hash()} match "
            f"MLflow run {done.info.run_id} ({done.data.tags.get(artifacts.TAG_OUTCOME)}); nothing trained"
        )
        logger.info(message)
        tracking.record_outcome_only(params, ws, "up_to_date", message, _tags(version, key, params))
        return Completed(
            name="UpToDate",
            message=message,
            data=RunSkipped(
                outcome="up_to_date",
                reason=message,
                data_version=version,
                run_key=key,
                matching_run_id=done.info.run_id,
            ),
        )

    drift_result = (
        timed("drift", check_drift, params, ws, version)
        if params.drift.enabled
        else DriftCheck(checked=False, reason="drift.enabled is false: not checked")
    )
    if params.drift.retrain_on == "drift" and drift_result.drifted is False and not force:
        message = (
            f"new data version {version} shows no drift against the champion ({drift_result.reason}); not retrained"
        )
        logger.info(message)
        tracking.record_outcome_only(params, ws, "no_drift", message, _tags(version, key, params))
        return Completed(
            name="NoDrift",
            message=message,
            data=RunSkipped(outcome="no_drift", reason=message, data_version=version, run_key=key, drift=drift_result),
        )

    # here: ~0.8 s of imports (pydicom, Pillow, scikit-learn), only when training
    from medimg.steps.validate import raise_if_failed

    run_id = timed("open_run", open_run, params, ws, key, ingested, drift_result)
    try:
        validated = timed("validate", validate_data, params, ws, run_id, version)
        raise_if_failed(validated)
        data = validated.training_data
        trained = timed("train", train_model, params, ws, run_id, data, timeout_seconds=opts.train_timeout_seconds)
        evaluated = timed("evaluate", evaluate_model, params, ws, run_id, data, trained)
        gated = timed("gate", gate_model, params, ws, run_id, evaluated, **io)
        exported = timed(
            "export",
            export_model,
            params,
            ws,
            run_id,
            data,
            trained,
            evaluated,
            timeout_seconds=opts.io_timeout_seconds,
        )
        registered = timed("register", register_model, params, ws, run_id, validated, gated, exported, evaluated, **io)
    except BaseException as err:
        reason = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        tracking.set_tags(run_id, {artifacts.TAG_OUTCOME: "failed", artifacts.TAG_REASON: reason})
        tracking.finish(run_id, "FAILED")
        if isinstance(err, Exception):
            _signal(
                logger,
                params,
                "failed",
                f"retrain failed: {reason}",
                {"mlflow_run_id": run_id, "data_version": version},
            )
        raise
    tracking.log_metrics(run_id, {f"step_seconds_{k}": v for k, v in timings.items()})
    summary = RetrainSummary(
        mlflow_run_id=run_id,
        run_key=key,
        data_version=version,
        ingest=ingested,
        drift=drift_result,
        validation=validated,
        training=trained,
        evaluation=evaluated,
        gate=gated,
        export=exported,
        model=registered,
        step_seconds=timings,
    )
    logger.info("step wall times (s): %s", timings)
    if not gated.passed:
        message = f"gate failed ({', '.join(gated.failed)}); v{registered.version} is challenger, champion unchanged"
        tracking.set_tags(run_id, {artifacts.TAG_OUTCOME: "not_promoted", artifacts.TAG_REASON: message})
        tracking.finish(run_id)
        _signal(
            logger,
            params,
            "not-promoted",
            message,
            {"mlflow_run_id": run_id, "version": registered.version, "failed_rules": list(gated.failed)},
        )
        return Completed(name="NotPromoted", message=message, data=summary)
    tracking.set_tags(
        run_id,
        {artifacts.TAG_OUTCOME: "promoted", artifacts.TAG_REASON: f"v{registered.version} promoted: all gates passed"},
    )
    tracking.finish(run_id)
    return summary
