"""3D Grad-CAM and its slice montage on models trained briefly on real VesselMNIST3D volumes (28^3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medimg import preprocess
from medimg.config import load_params
from medimg.data.medmnist import locate
from medimg.evaluation.gradcam import cam_layer, grad_cam, last_conv
from medimg.evaluation.plots import gradcam_montage_png, montage_slices
from medimg.steps.evaluate import gradcam_review
from medimg.training.data import SplitArrays
from medimg.training.loop import predict_proba, train
from medimg.training.models import build_model

PARAMS = "params/vessel3d.yaml"


@pytest.fixture(scope="module")
def vessel(data_dir, tmp_path_factory):
    """params/vessel3d.yaml with a small simple_cnn3d, trained 2 epochs on 256 training volumes; the test split."""
    arrays = locate("vesselmnist3d", data_dir, tmp_path_factory.mktemp("dl"), download=False).load(volumes=True)
    params = load_params(
        PARAMS,
        {"model": {"architecture": "simple_cnn3d", "width": 8}, "train": {"epochs": 2, "batch_size": 32}},
    )
    split = {
        s: SplitArrays([str(i) for i in range(n)], arrays[s][0][:n], arrays[s][1][:n])
        for s, n in (("train", 256), ("val", 96), ("test", 96))
    }
    return params, train(params, split["train"], split["val"]).model, split["test"]


def test_heat_has_the_volume_shape_and_is_finite_non_negative_per_volume_scaled(vessel):
    params, model, test = vessel
    x = preprocess.apply(test.images[:4], params.preprocess)
    assert x.shape == (4, 1, 28, 28, 28)
    heat = grad_cam(model, x)
    assert heat.shape == (4, 28, 28, 28) and heat.shape[1:] == test.images.shape[1:]
    assert np.isfinite(heat).all() and (heat >= 0).all() and (heat <= 1 + 1e-6).all()
    peaks = heat.reshape(4, -1).max(1)
    np.testing.assert_allclose(peaks[peaks > 0], 1.0, rtol=1e-6)
    assert (peaks > 0).any(), "at least one volume must have some positive evidence"
    assert not np.allclose(heat[0], heat[1]), "different volumes must give different maps"
    assert not model.training


def test_per_volume_targets_match_single_class_maps(vessel):
    params, model, test = vessel
    x = preprocess.apply(test.images[:3], params.preprocess)
    by_class = {k: grad_cam(model, x, k) for k in (0, 1)}
    mixed = grad_cam(model, x, [1, 0, 1])
    for i, k in enumerate([1, 0, 1]):
        np.testing.assert_allclose(mixed[i], by_class[k][i], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\] or volumes"):
        grad_cam(model, x[:, 0, 0])
    with pytest.raises(ValueError, match="has no Conv2d"):  # 4-D input means images: a 3D network cannot take them
        grad_cam(model, x[:, 0])


def test_resnet3d_explains_its_last_stage_not_the_shortcut_projection(vessel):
    params, _, test = vessel
    resnet = build_model(load_params(PARAMS, {"model": {"architecture": "resnet3d", "width": 4}}).model, 1, 2)
    layer = cam_layer(resnet, 3)
    assert layer is resnet.features.layer4
    assert last_conv(resnet, 3) is resnet.features.layer4[0].downsample[0]  # what a "last Conv3d" rule would pick
    heat = grad_cam(resnet, preprocess.apply(test.images[:2], params.preprocess))
    assert heat.shape == (2, 28, 28, 28) and np.isfinite(heat).all() and (heat >= 0).all()
    cnn = build_model(load_params(PARAMS, {"model": {"architecture": "simple_cnn3d", "width": 4}}).model, 1, 2)
    assert cam_layer(cnn, 3) is last_conv(cnn, 3) and isinstance(last_conv(cnn, 3), torch.nn.Conv3d)


def test_montage_png_has_the_stated_size(vessel, tmp_path):
    params, model, test = vessel
    heat = grad_cam(model, preprocess.apply(test.images[:3], params.preprocess))
    path = gradcam_montage_png(test.images[:3], heat, ["a", "b", "c"], tmp_path / "sub" / "montage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        assert png.size == (6 * 165, 3 * 209)
        assert len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 50, "heat colours drawn"
    assert montage_slices(28, 6) == [4, 8, 12, 15, 19, 23]
    assert montage_slices(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="both be"):
        gradcam_montage_png(test.images[:2], heat[:1], ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="between 1 and the depth"):
        montage_slices(28, 29)


def test_evaluate_step_draws_a_montage_for_volumes(vessel, tmp_path):
    """The evaluate step's review figure: one montage row per kind (TP, FP, TN, FN) present, titled with classes."""
    params, model, test = vessel
    probs = predict_proba(model, preprocess.apply(test.images, params.preprocess))
    threshold = float(np.median(probs[:, 1]))  # both decisions occur, so several kinds are present
    path = gradcam_review(model, test, probs, threshold, params, tmp_path / "gradcam_grid.png")
    decided = probs[:, 1] >= threshold
    kinds = sum(bool(np.any((decided == d) & (test.labels == y))) for d in (True, False) for y in (0, 1))
    assert kinds >= 2
    with Image.open(path) as png:
        assert png.size == (6 * 165, kinds * 209)
