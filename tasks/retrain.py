"""The retraining pipeline's Prefect tasks: names, retries, timeouts and caching around ``medimg.steps``.

Steps after ingest are cached under the run key (data version, params, and the content hash of
the source, :func:`medimg.provenance.code_hash`, so an uncommitted edit is new code): a flow run that
crashed part way is started again and Prefect returns the finished steps' persisted results
instead of running them twice. Training itself continues from its last epoch checkpoint.
The step modules are imported inside the tasks: an up-to-date run never loads torch, ONNX or
Great Expectations, so it ends in seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from medimg import artifacts, tracking
from medimg.config import Params
from medimg.provenance import code_hash, git_commit
from medimg.registry import TAG_CODE_HASH
from medimg.workspace import Workspace


def _by_run_key(step: str):
    def key(_context, arguments: dict) -> str:
        where = hashlib.sha256(str(arguments["ws"].root).encode()).hexdigest()[:12]
        return f"medimg-{step}-{arguments['run_key']}-{where}"

    return key


def result_storage(ws: Workspace) -> Path:
    """Persisted step results live in the workspace, whatever Prefect home the process started with.

    A ``Path``, which Prefect turns into a local file system itself: an unsaved ``LocalFileSystem``
    block is refused by ``Task.with_options`` ("must be persisted server-side").
    """
    return ws.prefect_results


def cached(step: str, **options):
    """A task whose result is persisted and reused for the same run key."""
    return task(name=step, cache_key_fn=_by_run_key(step), persist_result=True, **options)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_data(params: Params, ws: Workspace) -> dict:
    """The ingest, or the last one's summary when the source is unchanged (see ``source_check``)."""
    from medimg.steps import source_check

    return source_check.run(params, ws)


@task(name="drift-check", cache_policy=NO_CACHE)
def check_drift(params: Params, ws: Workspace, data_version: str) -> dict:
    from medimg.steps import drift

    return drift.run(params, ws, data_version)


@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_run(params: Params, ws: Workspace, run_key: str, ingested: dict, drift_result: dict) -> str:
    """A new MLflow run, or the unfinished one with the same run key (a crashed attempt)."""
    previous = tracking.unfinished(params.registry.experiment, run_key)
    if previous is not None:
        run_id = tracking.reopen(previous.info.run_id)
        tracking.set_tags(run_id, {"medimg.resumed_by_flow_run": str(flow_run.id or "none")})
    else:
        run_id = tracking.start_run(params, ws, {
            "medimg.flow_run_id": str(flow_run.id or "none"),
            "medimg.flow_run_name": str(flow_run.name or "none"),
            "medimg.git_commit": git_commit(),
            TAG_CODE_HASH: code_hash(),
            "medimg.params_hash": params.fingerprint(),
            "medimg.data_version": ingested["data_version"],
            tracking.TAG_RUN_KEY: run_key,
        })
    tracking.log_json(run_id, ingested, artifacts.INGEST_REPORT)
    # the files set aside at ingest: pseudonyms and reasons only (the workspace's own report names the files)
    if ingested.get("quarantine_pseudonymous_csv"):
        tracking.log_artifact(run_id, ingested["quarantine_pseudonymous_csv"], artifacts.QUARANTINE_DIR)
    tracking.log_json(run_id, drift_result, artifacts.DRIFT_REPORT)
    for feature in drift_result.get("features", []):
        tracking.log_metrics(run_id, {f"drift_{feature['feature']}_psi": feature["psi"],
                                      f"drift_{feature['feature']}_ks_pvalue": feature["ks_pvalue"]})
    return run_id


@cached("validate")
def validate_data(params: Params, ws: Workspace, run_id: str, run_key: str, ingested: dict) -> dict:
    from medimg.steps import validate

    summary = validate.run(params, ws, ingested)
    tracking.log_artifact(run_id, summary["report"], artifacts.VALIDATION_DIR)
    if summary.get("html_report"):  # the offline HTML report beside the JSON
        tracking.log_artifact(run_id, summary["html_report"], artifacts.VALIDATION_DIR)
    tracking.set_tags(run_id, {"medimg.validation_passed": summary["passed"]})
    return summary


@cached("train")
def train_model(params: Params, ws: Workspace, run_id: str, run_key: str, validated: dict) -> dict:
    from medimg.steps import train

    return train.run(params, ws, run_id, validated)


@cached("evaluate")
def evaluate_model(params: Params, ws: Workspace, run_id: str, run_key: str, validated: dict, trained: dict) -> dict:
    from medimg.steps import evaluate

    return evaluate.run(params, ws, run_id, validated, trained)


@task(name="gate", cache_policy=NO_CACHE)
def gate_model(params: Params, ws: Workspace, run_id: str, evaluated: dict) -> dict:
    from medimg.steps import gate

    return gate.run(params, ws, run_id, evaluated)


@cached("export-onnx")
def export_model(params: Params, ws: Workspace, run_id: str, run_key: str, ingested: dict, validated: dict,
                 trained: dict, evaluated: dict) -> dict:
    from medimg.steps import export

    return export.run(params, ws, run_id, ingested, validated, trained, evaluated)


@task(name="register", cache_policy=NO_CACHE)
def register_model(params: Params, ws: Workspace, run_id: str, ingested: dict, validated: dict, gated: dict,
                   exported: dict) -> dict:
    from medimg.steps import register

    return register.run(params, ws, run_id, str(flow_run.id or "none"), ingested, validated, gated, exported)
