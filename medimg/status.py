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
#: A segmentation task's: the mean Dice, then per structure Dice, HD95 (mm) and absolute volume error (mL).
SEGMENTATION_STATUS = ("mean_dice", "mean_hd95")
SEGMENTATION_PER_STRUCTURE = ("dice", "hd95", "volume_error_ml")


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
    params = record.run.params if record.run else {}
    if found is not None and found.task_kind is not None:
        names = found.class_names or _json_list(params.get("task.class_names"))
        abnormal = found.abnormal_classes or _json_list(params.get("task.abnormal"))
        return TaskFacts(found.task_kind, names, abnormal, "metrics.json")
    if "task.kind" in params:
        return TaskFacts(
            params["task.kind"],
            _json_list(params.get("task.class_names")),
            _json_list(params.get("task.abnormal")),
            "params",
        )
    return TaskFacts("binary", _json_list(params.get("data.class_names")), None, "default (binary)")


def status_metric_names(task: TaskFacts) -> tuple[str, ...]:
    """The metric names ``status`` shows for ``task``: :data:`BINARY_STATUS`, the multiclass ones, or for
    segmentation the mean Dice and HD95 and each structure's (``class_names[1:]``) Dice, HD95 and volume error."""
    if task.kind == "segmentation":
        structures = (task.class_names or ())[1:]
        return (*SEGMENTATION_STATUS, *(f"{m}_{s}" for s in structures for m in SEGMENTATION_PER_STRUCTURE))
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


def _task_block(record: ModelRecord) -> tuple[dict, dict[str, float]]:
    """(the version's task as JSON, its status metrics with CIs)."""
    task = task_of(record)
    block = {
        "kind": task.kind,
        "class_names": list(task.class_names) if task.class_names else None,
        "abnormal_classes": list(task.abnormal_classes) if task.abnormal_classes else None,
        "threshold": record.evaluation.threshold if record.evaluation else None,
        "read_from": task.source,
    }
    return block, _metrics(record, status_metric_names(task))


def champion_status(params: Params, ws: Workspace) -> dict:
    """Schedule, last runs, challenger version and the champion's lineage keys, task, metrics and audit events.

    A challenger (a version whose gate failed) gets ``challenger_detail``: its version, the failed
    rules, its task and its metrics with CIs, so a model that was not promoted is still visible.

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
    if challenger is not None:
        record = model_record.load(name, challenger.version, ws.audit_log)
        task_block, metrics = _task_block(record)
        out["challenger_detail"] = {
            "version": record.version,
            "run_id": record.run_id,
            "gate_passed": record.tags.get(registry.TAG_GATE),
            "gate_failed": record.tags.get(registry.TAG_GATE_FAILED),
            "task": task_block,
            "metrics": metrics,
        }
    if champ is None:
        return out
    task_block, metrics = _task_block(champ)
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
        "task": task_block,
        "metrics": metrics,
        "audit": [e.as_dict() for e in champ.promotion_history if e.version == champ.version],
    }
    return out
