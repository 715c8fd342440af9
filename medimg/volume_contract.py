"""The 3D preprocessing contract: volume -> stored uint8 cube -> NCDHW tensor, one definition.

Used when ``preprocess.dims`` is 3 (``params.yaml``); :mod:`medimg.preprocess` hands its
:func:`~medimg.preprocess.contract`, :func:`~medimg.preprocess.apply` calls here for such a
contract, so ingest, training, evaluation, export, prediction and the ONNX metadata share it.

Two halves, like the 2D contract:

1. **Volume -> uint8 ``[S, S, S]``** (:func:`prepare_volume`, ``S = preprocess.size``), run once
   at ingest (the stored ``.npy``) and by ``medimg predict`` on new volumes:

   a. *Orientation*: ``preprocess.volume.orientation: RAS`` flips/transposes the array (no
      resampling; :func:`medimg.data.volumes.reoriented`) so that its axes (0, 1, 2) increase towards
      (S, A, R): for a NIfTI file, nibabel's ``as_closest_canonical`` array transposed to (k, j, i).
      ``source`` keeps the array as read.
   b. *Intensity* onto [0, 1] in float32 (``preprocess.intensity``): ``auto`` windows CT in HU
      (``preprocess.ct_window`` [level, width], default 40/400: ``clip((v - (L - W/2)) / W, 0, 1)``),
      maps a volume that is already uint8 (MedMNIST 3D) by ``v / 255``, and maps every other
      modality (MR, PT, unknown) by its own percentiles (``preprocess.percentiles`` over all
      voxels, numpy ``percentile`` linear): ``clip((v - lo) / (hi - lo), 0, 1)``, 0 when
      ``hi <= lo``; ``minmax`` and ``percentile`` apply one rule to every volume.
   c. *Spacing* (``preprocess.volume.spacing``, mm along the array axes): when set, the volume is
      resampled to ``round(n * spacing / target)`` voxels per axis (at least 1).
   d. *Size* to ``S`` per axis: ``preprocess.resize`` ``stretch`` (per-axis scale), ``pad``
      (centred in a zero cube of the longest side; the extra voxel at the end), ``crop``
      (centred cube of the shortest side; the extra voxel dropped at the end), then resampled.
   e. ``uint8 = clip(rint(v * 255), 0, 255)`` (round half to even).

   Resampling (c, d) is separable, one axis at a time in the order 0, 1, 2, float32, by
   ``preprocess.volume.interpolation``: ``trilinear`` samples ``s = max((d + 0.5) * n_in / n_out -
   0.5, 0)`` between ``floor(s)`` and ``min(floor(s) + 1, n_in - 1)`` with weights ``1 - t``,
   ``t`` (half-pixel centres, PyTorch ``F.interpolate(mode="trilinear", align_corners=False)``);
   ``nearest`` takes ``min(floor(d * n_in / n_out), n_in - 1)`` (PyTorch ``nearest``); ``area``
   averages the input voxels under each output voxel, weighted by overlap (a box filter; the
   antialiased choice for large reductions).
2. **uint8 ``[N, S, S, S]`` -> float32 ``[N, C, S, S, S]``** (:func:`apply`): ``x / 255``,
   ``(x - mean) / std``, repeated to ``channels``: layout NCDHW.

A consumer without medimg reproduces both halves from the ONNX metadata (``medimg.preprocess``,
:func:`contract`): ``examples/consumer_3d.py`` does it with numpy and nibabel only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medimg.config import PreprocessConfig

if TYPE_CHECKING:
    import torch

    from medimg.data.volumes import Volume

CONTRACT_VERSION_3D = 1
#: Array axes (0, 1, 2) of an oriented volume with ``orientation: RAS``: towards superior, anterior, right.
RAS_AXCODES = ("S", "A", "R")
DEFAULT_CT_WINDOW = (40.0, 400.0)

INTENSITY_3D = {
    "auto": "CT: clip((v - (level - width / 2)) / width, 0, 1) with preprocess ct_window (default level 40, width "
    "400 HU); a uint8 volume (MedMNIST 3D): v / 255; any other modality: lo, hi = percentiles of all voxels "
    "(numpy linear), clip((v - lo) / (hi - lo), 0, 1), 0 when hi <= lo",
    "minmax": "every volume: (v - min) / (max - min), 0 for a constant volume",
    "percentile": "every volume: lo, hi = percentiles of all voxels, clip((v - lo) / (hi - lo), 0, 1)",
}
RESAMPLING_3D = {
    "trilinear": "separable, axes 0, 1, 2 in turn, float32: s = max((d + 0.5) * n_in / n_out - 0.5, 0); "
    "neighbours floor(s) and min(floor(s) + 1, n_in - 1), weights 1 - t and t, t = s - floor(s)",
    "nearest": "separable: index min(floor(d * n_in / n_out), n_in - 1)",
    "area": "separable: each output voxel d averages input voxels over [d * n_in / n_out, (d + 1) * n_in / n_out), "
    "weighted by overlap",
}


def contract(config: PreprocessConfig) -> dict:
    """The JSON-serialisable 3D contract that goes into ONNX metadata and is hashed into manifests."""
    vol = config.volume
    return {
        "version": CONTRACT_VERSION_3D,
        "dims": 3,
        "input_dtype": "uint8 grey volume",
        "size": config.size,
        "shape": [config.size] * 3,
        "orientation": vol.orientation,
        "orientation_rule": "array axes (0, 1, 2) point towards (S, A, R): nibabel as_closest_canonical, "
        "array transposed to (k, j, i)"
        if vol.orientation == "RAS"
        else "as read from the source",
        "spacing": list(vol.spacing) if vol.spacing is not None else None,
        "interpolation": vol.interpolation,
        "resampling": RESAMPLING_3D[vol.interpolation],
        "resize_policy": config.resize,
        "intensity": config.intensity,
        "intensity_rule": INTENSITY_3D[config.intensity],
        "percentiles": list(config.percentiles),
        "ct_window": list(config.ct_window) if config.ct_window is not None else list(DEFAULT_CT_WINDOW),
        "quantise": "uint8 = clip(rint(v * 255), 0, 255), round half to even",
        "scale": "x / 255",
        "mean": config.mean,
        "std": config.std,
        "channels": config.channels,
        "layout": "NCDHW float32",
        "order": ["orientation", "intensity", "spacing", "resize_policy", "resize", "quantise", "scale", "normalise"],
    }


def config_from_contract(data: dict) -> PreprocessConfig:
    """The :class:`PreprocessConfig` a 3D contract (:func:`contract`, e.g. from ONNX metadata) describes."""
    return PreprocessConfig(
        dims=3,
        size=data["size"],
        resize=data["resize_policy"],
        intensity=data["intensity"],
        percentiles=tuple(data["percentiles"]),
        ct_window=tuple(data["ct_window"]),
        channels=data["channels"],
        mean=data["mean"],
        std=data["std"],
        volume={
            "orientation": data["orientation"],
            "spacing": tuple(data["spacing"]) if data.get("spacing") else None,
            "interpolation": data["interpolation"],
        },
    )


# --------------------------------------------------------------------------- volume -> uint8 cube


def prepare_volume(volume: Volume, config: PreprocessConfig) -> np.ndarray:
    """A :class:`~medimg.data.volumes.Volume` -> the stored uint8 ``[S, S, S]`` of the contract (module docstring).

    Raises ``ValueError`` for a contract that is not 3D.
    """
    from medimg.data.volumes import reoriented  # here: nibabel only where volumes are read

    _check_3d(config)
    if config.volume.orientation == "RAS":
        volume = reoriented(volume, RAS_AXCODES)
    unit = intensity_unit(volume.voxels, volume.modality, config)
    return _to_cube(unit, volume.spacing, config)


def prepare_array(voxels: np.ndarray, config: PreprocessConfig, spacing: tuple[float, float, float] | None = None):
    """A uint8 ``[D, H, W]`` volume without geometry (MedMNIST 3D) -> the stored uint8 ``[S, S, S]``.

    The array is taken as oriented; ``preprocess.volume.spacing`` needs ``spacing`` (ValueError otherwise).
    A volume already at ``S^3`` with the default intensity rule is returned unchanged.
    """
    _check_3d(config)
    voxels = np.asarray(voxels)
    if voxels.ndim != 3:
        raise ValueError(f"expected a [D, H, W] volume, got shape {voxels.shape}")
    if voxels.dtype == np.uint8 and config.intensity == "auto" and voxels.shape == (config.size,) * 3:
        return np.ascontiguousarray(voxels)
    unit = intensity_unit(voxels, None, config)
    return _to_cube(unit, spacing, config)


def intensity_unit(voxels: np.ndarray, modality: str | None, config: PreprocessConfig) -> np.ndarray:
    """Voxels -> float32 in [0, 1] by ``preprocess.intensity`` (module docstring, step b)."""
    v = np.asarray(voxels)
    rule = config.intensity
    if rule == "auto" and v.dtype == np.uint8:
        return v.astype(np.float32) / np.float32(255.0)
    v = v.astype(np.float32)
    if rule == "auto" and modality == "CT":
        level, width = config.ct_window if config.ct_window is not None else DEFAULT_CT_WINDOW
        return _by_range(v, level - width / 2, level + width / 2)
    if rule == "minmax":
        return _by_range(v, float(v.min()), float(v.max()))
    lo, hi = np.percentile(v, config.percentiles)
    return _by_range(v, float(lo), float(hi))


def _by_range(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        return np.zeros_like(v, dtype=np.float32)
    out = (v - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _to_cube(unit: np.ndarray, spacing: tuple[float, float, float] | None, config: PreprocessConfig) -> np.ndarray:
    mode = config.volume.interpolation
    target = config.volume.spacing
    if target is not None:
        if spacing is None:
            raise ValueError("preprocess.volume.spacing is set but the volume has no spacing (MedMNIST 3D)")
        shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(unit.shape, spacing, target, strict=True))
        unit = resample(unit, shape, mode)
    unit = _cube(unit, config.resize)
    unit = resample(unit, (config.size,) * 3, mode)
    return np.clip(np.rint(unit * np.float32(255.0)), 0, 255).astype(np.uint8)


def _cube(v: np.ndarray, policy: str) -> np.ndarray:
    if policy == "stretch" or len(set(v.shape)) == 1:
        return v
    if policy == "crop":
        side = min(v.shape)
        starts = [(n - side) // 2 for n in v.shape]
        return v[tuple(slice(s, s + side) for s in starts)]
    side = max(v.shape)
    out = np.zeros((side,) * 3, dtype=v.dtype)
    starts = [(side - n) // 2 for n in v.shape]
    out[tuple(slice(s, s + n) for s, n in zip(starts, v.shape, strict=True))] = v
    return out


def resample(v: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """float32 ``v`` resampled to ``shape``, one axis at a time (0, 1, 2) by ``mode`` (module docstring)."""
    out = np.asarray(v, dtype=np.float32)
    for axis, n_out in enumerate(shape):
        if out.shape[axis] != n_out:
            out = _resample_axis(out, axis, n_out, mode)
    return out


def _resample_axis(v: np.ndarray, axis: int, n_out: int, mode: str) -> np.ndarray:
    n_in = v.shape[axis]
    moved = np.moveaxis(v, axis, 0)
    f32 = np.float32
    if mode == "nearest":
        index = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
        return np.moveaxis(moved[index], 0, axis)
    if mode == "area":
        weights = _box_weights(n_in, n_out)  # [n_out, n_in]
        out = np.tensordot(weights, moved, axes=(1, 0)).astype(f32)
        return np.moveaxis(out, 0, axis)
    scale = f32(n_in) / f32(n_out)
    s = np.maximum(scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5), f32(0.0))
    i0 = s.astype(np.int64)
    t = (s - i0.astype(f32)).reshape((-1,) + (1,) * (v.ndim - 1))
    i1 = np.minimum(i0 + 1, n_in - 1)
    out = moved[i0] * (f32(1.0) - t) + moved[i1] * t
    return np.moveaxis(out.astype(f32), 0, axis)


def _box_weights(n_in: int, n_out: int) -> np.ndarray:
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- uint8 cube -> tensor


def apply(volumes: np.ndarray | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 ``[N, S, S, S]`` (or one ``[S, S, S]``) stored volumes -> normalised float32 ``[N, C, S, S, S]``.

    Raises ``ValueError`` for a dtype other than uint8 or volumes not at the contract's ``S^3``
    (run :func:`prepare_volume` / :func:`prepare_array` first).
    """
    import torch  # here, so ingest workers never load torch

    _check_3d(config)
    if isinstance(volumes, np.ndarray) and not volumes.flags.writeable:
        volumes = volumes.copy()
    x = torch.as_tensor(volumes)
    if x.dtype != torch.uint8:
        raise ValueError(f"volume_contract.apply takes uint8 volumes, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (config.size,) * 3:
        raise ValueError(
            f"volume_contract.apply takes [N, {config.size}, {config.size}, {config.size}] volumes, got "
            f"{tuple(x.shape)}: prepare them with prepare_volume first"
        )
    x = x.to(torch.float32).unsqueeze(1) / 255.0
    x = (x - config.mean) / config.std
    if config.channels == 3:
        x = x.expand(-1, 3, -1, -1, -1).contiguous()
    return x


def _check_3d(config: PreprocessConfig) -> None:
    if config.dims != 3:
        raise ValueError("the 3D contract needs preprocess.dims: 3")
