"""Failure signals: a Prefect event for automations, and a notification through a Prefect block."""

from __future__ import annotations

import inspect
import json
import logging
from typing import cast

from prefect import task
from prefect.blocks.notifications import CustomWebhookNotificationBlock, NotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.utilities.asyncutils import run_coro_as_sync

from medimg.config import Params

log = logging.getLogger("medimg.notify")

EVENT_PREFIX = "medimg.retrain"
#: The events of live monitoring (flows/monitor.py): ``medimg.monitor.<code>``.
MONITOR_EVENT_PREFIX = "medimg.monitor"


PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, KeyError)


def retry_transient(_task, _task_run, state) -> bool:
    """Retry only what may pass on a second try: I/O, network and server errors, not bad data or config."""
    try:
        state.result()
    except PERMANENT:
        return False
    except (OSError, ConnectionError, TimeoutError):
        return True
    except Exception as err:  # MLflow and HTTP clients wrap transport errors in their own types
        text = f"{type(err).__name__} {err}".lower()
        return any(word in text for word in ("connection", "timeout", "timed out", "unavailable", "503", "502"))
    return False


@task(name="signal", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def signal(params: Params, outcome: str, message: str, payload: dict | None = None, prefix: str = EVENT_PREFIX) -> None:
    """Emit ``<prefix>.<outcome>`` (``medimg.retrain.<outcome>`` by default) and notify, when configured, with the
    reason."""
    emit_event(
        event=f"{prefix}.{outcome}",
        resource={
            "prefect.resource.id": f"medimg.model.{params.registry.model_name}",
            "prefect.resource.name": params.registry.model_name,
        },
        related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run"}]
        if flow_run.id
        else None,
        payload={"message": message, **(payload or {})},
    )
    cfg = params.orchestration
    subject = f"{prefix.replace('.', ' ')} {outcome}: {params.registry.model_name}"
    if cfg.notify_block:
        # a sync caller: Prefect's async_dispatch runs the sync load (typed "block or coroutine")
        stored = cast(NotificationBlock, NotificationBlock.load(cfg.notify_block))
        sent = stored.notify(body=message, subject=subject)
        if inspect.iscoroutine(sent):  # NotificationBlock's own notify, kept by a custom block, is async
            run_coro_as_sync(sent)
    elif cfg.notify_webhook_url:
        block = CustomWebhookNotificationBlock(
            name="medimg-webhook",
            url=cfg.notify_webhook_url,
            method="POST",
            json_data={
                "subject": "{{subject}}",
                "body": "{{body}}",
                "outcome": outcome,
                "model": params.registry.model_name,
                "flow_run_id": str(flow_run.id or "none"),
                "details": json.loads(json.dumps(payload or {}, default=str)),
            },  # e.g. failed_rules
        )
        block.notify(body=message, subject=subject)
    else:
        return
    log.info("notified: %s", subject)
