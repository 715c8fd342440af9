"""PNG figures of a model's evaluation, for reports, model cards and tracked runs.

Why: reviewers judge a model from its ROC and PR curves, calibration, confusion matrix,
training curves and Grad-CAM heatmaps; these functions draw them the same way every run.

Promises:

* Each function writes one PNG at ``path`` (creating missing parent folders) and returns the
  path as a ``pathlib.Path``. This is the only module of ``medimg.evaluation`` that writes.
* Rendering uses matplotlib's Agg canvas through the object-oriented API, never ``pyplot``:
  it needs no display, does not change the process-wide backend, and leaves no open figures
  behind (nothing is registered with pyplot, so nothing needs closing).
* Inputs are validated like the metrics (``check_binary_inputs``, ``check_multiclass_inputs``);
  ROC and PR curves need both classes (per-class ROC curves: at least one class with members and
  non-members) and raise ``ValueError`` otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from medimg.evaluation.metrics import N_CALIBRATION_BINS, check_binary_inputs
from medimg.evaluation.multiclass import check_class_names, check_multiclass_inputs

_DPI = 110


def _new_figure(width: float = 5.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    fig.clear()
    return out


def _both_classes(y_true: ArrayLike, y_prob: ArrayLike, what: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y, p = check_binary_inputs(y_true, y_prob)
    if y.min() == y.max():
        raise ValueError(f"cannot draw a {what}: y_true holds one class only")
    return y, p


def roc_curve_png(y_true: ArrayLike, y_prob: ArrayLike, path: str | os.PathLike[str], title: str) -> Path:
    """ROC curve with its AUC in the legend and the chance diagonal."""
    y, p = _both_classes(y_true, y_prob, "ROC curve")
    fpr, tpr, _ = roc_curve(y, p)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"model (AUC = {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pr_curve_png(y_true: ArrayLike, y_prob: ArrayLike, path: str | os.PathLike[str], title: str) -> Path:
    """Precision-recall curve with average precision in the legend and the prevalence line."""
    y, p = _both_classes(y_true, y_prob, "precision-recall curve")
    precision, recall, _ = precision_recall_curve(y, p)
    prevalence = float(y.mean())
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", lw=2, label=f"model (AP = {average_precision_score(y, p):.3f})")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence = {prevalence:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def calibration_png(y_true: ArrayLike, y_prob: ArrayLike, path: str | os.PathLike[str], title: str) -> Path:
    """Reliability diagram (10 equal-width bins) above a histogram of the probabilities."""
    y, p = check_binary_inputs(y_true, y_prob)
    frac_pos, mean_prob = calibration_curve(y, p, n_bins=N_CALIBRATION_BINS, strategy="uniform")
    fig = _new_figure(5.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    top.plot(mean_prob, frac_pos, marker="o", lw=2, label="model")
    top.set(xlim=(0, 1), ylim=(0, 1.01), title=title, ylabel="observed fraction positive")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.hist(p, bins=np.linspace(0, 1, N_CALIBRATION_BINS + 1), color="tab:blue", alpha=0.7)
    bottom.set(xlabel="predicted probability", ylabel="count")
    return _save(fig, path)


def confusion_matrix_png(
    tp: int,
    fp: int,
    tn: int,
    fn: int,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """2x2 confusion matrix (rows: true class, columns: predicted), counts and row percentages.

    ``class_names`` is ``(negative, positive)``.
    """
    if len(class_names) != 2:
        raise ValueError(f"class_names must name exactly two classes, got {list(class_names)}")
    counts = np.array([[tn, fp], [fn, tp]], dtype=np.int64)
    if (counts < 0).any():
        raise ValueError(f"counts must be non-negative, got tp={tp} fp={fp} tn={tn} fn={fn}")
    row_totals = counts.sum(axis=1, keepdims=True)
    fig = _new_figure(4.8, 4.2)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    threshold = counts.max() / 2 if counts.max() > 0 else 0.5
    for i in range(2):
        for j in range(2):
            share = counts[i, j] / row_totals[i, 0] if row_totals[i, 0] else math.nan
            label = f"{counts[i, j]}\n({share:.1%})" if math.isfinite(share) else f"{counts[i, j]}"
            ax.text(j, i, label, ha="center", va="center", color="white" if counts[i, j] > threshold else "black")
    ax.set_xticks([0, 1], labels=list(class_names))
    ax.set_yticks([0, 1], labels=list(class_names))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def training_curves_png(history: Sequence[Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Train/validation loss and validation AUC per epoch, side by side.

    Each row of ``history`` has ``epoch``, ``train_loss``, ``val_loss`` and ``val_auc``
    (``ValueError`` if the history is empty or a key is missing).
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    keys = ("epoch", "train_loss", "val_loss", "val_auc")
    for index, row in enumerate(history):
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(f"history row {index} is missing {missing}")
    cols = {key: np.array([float(row[key]) for row in history]) for key in keys}
    fig = _new_figure(9.0, 3.8)
    loss_ax, auc_ax = fig.subplots(1, 2)
    loss_ax.plot(cols["epoch"], cols["train_loss"], marker="o", label="train")
    loss_ax.plot(cols["epoch"], cols["val_loss"], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    auc_ax.plot(cols["epoch"], cols["val_auc"], marker="o", color="tab:green")
    auc_ax.set(xlabel="epoch", ylabel="ROC AUC", title="Validation AUC")
    auc_ax.grid(alpha=0.3)
    return _save(fig, path)


def gradcam_grid_png(
    images: NDArray[np.uint8], heatmaps: NDArray[np.floating], titles: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Grey images with their Grad-CAM heatmaps overlaid, one column each, titled."""
    n = max(1, len(images))
    fig = _new_figure(2.0 * n, 2.4)
    for i, (image, heat, title) in enumerate(zip(images, heatmaps, titles, strict=True)):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(image, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.4, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return _save(fig, path)


MONTAGE_PANEL_INCHES = 1.5
"""Width and height of one slice panel of :func:`gradcam_montage_png`; each volume's row adds 0.4 in for its title."""
_MONTAGE_TITLE_INCHES = 0.4


def montage_slices(depth: int, n_slices: int) -> list[int]:
    """``n_slices`` evenly spaced axial slice indices of a volume ``depth`` slices deep, both ends excluded.

    The first and last slices (often empty after cropping) are left out: the indices are the
    rounded interior points of an even division of ``[0, depth - 1]`` into ``n_slices + 1`` steps,
    e.g. depth 28, 6 slices -> ``[4, 8, 12, 15, 19, 23]``. ``ValueError`` unless
    ``1 <= n_slices <= depth``.
    """
    if not 1 <= n_slices <= depth:
        raise ValueError(f"n_slices must be between 1 and the depth {depth}, got {n_slices}")
    spaced = np.linspace(0, depth - 1, n_slices + 2)[1:-1]
    return [round(float(k)) for k in spaced] if n_slices < depth else list(range(depth))


def gradcam_montage_png(
    volumes: NDArray[np.uint8],
    heatmaps: NDArray[np.floating],
    titles: Sequence[str],
    path: str | os.PathLike[str],
    n_slices: int = 6,
) -> Path:
    """3D Grad-CAM as slice montages: one row per volume, ``n_slices`` axial slices with the heat overlaid.

    ``volumes`` uint8 ``[N, D, H, W]`` (axis 0 the slice axis, as stored by
    :mod:`medimg.volume_contract`), ``heatmaps`` ``[N, D, H, W]`` in [0, 1] (from
    :func:`medimg.evaluation.gradcam.grad_cam`), one title per volume (e.g. true and decided class
    and probability) above its row. Slices are :func:`montage_slices`, each panel labelled with its
    index ``z``; the heat uses one colour scale, 0 to 1, for every panel. The PNG is
    ``n_slices * 1.5`` in wide and ``N * 1.9`` in high at 110 dpi (165 px per slice, 209 px per
    volume). ``ValueError`` when the shapes differ, are not 4-D, ``N`` is 0 or the titles do not
    match the volumes.
    """
    volumes, heatmaps = np.asarray(volumes), np.asarray(heatmaps)
    if volumes.ndim != 4 or volumes.shape != heatmaps.shape or len(volumes) == 0:
        raise ValueError(
            f"volumes and heatmaps must both be [N, D, H, W] with N >= 1, got {volumes.shape} and {heatmaps.shape}"
        )
    if len(titles) != len(volumes):
        raise ValueError(f"{len(titles)} titles for {len(volumes)} volumes")
    slices = montage_slices(volumes.shape[1], n_slices)
    row_inches = MONTAGE_PANEL_INCHES + _MONTAGE_TITLE_INCHES
    fig = _new_figure(MONTAGE_PANEL_INCHES * n_slices, row_inches * len(volumes))
    rows = fig.subfigures(len(volumes), 1, squeeze=False)[:, 0]
    for row, volume, heat, title in zip(rows, volumes, heatmaps, titles, strict=True):
        row.suptitle(title, fontsize=8)
        axes = row.subplots(1, n_slices, squeeze=False)[0]
        row.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78, wspace=0.06)
        for ax, z in zip(axes, slices, strict=True):
            ax.imshow(volume[z], cmap="gray", vmin=0, vmax=255)
            ax.imshow(heat[z], cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
            ax.set_title(f"z={z}", fontsize=6)
        for ax in axes:
            ax.axis("off")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")  # no tight_layout: it does not lay out subfigures; the size stays as stated
    fig.clear()
    return out


def class_roc_curves_png(
    y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str], path: str | os.PathLike[str], title: str
) -> Path:
    """One one-vs-rest ROC curve per class (labels ``[N]``, probabilities ``[N, K]``), AUC in the legend.

    A class without both members and non-members in ``y_true`` has no curve; a note under the
    axes names it. ``ValueError`` for invalid input (``check_multiclass_inputs``) or when no class
    can be drawn (``y_true`` holds one class only).
    """
    names = check_class_names(class_names)
    y, p = check_multiclass_inputs(y_true, y_prob, len(names))
    drawable = [c for c in range(len(names)) if 0 < int((y == c).sum()) < y.shape[0]]
    if not drawable:
        raise ValueError("cannot draw per-class ROC curves: y_true holds one class only")
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for c in drawable:
        members = y == c
        fpr, tpr, _ = roc_curve(members, p[:, c])
        ax.plot(fpr, tpr, lw=2, label=f"{names[c]} (AUC = {roc_auc_score(members, p[:, c]):.3f}, n = {members.sum()})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    skipped = [names[c] for c in range(len(names)) if c not in drawable]
    if skipped:
        ax.annotate(
            f"no curve (absent from the test set, or its only class): {', '.join(skipped)}",
            xy=(0, 0),
            xycoords="axes fraction",
            xytext=(0, -38),
            textcoords="offset points",
            fontsize=7,
            color="tab:red",
        )
    return _save(fig, path)


def normalized_confusion_matrix_png(
    counts: ArrayLike, class_names: Sequence[str], path: str | os.PathLike[str], title: str
) -> Path:
    """``[K, K]`` confusion matrix (rows: true class, columns: decided) coloured by row share (recall).

    Each cell shows the row share and the count; a class with no true samples has an empty
    (grey) row. ``ValueError`` unless ``counts`` is a square ``K x K`` array of non-negative
    integers with ``K = len(class_names)``.
    """
    names = check_class_names(class_names)
    k = len(names)
    raw = np.asarray(counts)
    if raw.shape != (k, k):
        raise ValueError(f"counts must be {k} x {k} (one row and column per class), got shape {raw.shape}")
    if raw.dtype.kind not in "iu" and not (
        raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all()
    ):
        raise ValueError(f"counts must be whole numbers, got dtype {raw.dtype}")
    matrix = raw.astype(np.int64)
    if (matrix < 0).any():
        raise ValueError("counts must be non-negative")
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.full(matrix.shape, np.nan)
    np.divide(matrix, totals, out=share, where=totals > 0)
    fig = _new_figure(1.2 * k + 2.6, 1.1 * k + 1.8)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            label = f"{share[i, j]:.1%}\n({matrix[i, j]})" if totals[i, 0] else f"({matrix[i, j]})"
            dark = bool(totals[i, 0]) and share[i, j] > 0.5
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(k), labels=list(names), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(names))
    ax.set(xlabel="decided", ylabel="true", title=title)
    return _save(fig, path)
