"""What ``medimg status`` reports: the champion and its lineage keys, its task and its metrics with CIs."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow import MlflowClient

from medimg import model_record, registry, tracking
from medimg.config import Params
from medimg.model_record import ModelRecord
from medimg.workspace import Workspace

#: The test metrics shown for a binary task, by name (MLflow ``test_<name>``), each with its 95% CI.
BINARY_STATUS = ("roc_auc", "accuracy", "sensitivity", "specificity")
#: A multiclass task's: overall, then ``sensitivity_<class>`` per class, then the "any abnormality" operating point.
MULTICLASS_STATUS = ("accuracy", "balanced_accuracy", "macro_roc_auc", "macro_f1", "kappa")
ABNORMAL_STATUS = ("abnormal_roc_auc", "abnormal_sensitivity", "abnormal_specificity")


@dataclass(frozen=True)
class TaskFacts:
    """The champion's task as its run recorded it: kind, class names (index = label), abnormal classes."""

    kind: str
    class_names: tuple[str, ...] | None
    abnormal_classes: tuple[str, ...] | None
    source: str  # where it was read: metrics.json, params, or default (binary)


def _json_list(value: str | None) -> tuple[str, ...] | None:
    try:
        found = json.loads(value) if value else None
    except ValueError:
        return None
    return tuple(str(v) for v in found) if isinstance(found, list) else None


def task_of(record: ModelRecord) -> TaskFacts:
    """The task from the run's ``metrics.json`` (``task_kind``...), else its ``task.*`` params, else binary."""
    found = record.evaluation
    if found is not None and found.task_kind is not None:
        return TaskFacts(found.task_kind, found.class_names, found.abnormal_classes, "metrics.json")
    params = record.run.params if record.run else {}
    if "task.kind" in params:
        return TaskFacts(
            params["task.kind"],
            _json_list(params.get("task.class_names")),
            _json_list(params.get("task.abnormal")),
            "params",
        )
    return TaskFacts("binary", _json_list(params.get("data.class_names")), None, "default (binary)")


def status_metric_names(task: TaskFacts) -> tuple[str, ...]:
    """The metric names ``status`` shows for ``task``: :data:`BINARY_STATUS`, or the multiclass ones."""
    if task.kind != "multiclass":
        return BINARY_STATUS
    return (*MULTICLASS_STATUS, *(f"sensitivity_{c}" for c in task.class_names or ()), *ABNORMAL_STATUS)


def _metrics(record: ModelRecord, names: tuple[str, ...]) -> dict[str, float]:
    """``{"test_roc_auc": value, "test_roc_auc_ci_low": low, "test_roc_auc_ci_high": high, ...}`` for ``names``
    (the keys MLflow logged them under); a metric or bound never logged is left out."""
    out: dict[str, float] = {}
    for name in names:
        estimate = record.test_metrics.get(name)
        if estimate is None:
            continue
        out[f"test_{name}"] = estimate.value
        if estimate.ci95_low is not None:
            out[f"test_{name}_ci_low"] = estimate.ci95_low
        if estimate.ci95_high is not None:
            out[f"test_{name}_ci_high"] = estimate.ci95_high
    return out


def champion_status(params: Params, ws: Workspace) -> dict:
    """Schedule, last runs, challenger version and the champion's lineage keys, task, metrics and audit events.

    The champion's ``task`` (kind, class names, abnormal classes, threshold, and where they were read)
    says which ``metrics`` it has: :func:`status_metric_names`, each with its bootstrap 95% CI.

    The champion's ``audit`` lists the events that put an alias on its version, from the workspace's
    ``audit.jsonl`` merged with the copy mirrored in the registered model's tags.
    """
    name = params.registry.model_name
    champ = model_record.by_alias(name, registry.CHAMPION, ws.audit_log)
    challenger = registry.version_by_alias(name, registry.CHALLENGER)
    out: dict = {
        "model_name": name,
        "tracking_uri": MlflowClient().tracking_uri,
        "champion": None,
        "challenger": challenger.version if challenger else None,
        "schedule": {
            "cron": params.schedule.cron,
            "timezone": params.schedule.timezone,
            "deployment": f"retrain/{params.schedule.deployment_name}",
            "work_pool": params.schedule.work_pool,
        },
        "last_runs": tracking.recent_runs(params.registry.experiment, limit=10),
    }
    if champ is None:
        return out
    task = task_of(champ)
    out["champion"] = {
        "version": champ.version,
        "run_id": champ.run_id,
        "data_version": champ.data_version,
        "onnx_sha256": champ.onnx_sha256,
        "git_commit": champ.git_commit,
        "gate_passed": champ.tags.get(registry.TAG_GATE),
        "promoted_at": champ.promotion.promoted_at,
        "promotion_reason": champ.promotion.reason,
        "previous_champion": champ.promotion.previous_champion,
        "task": {
            "kind": task.kind,
            "class_names": list(task.class_names) if task.class_names else None,
            "abnormal_classes": list(task.abnormal_classes) if task.abnormal_classes else None,
            "threshold": champ.evaluation.threshold if champ.evaluation else None,
            "read_from": task.source,
        },
        "metrics": _metrics(champ, status_metric_names(task)),
        "audit": [e.as_dict() for e in champ.promotion_history if e.version == champ.version],
    }
    return out
