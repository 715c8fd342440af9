"""A Triton / KServe model configuration (``config.pbtxt``) for a medimg ONNX model: pure text from typed specs.

Triton Inference Server (and KServe's Triton runtime) read a model repository laid out as
``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/<version>/model.onnx``. The configuration is
the protobuf text format of Triton's ``inference.ModelConfig`` (``model_config.proto`` in
triton-inference-server/common); the fields written here:

* ``platform: "onnxruntime_onnx"``;
* ``max_batch_size`` > 0, so ``dims`` leave out the batch dimension (Triton adds it);
* ``input`` / ``output``: the ONNX graph's tensor names, ``TYPE_FP32`` and their dims, ``-1`` for a
  dimension the graph leaves open;
* ``version_policy: { specific: { versions: [N] } }``: Triton serves exactly the version that was
  pulled (the champion), not the highest number in the folder, so a rollback to an older version
  is served as such;
* ``dynamic_batching`` with a short queue delay;
* ``parameters``: the registered name, version and ONNX sha256, so a running server names the file
  it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ONNX tensor element types that medimg models use, as Triton data types.
TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, Triton data type (``TYPE_FP32``) and dims without the batch axis
    (``-1`` where the graph's dimension is symbolic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def tensor_spec(name: str, onnx_type: str, shape: list[int | str | None]) -> TensorSpec:
    """A :class:`TensorSpec` from an ONNX Runtime ``NodeArg`` (name, type, shape ``[batch, ...]``).

    Raises ``ValueError`` for a type Triton's ONNX backend cannot carry here or a tensor without a
    batch axis.
    """
    if onnx_type not in TRITON_TYPES:
        raise ValueError(f"tensor {name!r} has type {onnx_type}, which the Triton layout does not map")
    if len(shape) < 1:
        raise ValueError(f"tensor {name!r} has no batch axis; medimg models are batched [N, ...]")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
    return TensorSpec(name, TRITON_TYPES[onnx_type], dims)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensors(kind: str, specs: tuple[TensorSpec, ...]) -> list[str]:
    lines = [f"{kind} ["]
    for i, spec in enumerate(specs):
        sep = "," if i < len(specs) - 1 else ""
        lines += [
            "  {",
            f'    name: "{spec.name}"',
            f"    data_type: {spec.data_type}",
            f"    dims: {_dims(spec.dims)}",
            "  }" + sep,
        ]
    lines.append("]")
    return lines


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(
    model_name: str,
    version: int,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    onnx_sha256: str,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 500,
) -> str:
    """The ``config.pbtxt`` text (see the module docstring). ``version`` is the registry version number.

    Raises ``ValueError`` for a version < 1, no inputs or outputs, or ``max_batch_size`` < 1.
    """
    if version < 1:
        raise ValueError(f"Triton version folders are numbers >= 1, got {version}")
    if not inputs or not outputs:
        raise ValueError("a model configuration needs at least one input and one output")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    lines = [
        f"name: {_quoted(model_name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
        *_tensors("input", inputs),
        *_tensors("output", outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
    ]
    for key, value in (
        ("medimg.model_name", model_name),
        ("medimg.version", str(version)),
        ("medimg.onnx_sha256", onnx_sha256),
    ):
        lines.append(f"parameters {{ key: {_quoted(key)} value: {{ string_value: {_quoted(value)} }} }}")
    return "\n".join(lines) + "\n"
