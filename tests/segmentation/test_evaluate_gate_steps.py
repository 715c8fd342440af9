"""The segmentation branches of the evaluate and gate steps on real MSD hippocampus cases.

A workspace holds real cases as the segmentation ingest stores them (uint8 volumes and masks, a manifest
with the spacing), a real 3D U-Net (MONAI ``UNet``, not trained: the plumbing is under test, not the model)
predicts them, and the evaluate step's outputs go through the real gate step against a real MLflow registry
(SQLite in ``tmp_path``) whose champion is the same network exported to ONNX: the champion comparison then
scores the same cases through ONNX Runtime and must find no difference.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from monai.networks.nets import UNet
from PIL import Image

from medimg import artifacts, registry
from medimg.contracts import EvaluationSummary
from medimg.data import manifest
from medimg.export.onnx_export import export
from medimg.segmentation.inference import predict_probabilities, to_tensor
from medimg.segmentation.metrics import case_table
from medimg.steps import evaluate, gate
from medimg.steps.export import metadata
from medimg.training.data import load_split
from medimg.workspace import Workspace
from seg_eval_cases import STRUCTURES, hippocampus_cases, hippocampus_params

SPLITS = {"val": 4, "test": 8}


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16, 32, 64), strides=(2, 2, 2, 2))


@pytest.fixture
def mlflow_ws(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    return ws


def _store(ws: Workspace) -> pd.DataFrame:
    """Real cases stored as the segmentation ingest does: ``volumes/`` and ``masks/`` per split, and a manifest."""
    rows, start = [], 0
    for split, n in SPLITS.items():
        cases = hippocampus_cases(n, start)
        start += n
        for i, case in enumerate(cases.ids):
            for folder, array in (("volumes", cases.images[i]), ("masks", cases.masks[i])):
                (ws.data / folder / split).mkdir(parents=True, exist_ok=True)
                np.save(ws.data / folder / split / f"{case}.npy", array, allow_pickle=False)
            rows.append(
                {
                    "id": case,
                    "split": split,
                    "label": int(cases.masks[i].max()),
                    "path": f"volumes/{split}/{case}.npy",
                    "mask_path": f"masks/{split}/{case}.npy",
                    "labels_present": ";".join(str(v) for v in np.unique(cases.masks[i]) if v),
                    "modality": "MR",
                    "spacing_z": cases.spacings[i][0],
                    "spacing_y": cases.spacings[i][1],
                    "spacing_x": cases.spacings[i][2],
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_parquet(ws.data / manifest.MANIFEST_FILE)
    return frame


def _evaluate(ws: Workspace, params, model, run_id: str) -> EvaluationSummary:
    """The evaluate step's segmentation outputs, as :func:`medimg.steps.evaluate.run_segmentation` writes them."""
    frame = manifest.read(ws.data)
    val, test = (load_split(ws.data, frame, split) for split in ("val", "test"))
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_auc": 0.1, "lr": 0.001}]
    out = ws.run_dir(run_id)
    report, pngs = evaluate.segmentation_outputs(params, model, frame, val, test, history, out)
    assert [p.name for p in pngs] == [evaluate.SEGMENTATION_OVERLAYS, "training_curves.png"]
    return EvaluationSummary(
        metrics_file=out / "metrics.json", predictions=out / artifacts.filename(artifacts.TEST_PREDICTIONS), **report
    )


def test_evaluate_outputs_on_real_cases(tmp_path, network) -> None:
    ws = Workspace.at(tmp_path / "ws")
    params = hippocampus_params({"gates": {"bootstrap_samples": 200}})
    frame = _store(ws)
    evaluated = _evaluate(ws, params, network, "run-1")

    # the per-case CSV: one row per test case, the figures the metrics module gives for the model's arg-max
    table = pd.read_csv(evaluated.predictions, dtype={"id": str})
    test = frame[frame["split"] == "test"].sort_values("id")
    assert table["id"].tolist() == test["id"].tolist()
    assert table["label"].tolist() == test["label"].tolist()
    images = np.stack([np.load(ws.data / p) for p in test["path"]])
    masks = np.stack([np.load(ws.data / p) for p in test["mask_path"]])
    labels = predict_probabilities(network, images, params.preprocess, 4).argmax(1).astype(np.uint8)
    expected = case_table(test["id"].tolist(), labels, masks, test[["spacing_z", "spacing_y", "spacing_x"]], STRUCTURES)
    pd.testing.assert_frame_equal(table.drop(columns="label"), expected, check_exact=False, rtol=1e-9)

    # metrics.json: the flat names with CIs; no threshold (arg-max per voxel)
    report = json.loads(evaluated.metrics_file.read_text())
    assert report["task_kind"] == "segmentation" and report["threshold"] is None
    assert report["threshold_rule"] == "argmax" and evaluated.threshold is None
    assert report["test"]["n"] == evaluated.n_test == SPLITS["test"]
    assert report["test"]["mean_dice"] == pytest.approx(table["mean_dice"].mean())
    for name in ("mean_dice", "dice_anterior", "dice_posterior", "volume_error_ml_anterior"):
        low, high = report["test_ci95"][name]
        assert low <= report["test"][name] <= high, name
    assert report["val"]["n"] == SPLITS["val"]
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (3, 3) and confusion.sum() == masks.size
    assert confusion[1].sum() == (masks == 1).sum() and confusion[:, 2].sum() == (labels == 2).sum()
    # cases per split: background every case, a structure the cases whose reference mask holds it
    assert report["class_counts"]["test"] == {
        "background": len(masks),
        **{name: int(sum((m == k).any() for m in masks)) for k, name in enumerate(params.task.class_names) if k},
    }
    assert report["split_counts"] == SPLITS
    assert (evaluated.metrics_file.parent / artifacts.filename(artifacts.VAL_PREDICTIONS)).is_file()

    # the figures: the overlay montage of the best, median and worst case, and the training curves
    figures = evaluated.metrics_file.parent / "figures"
    with Image.open(figures / evaluate.SEGMENTATION_OVERLAYS) as png:
        assert png.size[0] == round(5 * 1.5 * 110)
    assert (figures / "training_curves.png").is_file()


def _register_champion(ws: Workspace, params, model, class_names=None) -> str:
    """``model`` exported to ONNX with the export step's metadata, registered as the champion; its version."""
    client = MlflowClient()
    run_id = client.create_run(registry.ensure_experiment("seg-gate", ws.root / "mlartifacts")).info.run_id
    meta = metadata(params, run_id, "e" * 32, None)
    if class_names is not None:
        meta[artifacts.META_CLASS_NAMES] = class_names
    example = to_tensor(np.zeros((2, *params.preprocess.volume.shape), np.uint8), params.preprocess)
    path = export(model, example, ws.run_dir(run_id) / "model.onnx", params.export.opset, meta)
    version = registry.register(registry.log_onnx(run_id, path), params.registry.model_name, {})
    registry.set_alias(params.registry.model_name, registry.CHAMPION, version.version)
    return version.version


def test_gate_against_the_same_network_as_champion(mlflow_ws, network) -> None:
    params = hippocampus_params(
        {"workspace": {"path": str(mlflow_ws.root)}, "gates": {"bootstrap_samples": 200, "min_dice": 0.85}}
    )
    _store(mlflow_ws)
    version = _register_champion(mlflow_ws, params, network)
    run_id = MlflowClient().create_run(registry.ensure_experiment("seg-gate", None)).info.run_id
    evaluated = _evaluate(mlflow_ws, params, network, run_id)

    decision = gate.run(params, mlflow_ws, run_id, evaluated)

    rules = {rule.name: rule for rule in decision.rules}
    assert list(rules) == ["benchmark_noninferiority", "minimum_metrics", "champion_noninferiority"]
    # the untrained network is far from nnU-Net and from the floors; both rules say so with the numbers
    assert not rules["benchmark_noninferiority"].passed
    assert rules["benchmark_noninferiority"].inputs["benchmark"]["id"] == "msd_hippocampus_nnunet"
    assert "dice_anterior lower bound" in rules["benchmark_noninferiority"].reason
    assert not rules["minimum_metrics"].passed and "< 0.850" in rules["minimum_metrics"].reason
    # the champion is the same network through ONNX Runtime: the same masks, a paired difference of 0
    champion = rules["champion_noninferiority"]
    assert champion.passed, champion.reason
    assert champion.inputs["champion_version"] == version and champion.inputs["metric"] == "mean Dice"
    assert abs(champion.inputs["delta"]) < 1e-6 and champion.inputs["lower"] <= 0 <= champion.inputs["upper"]
    assert decision.passed is False and set(decision.failed) == {"benchmark_noninferiority", "minimum_metrics"}

    report = json.loads(decision.report.read_text())
    assert report["task_kind"] == "segmentation" and report["threshold"] is None
    assert report["champion_version"] == version
    assert report["test_metrics"]["dice_anterior"] == evaluated.test["dice_anterior"]
    assert (
        MlflowClient().get_run(run_id).data.tags[artifacts.TAG_GATE_FAILED]
        == "benchmark_noninferiority,minimum_metrics"
    )


def test_a_champion_of_other_structures_fails_the_champion_rule(mlflow_ws, network) -> None:
    params = hippocampus_params({"workspace": {"path": str(mlflow_ws.root)}, "gates": {"bootstrap_samples": 200}})
    _store(mlflow_ws)
    _register_champion(mlflow_ws, params, network, class_names=["background", "head", "tail"])
    run_id = MlflowClient().create_run(registry.ensure_experiment("seg-gate", None)).info.run_id
    evaluated = _evaluate(mlflow_ws, params, network, run_id)

    decision = gate.run(params, mlflow_ws, run_id, evaluated)

    champion = {rule.name: rule for rule in decision.rules}["champion_noninferiority"]
    assert not champion.passed and "could not be scored" in champion.reason
    assert "['background', 'head', 'tail'] differ from the candidate's" in champion.reason


def test_to_tensor_normalises_any_grid_of_the_pad_multiple() -> None:
    params = hippocampus_params({"preprocess": {"mean": 0.25, "std": 0.5}})
    volumes = np.zeros((2, 16, 32, 48), np.uint8)
    volumes[0, 0, 0, 0], volumes[1, 1, 1, 1] = 255, 51
    x = to_tensor(volumes, params.preprocess)
    assert x.shape == (2, 1, 16, 32, 48) and x.dtype == torch.float32
    assert x[0, 0, 0, 0, 0] == pytest.approx(1.5) and x[1, 0, 1, 1, 1] == pytest.approx(-0.1)  # (v/255 - .25)/.5
    assert x[0, 0, 5, 5, 5] == pytest.approx(-0.5)
    three = to_tensor(volumes[0], hippocampus_params({"preprocess": {"channels": 3}}).preprocess)
    assert three.shape == (1, 3, 16, 32, 48)
    with pytest.raises(ValueError, match=r"multiples of preprocess\.volume\.pad_multiple"):
        to_tensor(np.zeros((1, 16, 30, 48), np.uint8), params.preprocess)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((1, 16, 32, 48), np.float32), params.preprocess)
