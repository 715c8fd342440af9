"""Load a split of the versioned dataset into memory and augment batches.

The datasets medimg trains on at small sizes fit in memory many times over; decoding once and
augmenting whole batches with one ``grid_sample`` keeps the CPU busy with the model instead of
with per-image Python calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory: image ids, contract images uint8 ``[N, H, W]`` and labels int64 ``[N]``, in manifest
    order.
    """

    ids: list[str]
    images: np.ndarray  # uint8 [N, H, W], or [N, D, H, W] for volumes
    labels: np.ndarray  # int64 [N]
    masks: np.ndarray | None = None  # segmentation: uint8 label masks [N, D, H, W], the images' shape


def split_rows(manifest: pd.DataFrame, split: str, exclude: set[str] | None = None) -> pd.DataFrame:
    """The manifest rows :func:`load_split` decodes, in its order (by id): count or subset without decoding."""
    rows = manifest[(manifest["split"] == split) & ~manifest["id"].isin(exclude or set())]
    return rows.sort_values("id")


def load_split(folder: Path, manifest: pd.DataFrame, split: str, exclude: set[str] | None = None) -> SplitArrays:
    """The split's stored images (``path`` relative to ``folder``, or absolute), sorted by id.

    Every source kind stores grey uint8 PNGs already at the contract size (see
    :mod:`medimg.preprocess`), or uint8 ``[S, S, S]`` ``.npy`` volumes (:mod:`medimg.volume_contract`;
    ``images`` is then ``[N, S, S, S]``); items of different shapes mean the dataset mixes contracts and
    raise ``ValueError`` naming one of each shape (re-ingest).
    """
    rows = split_rows(manifest, split, exclude)
    images = [_read_stored(folder / rel) for rel in rows["path"]]
    if not images:
        raise ValueError(f"{folder}: split {split!r} has no images")
    shapes: dict[tuple[int, ...], str] = {}
    for rel, array in zip(rows["path"], images, strict=True):
        shapes.setdefault(array.shape, rel)
    if len(shapes) > 1:
        raise ValueError(f"{folder}: split {split!r} mixes image sizes {dict(shapes)}; re-ingest with one contract")
    masks = None
    if "mask_path" in rows.columns:  # a segmentation dataset: each image's stored label mask
        masks = np.stack([_read_stored(folder / rel) for rel in rows["mask_path"]])
        if masks.shape != np.stack(images).shape:
            raise ValueError(f"{folder}: split {split!r} masks {masks.shape} do not match its images")
    return SplitArrays(
        ids=rows["id"].tolist(),
        images=np.stack(images),
        labels=rows["label"].to_numpy(np.int64, copy=True),
        masks=masks,
    )


def _read_stored(path: Path) -> np.ndarray:
    """One stored item: a grey PNG -> uint8 ``[H, W]``; a ``.npy`` volume -> uint8 ``[D, H, W]``."""
    if path.suffix == ".npy":
        volume = np.load(path, allow_pickle=False)
        if volume.dtype != np.uint8 or volume.ndim != 3:
            raise ValueError(f"{path}: stored volume is {volume.dtype} {volume.shape}, expected uint8 [D, H, W]")
        return volume
    with Image.open(path) as image:
        return np.asarray(image if image.mode == "L" else image.convert("L"))


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    rotate_deg: float = 10.0,
    translate: float = 0.08,
    scale: tuple[float, float] = (0.9, 1.1),
    hflip: bool = True,
) -> torch.Tensor:
    """Random per-image affine (rotation, translation, scale) and horizontal flip."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate_deg)
    factor = scale[0] + torch.rand(n, generator=generator) * (scale[1] - scale[0])
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_volume_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    rotate_deg: float = 10.0,
    translate: float = 0.08,
    scale: tuple[float, float] = (0.9, 1.1),
    flip: bool = True,
) -> torch.Tensor:
    """Random per-volume 3D affine and flips for ``x`` ``[N, C, D, H, W]``, in one ``grid_sample``.

    Rotation: about each of the three axes by an angle uniform in ``[-rotate_deg, rotate_deg]``
    degrees, composed z, y, x; isotropic scale uniform in ``scale``; translation uniform in
    ``[-translate, translate]`` of the extent per axis; with ``flip`` each axis is mirrored with
    probability 1/2. Trilinear, border padding, ``align_corners=False``.
    """
    n = x.shape[0]
    angles = (torch.rand(n, 3, generator=generator) * 2 - 1) * math.radians(rotate_deg)
    factor = scale[0] + torch.rand(n, generator=generator) * (scale[1] - scale[0])
    shift = (torch.rand(n, 3, generator=generator) * 2 - 1) * translate * 2
    signs = torch.ones(n, 3)
    if flip:
        signs = torch.where(torch.rand(n, 3, generator=generator) < 0.5, -1.0, 1.0)
    c, s = torch.cos(angles), torch.sin(angles)

    def rot(i: int, a: int, b: int) -> torch.Tensor:  # [N, 3, 3]: rotation by angles[:, i] in the plane of axes a, b
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = c[:, i], -s[:, i], s[:, i], c[:, i]
        return m

    rotation = rot(0, 0, 1) @ rot(1, 0, 2) @ rot(2, 1, 2)
    linear = rotation / factor[:, None, None] * signs[:, None, :]
    theta = torch.cat([linear, shift[:, :, None]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
