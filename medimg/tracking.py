"""MLflow tracking I/O: one MLflow run per flow run, reopened by id in each step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow

from medimg.config import Params
from medimg.registry import ensure_experiment
from medimg.workspace import Workspace


def start_run(params: Params, ws: Workspace, tags: dict[str, str]) -> str:
    """Create the run, log every param, and return its id (the run is left open for the steps)."""
    local = mlflow.get_tracking_uri().startswith("sqlite:") or mlflow.get_tracking_uri().startswith("file:")
    experiment_id = ensure_experiment(params.registry.experiment, ws.mlflow_artifacts if local else None)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        flat = params.flat()
        items = list(flat.items())
        for start in range(0, len(items), 90):
            mlflow.log_params(dict(items[start : start + 90]))
        return run.info.run_id


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if finite:
        mlflow.MlflowClient().log_batch(
            run_id, metrics=[mlflow.entities.Metric(k, v, _now_ms(), step or 0) for k, v in finite.items()]
        )


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path)


def log_json(run_id: str, data: dict, artifact_file: str) -> None:
    mlflow.MlflowClient().log_text(run_id, json.dumps(data, indent=1, default=str), artifact_file)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def finish(run_id: str, status: str = "FINISHED") -> None:
    mlflow.MlflowClient().set_terminated(run_id, status=status)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
