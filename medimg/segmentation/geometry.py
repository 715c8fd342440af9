"""The segmentation half of the 3D contract: a volume onto the network's grid and a mask back onto the volume's.

Segmentation never resamples (``preprocess.volume.spacing`` must be null): a predicted mask must lie
on the input's own voxels, so that its NIfTI affine and its DICOM SEG frames are the input's. The
steps, each invertible:

1. **Orientation** (``preprocess.volume.orientation``): ``RAS`` flips/transposes the array so that
   its axes (0, 1, 2) point to (S, A, R) (:func:`medimg.data.volumes.reoriented`), ``source`` keeps it.
   A mask is taken back by the inverse flips/transposes (:func:`to_source_orientation`).
2. **Intensity** of the image onto uint8 by the contract's rule
   (:func:`medimg.volume_contract.intensity_unit`, then ``rint(v * 255)``); masks are label values.
3. **Fitting** (:func:`fit`): centred zero-padding (the extra voxel at the end) or centred cropping to a
   shape: at training, ``preprocess.volume.shape`` for every case (a batch needs one shape); to predict,
   each axis padded up to a multiple of ``preprocess.volume.pad_multiple`` (:func:`padded_shape`), so the
   U-Net's poolings divide it and nothing is cropped. ``offset[a]`` is the index in the fitted array of the
   source's voxel 0 along axis ``a`` (negative when cropped). :func:`unfit` is the inverse: the source's
   region of a fitted array; source voxels a crop left out are background (0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

from medimg.config import PreprocessConfig
from medimg.data.volumes import LPS_LABELS, Volume, reoriented
from medimg.volume_contract import RAS_AXCODES, intensity_unit


@dataclass(frozen=True)
class FittedVolume:
    """A volume on the network's grid: ``image`` uint8 ``[D, H, W]``, ``offset`` (voxels, per axis, see
    :func:`fit`), ``oriented_shape`` the volume's shape after orientation (before fitting) and ``source_axcodes``
    the orientation it was read in (to take a mask back)."""

    image: np.ndarray
    offset: tuple[int, int, int]
    oriented_shape: tuple[int, int, int]
    source_axcodes: tuple[str, str, str]
    oriented_axcodes: tuple[str, str, str]


def oriented(volume: Volume, config: PreprocessConfig) -> Volume:
    """``volume`` in the contract's orientation (``RAS``: axes towards S, A, R; ``source``: unchanged)."""
    return reoriented(volume, RAS_AXCODES) if config.volume.orientation == "RAS" else volume


def image_uint8(volume: Volume, config: PreprocessConfig) -> np.ndarray:
    """The (already oriented) volume's voxels as uint8 by the contract's intensity rule, not yet fitted."""
    unit = intensity_unit(volume.voxels, volume.modality, config)
    return np.clip(np.rint(unit * np.float32(255.0)), 0, 255).astype(np.uint8)


def padded_shape(shape: tuple[int, ...], multiple: int) -> tuple[int, int, int]:
    """Each of ``shape`` rounded up to a multiple of ``multiple`` (the prediction grid)."""
    a, b, c = (-(-int(n) // multiple) * multiple for n in shape)
    return (a, b, c)


def fit(array: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``array`` ``[D, H, W]`` centred in a zero array of ``shape`` (padding; cropping where it is larger).

    Returns the fitted array (same dtype) and ``offset``: index in it of the source's voxel 0 per axis
    (``(target - source) // 2``; negative when cropped).
    """
    out = np.zeros(shape, dtype=array.dtype)
    offset = tuple((t - s) // 2 for t, s in zip(shape, array.shape, strict=True))
    src = tuple(slice(max(0, -o), max(0, -o) + min(s, t)) for o, s, t in zip(offset, array.shape, shape, strict=True))
    dst = tuple(slice(max(0, o), max(0, o) + min(s, t)) for o, s, t in zip(offset, array.shape, shape, strict=True))
    out[dst] = array[src]
    return out, (int(offset[0]), int(offset[1]), int(offset[2]))


def unfit(fitted: np.ndarray, offset: tuple[int, int, int], source_shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of :func:`fit`: the source's ``[D, H, W]`` region of ``fitted`` (its leading axes kept, e.g.
    ``[K, D, H, W]`` probabilities); source voxels outside ``fitted`` (a crop) are 0."""
    lead = fitted.shape[:-3]
    out = np.zeros(lead + tuple(source_shape), dtype=fitted.dtype)
    grid = fitted.shape[-3:]
    src = [slice(max(0, o), max(0, o) + min(s, g)) for o, s, g in zip(offset, source_shape, grid, strict=True)]
    dst = [slice(max(0, -o), max(0, -o) + min(s, g)) for o, s, g in zip(offset, source_shape, grid, strict=True)]
    lead_all = [slice(None)] * len(lead)
    out[tuple(lead_all + dst)] = fitted[tuple(lead_all + src)]
    return out


def for_prediction(volume: Volume, config: PreprocessConfig) -> FittedVolume:
    """A volume to segment -> its image on the prediction grid (padded to ``pad_multiple``, never cropped)."""
    turned = oriented(volume, config)
    image = image_uint8(turned, config)
    fitted, offset = fit(image, padded_shape(image.shape, config.volume.pad_multiple))
    return FittedVolume(fitted, offset, turned.shape, volume.axcodes, turned.axcodes)


def training_pair(
    volume: Volume, mask: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """An image volume and its label mask (``[D, H, W]`` on the volume's grid, as read) -> the stored uint8 image,
    uint8 mask (both ``preprocess.volume.shape``) and the offset. ``ValueError`` when the shapes differ or there
    is no stored shape."""
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {volume.shape}")
    if config.volume.shape is None:
        raise ValueError("preprocess.volume.shape is needed to store segmentation cases")
    turned = oriented(volume, config)
    mask_turned = to_orientation(mask, volume.axcodes, turned.axcodes)
    image, offset = fit(image_uint8(turned, config), config.volume.shape)
    stored_mask, _ = fit(mask_turned.astype(np.uint8), config.volume.shape)
    return image, stored_mask, offset


def to_orientation(array: np.ndarray, from_axcodes: tuple[str, ...], to_axcodes: tuple[str, ...]) -> np.ndarray:
    """``array`` (last three axes spatial, in ``from_axcodes``) flipped/transposed into ``to_axcodes`` (LPS labels
    as :attr:`Volume.axcodes` gives them)."""
    transform = ornt_transform(axcodes2ornt(from_axcodes, LPS_LABELS), axcodes2ornt(to_axcodes, LPS_LABELS))
    if array.ndim == 3:
        return np.ascontiguousarray(apply_orientation(array, transform))
    return np.stack([np.ascontiguousarray(apply_orientation(a, transform)) for a in array])


def to_source_orientation(mask: np.ndarray, fitted: FittedVolume) -> np.ndarray:
    """A prediction on the grid of ``fitted`` (``[D, H, W]`` labels or ``[K, D, H, W]``) -> on the input volume's
    own voxels and orientation (unfit, then the inverse orientation)."""
    region = unfit(mask, fitted.offset, fitted.oriented_shape)
    return to_orientation(region, fitted.oriented_axcodes, fitted.source_axcodes)
