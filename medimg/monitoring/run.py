"""One monitoring run: the workspace's prediction log and reviews, judged and written with their plots.

Reads ``<workspace>/serve/predictions.jsonl`` (:mod:`medimg.serving.prediction_log`; the entries of
``registry.model_name``, without the node's own results coming back, ``own_result``), the reviews
(``serve/reviews.jsonl``, each case's first review, joined with its case for the time of its prediction)
and each model version's references (:mod:`medimg.monitoring.reference`);
judges the windows (:mod:`medimg.monitoring.windows`, settings ``monitor.*``); writes
``<workspace>/serve/monitoring/report.json`` and ``plots/`` (one PNG per window, ``overview.png``), replacing
the previous run's. The events of the newest judged window are the run's (:attr:`MonitorReport.events`): the
flow (``flows/monitor.py``) emits and notifies them. The caller points MLflow at the workspace first.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from medimg.config import Params
from medimg.monitoring import plots
from medimg.monitoring.reference import reference
from medimg.monitoring.report import PLOTS_DIR, MonitorReport, Window, write_report
from medimg.monitoring.windows import Reference, ReviewedCase, judge_window, latest_events, rates, split_windows
from medimg.pacs.selection import OWN_RESULT
from medimg.review.cases import CaseStore
from medimg.review.reviews import ReviewLog, now_iso
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog
from medimg.workspace import Workspace

log = logging.getLogger(__name__)

OVERVIEW_PLOT = "overview.png"


def reviewed_cases(ws: Workspace) -> list[ReviewedCase]:
    """Each reviewed case's first review, with the time of its prediction (cases no longer kept are left out)."""
    cases = CaseStore(ws.cases)
    first: dict[str, ReviewedCase] = {}
    for review in ReviewLog(ws.reviews_log).read():
        if review.case_id in first:
            continue
        case = cases.get(review.case_id)
        if case is not None:
            first[review.case_id] = ReviewedCase(case.predicted_at, review.model_abnormal, review.reader_abnormal)
    return list(first.values())


def _answered(entries: list[LoggedPrediction], version: str | None) -> list[LoggedPrediction]:
    return [e for e in entries if e.refusal_reason is None and e.p_abnormal is not None and e.model_version == version]


def monitor(params: Params, ws: Workspace) -> MonitorReport:
    """Judge the prediction log of ``ws`` (module docstring) and write the report; the report."""
    cfg = params.monitor
    name = params.registry.model_name
    # the node's own results coming back through the feed (own_result) are not inputs: left out of every rate
    entries = [
        e
        for e in PredictionLog(ws.prediction_log).read()
        if e.model_name in (name, None) and e.refusal_reason != OWN_RESULT
    ]
    chunks = split_windows(entries, cfg.window_size, cfg.max_windows)
    versions = sorted({e.model_version for chunk in chunks for e in chunk if e.model_version is not None})
    scratch = ws.monitoring / "references"
    references: dict[str, Reference] = {v: reference(ws, name, v, scratch) for v in versions}
    reviewed = reviewed_cases(ws)
    plot_dir = ws.monitoring / PLOTS_DIR
    shutil.rmtree(plot_dir, ignore_errors=True)
    windows: list[Window] = []
    for index, chunk in enumerate(chunks):
        window = judge_window(index, chunk, references, reviewed, cfg)
        ref = references.get(window.model_version or "")
        mine = _answered(chunk, window.model_version)
        plot = f"window-{index:03d}.png"
        plots.window_png(
            window,
            np.array([e.p_abnormal for e in mine], dtype=np.float64),
            ref.scores if ref else None,
            np.array([e.input_mean for e in mine if e.input_mean is not None], dtype=np.float64),
            ref.intensity_mean if ref else None,
            plot_dir / plot,
        )
        windows.append(window.model_copy(update={"plot": plot}))
    if windows:
        plots.overview_png(windows, plot_dir / OVERVIEW_PLOT)
    sensitivity, specificity = rates(reviewed)
    report = MonitorReport(
        generated_at=now_iso(),
        model_name=name,
        log_entries=len(entries),
        window_size=cfg.window_size,
        windows=tuple(windows),
        overall_sensitivity=sensitivity if sensitivity.n else None,
        overall_specificity=specificity if specificity.n else None,
        events=latest_events(windows),
        references={v: r.source for v, r in references.items()},
    )
    write_report(ws.monitoring, report)
    log.info(
        "monitor: %d log entries in %d window(s); %s",
        len(entries),
        len(windows),
        ", ".join(e.code for e in report.events) or "no event",
    )
    return report
