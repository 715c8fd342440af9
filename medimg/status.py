"""What ``medimg status`` reports: the champion and its lineage keys, read from the registry."""

from __future__ import annotations

from mlflow import MlflowClient

from medimg import model_record, registry, tracking
from medimg.config import Params
from medimg.model_record import ModelRecord
from medimg.workspace import Workspace

#: The test metrics shown, by MLflow key; the CI bounds of the first two as well.
STATUS_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")
STATUS_CIS = ("roc_auc", "accuracy")


def _metrics(record: ModelRecord) -> dict[str, float]:
    """``{"test_roc_auc": value, ..., "test_roc_auc_ci_low": low, ...}`` (the keys MLflow logged them under)."""
    found = record.test_metrics
    out = {f"test_{name}": found[name].value for name in STATUS_METRICS if name in found}
    for name in STATUS_CIS:
        estimate = found.get(name)
        if estimate is not None and estimate.ci95_low is not None:
            out[f"test_{name}_ci_low"] = estimate.ci95_low
        if estimate is not None and estimate.ci95_high is not None:
            out[f"test_{name}_ci_high"] = estimate.ci95_high
    return out


def champion_status(params: Params, ws: Workspace) -> dict:
    """Schedule, last runs, challenger version and the champion's lineage keys, metrics and audit events.

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
        "metrics": _metrics(champ),
        "audit": [e.as_dict() for e in champ.promotion_history if e.version == champ.version],
    }
    return out
