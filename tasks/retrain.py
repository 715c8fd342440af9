"""The retraining pipeline's Prefect tasks: names, retries and logging around ``medimg.steps``."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from medimg import tracking
from medimg.config import Params
from medimg.provenance import git_commit
from medimg.steps import evaluate, export, gate, ingest, register, train, validate
from medimg.workspace import Workspace


@task(name="open-mlflow-run")
def open_run(params: Params, ws: Workspace) -> str:
    return tracking.start_run(params, ws, {
        "medimg.flow_run_id": str(flow_run.id or "none"),
        "medimg.flow_run_name": str(flow_run.name or "none"),
        "medimg.git_commit": git_commit(),
        "medimg.params_hash": params.fingerprint(),
    })


@task(name="ingest", retries=1, retry_delay_seconds=5)
def ingest_data(params: Params, ws: Workspace, run_id: str) -> dict:
    summary = ingest.run(params, ws)
    tracking.set_tags(run_id, {"medimg.data_version": summary["data_version"]})
    tracking.log_json(run_id, summary, "data/ingest.json")
    return summary


@task(name="validate")
def validate_data(params: Params, ws: Workspace, run_id: str, ingested: dict) -> dict:
    summary = validate.run(params, ws, ingested)
    tracking.log_artifact(run_id, summary["report"], "validation")
    tracking.set_tags(run_id, {"medimg.validation_passed": summary["passed"]})
    return summary


@task(name="train")
def train_model(params: Params, ws: Workspace, run_id: str, validated: dict) -> dict:
    return train.run(params, ws, run_id, validated)


@task(name="evaluate")
def evaluate_model(params: Params, ws: Workspace, run_id: str, validated: dict, trained: dict) -> dict:
    return evaluate.run(params, ws, run_id, validated, trained)


@task(name="gate", retries=2, retry_delay_seconds=10)
def gate_model(params: Params, ws: Workspace, run_id: str, evaluated: dict) -> dict:
    return gate.run(params, ws, run_id, evaluated)


@task(name="export-onnx")
def export_model(params: Params, ws: Workspace, run_id: str, ingested: dict, validated: dict, trained: dict,
                 evaluated: dict) -> dict:
    return export.run(params, ws, run_id, ingested, validated, trained, evaluated)


@task(name="register", retries=2, retry_delay_seconds=10)
def register_model(params: Params, ws: Workspace, run_id: str, ingested: dict, validated: dict, gated: dict,
                   exported: dict) -> dict:
    return register.run(params, ws, run_id, str(flow_run.id or "none"), ingested, validated, gated, exported)
