"""Segmentation metrics per case and structure: Dice, 95th-percentile Hausdorff distance (mm), volume error (mL).

Pure functions over label arrays (uint8 ``[D, H, W]``, each voxel the label value of its structure,
0 = background) and the voxel spacing ``(z, y, x)`` in mm along the arrays' axes. A structure is named
by ``task.structures`` (``class_names[1:]``): structure ``i`` of that tuple has label value ``i + 1``.
The flat names are those of the segmentation design (issue 14): ``dice_<structure>``,
``hd95_<structure>``, ``volume_error_ml_<structure>``, and the volumes behind the error,
``reference_ml_<structure>`` and ``predicted_ml_<structure>``.

Conventions (the Medical Segmentation Decathlon's and MONAI's, stated here so that every table reads the same;
the empty-mask rules are those of the issue 14 design):

* **Dice** ``2 |P & R| / (|P| + |R|)`` over the structure's voxels. Both masks empty: 1 (nothing to find,
  nothing found). Exactly one empty: 0.
* **HD95** (mm) by :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95`` and the spacing:
  the surface of a mask is its edge voxels (the mask minus its binary erosion); for every edge voxel of one
  mask the Euclidean distance (voxel centres, scaled by the spacing) to the nearest edge voxel of the other;
  the 95th percentile (``torch.quantile``, linear interpolation) of the distances from P to R and of those
  from R to P; HD95 is the larger of the two (computed in float32: 1.2 mm reads 1.2000000477). Both empty: 0.
  Exactly one empty: undefined, NaN (a summary counts these and leaves them out of the mean:
  :mod:`medimg.segmentation.evaluation`).
* **Volume** (mL): voxel count x ``spacing_z * spacing_y * spacing_x`` mm^3 / 1000; the volume error is
  ``|predicted - reference|``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray

#: Per-structure figures of one case, in column order of :func:`case_table` (``<name>_<structure>``).
CASE_FIGURES = ("dice", "hd95", "volume_error_ml", "reference_ml", "predicted_ml")


def _check_pair(predicted: NDArray, reference: NDArray) -> tuple[NDArray, NDArray]:
    p, r = np.asarray(predicted), np.asarray(reference)
    if p.shape != r.shape or p.ndim != 3:
        raise ValueError(f"predicted and reference must be [D, H, W] arrays of one shape, got {p.shape} and {r.shape}")
    return p, r


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = [float(s) for s in spacing]
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three finite (z, y, x) mm > 0, got {tuple(spacing)}")
    return values[0], values[1], values[2]


def dice(predicted: NDArray, reference: NDArray) -> float:
    """Dice of two binary masks ``[D, H, W]`` (non-zero = inside): 1 when both are empty, 0 when one is.

    ``ValueError`` when the shapes differ or are not 3-D.
    """
    p, r = _check_pair(predicted, reference)
    p, r = p != 0, r != 0
    total = int(p.sum()) + int(r.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total


def hd95(predicted: NDArray, reference: NDArray, spacing: Sequence[float]) -> float:
    """The 95th-percentile symmetric Hausdorff distance (mm) of two binary masks ``[D, H, W]``, by MONAI.

    ``spacing`` (z, y, x) mm. Both masks empty: 0.0; exactly one empty: NaN (undefined). See the module
    docstring for MONAI's definition. ``ValueError`` for mismatched shapes or a spacing that is not three
    positive numbers.
    """
    from monai.metrics import compute_hausdorff_distance  # here: MONAI's import costs a second

    p, r = _check_pair(predicted, reference)
    sz = _check_spacing(spacing)
    p, r = p != 0, r != 0
    has_p, has_r = bool(p.any()), bool(r.any())
    if not (has_p or has_r):
        return 0.0
    if has_p != has_r:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI warns about empty masks; both are non-empty here
        warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.6 passes its own deprecated argument internally
        distance = compute_hausdorff_distance(
            p[None, None].astype(np.float32),
            r[None, None].astype(np.float32),
            include_background=True,
            percentile=95,
            spacing=list(sz),
        )
    return float(distance[0, 0])


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """The volume of one voxel in mL: ``spacing_z * spacing_y * spacing_x`` (mm) / 1000."""
    z, y, x = _check_spacing(spacing)
    return z * y * x / 1000.0


def volume_ml(mask: NDArray, spacing: Sequence[float]) -> float:
    """The volume (mL) of the non-zero voxels of a binary mask at ``spacing`` (z, y, x) mm."""
    return int(np.count_nonzero(mask)) * voxel_volume_ml(spacing)


def case_scores(
    predicted: NDArray, reference: NDArray, spacing: Sequence[float], structures: Sequence[str]
) -> dict[str, float]:
    """Every figure of :data:`CASE_FIGURES` for each structure of one case, flat: ``{dice_<s>: ..., ...}``.

    ``predicted`` and ``reference`` are label maps ``[D, H, W]`` (structure ``i`` = label ``i + 1``),
    ``spacing`` (z, y, x) mm. Units: Dice unitless, HD95 mm (NaN when undefined), volumes mL.
    """
    p, r = _check_pair(predicted, reference)
    unit = voxel_volume_ml(spacing)
    out: dict[str, float] = {}
    for i, name in enumerate(structures):
        label = i + 1
        pm, rm = p == label, r == label
        out[f"dice_{name}"] = dice(pm, rm)
        out[f"hd95_{name}"] = hd95(pm, rm, spacing)
        reference_ml, predicted_ml = int(rm.sum()) * unit, int(pm.sum()) * unit
        out[f"volume_error_ml_{name}"] = abs(predicted_ml - reference_ml)
        out[f"reference_ml_{name}"] = reference_ml
        out[f"predicted_ml_{name}"] = predicted_ml
    return out


def case_table(
    ids: Sequence[str],
    predicted: NDArray,
    reference: NDArray,
    spacings: NDArray | Sequence[Sequence[float]],
    structures: Sequence[str],
) -> pd.DataFrame:
    """One row per case: ``id`` and :func:`case_scores` (``<figure>_<structure>`` columns), then ``mean_dice``
    (the case's Dice averaged over the structures).

    ``predicted``/``reference`` label maps ``[N, D, H, W]``, ``spacings`` ``[N, 3]`` (z, y, x) mm.
    ``ValueError`` when the counts or shapes disagree.
    """
    p, r = np.asarray(predicted), np.asarray(reference)
    spacing = np.asarray(spacings, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 4 or len(ids) != len(p) or spacing.shape != (len(p), 3):
        raise ValueError(
            f"case_table needs N ids, [N, D, H, W] predicted and reference and [N, 3] spacings; got {len(ids)} ids, "
            f"{p.shape}, {r.shape} and {spacing.shape}"
        )
    if not structures:
        raise ValueError("case_table needs at least one structure")
    rows = [{"id": case, **case_scores(p[n], r[n], spacing[n], structures)} for n, case in enumerate(ids)]
    columns = ["id", *(f"{figure}_{name}" for name in structures for figure in CASE_FIGURES)]
    table = pd.DataFrame(rows, columns=columns)
    table["mean_dice"] = table[[f"dice_{name}" for name in structures]].mean(axis=1)
    return table


def case_dice(predicted: NDArray, reference: NDArray, structures: Sequence[str]) -> NDArray[np.float64]:
    """Dice per case and structure ``[N, S]`` of label maps ``[N, D, H, W]`` (no distances: the cheap figure the
    champion comparison needs)."""
    p, r = np.asarray(predicted), np.asarray(reference)
    if p.shape != r.shape or p.ndim != 4:
        raise ValueError(f"predicted and reference must be [N, D, H, W] of one shape, got {p.shape} and {r.shape}")
    return np.array([[dice(p[n] == i + 1, r[n] == i + 1) for i in range(len(structures))] for n in range(len(p))])


def voxel_confusion(predicted: NDArray, reference: NDArray, n_labels: int) -> NDArray[np.int64]:
    """Voxel counts ``[K, K]`` over every case: rows the reference label, columns the predicted label.

    ``ValueError`` for a label value outside ``0..n_labels-1`` or mismatched shapes.
    """
    p, r = np.asarray(predicted).ravel(), np.asarray(reference).ravel()
    if p.shape != r.shape:
        raise ValueError(f"predicted and reference differ in size: {p.shape} and {r.shape}")
    if p.size and (max(int(p.max()), int(r.max())) >= n_labels):
        raise ValueError(f"label values must lie in 0..{n_labels - 1}")
    counts = np.bincount(r.astype(np.int64) * n_labels + p.astype(np.int64), minlength=n_labels * n_labels)
    return counts.reshape(n_labels, n_labels)
