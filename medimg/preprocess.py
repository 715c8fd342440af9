"""The preprocessing contract: one definition used by training, evaluation, export and prediction.

``contract`` is what goes into ONNX metadata; ``apply`` is the only implementation of it in
medimg. A consumer without medimg reproduces it from the metadata: grey uint8 pixels, resized
to ``size`` x ``size`` (bilinear), scaled to [0, 1], then ``(x - mean) / std``, repeated to
``channels``, laid out NCHW float32.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from medimg.config import PreprocessConfig

CONTRACT_VERSION = 1


def contract(config: PreprocessConfig) -> dict:
    return {
        "version": CONTRACT_VERSION,
        "input_dtype": "uint8 grey",
        "size": config.size,
        "resize": "bilinear, no antialias, aspect ratio not kept",
        "scale": "x / 255",
        "mean": config.mean,
        "std": config.std,
        "channels": config.channels,
        "layout": "NCHW float32",
    }


def contract_hash(config: PreprocessConfig) -> str:
    return hashlib.sha256(json.dumps(contract(config), sort_keys=True).encode()).hexdigest()[:16]


def apply(images: np.ndarray | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 ``[N, H, W]`` grey images -> normalised float32 ``[N, C, size, size]``."""
    x = torch.as_tensor(images)
    if x.ndim == 2:
        x = x[None]
    x = x.to(torch.float32).unsqueeze(1) / 255.0
    if x.shape[-2:] != (config.size, config.size):
        x = F.interpolate(x, size=(config.size, config.size), mode="bilinear", align_corners=False, antialias=False)
    x = (x - config.mean) / config.std
    if config.channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x
