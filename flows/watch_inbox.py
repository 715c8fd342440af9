"""The ``watch-inbox`` flow: new files in the inbox folder start a retrain.

Served on an interval next to the scheduled retrain (``medimg schedule``). It compares a
snapshot of the inbox with the one taken when it last started a retrain, and runs ``retrain``
as a subflow when files were added or changed; the retrain's ingest picks them up
incrementally and makes a new data version. The snapshot is saved only after the retrain ran,
so a crashed retrain is retried at the next poll.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from flows.retrain import retrain
from medimg import watch
from medimg.config import load_params
from medimg.workspace import Workspace, activate


@flow(name="watch-inbox")
def watch_inbox(params_path: str = "params.yaml", overrides: dict | None = None) -> State[Any]:
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    ws = Workspace.at(params.workspace.path)
    activate(ws, params.workspace.tracking_uri)
    inbox = params.data.resolve_path(params.data.inbox)
    if inbox is None:
        return Completed(name="NoInbox", message="data.inbox is not set: nothing to watch")
    state_file = ws.root / "inbox-snapshot.json"
    current = watch.snapshot(inbox)
    new = watch.changed(watch.load(state_file), current)
    if not new:
        return Completed(name="NoNewData", message=f"no new files in {inbox}")
    logger.info("%d new or changed file(s) in %s (e.g. %s): starting retrain", len(new), inbox, ", ".join(new[:5]))
    state = retrain(params_path=params_path, overrides=overrides, return_state=True)
    if not state.is_cancelled():
        watch.save(state_file, current)
    return state
