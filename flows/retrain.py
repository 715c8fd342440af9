"""The ``retrain`` flow: ingest -> (up to date?) -> drift -> validate -> train -> evaluate -> gate -> export -> register.

Outcomes, as the flow run's final state:
- ``Completed``: a new champion was promoted.
- ``NotPromoted`` (a Completed state): the candidate failed a gate and is registered as
  ``challenger``; the message lists the failed rules, a ``medimg.retrain.not-promoted`` event is
  emitted and the configured notification sent.
- ``UpToDate`` / ``NoDrift`` (Completed states): nothing to train; the message says why.
- ``Failed``: validation failed (or a step broke): event ``medimg.retrain.failed`` and a
  notification; the champion is untouched.
- ``Cancelled``: another retrain holds this workspace; nothing was done.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.states import Cancelled, Completed

from medimg import tracking
from medimg.config import load_params
from medimg.provenance import code_hash, git_commit
from medimg.registry import TAG_CODE_HASH
from medimg.workspace import Workspace, activate, exclusive
from tasks.notify import retry_transient, signal
from tasks.retrain import (
    check_drift,
    evaluate_model,
    export_model,
    gate_model,
    ingest_data,
    open_run,
    result_storage,
    register_model,
    train_model,
    validate_data,
)


@flow(name="retrain", log_prints=True)
def retrain(params_path: str = "params.yaml", overrides: dict | None = None, force: bool = False):
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
    from prefect.runtime import flow_run

    return {"medimg.data_version": version, "medimg.params_hash": params.fingerprint(),
            "medimg.flow_run_id": str(flow_run.id or "none"), "medimg.git_commit": git_commit(),
            TAG_CODE_HASH: code_hash(), "medimg.run_key_checked": key}


def _retrain(params, ws, force: bool, logger):
    opts = params.orchestration
    io = {"retries": opts.task_retries, "retry_delay_seconds": opts.retry_delay_seconds,
          "retry_condition_fn": retry_transient,
          "timeout_seconds": opts.io_timeout_seconds}
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
    version = ingested["data_version"]
    key = tracking.run_key(version, params.fingerprint(), code_hash())
    done = tracking.last_completed(params.registry.experiment, key)
    if done is not None and opts.skip_if_up_to_date and not force:
        message = (f"up to date: data version {version}, params {params.fingerprint()} and code {code_hash()} match "
                   f"MLflow run {done.info.run_id} ({done.data.tags.get(tracking.TAG_OUTCOME)}); nothing trained")
        logger.info(message)
        tracking.record_outcome_only(params, ws, "up_to_date", message, _tags(version, key, params))
        return Completed(name="UpToDate", message=message, data={"run_key": key, "data_version": version,
                                                                  "mlflow_run_id": done.info.run_id})

    drift_result = timed("drift", check_drift, params, ws, version) if params.drift.enabled else {"checked": False}
    if params.drift.retrain_on == "drift" and drift_result.get("drifted") is False and not force:
        message = f"new data version {version} shows no drift against the champion ({drift_result['reason']}); not retrained"
        logger.info(message)
        tracking.record_outcome_only(params, ws, "no_drift", message, _tags(version, key, params))
        return Completed(name="NoDrift", message=message, data={"data_version": version, "drift": drift_result})

    from medimg.steps.validate import raise_if_failed  # ~0.8 s of imports (pydicom, Pillow, scikit-learn): only when training

    run_id = timed("open_run", open_run, params, ws, key, ingested, drift_result)
    try:
        validated = timed("validate", validate_data, params, ws, run_id, key, ingested)
        raise_if_failed(validated)
        trained = timed("train", train_model, params, ws, run_id, key, validated,
                        timeout_seconds=opts.train_timeout_seconds)
        evaluated = timed("evaluate", evaluate_model, params, ws, run_id, key, validated, trained)
        gated = timed("gate", gate_model, params, ws, run_id, evaluated, **io)
        exported = timed("export", export_model, params, ws, run_id, key, ingested, validated, trained, evaluated,
                         timeout_seconds=opts.io_timeout_seconds)
        registered = timed("register", register_model, params, ws, run_id, ingested, validated, gated, exported, **io)
    except BaseException as err:
        reason = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        tracking.set_tags(run_id, {tracking.TAG_OUTCOME: "failed", tracking.TAG_REASON: reason})
        tracking.finish(run_id, "FAILED")
        if isinstance(err, Exception):
            _signal(logger, params, "failed", f"retrain failed: {reason}",
                    {"mlflow_run_id": run_id, "data_version": version})
        raise
    tracking.log_metrics(run_id, {f"step_seconds_{k}": v for k, v in timings.items()})
    summary = {
        "mlflow_run_id": run_id,
        "run_key": key,
        "data_version": version,
        "model": registered,
        "test": {k: evaluated["test"][k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")},
        "test_ci95": {k: evaluated["test_ci95"][k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")},
        "threshold": evaluated["threshold"],
        "gate": {"passed": gated["passed"], "failed": gated["failed"], "report": gated["report"]},
        "validation": {"report": validated["report"], "warnings": validated["n_warnings"], "warts": validated["warts"]},
        "drift": drift_result,
        "onnx": {"sha256": exported["sha256"], "parity": exported["parity"]},
        "step_seconds": timings,
    }
    logger.info("step wall times (s): %s", timings)
    if not gated["passed"]:
        message = (f"gate failed ({', '.join(gated['failed'])}); v{registered['version']} is challenger, "
                   "champion unchanged")
        tracking.set_tags(run_id, {tracking.TAG_OUTCOME: "not_promoted", tracking.TAG_REASON: message})
        tracking.finish(run_id)
        _signal(logger, params, "not-promoted", message, {"mlflow_run_id": run_id, "version": registered["version"],
                                                 "failed_rules": gated["failed"]})
        return Completed(name="NotPromoted", message=message, data=summary)
    tracking.set_tags(run_id, {tracking.TAG_OUTCOME: "promoted",
                               tracking.TAG_REASON: f"v{registered['version']} promoted: all gates passed"})
    tracking.finish(run_id)
    return summary
