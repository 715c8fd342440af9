"""The register step puts the run's model card in the registry: the version's description, and the run's artifacts.

A real MLflow (SQLite in ``tmp_path``), a real ONNX file (a two-node graph built with ``onnx.helper``,
carrying the export step's own metadata), the real register step (registration, the stored file's
sha256 check, the audited promotion), then ``medimg status`` and ``medimg pull`` reading it back. The run
records are those the evaluate and gate steps write (``card_cases``: a 4-class brain MRI run and a
binary PneumoniaMNIST run). No flow run: fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from card_cases import (
    BINARY_GATE,
    BINARY_METRICS,
    BRAIN_CLASSES,
    BRAIN_GATE,
    BRAIN_METRICS,
    BRAIN_PARAMS,
    BRAIN_WARTS,
    params_with,
)
from medimg import artifacts, model_card, model_record, registry, tracking
from medimg.config import deep_merge
from medimg.contracts import ExportSummary, GateDecision, GateRule, ParityCheck, ValidationSummary
from medimg.provenance import file_sha256
from medimg.pull import pull
from medimg.status import champion_status
from medimg.steps import register
from medimg.steps.export import metadata
from medimg.workspace import Workspace


def _onnx(path: Path, params, run_id: str, threshold: float) -> Path:
    """A valid ONNX classifier [N, C, S, S] -> [N, K] logits (mean pixel times a weight) with the export metadata."""
    k, c, size = len(params.task.class_names), params.preprocess.channels, params.preprocess.size
    weights = numpy_helper.from_array(np.linspace(-1, 1, c * k, dtype=np.float32).reshape(c, k), "w")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    meta = metadata(params, run_id, "e" * 32, threshold)
    helper.set_model_props(
        model, {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlflow_ws(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    return ws


def _register(ws: Workspace, overrides: dict, metrics: dict, gate: dict, warts: dict):
    """An evaluated, gated, exported run (as those steps record it) through the real register step."""
    params = params_with(deep_merge(overrides, {"workspace": {"path": str(ws.root)}}))
    client = MlflowClient()
    run_id = client.create_run(registry.ensure_experiment("card-test", ws.root / "mlartifacts")).info.run_id
    folder = ws.run_dir(run_id)
    # what the evaluate step logs: every test metric with its CI, and metrics.json
    tracking.log_metrics(run_id, {f"test_{k}": v for k, v in metrics["test"].items()})
    tracking.log_metrics(run_id, {f"test_{k}_ci_low": v[0] for k, v in metrics["test_ci95"].items()})
    tracking.log_metrics(run_id, {f"test_{k}_ci_high": v[1] for k, v in metrics["test_ci95"].items()})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    tracking.log_artifact(run_id, folder / "metrics.json", artifacts.EVALUATION_DIR)
    gate_file = folder / "gate_report.json"
    gate_file.write_text(json.dumps(gate))
    tracking.log_artifact(run_id, gate_file, artifacts.folder(artifacts.GATE_REPORT))
    onnx_file = _onnx(folder / "model.onnx", params, run_id, metrics["threshold"])
    validated = ValidationSummary(
        data_version="e" * 32,
        passed=True,
        report=folder / "validation.json",
        html_report=folder / "validation.html",
        n_warnings=0,
        failed=(),
        dropped_ids=(),
        warts=warts,
    )
    gated = GateDecision(
        passed=gate["passed"],
        failed=tuple(gate["failed"]),
        rules=tuple(GateRule(name=r["name"], passed=r["passed"], reason=r["reason"]) for r in gate["rules"]),
        champion_version=None,
        report=gate_file,
    )
    parity = ParityCheck(
        n_images=4, max_abs_diff=0.0, labels_identical=True, atol=1e-4, provider="CPUExecutionProvider", passed=True
    )
    exported = ExportSummary(
        onnx=onnx_file, sha256=file_sha256(onnx_file), parity=parity, size_bytes=onnx_file.stat().st_size
    )
    return params, run_id, register.run(params, ws, run_id, "flow-1", validated, gated, exported)


def test_a_multiclass_version_is_described_by_its_card_in_status_and_at_pull(mlflow_ws, tmp_path):
    passing = BRAIN_GATE | {"passed": True, "failed": [], "rules": BRAIN_GATE["rules"][1:]}
    params, run_id, reg = _register(mlflow_ws, BRAIN_PARAMS, BRAIN_METRICS, passing, BRAIN_WARTS)
    assert reg.alias == "champion" and reg.version == "1"

    description = MlflowClient().get_model_version("brain-tumour-mri", reg.version).description
    assert len(description) <= model_card.DESCRIPTION_LIMIT
    for needle in (
        "# Model card: brain-tumour-mri v1",
        "image folder 'brain_tumor_mri'",
        "glioma, meningioma, notumor, pituitary",
        "| images per split | train 826, val 177, test 178 |",
        "| macro_roc_auc | 0.993 (0.987-0.998) |",
        "| meningioma | 0.987 (0.971-0.997) | 0.913 (0.826-0.978) |",
        "| abnormal_specificity | 0.951 (0.902-1.000) |",
        "abnormal_tp 115, abnormal_fp 3, abnormal_tn 58, abnormal_fn 2",
        "| gate | passed |",
        "| registered as | `champion` |",
    ):
        assert needle in description, needle
    assert "pneumonia" not in description.lower()

    # the full card is the run's artifact; the model record reads it and metrics.json back
    record = model_record.load("brain-tumour-mri", reg.version, mlflow_ws.audit_log)
    assert record.card["task"]["class_names"] == list(BRAIN_CLASSES) and record.card["sha256"] == record.onnx_sha256
    assert record.evaluation.task_kind == "multiclass" and record.evaluation.class_names == BRAIN_CLASSES
    full = (mlflow_ws.run_dir(run_id) / model_card.CARD_MD).read_text()
    assert full == model_card.card_markdown(record.card) and "| glioma | 41 | 3 | 0 | 1 |" in full

    # medimg status: the task and its metrics, each with its 95% CI, as MLflow logged them
    champ = champion_status(params, mlflow_ws)["champion"]
    assert champ["task"] == {
        "kind": "multiclass",
        "class_names": list(BRAIN_CLASSES),
        "abnormal_classes": ["glioma", "meningioma", "pituitary"],
        "threshold": BRAIN_METRICS["threshold"],
        "read_from": "metrics.json",
    }
    shown = champ["metrics"]
    for name in ("accuracy", "balanced_accuracy", "macro_roc_auc", "macro_f1", "kappa", "abnormal_sensitivity"):
        low, high = BRAIN_METRICS["test_ci95"][name]
        assert (shown[f"test_{name}"], shown[f"test_{name}_ci_low"], shown[f"test_{name}_ci_high"]) == (
            BRAIN_METRICS["test"][name],
            low,
            high,
        ), name
    for name in BRAIN_CLASSES:
        assert shown[f"test_sensitivity_{name}_ci_low"] == BRAIN_METRICS["test_ci95"][f"sensitivity_{name}"][0]
    assert "test_roc_auc" not in shown and "test_ppv_glioma" not in shown

    # a pulled card: the run's card, checked against the file's metadata, with what the pull knows
    pulled = pull(params, out_dir=tmp_path / "deploy")
    card = pulled.card
    assert (
        card["task"]["class_names"] == list(BRAIN_CLASSES)
        and card["data"]["dataset"] == "image folder 'brain_tumor_mri'"
    )
    assert card["pulled_alias"] is None and card["promotion"]["reason"].startswith("all gates passed")
    assert card["metrics"]["macro_roc_auc"]["value"] == BRAIN_METRICS["test"]["macro_roc_auc"]
    markdown = (pulled.release_dir / model_card.CARD_MD).read_text()
    assert "| pituitary | 26 | 0.9954 (0.9857-1.0000) | 0.9615 (0.8800-1.0000) |" in markdown
    assert "## Promotion" in markdown and pulled.sha256 in markdown


def test_a_binary_challenger_is_described_by_its_card(mlflow_ws):
    failed = BINARY_GATE | {"passed": False, "failed": ["minimum_metrics"]}
    params, _, reg = _register(mlflow_ws, {}, BINARY_METRICS, failed, {"hashes_across_splits": 8})
    assert reg.alias == "challenger"
    description = MlflowClient().get_model_version(params.registry.model_name, reg.version).description
    for needle in (
        "PneumoniaMNIST (MedMNIST v2, flag pneumoniamnist)",
        "classes (index order) normal, pneumonia; abnormal: pneumonia",
        "| roc_auc | 0.982",
        "| sensitivity | 0.954",
        "| gate | FAILED: minimum_metrics |",
        "| registered as | `challenger` |",
    ):
        assert needle in description, needle
    status = champion_status(params, mlflow_ws)
    assert status["champion"] is None  # a challenger is not shown as champion
    detail = status["challenger_detail"]  # but its task and metrics with CIs are
    assert detail["version"] == reg.version and detail["gate_failed"] == "minimum_metrics"
    assert detail["task"]["kind"] == "binary"
    low, high = BINARY_METRICS["test_ci95"]["roc_auc"]
    assert (detail["metrics"]["test_roc_auc_ci_low"], detail["metrics"]["test_roc_auc_ci_high"]) == (low, high)


def test_a_card_that_cannot_be_built_registers_nothing(mlflow_ws):
    with pytest.raises(ValueError, match="not the same run"):
        _register(mlflow_ws, {}, BRAIN_METRICS, BRAIN_GATE, {})
    assert MlflowClient().search_model_versions("name = 'pneumonia-classifier'") == []
