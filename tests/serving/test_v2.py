"""The Open Inference Protocol v2 codec (:mod:`medimg.serving.v2`), checked against the official tritonclient's
own encoder and decoder (no server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from medimg.serving.v2 import (
    HEADER_LENGTH,
    ProtocolError,
    RequestedOutput,
    datatype_of,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

RNG = np.random.default_rng(7)
ARRAYS = {
    "fp32": RNG.standard_normal((3, 1, 4, 5)).astype(np.float32),
    "fp64": RNG.standard_normal((2, 3)),
    "fp16": RNG.standard_normal((4,)).astype(np.float16),
    "int64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
    "uint8": np.arange(250, 256, dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary):
    body, length = encode_request(ARRAYS, binary=binary, request_id="r1")
    assert (length is not None) == binary
    request = decode_request(body, length)
    assert list(request.inputs) == list(ARRAYS) and request.id == "r1"
    for name, array in ARRAYS.items():
        got = request.inputs[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
    assert request.outputs is None and request.binary_data_output is binary


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip(binary):
    body, length = encode_response("m", "3", ARRAYS, {n: binary for n in ARRAYS}, "r2", {"onnx_sha256": "ab"})
    response = decode_response(body, length)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "r2")
    assert response.parameters == {"onnx_sha256": "ab"}
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(response.outputs[name], array)
        assert response.outputs[name].dtype == array.dtype


def _triton_request(arrays: dict[str, np.ndarray], binary: bool, outputs=None):
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype_of(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, None)


@pytest.mark.parametrize("binary", [True, False])
def test_decodes_what_tritonclient_sends(binary):
    arrays = {k: v for k, v in ARRAYS.items() if k != "empty"}
    body, length = _triton_request(arrays, binary)
    request = decode_request(body, length)
    for name, array in arrays.items():
        np.testing.assert_array_equal(request.inputs[name], array)
    assert request.outputs is None and request.binary_data_output  # tritonclient asks binary when naming none
    assert request.wants_binary("anything")

    named = [httpclient.InferRequestedOutput("logits", binary_data=False), httpclient.InferRequestedOutput("p")]
    body, length = _triton_request({"x": ARRAYS["fp32"]}, binary, named)
    request = decode_request(body, length)
    assert request.outputs == (RequestedOutput("logits", False), RequestedOutput("p", True))
    assert not request.wants_binary("logits") and request.wants_binary("p") and not request.wants_binary("other")


def test_tritonclient_reads_what_we_send():
    outputs = {"logits": ARRAYS["fp32"], "probabilities": ARRAYS["fp64"], "abnormal": ARRAYS["bool"]}
    body, length = encode_response("m", "1", outputs, {"logits": True, "probabilities": False, "abnormal": True})
    result = httpclient.InferResult.from_response_body(body, header_length=length)
    for name, array in outputs.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)
    assert result.get_response()["model_version"] == "1"


def _json(document: dict) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"not json", None, "not JSON"),
        (_json({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}), None, "BYTES"),
        (_json({"inputs": [{"name": "x", "shape": [2], "datatype": "FP8", "data": [1, 2]}]}), None, "unknown datatype"),
        (_json({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}), None, "2 data elements"),
        (_json({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}), None, "no data"),
        (_json({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}), None, "negative"),
        (_json({"outputs": []}), None, "inputs"),
        (
            _json({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}),
            None,
            "needs 8 bytes",
        ),
        (
            _json({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}),
            None,
            "short of its binary data",
        ),
        (
            _json(
                {
                    "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                    "outputs": [{"name": "y", "parameters": {"classification": 2}}],
                }
            ),
            None,
            "classification",
        ),
        (
            _json(
                {
                    "inputs": [
                        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                    ]
                }
            ),
            None,
            "given twice",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_reason(body, length, message):
    with pytest.raises(ProtocolError, match=message):
        decode_request(body, length)


def test_trailing_bytes_and_a_bad_header_length_are_refused():
    body, length = encode_request({"x": ARRAYS["fp32"]})
    assert length is not None
    with pytest.raises(ProtocolError, match="after the last binary input"):
        decode_request(body + b"\0\0\0\0", length)
    with pytest.raises(ProtocolError, match=HEADER_LENGTH):
        decode_request(body, len(body) + 1)


def test_no_datatype_for_strings():
    with pytest.raises(ProtocolError, match="no v2 datatype"):
        datatype_of(np.array(["a"]))
