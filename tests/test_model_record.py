"""``medimg.model_record``: a registered version read once into one typed, frozen record.

A small real registry per test (MLflow on SQLite in ``tmp_path``): a run that logs test metrics with
their CIs the way the evaluate step does, a gate report and a validation report as artifacts, a
registered version with the flow's lineage tags, and a real promotion through ``medimg.promotion``
(so the audit event is in both ``audit.jsonl`` and the model's tags). No flow run: fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from mlflow import MlflowClient
from pydantic import ValidationError

from medimg import artifacts, model_record, promotion, registry
from medimg.config import load_params
from medimg.workspace import Workspace
from registry_fixtures import MODEL, write_params

METRICS = {
    "test_roc_auc": 0.912,
    "test_roc_auc_ci_low": 0.887,
    "test_roc_auc_ci_high": 0.936,
    "test_accuracy": 0.851,
    "test_accuracy_ci_low": 0.823,
    "test_accuracy_ci_high": 0.878,
    "test_n": 624.0,
    "test_threshold": 0.4125,
    "val_roc_auc": 0.95,
}
GATE_REPORT = {
    "passed": True,
    "failed": [],
    "threshold": 0.4125,
    "champion_version": None,
    "benchmark": {"id": "self2012_radiologists_ed"},
    "rules": [{"name": "minimum_metrics", "passed": True, "reason": "AUC 0.912 >= 0.9", "inputs": {"roc_auc": 0.912}}],
}
VALIDATION = {"data_version": "d" * 32, "passed": True, "warnings": [], "failed_critical": [], "dropped_ids": []}


@pytest.fixture
def small_registry(tmp_path, monkeypatch):
    """(params, workspace, run id) with one registered version of MODEL, promoted to champion."""
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(write_params(tmp_path, ws.root))
    client = MlflowClient()
    run = client.create_run(registry.ensure_experiment("record-test", tmp_path / "artifacts"), run_name="r1")
    run_id = run.info.run_id
    for key, value in METRICS.items():
        client.log_metric(run_id, key, value)
    client.log_param(run_id, "train.epochs", "1")
    client.set_tag(run_id, registry.TAG_DATA_VERSION, "d" * 32)
    client.log_text(run_id, json.dumps(GATE_REPORT), artifacts.GATE_REPORT)
    client.log_text(run_id, json.dumps(VALIDATION), f"validation/validation-{'d' * 32}.json")
    client.log_text(run_id, "<html></html>", f"validation/validation-{'d' * 32}.html")
    client.set_terminated(run_id)
    client.create_registered_model(MODEL)
    client.create_model_version(
        MODEL,
        str(tmp_path / "model"),
        run_id=run_id,
        tags={
            registry.TAG_DATA_VERSION: "d" * 32,
            registry.TAG_GIT_COMMIT: "c" * 40 + "-dirty",
            registry.TAG_PARAMS_HASH: "p" * 16,
            registry.TAG_ONNX_SHA256: "a" * 64,
            registry.TAG_PARITY: "1.5e-06",
            registry.TAG_VALIDATION: "True",
            registry.TAG_GATE: "True",
            registry.TAG_GATE_FAILED: "none",
            registry.TAG_FLOW_RUN: "flow-1",
        },
    )
    promotion.promote(params, ws, "1", "all gates passed: minimum_metrics")
    return params, ws, run_id


def test_a_version_with_cis_round_trips_to_the_record(small_registry):
    _, ws, run_id = small_registry
    record = model_record.load(MODEL, 1, ws.audit_log)

    assert (record.name, record.version, record.aliases, record.is_champion) == (MODEL, "1", ("champion",), True)
    assert record.run_id == run_id and record.run.id == run_id and record.run_error is None
    assert record.run.status == "FINISHED" and record.run.params == {"train.epochs": "1"}
    assert record.run.metrics == METRICS  # every metric, by its MLflow key
    assert isinstance(record.created_at, datetime) and record.created_at.tzinfo == UTC

    auc = record.test_metrics["roc_auc"]
    assert (auc.value, auc.ci95_low, auc.ci95_high, auc.ci95) == (0.912, 0.887, 0.936, (0.887, 0.936))
    assert record.test_metrics["n"].value == 624.0 and record.test_metrics["n"].ci95 is None
    assert set(record.test_metrics) == {"roc_auc", "accuracy", "n", "threshold"}  # no val_, no CI keys

    assert record.data_version == "d" * 32 and record.params_hash == "p" * 16
    assert record.git_commit == "c" * 40 + "-dirty" and record.onnx_sha256 == "a" * 64
    assert record.onnx_parity_max_abs_diff == 1.5e-06 and record.flow_run_id == "flow-1"
    assert record.validation_passed is True and record.gate_passed is True and record.gate_failed_rules == ()

    assert record.gate.passed is True and record.gate.threshold == 0.4125
    assert record.gate.benchmark_id == GATE_REPORT["benchmark"]["id"]
    assert [(r.name, r.passed, r.inputs) for r in record.gate.rules] == [("minimum_metrics", True, {"roc_auc": 0.912})]
    assert record.gate.document == GATE_REPORT
    assert record.evaluation is None and record.card is None  # never logged: missing links, not errors
    assert record.validation.artifact == f"validation/validation-{'d' * 32}.json"
    assert record.validation.passed is True and record.validation.document == VALIDATION

    # the promotion is in audit.jsonl and in the model's tags: listed once, with the version's promotion tags
    assert [(e.action, e.version, e.previous) for e in record.promotion_history] == [("promote", "1", None)]
    assert record.version_events == record.promotion_history
    assert record.promotion_history[0].as_dict() == json.loads(ws.audit_log.read_text())
    assert record.promotion.reason == "all gates passed: minimum_metrics"
    assert record.promotion.previous_champion == "none"
    assert record.promotion.forced is False and record.promotion.promoted_at
    assert record.model_aliases == {"champion": "1"} and "medimg.audit.000001" in record.model_tags

    # one object, frozen, and the same record whichever reference names the version
    with pytest.raises(ValidationError):
        record.version = "2"
    assert model_record.resolve(f"{MODEL}@champion", MODEL, ws.audit_log) == record
    assert model_record.by_alias(MODEL, "champion").promotion_history == record.promotion_history  # tags alone
    assert model_record.by_alias(MODEL, "challenger") is None


def test_a_missing_version_or_alias_is_a_clear_error(small_registry):
    with pytest.raises(registry.VersionNotFound, match=f"model '{MODEL}' has no version 7"):
        model_record.load(MODEL, 7)
    with pytest.raises(registry.VersionNotFound, match=f"model '{MODEL}' has no alias 'staging'"):
        model_record.resolve("staging", MODEL)
    with pytest.raises(registry.VersionNotFound, match="model 'no-such-model' has no version 1"):
        model_record.load("no-such-model", "1")
    with pytest.raises(registry.VersionNotFound, match="'champion' is not a version number"):
        model_record.load(MODEL, "champion")


def test_a_run_that_cannot_be_read_is_a_missing_link_not_an_error(small_registry, tmp_path):
    version = MlflowClient().create_model_version(MODEL, str(tmp_path / "model"), run_id="0" * 32).version
    record = model_record.load(MODEL, version)
    assert record.run_id == "0" * 32 and record.run is None
    assert record.run_error == f"MLflow run {'0' * 32} cannot be read (RESOURCE_DOES_NOT_EXIST)"
    assert record.test_metrics == {} and record.gate is None and record.validation is None
    assert record.data_version is None and record.aliases == ()  # never filled in from another version


def test_events_merge_once_oldest_first():
    a = {"when": "2026-01-02T00:00:00+00:00", "action": "promote", "model": MODEL, "version": 2, "previous": "1"}
    b = {"when": "2026-01-01T00:00:00+00:00", "action": "promote", "model": MODEL, "version": "1", "previous": None}
    other = {**b, "model": "another-model"}
    merged = model_record.merge_events([a], [b, dict(a, version="2"), other], MODEL)
    assert [(e.version, e.previous) for e in merged] == [("1", None), ("2", "1")]
    assert merged[1].as_dict()["version"] == "2"  # versions are text whatever the writer used


def test_status_reads_the_champion_from_the_record(small_registry):
    """``medimg status --json``'s champion block: same keys as before the record, values from it."""
    from medimg.status import champion_status

    params, ws, run_id = small_registry
    champ = champion_status(params, ws)["champion"]
    assert set(champ) == {
        "version",
        "run_id",
        "data_version",
        "onnx_sha256",
        "git_commit",
        "gate_passed",
        "promoted_at",
        "promotion_reason",
        "previous_champion",
        "task",
        "metrics",
        "audit",
    }
    assert (champ["version"], champ["run_id"], champ["data_version"]) == ("1", run_id, "d" * 32)
    assert champ["gate_passed"] == "True" and champ["previous_champion"] == "none"
    # no metrics.json and no task params: a run from before tasks, read as binary
    assert champ["task"] == {
        "kind": "binary",
        "class_names": None,
        "abnormal_classes": None,
        "threshold": None,
        "read_from": "default (binary)",
    }
    assert champ["metrics"] == {
        k: METRICS[k]
        for k in (
            "test_roc_auc",
            "test_accuracy",
            "test_roc_auc_ci_low",
            "test_roc_auc_ci_high",
            "test_accuracy_ci_low",
            "test_accuracy_ci_high",
        )
    }
    assert champ["audit"] == [json.loads(ws.audit_log.read_text())]
    ws.audit_log.unlink()  # another workspace on the same registry still sees the promotion
    assert [e["action"] for e in champion_status(params, ws)["champion"]["audit"]] == ["promote"]


def test_status_reads_the_task_from_the_run_params_when_metrics_json_lacks_it(small_registry):
    from medimg.status import champion_status

    params, ws, run_id = small_registry
    client = MlflowClient()
    client.log_param(run_id, "task.kind", "multiclass")
    client.log_param(run_id, "task.class_names", '["normal", "bacteria", "virus"]')
    client.log_param(run_id, "task.abnormal", '["bacteria", "virus"]')
    client.log_metric(run_id, "test_sensitivity_virus", 0.61)
    client.log_metric(run_id, "test_sensitivity_virus_ci_low", 0.52)
    champ = champion_status(params, ws)["champion"]
    assert champ["task"]["kind"] == "multiclass" and champ["task"]["read_from"] == "params"
    assert champ["task"]["class_names"] == ["normal", "bacteria", "virus"]
    assert champ["task"]["abnormal_classes"] == ["bacteria", "virus"]
    # the multiclass names: accuracy and the per-class sensitivities that were logged; no binary roc_auc
    assert champ["metrics"] == {
        "test_accuracy": METRICS["test_accuracy"],
        "test_accuracy_ci_low": METRICS["test_accuracy_ci_low"],
        "test_accuracy_ci_high": METRICS["test_accuracy_ci_high"],
        "test_sensitivity_virus": 0.61,
        "test_sensitivity_virus_ci_low": 0.52,
    }
