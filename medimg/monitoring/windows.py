"""The prediction log in windows, each judged against its model version's references. Pure functions.

* Windows: consecutive entries, ``window_size`` each, counted back from the newest entry (so the current
  window is full as soon as the log is long enough; the oldest may be short); the latest ``max_windows``.
* Refusal rate: refused entries over entries, by reason code; ``refusal_rate`` event above
  ``monitor.max_refusal_rate`` (judged windows only).
* Score drift: the answered entries' ``p_abnormal`` of the window's main model version (the one that
  answered most of its entries) against that version's scores on its own test split
  (:func:`medimg.drift.compare`: PSI on the reference's quantile bins and the two-sample KS test).
* Input drift: ``input_mean`` and ``input_std`` of the images the model saw (stored-size grey, 0-255)
  against the training split's ``pixel_mean`` and ``pixel_std`` of the version's data version.
* Realised sensitivity and specificity: among reviewed cases predicted in the window (the first review of
  each case is the truth), the model's abnormal decisions against the reader's; 95% Wilson intervals; an
  event when the interval's upper bound is below ``monitor.min_sensitivity`` / ``min_specificity`` and at
  least ``monitor.min_reviews`` cases of that kind were reviewed.

A window with fewer than ``monitor.min_window_size`` answered entries is shown but not judged: it raises
no event and its drift verdicts do not count.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medimg.config import MonitorConfig
from medimg.drift import compare
from medimg.monitoring.report import Drift, Event, Rate, Window
from medimg.serving.prediction_log import LoggedPrediction

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Reference:
    """What one model version's windows are compared with: ``scores`` (p_abnormal on its test split),
    ``intensity_mean`` / ``intensity_std`` (per-image pixel mean and std of its training split, 0-255); each
    ``None`` when it could not be read. ``source``: where they came from, in words."""

    scores: np.ndarray | None
    intensity_mean: np.ndarray | None
    intensity_std: np.ndarray | None
    source: str


@dataclass(frozen=True)
class ReviewedCase:
    """One reviewed case for the realised rates: when its prediction was made (ISO 8601 UTC, the log
    entry's time), whether the model called it abnormal and whether the (first) reader did."""

    predicted_at: str
    model_abnormal: bool
    reader_abnormal: bool


def wilson(successes: int, n: int, z: float = Z95) -> Rate:
    """``successes`` of ``n`` with its Wilson score interval (Wilson 1927); ``rate`` None for n = 0."""
    if n == 0:
        return Rate(successes=0, n=0, rate=None, low=None, high=None)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, where rounding is not
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Rate(successes=successes, n=n, rate=p, low=low, high=high)


def split_windows(entries: Sequence[LoggedPrediction], size: int, keep: int) -> list[list[LoggedPrediction]]:
    """``entries`` (oldest first) cut into windows of ``size`` counted back from the newest; the last
    ``keep`` windows, oldest first."""
    windows: list[list[LoggedPrediction]] = []
    end = len(entries)
    while end > 0 and len(windows) < keep:
        windows.append(list(entries[max(0, end - size) : end]))
        end -= size
    return windows[::-1]


def _drift(name: str, reference: np.ndarray | None, current: list[float], cfg: MonitorConfig) -> Drift | None:
    if reference is None or len(reference) == 0 or not current:
        return None
    return Drift(**compare(name, reference, np.asarray(current), cfg.psi_threshold, cfg.pvalue_threshold))


def rates(cases: Sequence[ReviewedCase]) -> tuple[Rate, Rate]:
    """(sensitivity, specificity) of the model's decisions against the readers' on ``cases``."""
    positives = [c for c in cases if c.reader_abnormal]
    negatives = [c for c in cases if not c.reader_abnormal]
    return (
        wilson(sum(c.model_abnormal for c in positives), len(positives)),
        wilson(sum(not c.model_abnormal for c in negatives), len(negatives)),
    )


def judge_window(
    index: int,
    entries: Sequence[LoggedPrediction],
    references: Mapping[str, Reference],
    reviewed: Sequence[ReviewedCase],
    cfg: MonitorConfig,
) -> Window:
    """One window's numbers and events (module docstring); ``references`` by model version, ``reviewed``:
    every reviewed case (those predicted within the window's times count)."""
    answered = [e for e in entries if e.refusal_reason is None and e.p_abnormal is not None]
    refusals = Counter(e.refusal_reason for e in entries if e.refusal_reason is not None)
    versions = Counter(e.model_version for e in answered if e.model_version is not None)
    version = versions.most_common(1)[0][0] if versions else None
    mine = [e for e in answered if e.model_version == version]
    reference = references.get(version) if version is not None else None
    score = _drift("p_abnormal", reference.scores if reference else None, [float(e.p_abnormal or 0) for e in mine], cfg)
    inputs = tuple(
        d
        for d in (
            _drift(
                "input_mean",
                reference.intensity_mean if reference else None,
                [e.input_mean for e in mine if e.input_mean is not None],
                cfg,
            ),
            _drift(
                "input_std",
                reference.intensity_std if reference else None,
                [e.input_std for e in mine if e.input_std is not None],
                cfg,
            ),
        )
        if d is not None
    )
    start, end = entries[0].time, entries[-1].time
    in_window = [c for c in reviewed if start <= c.predicted_at <= end]
    sensitivity, specificity = rates(in_window)
    judged = len(answered) >= cfg.min_window_size
    refusal_rate = sum(refusals.values()) / len(entries)
    events: list[Event] = []
    if judged:
        if score is not None and score.drifted:
            events.append(
                Event(
                    code="score_drift",
                    message=f"p_abnormal of v{version}: PSI {score.psi:.3f}, KS p {score.ks_pvalue:.2g} "
                    f"({score.n_current} predictions vs {score.n_reference} test-split scores)",
                )
            )
        drifted_inputs = [d for d in inputs if d.drifted]
        if drifted_inputs:
            events.append(
                Event(
                    code="input_drift",
                    message="; ".join(f"{d.feature}: PSI {d.psi:.3f}, KS p {d.ks_pvalue:.2g}" for d in drifted_inputs)
                    + " against the training split",
                )
            )
        if refusal_rate > cfg.max_refusal_rate:
            top = ", ".join(f"{reason} {n}" for reason, n in refusals.most_common(3))
            events.append(
                Event(
                    code="refusal_rate",
                    message=f"{refusal_rate:.1%} of {len(entries)} inputs refused ({top}); "
                    f"limit {cfg.max_refusal_rate:.0%}",
                )
            )
    for code, rate, floor in (
        ("low_sensitivity", sensitivity, cfg.min_sensitivity),
        ("low_specificity", specificity, cfg.min_specificity),
    ):
        if floor is not None and rate.n >= cfg.min_reviews and rate.high is not None and rate.high < floor:
            events.append(
                Event(
                    code=code,
                    message=f"{code.removeprefix('low_')} {rate.rate:.3f} (95% CI {rate.low:.3f}-{rate.high:.3f}, "
                    f"{rate.n} reviewed cases) below {floor:.3f}",
                )
            )
    return Window(
        index=index,
        start=start,
        end=end,
        n_entries=len(entries),
        n_answered=len(answered),
        model_version=version,
        refusals=dict(refusals.most_common()),
        refusal_rate=refusal_rate,
        p_abnormal_mean=float(np.mean([e.p_abnormal for e in answered])) if answered else None,
        input_mean_mean=float(np.mean([e.input_mean for e in mine if e.input_mean is not None]))
        if any(e.input_mean is not None for e in mine)
        else None,
        judged=judged,
        score_drift=score,
        input_drift=inputs,
        n_reviews=len(in_window),
        sensitivity=sensitivity if sensitivity.n else None,
        specificity=specificity if specificity.n else None,
        events=tuple(events),
    )


def latest_events(windows: Sequence[Window]) -> tuple[Event, ...]:
    """The events of the newest judged window (what a monitoring run raises); none without one."""
    judged = [w for w in windows if w.judged]
    return judged[-1].events if judged else ()
