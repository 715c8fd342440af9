"""The 3D U-Net and its training on real MSD hippocampus cases: learns, deterministic, exact resume, aligned
augmentation, the train step's segmentation branch."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from datapaths import DATA_DIR
from medimg import tracking
from medimg.config import AugmentConfig, ModelConfig, load_params
from medimg.contracts import TrainingData
from medimg.data import manifest
from medimg.data.nifti import read_nifti
from medimg.segmentation.augmentation import augment_pair
from medimg.segmentation.geometry import training_pair
from medimg.segmentation.inference import predict_probabilities, to_tensor
from medimg.segmentation.training import train_segmentation, validation_dice
from medimg.steps import train as train_step
from medimg.training.data import SplitArrays
from medimg.training.models import build_model
from medimg.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
HIPPOCAMPUS_ROOT = DATA_DIR / "msd_hippocampus"
N_CASES = 44  # 36 to train, 8 to validate


class Killed(RuntimeError):
    pass


def _params(**train):
    return load_params(
        REPO_ROOT / "params" / "hippocampus.yaml",
        overrides={
            "model": {"width": 8},
            "train": {"epochs": 2, "batch_size": 2, "num_threads": 1, "lr": 0.003, **train},
        },
    )


@pytest.fixture(scope="module")
def cases():
    """The first ``N_CASES`` real MSD cases through the segmentation contract: images, masks uint8 [N, 48, 64, 48]."""
    if not HIPPOCAMPUS_ROOT.is_dir():
        pytest.fail(f"MSD hippocampus not found at {HIPPOCAMPUS_ROOT}: set MEDIMG_DATA_DIR")
    config = _params().preprocess
    ids, images, masks = [], [], []
    for path in sorted((HIPPOCAMPUS_ROOT / "imagesTr").glob("*.nii.gz"))[:N_CASES]:
        mask = np.rint(read_nifti(HIPPOCAMPUS_ROOT / "labelsTr" / path.name).voxels).astype(np.uint8)
        image, stored_mask, _ = training_pair(read_nifti(path, "MR"), mask, config)
        ids.append(path.name.removesuffix(".nii.gz"))
        images.append(image)
        masks.append(stored_mask)
    return ids, np.stack(images), np.stack(masks)


def _split(cases, start: int, stop: int) -> SplitArrays:
    ids, images, masks = cases
    return SplitArrays(
        ids[start:stop], images[start:stop], masks[start:stop].max(axis=(1, 2, 3)).astype(np.int64), masks[start:stop]
    )


@pytest.fixture(scope="module")
def splits(cases):
    return _split(cases, 0, 36), _split(cases, 36, N_CASES)


@pytest.fixture(scope="module")
def small(cases):
    return _split(cases, 0, 6), _split(cases, 36, 39)


@pytest.fixture(scope="module")
def straight_small(small):
    return train_segmentation(_params(epochs=3), *small)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.dtype.is_floating_point])


def test_cases_are_stored_on_the_contract_grid(cases):
    _, images, masks = cases
    assert images.shape == masks.shape == (N_CASES, 48, 64, 48) and images.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1, 2}


@pytest.mark.parametrize("shape", [(48, 64, 48), (32, 48, 32)])
def test_the_unet_gives_logits_per_voxel_for_multiples_of_16(shape):
    model = build_model(ModelConfig(architecture="unet3d", width=4, dropout=0.0), 1, 3).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, *shape))
    assert logits.shape == (2, 3, *shape) and torch.isfinite(logits).all()


def test_the_unet_exports_to_onnx_with_dynamic_batch_and_spatial_axes():
    """Opset 18 through torch.onnx.export (dynamo), each spatial axis declared as 16 x a free size; ONNX Runtime
    then runs batches and grids the trace never saw, matching PyTorch."""
    import onnxruntime

    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="unet3d", width=4, dropout=0.0), 1, 3).eval()
    sixteens = {axis: 16 * torch.export.Dim(f"n{axis}", min=1, max=32) for axis in (2, 3, 4)}
    program = torch.onnx.export(
        model,
        (torch.randn(2, 1, 48, 64, 48),),
        None,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch"), **sixteens}},
        dynamo=True,
        opset_version=18,
        external_data=False,
    )
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString())
    for shape in [(1, 1, 32, 48, 32), (3, 1, 48, 64, 48)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-4)


def test_to_tensor_scales_normalises_and_repeats_channels(cases):
    config = _params().preprocess
    x = to_tensor(cases[1][:2], config)
    assert x.shape == (2, 1, 48, 64, 48) and x.dtype == torch.float32
    expected = (cases[1][:2].astype(np.float32) / 255 - config.mean) / config.std
    assert np.allclose(x[:, 0].numpy(), expected, atol=1e-6)
    three = to_tensor(cases[1][0], config.model_copy(update={"channels": 3}))
    assert three.shape == (1, 3, 48, 64, 48) and torch.equal(three[:, 0], three[:, 2])
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(cases[1][:2].astype(np.float32), config)


def test_a_flip_of_both_equals_the_flipped_pair(cases):
    """With rotation, scale and translation off, each case comes back as it was or mirrored left-right, image and
    mask alike."""
    x = to_tensor(cases[1][:12], _params().preprocess)
    y = torch.as_tensor(cases[2][:12])
    flip_only = AugmentConfig(rotate_deg=0, translate=0, scale_min=1, scale_max=1, hflip=True)
    xa, ya = augment_pair(x, y, torch.Generator().manual_seed(3), flip_only)
    assert ya.dtype == y.dtype and xa.shape == x.shape
    flipped = 0
    for xi, yi, xo, yo in zip(x, y, xa, ya, strict=True):
        if torch.equal(yo, yi):
            assert torch.allclose(xo, xi, atol=1e-5)
        else:
            assert torch.equal(yo, torch.flip(yi, (2,))) and torch.allclose(xo, torch.flip(xi, (3,)), atol=1e-5)
            flipped += 1
    assert 0 < flipped < 12


def test_rotation_and_scaling_move_image_and_mask_together(cases):
    """Two image channels that are the structures' indicator maps, resampled trilinearly, still cover the mask
    resampled by nearest neighbour: the same affine moved both."""
    y = torch.as_tensor(cases[2][:8])
    indicators = torch.stack([(y == 1), (y == 2)], 1).to(torch.float32)
    moving = AugmentConfig(rotate_deg=15, translate=0.08, scale_min=0.85, scale_max=1.15, hflip=True)
    xa, ya = augment_pair(indicators, y, torch.Generator().manual_seed(5), moving)
    assert set(torch.unique(ya).tolist()) <= {0, 1, 2}
    assert (ya != y).float().mean() > 0.005  # the cases did move
    dice = validation_dice(torch.where(xa.amax(1) > 0.5, xa.argmax(1) + 1, 0), ya.long(), 3)
    assert dice.min() > 0.9, dice


def test_learns_on_real_cases(splits):
    result = train_segmentation(_params(epochs=6, schedule="constant"), *splits)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert set(result.history[0]) == {"epoch", "train_loss", "val_loss", "val_auc", "lr"}
    assert result.best_val_auc > 0.5, result.history
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    probs = predict_probabilities(result.model, splits[1].images, _params().preprocess)
    assert probs.shape == (8, 3, 48, 64, 48) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    dice = validation_dice(torch.as_tensor(probs.argmax(1)), torch.as_tensor(splits[1].masks).long(), 3)
    assert dice.mean() == pytest.approx(result.best_val_auc, abs=1e-6)


def test_same_seed_same_weights(small, straight_small):
    again = train_segmentation(_params(epochs=3), *small)
    assert torch.equal(_weights(again.model), _weights(straight_small.model))
    assert again.history == straight_small.history
    other = train_segmentation(_params(epochs=1, seed=7), *small)
    assert not torch.equal(_weights(other.model), _weights(straight_small.model))


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(small, straight_small, tmp_path):
    def die_at_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_segmentation(_params(epochs=3), *small, on_epoch=die_at_epoch_2, checkpoint_dir=tmp_path)
    assert (tmp_path / "last.pt").is_file()
    resumed = train_segmentation(_params(epochs=3), *small, checkpoint_dir=tmp_path, resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history == straight_small.history
    assert torch.equal(_weights(resumed.model), _weights(straight_small.model))


def test_a_split_without_masks_is_refused(small):
    train_split, val_split = small
    bare = SplitArrays(train_split.ids, train_split.images, train_split.labels)
    with pytest.raises(ValueError, match="masks"):
        train_segmentation(_params(), bare, val_split)


def test_the_train_step_trains_a_segmentation_dataset(cases, tmp_path, monkeypatch):
    """:func:`medimg.steps.train.run` on stored volumes and masks with a segmentation manifest: best.pt of a U-Net,
    Dice as the validation metric in the summary and in MLflow."""
    params = _params(epochs=1)
    ws = Workspace.at(tmp_path / "ws").ensure()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.default_tracking_uri())
    ids, images, masks = cases
    rows = []
    for case, split in [(i, "train") for i in range(4)] + [(i, "val") for i in range(4, 6)]:
        for kind, array in (("volumes", images[case]), ("masks", masks[case])):
            (ws.data / kind / split).mkdir(parents=True, exist_ok=True)
            np.save(ws.data / kind / split / f"{ids[case]}.npy", array, allow_pickle=False)
        depth, height, width = images[case].shape
        rows.append(
            {
                "id": ids[case],
                "split": split,
                "label": int(masks[case].max()),
                "label_name": "posterior",
                "path": f"volumes/{split}/{ids[case]}.npy",
                "mask_path": f"masks/{split}/{ids[case]}.npy",
                "depth": depth,
                "height": height,
                "width": width,
                "original_depth": depth,
                "original_height": height,
                "original_width": width,
                "bit_depth": 8,
                "offset_z": 0,
                "offset_y": 0,
                "offset_x": 0,
            }
        )
    manifest.write(manifest.to_frame(rows, segmentation=True), ws.data)
    run_id = tracking.start_run(params, ws, {})
    summary = train_step.run(params, ws, run_id, TrainingData(data_version="hippocampus-v1"))
    assert summary.n_train == 4 and summary.n_val == 2 and summary.epochs_run == 1
    assert 0 <= summary.best_val_auc <= 1 and summary.history[0]["val_auc"] == summary.best_val_auc
    state = torch.load(summary.checkpoint, weights_only=True)
    model = build_model(params.model, 1, 3)
    model.load_state_dict(state)
    assert (ws.run_dir(run_id) / "checkpoints" / "last.pt").is_file()
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert metrics["best_val_auc"] == pytest.approx(summary.best_val_auc)
