"""Step 7: register the ONNX model; ``champion`` moves only when every gate passed."""

from __future__ import annotations

import logging

import mlflow

from medimg import promotion, registry, tracking
from medimg.config import Params
from medimg.provenance import code_hash, file_sha256, git_commit
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


class RegistryIntegrityError(RuntimeError):
    """The file stored in the registry is not the file that was exported and checked."""


def run(params: Params, ws: Workspace, run_id: str, flow_run_id: str, ingested: dict, validated: dict,
        gated: dict, exported: dict) -> dict:
    name = params.registry.model_name
    tags = {
        registry.TAG_DATA_VERSION: ingested["data_version"],
        registry.TAG_GIT_COMMIT: git_commit(),
        registry.TAG_CODE_HASH: code_hash(),
        registry.TAG_PARAMS_HASH: params.fingerprint(),
        registry.TAG_VALIDATION: validated["passed"],
        registry.TAG_GATE: gated["passed"],
        registry.TAG_GATE_FAILED: ",".join(gated["failed"]) or "none",
        registry.TAG_ONNX_SHA256: exported["sha256"],
        registry.TAG_PARITY: exported["parity"]["max_abs_diff"],
        registry.TAG_FLOW_RUN: flow_run_id,
    }
    # Idempotent: a retry of this step, or a resumed run, finds the version its run already registered.
    version = registry.version_of_run(name, run_id)
    if version is None:
        with mlflow.start_run(run_id=run_id):
            model_uri = registry.log_onnx(exported["onnx"])
        version = registry.register(model_uri, name, tags)
    else:
        log.info("model %s v%s was already registered from run %s: not registered again", name, version.version, run_id)
    stored = file_sha256(registry.download_onnx(name, version.version, ws.runs / run_id / "stored"))
    if stored != exported["sha256"]:
        raise RegistryIntegrityError(
            f"model {name} v{version.version}: stored ONNX sha256 {stored} differs from the exported {exported['sha256']}"
        )
    if gated["passed"]:
        # the same audited code path as `medimg promote`: alias, version tags, audit.jsonl, audit tag
        reason = "all gates passed: " + ", ".join(r["name"] for r in gated["rules"])
        previous = promotion.promote(params, ws, version.version, reason, flow_run_id=flow_run_id)["previous"]
        alias = registry.CHAMPION
    else:
        champion = registry.version_by_alias(name, registry.CHAMPION)
        previous = champion.version if champion else None
        registry.set_alias(name, registry.CHALLENGER, version.version)
        alias = registry.CHALLENGER
        log.warning("model %s v%s registered as challenger; champion stays %s (failed gates: %s)", name,
                    version.version, f"v{previous}" if previous else "unset", ", ".join(gated["failed"]))
    tracking.set_tags(run_id, {"medimg.model_version": version.version, "medimg.alias": alias,
                               registry.TAG_DATA_VERSION: ingested["data_version"]})
    return {"model_name": name, "version": version.version, "alias": alias, "promoted": gated["passed"],
            "previous_champion": previous}
