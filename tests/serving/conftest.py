"""Fixtures of the serving tests: a small real medimg ONNX model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medimg import preprocess
from medimg.artifacts import META_PREPROCESSING
from medimg.config import parse_params
from medimg.data.medmnist import locate
from medimg.export.onnx_export import export
from medimg.scoring import OnnxModel


@pytest.fixture(scope="module")
def small_model(data_dir, tmp_path_factory) -> tuple[OnnxModel, np.ndarray, np.ndarray]:
    """A small untrained CNN exported with medimg's metadata, real PneumoniaMNIST test images (uint8) and
    their preprocessed inputs."""
    params = parse_params({"model": {"architecture": "simple_cnn", "width": 8}})
    torch.manual_seed(0)
    from medimg.training.models import build_model  # here: torch models for this fixture only

    model = build_model(params.model, 1, 2).eval()
    folder = tmp_path_factory.mktemp("serve-small")
    images, _ = locate("pneumoniamnist", data_dir, folder, download=False).load()["test"]
    x = preprocess.apply(images[:40], params.preprocess)
    meta = {
        META_PREPROCESSING: preprocess.contract(params.preprocess),
        "medimg.threshold": 0.42,
        "medimg.class_names": list(params.task.class_names),
    }
    return OnnxModel(export(model, x, folder / "model.onnx", 18, meta)), images[:40], x.numpy()
