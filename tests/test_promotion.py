"""Promotion and rollback of ``champion`` on a real MLflow registry built by the real flow.

The registry (see ``registry_fixtures``) holds v1, promoted by the flow with relaxed gates, and
v2, a three-step model that failed the shipped gates (challenger). Tests that move aliases use
their own clone of it.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medimg import audit, promotion, registry
from medimg.cli import app
from registry_fixtures import MODEL

pytestmark = pytest.mark.integration  # the shared registry is built by two real flow runs


def _text(result) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def _champion() -> str:
    return registry.version_by_alias(MODEL, registry.CHAMPION).version


def _audit_tags() -> dict[str, dict]:
    return {k: json.loads(v) for k, v in registry.model_tags(MODEL).items() if k.startswith(registry.AUDIT_TAG_PREFIX)}


def test_the_flow_promotes_through_the_audited_path(registry_ws):
    v1 = registry.get_version(MODEL, "1")
    assert "champion" in v1.aliases and v1.tags[registry.TAG_GATE] == "True"
    assert v1.tags[registry.TAG_PROMOTION_REASON].startswith("all gates passed")
    assert v1.tags[registry.TAG_PREVIOUS_CHAMPION] == "none" and v1.tags[registry.TAG_PROMOTION_FORCED] == "False"
    v2 = registry.get_version(MODEL, "2")
    assert v2.aliases == ["challenger"] and v2.tags[registry.TAG_GATE] == "False"
    assert "minimum_metrics" in v2.tags[registry.TAG_GATE_FAILED]

    (entry,) = audit.read(registry_ws.ws.audit_log)
    assert entry["action"] == "promote" and entry["version"] == "1" and entry["previous"] is None
    assert entry["flow_run_id"] == v1.tags[registry.TAG_FLOW_RUN] and entry["forced"] is False
    assert entry["onnx_sha256"] == v1.tags[registry.TAG_ONNX_SHA256] and entry["who"] and entry["when"]
    # the same event, readable on the registered model in the MLflow UI
    assert _audit_tags() == {"medimg.audit.000001": entry}


def test_promoting_a_version_that_failed_its_gates_is_refused(fresh_registry):
    before_tags = registry.model_tags(MODEL)
    result = CliRunner().invoke(
        app, ["promote", "2", "--reason", "looks fine to me", "--params", str(fresh_registry.params_file)]
    )
    assert result.exit_code == 1
    assert "promotion refused" in _text(result) and "failed its gates" in _text(result)
    assert "minimum_metrics" in _text(result)
    assert _champion() == "1"
    assert registry.TAG_PROMOTED_AT not in registry.get_version(MODEL, "2").tags
    assert [e["version"] for e in audit.read(fresh_registry.ws.audit_log)] == ["1"]
    assert registry.model_tags(MODEL) == before_tags

    with pytest.raises(promotion.PromotionRefused, match="needs a reason"):
        promotion.promote(fresh_registry.params, fresh_registry.ws, "2", "   ", force=True)
    with pytest.raises(promotion.PromotionRefused, match=r"has no version 7\b"):
        promotion.promote(fresh_registry.params, fresh_registry.ws, "7", "typo", force=True)
    with pytest.raises(promotion.PromotionRefused, match="already is the champion"):
        promotion.promote(fresh_registry.params, fresh_registry.ws, "1", "again")
    assert _champion() == "1" and len(audit.read(fresh_registry.ws.audit_log)) == 1


def test_forced_promotion_needs_a_reason_and_is_logged_as_forced(fresh_registry):
    runner = CliRunner()
    missing = runner.invoke(app, ["promote", "2", "--force", "--params", str(fresh_registry.params_file)])
    assert missing.exit_code == 2 and "--reason" in _text(missing)  # Typer: required option
    assert _champion() == "1"

    reason = "clinical lead accepts the risk for the pilot site, ticket MED-42"
    result = runner.invoke(
        app, ["promote", "2", "--force", "--reason", reason, "--params", str(fresh_registry.params_file)]
    )
    assert result.exit_code == 0, result.output
    assert "FORCED" in _text(result)
    v2 = registry.get_version(MODEL, "2")
    assert v2.aliases == ["champion"], "a promoted challenger is no longer the challenger"
    assert registry.version_by_alias(MODEL, registry.CHALLENGER) is None
    assert v2.tags[registry.TAG_PROMOTION_REASON] == reason
    assert v2.tags[registry.TAG_PREVIOUS_CHAMPION] == "1" and v2.tags[registry.TAG_PROMOTION_FORCED] == "True"

    last = audit.read(fresh_registry.ws.audit_log)[-1]
    assert last["action"] == "promote" and last["forced"] is True and last["gate_passed"] is False
    assert last["version"] == "2" and last["previous"] == "1" and last["reason"] == reason
    assert _audit_tags()["medimg.audit.000002"] == last


def test_rollback_restores_the_previous_champion(fresh_registry):
    params, ws = fresh_registry.params, fresh_registry.ws
    promotion.promote(params, ws, "2", "forced for the rollback test", force=True)
    assert _champion() == "2"

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "rollback",
            "--reason",
            "false positives reported by the pilot site",
            "--params",
            str(fresh_registry.params_file),
        ],
    )
    assert result.exit_code == 0, result.output
    assert _champion() == "1"
    v1, v2 = registry.get_version(MODEL, "1"), registry.get_version(MODEL, "2")
    assert v1.tags[registry.TAG_PROMOTION_REASON].startswith("rollback from v2:")
    assert v2.tags[registry.TAG_ROLLBACK_REASON] == "false positives reported by the pilot site"
    assert registry.TAG_ROLLED_BACK_AT in v2.tags

    events = audit.read(ws.audit_log)
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("promote", "1", None),
        ("promote", "2", "1"),
        ("rollback", "1", "2"),
    ]
    assert [t["action"] for t in promotion.history(params)] == ["promote", "promote", "rollback"]

    # v1 was the first champion: nothing earlier to go back to, and nothing changes
    again = runner.invoke(app, ["rollback", "--reason", "once more", "--params", str(fresh_registry.params_file)])
    assert again.exit_code == 1 and "no previous champion" in _text(again)
    assert _champion() == "1" and len(audit.read(ws.audit_log)) == 3
