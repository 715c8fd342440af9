"""Volumes: one 3-D scalar image with its place in the patient, whatever file it came from.

Every 3-D source (a DICOM series, an enhanced multi-frame DICOM object, a NIfTI file) is turned into
one :class:`Volume`, so that preprocessing never branches on the file format. A source that cannot
be turned into a trustworthy volume raises :class:`VolumeRefused` with a reason code of
:data:`VOLUME_REASONS`.

Conventions (the same for every source):

* **Axes.** ``voxels`` is float32 of shape ``(slices, rows, columns)``, called (z, y, x) here: axis 2
  runs along a row of a slice (DICOM's row direction, the first three Image Orientation (Patient)
  values), axis 1 down a column (the last three), axis 0 from slice to slice.
* **World.** Positions and directions are in millimetres in the DICOM patient coordinate system
  (PS3.3 C.7.6.2.1.1): +x towards the patient's left, +y posterior, +z superior ("LPS"). NIfTI's
  RAS+ world is converted (x and y negated) by :mod:`medimg.data.nifti`.
* **Geometry.** ``origin`` is the world position of the centre of voxel ``[0, 0, 0]``;
  ``direction`` is a 3x3 orthonormal matrix whose column ``a`` is the world unit vector along array
  axis ``a``; ``spacing[a]`` the distance in mm between voxel centres along axis ``a``. So the world
  position of voxel ``(k, i, j)`` is ``origin + direction @ (spacing * (k, i, j))``
  (:attr:`Volume.affine`).
* **Orientation codes** (:attr:`Volume.axcodes`): for each array axis, the anatomical direction it
  increases towards (``R``/``L``, ``A``/``P``, ``S``/``I``; the closest one for oblique axes), as
  :func:`nibabel.orientations.aff2axcodes` gives them. An axial DICOM series read by
  :mod:`medimg.data.series` is usually ``("S", "P", "L")``, a NIfTI file read by
  :mod:`medimg.data.nifti` (canonical RAS+) is ``("S", "A", "R")``; :func:`reoriented` turns one
  into the other by flips and transposes only.

Privacy: a volume holds no patient, study or date attribute. ``series_uid`` (the DICOM
SeriesInstanceUID) *is identifying* (a UID can be linked back to the study at the hospital): it is
kept only so the caller can turn it into a keyed pseudonym
(:func:`medimg.data.deid.pseudonym`) and must never itself reach a manifest, log, MLflow or ONNX
metadata. It is not part of ``repr(volume)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

VolumeSourceKind = Literal["dicom_series", "dicom_multiframe", "nifti"]
VOLUME_SOURCE_KINDS: tuple[str, ...] = ("dicom_series", "dicom_multiframe", "nifti")

#: The labels of the negative and positive end of each LPS world axis, for nibabel's orientation
#: functions (whose default labels are those of RAS+).
LPS_LABELS: tuple[tuple[str, str], ...] = (("R", "L"), ("A", "P"), ("I", "S"))

#: Every reason code :class:`VolumeRefused` may carry, with what it means.
VOLUME_REASONS: dict[str, str] = {
    "too_few_slices": "fewer slices than the minimum: too few to check the spacing or to be a volume",
    "missing_geometry": "a slice or frame lacks Image Position/Orientation (Patient), Pixel Spacing, Rows or Columns",
    "inconsistent_geometry": "the slices differ in orientation, size or pixel spacing, or the orientation is not "
    "orthonormal",
    "duplicate_positions": "two slices at the same position along the slice normal (several stacks, echoes or "
    "time points in one series)",
    "missing_slices": "a gap between neighbouring slices of about twice the usual one or more: slices are missing",
    "irregular_spacing": "the gaps between slices differ by more than the tolerance",
    "gantry_tilt": "the slices are sheared: the stack does not run along the slice normal (CT gantry tilt)",
    "bad_slice": "a slice's pixels cannot be used (truncated, undecodable, colour, non-finite...)",
    "unreadable": "the file cannot be read as a volume of its format",
    "not_3d": "the image does not have exactly three spatial dimensions",
    "non_finite": "voxel values that are not finite numbers (NaN, +/-infinity)",
}

#: Corrections a reader may have applied to reach a regular orthogonal grid (``Volume.corrections``).
CORRECTIONS: dict[str, str] = {
    "gantry_tilt": "each slice shifted in its own plane onto one grid (shear correction, linear interpolation)",
    "irregular_spacing": "slices resampled to equal spacing along the normal (linear interpolation)",
}

_ORTHONORMAL_TOLERANCE = 1e-3


class VolumeRefused(Exception):
    """A source that must not be used as a volume.

    ``reason`` is a key of :data:`VOLUME_REASONS`; ``detail`` says what was found, in numbers only
    (counts, millimetres, degrees). ``str(error)`` is ``"<reason> (<detail>)"``: no file name, no
    value of an identifying element, so it is safe for a log. ``files`` (the paths the volume was
    to be read from) is for the caller's bookkeeping, e.g. the quarantine report inside the
    workspace; file names can hold patient names, so they stay out of the message.
    """

    def __init__(self, reason: str, detail: str = "", files: tuple[Path, ...] = ()) -> None:
        if reason not in VOLUME_REASONS:
            raise ValueError(f"unknown VolumeRefused reason {reason!r}; expected one of {sorted(VOLUME_REASONS)}")
        self.reason = reason
        self.detail = detail
        self.files = tuple(Path(f) for f in files)
        super().__init__(f"{reason} ({detail or VOLUME_REASONS[reason]})")

    def with_files(self, files: tuple[Path, ...]) -> VolumeRefused:
        """The same refusal naming ``files``."""
        return VolumeRefused(self.reason, self.detail, files)

    def __reduce__(self):  # picklable across process pools despite the custom __init__
        return (type(self), (self.reason, self.detail, self.files))


@dataclass(frozen=True, eq=False, repr=False)
class Volume:
    """One 3-D scalar image and its geometry (see the module docstring for the conventions).

    ``voxels``: float32, shape (slices, rows, columns) = (z, y, x); values in the source's units after
    its rescale (DICOM Modality LUT: Hounsfield units for CT; NIfTI scl_slope/scl_inter).
    ``spacing``: mm between voxel centres along (z, y, x), all > 0. ``origin``: mm, LPS world position
    of the centre of voxel [0, 0, 0]. ``direction``: 3x3 float64, orthonormal, column ``a`` the LPS
    unit vector along axis ``a``. ``modality``: the DICOM Modality (``CT``, ``MR``...) or None when
    the source does not say (NIfTI unless the caller does). ``source_kind``: how the volume was read.
    ``series_uid``: the DICOM SeriesInstanceUID, IDENTIFYING (for pseudonymising only; None for
    NIfTI). ``corrections``: keys of :data:`CORRECTIONS` the reader applied, in order; empty when
    the voxels are the source's samples as they are.

    Raises ValueError when the arrays do not have these shapes, dtypes and properties.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str | None
    source_kind: VolumeSourceKind
    series_uid: str | None = field(default=None)
    corrections: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.voxels, np.ndarray) or self.voxels.ndim != 3:
            raise ValueError(f"voxels must be a 3-D array, got {getattr(self.voxels, 'shape', None)}")
        if self.voxels.dtype != np.float32:
            raise ValueError(f"voxels must be float32, got {self.voxels.dtype}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be 3 finite positive mm values, got {self.spacing!r}")
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3 or not all(np.isfinite(o) for o in origin):
            raise ValueError(f"origin must be 3 finite mm values, got {self.origin!r}")
        direction = np.array(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.isfinite(direction).all():
            raise ValueError(f"direction must be a finite 3x3 matrix, got shape {direction.shape}")
        if np.abs(direction.T @ direction - np.eye(3)).max() > _ORTHONORMAL_TOLERANCE:
            raise ValueError("direction must be orthonormal (its columns unit vectors at right angles)")
        if self.source_kind not in VOLUME_SOURCE_KINDS:
            raise ValueError(f"source_kind must be one of {VOLUME_SOURCE_KINDS}, got {self.source_kind!r}")
        unknown = [c for c in self.corrections if c not in CORRECTIONS]
        if unknown:
            raise ValueError(f"unknown corrections {unknown}; expected keys of CORRECTIONS")
        direction.setflags(write=False)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "corrections", tuple(self.corrections))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) of ``voxels``."""
        z, y, x = self.voxels.shape
        return (z, y, x)

    @property
    def affine(self) -> np.ndarray:
        """4x4 float64: voxel index ``(k, i, j, 1)`` -> LPS world position in mm ``(x, y, z, 1)``."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)
        out[:3, 3] = self.origin
        return out

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """For axes (0, 1, 2), the anatomical direction each increases towards, e.g. ``("S", "P", "L")``."""
        a, b, c = aff2axcodes(self.affine, labels=LPS_LABELS)
        return (str(a), str(b), str(c))

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.origin)
        return (
            f"Volume(shape={self.shape}, spacing=({spacing}), origin=({origin}), axcodes={''.join(self.axcodes)!r}, "
            f"modality={self.modality!r}, source_kind={self.source_kind!r}, corrections={self.corrections!r})"
        )


def reoriented(volume: Volume, axcodes: str | tuple[str, ...]) -> Volume:
    """``volume`` with its axes flipped and transposed so that they point towards ``axcodes``
    (three letters, one of R/L, A/P, S/I each, e.g. ``"SPL"`` or ``"SAR"``); no resampling.

    Each voxel keeps its value and its world position: the affine changes with the array
    (nibabel's :func:`~nibabel.orientations.ornt_transform` and
    :func:`~nibabel.orientations.apply_orientation`). An oblique volume goes to the closest such
    orientation. Raises ValueError for codes that are not three distinct axes.
    """
    codes = tuple(axcodes)
    try:
        target = axcodes2ornt(codes, labels=LPS_LABELS)
    except Exception as err:
        raise ValueError(f"axcodes must be three of R/L, A/P, S/I on distinct axes, got {axcodes!r}") from err
    if len(codes) != 3 or np.isnan(target).any() or len(set(target[:, 0].tolist())) != 3:
        raise ValueError(f"axcodes must be three of R/L, A/P, S/I on distinct axes, got {axcodes!r}")
    transform = ornt_transform(io_orientation(volume.affine), target)
    voxels = np.ascontiguousarray(apply_orientation(volume.voxels, transform), dtype=np.float32)
    affine = volume.affine @ inv_ornt_aff(transform, volume.voxels.shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return replace(
        volume,
        voxels=voxels,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(affine[0, 3]), float(affine[1, 3]), float(affine[2, 3])),
        direction=affine[:3, :3] / spacing,
    )
