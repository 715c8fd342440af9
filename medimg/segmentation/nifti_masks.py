"""Predicted label masks as NIfTI files on the input's own voxels: its array order, affine and header geometry.

:func:`medimg.data.nifti.read_nifti` reads a file in canonical RAS+ order (nibabel's
``as_closest_canonical``, axes transposed to (k, j, i)); a mask on that volume's grid
(:func:`medimg.segmentation.geometry.to_source_orientation`) is put back into the file's own array
order by the inverse flips and transposes (:func:`mask_like_file`), so that the mask's
``nib.load(...).affine`` and shape are the input's. The header is a copy of the input's (qform, sform,
their codes, pixdim, units, dim_info, slice timing) with what describes values or content reset: uint8,
no scaling, intent ``label`` (NIFTI_INTENT_LABEL, 1002), ``cal_min``/``cal_max`` the label range,
``descrip``/``aux_file``/``intent_name`` empty and header extensions dropped (they can hold DICOM
headers, e.g. from dcm2niix).

A volume read from DICOM (:func:`mask_for_volume`) has no NIfTI header: the mask gets the volume's own
grid, its LPS affine turned into NIfTI's RAS+ world (x and y negated) for the array transposed to
(x, y, z), qform and sform both that affine with code 1 (scanner).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from medimg.data.volumes import Volume

NIFTI_INTENT_LABEL = "label"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def voxel_volume_ml(zooms: tuple[float, ...] | np.ndarray) -> float:
    """The volume of one voxel in mL from its three spacings in mm (product / 1000)."""
    a, b, c = (float(z) for z in tuple(zooms)[:3])
    return a * b * c / 1000.0


def mask_like_file(mask: np.ndarray, source: str | Path, n_labels: int) -> nib.Nifti1Image | nib.Nifti2Image:
    """``mask`` uint8 ``[z, y, x]`` on :func:`~medimg.data.nifti.read_nifti`'s grid of ``source`` -> a NIfTI image
    in ``source``'s own array order with its affine and header geometry (module docstring).

    ``n_labels``: the number of label values (K), for ``cal_max = K - 1``. ``ValueError`` when the mask's
    shape is not the file's (after squeezing extra length-1 dimensions) in canonical order, or the file is not
    NIfTI.
    """
    loaded = nib.load(Path(source))
    if not isinstance(loaded, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"a {type(loaded).__name__}, not a NIfTI image")
    image = nib.squeeze_image(loaded) if len(loaded.shape) > 3 else loaded
    ornt = io_orientation(image.affine)  # what as_closest_canonical applied to reach RAS+
    canonical = np.asarray(mask).transpose(2, 1, 0)  # (z, y, x) = (k, j, i) -> (i, j, k)
    own = apply_orientation(canonical, ornt_transform(axcodes2ornt(("R", "A", "S")), ornt))
    if own.shape != image.shape:
        raise ValueError(f"mask shape {own.shape} in the file's order differs from the file's {image.shape}")
    header = image.header.copy()
    out = type(image)(np.ascontiguousarray(own, dtype=np.uint8), image.affine, header)
    _label_header(out.header, n_labels)
    return out


def mask_for_volume(mask: np.ndarray, volume: Volume, n_labels: int) -> nib.Nifti1Image:
    """``mask`` uint8 ``[z, y, x]`` on ``volume``'s grid (e.g. a DICOM series) -> a NIfTI-1 image on that grid
    (module docstring). ``ValueError`` when the shapes differ."""
    if tuple(mask.shape) != volume.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the volume's {volume.shape}")
    affine = _LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]  # index (x, y, z) -> RAS+ mm
    out = nib.Nifti1Image(np.ascontiguousarray(np.asarray(mask).transpose(2, 1, 0), dtype=np.uint8), affine)
    out.header.set_qform(affine, code=1)
    out.header.set_sform(affine, code=1)
    out.header.set_xyzt_units("mm")
    _label_header(out.header, n_labels)
    return out


def _label_header(header, n_labels: int) -> None:
    """uint8 labels: no scaling, intent label, the label range; descriptive text and extensions cleared."""
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(None, None)
    header.set_intent(NIFTI_INTENT_LABEL, (), name="")
    header["cal_min"] = 0
    header["cal_max"] = max(int(n_labels) - 1, 0)
    header["descrip"] = b""
    header["aux_file"] = b""
    del header.extensions[:]
