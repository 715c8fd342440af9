"""MLflow tracking I/O: one MLflow run per flow run, reopened by id in each step."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow

from medimg.artifacts import TAG_DATA_VERSION, TAG_FLOW_RUN, TAG_MODEL_VERSION, TAG_OUTCOME, TAG_REASON, TAG_RUN_KEY
from medimg.config import Params
from medimg.registry import ensure_experiment
from medimg.workspace import Workspace


def reopen(run_id: str) -> str:
    """Mark a crashed run as running again; its steps continue it."""
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")
    return run_id


def _experiment_id(params: Params, ws: Workspace) -> str:
    """The params' experiment; with a local store, new experiments keep artifacts in the workspace."""
    local = mlflow.get_tracking_uri().startswith(("sqlite:", "file:"))
    return ensure_experiment(params.registry.experiment, ws.mlflow_artifacts if local else None)


def start_run(params: Params, ws: Workspace, tags: dict[str, str]) -> str:
    """Create the run, log every param, and return its id (the run is left open for the steps)."""
    client = mlflow.MlflowClient()
    run = client.create_run(_experiment_id(params, ws), tags=tags)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in params.flat().items()])
    return run.info.run_id


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log the finite numeric values of ``metrics`` to run ``run_id`` at ``step`` (0 by default); NaN, inf and
    non-numbers are dropped.
    """
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if finite:
        mlflow.MlflowClient().log_batch(
            run_id, metrics=[mlflow.entities.Metric(k, v, _now_ms(), step or 0) for k, v in finite.items()]
        )


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Upload the file at ``path`` to run ``run_id`` under ``artifact_path`` (the artifact root when None)."""
    mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path)


def log_json(run_id: str, data: dict, artifact_file: str) -> None:
    """Write ``data`` as indented JSON (non-JSON values as str) to the artifact ``artifact_file`` of run ``run_id``."""
    mlflow.MlflowClient().log_text(run_id, json.dumps(data, indent=1, default=str), artifact_file)


def set_tags(run_id: str, tags: Mapping[str, object]) -> None:
    """Set ``tags`` (values as str) on run ``run_id`` in one batch."""
    mlflow.MlflowClient().log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


def finish(run_id: str, status: str = "FINISHED") -> None:
    """Mark run ``run_id`` terminated with ``status`` (FINISHED, FAILED or KILLED)."""
    mlflow.MlflowClient().set_terminated(run_id, status=status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_key(data_version: str, params_hash: str, code_hash: str) -> str:
    """What makes two retrains the same: data version, params and code.

    ``code_hash`` is :func:`medimg.provenance.code_hash`, the content of the source, not the git
    commit: two uncommitted edits share the name ``<sha>-dirty`` but not their content, and each
    must retrain (and miss the Prefect step caches keyed by the run key).
    """
    return hashlib.sha256(f"{data_version}|{params_hash}|{code_hash}".encode()).hexdigest()[:20]


def runs_with_key(experiment: str, key: str) -> list:
    """MLflow runs of this experiment carrying ``key``, newest first."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string=f"tags.`{TAG_RUN_KEY}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )


def last_completed(experiment: str, key: str):
    """The newest run with ``key`` that finished end to end, or None."""
    for run in runs_with_key(experiment, key):
        if run.info.status == "FINISHED" and run.data.tags.get(TAG_OUTCOME) in ("promoted", "not_promoted"):
            return run
    return None


def unfinished(experiment: str, key: str):
    """The newest run with ``key`` that crashed or was killed part way, to be continued."""
    for run in runs_with_key(experiment, key):
        if run.info.status in ("RUNNING", "FAILED", "KILLED") and TAG_OUTCOME not in run.data.tags:
            return run
    return None


def recent_runs(experiment: str, limit: int = 10) -> list[dict]:
    """The ``limit`` latest runs of ``experiment``, newest first, as dicts of ids, status and ``medimg.*`` outcome
    tags; [] when the experiment does not exist.
    """
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=limit,
        output_format="list",
    )
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "outcome": r.data.tags.get(TAG_OUTCOME),
            "reason": r.data.tags.get(TAG_REASON),
            "data_version": r.data.tags.get(TAG_DATA_VERSION),
            "flow_run_id": r.data.tags.get(TAG_FLOW_RUN),
            "model_version": r.data.tags.get(TAG_MODEL_VERSION),
        }
        for r in runs
    ]


def record_outcome_only(params: Params, ws: Workspace, outcome: str, reason: str, tags: dict[str, str]) -> str:
    """A run that trained nothing (up to date, no drift), so status and audits still see it happened."""
    client = mlflow.MlflowClient()
    run = client.create_run(
        _experiment_id(params, ws), tags={**tags, TAG_OUTCOME: outcome, TAG_REASON: reason}, run_name=f"{outcome}"
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
