"""ONNX export with a parity check and self-describing metadata.

The exported file is one self-contained ONNX model with a dynamic batch axis, for images
(``[N, C, H, W]``) or volumes (``[N, C, D, H, W]``, ``preprocess.dims: 3``; MONAI's ResNet exports
with the dynamo exporter at opset 18 as it is). Its
``metadata_props`` hold everything a consumer needs without medimg: class labels, the task kind,
the abnormal classes, what the output means, the decision threshold, the preprocessing contract,
the input name and layout, the inputs it may be given (``medimg.input_checks``: the validation
limits its training data passed; ``medimg.modalities`` and, when known, ``medimg.body_part``: what
it is for; enforced by :mod:`medimg.input_checks`), and the lineage keys (data version, git
commit, code hash, MLflow run), under the ``META_*`` keys of :mod:`medimg.artifacts`. No
patient-level value is ever written there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """The exported model is invalid or does not match PyTorch."""


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime vs PyTorch on the same inputs: max |logit difference|, whether argmax labels agree, tolerance,
    provider.
    """

    n_images: int
    max_abs_diff: float
    labels_identical: bool
    atol: float
    provider: str

    @property
    def passed(self) -> bool:
        """Labels identical and the max absolute logit difference within ``atol``."""
        return self.labels_identical and self.max_abs_diff <= self.atol

    def to_json(self) -> dict:
        """The fields plus ``passed``, as a JSON-ready dict."""
        return {**self.__dict__, "passed": self.passed}


def export(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    metadata: dict[str, object],
    spatial_multiple: int | None = None,
) -> Path:
    """Export ``model`` (eval mode) to ONNX at ``path`` with the dynamo exporter and return ``path``.

    ``example``: an input batch ``[N, C, H, W]`` (images) or ``[N, C, D, H, W]`` (volumes) float32 (its
    first two items trace the graph; the batch dimension stays dynamic, the others are fixed).
    ``spatial_multiple`` (segmentation): the spatial axes are dynamic too, any multiple of it (the
    ONNX input is ``[batch, C, m*dz, m*dy, m*dx]``, the output ``[batch, K, m*dz, m*dy, m*dx]``), so one
    file segments volumes of every size once padded (:func:`medimg.segmentation.geometry.padded_shape`);
    the example's spatial sizes must be multiples of it.
    ``metadata``: written as the file's metadata_props (values as str), replacing any the exporter wrote.
    ``RuntimeError`` when the exporter gives no program.
    """
    model = model.eval()
    axes: dict[int, object] = {0: torch.export.Dim("batch")}
    if spatial_multiple is not None:
        axes.update(
            {axis: spatial_multiple * torch.export.Dim(f"d{name}") for axis, name in zip((2, 3, 4), "zyx", strict=True)}
        )
    program = torch.onnx.export(
        model,
        (example[:2],),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(axes,),
        dynamo=True,
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    if program is None:  # only the legacy exporter (dynamo=False) returns None
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path}: onnx.checker rejected the exported model: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The ONNX file's metadata_props as a dict (external data is not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def session(path: Path):
    """An ONNX Runtime session on CUDA where available, else on the CPU."""
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), providers=providers)


def onnx_logits(sess, x: np.ndarray, batch_size: int = 256, input_name: str = INPUT_NAME) -> np.ndarray:
    """The session's logits for ``x``, run ``batch_size`` images at a time (bounded memory)."""
    return np.concatenate(
        [sess.run([OUTPUT_NAME], {input_name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    )


def check_parity(model: nn.Module, path: Path, x: torch.Tensor, atol: float, batch_size: int = 16) -> ParityReport:
    """Compare ONNX Runtime logits with PyTorch's on the same (real) inputs ``[N, C, ...]``.

    Both run ``batch_size`` items at a time (64 volumes of 64^3 at once would need gigabytes).
    """
    sess = session(path)
    model = model.eval()
    with torch.no_grad():
        expected = np.concatenate([model(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)])
    actual = onnx_logits(sess, x.numpy().astype(np.float32), batch_size)
    return ParityReport(
        n_images=len(x),
        max_abs_diff=float(np.max(np.abs(expected - actual))),
        labels_identical=bool(np.array_equal(expected.argmax(1), actual.argmax(1))),
        atol=atol,
        provider=sess.get_providers()[0],
    )
