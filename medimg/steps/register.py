"""Step 7: register the ONNX model with its model card as description; ``champion`` moves only when every gate
passed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from medimg import artifacts, model_card, preprocess, promotion, registry, tracking
from medimg.config import Params
from medimg.contracts import EvaluationSummary, ExportSummary, GateDecision, Registration, ValidationSummary
from medimg.provenance import code_hash, file_sha256, git_commit
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


class RegistryIntegrityError(RuntimeError):
    """The file stored in the registry is not the file that was exported and checked."""


def card_of_run(
    params: Params,
    ws: Workspace,
    run_id: str,
    validated: ValidationSummary,
    gated: GateDecision,
    evaluated: EvaluationSummary | None = None,
) -> dict:
    """The run's model card (:func:`medimg.model_card.run_card`) from the step records of run ``run_id``.

    Reads ``evaluated.metrics_file`` (``None``: ``runs/<run_id>/metrics.json``, where the evaluate
    step writes it) and ``gated.report``; ``ValueError`` when ``metrics.json`` is for another task.
    """
    metrics_file = evaluated.metrics_file if evaluated is not None else ws.run_dir(run_id) / "metrics.json"
    return model_card.run_card(
        params,
        preprocess.contract(params.preprocess),
        json.loads(Path(metrics_file).read_text(encoding="utf-8")),
        json.loads(Path(gated.report).read_text(encoding="utf-8")),
        validated.data_version,
        validated.warts,
    )


def record_card(ws: Workspace, run_id: str, name: str, version: str, card: dict) -> None:
    """Write ``card`` as the version's description in the registry and as the run's ``model_card/`` artifacts."""
    folder = ws.run_dir(run_id)
    json_file, md_file = folder / model_card.CARD_JSON, folder / model_card.CARD_MD
    json_file.write_text(json.dumps(card, indent=1, sort_keys=True, default=str), encoding="utf-8")
    md_file.write_text(model_card.card_markdown(card), encoding="utf-8")
    tracking.log_artifact(run_id, json_file, artifacts.folder(artifacts.MODEL_CARD))
    tracking.log_artifact(run_id, md_file, artifacts.folder(artifacts.MODEL_CARD_MD))
    registry.set_description(name, version, model_card.registry_description(card))


def run(
    params: Params,
    ws: Workspace,
    run_id: str,
    flow_run_id: str,
    validated: ValidationSummary,
    gated: GateDecision,
    exported: ExportSummary,
    evaluated: EvaluationSummary | None = None,
) -> Registration:
    """Register ``exported.onnx`` from MLflow run ``run_id`` with its lineage tags and model card; promote it if
    ``gated.passed``.

    Idempotent per run: a version already registered from ``run_id`` (a retried step, a resumed
    run) is reused, not registered twice. The stored file is downloaded again and must have
    ``exported.sha256``, else :class:`RegistryIntegrityError` (no alias moves then). A version
    that passed every gate becomes ``champion`` through :func:`medimg.promotion.promote` (audit
    log and tags); one that did not becomes ``challenger`` and the champion stays. The card
    (:func:`card_of_run`, built before anything is registered, so a card that cannot be built
    registers nothing) becomes the version's description and the run's ``model_card/`` artifacts.
    """
    name = params.registry.model_name
    card = card_of_run(params, ws, run_id, validated, gated, evaluated)
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
    identity = {
        "model_name": name,
        "version": version.version,
        "registered_as": registry.CHAMPION if gated.passed else registry.CHALLENGER,
        "mlflow_run_id": run_id,
        "sha256": exported.sha256,
        "git_commit": tags[artifacts.TAG_GIT_COMMIT],
        "params_hash": tags[artifacts.TAG_PARAMS_HASH],
        "architecture": params.model.architecture,
        "onnx_parity_max_abs_diff": exported.parity.max_abs_diff,
    }
    # the card first: a version never holds an alias without its description
    record_card(ws, run_id, name, version.version, {**card, **identity})
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
