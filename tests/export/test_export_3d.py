"""ONNX export of the 3D models: MONAI's ResNet at opset 18, input NCDHW float32 with a dynamic batch, parity with
PyTorch on real stored VesselMNIST3D test volumes, the 3D contract in the metadata, and the export step itself.

The networks have random weights (seeded) whose BatchNorm statistics are those of real training
volumes (:func:`test_predict_3d.calibrated`): parity is about the graph, not about what it learnt.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from medimg import preprocess, tracking, volume_contract
from medimg.config import load_params
from medimg.contracts import TrainingData
from medimg.data import manifest
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.export.onnx_export import INPUT_NAME, check_parity, export, read_metadata
from medimg.steps import export as export_step
from medimg.training.data import load_split, split_rows
from medimg.training.models import build_model
from medimg.workspace import Workspace
from test_predict_3d import calibrated

ROOT = Path(__file__).resolve().parents[2]


def vessel_params(size: int = 28, **overrides):
    """``params/vessel3d.yaml`` at ``size`` with MONAI's ResNet (``resnet3d``), the network these tests export."""
    fixed = {
        "data": {"medmnist_size": size},
        "preprocess": {"size": size},
        "model": {"architecture": "resnet3d", "width": 16},
    }
    return load_params(ROOT / "params" / "vessel3d.yaml", {**fixed, **overrides})


@pytest.fixture(scope="module")
def vessel_dataset(data_dir, tmp_path_factory) -> Path:
    """The real VesselMNIST3D 28^3 archive ingested as the flow does (``volumes/<split>/<id>.npy`` + manifest)."""
    params = vessel_params()
    folder = tmp_path_factory.mktemp("vessel3d") / "dataset"
    archive = locate("vesselmnist3d", data_dir, folder.parent, download=False, size=28)
    ingest_medmnist(archive, params.data, params.task.class_names, folder, params.preprocess)
    return folder


def stored_split(folder: Path, split: str, n: int) -> np.ndarray:
    """The first ``n`` stored volumes of ``split`` (uint8 [n, S, S, S]), read as the export step reads them."""
    rows = split_rows(manifest.read(folder), split)
    return load_split(folder, rows.head(n), split).images


def seeded_model(params, x: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(params.model, params.preprocess.channels, len(params.task.class_names))
    return calibrated(model, x)


def test_resnet3d_exports_ncdhw_with_a_dynamic_batch_and_parity_on_real_test_volumes(vessel_dataset, tmp_path):
    from medimg.steps.export import metadata

    params = vessel_params()
    assert params.model.architecture == "resnet3d" and params.export.opset == 18
    model = seeded_model(params, preprocess.apply(stored_split(vessel_dataset, "train", 32), params.preprocess))
    test = stored_split(vessel_dataset, "test", 64)
    assert test.shape == (64, 28, 28, 28) and test.dtype == np.uint8
    x = preprocess.apply(test, params.preprocess)
    assert tuple(x.shape) == (64, 1, 28, 28, 28)
    path = export(model, x, tmp_path / "model.onnx", 18, metadata(params, "run-0", "data-0", 0.4))

    parity = check_parity(model, path, x, atol=1e-4)
    assert parity.passed and parity.n_images == 64 and parity.max_abs_diff < 1e-4, parity
    proto = onnx.load(str(path))
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == INPUT_NAME and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28, 28]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x[:5]).numpy()
    single = np.concatenate([sess.run(None, {INPUT_NAME: x[i : i + 1].numpy()})[0] for i in range(5)])
    five = sess.run(None, {INPUT_NAME: x[:5].numpy()})[0]
    assert single.shape == five.shape == (5, 2)
    assert np.abs(single - expected).max() < 1e-4 and np.abs(five - expected).max() < 1e-4
    assert len(set(np.round(five[:, 1] - five[:, 0], 4))) > 1, "the logits differ between volumes"

    meta = read_metadata(path)
    assert meta["medimg.input_layout"] == "NCDHW float32"
    contract = json.loads(meta["medimg.preprocessing"])
    assert contract == volume_contract.contract(params.preprocess) and contract["dims"] == 3
    assert contract["layout"] == "NCDHW float32"
    assert volume_contract.contract(preprocess.config_from_contract(contract)) == contract  # it reads back
    assert json.loads(meta["medimg.modalities"]) == ["MR"] and meta["medimg.architecture"] == "resnet3d"


def test_resnet3d_at_64_cubed_batches_of_1_and_5(data_dir, tmp_path):
    params = vessel_params(64)
    archive = locate("vesselmnist3d", data_dir, tmp_path, download=False, size=64)
    volumes = archive.load(volumes=True)["test"][0][:5]
    assert volumes.shape == (5, 64, 64, 64)
    x = preprocess.apply(
        np.stack([volume_contract.prepare_array(v, params.preprocess) for v in volumes]), params.preprocess
    )
    model = seeded_model(params, x)
    path = export(model, x, tmp_path / "model64.onnx", 18, {})
    for batch in (1, 5):
        parity = check_parity(model, path, x[:batch], atol=1e-4, batch_size=batch)
        assert parity.passed and parity.n_images == batch, parity


@pytest.mark.integration
def test_the_export_step_on_a_volume_dataset(vessel_dataset, tmp_path, monkeypatch):
    """:func:`medimg.steps.export.run` as the flow calls it: stored test volumes, parity, metadata, MLflow."""
    params = vessel_params(export={"parity_images": 24})
    ws = Workspace.at(tmp_path / "ws").ensure()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.default_tracking_uri())
    ws.data.parent.mkdir(parents=True, exist_ok=True)
    ws.data.symlink_to(vessel_dataset, target_is_directory=True)
    model = seeded_model(params, preprocess.apply(stored_split(vessel_dataset, "train", 32), params.preprocess))
    checkpoint = tmp_path / "best.pt"
    torch.save(model.state_dict(), checkpoint)
    run_id = tracking.start_run(params, ws, {})
    summary = export_step.run(
        params,
        ws,
        run_id,
        TrainingData(data_version="vessel-v1"),
        SimpleNamespace(checkpoint=checkpoint),
        SimpleNamespace(threshold=0.37),
    )
    assert summary.parity.passed and summary.parity.n_images == 24 and summary.parity.max_abs_diff < 1e-4
    meta = read_metadata(summary.onnx)
    assert meta["medimg.input_layout"] == "NCDHW float32" and json.loads(meta["medimg.preprocessing"])["dims"] == 3
    assert meta["medimg.threshold"] == "0.37" and meta["medimg.data_version"] == "vessel-v1"
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["onnx_parity_max_abs_diff"] == pytest.approx(summary.parity.max_abs_diff)
