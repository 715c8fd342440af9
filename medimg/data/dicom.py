"""DICOM decoding: one single-frame DICOM file -> one grey :class:`DecodedImage`, or :class:`BadImage`.

What a caller can rely on:

* **Stored values.** Bits above Bits Stored are not image data (DICOM PS3.5 section 8.1.1: they
  may hold an overlay plane or anything else), whatever the transfer syntax. pydicom 3.0.2's
  ``pixel_array`` clears them for native, Deflated, RLE and JPEG (process 1/2/4/14) data, but not
  for JPEG 2000 (whose codestream may carry all 16 bits) or unsigned JPEG-LS. So every integer
  array, from pydicom or from the reduced-resolution JPEG 2000 path, goes through
  :func:`stored_values`, the one place this rule is applied: unsigned samples keep their
  ``Bits Stored`` low bits, signed ones (Pixel Representation 1) are sign-extended from bit
  ``Bits Stored - 1``. No value outside the declared range reaches the Modality LUT.
* **Float pixel data.** Float (7FE0,0008) and Double Float (7FE0,0009) Pixel Data are used as
  they are: the Parametric Map IOD that introduced them (PS3.3 A.75, Supplement 172) stores real
  world values, which its VOI LUT renders directly, so medimg applies no Rescale Slope/Intercept
  or Modality LUT Sequence to them, even when a file carries one. MONOCHROME1 is inverted about
  the data's own range; a CT's own window applies to the values as they are (LINEAR_EXACT,
  PS3.3 C.11.2.1.3.2), and the contract maps any other modality by the image's min and max. A NaN or infinite pixel
  is refused with ``non_finite``, never mapped
  to a blank or clipped image.
* **Values.** The Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) is always
  applied, so CT values are Hounsfield units before any windowing. CT is then always windowed to
  [0, 1]: with the ``window`` or ``ct_window`` argument (level, width) when given, else with the
  file's own VOI (its first Window Center/Width, or its VOI LUT Sequence, through
  :func:`pydicom.pixels.apply_voi_lut`), else with :data:`DEFAULT_CT_WINDOW`. Other modalities
  keep their Modality-LUT values (e.g. 0..32767 for a 15-bit CR) unless a ``window`` is passed,
  which then applies to them as well (``ct_window`` never does). ``DecodedImage.window`` records
  any linear window applied.
* **Polarity.** Higher means brighter for every file: MONOCHROME1 (where low values are white,
  common for CR/DX) is inverted within its value range (the range the stored bits can hold
  after the Modality LUT, or [0, 1] after windowing), so bone is bright as in MONOCHROME2.
  Colour (RGB, YBR, PALETTE COLOR) becomes BT.601 luminance and is never windowed.
* **Rejections** (reason codes of :data:`medimg.data.images.REASONS`): ``empty``,
  ``not_an_image`` (no DICM preamble: plain text, a JPEG, or a preamble-less legacy file; refused
  rather than force-parsed because force-parsing accepts almost any bytes), ``truncated`` (the
  file ends inside an element, the encapsulated pixel data lacks its closing delimiter, or the
  native pixel data is shorter than Rows x Columns x Bits Allocated), ``missing_pixel_data``,
  ``multiframe``, ``burned_in_annotation``, ``unsupported_transfer_syntax`` (no transfer syntax,
  or none of the installed pixel-data plugins decodes it), ``unsupported_photometric``,
  ``invalid_header``, ``decode_error``, ``too_small``, ``non_finite`` (a NaN or infinite pixel value).
* **Resolution.** Pixels are at the file's full resolution, except that with
  ``jpeg2000_min_side`` a JPEG 2000 grey image is decoded at the coarsest wavelet resolution
  level whose shorter side stays >= that (:mod:`medimg.data.jpeg2000`; any case that module
  declines is decoded in full). ``original_height``/``original_width`` are always the file's.
* **Privacy.** Error messages contain the file *name* and the reason only, never a value read
  from the file (pydicom's own messages and warnings can quote element values, so they are
  replaced by the exception type in the message). The library's own text goes only into
  ``BadImage.library_message``, for the quarantine report inside the workspace, never into
  ``str(error)``. Exceptions are raised ``from None`` so no chained pydicom message leaks into a
  traceback that ends up in a log. With a ``secret``, the only identifying values that leave are
  keyed pseudonyms (:func:`medimg.data.deid.identity_pseudonyms`) in ``DecodedImage.pseudonyms``,
  taken from the data set the pixels were decoded from.

pydicom also *logs* what it warns about and every plugin failure (``warn_and_log``, and
``LOGGER.exception`` in its decoders), with texts that can hold the file's path or element
values; while a file is decoded the ``pydicom`` logger does not propagate, so none of that reaches
a handler of the application (Prefect's console, a log file).

Decoding uses :func:`warnings.catch_warnings` and switches the ``pydicom`` logger's propagation,
both process-global: decode in worker processes, not threads, when parallelising.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes

from medimg.data import deid, jpeg2000
from medimg.data.images import BadImage, DecodedImage, to_grey

#: (level, width) in HU for CT files that carry no VOI and get no ``window`` argument: the
#: standard soft-tissue window. Pass a window explicitly (e.g. lung, -600/1500) from the config
#: for a study that needs another one.
DEFAULT_CT_WINDOW: tuple[float, float] = (40.0, 400.0)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def decode_dicom(
    path: str | Path,
    window: tuple[float, float] | None = None,
    min_size: int = 16,
    allow_burned_in: bool = False,
    jpeg2000_min_side: int | None = None,
    *,
    ct_window: tuple[float, float] | None = None,
    data: bytes | None = None,
    secret: bytes | None = None,
) -> DecodedImage:
    """Decode one single-frame DICOM image file (see the module docstring for the promises).

    ``window`` is (level, width) in Modality-LUT units (HU for CT) applied to any modality;
    ``ct_window`` the same, applied only when the file's Modality is CT (``window`` wins when both
    are given); widths must be positive.

    ``data`` is the file's bytes when the caller has read them already (the file is not read
    again). ``secret`` adds the keyed pseudonyms of the patient, study, series and SOP instance
    (``DecodedImage.pseudonyms``), from the same parse of the header.

    Multi-frame files (Number of Frames > 1) are rejected with ``multiframe``: the frames of one
    object (a cine loop, a CT/MR volume, an ultrasound clip) are not independently labelled
    images, and turning them into separate samples would put strongly correlated copies of the
    same acquisition on both sides of a train/test split (leakage) and over-weight one patient.
    Volumes need their own, explicit handling.

    ``BurnedInAnnotation == 'YES'`` means identifying text may be part of the pixels, which no
    header de-identification removes: such files are refused unless ``allow_burned_in``.

    ``jpeg2000_min_side`` lets a JPEG 2000 image decode at a reduced resolution level (see the
    module docstring); the caller resizes anyway, to a size at most half that side.
    """
    path = Path(path)
    for given in (window, ct_window):
        if given is not None:
            _check_window(given)
    with opened(path, data) as ds:
        header = _check_header(path, ds, min_size, allow_burned_in)
        if window is None and header["modality"] == "CT":
            window = ct_window
        arr = _reduced_jpeg2000(ds, header, jpeg2000_min_side) if jpeg2000_min_side else None
        if arr is None:
            arr = _decode_pixels(path, ds, header["rows"], header["columns"])
        arr = _declared_values(path, ds, arr)
        pixels, applied = _to_display(path, ds, arr, header, window)
        _check_finite(path, pixels, "after the Modality LUT and window")
        pseudonyms = deid.identity_pseudonyms(ds, secret) if secret is not None else None
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        original_height=header["rows"],
        original_width=header["columns"],
        bit_depth=header["bits_stored"],
        photometric=header["photometric"],
        modality=header["modality"],
        source_kind="dicom",
        n_frames=header["n_frames"],
        window=applied,
        pseudonyms=pseudonyms,
    )


@contextlib.contextmanager
def _pydicom_unlogged() -> Iterator[None]:
    """pydicom's log records stop at its own logger (a NullHandler) instead of reaching the root's handlers."""
    logger = logging.getLogger("pydicom")
    saved = logger.propagate
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = saved


@contextlib.contextmanager
def opened(path: Path, data: bytes | None = None) -> Iterator[Dataset]:
    """The whole data set of ``path`` (or of ``data``, its bytes), checked complete, for a ``with`` block.

    Inside the block pydicom logs nothing to the root logger and its warnings are caught, so a
    truncated or empty file is a :class:`BadImage` (``empty``, ``truncated``, ``not_an_image``,
    ``invalid_header``) rather than a log line. The one opening shared by 2D decoding and the
    volume readers.
    """
    size = path.stat().st_size if data is None else len(data)
    if size == 0:
        raise BadImage(path, "empty")
    with _pydicom_unlogged(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _read(path, data)
        _check_complete(path, ds, size, caught)
        yield ds


def read_header_bytes(data: bytes, name: str = "instance") -> Dataset:
    """The data set of a DICOM Part 10 file's ``data`` (bytes), read up to the pixel data (pixels not loaded).

    pydicom's log records and warnings stay inside (they can quote element values). Raises :class:`BadImage`
    (``empty``, ``not_an_image``, ``truncated``, ``invalid_header``) naming ``name``, never a value of the file.
    """
    if not data:
        raise BadImage(Path(name), "empty")
    with _pydicom_unlogged(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their texts can quote element values
        return _read(Path(name), data, header_only=True)


def _check_window(window: tuple[float, float]) -> None:
    level, width = window
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"window must be a finite (level, width) with width > 0, got {window!r}")


def _read(path: Path, data: bytes | None, header_only: bool = False) -> Dataset:
    """The data set of ``path`` (or of ``data``, its bytes); ``header_only`` stops before the pixel data.

    Raises :class:`BadImage`: ``not_an_image``, ``truncated`` (the file ends in the header), ``invalid_header``.
    """
    try:
        return pydicom.dcmread(path if data is None else io.BytesIO(data), stop_before_pixels=header_only)
    except InvalidDicomError as err:
        raise BadImage(path, "not_an_image", "no DICOM preamble/DICM prefix", str(err)) from None
    except EOFError as err:
        raise BadImage(path, "truncated", "file ends inside the header", str(err)) from None
    except Exception as err:  # pydicom raises many types on garbage; their text may quote values
        raise BadImage(path, "invalid_header", f"unreadable header ({type(err).__name__})", str(err)) from None


def _check_complete(path: Path, ds: Dataset, size: int, caught: list) -> None:
    """Raise ``truncated`` when the file stops before the data set does.

    pydicom reads a cut file without an error: it keeps the short value of the last element, or
    drops an encapsulated pixel data element whose delimiter is missing and only warns. So the
    declared lengths and offsets of the top-level elements are checked against the file size.
    """
    for warning in caught:
        if "End of file reached" in str(warning.message):
            raise BadImage(
                path, "truncated", "file ends inside a sequence or encapsulated pixel data", str(warning.message)
            )
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsuid == DeflatedExplicitVRLittleEndian:
        return  # offsets refer to the inflated stream, not to the file
    last_end = None
    for tag in ds.keys():  # noqa: SIM118 - iterating a pydicom Dataset gives its elements, not its tags
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.value_tell is None:
            last_end = None
            continue
        value = raw.value
        if raw.length == _UNDEFINED_LENGTH:
            if not isinstance(value, bytes):
                last_end = None
                continue
            end = raw.value_tell + len(value) + 8  # + the sequence delimitation item
        else:
            if isinstance(value, bytes) and len(value) < raw.length:
                raise BadImage(
                    path,
                    "truncated",
                    f"element ({tag.group:04X},{tag.element:04X}) declares {raw.length} bytes, "
                    f"the file holds {len(value)}",
                )
            end = raw.value_tell + raw.length
        if end > size:
            raise BadImage(path, "truncated", f"data set ends at byte {end}, the file at {size}")
        last_end = end
    if last_end is not None and 0 < size - last_end < 8:
        raise BadImage(path, "truncated", f"{size - last_end} stray bytes: a cut element header")


def _check_header(path: Path, ds: Dataset, min_size: int, allow_burned_in: bool) -> dict:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise BadImage(path, "missing_pixel_data", "no Pixel Data element")
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        if photometric == "PALETTE COLOR":  # the pixels will hold LUT entries, not stored values
            bits_stored = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise BadImage(
            path, "invalid_header", f"image pixel module incomplete ({type(err).__name__})", str(err)
        ) from None
    if n_frames > 1:
        raise BadImage(path, "multiframe", f"{n_frames} frames")
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES" and not allow_burned_in:
        raise BadImage(path, "burned_in_annotation", "Burned In Annotation is YES")
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsuid:
        raise BadImage(path, "unsupported_transfer_syntax", "no Transfer Syntax UID in the file meta")
    _check_decoder(path, UID(str(tsuid)))
    if min(rows, columns) < min_size:
        raise BadImage(path, "too_small", f"{rows}x{columns}, minimum side {min_size}")
    if photometric not in _GREY + _COLOUR:
        raise BadImage(path, "unsupported_photometric", f"photometric {photometric}")
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    return {
        "n_frames": n_frames,
        "rows": rows,
        "columns": columns,
        "bits_stored": bits_stored,
        "photometric": photometric,
        "modality": modality,
    }


def _check_decoder(path: Path, tsuid: UID) -> None:
    name = tsuid.name if tsuid.is_transfer_syntax else f"unknown UID {tsuid}"
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError as err:
        raise BadImage(path, "unsupported_transfer_syntax", f"no decoder for {name}", str(err)) from None
    if not decoder.is_available:
        raise BadImage(path, "unsupported_transfer_syntax", f"no installed pixel-data plugin decodes {name}")


def decoded_pixel_array(path: Path, ds: Dataset) -> np.ndarray:
    """``ds.pixel_array``, with every pydicom decoding failure mapped to a :class:`BadImage` reason.

    Reasons: ``unsupported_transfer_syntax`` (no decoder), ``truncated`` (pixel data shorter than the
    image), ``invalid_header`` (a pixel description pydicom cannot use), ``decode_error`` (anything else).
    """
    try:
        return ds.pixel_array
    except NotImplementedError as err:
        raise BadImage(path, "unsupported_transfer_syntax", "pydicom cannot decode it", str(err)) from None
    except ValueError as err:
        if "less than expected" in str(err):
            raise BadImage(path, "truncated", "pixel data shorter than the image size", str(err)) from None
        raise BadImage(path, "decode_error", type(err).__name__, str(err)) from None
    except (AttributeError, KeyError, TypeError) as err:
        raise BadImage(path, "invalid_header", f"pixel description unusable ({type(err).__name__})", str(err)) from None
    except Exception as err:
        raise BadImage(path, "decode_error", f"pixel decoding failed ({type(err).__name__})", str(err)) from None


def _decode_pixels(path: Path, ds: Dataset, rows: int, columns: int) -> np.ndarray:
    arr = decoded_pixel_array(path, ds)
    if arr.shape[:2] != (rows, columns) or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise BadImage(path, "decode_error", f"decoded shape {arr.shape} does not match {rows}x{columns}")
    return arr


def stored_values(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Integer samples reduced to their ``bits_stored`` bits: DICOM PS3.5 section 8.1.1.

    ``arr`` is any integer array (a frame, or frame x samples); a new array of the same shape and
    dtype is returned (the input is not changed). Unsigned data (``signed`` False, Pixel
    Representation 0) keeps ``value & (2**bits_stored - 1)``; signed data (Pixel Representation 1)
    is sign-extended from bit ``bits_stored - 1``, so the result lies in ``[-2**(bits_stored-1),
    2**(bits_stored-1) - 1]``. The dtype's bits are what is masked whatever its signedness, so a
    signed value pydicom left in an unsigned array (or the reverse) is read the way the header
    says. Arrays that are not integers, or whose items have no more than ``bits_stored`` bits,
    come back unchanged.
    """
    width = arr.dtype.itemsize * 8
    if arr.dtype.kind not in "iu" or not 0 < bits_stored < width:
        return arr
    shift = width - bits_stored
    as_declared = arr.view(np.dtype(f"{'i' if signed else 'u'}{arr.dtype.itemsize}"))
    # a left then right shift in the declared signedness: logical (masks) for unsigned, arithmetic
    # (sign-extends) for signed
    out = np.right_shift(np.left_shift(as_declared, shift), shift)
    return out.view(arr.dtype)


def _declared_values(path: Path, ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """The decoded array as the header declares it: stored bits only, or finite floats."""
    if "PixelData" not in ds:  # Float / Double Float Pixel Data: no bits to mask, but NaN/inf possible
        _check_finite(path, arr, "in the Float Pixel Data")
        return arr
    try:
        bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as err:
        raise BadImage(path, "invalid_header", f"Bits Stored unusable ({type(err).__name__})", str(err)) from None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return stored_values(arr, bits_stored, signed)


def _check_finite(path: Path, values: np.ndarray, where: str) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise BadImage(path, "non_finite", f"{bad} of {values.size} pixel values NaN or infinite {where}")


def _reduced_jpeg2000(ds: Dataset, header: dict, min_side: int) -> np.ndarray | None:
    """A grey JPEG 2000 frame at a reduced resolution level, or None to decode it in full."""
    if ds.file_meta.get("TransferSyntaxUID") not in JPEG2000TransferSyntaxes or header["photometric"] not in _GREY:
        return None
    if "PixelData" not in ds or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if jpeg2000.reduction_level(header["rows"], header["columns"], min_side, max_level=1) == 0:
        return None  # already small: nothing to gain
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    reduced = jpeg2000.decode_reduced(frame, header["rows"], header["columns"], header["bits_stored"], signed, min_side)
    return None if reduced is None else reduced.pixels


def _to_display(
    path: Path, ds: Dataset, arr: np.ndarray, header: dict, window: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    photometric = header["photometric"]
    if photometric not in _GREY:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        return to_grey(arr), None
    try:
        # Float pixel data has no Modality LUT (see the module docstring): its values as they are
        modality_lut = "PixelData" in ds
        values = np.asarray(apply_modality_lut(arr, ds) if modality_lut else arr, dtype=np.float64)
        applied: tuple[float, float] | None = None
        if window is not None:
            values, applied = linear_window(values, *window), (float(window[0]), float(window[1]))
        elif header["modality"] == "CT":
            values, applied = _file_or_default_window(ds, values)
        windowed = window is not None or header["modality"] == "CT"
        lo, hi = (0.0, 1.0) if windowed else _modality_range(ds, header["bits_stored"], values)
    except Exception as err:
        raise BadImage(path, "invalid_header", f"LUT/window unusable ({type(err).__name__})", str(err)) from None
    if photometric == "MONOCHROME1":
        values = lo + hi - values
    return values, applied


def linear_window(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map [level - width/2, level + width/2] linearly onto [0, 1], clipping outside."""
    low = level - width / 2.0
    return np.clip((np.asarray(values, dtype=np.float64) - low) / width, 0.0, 1.0)


def _file_or_default_window(ds: Dataset, values: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The file's VOI mapped onto [0, 1]; the default window when the file has none."""
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        out_max = 2 ** int(item.LUTDescriptor[2]) - 1
        # the table is indexed by the Modality-LUT output, and its third descriptor value is
        # the bit depth of its entries
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        return np.clip(np.asarray(out, dtype=np.float64) / out_max, 0.0, 1.0), None
    if has_window:
        center = _first(ds["WindowCenter"])
        width = _first(ds["WindowWidth"])
        if width > 0 and "PixelData" not in ds:
            # float pixel data has no stored-bit range for pydicom's windowing: the window as it is
            # (LINEAR_EXACT, PS3.3 C.11.2.1.3.2)
            return linear_window(values, center, width), (center, width)
        if width > 0:
            out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            y_min, y_max = _windowing_output_range(ds)
            scaled = (np.asarray(out, dtype=np.float64) - y_min) / (y_max - y_min)
            return np.clip(scaled, 0.0, 1.0), (center, width)
    level, width = DEFAULT_CT_WINDOW
    return linear_window(values, level, width), DEFAULT_CT_WINDOW


def _first(element) -> float:
    """Window Center/Width may hold several alternative views (VM > 1): the first is primary."""
    value = element.value
    return float(value[0] if element.VM > 1 else value)


def _stored_range(ds: Dataset, bits_stored: int) -> tuple[float, float]:
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits_stored - 1)), 2.0 ** (bits_stored - 1) - 1
    return 0.0, 2.0**bits_stored - 1


def _windowing_output_range(ds: Dataset) -> tuple[float, float]:
    """The output range pydicom's windowing maps onto (mirrors ``apply_windowing``)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    y_min, y_max = _stored_range(ds, int(ds.BitsStored))
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return y_min, y_max


def _modality_range(ds: Dataset, bits_stored: int, values: np.ndarray) -> tuple[float, float]:
    """Range the stored bits can reach after the Modality LUT: the pivot for MONOCHROME1."""
    if "PixelData" not in ds:  # float pixel data has no bit range: use the data's own
        return float(values.min()), float(values.max())
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    lo, hi = _stored_range(ds, bits_stored)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    return ends[0], ends[1]
