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
    images: np.ndarray  # uint8 [N, H, W]
    labels: np.ndarray  # int64 [N]


def split_rows(manifest: pd.DataFrame, split: str, exclude: set[str] | None = None) -> pd.DataFrame:
    """The manifest rows :func:`load_split` decodes, in its order (by id): count or subset without decoding."""
    rows = manifest[(manifest["split"] == split) & ~manifest["id"].isin(exclude or set())]
    return rows.sort_values("id")


def load_split(folder: Path, manifest: pd.DataFrame, split: str, exclude: set[str] | None = None) -> SplitArrays:
    """The split's stored images (``path`` relative to ``folder``, or absolute), sorted by id.

    Every source kind stores grey uint8 PNGs already at the contract size (see
    :mod:`medimg.preprocess`); images of different sizes mean the dataset mixes contracts and
    raise ``ValueError`` naming one of each size (re-ingest).
    """
    rows = split_rows(manifest, split, exclude)
    images = []
    for rel in rows["path"]:
        with Image.open(folder / rel) as image:
            images.append(np.asarray(image if image.mode == "L" else image.convert("L")))
    if not images:
        raise ValueError(f"{folder}: split {split!r} has no images")
    shapes: dict[tuple[int, ...], str] = {}
    for rel, array in zip(rows["path"], images, strict=True):
        shapes.setdefault(array.shape, rel)
    if len(shapes) > 1:
        raise ValueError(f"{folder}: split {split!r} mixes image sizes {dict(shapes)}; re-ingest with one contract")
    return SplitArrays(
        ids=rows["id"].tolist(), images=np.stack(images), labels=rows["label"].to_numpy(np.int64, copy=True)
    )


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
