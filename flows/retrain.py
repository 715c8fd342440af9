"""The ``retrain`` flow: ingest -> validate -> train -> evaluate -> gate -> export -> register.

A failed validation ends the flow in a Failed state before training; a failed gate still
registers the candidate (alias ``challenger``) and ends in a Completed state named
``NotPromoted`` whose message lists the failed rules. ``champion`` is untouched in both cases.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.states import Completed

from medimg import tracking
from medimg.config import load_params
from medimg.steps.validate import raise_if_failed
from medimg.workspace import Workspace, activate
from tasks.retrain import (
    evaluate_model,
    export_model,
    gate_model,
    ingest_data,
    open_run,
    register_model,
    train_model,
    validate_data,
)


@flow(name="retrain", log_prints=True)
def retrain(params_path: str = "params.yaml", overrides: dict | None = None):
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - started, 2)
        return result

    run_id = timed("open_run", open_run, params, ws)
    try:
        ingested = timed("ingest", ingest_data, params, ws, run_id)
        validated = timed("validate", validate_data, params, ws, run_id, ingested)
        raise_if_failed(validated)
        trained = timed("train", train_model, params, ws, run_id, validated)
        evaluated = timed("evaluate", evaluate_model, params, ws, run_id, validated, trained)
        gated = timed("gate", gate_model, params, ws, run_id, evaluated)
        exported = timed("export", export_model, params, ws, run_id, ingested, validated, trained, evaluated)
        registered = timed("register", register_model, params, ws, run_id, ingested, validated, gated, exported)
    except BaseException:
        tracking.finish(run_id, "FAILED")
        raise
    tracking.log_metrics(run_id, {f"step_seconds_{k}": v for k, v in timings.items()})
    tracking.finish(run_id)
    summary = {
        "mlflow_run_id": run_id,
        "data_version": ingested["data_version"],
        "model": registered,
        "test": {k: evaluated["test"][k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")},
        "test_ci95": {k: evaluated["test_ci95"][k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")},
        "threshold": evaluated["threshold"],
        "gate": {"passed": gated["passed"], "failed": gated["failed"], "report": gated["report"]},
        "validation": {"report": validated["report"], "warnings": validated["n_warnings"], "warts": validated["warts"]},
        "onnx": {"sha256": exported["sha256"], "parity": exported["parity"]},
        "step_seconds": timings,
    }
    logger.info("step wall times (s): %s", timings)
    if not gated["passed"]:
        return Completed(
            name="NotPromoted",
            message=f"gate failed ({', '.join(gated['failed'])}); v{registered['version']} is challenger, champion unchanged",
            data=summary,
        )
    return summary
