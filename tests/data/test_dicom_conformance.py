"""Decoding conformance: every DICOM file pydicom ships (its own test files and the ``pydicom-data``
package), plus medimg's shared DICOM samples and the field cases, through :func:`decode_dicom`.

Each file either decodes to what pydicom itself gives after the documented steps, computed here
independently of medimg's code, or is refused with a reason whose evidence this test checks in
the file. A silent mismatch fails.

The reference for one file:

1. pydicom's own decode (:func:`pydicom.pixels.pixel_array` on a data set read here); for a lossy
   transfer syntax, with pydicom's Pillow plugin where it decodes the file, while medimg's
   ``Dataset.pixel_array`` takes the first plugin pydicom tries (pylibjpeg here), so two JPEG /
   JPEG 2000 decoders are compared;
2. integer Pixel Data: bits above Bits Stored cleared, signed data sign-extended from bit
   ``BitsStored - 1`` (DICOM PS3.5 section 8.1.1), written here as ``&`` and ``where``;
3. grey: the Modality LUT (:func:`pydicom.pixels.apply_modality_lut`; float pixel data: none),
   CT windowed onto [0, 1] by the file's VOI (the LINEAR formula of PS3.3 C.11.2.1.2.1, or the
   VOI LUT Sequence) or level 40 / width 400, MONOCHROME1 inverted within the range the stored
   bits reach after the Modality LUT ([0, 1] when windowed, the data range for float data);
   colour: PALETTE COLOR through its LUT (:func:`pydicom.pixels.apply_color_lut`), then
   0.299 R + 0.587 G + 0.114 B.

Agreement: lossless transfer syntaxes exactly (``atol`` 1e-6 on [0, 1] windowed CT, where the
two window formulas may round differently); lossy ones, decoded by another plugin, within 1% of
the nominal range (2**BitsStored - 1 times the rescale slope, or 1 when windowed) at every pixel
and 0.2% on average. Measured: the two JPEG baseline decoders differ by at most 2 levels per
RGB sample (0.9 grey levels after BT.601), the two JPEG 2000 decoders (both OpenJPEG) not at all.

The tally is printed: run with ``-s`` or ``-rA`` to see it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_files
from pydicom.data.data_manager import external_data_sources
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from datapaths import DICOM, FIELD_CASES
from medimg.data.dicom import decode_dicom
from medimg.data.images import BadImage

LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K}
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
MIN_SIDE = 16  # decode_dicom's default


def _pydicom_files() -> list[str]:
    """pydicom's test files (local and external sources), files only: the pattern also lists folders."""
    return [f for f in get_testdata_files() if os.path.isfile(f)]


def _all_files() -> list[Path]:
    extra = [p for root in (DICOM, FIELD_CASES) for p in sorted(root.rglob("*")) if p.is_file()]
    return [Path(f) for f in _pydicom_files()] + extra


def test_the_file_list_includes_pydicom_data_and_never_downloads(monkeypatch):
    from pydicom.data import download

    # pydicom's own switch: any download attempt now fails and is reported as a warning
    monkeypatch.setattr(download, "_SIMULATE_NETWORK_OUTAGE", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = _pydicom_files()
    assert not [w for w in caught if "download" in str(w.message).lower()], "a download was attempted"
    assert "pydicom-data" in external_data_sources()
    store = Path(external_data_sources()["pydicom-data"].data_path)
    external = [f for f in files if Path(f).is_relative_to(store)]
    assert len(external) == len([p for p in store.iterdir() if p.is_file()]) == 68
    assert {"RG1_J2KR.dcm", "MR2_UNCR.dcm", "JPEG2000_UNC.dcm"} <= {Path(f).name for f in external}
    assert len(files) - len(external) == 176  # pydicom 3.0.2's own test_files (folders excluded)


# --------------------------------------------------------------------------- the reference decode


def _stored(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """PS3.5 section 8.1.1, written literally: the low ``bits_stored`` bits, two's complement if signed."""
    bits = arr.astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        bits = np.where(bits >= 1 << (bits_stored - 1), bits - (1 << bits_stored), bits)
    return bits


def _linear_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) and C.11.2.1.3.2 (LINEAR_EXACT), output range [0, 1]."""
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 1.0, y)
    return y


def _first(value) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def _ct_window(ds, values: np.ndarray) -> np.ndarray:
    if ds.get("VOILUTSequence"):
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        return np.clip(out / (2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1), 0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if function == "SIGMOID":
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return _linear_window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    return np.clip((values - (40.0 - 200.0)) / 400.0, 0.0, 1.0)


def _modality_range(ds, values: np.ndarray) -> tuple[float, float]:
    if "PixelData" not in ds:
        return float(values.min()), float(values.max())
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    bits = int(ds.BitsStored)
    lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if int(ds.PixelRepresentation) else (0.0, 2.0**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return tuple(sorted((lo * slope + intercept, hi * slope + intercept)))


def _reference(path: Path) -> tuple[np.ndarray, str]:
    """The display values pydicom's own decode gives after the documented steps, and the plugin used."""
    ds = pydicom.dcmread(path)
    tsuid = ds.file_meta.TransferSyntaxUID
    plugin = ""
    if tsuid in LOSSY and "pillow" in get_decoder(tsuid).available_plugins:
        try:
            arr, plugin = pixel_array(ds, decoding_plugin="pillow"), "pillow"
        except Exception:  # e.g. Pillow's JPEG plugin has no 12-bit JPEG: pydicom's default then
            plugin = ""
    if not plugin:
        arr = pixel_array(ds)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if "PixelData" in ds:
        arr = _stored(arr, int(ds.BitsStored), int(ds.PixelRepresentation) == 1)
    if photometric not in GREY:
        rgb = apply_color_lut(arr, ds) if photometric == "PALETTE COLOR" else arr
        rgb = np.asarray(rgb, dtype=np.float64)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2], plugin or "default"
    values = np.asarray(apply_modality_lut(arr, ds) if "PixelData" in ds else arr, dtype=np.float64)
    windowed = str(ds.get("Modality", "")).strip().upper() == "CT"
    if windowed:
        values = _ct_window(ds, values)
    if photometric == "MONOCHROME1":
        lo, hi = (0.0, 1.0) if windowed else _modality_range(ds, values)
        values = lo + hi - values
    return values, plugin or "default"


# --------------------------------------------------------------------------- evidence for refusals


def _read_warnings(path: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(Exception):  # only its warnings matter here
            pydicom.dcmread(path)
    return [str(w.message) for w in caught]


def _evidence(path: Path, reason: str) -> bool:
    """True when the file shows what ``reason`` claims (judged from pydicom's reading of it)."""
    if reason == "empty":
        return path.stat().st_size == 0
    if reason == "not_an_image":
        try:
            pydicom.dcmread(path)
        except InvalidDicomError:
            return True
        return False
    if reason == "truncated":
        if any("End of file" in w for w in _read_warnings(path)):
            return True
        ds = pydicom.dcmread(path)
        return any(
            isinstance(raw, RawDataElement)
            and isinstance(raw.value, bytes)
            and raw.length != 0xFFFFFFFF
            and len(raw.value) < raw.length
            for raw in (ds.get_item(tag) for tag in list(ds.keys()))
        )
    ds = pydicom.dcmread(path)
    if reason == "missing_pixel_data":
        return not any(k in ds for k in PIXEL_KEYWORDS)
    if reason == "invalid_header":
        try:
            int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated), str(ds.PhotometricInterpretation)
            int(ds.get("NumberOfFrames") or 1)
        except (AttributeError, TypeError, ValueError):
            return True
        return False
    if reason == "multiframe":
        return int(ds.get("NumberOfFrames") or 1) > 1
    if reason == "too_small":
        return min(int(ds.Rows), int(ds.Columns)) < MIN_SIDE
    if reason == "burned_in_annotation":
        return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    if reason == "unsupported_transfer_syntax":
        tsuid = ds.file_meta.get("TransferSyntaxUID")
        try:
            return not tsuid or not get_decoder(tsuid).is_available
        except NotImplementedError:
            return True
    if reason == "unsupported_photometric":
        return str(ds.PhotometricInterpretation).strip().upper() not in GREY + COLOUR
    if reason == "decode_error":
        try:
            pixel_array(ds)
        except Exception:
            return True
        return False
    if reason == "non_finite":
        return not np.isfinite(pixel_array(ds)).all()
    return False


# --------------------------------------------------------------------------- the conformance run


def _nominal_range(ds, windowed: bool) -> float:
    """The span the display values can take: 1 when windowed, else what the stored bits reach."""
    if windowed:
        return 1.0
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    return (2.0**bits - 1) * abs(float(ds.get("RescaleSlope", 1) or 1))


def _agree(got: np.ndarray, want: np.ndarray, lossy: bool, windowed: bool, span: float) -> str | None:
    """'exact', 'tolerance', or None when they disagree."""
    if got.shape != want.shape or not np.isfinite(got).all():
        return None
    if np.array_equal(got, want.astype(np.float32)):
        return "exact"
    diff = np.abs(got.astype(np.float64) - want)
    if not lossy:
        # windowed CT: two formulas for the same window, rounding apart in float64 then float32
        return "exact" if windowed and diff.max() <= 1e-6 else None
    return "tolerance" if diff.max() <= 0.01 * span and diff.mean() <= 0.002 * span else None


def test_every_dicom_file_decodes_like_pydicom_or_is_refused_for_a_true_reason():
    files = _all_files()
    tally: Counter[str] = Counter()
    worst: dict[str, tuple[float, float, float]] = {}
    failures: list[str] = []
    for path in files:
        name = f"{path.parent.name}/{path.name}"
        refusal: BadImage | None = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = decode_dicom(path)
        except BadImage as err:
            refusal = err
        if refusal is not None:
            tally[f"refused: {refusal.reason}"] += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ok = _evidence(path, refusal.reason)
            if not ok:
                failures.append(f"{name}: refused as {refusal.reason} without evidence in the file ({refusal.detail})")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            want, plugin = _reference(path)
        frames = int(ds.get("NumberOfFrames") or 1)
        if frames != 1 or min(int(ds.Rows), int(ds.Columns)) < MIN_SIDE:
            failures.append(f"{name}: decoded although it has {frames} frames, {ds.Rows}x{ds.Columns}")
            continue
        lossy = ds.file_meta.TransferSyntaxUID in LOSSY
        windowed = image.window is not None or image.modality == "CT"
        span = _nominal_range(ds, windowed)
        verdict = _agree(image.pixels, want, lossy, windowed, span)
        if verdict is None:
            detail = (
                f"max |diff| {np.abs(image.pixels - want).max():.4g}"
                if image.pixels.shape == want.shape
                else f"shape {image.pixels.shape} vs {want.shape}"
            )
            failures.append(f"{name}: decoded pixels differ from pydicom's ({plugin}): {detail}")
            continue
        tally[f"decoded {verdict}" + (" (lossy, other plugin)" if verdict == "tolerance" else "")] += 1
        if verdict == "tolerance":
            diff = np.abs(image.pixels - want)
            worst[name] = (float(diff.max()), float(diff.mean()), span)
    n_pydicom = len(_pydicom_files())
    header = (
        f"DICOM conformance over {len(files)} files ({n_pydicom} from pydicom and pydicom-data, "
        f"{len(files) - n_pydicom} from medimg's shared data and field cases):"
    )
    lines = [header] + [f"  {n:4d}  {k}" for k, n in sorted(tally.items())]
    lines += [
        f"  lossy {n}: |diff| max {d[0]:.3g}, mean {d[1]:.3g}, of a range of {d[2]:.0f}"
        for n, d in sorted(worst.items())
    ]
    print("\n".join(lines))
    assert not failures, "\n".join(failures)
    assert sum(tally.values()) == len(files)
    # the run covers what it says it covers: something decoded, and several kinds of refusal
    assert tally["decoded exact"] > 100 and {
        "refused: multiframe",
        "refused: missing_pixel_data",
        "refused: not_an_image",
        "refused: truncated",
    } <= set(tally)
