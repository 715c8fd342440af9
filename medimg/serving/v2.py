"""The Open Inference Protocol v2 (KServe / Triton) inference messages, JSON and binary, to and from numpy. Pure.

Request (``POST /v2/models/{name}/infer``)::

    {"id": "...", "parameters": {...},
     "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                 "data": [...] | "parameters": {"binary_data_size": 3136}}],
     "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]}

Response::

    {"model_name": "...", "model_version": "3", "id": "...", "parameters": {...},
     "outputs": [{"name": "logits", "shape": [1, 2], "datatype": "FP32",
                  "data": [...] | "parameters": {"binary_data_size": 8}}]}

``data`` is the tensor's elements in row-major order (flat or nested). The binary tensor data
extension, which ``tritonclient.http`` uses by default, puts the JSON first and the raw
little-endian bytes of each binary tensor after it, in the order of the tensors that have
``binary_data_size``; the header ``Inference-Header-Content-Length`` (:data:`HEADER_LENGTH`) gives
the JSON's length in bytes. Without it the whole body is JSON. Outputs are returned as binary data
when their ``outputs`` entry asks (``parameters.binary_data``), or, when the request names no
outputs, when its ``parameters.binary_data_output`` is true (what tritonclient sends then).

Datatypes: ``BOOL``, ``INT8``..``INT64``, ``UINT8``..``UINT64``, ``FP16``, ``FP32``, ``FP64``
(:data:`DATATYPES`). ``BYTES`` and ``BF16`` tensors, the ``classification`` output parameter
and anything malformed are refused with :class:`ProtocolError`, whose message says why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

#: The HTTP header that gives the JSON part's length in bytes when binary tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: v2 datatype -> numpy dtype (little-endian, the byte order of the binary extension).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
#: Parameter values the protocol allows (``$parameter``): a string, a number or a boolean.
Parameter = str | int | float | bool


class ProtocolError(ValueError):
    """A message that is not valid v2, or uses what this codec does not support; the message says which."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _TensorJSON(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class _RequestedOutputJSON(_Message):
    name: str
    parameters: dict[str, Any] | None = None


class _RequestJSON(_Message):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_TensorJSON]
    outputs: list[_RequestedOutputJSON] | None = None


class _ResponseJSON(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_TensorJSON]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request asks for by ``name``, as binary data or JSON (``binary``)."""

    name: str
    binary: bool = False


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded request: ``inputs`` name -> array (in request order), ``outputs`` the outputs asked for
    (``None``: all, as binary data when ``binary_data_output``), ``id``, ``parameters``."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_data_output: bool = False
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data."""
        if self.outputs is None:
            return self.binary_data_output
        return any(o.name == name and o.binary for o in self.outputs)


@dataclass(frozen=True)
class InferenceResponse:
    """A decoded response: ``outputs`` name -> array (in response order) and the model it names."""

    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of ``array``'s dtype; :class:`ProtocolError` for one without (strings, objects, complex)."""
    for name, dtype in DATATYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            return name
    raise ProtocolError(f"no v2 datatype for numpy dtype {array.dtype}")


def _dtype(datatype: str, where: str) -> np.dtype:
    if datatype in DATATYPES:
        return DATATYPES[datatype]
    if datatype in ("BYTES", "BF16"):
        raise ProtocolError(f"{where}: datatype {datatype} is not supported (numeric tensors only)")
    raise ProtocolError(f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")


def _count(shape: Sequence[int], where: str) -> int:
    if any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: shape {list(shape)} has a negative dimension")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _split(body: bytes, header_length: int | None) -> tuple[dict, memoryview]:
    """(the JSON document, the binary part after it)."""
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length} is outside the body of {len(body)} bytes")
    try:
        document = json.loads(bytes(body[:header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the JSON part is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the JSON part must be an object")
    return document, memoryview(body)[header_length:]


def _tensor(entry: _TensorJSON, binary: memoryview, offset: int, where: str) -> tuple[np.ndarray, int]:
    """(the tensor of one JSON entry, the offset after its binary data)."""
    where = f"{where} {entry.name!r}"
    dtype = _dtype(entry.datatype, where)
    count = _count(entry.shape, where)
    size = (entry.parameters or {}).get("binary_data_size")
    if size is not None:
        if entry.data is not None:
            raise ProtocolError(f"{where}: both data and binary_data_size given")
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise ProtocolError(
                f"{where}: binary_data_size {size!r} but shape {entry.shape} of {entry.datatype} needs "
                f"{count * dtype.itemsize} bytes"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"{where}: the body ends {offset + size - len(binary)} bytes short of its binary data")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(entry.shape)
        return array.astype(dtype.newbyteorder("="), copy=True), offset + size
    if entry.data is None:
        raise ProtocolError(f"{where}: no data and no binary_data_size")
    try:
        array = np.asarray(entry.data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(f"{where}: data is not an array of {entry.datatype}: {err}") from None
    if array.size != count:
        raise ProtocolError(f"{where}: {array.size} data elements for shape {entry.shape} ({count} elements)")
    return array.reshape(entry.shape).astype(dtype.newbyteorder("="), copy=False), offset


def _parse(model: type[BaseModel], document: dict, what: str) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in err.errors()[:5])
        raise ProtocolError(f"not a v2 {what}: {problems}") from None


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """An inference request from its HTTP body and ``Inference-Header-Content-Length`` (``None``: all JSON).

    :class:`ProtocolError` for invalid JSON, a missing field, an unsupported datatype, data that does
    not fit its shape, binary data that does not add up to the body, an input named twice, or the
    ``classification`` extension.
    """
    document, binary = _split(body, header_length)
    request: _RequestJSON = _parse(_RequestJSON, document, "inference request")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in request.inputs:
        if entry.name in inputs:
            raise ProtocolError(f"input {entry.name!r} given twice")
        inputs[entry.name], offset = _tensor(entry, binary, offset, "input")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the last binary input")
    outputs = None
    if request.outputs is not None:
        requested = []
        for out in request.outputs:
            parameters = out.parameters or {}
            if parameters.get("classification"):
                raise ProtocolError(f"output {out.name!r}: the classification extension is not supported")
            requested.append(RequestedOutput(out.name, bool(parameters.get("binary_data", False))))
        outputs = tuple(requested)
    parameters = dict(request.parameters or {})
    return InferenceRequest(
        inputs=inputs,
        outputs=outputs,
        binary_data_output=bool(parameters.get("binary_data_output", False)),
        id=request.id,
        parameters=parameters,
    )


def _encode(tensors: Mapping[str, np.ndarray], binary: Mapping[str, bool]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(JSON tensor entries, binary chunks in entry order)."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in tensors.items():
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary.get(name, False):
            raw = np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    return entries, chunks


def _body(document: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    head = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def encode_response(
    model_name: str,
    model_version: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool],
    request_id: str | None = None,
    parameters: Mapping[str, Parameter] | None = None,
) -> tuple[bytes, int | None]:
    """(the HTTP body, the ``Inference-Header-Content-Length`` to send, ``None`` when the body is all JSON).

    ``binary`` says per output name whether it goes as binary data. :class:`ProtocolError` for an
    array without a v2 datatype.
    """
    entries, chunks = _encode(outputs, binary)
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = dict(parameters)
    document["outputs"] = entries
    return _body(document, chunks)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    binary: bool = True,
    outputs: Sequence[RequestedOutput] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Parameter] | None = None,
) -> tuple[bytes, int | None]:
    """A request body (and its ``Inference-Header-Content-Length``) for ``inputs``, all binary or all JSON.

    Without ``outputs`` every output is asked for, as binary data when ``binary`` (tritonclient's way).
    """
    entries, chunks = _encode(inputs, {name: binary for name in inputs})
    document: dict[str, Any] = {}
    if request_id is not None:
        document["id"] = request_id
    merged: dict[str, Any] = dict(parameters or {})
    if outputs is None and binary:
        merged["binary_data_output"] = True
    if merged:
        document["parameters"] = merged
    document["inputs"] = entries
    if outputs is not None:
        document["outputs"] = [{"name": o.name, "parameters": {"binary_data": o.binary}} for o in outputs]
    return _body(document, chunks)


def decode_response(body: bytes, header_length: int | None = None) -> InferenceResponse:
    """An inference response from its HTTP body and ``Inference-Header-Content-Length``; :class:`ProtocolError`
    when it is not one."""
    document, binary = _split(body, header_length)
    response: _ResponseJSON = _parse(_ResponseJSON, document, "inference response")
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in response.outputs:
        outputs[entry.name], offset = _tensor(entry, binary, offset, "output")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the last binary output")
    return InferenceResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        outputs=outputs,
        id=response.id,
        parameters=dict(response.parameters or {}),
    )
