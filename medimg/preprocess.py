"""The preprocessing contract: one definition used by ingest, training, evaluation, export and prediction.

``contract`` is what goes into ONNX metadata (and, hashed by ``contract_hash``, into every
manifest row); the functions below are the only implementation of it in medimg. The contract has
two halves:

1. **File -> grey uint8 at ``size`` x ``size``** (:func:`prepare_file` = :func:`decode_file`, then
   :func:`prepare` = :func:`grey_uint8`, then :func:`to_contract_size`). Ingest runs it once per
   file and stores the result as the dataset's PNG, so training, evaluation, export and gate all
   read images that already went through it; prediction runs the same functions on new files.
2. **grey uint8 -> tensor** (:func:`apply`): scaled to [0, 1], ``(x - mean) / std``, repeated to
   ``channels``, NCHW float32. ``apply`` given images that are not yet ``size`` x ``size`` first
   runs :func:`to_contract_size` on them, so no second resizing rule exists.

A consumer without medimg reproduces it from the metadata: grey uint8 pixels, resized to ``size``
x ``size`` (``resize``/``resize_sampling`` say how), scaled to [0, 1], then ``(x - mean) /
std``, repeated to ``channels``, laid out NCHW float32.

From a file to grey uint8 (contract version 2 wrote this into the metadata as ``grey_uint8``;
version 1 models follow the same rules, they were only implicit then). ``rint`` is round half
to even (``numpy.rint``). With ``intensity: auto`` (the default):

* PNG/JPEG: the file's grey values, upright (its EXIF Orientation applied, as viewers show it;
  an MPO's primary picture); colour becomes BT.601 luminance ``0.299 R + 0.587 G +
  0.114 B`` in float64 (alpha dropped, palette expanded, exact when R == G == B); then
  ``uint8 = clip(rint(v * 255 / (2**bit_depth - 1)), 0, 255)``: 8-bit files are kept as they
  are, 16-bit files are scaled by their full range.
* DICOM: bits above Bits Stored cleared (DICOM PS3.5 section 8.1.1; sign-extended when signed),
  the Modality LUT (rescale slope/intercept) applied and MONOCHROME1 inverted
  (:func:`medimg.data.dicom.decode_dicom`); Float Pixel Data used as stored, and refused with
  ``non_finite`` when a value is NaN or infinite. CT is windowed onto [0, 1] (``ct_window`` when set,
  else the file's VOI, else level 40 / width 400 HU) and ``uint8 = rint(v * 255)``. Every other
  DICOM is mapped by its own range: ``uint8 = rint((v - min) / (max - min) * 255)``, all zeros
  for a constant image.

``intensity: minmax`` maps every image by its own min and max; ``intensity: percentile`` by its
``percentiles`` (computed on every k-th row and column, k = max(1, min(H, W) // 512)), clipped.

Then, at the grey uint8 image (contract version 3 adds these keys; their defaults are the
version 2 behaviour):

* ``resize_policy``: ``stretch`` (aspect ratio not kept), ``pad`` (centred on a black square of
  the longer side; extra pixel right/bottom), ``crop`` (centred square of the shorter side;
  extra pixel dropped right/bottom);
* resizing to ``size`` x ``size``: without ``antialias`` (bilinear/bicubic) the sampling of
  PyTorch ``F.interpolate(align_corners=False, antialias=False)`` on ``x / 255`` in float32, then
  ``uint8 = clip(rint(y * 255))``: output pixel ``d`` samples ``s = max((d + 0.5) * in / out -
  0.5, 0)`` between ``floor(s)`` and ``min(floor(s) + 1, in - 1)``, per axis (bilinear; bicubic:
  Keys' kernel, a = -0.75, on the four neighbours). PyTorch itself gives the same bytes up to
  float32 rounding (one grey level in about 1% of the pixels for bilinear); with
  ``antialias`` or ``interpolation: area`` as Pillow ``Image.resize`` (BILINEAR, BICUBIC or
  BOX), whose kernels widen with the reduction factor;
* ``denoise: median3``: a 3x3 median (Pillow ``MedianFilter(3)``) at the contract size;
* ``clahe``: ``skimage.exposure.equalize_adapthist`` (tiles of 1/8 of the side, 256 bins,
  ``clahe_clip_limit``) at the contract size, then ``rint(y * 255)``.

``jpeg_dct_scaling`` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 of its size (Pillow
``draft``), the largest reduction that keeps the shorter side at least ``2 * size``; the
resize then starts from that. ``jpeg2000_reduce`` (contract version 4; off in older contracts)
does the same for JPEG 2000 DICOM: OpenJPEG decodes only the coarsest wavelet resolution level
(1/2^r per side) whose shorter side stays at least ``2 * size``
(:mod:`medimg.data.jpeg2000`), the image the wavelet's low-pass filter leaves, instead of the
full image. Both change the resize's input slightly (a pre-filtered, smaller image), never the
rest of the contract; they are declared here so a model predicts on what it was trained on.
Filtering and resizing run after the reduction, at the contract size, so their cost does not
grow with the original resolution.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from medimg import volume_contract
from medimg.config import PreprocessConfig
from medimg.segmentation import contract as segmentation_contract

if TYPE_CHECKING:
    import torch

CONTRACT_VERSION = 4

#: How medimg turns a decoded file into the contract's grey uint8 input (see the module docstring).
GREY_UINT8 = {
    "png_jpeg": "grey values as stored; colour -> 0.299 R + 0.587 G + 0.114 B in float64 (alpha dropped); "
    "uint8 = clip(rint(v * 255 / (2**bit_depth - 1)), 0, 255): 8-bit kept, 16-bit scaled",
    "dicom": "Modality LUT applied, MONOCHROME1 inverted; CT: window (file VOI, else level 40 width 400 HU) onto "
    "[0, 1], uint8 = rint(v * 255); other modalities: uint8 = rint((v - min) / (max - min) * 255), "
    "0 for a constant image",
    "rint": "round half to even",
}
_GREY_OTHER = {
    "minmax": "every image: uint8 = rint((v - min) / (max - min) * 255), 0 for a constant image",
    "percentile": "every image: lo, hi = percentiles of v (every k-th row/column, k = max(1, min(H, W) // 512)); "
    "uint8 = rint(clip((v - lo) / (hi - lo), 0, 1) * 255), 0 when hi <= lo",
}
RESIZE_SAMPLING = (
    "half-pixel centres (align_corners=False): s = max((d + 0.5) * in / out - 0.5, 0), "
    "neighbours floor(s) and min(floor(s) + 1, in - 1), per axis, applied to x / 255; "
    "float32 arithmetic (s = float32(in) / float32(out) * (d + 0.5) - 0.5, weights 1 - t and t, "
    "t = s - floor(s)), along the width first, then the height; then uint8 = clip(rint(y * 255))"
)
_PIL_SAMPLING = (
    "Pillow Image.resize on uint8 with the {filter} filter, whose support widens by the reduction "
    "factor (antialiased), rounded to uint8"
)
_POLICY_TEXT = {
    "stretch": "aspect ratio not kept",
    "pad": "padded to square with black, centred",
    "crop": "centre-cropped to square",
}


def _uses_pillow(config: PreprocessConfig) -> bool:
    return config.interpolation == "area" or config.antialias


def contract(config: PreprocessConfig) -> dict:
    """The JSON-serialisable description that goes into ONNX metadata and is hashed into manifests.

    A 3D contract (``preprocess.dims: 3``) is :func:`medimg.volume_contract.contract`; one with a stored grid
    (``preprocess.volume.shape``, segmentation) is :func:`medimg.segmentation.contract.contract`, so the grid is
    part of the hash.
    """
    if config.dims == 3 and config.volume.shape is not None:
        return segmentation_contract.contract(config)
    if config.dims == 3:
        return volume_contract.contract(config)
    aa = "antialias" if _uses_pillow(config) else "no antialias"
    interp = "area (box)" if config.interpolation == "area" else config.interpolation
    pil_filter = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "area": "BOX"}[config.interpolation]
    grey = GREY_UINT8 if config.intensity == "auto" else {**GREY_UINT8, "mode": _GREY_OTHER[config.intensity]}
    return {
        "version": CONTRACT_VERSION,
        "input_dtype": "uint8 grey",
        "size": config.size,
        "resize": f"{interp}, {aa}, {_POLICY_TEXT[config.resize]}",
        "resize_sampling": _PIL_SAMPLING.format(filter=pil_filter) if _uses_pillow(config) else RESIZE_SAMPLING,
        "grey_uint8": grey,
        "scale": "x / 255",
        "mean": config.mean,
        "std": config.std,
        "channels": config.channels,
        "layout": "NCHW float32",
        "resize_policy": config.resize,
        "interpolation": config.interpolation,
        "antialias": config.antialias,
        "intensity": config.intensity,
        "percentiles": list(config.percentiles),
        "ct_window": list(config.ct_window) if config.ct_window is not None else None,
        "denoise": config.denoise,
        "clahe": config.clahe,
        "clahe_clip_limit": config.clahe_clip_limit,
        "jpeg_dct_scaling": config.jpeg_dct_scaling,
        "jpeg2000_reduce": config.jpeg2000_reduce,
        "order": [
            "decode",
            "grey_uint8",
            "resize_policy",
            "resize",
            "denoise",
            "clahe",
            "scale",
            "normalise",
            "channels",
        ],
    }


_CONTRACT_FIELDS = {
    "size": "size",
    "resize_policy": "resize",
    "interpolation": "interpolation",
    "antialias": "antialias",
    "intensity": "intensity",
    "percentiles": "percentiles",
    "ct_window": "ct_window",
    "denoise": "denoise",
    "clahe": "clahe",
    "clahe_clip_limit": "clahe_clip_limit",
    "jpeg_dct_scaling": "jpeg_dct_scaling",
    "jpeg2000_reduce": "jpeg2000_reduce",
    "channels": "channels",
    "mean": "mean",
    "std": "std",
}


def config_from_contract(data: dict) -> PreprocessConfig:
    """The :class:`PreprocessConfig` a contract (e.g. from ONNX metadata) describes.

    Keys a version 1, 2 or 3 contract lacks take their defaults, which are exactly what those
    versions did, so every model preprocesses the way it was trained. A 3D contract (``dims`` 3) goes to
    :func:`medimg.volume_contract.config_from_contract`.
    """
    if segmentation_contract.is_segmentation_contract(data):
        return segmentation_contract.config_from_contract(data)
    if data.get("dims") == 3:
        return volume_contract.config_from_contract(data)
    values = {field: data[key] for key, field in _CONTRACT_FIELDS.items() if data.get(key) is not None}
    return PreprocessConfig(**values)


def contract_hash(config: PreprocessConfig) -> str:
    """The first 16 hex digits of SHA-256 over the contract's sorted JSON (:func:`contract`): same settings, same
    hash.
    """
    return hashlib.sha256(json.dumps(contract(config), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- file -> grey uint8


def grey_uint8(image, config: PreprocessConfig | None = None) -> np.ndarray:
    """A :class:`medimg.data.images.DecodedImage` -> uint8 ``[H, W]`` by the contract's intensity rule.

    Deterministic: the same file gives the same bytes on every machine (float64 arithmetic,
    round half to even). ``config`` None means ``intensity: auto``. The arithmetic runs in place
    on one float64 buffer, in the order the rules are written, so it gives the same bytes as the
    formulas evaluated literally.
    """
    mode = "auto" if config is None else config.intensity
    if mode == "auto" and image.source_kind != "dicom" and image.bit_depth == 8:
        # v * 255 / 255 is v: skip the float64 copies (bit-identical to the general rule below)
        return np.clip(np.rint(image.pixels), 0, 255).astype(np.uint8)
    v = np.array(image.pixels, dtype=np.float64)
    if not np.isfinite(v).all():  # min/max would be NaN and the image silently all zeros
        raise ValueError("grey_uint8: the image has NaN or infinite pixels (decoders refuse them as 'non_finite')")
    if mode == "auto":
        if image.source_kind == "dicom":
            if image.window is not None or image.modality == "CT":  # decode_dicom windowed it onto [0, 1]
                v *= 255.0
            else:
                _by_range(v, float(v.min()), float(v.max()))
        else:
            v *= 255.0 / (2.0**image.bit_depth - 1.0)
    elif mode == "minmax":
        _by_range(v, float(v.min()), float(v.max()))
    else:
        assert config is not None  # no config means "auto", handled above
        k = max(1, min(v.shape) // 512)
        lo, hi = np.percentile(v[::k, ::k], list(config.percentiles))
        _by_range(v, float(lo), float(hi))
    np.rint(v, out=v)
    np.clip(v, 0, 255, out=v)
    return v.astype(np.uint8)


def _by_range(v: np.ndarray, lo: float, hi: float) -> None:
    """In place: ``clip((v - lo) / (hi - lo), 0, 1) * 255``, all zeros when ``hi <= lo``."""
    if not hi > lo:
        v[...] = 0.0
        return
    v -= lo
    v /= hi - lo
    np.clip(v, 0.0, 1.0, out=v)
    v *= 255.0


def to_contract_size(grey: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """grey uint8 ``[H, W]`` -> uint8 ``[size, size]``: resize policy, resize, denoise, CLAHE."""
    grey = np.asarray(grey)
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError(f"expected a grey uint8 [H, W] image, got {grey.dtype} {grey.shape}")
    grey = _square(grey, config.resize)
    size = config.size
    if grey.shape != (size, size):
        if _uses_pillow(config):
            flt = {
                "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC,
                "area": Image.Resampling.BOX,
            }[config.interpolation]
            grey = np.asarray(Image.fromarray(grey).resize((size, size), flt))
        else:
            grey = _resize_sampled(grey, size, config.interpolation)
    if config.denoise == "median3":
        grey = np.asarray(Image.fromarray(grey).filter(ImageFilter.MedianFilter(3)))
    if config.clahe:
        from skimage.exposure import equalize_adapthist  # here: scikit-image only for the CLAHE option

        eq = equalize_adapthist(grey, clip_limit=config.clahe_clip_limit, nbins=256)
        grey = np.clip(np.rint(eq * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(grey, dtype=np.uint8)


def _taps(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [n_out, k] and float32 weights [n_out, k] of one axis: PyTorch's sampling.

    Half-pixel centres, in float32 as PyTorch computes them: ``s = (d + 0.5) * (n_in / n_out) -
    0.5``. Bilinear clamps ``s`` at 0 and blends ``floor(s)`` and ``min(floor(s) + 1, n_in - 1)``
    with weights ``1 - t`` and ``t`` (``t = s - floor(s)``); bicubic uses the four neighbours
    ``floor(s) - 1 .. floor(s) + 2`` (clamped to the image) with Keys' kernel, a = -0.75.
    """
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    s = scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
    if mode == "bilinear":
        s = np.maximum(s, f32(0.0))
        i0 = s.astype(np.int64)
        t = s - i0.astype(f32)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return np.stack([i0, i1], 1), np.stack([f32(1.0) - t, t], 1)
    i = np.floor(s).astype(np.int64)
    t = (s - i.astype(f32)).astype(np.float64)
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], 1).astype(f32)
    index = np.clip(np.stack([i - 1, i, i + 1, i + 2], 1), 0, n_in - 1)
    return index, weights


def _resize_sampled(grey: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Separable resampling that reads only the source pixels it needs (cheap for huge inputs).

    Along the width first, then the height, in float32; ``F.interpolate`` gives the same
    uint8 result except for float32 rounding at exact .5 boundaries (bicubic: identical in tests).
    """
    h, w = grey.shape
    rows, wr = _taps(h, size, mode)
    cols, wc = _taps(w, size, mode)
    x = grey[rows][:, :, cols].astype(np.float32) / np.float32(255.0)  # [size, kr, size, kc]
    along_w = x[..., 0] * wc[None, None, :, 0]
    for k in range(1, wc.shape[1]):
        along_w = along_w + x[..., k] * wc[None, None, :, k]  # [size, kr, size]
    y = along_w[:, 0] * wr[:, 0, None]
    for k in range(1, wr.shape[1]):
        y = y + along_w[:, k] * wr[:, k, None]
    return np.clip(np.rint(y * np.float32(255.0)), 0, 255).astype(np.uint8)


def _square(grey: np.ndarray, policy: str) -> np.ndarray:
    h, w = grey.shape
    if policy == "stretch" or h == w:
        return grey
    if policy == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return grey[top : top + side, left : left + side]
    side = max(h, w)
    out = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = grey
    return out


def prepare(image, config: PreprocessConfig) -> np.ndarray:
    """A decoded image -> the stored uint8 ``[size, size]`` image of the contract."""
    return to_contract_size(grey_uint8(image, config), config)


def decode_file(
    path: str | Path,
    config: PreprocessConfig,
    min_size: int = 16,
    allow_burned_in: bool = False,
    *,
    kind: str | None = None,
    data: bytes | None = None,
    secret: bytes | None = None,
):
    """Decode a DICOM, PNG or JPEG file the way the contract says (raises ``BadImage``).

    ``kind`` "dicom" or "raster" says which decoder to use (a DICOM folder's text file is then
    ``not_an_image`` for the DICOM reason); None tells DICOM by its ``DICM`` marker, not its
    name. ``ct_window`` windows CT files only (:func:`~medimg.data.dicom.decode_dicom`'s
    ``ct_window``). JPEGs are decoded at a reduced scale when ``jpeg_dct_scaling`` is on, JPEG
    2000 DICOM at a reduced resolution level when ``jpeg2000_reduce`` is (see the module
    docstring). ``data`` is the file's bytes when the caller has read them (the file is then not
    read again); ``secret`` is passed to DICOM decoding for the header's keyed pseudonyms.
    """
    # here: pydicom (0.2 s) loads when a file is first decoded, not with every user of the contract
    from medimg.data.dicom import decode_dicom
    from medimg.data.images import decode_raster

    path = Path(path)
    if kind is None:
        kind = "dicom" if (has_dicom_marker(data) if data is not None else is_dicom_file(path)) else "raster"
    if kind == "dicom":
        return decode_dicom(
            path,
            min_size=min_size,
            allow_burned_in=allow_burned_in,
            jpeg2000_min_side=2 * config.size if config.jpeg2000_reduce else None,
            ct_window=config.ct_window,
            data=data,
            secret=secret,
        )
    return decode_raster(
        path, min_size=min_size, jpeg_min_side=2 * config.size if config.jpeg_dct_scaling else None, data=data
    )


def prepare_file(
    path: str | Path, config: PreprocessConfig, min_size: int = 16, allow_burned_in: bool = False
) -> np.ndarray:
    """One file -> the contract's uint8 ``[size, size]`` image; what ingest stores and predict feeds."""
    return prepare(decode_file(path, config, min_size, allow_burned_in), config)


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM Part 10 ``DICM`` marker at byte 128."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return has_dicom_marker(head)


def has_dicom_marker(data: bytes) -> bool:
    """True when ``data`` (a file's first bytes or all of them) has the DICOM Part 10 ``DICM`` marker at byte 128."""
    return len(data) >= 132 and data[128:132] == b"DICM"


# --------------------------------------------------------------------------- grey uint8 -> tensor


def apply(images: np.ndarray | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 ``[N, H, W]`` grey images -> normalised float32 ``[N, C, size, size]``.

    Images already at ``size`` x ``size`` (all stored dataset images) are only scaled and
    normalised; others go through :func:`to_contract_size` first, one by one. A 3D contract
    (``preprocess.dims: 3``) takes uint8 ``[N, S, S, S]`` volumes and gives ``[N, C, S, S, S]``
    (:func:`medimg.volume_contract.apply`).
    """
    import torch  # here, so decoding workers that only prepare images never load torch

    if config.dims == 3:
        return volume_contract.apply(images, config)

    if isinstance(images, np.ndarray) and not images.flags.writeable:  # e.g. np.asarray(PIL image)
        images = images.copy()  # torch cannot share a read-only buffer; the uint8 copy is a quarter of the output
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:  # a float image would be silently truncated or mis-scaled
        raise ValueError(f"preprocess.apply takes grey uint8 images, got {x.dtype}")
    if x.ndim == 2:
        x = x[None]
    if x.shape[-2:] != (config.size, config.size):
        x = torch.from_numpy(np.stack([to_contract_size(img, config) for img in x.numpy()]))
    x = x.to(torch.float32).unsqueeze(1) / 255.0
    x = (x - config.mean) / config.std
    if config.channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x
