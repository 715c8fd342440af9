"""ONNX export: checker-valid, dynamic batch, parity with PyTorch on real images, metadata for consumers."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from medimg import preprocess
from medimg.config import parse_params
from medimg.data.medmnist import locate
from medimg.export.onnx_export import INPUT_NAME, check_parity, export, read_metadata
from medimg.provenance import file_sha256
from medimg.training.models import build_model


@pytest.fixture
def model_and_inputs(data_dir, tmp_path):
    params = parse_params({})
    torch.manual_seed(0)
    model = build_model(params.model, 1, 2).eval()
    images, _ = locate("pneumoniamnist", data_dir, tmp_path, download=False).load()["test"]
    return params, model, preprocess.apply(images[:64], params.preprocess)


def test_export_parity_and_metadata(model_and_inputs, tmp_path):
    params, model, x = model_and_inputs
    path = export(
        model,
        x,
        tmp_path / "m.onnx",
        18,
        {"medimg.preprocessing": preprocess.contract(params.preprocess), "medimg.threshold": 0.42},
    )
    parity = check_parity(model, path, x, atol=1e-4)
    assert parity.passed and parity.max_abs_diff < 1e-4 and parity.n_images == 64
    meta = read_metadata(path)
    assert json.loads(meta["medimg.preprocessing"])["size"] == 28 and meta["medimg.threshold"] == "0.42"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 33):
        assert sess.run(None, {INPUT_NAME: x[:batch].numpy()})[0].shape == (batch, 2)
    assert len(file_sha256(path)) == 64
    assert not list(tmp_path.glob("*.data")), "the model must be one self-contained file"


def test_parity_detects_a_different_model(model_and_inputs, tmp_path):
    _, model, x = model_and_inputs
    path = export(model, x, tmp_path / "m.onnx", 18, {})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    assert not check_parity(model, path, x, atol=1e-4).passed


def test_preprocess_contract_is_the_documented_arithmetic():
    params = parse_params({"preprocess": {"size": 32, "channels": 3}})
    image = np.full((28, 28), 255, dtype=np.uint8)
    out = preprocess.apply(image, params.preprocess)
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, (1.0 - 0.5) / 0.5))
