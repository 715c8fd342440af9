"""Decoded images and raster (PNG/JPEG) decoding.

Every image source (DICOM, PNG, JPEG, NPZ) is turned into one :class:`DecodedImage` so that
preprocessing and training never branch on where a picture came from. A file that cannot be
turned into a trustworthy image raises :class:`BadImage` with a short reason code; the caller
quarantines it (see :mod:`medimg.data.quarantine`) instead of training on a half-decoded or
silently wrong picture.

Promises of :func:`decode_raster`:

* the pixels are exactly what the file holds (no resizing, no rescaling to [0, 1]), as float32
  in the file's native range: 0..255 for 8-bit files, 0..65535 for 16-bit ones;
* colour is reduced to grey by ITU-R BT.601 luminance (the weights Pillow's ``convert("L")``
  uses) computed in float, so a grey image stored as RGB gives back exactly its grey values;
* the picture is upright as every viewer shows it: an EXIF Orientation (JPEG APP1, the PNG
  ``eXIf`` chunk; Pillow also reads an XMP ``tiff:Orientation``) other than 1 is applied with
  :func:`PIL.ImageOps.exif_transpose` (all 8 values of the TIFF/EXIF Orientation tag, 0x0112), and the
  reported original size is the displayed one;
* a truncated file is an error, never a partially grey-filled image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, MpoImagePlugin, UnidentifiedImageError

SourceKind = Literal["dicom", "png", "jpeg", "npz"]

#: Every reason code :class:`BadImage` may carry, with what it means.
REASONS: dict[str, str] = {
    "empty": "the file has zero bytes",
    "truncated": "the file ends before the image data does",
    "not_an_image": "the file is not an image of the expected format (e.g. text renamed .dcm)",
    "unsupported_format": "an image, but of a format this decoder does not accept (e.g. GIF)",
    "unsupported_transfer_syntax": "a DICOM transfer syntax no installed decoder can read",
    "unsupported_photometric": "a photometric interpretation that cannot be shown as grey",
    "missing_pixel_data": "a DICOM object without pixel data (e.g. a structured report)",
    "invalid_header": "the header is unreadable or lacks elements needed to decode the pixels",
    "decode_error": "the decoder failed on the compressed data",
    "too_small": "smaller than the minimum side length",
    "multiframe": "more than one frame (not an independent labelled image)",
    "burned_in_annotation": "DICOM says text (possibly identifying) is burned into the pixels",
    "non_finite": "pixel values that are not finite numbers (NaN, +/-infinity), e.g. in DICOM Float Pixel Data",
}

# ITU-R BT.601 luma weights, the ones Pillow uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class BadImage(Exception):
    """A file that must not be used as an image.

    ``path`` is the full path (for the caller's bookkeeping); ``reason`` one of :data:`REASONS`.
    The message (``str``) names only the file name and the problem, never a value read from the
    file, so it is safe to log and to write into a quarantine list even for identifiable DICOM.

    ``library_message`` is the text of the decoding library's own exception (pydicom, Pillow,
    OpenJPEG...) when one caused the refusal, else None. It helps the owner of the file see what
    is wrong, but pydicom's messages can quote element values (possibly identifying), so it is
    never part of ``str(error)`` or ``args``: it may go into the quarantine report inside the
    workspace, never into a log, MLflow, ONNX metadata or a notification.
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "", library_message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown BadImage reason {reason!r}; expected one of {sorted(REASONS)}")
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        self.library_message = library_message
        text = f"{self.path.name}: {reason} ({detail or REASONS[reason]})"
        super().__init__(text)

    @property
    def message(self) -> str:
        """The PHI-free message (``str`` of the error), for the quarantine report."""
        return str(self)

    def __reduce__(self):  # keep picklable across process pools despite the custom __init__
        return (type(self), (self.path, self.reason, self.detail, self.library_message))


@dataclass(frozen=True)
class DecodedImage:
    """One 2-D grey image ready for preprocessing.

    ``pixels`` is float32, shape (rows, columns), in display orientation with higher values
    brighter (MONOCHROME1 DICOM has already been inverted). Its value range depends on the
    source and is described by the other fields: ``bit_depth`` for rasters and unwindowed DICOM,
    [0, 1] whenever ``window`` is set. ``photometric`` uses the DICOM vocabulary for every source
    (``MONOCHROME2`` for a grey PNG, ``RGB`` for a colour JPEG) and describes the file, not the
    (always grey) pixels. ``modality`` is the DICOM Modality, or None when the file cannot say.
    ``window`` is the (level, width) that was applied, None when none was. ``pseudonyms`` holds
    the keyed pseudonyms (:func:`medimg.data.deid.identity_pseudonyms`) of a DICOM decoded with a
    secret, None otherwise; never a raw identifier.
    """

    pixels: np.ndarray
    original_height: int
    original_width: int
    bit_depth: int
    photometric: str
    modality: str | None
    source_kind: SourceKind
    n_frames: int = 1
    window: tuple[float, float] | None = None
    pseudonyms: dict[str, str | None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, np.ndarray) or self.pixels.ndim != 2:
            raise ValueError(f"pixels must be a 2-D array, got {getattr(self.pixels, 'shape', None)}")
        if self.pixels.dtype != np.float32:
            raise ValueError(f"pixels must be float32, got {self.pixels.dtype}")
        if self.source_kind not in ("dicom", "png", "jpeg", "npz"):
            raise ValueError(f"unknown source_kind {self.source_kind!r}")
        self.pixels.setflags(write=False)  # frozen means frozen: no one edits a shared decode


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) float64 luminance with BT.601 weights; exact for R == G == B."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got {rgb.shape}")
    grey = rgb @ _LUMA
    # A grey picture stored as RGB must come back bit-exact, not off by float rounding.
    same = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    grey[same] = rgb[..., 0][same]
    return grey


# The complete IEND chunk: zero length, type, CRC.
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"

#: Pillow format -> source kind. An MPO (CIPA DC-007 Multi-Picture Format: camera files with a
#: stereo or preview picture after the primary one) is a JPEG whose first picture is the image.
_RASTER_KINDS: dict[str, SourceKind] = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg"}


def decode_raster(
    path: str | Path, min_size: int = 16, jpeg_min_side: int | None = None, data: bytes | None = None
) -> DecodedImage:
    """Decode a PNG or JPEG file into a grey :class:`DecodedImage`, upright.

    Raises :class:`BadImage` with reason ``empty``, ``not_an_image``, ``unsupported_format``
    (any format but PNG/JPEG, whatever the extension), ``truncated`` (the decoder ran out of data,
    or the JPEG has no end-of-image marker after its last scan, or the PNG has no IEND chunk),
    ``invalid_header`` (including an EXIF block Pillow cannot read, so the orientation is unknown),
    ``decode_error``, ``multiframe`` (animated PNG) or ``too_small`` (a side below ``min_size``).
    Every JPEG variant Pillow opens is accepted (baseline, progressive, CMYK/Adobe, JFIF, EXIF,
    and MPO, of which the primary picture is decoded; ``n_frames`` is then 1).
    8- and 16-bit grey values are kept in their native range; colour (RGB, RGBA with alpha
    dropped, palette, CMYK) becomes luminance. Pillow keeps only 8 bits of 16-bit colour PNGs, and
    ``bit_depth`` says 8 then, which is what the pixels really have.
    The EXIF orientation is applied after decoding (see the module docstring), so
    ``pixels``, ``original_height`` and ``original_width`` are all in display orientation.
    With ``jpeg_min_side``, a JPEG is decoded at the largest of 1/2, 1/4 and 1/8 scale (libjpeg's
    DCT scaling) that keeps its shorter side >= that, i.e. the largest power of two ``s <= 8``
    with ``min(height, width) >= s * jpeg_min_side``, then turned upright; the original size is
    still what is reported.
    ``data`` is the file's bytes when the caller has read them already (the file is not read again).
    """
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    if not data:
        raise BadImage(path, "empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise BadImage(path, "not_an_image", "no PNG or JPEG signature", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(path, "invalid_header", type(err).__name__, str(err)) from None
    with image:
        kind = _RASTER_KINDS.get(image.format or "")
        if kind is None:
            raise BadImage(path, "unsupported_format", f"format {image.format}, expected PNG or JPEG")
        n_frames = int(getattr(image, "n_frames", 1))
        if n_frames > 1 and image.format != "MPO":
            raise BadImage(path, "multiframe", f"{n_frames} frames")
        width, height = image.size
        if min(height, width) < min_size:
            raise BadImage(path, "too_small", f"{height}x{width}, minimum side {min_size}")
        if kind == "jpeg" and jpeg_min_side:
            # Pillow picks the largest s in (8, 4, 2) with s <= min(width // m, height // m),
            # which for m x m is exactly the rule above.
            image.draft(image.mode, (jpeg_min_side, jpeg_min_side))
        try:
            image.load()  # LOAD_TRUNCATED_IMAGES is False: a short file raises here
        except OSError as err:
            if "truncated" in str(err).lower():
                raise BadImage(path, "truncated", "decoder ran out of data", str(err)) from None
            raise BadImage(path, "decode_error", type(err).__name__, str(err)) from None
        except (SyntaxError, ValueError) as err:
            raise BadImage(path, "decode_error", type(err).__name__, str(err)) from None
        _check_end_marker(path, kind, _primary_picture(image, data))
        if _upright(path, image):
            height, width = width, height
        pixels, bit_depth, photometric = _to_grey_array(path, image)
    return DecodedImage(
        pixels=pixels.astype(np.float32),
        original_height=height,
        original_width=width,
        bit_depth=bit_depth,
        photometric=photometric,
        modality=None,
        source_kind=kind,
        n_frames=1,
    )


#: EXIF Orientation values whose display swaps the stored rows and columns (transpose, the two
#: 90-degree rotations, transverse).
_SWAPS_SIDES = (5, 6, 7, 8)


def _upright(path: Path, image: Image.Image) -> bool:
    """Apply the EXIF Orientation in place (Pillow's ``exif_transpose``); True when rows and columns swapped.

    A file whose EXIF block Pillow cannot read (it raises, or warns that IFD0, where Orientation
    lives, is corrupt, and finds no Orientation) is refused: the orientation is then unknown.
    """
    try:
        orientation = image.getexif().get(0x0112)
        if orientation is None and image.info.get("exif"):
            damage = _exif_damage(image.info["exif"])
            if damage:
                raise BadImage(path, "invalid_header", "EXIF block damaged, orientation unknown", damage)
        if orientation not in range(2, 9):
            return False
        ImageOps.exif_transpose(image, in_place=True)
    except BadImage:
        raise
    except Exception as err:  # Pillow's EXIF parser raises many types on a damaged block
        raise BadImage(
            path, "invalid_header", f"EXIF orientation unreadable ({type(err).__name__})", str(err)
        ) from None
    return orientation in _SWAPS_SIDES


def _exif_damage(raw: bytes) -> str | None:
    """Pillow's complaints about an EXIF block's first IFD, parsed afresh (its warnings), or None."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.Exif().load(raw)
    return "; ".join(str(w.message) for w in caught) or None


def _primary_picture(image: Image.Image, data: bytes) -> bytes:
    """The bytes of the picture that was decoded: an MPO's first picture, else the whole file.

    The first MP Entry of the MP Index IFD (CIPA DC-007) gives the first picture's size; it starts
    at offset 0.
    """
    if image.format != "MPO" or not isinstance(image, MpoImagePlugin.MpoImageFile):
        return data
    mpinfo = image.mpinfo
    if mpinfo is None:
        return data
    try:
        size = int(mpinfo[0xB002][0]["Size"])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return data
    return data[:size] if 0 < size <= len(data) else data


def _check_end_marker(path: Path, kind: SourceKind, data: bytes) -> None:
    # libjpeg fills the missing rows of a JPEG cut just before EOI without an error, and Pillow
    # does not require IEND: check the structure ourselves.
    if kind == "jpeg":
        last_scan = data.rfind(b"\xff\xda")
        if data.rfind(b"\xff\xd9") < last_scan:
            raise BadImage(path, "truncated", "no JPEG end-of-image marker after the last scan")
    elif kind == "png" and _PNG_IEND not in data:
        raise BadImage(path, "truncated", "no PNG IEND chunk")


def _to_grey_array(path: Path, image: Image.Image) -> tuple[np.ndarray, int, str]:
    mode = image.mode
    if mode in ("L", "LA"):
        return np.asarray(image.getchannel(0), dtype=np.float64), 8, "MONOCHROME2"
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float64), 8, "MONOCHROME2"
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64), 16, "MONOCHROME2"
    if mode == "I":  # 16-bit grey PNGs on older Pillow, 32-bit integer TIFF-likes
        arr = np.asarray(image, dtype=np.float64)
        bits = 16 if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 65535) else 32
        return arr, bits, "MONOCHROME2"
    if mode in ("RGB", "RGBA"):
        return to_grey(np.asarray(image)[..., :3]), 8, "RGB"
    if mode in ("P", "PA"):
        return to_grey(np.asarray(image.convert("RGB"))), 8, "PALETTE COLOR"
    if mode == "CMYK":
        return to_grey(np.asarray(image.convert("RGB"))), 8, "RGB"
    if mode in ("YCbCr",):
        return to_grey(np.asarray(image.convert("RGB"))), 8, "YBR_FULL"
    raise BadImage(path, "unsupported_photometric", f"Pillow mode {mode}")
