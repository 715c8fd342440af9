"""Grad-CAM on a model trained briefly on real PneumoniaMNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medimg import preprocess
from medimg.config import parse_params
from medimg.data.medmnist import locate
from medimg.evaluation.gradcam import grad_cam, last_conv, pick_examples
from medimg.evaluation.plots import gradcam_grid_png
from medimg.training.data import SplitArrays
from medimg.training.loop import train
from medimg.training.models import build_model


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    arrays = locate("pneumoniamnist", data_dir, tmp_path_factory.mktemp("dl"), download=False).load()
    params = parse_params({"train": {"epochs": 2, "batch_size": 64}, "model": {"width": 8}})
    split = {
        s: SplitArrays([str(i) for i in range(n)], arrays[s][0][:n], arrays[s][1][:n])
        for s, n in (("train", 512), ("val", 128), ("test", 64))
    }
    return params, train(params, split["train"], split["val"]).model, split["test"]


def test_heatmaps_are_normalised_per_image_and_input_sized(trained):
    params, model, test = trained
    x = preprocess.apply(test.images[:8], params.preprocess)
    heat = grad_cam(model, x)
    assert heat.shape == (8, 28, 28)
    assert np.all(heat >= 0) and np.allclose(heat.reshape(8, -1).max(1)[heat.reshape(8, -1).max(1) > 0], 1.0)
    assert not np.allclose(heat[0], heat[1]), "different images must give different maps"
    assert not model.training


def test_single_image_and_other_architectures(trained):
    params, model, test = trained
    one = grad_cam(model, preprocess.apply(test.images[0], params.preprocess))
    assert one.shape == (1, 28, 28)
    cnn = build_model(parse_params({"model": {"architecture": "simple_cnn", "width": 8}}).model, 1, 2)
    assert isinstance(last_conv(cnn), torch.nn.Conv2d)
    assert grad_cam(cnn, preprocess.apply(test.images[:2], params.preprocess)).shape == (2, 28, 28)


def test_examples_cover_each_outcome_and_grid_is_written(trained, tmp_path):
    labels = np.array([1, 1, 0, 0, 1, 0])
    probs = np.array([0.9, 0.2, 0.8, 0.1, 0.6, 0.3])
    chosen = pick_examples(labels, probs, 0.5, per_kind=1)
    assert chosen == {"TP": [0], "FP": [2], "TN": [3], "FN": [1]}
    params, model, test = trained
    heat = grad_cam(model, preprocess.apply(test.images[:3], params.preprocess))
    path = gradcam_grid_png(test.images[:3], heat, ["a", "b", "c"], tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_one_target_class_per_image_gives_each_image_its_own_class_map(trained):
    """Grad-CAM of each image's predicted class: a target per image equals that image's single-class map."""
    params, model, test = trained
    x = preprocess.apply(test.images[:6], params.preprocess)
    by_class = {k: grad_cam(model, x, k) for k in (0, 1)}
    np.testing.assert_array_equal(grad_cam(model, x), by_class[1])  # the default is unchanged: class 1
    assert not np.allclose(by_class[0], by_class[1]), "the two classes' maps differ, so the per-image choice shows"
    with torch.no_grad():
        predicted = model.eval()(x).argmax(dim=1).tolist()
    targets = [0, 1, 1, 0, 0, 1] if len(set(predicted)) == 1 else predicted
    mixed = grad_cam(model, x, np.array(targets))
    for i, k in enumerate(targets):
        np.testing.assert_allclose(mixed[i], by_class[k][i], rtol=0, atol=1e-6)
    np.testing.assert_allclose(grad_cam(model, x, targets), mixed, rtol=0, atol=0)  # a list or an array
    with pytest.raises(ValueError, match="one class per image"):
        grad_cam(model, x, [0, 1])
    with pytest.raises(ValueError, match="outside the model's 2 classes"):
        grad_cam(model, x, [0, 1, 2, 0, 1, 0])
    assert not model.training
