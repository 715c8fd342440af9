"""The monitoring page's figures: one PNG per window and one across windows (matplotlib, Agg, no display).

Per window: the distribution of the window's p_abnormal against the reference's test-split scores, and of the
input intensity (per-image mean, 0-255) against the training split's, as densities on shared bins. Across
windows: score and input PSI, refusal rate, and realised sensitivity and specificity with their 95% intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medimg.monitoring.report import Window

DPI = 96


def _density(ax, current: np.ndarray, reference: np.ndarray | None, bins: np.ndarray, label: str) -> None:
    if reference is not None and len(reference):
        ax.hist(reference, bins=bins, density=True, alpha=0.45, color="tab:gray", label="reference")
    if len(current):
        ax.hist(current, bins=bins, density=True, alpha=0.6, color="tab:blue", label="this window")
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)


def window_png(
    window: Window,
    scores: np.ndarray,
    reference_scores: np.ndarray | None,
    intensities: np.ndarray,
    reference_intensities: np.ndarray | None,
    path: Path,
) -> Path:
    """Two panels for ``window``: p_abnormal (0-1) and input mean intensity (0-255) against their references."""
    fig = Figure(figsize=(8.0, 3.0), dpi=DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _density(left, scores, reference_scores, np.linspace(0, 1, 21), "p_abnormal")
    drift = window.score_drift
    left.set_title(f"scores (PSI {drift.psi:.2f})" if drift else "scores (no reference)", fontsize=9)
    _density(right, intensities, reference_intensities, np.linspace(0, 255, 26), "input mean intensity (0-255)")
    mean_drift = next((d for d in window.input_drift if d.feature == "input_mean"), None)
    right.set_title(f"inputs (PSI {mean_drift.psi:.2f})" if mean_drift else "inputs (no reference)", fontsize=9)
    fig.suptitle(f"window {window.index}: {window.start[:19]} to {window.end[:19]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def overview_png(windows: Sequence[Window], path: Path) -> Path:
    """PSI (scores, inputs), refusal rate and realised sensitivity/specificity (95% CI) per window."""
    fig = Figure(figsize=(8.0, 3.2), dpi=DPI)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    x = np.arange(len(windows))

    def psi(drift) -> float:
        return float(min(drift.psi, 5.0)) if drift is not None else np.nan

    left.plot(x, [psi(w.score_drift) for w in windows], marker="o", label="score PSI")
    left.plot(
        x,
        [psi(next((d for d in w.input_drift if d.feature == "input_mean"), None)) for w in windows],
        marker="s",
        label="input PSI",
    )
    left.plot(x, [w.refusal_rate for w in windows], marker="^", label="refusal rate")
    left.set_xlabel("window")
    left.legend(fontsize=7)
    left.set_title("drift and refusals", fontsize=9)
    for name, offset, color in (("sensitivity", -0.08, "tab:red"), ("specificity", 0.08, "tab:green")):
        rates = [getattr(w, name) for w in windows]
        shown = [(i, r) for i, r in enumerate(rates) if r is not None and r.rate is not None]
        if shown:
            xs = np.array([i for i, _ in shown]) + offset
            ys = np.array([r.rate for _, r in shown])
            low = ys - np.array([r.low for _, r in shown])
            high = np.array([r.high for _, r in shown]) - ys
            right.errorbar(xs, ys, yerr=[low, high], fmt="o", color=color, label=name, capsize=3)
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("window")
    right.set_title("realised rates from reviews (95% Wilson CI)", fontsize=9)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
