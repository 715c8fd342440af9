"""The ``monitor`` flow: live monitoring of ``medimg serve``'s prediction log, with events and notifications.

Runs :func:`medimg.monitoring.run.monitor` once (the windows, their drift, refusal rates and realised
sensitivity and specificity from reviews; report and plots in ``<workspace>/serve/monitoring/``, shown on
``/review/monitoring``), then, for each event of the newest judged window, emits ``medimg.monitor.<code>``
(``score_drift``, ``input_drift``, ``refusal_rate``, ``low_sensitivity``, ``low_specificity``) and sends the
configured notification through :func:`tasks.notify.signal`, as the retrain flow does for its outcomes.

Scheduled beside the retrain (``medimg schedule``: cron ``monitor.cron``); ``medimg monitor`` runs it once.
Final state: ``Completed`` named ``NoEvent`` or ``Events`` (the message lists them); a notification that
cannot be delivered is logged and does not fail the run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from medimg.config import load_params
from medimg.monitoring.run import monitor as monitor_log
from medimg.workspace import Workspace, activate
from tasks.notify import MONITOR_EVENT_PREFIX, signal


@flow(name="monitor", log_prints=True)
def monitor(params_path: str = "params.yaml", overrides: dict | None = None) -> State[Any]:
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    report = monitor_log(params, ws)
    window = next((w for w in reversed(report.windows) if w.judged), None)
    for event in report.events:
        payload = {
            "window": window.index if window else None,
            "window_start": window.start if window else None,
            "window_end": window.end if window else None,
            "model_version": window.model_version if window else None,
            "report": str(ws.monitoring / "report.json"),
        }
        state = signal(params, event.code, event.message, payload, MONITOR_EVENT_PREFIX, return_state=True)
        if state.is_failed():
            logger.warning("notification for %s could not be delivered: %s", event.code, state.message)
    summary = "; ".join(f"{e.code}: {e.message}" for e in report.events)
    if report.events:
        return Completed(name="Events", message=summary, data=report)
    judged = sum(w.judged for w in report.windows)
    return Completed(
        name="NoEvent",
        message=f"{report.log_entries} log entries, {len(report.windows)} window(s), {judged} judged: no event",
        data=report,
    )
