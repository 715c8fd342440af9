"""Promotion gates: the rules a candidate model must pass before it may replace the champion.

Why: a promotion decision must be explainable after the fact. Each rule is a small, named,
pure function that returns a ``GateResult`` carrying its verdict, one human sentence with the
numbers, and every number it used; ``decide`` combines them into a JSON-ready record.

Promises:

* Rules fail closed: a NaN or missing number never passes a gate, and the reason says so.
* Comparisons treat a value within 1e-12 of its bound as meeting it, so that a bound computed
  as e.g. ``0.9 - 0.05`` is not failed by floating-point rounding.
* ``GateResult.inputs`` and the output of ``decide`` contain only JSON-native values
  (NaN and infinities become ``None``, NumPy scalars become Python numbers), so
  ``json.dumps`` works with the default settings and produces strict JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_TOL = 1e-12
_BENCHMARK_KEYS = ("id", "metrics", "operating_point", "source", "reference_standard")
TASK_KINDS = ("binary", "multiclass", "segmentation")
"""Task kinds (``task.kind`` in params)."""
OPERATING_POINTS = ("any_abnormality", "arg_max", "segmentation")
"""Benchmark operating points: the "any abnormality vs normal" threshold, the arg-max class decision, or the
arg-max label per voxel of a segmentation (figures per structure, e.g. ``dice_anterior``)."""


@dataclass(frozen=True)
class GateResult:
    """The verdict of one gate rule.

    ``name`` identifies the rule; ``passed`` is the verdict; ``reason`` is one sentence a
    reviewer can read without the code, quoting the numbers; ``inputs`` holds every number the
    rule used, JSON-native.
    """

    name: str
    passed: bool
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)


def to_jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays made Python, tuples made lists, NaN/inf made None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: Any) -> float:
    """A float from a number-like; anything unusable becomes NaN (which then fails)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "nan"


def _meets(value: float, required: float) -> bool:
    """``value >= required`` up to rounding; NaN never meets anything."""
    return math.isfinite(value) and math.isfinite(required) and value >= required - _TOL


def _check_margin(margin: float) -> float:
    margin = _num(margin)
    if not (math.isfinite(margin) and 0.0 <= margin <= 1.0):
        raise ValueError(f"margin must be a number in [0, 1], got {margin}")
    return margin


def benchmark_metric_key(task_kind: str, operating_point: str, name: str) -> str:
    """The task's metric key for benchmark metric ``name`` at ``operating_point``.

    Why: a benchmark states its figures in the field's terms (sensitivity, roc_auc, ...) at an
    operating point; the evaluate step names them by task. The mapping (docs: issue 12 design):

    * ``any_abnormality`` + ``binary`` -> ``name`` (the threshold operating point);
    * ``any_abnormality`` + ``multiclass`` -> ``abnormal_<name>``;
    * ``arg_max`` -> ``name``, except that a multi-class ``roc_auc`` is ``macro_roc_auc``;
    * ``segmentation`` (task kind ``segmentation`` only, and the only operating point it has) -> ``name``:
      the benchmark states the flat per-structure names of :mod:`medimg.segmentation.evaluation`.

    Raises ``ValueError`` for an unknown task kind or operating point, or a segmentation task kind and
    operating point that do not come together.
    """
    if task_kind not in TASK_KINDS:
        raise ValueError(f"task kind must be one of {list(TASK_KINDS)}, got {task_kind!r}")
    if operating_point not in OPERATING_POINTS:
        raise ValueError(f"benchmark operating_point must be one of {list(OPERATING_POINTS)}, got {operating_point!r}")
    if (task_kind == "segmentation") != (operating_point == "segmentation"):
        raise ValueError(
            f"task kind {task_kind!r} cannot be judged at benchmark operating_point {operating_point!r}: the "
            "segmentation operating point is for task kind segmentation, which has no other"
        )
    if task_kind in ("binary", "segmentation"):
        return name
    if operating_point == "any_abnormality":
        return f"abnormal_{name}"
    return "macro_roc_auc" if name == "roc_auc" else name


def _check_benchmark(benchmark: Mapping[str, Any]) -> dict[str, float]:
    """The benchmark's ``metrics`` as floats; ``ValueError`` for a missing key or no metrics."""
    missing = [key for key in _BENCHMARK_KEYS if key not in benchmark]
    if "readers" not in benchmark and "model" not in benchmark:
        missing.append("readers (or model)")
    if missing:
        raise ValueError(
            f"benchmark is missing the keys {missing}; expected {list(_BENCHMARK_KEYS)} and readers or model"
        )
    metrics = benchmark["metrics"]
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"benchmark {benchmark['id']!r}: metrics must map metric names to values, got {metrics!r}")
    return {str(name): _num(value) for name, value in metrics.items()}


def benchmark_noninferiority(
    estimates: Mapping[str, float | None],
    intervals: Mapping[str, tuple[float | None, float | None]],
    benchmark: Mapping[str, Any],
    margin: float,
) -> GateResult:
    """Non-inferiority to a published benchmark, on every metric the benchmark states.

    Why: the model must be at least as good as the readers (or published models) it is
    compared with, with its uncertainty counted against it. ``benchmark`` is an entry of
    ``medimg/reference/benchmarks.yaml``: keys id, metrics (``{name: value}``), operating_point,
    source, reference_standard and readers or model (``ValueError`` otherwise).
    ``estimates`` and ``intervals`` (``(lower, upper)``) are keyed by the benchmark's metric
    names (the caller maps them from the task's keys, see ``benchmark_metric_key``).

    Passes when for every benchmark metric the lower CI bound is ``>= value - margin``. A
    missing (None), NaN or absent estimate or lower bound fails the rule, and the reason says
    so.
    """
    values = _check_benchmark(benchmark)
    margin = _check_margin(margin)
    who = f"readers: {benchmark['readers']}" if "readers" in benchmark else f"model: {benchmark['model']}"
    inputs: dict[str, Any] = {}
    described, shortfalls, failed = [], [], []
    for name, value in values.items():
        estimate = _num(estimates.get(name))
        interval = intervals.get(name)
        lower, upper = (_num(v) for v in interval) if interval is not None else (math.nan, math.nan)
        need = value - margin
        if name not in estimates or interval is None:
            shortfall = f"{name} missing"
        elif not (math.isfinite(estimate) and math.isfinite(lower)):
            shortfall = f"{name} is nan/undefined"
        elif not _meets(lower, need):
            shortfall = f"{name} lower bound {_fmt(lower)} < {_fmt(need)}"
        else:
            shortfall = ""
        if shortfall:
            shortfalls.append(shortfall)
            failed.append(name)
        described.append(f"{name} {_fmt(estimate)} (CI {_fmt(lower)}-{_fmt(upper)}) vs {_fmt(value)}")
        inputs.update({name: estimate, f"{name}_ci": [lower, upper], f"required_{name}_lower": need})
    passed = not failed
    verdict = "passed" if passed else "failed (" + "; ".join(shortfalls) + ")"
    requirements = " and ".join(f"{_fmt(value - margin)} ({name})" for name, value in values.items())
    reason = (
        f"Model {' and '.join(described)} for benchmark '{benchmark['id']}' ({benchmark['source']}; {who}; "
        f"reference standard: {benchmark['reference_standard']}; operating point: "
        f"{benchmark['operating_point']}); with margin {_fmt(margin)} the lower bounds must reach "
        f"{requirements}: {verdict}."
    )
    inputs.update({"margin": margin, "metrics": list(values), "failed": failed, "benchmark": dict(benchmark)})
    return GateResult("benchmark_noninferiority", passed, reason, to_jsonable(inputs))


def _check_floors(
    values: Mapping[str, Any], floors: Mapping[str, float], floor_word: str
) -> tuple[dict[str, float], dict[str, float], list[str], list[str]]:
    """(values, floors, one phrase per floor, names that miss theirs) for rules made of floors.

    A name missing from ``values`` or with a NaN value misses its floor, and its phrase says so.
    """
    floors_f = {str(name): _num(value) for name, value in floors.items()}
    found = {name: _num(values[name]) if name in values else math.nan for name in floors_f}
    parts, failed = [], []
    for name, floor in floors_f.items():
        value = found[name]
        if name not in values:
            parts.append(f"{name} missing ({floor_word} {_fmt(floor)})")
        elif not math.isfinite(value):
            parts.append(f"{name} is nan/undefined ({floor_word} {_fmt(floor)})")
        elif not _meets(value, floor):
            parts.append(f"{name} {_fmt(value)} < {_fmt(floor)}")
        else:
            parts.append(f"{name} {_fmt(value)} >= {_fmt(floor)}")
            continue
        failed.append(name)
    return found, floors_f, parts, failed


def class_sensitivity(sensitivities: Mapping[str, float | None], floors: Mapping[str, float]) -> GateResult:
    """Every class named in ``floors`` reaches its least sensitivity (recall), as a point estimate.

    Why: a good macro figure can hide a class the model misses (e.g. a rare tumour type);
    ``gates.min_class_sensitivity`` names a floor per class. ``sensitivities`` maps class name
    to the test-set sensitivity of that class. A class that is missing or NaN fails, and the
    reason says so. With no floors the gate passes vacuously.
    """
    values, floors_f, parts, failed = _check_floors(sensitivities, floors, "floor")
    passed = not failed
    if not floors_f:
        reason = "No per-class sensitivity floors were configured: passed."
    elif passed:
        reason = f"Every class reaches its sensitivity floor ({', '.join(parts)}): passed."
    else:
        reason = f"{len(failed)} of {len(floors_f)} classes miss their sensitivity floor ({', '.join(parts)}): failed."
    inputs = {"sensitivities": values, "floors": floors_f, "failed": failed}
    return GateResult("class_sensitivity", passed, reason, to_jsonable(inputs))


def champion_noninferiority(
    delta: Mapping[str, Any] | None, margin: float, champion_version: str | None, metric: str = "ROC AUC"
) -> GateResult:
    """Non-inferiority of the candidate's ROC AUC (or ``metric``) to the current champion's.

    Why: a retrained model must not quietly be worse than the one in service. ``delta`` is
    the output of ``paired_auc_difference`` or ``paired_macro_auc_difference`` (candidate minus
    champion); ``metric`` names what it compares (e.g. "macro ROC AUC") in the reason and the
    inputs. With no champion (``champion_version is None``, the first run) the gate passes and
    says so; otherwise it passes when ``delta["lower"] >= -margin``. A champion without a
    ``delta`` fails.
    """
    margin = _check_margin(margin)
    name = "champion_noninferiority"
    if champion_version is None:
        return GateResult(
            name,
            True,
            "No champion model is registered yet (first run), so there is nothing to be non-inferior to: passed.",
            {"champion_version": None, "margin": margin, "metric": metric},
        )
    if delta is None:
        return GateResult(
            name,
            False,
            f"Champion version {champion_version} exists but no paired {metric} comparison with it was supplied: "
            "failed.",
            {"champion_version": str(champion_version), "margin": margin, "metric": metric, "delta": None},
        )
    point, lower, upper = (_num(delta.get(key)) for key in ("delta", "lower", "upper"))
    passed = _meets(lower, -margin)
    reason = (
        f"Candidate {metric} minus champion (version {champion_version}) {metric} is {_fmt(point)} "
        f"(CI {_fmt(lower)} to {_fmt(upper)}, {delta.get('n_boot', '?')} paired bootstrap "
        f"replicates); the lower bound must be >= {_fmt(-margin)} (margin {_fmt(margin)}): "
        f"{'passed' if passed else 'failed'}."
    )
    inputs = {
        "champion_version": str(champion_version),
        "metric": metric,
        "margin": margin,
        "required_lower": -margin,
        "delta": point,
        "lower": lower,
        "upper": upper,
        "n_boot": delta.get("n_boot"),
    }
    return GateResult(name, passed, reason, to_jsonable(inputs))


def minimum_metrics(metrics: Mapping[str, Any], minimums: Mapping[str, float]) -> GateResult:
    """Every metric named in ``minimums`` reaches its minimum.

    Why: absolute floors (e.g. AUC >= 0.9) catch a model that is no worse than a bad champion
    but still not fit for use. A metric that is missing or NaN fails, and the reason says so.
    With no minimums at all the gate passes vacuously.
    """
    values, floors, parts, failed = _check_floors(metrics, minimums, "minimum")
    passed = not failed
    if not floors:
        reason = "No minimum metrics were configured: passed."
    elif passed:
        reason = f"All {len(floors)} metrics reach their minimums ({', '.join(parts)}): passed."
    else:
        reason = f"{len(failed)} of {len(floors)} metrics miss their minimums ({', '.join(parts)}): failed."
    inputs = {"values": values, "minimums": floors, "failed": failed}
    return GateResult("minimum_metrics", passed, reason, to_jsonable(inputs))


def decide(results: Sequence[GateResult]) -> dict[str, Any]:
    """Combine gate verdicts: promote only if every gate passed.

    Returns ``{"passed": bool, "failed": [names of failed gates], "rules": [each result as a
    dict]}``, JSON-native (see ``to_jsonable``). An empty list raises ``ValueError``: a
    decision with no evidence must not promote by default.
    """
    if not results:
        raise ValueError("decide() needs at least one gate result; refusing to pass on no rules")
    rules = [to_jsonable(dataclasses.asdict(result)) for result in results]
    failed = [result.name for result in results if not result.passed]
    return {"passed": not failed, "failed": failed, "rules": rules}
