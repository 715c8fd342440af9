"""A segmentation model's test figures over cases: the summary, bootstrap 95% CIs, the paired champion comparison,
and the overlay montage of the best, median and worst cases.

Input is the per-case table of :func:`medimg.segmentation.metrics.case_table` (one row per case, columns
``<figure>_<structure>`` and ``mean_dice``). The summary's flat names (issue 14 design) are, per structure,
``dice_<s>`` (mean over cases), ``hd95_<s>`` (mm, mean over the cases where it is defined),
``hd95_undefined_<s>`` (cases where exactly one of prediction and reference is empty, left out of that
mean) and ``volume_error_ml_<s>`` (mean absolute error, mL); then ``mean_dice`` and ``mean_hd95`` (the
structures' figures averaged; ``mean_hd95`` is NaN when a structure has no defined HD95) and ``n`` (cases).

Intervals are percentile bootstrap intervals over CASES (a replicate draws ``n`` cases with replacement and
recomputes every figure as above), on the replicate machinery of :mod:`medimg.evaluation.bootstrap`, so they
depend only on the table and the seed. A figure undefined in a replicate (every drawn case undefined) is left
out of its interval; undefined in all: ``(nan, nan)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike, NDArray

from medimg.evaluation.bootstrap import _check_boot_args, _grouped_weights, _percentile_interval
from medimg.evaluation.plots import MONTAGE_PANEL_INCHES

#: The per-structure figures summarised and given intervals, in order.
SUMMARY_FIGURES = ("dice", "hd95", "volume_error_ml")
#: Structure colours of the overlay montage (structure ``i`` gets colour ``i`` modulo the list).
STRUCTURE_COLOURS = ("#ffd400", "#00c8ff", "#ff4fd8", "#7dff4f", "#ff8a00")
_DPI = 110
_TITLE_INCHES = 0.4
_LEGEND_INCHES = 0.35
_STYLES: tuple[tuple[str, Literal["solid", "dashed"]], ...] = (("reference", "solid"), ("predicted", "dashed"))


def _figure_columns(structures: Sequence[str]) -> list[str]:
    return [f"{figure}_{name}" for name in structures for figure in SUMMARY_FIGURES]


def _check_table(table: pd.DataFrame, structures: Sequence[str]) -> NDArray[np.float64]:
    """The table's summary columns as ``[N, 3 * S]`` floats; ``ValueError`` for no cases or a missing column."""
    if not structures:
        raise ValueError("no structures to summarise")
    missing = [c for c in _figure_columns(structures) if c not in table.columns]
    if missing:
        raise ValueError(f"the per-case table lacks the columns {missing} (medimg.segmentation.metrics.case_table)")
    if len(table) == 0:
        raise ValueError("the per-case table has no cases")
    return table[_figure_columns(structures)].to_numpy(dtype=np.float64)


def _combine(columns: dict[str, NDArray[np.float64]], structures: Sequence[str]) -> dict[str, NDArray[np.float64]]:
    """``mean_dice`` and ``mean_hd95`` from the per-structure figures (arrays of one shape: values or replicates)."""
    out = dict(columns)
    out["mean_dice"] = np.mean([columns[f"dice_{s}"] for s in structures], axis=0)
    out["mean_hd95"] = np.mean([columns[f"hd95_{s}"] for s in structures], axis=0)
    return out


def summary(table: pd.DataFrame, structures: Sequence[str]) -> dict[str, float | int]:
    """The flat test metrics of a per-case table (module docstring): per structure Dice, HD95 (mm), its undefined
    count and the volume error (mL); ``mean_dice``, ``mean_hd95`` and ``n``. NaN where undefined.

    ``ValueError`` for an empty table or missing columns.
    """
    values = _check_table(table, structures)
    defined = np.isfinite(values)
    counts = defined.sum(axis=0)
    sums = np.where(defined, values, 0.0).sum(axis=0)
    means = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    columns = dict(zip(_figure_columns(structures), means, strict=True))
    out: dict[str, float | int] = {k: float(v) for k, v in _combine(columns, structures).items()}
    for name in structures:
        out[f"hd95_undefined_{name}"] = int((~np.isfinite(table[f"hd95_{name}"].to_numpy(np.float64))).sum())
    out["n"] = len(table)
    return out


def bootstrap_ci(
    table: pd.DataFrame, structures: Sequence[str], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Percentile ``1 - alpha`` intervals over cases for ``dice_<s>``, ``hd95_<s>``, ``volume_error_ml_<s>``,
    ``mean_dice`` and ``mean_hd95``: ``{name: (lower, upper)}``.

    ``n_boot`` replicates, each drawing the table's cases with replacement (seeded by ``seed``) and computing
    every figure as :func:`summary` does. ``ValueError`` for an empty table, missing columns or bad arguments.
    """
    values = _check_table(table, structures)
    _check_boot_args(n_boot, alpha)
    n = values.shape[0]
    defined = np.isfinite(values).astype(np.float64)
    filled = np.where(defined > 0, values, 0.0)
    blocks = []
    for w in _grouped_weights([np.arange(n)], n, int(n_boot), seed):
        counts = w @ defined
        blocks.append(np.divide(w @ filled, counts, out=np.full(counts.shape, np.nan), where=counts > 0))
    replicates = np.concatenate(blocks)  # [n_boot, 3 * S]
    columns = {name: replicates[:, j] for j, name in enumerate(_figure_columns(structures))}
    return {name: _percentile_interval(v, alpha) for name, v in _combine(columns, structures).items()}


def paired_mean_dice_difference(
    candidate: ArrayLike, champion: ArrayLike, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float | int]:
    """Mean Dice of the candidate minus that of the champion on the same cases, with a paired bootstrap CI.

    ``candidate`` and ``champion`` are each case's mean Dice over the structures ``[N]``, the same cases in the
    same order. Each replicate draws the cases once, for both models. Returns ``{"delta", "lower", "upper",
    "n_boot"}`` as :func:`medimg.evaluation.bootstrap.paired_auc_difference` does, for
    :func:`medimg.evaluation.gates.champion_noninferiority`. A model compared with itself gives 0 with [0, 0].
    ``ValueError`` for different lengths, no cases or a NaN.
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"candidate and champion need one Dice per case, same cases: got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a case's Dice is NaN: every case must have one")
    _check_boot_args(n_boot, alpha)
    difference = a - b
    n = a.size
    replicates = np.concatenate([w @ difference / n for w in _grouped_weights([np.arange(n)], n, int(n_boot), seed)])
    lower, upper = _percentile_interval(replicates, alpha)
    return {"delta": float(difference.mean()), "lower": lower, "upper": upper, "n_boot": int(n_boot)}


def ranked_cases(table: pd.DataFrame) -> dict[str, int]:
    """Row positions of the ``best``, ``median`` and ``worst`` case by ``mean_dice`` (ties: the first id).

    The median is the lower middle of the cases sorted by mean Dice. ``ValueError`` for an empty table.
    """
    if len(table) == 0:
        raise ValueError("the per-case table has no cases")
    ids, dice = table["id"].astype(str).to_numpy(), table["mean_dice"].to_numpy(np.float64)
    order = np.lexsort((ids, -dice))  # best first, ties by id
    worst = int(np.lexsort((ids, dice))[0])
    return {"best": int(order[0]), "median": int(order[(len(order) - 1) // 2]), "worst": worst}


def _slices(reference: NDArray, predicted: NDArray, n_slices: int) -> list[int]:
    """``n_slices`` (or fewer) evenly spaced axial slices through the foreground of either mask (all of the
    depth when both are empty)."""
    z = np.flatnonzero((reference != 0).any(axis=(1, 2)) | (predicted != 0).any(axis=(1, 2)))
    lo, hi = (int(z[0]), int(z[-1])) if z.size else (0, reference.shape[0] - 1)
    return sorted({round(float(k)) for k in np.linspace(lo, hi, min(n_slices, hi - lo + 1))})


def overlay_montage_png(
    images: NDArray[np.uint8],
    references: NDArray,
    predictions: NDArray,
    titles: Sequence[str],
    structures: Sequence[str],
    path: str | os.PathLike[str],
    n_slices: int = 5,
) -> Path:
    """Reference and predicted masks over the image, one row per case, ``n_slices`` axial slices each.

    ``images`` uint8 ``[N, D, H, W]`` and the label maps ``references``/``predictions`` of the same shape (axis
    0 the slice axis, S in the RAS storage order); one title per case (e.g. "best: <id>, mean Dice 0.91").
    Slices are evenly spaced over the axial range where either mask has foreground, each panel labelled with
    its index ``z``. Each structure has its colour (:data:`STRUCTURE_COLOURS`): the reference as a solid
    contour, the prediction dashed; a legend at the foot says which. Writes one PNG (matplotlib Agg, no
    pyplot), ``n_slices * 1.5`` in wide, and returns its path. ``ValueError`` when the shapes differ, are not
    4-D, there is no case or the titles do not match the cases.
    """
    images, references, predictions = np.asarray(images), np.asarray(references), np.asarray(predictions)
    if images.ndim != 4 or images.shape != references.shape or images.shape != predictions.shape or not len(images):
        raise ValueError(
            f"images, references and predictions must be [N, D, H, W] of one shape with N >= 1, got {images.shape}, "
            f"{references.shape} and {predictions.shape}"
        )
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} cases")
    colours = [STRUCTURE_COLOURS[i % len(STRUCTURE_COLOURS)] for i in range(len(structures))]
    row_inches = MONTAGE_PANEL_INCHES + _TITLE_INCHES
    fig = Figure(figsize=(MONTAGE_PANEL_INCHES * n_slices, row_inches * len(images) + _LEGEND_INCHES), dpi=_DPI)
    FigureCanvasAgg(fig)
    rows = fig.subfigures(
        len(images) + 1, 1, squeeze=False, height_ratios=[row_inches] * len(images) + [_LEGEND_INCHES]
    )[:, 0]
    for row, image, reference, predicted, title in zip(rows, images, references, predictions, titles, strict=False):
        row.suptitle(title, fontsize=8)
        axes = row.subplots(1, n_slices, squeeze=False)[0]
        row.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78, wspace=0.06)
        for ax, z in zip(axes, _slices(reference, predicted, n_slices), strict=False):
            ax.imshow(image[z], cmap="gray", vmin=0, vmax=255)
            for label, colour in enumerate(colours, start=1):
                for mask, (_, style) in zip((reference[z] == label, predicted[z] == label), _STYLES, strict=True):
                    if mask.any():
                        ax.contour(
                            mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.9, linestyles=style
                        )
            ax.set_title(f"z={z}", fontsize=6)
        for ax in axes:
            ax.axis("off")
    handles = [
        Line2D([], [], color=colour, linestyle=style, label=f"{name} {what}")
        for name, colour in zip(structures, colours, strict=True)
        for what, style in _STYLES
    ]
    rows[-1].legend(handles=handles, loc="center", ncol=len(handles), fontsize=6, frameon=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    fig.clear()
    return out


def case_title(kind: str, row: Mapping[str, object], structures: Sequence[str]) -> str:
    """``"<kind>: <id>, mean Dice 0.912 (anterior 0.920, posterior 0.905)"`` for a row of the per-case table."""
    parts = ", ".join(f"{name} {_fmt(row[f'dice_{name}'])}" for name in structures)
    return f"{kind}: {row['id']}, mean Dice {_fmt(row['mean_dice'])} ({parts})"


def _fmt(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return f"{number:.3f}" if math.isfinite(number) else "nan"
