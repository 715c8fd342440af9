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


def test_softmax_and_the_abnormality_probability_by_hand():
    from medimg.probabilities import abnormal_probability, softmax

    logits = np.array([[0.0, np.log(3.0)], [1000.0, 1000.0], [0.0, 0.0]], dtype=np.float32)  # 1000: max-shifted
    probs = softmax(logits)
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]], rtol=0, atol=1e-7)
    four = softmax(np.log(np.array([[1.0, 2.0, 3.0, 4.0]])))
    np.testing.assert_allclose(abnormal_probability(four, (0, 1, 3)), [0.7], rtol=0, atol=1e-12)  # all but index 2
    with pytest.raises(ValueError, match="no abnormal class"):
        abnormal_probability(four, ())


def test_default_task_metadata_keeps_the_pneumonia_reading():
    """The default binary task: abnormal class pneumonia at index 1, as every model before issue 12."""
    from medimg.steps.export import metadata

    meta = metadata(parse_params({}), "run-0", "data-0", 0.37)
    assert meta["medimg.task_kind"] == "binary" and meta["medimg.positive_class"] == "pneumonia"
    assert meta["medimg.abnormal_classes"] == ["pneumonia"] and meta["medimg.class_names"] == ["normal", "pneumonia"]
    assert meta["medimg.threshold"] == 0.37
    assert meta["medimg.output"] == (
        "logits: [N, 2] logits, one per class in medimg.class_names order; softmax over the 2 gives each class's "
        "probability; p_abnormal = softmax[:, 1] (pneumonia, medimg.positive_class); flagged abnormal and classed "
        "pneumonia when p_abnormal >= medimg.threshold, else normal"
    )
    brain = parse_params(
        {"task": {"kind": "multiclass", "class_names": ["a", "b", "c"], "abnormal": ["c", "a"]}}
    )  # abnormal listed out of class order: written in class order
    multi = metadata(brain, "run-0", "data-0", 0.5)
    assert "medimg.positive_class" not in multi and multi["medimg.abnormal_classes"] == ["a", "c"]
    assert "predicted class = arg-max" in multi["medimg.output"] and "softmax[:, [0, 2]]" in multi["medimg.output"]


def test_decide_is_the_threshold_for_binary_and_the_arg_max_for_multiclass():
    from medimg.probabilities import decide

    # BreastMNIST-like: abnormal class 0; p_abnormal 0.6, 0.5, 0.4 at threshold 0.5 -> 0, 0, 1
    binary = np.array([[0.6, 0.4], [0.5, 0.5], [0.4, 0.6]])
    assert decide(binary, "binary", (0,), 0.5).tolist() == [0, 0, 1]
    assert decide(binary, "binary", (1,), 0.55).tolist() == [0, 0, 1]  # p_abnormal 0.4, 0.5, 0.6
    multi = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.4, 0.4, 0.2]])
    assert decide(multi, "multiclass", (1, 2), 0.99).tolist() == [1, 2, 0]  # threshold unused; ties: first
    with pytest.raises(ValueError, match="two classes and one abnormal"):
        decide(multi, "binary", (1,), 0.5)
