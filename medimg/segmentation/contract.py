"""The segmentation contract as it goes into ONNX metadata, back into a config, and into the network's input.

A segmentation model's ``medimg.preprocessing`` is the 3D contract of :func:`medimg.volume_contract.contract`
(orientation, intensity rule, percentiles, CT window, quantisation, scale, normalisation, channels) with the
keys that make it a segmentation contract (:mod:`medimg.segmentation.geometry` is their definition):

* ``task``: ``segmentation``;
* ``shape``: the stored ``(z, y, x)`` grid every training case was centred in (``preprocess.volume.shape``),
  replacing the classification cube's ``[size, size, size]``;
* ``pad_multiple``: a volume to predict is zero-padded, centred, up to multiples of it on every axis;
* ``spacing`` null, ``resampling`` and ``resize_policy`` saying there is none: the network sees the input's own
  voxels, so the mask lies on them;
* ``fit``: the padding rule and its inverse; ``order``: the steps in order.

A consumer without medimg rebuilds the input from these keys alone: orient, map the intensity to uint8, pad,
then :func:`network_input` (``x / 255``, ``(x - mean) / std``, repeated to ``channels``; numpy float32, so no
torch is needed).
"""

from __future__ import annotations

import numpy as np

from medimg import volume_contract
from medimg.config import PreprocessConfig

TASK = "segmentation"
NO_RESAMPLING = (
    "none: no spacing change and no resize; the network sees the input's own voxels, so the mask lies on them"
)
FIT_RULE = (
    "predict: each axis of the oriented uint8 volume zero-padded, centred, up to a multiple of pad_multiple "
    "(offset (padded - n) // 2, the extra voxel at the end), never cropped; training: centred in shape (padded or "
    "cropped). The mask is the arg-max over the K logits on that grid, the source's region of it taken back "
    "through the inverse orientation"
)
ORDER = ["orientation", "intensity", "quantise", "pad", "scale", "normalise"]


def contract(config: PreprocessConfig) -> dict:
    """The JSON-serialisable segmentation contract (module docstring) for ``config``.

    ``ValueError`` when ``config`` is not a 3D contract with a stored ``preprocess.volume.shape`` and no
    target spacing (what ``task.kind: segmentation`` requires, :func:`medimg.config._segmentation_agrees`).
    """
    vol = config.volume
    if config.dims != 3 or vol.shape is None or vol.spacing is not None:
        raise ValueError(
            "a segmentation contract needs preprocess.dims 3, preprocess.volume.shape and no preprocess.volume.spacing"
        )
    return {
        **volume_contract.contract(config),
        "task": TASK,
        "shape": list(vol.shape),
        "stored_shape": list(vol.shape),
        "pad_multiple": vol.pad_multiple,
        "spacing": None,
        "resampling": NO_RESAMPLING,
        "resize_policy": config.resize,  # kept so volume_contract.config_from_contract reads it; not applied
        "fit": FIT_RULE,
        "order": ORDER,
    }


def is_segmentation_contract(data: dict) -> bool:
    """True for a contract :func:`contract` wrote (``task: segmentation``)."""
    return data.get("task") == TASK


def config_from_contract(data: dict) -> PreprocessConfig:
    """The :class:`PreprocessConfig` a segmentation contract describes (``volume.shape``, ``pad_multiple`` included).

    ``KeyError`` / ``ValueError`` for a contract without those keys.
    """
    base = volume_contract.config_from_contract(data)
    volume = base.volume.model_copy(
        update={"shape": tuple(int(n) for n in data["shape"]), "pad_multiple": int(data["pad_multiple"])}
    )
    return PreprocessConfig.model_validate({**base.model_dump(), "volume": volume.model_dump()})


def network_input(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 ``[N, D, H, W]`` (or one ``[D, H, W]``) volumes on the network's grid -> float32 ``[N, C, D, H, W]``.

    ``x / 255``, then ``(x - mean) / std``, repeated to ``config.channels``, in float32 (the same numbers as
    :func:`medimg.volume_contract.apply`, without its cube). ``ValueError`` for another dtype or rank.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"network_input takes uint8 volumes, got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"network_input takes [N, D, H, W] volumes, got shape {images.shape}")
    x = images.astype(np.float32)[:, None] / np.float32(255.0)
    x = (x - np.float32(config.mean)) / np.float32(config.std)
    if config.channels == 3:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)
