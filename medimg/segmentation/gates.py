"""The promotion rules of a segmentation model, on the flat metrics of :mod:`medimg.segmentation.evaluation`.

Each rule is a :class:`medimg.evaluation.gates.GateResult` (verdict, one sentence with the numbers, every
input), built on the general rules of :mod:`medimg.evaluation.gates`, so the gate report reads the same
for every task:

* ``benchmark_noninferiority``: for every figure the benchmark entry states (``msd_hippocampus_nnunet``:
  ``dice_anterior`` 0.90, ``dice_posterior`` 0.89, operating point ``segmentation``), the lower bound of the
  model's bootstrap 95% CI over cases must reach the figure minus ``gates.benchmark.margin``.
* ``minimum_metrics``: every structure's test Dice (mean over cases, the point estimate) reaches its floor
  ``gates.min_dice`` (one number for every structure, or per structure); with no floors it passes.
* ``champion_noninferiority``: the paired bootstrap over the same test cases of mean Dice, candidate minus
  champion (:func:`medimg.segmentation.evaluation.paired_mean_dice_difference`); its lower bound must reach
  ``-gates.champion_auc_margin``. No champion: passes; a champion that could not be compared: fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medimg.evaluation import gates

CHAMPION_METRIC = "mean Dice"
"""What the champion rule compares, as its reason and inputs name it."""


def dice_floors(structures: Sequence[str], min_dice: float | Mapping[str, float] | None) -> dict[str, float]:
    """``gates.min_dice`` as ``{dice_<structure>: floor}``: a number applies to every structure, a mapping to the
    structures it names, None to none. ``ValueError`` for a structure not in ``structures``."""
    if min_dice is None:
        return {}
    if isinstance(min_dice, Mapping):
        unknown = sorted(set(min_dice) - set(structures))
        if unknown:
            raise ValueError(f"gates.min_dice names {unknown}, which are not structures {list(structures)}")
        return {f"dice_{name}": float(floor) for name, floor in min_dice.items()}
    return {f"dice_{name}": float(min_dice) for name in structures}


def benchmark_rule(
    metrics: Mapping[str, Any],
    ci: Mapping[str, Sequence[float | None]],
    bench: Mapping[str, Any],
    margin: float,
) -> gates.GateResult:
    """Non-inferiority to the benchmark entry ``bench`` (operating point ``segmentation``) on every figure it
    states, by the lower bounds of ``ci`` (``{name: (lower, upper)}``, the evaluate step's ``test_ci95``).

    ``ValueError`` for an entry at another operating point (a classifier's figures cannot judge masks).
    """
    keys = {
        name: gates.benchmark_metric_key("segmentation", bench["operating_point"], name) for name in bench["metrics"]
    }
    estimates = {name: metrics.get(key) for name, key in keys.items()}
    intervals = {name: tuple(ci[key]) for name, key in keys.items() if key in ci}
    return gates.benchmark_noninferiority(estimates, intervals, bench, margin)  # type: ignore[arg-type]


def minimum_dice_rule(
    metrics: Mapping[str, Any], structures: Sequence[str], min_dice: float | Mapping[str, float] | None
) -> gates.GateResult:
    """Every structure's test Dice reaches its floor (:func:`dice_floors`); a missing or NaN Dice fails."""
    return gates.minimum_metrics(metrics, dice_floors(structures, min_dice))


def champion_rule(delta: Mapping[str, Any] | None, margin: float, champion_version: str | None) -> gates.GateResult:
    """Non-inferiority of the candidate's mean Dice to the champion's on the same cases: ``delta["lower"] >=
    -margin`` (``delta`` from :func:`medimg.segmentation.evaluation.paired_mean_dice_difference`)."""
    return gates.champion_noninferiority(delta, margin, champion_version, metric=CHAMPION_METRIC)


def rules(
    metrics: Mapping[str, Any],
    ci: Mapping[str, Sequence[float | None]],
    structures: Sequence[str],
    bench: Mapping[str, Any],
    margin: float,
    min_dice: float | Mapping[str, float] | None,
) -> list[gates.GateResult]:
    """The candidate-only rules, in report order: the benchmark, then the Dice floors (the champion rule is added
    by the caller once the champion has been scored)."""
    return [benchmark_rule(metrics, ci, bench, margin), minimum_dice_rule(metrics, structures, min_dice)]
