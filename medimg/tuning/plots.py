"""The study's figures (PNG): optimisation history, parameter importances, per-epoch curves of every trial.

Drawn from the study's trials with matplotlib's object-oriented Agg API (never ``pyplot``, as
:mod:`medimg.evaluation.plots`); the importances are Optuna's (``optuna.importance.get_param_importances``,
PED-ANOVA by default), computed over the complete trials of the whole study.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

HISTORY = "optimization_history.png"
IMPORTANCES = "param_importances.png"
INTERMEDIATE = "intermediate_values.png"
_DPI = 110


@dataclass(frozen=True)
class StudyFigures:
    """The PNGs written, the importance of each tuned key (empty when it could not be computed) and, for every
    figure not drawn, why."""

    paths: tuple[Path, ...]
    importances: dict[str, float]
    missing: dict[str, str]


def _figure(width: float = 6.0, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    fig.clear()
    return path


def history_png(study: optuna.Study, metric: str, path: Path) -> Path:
    """Each trial's value by trial number (complete: dots; pruned: crosses at the last reported epoch) and the best
    so far. ``ValueError`` when no trial has a value."""
    complete = [
        (t.number, float(t.value))
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    if not complete and not pruned:
        raise ValueError("no trial has a value yet")
    fig = _figure()
    ax = fig.add_subplot()
    if complete:
        ax.scatter([n for n, _ in complete], [v for _, v in complete], label="complete", zorder=3)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        xs: list[int] = []
        ys: list[float] = []
        for number, value in sorted(complete):
            ys.append(value if not ys else (max if maximize else min)(ys[-1], value))
            xs.append(number)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="grey", label="pruned (last epoch)")
    ax.set(xlabel="trial", ylabel=metric)
    ax.set_title(f"Optimisation history\n{study.study_name}", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's importance of each tuned key over the complete trials; ``ValueError``/``RuntimeError`` when they
    cannot be computed (e.g. fewer than two complete trials)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notes
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}


def importance_png(values: dict[str, float], title: str, path: Path) -> Path:
    """A horizontal bar per tuned key, largest on top. ``ValueError`` when ``values`` is empty."""
    if not values:
        raise ValueError("no importance to draw")
    names = sorted(values, key=values.__getitem__)
    fig = _figure(6.0, 1.2 + 0.45 * len(names))
    ax = fig.add_subplot()
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (share of the variation of the objective)", xlim=(0, 1))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def intermediate_png(study: optuna.Study, metric: str, path: Path) -> Path:
    """Every trial's per-epoch metric (the values reported to the pruner): complete solid, pruned dashed.
    ``ValueError`` when no trial reported one."""
    trials = [t for t in study.trials if t.intermediate_values]
    if not trials:
        raise ValueError("no trial reported a per-epoch value")
    fig = _figure()
    ax = fig.add_subplot()
    for t in trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        style = "--" if t.state == optuna.trial.TrialState.PRUNED else "-"
        ax.plot(steps, values, style, lw=1, alpha=0.8)
    ax.set(xlabel="epoch", ylabel=metric, title="Per-epoch validation metric (dashed: pruned)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def study_figures(study: optuna.Study, metric: str, folder: Path) -> StudyFigures:
    """The three figures of ``study`` in ``folder``; a figure that cannot be drawn yet is named in ``missing`` with
    the reason instead of failing the study."""
    paths: list[Path] = []
    missing: dict[str, str] = {}
    found: dict[str, float] = {}
    try:
        found = importances(study)
        found = {k: v for k, v in found.items() if math.isfinite(v)}
    except (ValueError, RuntimeError) as err:
        missing[IMPORTANCES] = str(err)
    drawers = (
        (HISTORY, lambda p: history_png(study, metric, p)),
        (IMPORTANCES, lambda p: importance_png(found, f"Parameter importances\n{study.study_name}", p)),
        (INTERMEDIATE, lambda p: intermediate_png(study, metric, p)),
    )
    for name, draw in drawers:
        if name in missing:
            continue
        try:
            paths.append(draw(folder / name))
        except ValueError as err:
            missing[name] = str(err)
    return StudyFigures(tuple(paths), found, missing)
