"""Modality-LUT values of DICOM slices and frames, for volumes: the 2-D pixel rules, without display mapping.

A volume needs the values the modality measured (Hounsfield units for CT), not a picture: so unlike
:func:`medimg.data.dicom.decode_dicom` nothing here windows, rescales to [0, 1] or inverts
MONOCHROME1 (Photometric Interpretation is a display instruction, PS3.3 C.7.6.3.1.2; it does not
change what a value means, so a MONOCHROME1 CT slice keeps its HU). Everything before that is
:mod:`medimg.data.dicom`'s own code, called rather than copied: reading and the truncation check,
the header checks (burned-in annotation refused, transfer syntax decodable, grey or colour
photometric), decoding with its error mapping, and :func:`medimg.data.dicom.stored_values` (bits
above Bits Stored are not image data, PS3.5 section 8.1.1). Then:

* integer Pixel Data goes through the Modality LUT (:func:`pydicom.pixels.apply_modality_lut`:
  Rescale Slope/Intercept or a Modality LUT Sequence, PS3.3 C.11.1); in an enhanced multi-frame
  object the rescale of each frame comes from its Pixel Value Transformation functional group
  (per-frame, else shared, else the top-level attributes; PS3.3 C.7.6.16.2.9);
* Float and Double Float Pixel Data are used as they are (real-world values, as in the 2D rules);
* colour images are refused (``unsupported_photometric``: a volume is one scalar per voxel), and a
  NaN or infinite value with ``non_finite``.

Failures raise :class:`medimg.data.images.BadImage` with the 2-D reason codes; its message names
the file and the reason only. pydicom's warnings are swallowed and its logger does not propagate
while a file is read (their texts can quote element values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from medimg.data.dicom import (
    _check_decoder,
    _check_finite,
    _check_header,
    _declared_values,
    _decode_pixels,
    decoded_pixel_array,
    opened,
)
from medimg.data.images import BadImage

_GREY = ("MONOCHROME1", "MONOCHROME2")


def slice_values(path: str | Path, allow_burned_in: bool = False) -> np.ndarray:
    """The Modality-LUT values of one single-frame DICOM image: float64, shape (rows, columns).

    Raises BadImage (``multiframe`` for an object with more than one frame: read it with
    :func:`frame_values`).
    """
    path = Path(path)
    with opened(path) as ds:
        header = _check_header(path, ds, 1, allow_burned_in)
        _check_grey(path, header["photometric"])
        arr = _declared_values(path, ds, _decode_pixels(path, ds, header["rows"], header["columns"]))
        values = _modality_values(path, arr, ds)
    return values


def frame_values(path: str | Path, allow_burned_in: bool = False) -> tuple[Dataset, np.ndarray]:
    """The data set (with its functional groups) and the Modality-LUT values of every frame of a
    multi-frame DICOM image: float64, shape (frames, rows, columns). Raises BadImage."""
    path = Path(path)
    with opened(path) as ds:
        rows, columns, n_frames = _check_multiframe_header(path, ds, allow_burned_in)
        arr = _declared_values(path, ds, _decode_frames(path, ds))
        if arr.shape != (n_frames, rows, columns):
            raise BadImage(path, "decode_error", f"decoded shape {arr.shape}, header {n_frames}x{rows}x{columns}")
        transforms = _frame_rescales(ds, n_frames)
        values = np.stack([_modality_values(path, arr[f], transforms[f]) for f in range(n_frames)])
    return ds, values


def _check_grey(path: Path, photometric: str) -> None:
    if photometric not in _GREY:
        raise BadImage(path, "unsupported_photometric", f"{photometric}: a volume holds one value per voxel")


def _check_multiframe_header(path: Path, ds: Dataset, allow_burned_in: bool) -> tuple[int, int, int]:
    """(rows, columns, frames) after the checks :func:`medimg.data.dicom._check_header` makes on single frames."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BadImage(path, "missing_pixel_data", "no Pixel Data element")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise BadImage(
            path, "invalid_header", f"image pixel module incomplete ({type(err).__name__})", str(err)
        ) from None
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES" and not allow_burned_in:
        raise BadImage(path, "burned_in_annotation", "Burned In Annotation is YES")
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsuid:
        raise BadImage(path, "unsupported_transfer_syntax", "no Transfer Syntax UID in the file meta")
    _check_decoder(path, UID(str(tsuid)))
    _check_grey(path, photometric)
    return rows, columns, n_frames


def _decode_frames(path: Path, ds: Dataset) -> np.ndarray:
    """All frames, shape (frames, rows, columns); failures mapped by :func:`medimg.data.dicom.decoded_pixel_array`."""
    arr = decoded_pixel_array(path, ds)
    return arr if arr.ndim == 3 else arr[np.newaxis]


def _frame_rescales(ds: Dataset, n_frames: int) -> list[Dataset]:
    """For each frame, the data set holding its Modality LUT: its Pixel Value Transformation item
    (per-frame, else shared), else the top-level data set."""
    shared = _group_item(ds.get("SharedFunctionalGroupsSequence"), 0, "PixelValueTransformationSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = []
    for f in range(n_frames):
        own = _group_item(per_frame, f, "PixelValueTransformationSequence")
        out.append(own or shared or ds)
    return out


def _group_item(groups, index: int, keyword: str) -> Dataset | None:
    """The first item of ``keyword`` in item ``index`` of a functional groups sequence, or None."""
    if not groups or index >= len(groups):
        return None
    seq = groups[index].get(keyword)
    return seq[0] if seq else None


def _modality_values(path: Path, arr: np.ndarray, lut_source: Dataset) -> np.ndarray:
    if arr.dtype.kind == "f":  # Float / Double Float Pixel Data: real-world values as they are
        values = np.asarray(arr, dtype=np.float64)
    else:
        try:
            values = np.asarray(apply_modality_lut(arr, lut_source), dtype=np.float64)
        except Exception as err:
            raise BadImage(path, "invalid_header", f"Modality LUT unusable ({type(err).__name__})", str(err)) from None
    _check_finite(path, values, "after the Modality LUT")
    return values
