"""An overlay PNG of a predicted mask: a row of slices with each structure blended in its colour, and a legend.

The slices are along axis 0 of the image as the network saw it (the contract's orientation, before padding):
with ``orientation: RAS`` these are axial slices, shown in the radiological convention (anterior at the
top, the patient's right on the viewer's left). Up to :data:`MAX_SLICES` slices, evenly spaced over those
that hold a structure (over all slices when none does); each is enlarged by an integer factor to at least
:data:`MIN_TILE` pixels on its shorter side (nearest neighbour, so voxels stay visible). Structure ``i``
(label value ``i``) is blended at :data:`ALPHA` in ``PALETTE[(i - 1) % len(PALETTE)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MAX_SLICES = 6
MIN_TILE = 128
ALPHA = 0.45
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))
_LEGEND_HEIGHT = 18


def overlay_slices(mask: np.ndarray) -> list[int]:
    """The axis-0 indices shown for ``mask`` ``[D, H, W]`` (module docstring), ascending."""
    depth = mask.shape[0]
    present = np.flatnonzero(mask.reshape(depth, -1).any(axis=1))
    lo, hi = (int(present[0]), int(present[-1])) if present.size else (0, depth - 1)
    n = min(MAX_SLICES, hi - lo + 1)
    return sorted({int(np.rint(v)) for v in np.linspace(lo, hi, n)})


def overlay_image(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str], radiological: bool = True):
    """A :class:`PIL.Image.Image` (RGB) of uint8 ``image`` ``[D, H, W]`` with label ``mask`` (same shape) blended in.

    ``radiological``: flip each slice's rows and columns (RAS axes: anterior up, patient's right on the
    left). ``ValueError`` when the shapes differ.
    """
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be the same [D, H, W]")
    h, w = image.shape[1:]
    scale = max(1, -(-MIN_TILE // max(1, min(h, w))))
    tiles = []
    for z in overlay_slices(mask):
        grey, labels = image[z], mask[z]
        if radiological:
            grey, labels = grey[::-1, ::-1], labels[::-1, ::-1]
        rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
        for label in range(1, len(class_names)):
            colour = np.asarray(PALETTE[(label - 1) % len(PALETTE)], dtype=np.float32)
            where = labels == label
            rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * colour
        tile = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
        tiles.append(tile)
    strip = np.concatenate([np.pad(t, ((0, 0), (0, 2), (0, 0))) for t in tiles], axis=1)
    canvas = Image.new("RGB", (strip.shape[1], strip.shape[0] + _LEGEND_HEIGHT))
    canvas.paste(Image.fromarray(strip), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 2
    for label, name in enumerate(class_names[1:], start=1):
        top = strip.shape[0] + 4
        draw.rectangle((x, top, x + 10, top + 10), fill=PALETTE[(label - 1) % len(PALETTE)])
        draw.text((x + 14, top - 1), name, fill=(255, 255, 255))
        x += 14 + int(draw.textlength(name)) + 12
    return canvas


def write_overlay(
    image: np.ndarray, mask: np.ndarray, class_names: Sequence[str], path: Path, radiological: bool = True
) -> Path:
    """:func:`overlay_image` saved as a PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_image(image, mask, class_names, radiological).save(path, format="PNG")
    return path
