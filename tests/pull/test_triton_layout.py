"""``medimg pull --layout triton``: a Triton / KServe model repository from the real registry.

The configuration is parsed by protobuf's own text-format parser into Triton's ``inference.ModelConfig``
(the ``model_config_pb2`` that ships in the official ``tritonclient`` package), so a field Triton
does not know, a wrong type name or a malformed line fails the test; the ONNX file is loaded by ONNX
Runtime and its tensors compared with the configuration.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from urllib.parse import urlsplit

import onnxruntime as ort
import pytest
import tritonclient
from google.protobuf import text_format
from mlflow import MlflowClient
from typer.testing import CliRunner

from medimg import promotion, registry
from medimg.cli import app
from medimg.provenance import file_sha256
from medimg.pull import IntegrityError
from medimg.pull.triton_config import TensorSpec, config_pbtxt, tensor_spec
from medimg.pull.triton_repository import pull_triton
from registry_fixtures import MODEL


def _model_config_pb2():
    """Triton's ModelConfig message, loaded from the file (tritonclient.grpc's package init wants grpcio)."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parsed(text: str):
    pb2 = _model_config_pb2()
    return text_format.Parse(text, pb2.ModelConfig())


def test_config_text_is_a_valid_triton_model_config():
    text = config_pbtxt(
        'chest-x"ray',
        7,
        (TensorSpec("image", "TYPE_FP32", (1, 28, 28)),),
        (TensorSpec("logits", "TYPE_FP32", (3,)),),
        "ab" * 32,
        max_batch_size=16,
    )
    config = _parsed(text)
    assert config.name == 'chest-x"ray' and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert list(config.version_policy.specific.versions) == [7]
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [1, 28, 28])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [3])]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.parameters["medimg.onnx_sha256"].string_value == "ab" * 32
    assert config.parameters["medimg.version"].string_value == "7"


def test_tensor_specs_from_onnx_shapes():
    assert tensor_spec("x", "tensor(float)", ["batch", 1, 64, 64, 64]).dims == (1, 64, 64, 64)
    assert tensor_spec("x", "tensor(float)", ["batch", 3, "h", None]).dims == (3, -1, -1)
    with pytest.raises(ValueError, match="does not map"):
        tensor_spec("x", "tensor(string)", ["batch", 1])
    with pytest.raises(ValueError, match="batch axis"):
        tensor_spec("x", "tensor(float)", [])
    with pytest.raises(ValueError, match="numbers >= 1"):
        config_pbtxt("m", 0, (TensorSpec("a", "TYPE_FP32", (1,)),), (TensorSpec("b", "TYPE_FP32", (1,)),), "0")


@pytest.mark.integration
def test_pull_triton_layout_follows_the_champion(fresh_registry, tmp_path):
    repo = tmp_path / "models"
    result = CliRunner().invoke(
        app, ["pull", "--layout", "triton", "--out", str(repo), "--params", str(fresh_registry.params_file)]
    )
    assert result.exit_code == 0, result.output
    model_dir = repo / MODEL
    config = _parsed((model_dir / "config.pbtxt").read_text())
    v1 = registry.get_version(MODEL, "1")
    onnx_v1 = model_dir / "1" / "model.onnx"
    assert file_sha256(onnx_v1) == v1.tags[registry.TAG_ONNX_SHA256]
    assert config.parameters["medimg.onnx_sha256"].string_value == v1.tags[registry.TAG_ONNX_SHA256]
    assert list(config.version_policy.specific.versions) == [1]
    sess = ort.InferenceSession(str(onnx_v1), providers=["CPUExecutionProvider"])
    graph_in, graph_out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert config.input[0].name == graph_in.name and list(config.input[0].dims) == list(graph_in.shape[1:])
    assert config.output[0].name == graph_out.name and list(config.output[0].dims) == list(graph_out.shape[1:])
    assert json.loads((model_dir / "1" / "model_card.json").read_text())["version"] == "1"

    # the alias moves: the next pull adds version 2 and the configuration serves it; version 1 stays for a rollback
    promotion.promote(fresh_registry.params, fresh_registry.ws, "2", reason="triton layout test", force=True)
    written = pull_triton(fresh_registry.params, repo=repo)
    assert written.version == "2"
    assert list(_parsed((model_dir / "config.pbtxt").read_text()).version_policy.specific.versions) == [2]
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2"]
    assert not [p for p in repo.iterdir() if p.name.startswith(".")], "no partial folder may remain"


@pytest.mark.integration
def test_pull_triton_refuses_a_tampered_file_and_leaves_the_repository(fresh_registry, tmp_path):
    repo = tmp_path / "models"
    pull_triton(fresh_registry.params, repo=repo, version="1")
    before = (repo / MODEL / "config.pbtxt").read_text()
    store = Path(urlsplit(MlflowClient().get_model_version_download_uri(MODEL, "2")).path) / "model.onnx"
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        pull_triton(fresh_registry.params, repo=repo, version="2")
    assert (repo / MODEL / "config.pbtxt").read_text() == before
    assert sorted(p.name for p in (repo / MODEL).iterdir() if p.is_dir()) == ["1"]
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]

    # a version folder altered on disk is replaced by the verified file on the next pull
    onnx_v1 = repo / MODEL / "1" / "model.onnx"
    onnx_v1.write_bytes(b"not a model")
    pull_triton(fresh_registry.params, repo=repo, version="1")
    assert file_sha256(onnx_v1) == registry.get_version(MODEL, "1").tags[registry.TAG_ONNX_SHA256]
