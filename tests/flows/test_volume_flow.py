"""The real retrain flow on VesselMNIST3D volumes, then ``medimg predict champion`` on DICOM series and NIfTI.

Real Prefect, MLflow on SQLite, DVC, Great Expectations and ONNX Runtime, as in ``test_flow.py``; the
params are ``params/vessel3d.yaml`` with a small network and few steps (the point is the plumbing: the
quality runs are ``benchmarks/volumes_quality.py``) and gates relaxed so that the first run is promoted.
The champion then scores the shared MR study (one row per series, named by pseudonym) and a NIfTI
file made from one of its series; ``examples/consumer_3d.py`` reproduces the NIfTI row from the
champion's ONNX file alone. No SeriesInstanceUID, PatientID or UID file name of the inputs reaches
the output, MLflow or the ONNX metadata.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from datapaths import MR_STUDY
from medimg.cli import app
from medimg.data.series import read_series_folder
from medimg.export.onnx_export import read_metadata
from medimg.workspace import Workspace
from registry_fixtures import ROOT, _activated, write_params
from test_consumer_3d import run_consumer
from test_predict_3d import SECRET, nifti_of, series_uids

pytestmark = pytest.mark.integration

SMALL = {
    "model": {"architecture": "simple_cnn3d", "width": 8},
    "train": {"epochs": 2, "max_steps": 40, "num_threads": 1},
    "gates": {"bootstrap_samples": 200, "min_auc": 0.0, "min_accuracy": 0.0, "benchmark": {"margin": 1.0}},
    "export": {"parity_images": 32},
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory, data_dir, prefect_harness):
    from flows.retrain import retrain

    root = tmp_path_factory.mktemp("volume-flow")
    params_file = write_params(root, root / "ws", base=ROOT / "params" / "vessel3d.yaml", overrides=SMALL)
    mp = _activated(Workspace.at(root / "ws"))
    mp.setenv("MEDIMG_DATA_DIR", str(data_dir))
    mp.setenv("MEDIMG_DEID_SECRET", SECRET)
    state = retrain(params_path=str(params_file), return_state=True)
    yield params_file, state
    mp.undo()


def test_the_flow_trains_gates_exports_and_promotes_a_3d_model(champion):
    params_file, state = champion
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.model.alias == "champion" and summary.model.model_name == "vessel3d-aneurysm"
    assert summary.ingest.n_images == 1335 + 191 + 382 and summary.validation.passed
    assert summary.evaluation.n_test == 382 and 0.0 <= summary.evaluation.test["roc_auc"] <= 1.0
    assert summary.export.parity.passed and summary.export.parity.n_images == 32
    meta = read_metadata(summary.export.onnx)
    assert meta["medimg.input_layout"] == "NCDHW float32"
    contract = json.loads(meta["medimg.preprocessing"])
    assert contract["dims"] == 3 and contract["shape"] == [28, 28, 28]
    run = mlflow.get_run(summary.mlflow_run_id)
    assert run.data.params["preprocess.dims"] == "3"
    figures = [a.path for a in mlflow.MlflowClient().list_artifacts(summary.mlflow_run_id, "evaluation/figures")]
    assert any(path.endswith("gradcam_grid.png") for path in figures), figures  # the slice montages
    status = CliRunner().invoke(app, ["status", "--json", "--params", str(params_file)])
    assert status.exit_code == 0, status.output
    champ = json.loads(status.stdout)["champion"]
    assert champ["version"] == "1" and "test_roc_auc" in champ["metrics"]


def test_predict_champion_on_a_dicom_series_folder_and_a_nifti_file(champion, tmp_path):
    params_file, state = champion
    volume = read_series_folder(MR_STUDY).volumes[0]
    nifti = nifti_of(volume, tmp_path / "mr_series.nii.gz")
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "champion",
            str(MR_STUDY),
            str(nifti),
            "--params",
            str(params_file),
            "--format",
            "json",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    series = [r for r in rows if (r["volume"] or "").startswith("series-")]
    assert len(series) == 5, rows
    assert all(r["error"] is None and 0 <= r["abnormal_probability"] <= 1 for r in series)
    (from_nifti,) = [r for r in rows if r["file"].endswith("mr_series.nii.gz")]
    assert from_nifti["predicted_class"] in ("vessel", "aneurysm")

    # the consumer (onnxruntime, numpy, nibabel) gives the same answer from the champion's file alone
    theirs = run_consumer(state.result().export.onnx, [nifti], tmp_path, "--modality", "MR")
    assert np.isclose(theirs[0]["abnormal_probability"], from_nifti["abnormal_probability"], atol=1e-5)
    assert theirs[0]["predicted_class"] == from_nifti["predicted_class"]

    # privacy: no UID of the inputs in the rows, the console, MLflow or the ONNX metadata
    uids = series_uids(MR_STUDY)
    assert uids
    run = mlflow.get_run(state.result().mlflow_run_id)
    texts = {
        "rows": out.read_text(),
        "console": result.output,
        "mlflow": json.dumps([run.data.params, run.data.tags]),
        "onnx": json.dumps(read_metadata(state.result().export.onnx)),
    }
    assert {name: [u for u in uids if u in text] for name, text in texts.items()} == {name: [] for name in texts}
