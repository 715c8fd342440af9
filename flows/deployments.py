"""Deployments of the flows: served from this process, or registered with a Prefect work pool.

Both carry the cron schedule from params and a concurrency limit of one with the configured
collision strategy (a scheduled run that would overlap a running one is cancelled or queued).
The inbox watcher is added when ``data.inbox`` is set; an overlapping watcher run is always
cancelled (the next poll sees the same files). Live monitoring (``flows/monitor.py``) runs on
``monitor.cron``; an overlapping monitor run is cancelled too (the next one reads the same log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.monitor import monitor
from flows.retrain import retrain
from flows.watch_inbox import watch_inbox
from medimg.config import Params

ROOT = Path(__file__).resolve().parents[1]


def _limit(strategy: str) -> ConcurrencyLimitConfig:
    strategies = {"cancel_new": ConcurrencyLimitStrategy.CANCEL_NEW, "enqueue": ConcurrencyLimitStrategy.ENQUEUE}
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategies[strategy])


def _settings(params: Params, params_path: Path) -> list[tuple]:
    """(flow, entrypoint, deployment options) of each deployment, shared by serving and the work pool."""
    common = {"parameters": {"params_path": str(params_path.resolve())}, "tags": ["medimg"]}
    name = params.schedule.deployment_name
    out: list[tuple[Flow[..., Any], str, dict[str, object]]] = [
        (
            retrain,
            "flows/retrain.py:retrain",
            {
                **common,
                "name": name,
                "concurrency_limit": _limit(params.schedule.collision_strategy),
                "schedule": Cron(params.schedule.cron, timezone=params.schedule.timezone),
            },
        ),
        (
            monitor,
            "flows/monitor.py:monitor",
            {
                **common,
                "name": params.monitor.deployment_name,
                "concurrency_limit": _limit("cancel_new"),
                "schedule": Cron(params.monitor.cron, timezone=params.schedule.timezone),
            },
        ),
    ]
    if params.data.inbox:
        out.append(
            (
                watch_inbox,
                "flows/watch_inbox.py:watch_inbox",
                {
                    **common,
                    "name": f"{name}-inbox",
                    "concurrency_limit": _limit("cancel_new"),
                    "interval": params.schedule.inbox_poll_seconds,
                },
            )
        )
    return out


def runner_deployments(params: Params, params_path: Path) -> list:
    """Deployments for ``prefect.serve`` in this process (no work pool needed)."""
    return [flow.to_deployment(**options) for flow, _, options in _settings(params, params_path)]


def deploy_to_pool(params: Params, params_path: Path, work_pool: str) -> list[str]:
    """Register the deployments with a work pool; a worker on that pool runs them from this checkout."""
    return [
        str(
            flow.from_source(source=str(ROOT), entrypoint=entrypoint).deploy(
                work_pool_name=work_pool, print_next_steps=False, **options
            )
        )
        for flow, entrypoint, options in _settings(params, params_path)
    ]
