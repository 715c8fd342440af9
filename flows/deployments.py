"""Deployments of the flows: served from this process, or registered with a Prefect work pool.

Both carry the cron schedule from params and a concurrency limit of one with the configured
collision strategy (a scheduled run that would overlap a running one is cancelled or queued).
The inbox watcher is added when ``data.inbox`` is set.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.retrain import retrain
from flows.watch_inbox import watch_inbox
from medimg.config import Params

ROOT = Path(__file__).resolve().parents[1]


def _limit(params: Params) -> ConcurrencyLimitConfig:
    strategy = {"cancel_new": ConcurrencyLimitStrategy.CANCEL_NEW, "enqueue": ConcurrencyLimitStrategy.ENQUEUE}
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategy[params.schedule.collision_strategy])


def _cron(params: Params) -> dict:
    from prefect.schedules import Cron

    return {"schedule": Cron(params.schedule.cron, timezone=params.schedule.timezone)}


def runner_deployments(params: Params, params_path: Path) -> list:
    """Deployments for ``prefect.serve`` in this process (no work pool needed)."""
    arguments = {"params_path": str(params_path.resolve())}
    out = [retrain.to_deployment(name=params.schedule.deployment_name, parameters=arguments,
                                 concurrency_limit=_limit(params), tags=["medimg"], **_cron(params))]
    if params.data.inbox:
        out.append(watch_inbox.to_deployment(name=f"{params.schedule.deployment_name}-inbox", parameters=arguments,
                                             interval=params.schedule.inbox_poll_seconds,
                                             concurrency_limit=ConcurrencyLimitConfig(
                                                 limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
                                             tags=["medimg"]))
    return out


def deploy_to_pool(params: Params, params_path: Path, work_pool: str) -> list[str]:
    """Register the deployments with a work pool; a worker on that pool runs them from this checkout."""
    arguments = {"params_path": str(params_path.resolve())}
    ids = [str(retrain.from_source(source=str(ROOT), entrypoint="flows/retrain.py:retrain").deploy(
        name=params.schedule.deployment_name, work_pool_name=work_pool, parameters=arguments,
        concurrency_limit=_limit(params), tags=["medimg"], print_next_steps=False, **_cron(params)))]
    if params.data.inbox:
        ids.append(str(watch_inbox.from_source(source=str(ROOT), entrypoint="flows/watch_inbox.py:watch_inbox").deploy(
            name=f"{params.schedule.deployment_name}-inbox", work_pool_name=work_pool, parameters=arguments,
            interval=params.schedule.inbox_poll_seconds, print_next_steps=False,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            tags=["medimg"])))
    return ids
