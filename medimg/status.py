"""What ``medimg status`` reports: the champion and its lineage keys, read from the registry."""

from __future__ import annotations

from mlflow import MlflowClient

from medimg import audit, registry, tracking
from medimg.config import Params
from medimg.workspace import Workspace

STATUS_METRICS = ("test_roc_auc", "test_accuracy", "test_sensitivity", "test_specificity", "test_roc_auc_ci_low",
                  "test_roc_auc_ci_high", "test_accuracy_ci_low", "test_accuracy_ci_high")


def champion_status(params: Params, ws: Workspace) -> dict:
    name = params.registry.model_name
    champ = registry.version_by_alias(name, registry.CHAMPION)
    challenger = registry.version_by_alias(name, registry.CHALLENGER)
    out: dict = {"model_name": name, "tracking_uri": MlflowClient().tracking_uri, "champion": None,
                 "challenger": challenger.version if challenger else None,
                 "schedule": {"cron": params.schedule.cron, "timezone": params.schedule.timezone,
                              "deployment": f"retrain/{params.schedule.deployment_name}",
                              "work_pool": params.schedule.work_pool},
                 "last_runs": tracking.recent_runs(params.registry.experiment, limit=10)}
    if champ is None:
        return out
    metrics = {}
    if champ.run_id:
        run_metrics = MlflowClient().get_run(champ.run_id).data.metrics
        metrics = {k: run_metrics[k] for k in STATUS_METRICS if k in run_metrics}
    promotions = [e for e in audit.read(ws.audit_log) if e.get("version") == champ.version and e.get("model") == name]
    out["champion"] = {
        "version": champ.version,
        "run_id": champ.run_id,
        "data_version": champ.tags.get(registry.TAG_DATA_VERSION),
        "onnx_sha256": champ.tags.get(registry.TAG_ONNX_SHA256),
        "git_commit": champ.tags.get(registry.TAG_GIT_COMMIT),
        "gate_passed": champ.tags.get(registry.TAG_GATE),
        "promoted_at": champ.tags.get(registry.TAG_PROMOTED_AT),
        "promotion_reason": champ.tags.get(registry.TAG_PROMOTION_REASON),
        "previous_champion": champ.tags.get(registry.TAG_PREVIOUS_CHAMPION),
        "metrics": metrics,
        "audit": promotions,
    }
    return out
