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
_BENCHMARK_KEYS = ("id", "sensitivity", "specificity", "source", "readers", "reference_standard")


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


def benchmark_noninferiority(
    sensitivity: float | None,
    sensitivity_ci: tuple[float | None, float | None],
    specificity: float | None,
    specificity_ci: tuple[float | None, float | None],
    benchmark: Mapping[str, Any],
    margin: float,
) -> GateResult:
    """Non-inferiority to a published reader benchmark, on both sensitivity and specificity.

    Why: the model must be at least as good as the humans it would assist, with its
    uncertainty counted against it. Passes when the lower CI bound of sensitivity is
    ``>= benchmark["sensitivity"] - margin`` AND the lower CI bound of specificity is
    ``>= benchmark["specificity"] - margin``. ``benchmark`` must hold the keys id,
    sensitivity, specificity, source, readers and reference_standard (``ValueError``
    otherwise). A missing (None) or NaN estimate or bound fails the rule.
    """
    missing = [key for key in _BENCHMARK_KEYS if key not in benchmark]
    if missing:
        raise ValueError(f"benchmark is missing the keys {missing}; expected {list(_BENCHMARK_KEYS)}")
    margin = _check_margin(margin)
    sens, spec = _num(sensitivity), _num(specificity)
    sens_lo, sens_hi = (_num(v) for v in sensitivity_ci)
    spec_lo, spec_hi = (_num(v) for v in specificity_ci)
    bench_sens, bench_spec = _num(benchmark["sensitivity"]), _num(benchmark["specificity"])
    need_sens, need_spec = bench_sens - margin, bench_spec - margin
    sens_ok, spec_ok = _meets(sens_lo, need_sens), _meets(spec_lo, need_spec)
    passed = sens_ok and spec_ok

    shortfalls = [
        f"{label} lower bound {_fmt(lo)} < {_fmt(need)}"
        for label, ok, lo, need in (
            ("sensitivity", sens_ok, sens_lo, need_sens),
            ("specificity", spec_ok, spec_lo, need_spec),
        )
        if not ok
    ]
    verdict = "passed" if passed else "failed (" + "; ".join(shortfalls) + ")"
    reason = (
        f"Model sensitivity {_fmt(sens)} (CI {_fmt(sens_lo)}-{_fmt(sens_hi)}) vs "
        f"{_fmt(bench_sens)} and specificity {_fmt(spec)} (CI {_fmt(spec_lo)}-{_fmt(spec_hi)}) "
        f"vs {_fmt(bench_spec)} for benchmark '{benchmark['id']}' ({benchmark['source']}; "
        f"readers: {benchmark['readers']}; reference standard: {benchmark['reference_standard']}); "
        f"with margin {_fmt(margin)} the lower bounds must reach {_fmt(need_sens)} and "
        f"{_fmt(need_spec)}: {verdict}."
    )
    inputs = {
        "sensitivity": sens,
        "sensitivity_ci": [sens_lo, sens_hi],
        "specificity": spec,
        "specificity_ci": [spec_lo, spec_hi],
        "margin": margin,
        "required_sensitivity_lower": need_sens,
        "required_specificity_lower": need_spec,
        "benchmark": {key: benchmark[key] for key in _BENCHMARK_KEYS},
    }
    return GateResult("benchmark_noninferiority", passed, reason, to_jsonable(inputs))


def champion_noninferiority(delta: Mapping[str, Any] | None, margin: float, champion_version: str | None) -> GateResult:
    """Non-inferiority of the candidate's ROC AUC to the current champion's.

    Why: a retrained model must not quietly be worse than the one in service. ``delta`` is
    the output of ``paired_auc_difference`` (candidate minus champion). With no champion
    (``champion_version is None``, the first run) the gate passes and says so; otherwise it
    passes when ``delta["lower"] >= -margin``. A champion without a ``delta`` fails.
    """
    margin = _check_margin(margin)
    name = "champion_noninferiority"
    if champion_version is None:
        return GateResult(
            name,
            True,
            "No champion model is registered yet (first run), so there is nothing to be non-inferior to: passed.",
            {"champion_version": None, "margin": margin},
        )
    if delta is None:
        return GateResult(
            name,
            False,
            f"Champion version {champion_version} exists but no paired AUC comparison with it was supplied: failed.",
            {"champion_version": str(champion_version), "margin": margin, "delta": None},
        )
    point, lower, upper = (_num(delta.get(key)) for key in ("delta", "lower", "upper"))
    passed = _meets(lower, -margin)
    reason = (
        f"Candidate AUC minus champion (version {champion_version}) AUC is {_fmt(point)} "
        f"(CI {_fmt(lower)} to {_fmt(upper)}, {delta.get('n_boot', '?')} paired bootstrap "
        f"replicates); the lower bound must be >= {_fmt(-margin)} (margin {_fmt(margin)}): "
        f"{'passed' if passed else 'failed'}."
    )
    inputs = {
        "champion_version": str(champion_version),
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
    values = {key: _num(metrics[key]) if key in metrics else math.nan for key in minimums}
    floors = {key: _num(value) for key, value in minimums.items()}
    parts, failed = [], []
    for key, floor in floors.items():
        value = values[key]
        if key not in metrics:
            parts.append(f"{key} missing (minimum {_fmt(floor)})")
            failed.append(key)
        elif not math.isfinite(value):
            parts.append(f"{key} is nan/undefined (minimum {_fmt(floor)})")
            failed.append(key)
        elif not _meets(value, floor):
            parts.append(f"{key} {_fmt(value)} < {_fmt(floor)}")
            failed.append(key)
        else:
            parts.append(f"{key} {_fmt(value)} >= {_fmt(floor)}")
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
