"""The real retrain flow on the real PneumoniaMNIST archive, in a temporary workspace.

Real Prefect (the session's test harness server, ``prefect_harness``), MLflow on SQLite, DVC with a
local remote, Great Expectations and ONNX Runtime; nothing is mocked. The champion run uses the
shipped params.
"""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from medimg import artifacts, audit, registry, tracking
from medimg.cli import app
from medimg.config import load_params
from medimg.contracts import EvaluationSummary, ExportSummary, RetrainSummary, TrainSummary, ValidationSummary
from medimg.export.onnx_export import read_metadata
from medimg.provenance import file_sha256
from medimg.steps.validate import ValidationFailed
from medimg.workspace import Workspace
from registry_fixtures import _activated, write_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_dir, prefect_harness):
    root = tmp_path_factory.mktemp("flow")
    ws = Workspace.at(root / "ws")
    params_file = write_params(root, ws.root)
    mp = _activated(ws)
    mp.setenv("MEDIMG_DATA_DIR", str(data_dir))
    yield ws, params_file
    mp.undo()


@pytest.fixture(scope="module")
def champion_run(workspace):
    from flows.retrain import retrain

    _ws, params_file = workspace
    state = retrain(params_path=str(params_file), return_state=True)
    return state


def test_first_run_registers_a_champion_with_lineage_tags(workspace, champion_run):
    ws, params_file = workspace
    assert champion_run.is_completed() and champion_run.name == "Completed"
    summary = champion_run.result()
    assert isinstance(summary, RetrainSummary)
    assert summary.model.alias == "champion" and summary.model.version == "1"
    assert summary.evaluation.test["roc_auc"] > 0.95 and summary.evaluation.test["accuracy"] > 0.85

    champ = registry.version_by_alias("pneumonia-classifier", registry.CHAMPION)
    assert champ.version == "1"
    for tag in (
        registry.TAG_DATA_VERSION,
        registry.TAG_GIT_COMMIT,
        registry.TAG_PARAMS_HASH,
        registry.TAG_VALIDATION,
        registry.TAG_GATE,
        registry.TAG_ONNX_SHA256,
        registry.TAG_FLOW_RUN,
    ):
        assert champ.tags.get(tag), f"model version lacks tag {tag}"
    assert champ.tags[registry.TAG_DATA_VERSION] == summary.data_version
    onnx_file = registry.download_onnx("pneumonia-classifier", "1", ws.root / "check")
    assert file_sha256(onnx_file) == champ.tags[registry.TAG_ONNX_SHA256]
    meta = read_metadata(onnx_file)
    assert meta["medimg.data_version"] == summary.data_version
    assert json.loads(meta["medimg.preprocessing"])["size"] == 28
    assert float(meta["medimg.threshold"]) == pytest.approx(summary.evaluation.threshold)
    assert meta["medimg.mlflow_run_id"] == champ.run_id == summary.mlflow_run_id

    epochs = yaml.safe_load(params_file.read_text())["train"]["epochs"]
    run = mlflow.MlflowClient().get_run(champ.run_id)
    assert run.data.params["train.epochs"] == str(epochs)
    history = mlflow.MlflowClient().get_metric_history(champ.run_id, "val_auc")
    assert len(history) == epochs
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(champ.run_id, "evaluation/figures")}
    assert {"evaluation/figures/roc_curve.png", "evaluation/figures/confusion_matrix.png"} <= artifacts

    gate_report = json.loads(summary.gate.report.read_text())
    assert gate_report["passed"] and gate_report["champion_version"] is None
    assert "first run" in next(r for r in gate_report["rules"] if r["name"] == "champion_noninferiority")["reason"]
    validation = json.loads(summary.validation.report.read_text())
    assert validation["warts"]["hashes_across_splits"] == 8
    assert [e["action"] for e in audit.read(ws.audit_log)] == ["promote"]
    assert (ws.dvc_remote).is_dir() and any(ws.dvc_remote.rglob("*"))


def test_status_json_shows_the_champion(workspace, champion_run):
    _ws, params_file = workspace
    result = CliRunner().invoke(app, ["status", "--json", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    champ = info["champion"]
    assert champ["version"] == "1" and champ["data_version"] == champion_run.result().data_version
    assert len(champ["onnx_sha256"]) == 64 and champ["promotion_reason"].startswith("all gates passed")
    assert champ["metrics"]["test_roc_auc"] > 0.95


def test_weak_model_is_not_promoted_and_the_champion_stays(workspace, champion_run):
    from flows.retrain import retrain

    ws, params_file = workspace
    state = retrain(params_path=str(params_file), overrides={"train": {"epochs": 1, "max_steps": 4}}, return_state=True)
    assert state.is_completed() and state.name == "NotPromoted"
    summary = state.result()
    assert summary.model.alias == "challenger" and summary.model.version == "2"
    assert "champion_noninferiority" in summary.gate.failed
    report = json.loads(summary.gate.report.read_text())
    champion_rule = next(r for r in report["rules"] if r["name"] == "champion_noninferiority")
    assert champion_rule["inputs"]["champion_version"] == "1" and champion_rule["inputs"]["delta"] < 0
    assert registry.version_by_alias("pneumonia-classifier", registry.CHAMPION).version == "1"
    assert registry.version_by_alias("pneumonia-classifier", registry.CHALLENGER).version == "2"
    assert [e["action"] for e in audit.read(ws.audit_log)] == ["promote"]


def test_a_reopened_run_gets_its_finished_steps_back_from_the_persisted_results(workspace, champion_run):
    """What a crashed run's restart does (it reopens the same MLflow run): the cached steps come back typed."""
    from prefect import flow
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    from tasks.retrain import evaluate_model, export_model, result_storage, train_model, validate_data

    ws, params_file = workspace
    done = champion_run.result()
    params = load_params(params_file)
    run_id, data = done.mlflow_run_id, done.validation.training_data
    storage = result_storage(ws)

    @flow(name="resume-check")
    def resume():
        def cached(task, *args):
            return task.with_options(result_storage=storage)(*args, return_state=True)

        return {
            "validate": cached(validate_data, params, ws, run_id, done.data_version),
            "train": cached(train_model, params, ws, run_id, data),
            "evaluate": cached(evaluate_model, params, ws, run_id, data, done.training),
            "export-onnx": cached(export_model, params, ws, run_id, data, done.training, done.evaluation),
        }

    states = resume()
    assert {name: state.name for name, state in states.items()} == dict.fromkeys(states, "Cached")
    expected = {
        "validate": done.validation,
        "train": done.training,
        "evaluate": done.evaluation,
        "export-onnx": done.export,
    }
    assert {name: state.result() for name, state in states.items()} == expected
    # read back from the files, by a store with nothing in memory: what a new process would get
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(storage)))
    on_disk = {name: store.read(f"medimg-{name}-{run_id}").result for name in expected}
    assert on_disk == expected
    assert [type(on_disk[name]) for name in expected] == [
        ValidationSummary,
        TrainSummary,
        EvaluationSummary,
        ExportSummary,
    ]


def test_force_trains_again_in_a_new_mlflow_run_instead_of_reusing_the_last_runs_steps(workspace, champion_run):
    from flows.retrain import retrain

    ws, params_file = workspace
    weak = {"train": {"epochs": 1, "max_steps": 4}}
    first = retrain(params_path=str(params_file), overrides=weak, return_state=True)  # or UpToDate, if done before
    assert first.name in ("NotPromoted", "UpToDate"), first.message
    forced = retrain(params_path=str(params_file), overrides=weak, force=True, return_state=True)
    assert forced.name == "NotPromoted", forced.message
    summary = forced.result()
    runs = tracking.runs_with_key("medimg-retrain", summary.run_key)
    assert len([r for r in runs if r.data.tags.get(artifacts.TAG_OUTCOME) == "not_promoted"]) >= 2
    # trained here, not handed the earlier run's cached result: its own checkpoint, its own epoch metrics
    assert summary.training.checkpoint == ws.runs / summary.mlflow_run_id / "best.pt"
    assert len(mlflow.MlflowClient().get_metric_history(summary.mlflow_run_id, "val_auc")) == 1
    version = registry.get_version("pneumonia-classifier", summary.model.version)
    assert version.run_id == summary.mlflow_run_id
    assert read_metadata(summary.export.onnx)["medimg.mlflow_run_id"] == summary.mlflow_run_id


def test_validation_failure_stops_before_training(workspace, champion_run):
    from flows.retrain import retrain

    ws, params_file = workspace
    before = {p.name for p in ws.runs.iterdir()}
    state = retrain(
        params_path=str(params_file), overrides={"validation": {"duplicates_across_splits": "fail"}}, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ValidationFailed, match="splits_with_hash"):
        state.result()
    new_runs = {p.name for p in ws.runs.iterdir()} - before
    assert not any((ws.runs / name / "best.pt").exists() for name in new_runs), "training ran after a failed validation"
    assert registry.version_by_alias("pneumonia-classifier", registry.CHAMPION).version == "1"


def test_cli_reports_a_bad_params_file_with_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: -3\n")
    result = CliRunner().invoke(app, ["run", "--params", str(bad)])
    assert result.exit_code == 2
    assert "train.epochs" in result.output
