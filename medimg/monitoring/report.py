"""The monitoring report: typed, frozen, written as JSON beside its plots (``<workspace>/serve/monitoring/``).

Units: probabilities, rates and their bounds are fractions in [0, 1]; intensities are grey levels 0-255 of the
stored-size image the model saw; PSI is unitless (may be ``Infinity`` in the JSON); times are ISO 8601 UTC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_FILE = "report.json"
PLOTS_DIR = "plots"

#: What a window can raise (the event names are ``medimg.monitor.<code>``).
EventCode = Literal["score_drift", "input_drift", "refusal_rate", "low_sensitivity", "low_specificity"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class Drift(_Frozen):
    """One feature of a window against its reference (:func:`medimg.drift.compare`)."""

    feature: str = Field(description="p_abnormal, input_mean or input_std")
    n_reference: int
    n_current: int
    psi: float = Field(description="population stability index (reference-quantile bins)")
    ks_statistic: float
    ks_pvalue: float
    drifted: bool = Field(description="psi above monitor.psi_threshold or p below monitor.pvalue_threshold")


class Rate(_Frozen):
    """A proportion with its 95% Wilson score interval: ``successes`` of ``n``."""

    successes: int
    n: int
    rate: float | None = Field(description="successes / n; None when n is 0")
    low: float | None
    high: float | None


class Event(_Frozen):
    """Something a window raised: ``code`` and a one-line ``message`` with the numbers."""

    code: EventCode
    message: str


class Window(_Frozen):
    """One window of consecutive prediction log entries (oldest first within it)."""

    index: int = Field(description="0 for the oldest window of the report")
    start: str = Field(description="time of its first entry")
    end: str = Field(description="time of its last entry")
    n_entries: int
    n_answered: int
    model_version: str | None = Field(description="the version that answered most of its entries")
    refusals: dict[str, int] = Field(description="reason code -> inputs refused with it")
    refusal_rate: float = Field(description="refused / entries")
    p_abnormal_mean: float | None
    input_mean_mean: float | None
    judged: bool = Field(description="n_answered >= monitor.min_window_size: its drift verdicts count")
    score_drift: Drift | None
    input_drift: tuple[Drift, ...] = Field(description="input_mean and input_std against the training split")
    n_reviews: int = Field(description="reviewed cases whose prediction falls in the window")
    sensitivity: Rate | None = Field(description="model abnormal among reader-abnormal reviewed cases")
    specificity: Rate | None = Field(description="model not abnormal among reader-normal reviewed cases")
    events: tuple[Event, ...]
    plot: str | None = Field(default=None, description="its PNG's file name in plots/")


class MonitorReport(_Frozen):
    """One monitoring run over the prediction log."""

    generated_at: str
    model_name: str
    log_entries: int = Field(description="entries in the prediction log")
    window_size: int
    windows: tuple[Window, ...] = Field(description="oldest first; the last is the current one")
    overall_sensitivity: Rate | None = Field(description="over every reviewed case")
    overall_specificity: Rate | None
    events: tuple[Event, ...] = Field(description="the latest judged window's events: what the run raises")
    references: dict[str, str] = Field(description="model version -> where its references came from")


def write_report(folder: Path, report: MonitorReport) -> Path:
    """Write ``report`` as ``folder/report.json`` atomically; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    tmp = folder / f".{REPORT_FILE}.tmp"
    tmp.write_text(report.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_report(folder: Path) -> MonitorReport | None:
    """The report in ``folder``, or ``None`` when no monitoring run wrote one."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        return None
    return MonitorReport.model_validate(json.loads(path.read_text(encoding="utf-8")))
