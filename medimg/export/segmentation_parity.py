"""PyTorch against ONNX Runtime for a segmentation network: voxel agreement of the arg-max masks, max |logit diff|.

Two float32 runtimes sum convolutions in different orders, so a voxel whose two best logits are
within rounding of each other can take either label: identical masks cannot be promised, the
share of voxels with the same label can. A segmentation export passes when that share is at least
:data:`MIN_VOXEL_AGREEMENT` on every case given and the largest absolute logit difference is
within the tolerance relative to the logits' size: ``export.parity_atol x max(1, max |logit|)``.
Rounding grows with the numbers rounded, and a trained U-Net's per-voxel logits reach tens (a
60-step network on hippocampus already differs by about 2e-4 between PyTorch and ONNX Runtime on
the CPU, above the 1e-4 the classification heads meet in absolute terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medimg.export.onnx_export import onnx_logits, session

#: The least share of voxels whose arg-max labels agree between PyTorch and ONNX Runtime, per case.
MIN_VOXEL_AGREEMENT = 0.999


@dataclass(frozen=True)
class SegmentationParityReport:
    """ONNX Runtime vs PyTorch on the same volumes ``[N, C, D, H, W]``.

    ``voxel_agreement``: the lowest, over the cases, share of voxels with the same arg-max label
    (1.0: identical masks); ``labels_identical``: every voxel of every case agrees; ``max_abs_diff``:
    the largest |logit difference| anywhere; ``logit_scale``: the largest |logit| of PyTorch's;
    ``shapes``: the spatial grids checked (the stored grid, and others to show the spatial axes are dynamic).
    """

    n_images: int
    max_abs_diff: float
    voxel_agreement: float
    labels_identical: bool
    atol: float
    provider: str
    shapes: tuple[tuple[int, int, int], ...]
    logit_scale: float

    @property
    def tolerance(self) -> float:
        """The bound on max |logit difference|: ``atol x max(1, logit_scale)``."""
        return self.atol * max(1.0, self.logit_scale)

    @property
    def passed(self) -> bool:
        """Voxel agreement at least :data:`MIN_VOXEL_AGREEMENT` and max |logit difference| within :attr:`tolerance`."""
        return self.voxel_agreement >= MIN_VOXEL_AGREEMENT and self.max_abs_diff <= self.tolerance

    def to_json(self) -> dict:
        """The fields plus ``passed`` and ``min_voxel_agreement``, as a JSON-ready dict."""
        return {
            **self.__dict__,
            "shapes": [list(s) for s in self.shapes],
            "min_voxel_agreement": MIN_VOXEL_AGREEMENT,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def check_segmentation_parity(
    model: nn.Module, path: Path, volumes: list[np.ndarray], atol: float
) -> SegmentationParityReport:
    """Compare ONNX Runtime's logits ``[1, K, D, H, W]`` with PyTorch's, one volume at a time.

    ``volumes``: network inputs float32 ``[1, C, D, H, W]`` (real cases; they may differ in shape, which
    checks the file's dynamic spatial axes). ``ValueError`` when none is given.
    """
    if not volumes:
        raise ValueError("segmentation parity needs at least one volume")
    sess = session(path)
    model = model.eval()
    worst_agreement, worst_diff, identical, scale = 1.0, 0.0, True, 0.0
    shapes: list[tuple[int, int, int]] = []
    for x in volumes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        actual = onnx_logits(sess, x, batch_size=1)
        same = expected.argmax(1) == actual.argmax(1)
        worst_agreement = min(worst_agreement, float(same.mean()))
        worst_diff = max(worst_diff, float(np.max(np.abs(expected - actual))))
        scale = max(scale, float(np.max(np.abs(expected))))
        identical = identical and bool(same.all())
        d, h, w = x.shape[2:]
        if (d, h, w) not in shapes:
            shapes.append((int(d), int(h), int(w)))
    return SegmentationParityReport(
        n_images=len(volumes),
        max_abs_diff=worst_diff,
        voxel_agreement=worst_agreement,
        labels_identical=identical,
        atol=atol,
        provider=sess.get_providers()[0],
        shapes=tuple(shapes),
        logit_scale=scale,
    )
