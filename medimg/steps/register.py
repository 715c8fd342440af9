"""Step 7: register the ONNX model; ``champion`` moves only when every gate passed."""

from __future__ import annotations

import logging
from typing import Literal

from medimg import artifacts, promotion, registry, tracking
from medimg.config import Params
from medimg.contracts import ExportSummary, GateDecision, Registration, ValidationSummary
from medimg.provenance import code_hash, file_sha256, git_commit
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


class RegistryIntegrityError(RuntimeError):
    """The file stored in the registry is not the file that was exported and checked."""


def run(
    params: Params,
    ws: Workspace,
    run_id: str,
    flow_run_id: str,
    validated: ValidationSummary,
    gated: GateDecision,
    exported: ExportSummary,
) -> Registration:
    """Register ``exported.onnx`` from MLflow run ``run_id`` with its lineage tags; promote it if ``gated.passed``.

    Idempotent per run: a version already registered from ``run_id`` (a retried step, a resumed
    run) is reused, not registered twice. The stored file is downloaded again and must have
    ``exported.sha256``, else :class:`RegistryIntegrityError` (no alias moves then). A version
    that passed every gate becomes ``champion`` through :func:`medimg.promotion.promote` (audit
    log and tags); one that did not becomes ``challenger`` and the champion stays.
    """
    name = params.registry.model_name
    tags = {
        artifacts.TAG_DATA_VERSION: validated.data_version,
        artifacts.TAG_GIT_COMMIT: git_commit(),
        artifacts.TAG_CODE_HASH: code_hash(),
        artifacts.TAG_PARAMS_HASH: params.fingerprint(),
        artifacts.TAG_VALIDATION: validated.passed,
        artifacts.TAG_GATE: gated.passed,
        artifacts.TAG_GATE_FAILED: ",".join(gated.failed) or "none",
        artifacts.TAG_ONNX_SHA256: exported.sha256,
        artifacts.TAG_PARITY: exported.parity.max_abs_diff,
        artifacts.TAG_FLOW_RUN: flow_run_id,
    }
    # Idempotent: a retry of this step, or a resumed run, finds the version its run already registered.
    version = registry.version_of_run(name, run_id)
    if version is None:
        version = registry.register(registry.log_onnx(run_id, exported.onnx), name, tags)
    else:
        log.info("model %s v%s was already registered from run %s: not registered again", name, version.version, run_id)
    stored = file_sha256(registry.download_onnx(name, version.version, ws.runs / run_id / "stored"))
    if stored != exported.sha256:
        raise RegistryIntegrityError(
            f"model {name} v{version.version}: stored ONNX sha256 {stored} differs from the exported {exported.sha256}"
        )
    if gated.passed:
        # the same audited code path as `medimg promote`: alias, version tags, audit.jsonl, audit tag
        reason = "all gates passed: " + ", ".join(rule.name for rule in gated.rules)
        previous = promotion.promote(params, ws, version.version, reason, flow_run_id=flow_run_id)["previous"]
        alias: Literal["champion", "challenger"] = registry.CHAMPION
    else:
        champion = registry.version_by_alias(name, registry.CHAMPION)
        previous = champion.version if champion else None
        registry.set_alias(name, registry.CHALLENGER, version.version)
        alias = registry.CHALLENGER
        log.warning(
            "model %s v%s registered as challenger; champion stays %s (failed gates: %s)",
            name,
            version.version,
            f"v{previous}" if previous else "unset",
            ", ".join(gated.failed),
        )
    tracking.set_tags(
        run_id,
        {
            artifacts.TAG_MODEL_VERSION: version.version,
            artifacts.TAG_ALIAS: alias,
            artifacts.TAG_DATA_VERSION: validated.data_version,
        },
    )
    return Registration(
        model_name=name, version=version.version, alias=alias, promoted=gated.passed, previous_champion=previous
    )
