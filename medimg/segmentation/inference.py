"""Segmentation inference: stored uint8 volumes onto the network's input, and voxel class probabilities out.

The network's input half of the segmentation contract (issue 14 design): a uint8 volume on the network's
grid (:mod:`medimg.segmentation.geometry`: the stored ``preprocess.volume.shape``, or padded to multiples of
``preprocess.volume.pad_multiple`` to predict) is scaled ``x / 255``, normalised ``(x - mean) / std`` and given
``preprocess.channels`` identical channels: float32 ``[N, C, D, H, W]``. Unlike
:func:`medimg.volume_contract.apply` it takes any ``D, H, W`` (multiples of the pad multiple), not a cube.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medimg.config import PreprocessConfig


def to_tensor(images: np.ndarray | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 ``[N, D, H, W]`` (or one ``[D, H, W]``) -> normalised float32 ``[N, C, D, H, W]`` (``C`` =
    ``config.channels``).

    ``ValueError`` for a dtype other than uint8, another rank, or ``D, H, W`` not multiples of
    ``config.volume.pad_multiple`` (the U-Net's poolings must divide them).
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"segmentation inputs are uint8 volumes, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    multiple = config.volume.pad_multiple
    if x.ndim != 4 or any(n % multiple for n in x.shape[1:]):
        raise ValueError(
            f"segmentation inputs are [N, D, H, W] with D, H, W multiples of preprocess.volume.pad_multiple "
            f"({multiple}), got {tuple(x.shape)}: fit them first (medimg.segmentation.geometry)"
        )
    x = (x.to(torch.float32).unsqueeze(1) / 255.0 - config.mean) / config.std
    if config.channels == 3:
        x = x.expand(-1, 3, -1, -1, -1).contiguous()
    return x


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, images: np.ndarray, config: PreprocessConfig, batch_size: int = 4
) -> np.ndarray:
    """Voxel class probabilities float32 ``[N, K, D, H, W]`` (softmax over the ``K`` labels of the logits) of
    uint8 volumes ``[N, D, H, W]`` (:func:`to_tensor`), ``batch_size`` volumes at a time on the model's device.

    The predicted label map is ``probabilities.argmax(1)``.
    """
    model.eval()
    device = next(model.parameters()).device
    x = to_tensor(images, config)
    out = [
        torch.softmax(model(x[i : i + batch_size].to(device)).float(), dim=1).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy()
