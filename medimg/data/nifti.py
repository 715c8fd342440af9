"""NIfTI volumes: a ``.nii`` / ``.nii.gz`` file (NIfTI-1 or NIfTI-2, read with nibabel) as a
:class:`~medimg.data.volumes.Volume`.

What a caller can rely on:

* **Orientation: canonical RAS+, always.** The image is first reoriented with
  :func:`nibabel.as_closest_canonical` (axis flips and transposes only, no resampling; an oblique
  image goes to the closest orientation and keeps its exact affine), so its array axes (i, j, k)
  increase towards patient Right, Anterior, Superior. The voxels are then stored in the
  :class:`~medimg.data.volumes.Volume` axis order (slices, rows, columns) = (k, j, i): axis 0
  inferior to superior, axis 1 posterior to anterior, axis 2 left to right, so
  ``volume.axcodes == ("S", "A", "R")`` for every file. (:func:`medimg.data.volumes.reoriented`
  turns it into a DICOM series' usual ``("S", "P", "L")`` when sources must agree.)
* **Geometry.** ``spacing`` is the header's zooms (pixdim) of the canonical image, in (k, j, i)
  order, in mm; it must agree with the length of the affine's columns (nibabel's affine: the
  sform when its code is set, else the qform). The affine (RAS+ world) is turned into the volume's
  LPS world (x and y negated): ``origin`` and ``direction`` follow, and ``volume.affine`` maps a
  voxel index to the same point as nibabel's affine does, in LPS.
* **Values.** float32, ``scl_slope``/``scl_inter`` applied (:meth:`nibabel.Nifti1Image.get_fdata`).
* **Refusals** (:class:`~medimg.data.volumes.VolumeRefused`): ``unreadable`` (not a NIfTI file,
  truncated, or an affine that is not a rotation times a scaling, e.g. sheared); ``not_3d`` (four
  or more dimensions, unless the extra ones have length 1); ``non_finite`` (a NaN or infinite
  voxel). Messages carry no file name.

A NIfTI file has no modality and no series UID: ``modality`` is what the caller passes,
``series_uid`` None, ``source_kind`` ``nifti``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medimg.data.volumes import Volume, VolumeRefused

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_SPACING_TOLERANCE = 1e-3  # relative: header zooms against the affine's column lengths


def read_nifti(path: str | Path, modality: str | None = None) -> Volume:
    """The volume of one NIfTI file in canonical RAS+ orientation, axes (k, j, i) (module docstring).

    Raises VolumeRefused (``files`` is ``(path,)``).
    """
    path = Path(path)
    files = (path,)
    try:
        image = nib.load(path)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors...
        raise VolumeRefused("unreadable", f"not a readable NIfTI file ({type(err).__name__})", files) from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeRefused("unreadable", f"a {type(image).__name__}, not NIfTI", files)
    if len(image.shape) > 3:
        image = nib.squeeze_image(image)
    if len(image.shape) != 3:
        raise VolumeRefused("not_3d", f"{len(image.shape)} dimensions of shape {image.shape}", files)
    try:
        canonical = nib.as_closest_canonical(image)
        data = canonical.get_fdata(dtype=np.float32)
    except Exception as err:
        raise VolumeRefused("unreadable", f"voxels unreadable ({type(err).__name__})", files) from None
    if not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise VolumeRefused("non_finite", f"{bad} of {data.size} voxels NaN or infinite", files)
    affine = np.asarray(canonical.affine, dtype=np.float64)
    zooms = np.asarray(canonical.header.get_zooms()[:3], dtype=np.float64)
    columns = np.linalg.norm(affine[:3, :3], axis=0)
    if not (zooms > 0).all() or np.abs(columns / zooms - 1).max() > _SPACING_TOLERANCE:
        raise VolumeRefused("unreadable", "header zooms do not match the affine", files)
    lps = _RAS_TO_LPS @ affine[:3, :3] / columns
    origin = _RAS_TO_LPS @ affine[:3, 3]
    try:
        return Volume(
            voxels=np.ascontiguousarray(data.transpose(2, 1, 0)),
            spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            direction=lps[:, ::-1],
            modality=modality,
            source_kind="nifti",
        )
    except ValueError as err:  # a sheared (non-orthonormal) affine
        raise VolumeRefused("unreadable", f"affine unusable: {err}", files) from None
