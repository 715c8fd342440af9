"""Real MSD hippocampus cases as the segmentation ingest stores them, for the evaluation and gate tests.

Each case is read with the real NIfTI reader and put on the stored grid by the real geometry contract
(``params/hippocampus.yaml``: RAS, percentile intensities, ``preprocess.volume.shape``), with its spacing along
the stored axes, as the manifest's ``spacing_z/y/x`` hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datapaths import HIPPOCAMPUS
from medimg.config import Params, load_params
from medimg.data.nifti import read_nifti
from medimg.segmentation import geometry

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS_LABELS = HIPPOCAMPUS.parent / "labelsTr"
STRUCTURES = ("anterior", "posterior")


@dataclass(frozen=True)
class StoredCases:
    ids: list[str]
    images: np.ndarray  # uint8 [N, D, H, W]
    masks: np.ndarray  # uint8 [N, D, H, W], labels 0/1/2
    spacings: np.ndarray  # [N, 3] mm along the stored axes


def hippocampus_params(overrides: dict | None = None) -> Params:
    """``params/hippocampus.yaml`` with ``overrides``."""
    return load_params(ROOT / "params" / "hippocampus.yaml", overrides)


def hippocampus_cases(n: int, start: int = 0) -> StoredCases:
    """``n`` cases (sorted by file name, from ``start``) on the stored grid of ``params/hippocampus.yaml``."""
    config = hippocampus_params().preprocess
    names = sorted(p.name for p in HIPPOCAMPUS.iterdir() if p.name.endswith(".nii.gz"))[start : start + n]
    images, masks, spacings = [], [], []
    for name in names:
        volume = read_nifti(HIPPOCAMPUS / name, "MR")
        mask = np.rint(read_nifti(HIPPOCAMPUS_LABELS / name, "MR").voxels).astype(np.uint8)
        image, stored_mask, _ = geometry.training_pair(volume, mask, config)
        images.append(image)
        masks.append(stored_mask)
        spacings.append(geometry.oriented(volume, config).spacing)
    ids = [name.removesuffix(".nii.gz") for name in names]
    return StoredCases(ids, np.stack(images), np.stack(masks), np.asarray(spacings, dtype=np.float64))


def shifted(masks: np.ndarray, steps: list[int], axis: int = 1) -> np.ndarray:
    """Each mask ``[D, H, W]`` rolled ``steps[i]`` voxels along ``axis``: a stand-in prediction of known error."""
    return np.stack([np.roll(m, s, axis=axis) for m, s in zip(masks, steps, strict=True)])
