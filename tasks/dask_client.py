"""The client of the Dask cluster that decodes a large folder at ingest (``data.dask.address``).

Inside a Prefect task that a :class:`prefect_dask.DaskTaskRunner` runs on a worker of that same cluster, the
client comes from :func:`prefect_dask.get_dask_client` (the task runner's cluster), and the task's thread leaves
the worker's thread pool while it waits (:func:`distributed.secede`), so a cluster of one single-thread worker
decodes the chunks instead of deadlocking;
anywhere else it is a plain :class:`distributed.Client` of the address
(:func:`medimg.data.decode_dask.open_client`). ``medimg`` itself knows nothing of Prefect: the ingest task hands
this in (:func:`tasks.retrain.ingest_data`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prefect.context import TaskRunContext

from medimg.data.decode_dask import open_client

if TYPE_CHECKING:  # distributed loads only when a cluster is used
    from distributed import Client


@contextmanager
def dask_client(address: str) -> Iterator[Client]:
    """A client of the Dask scheduler at ``address``, closed on exit (prefect-dask's when it is the runner's).

    Raises :class:`medimg.data.decode_dask.ClusterDecodeError` when no scheduler answers at ``address``.
    """
    if on_the_runner_cluster(address):
        from distributed import rejoin, secede  # here: see TYPE_CHECKING above
        from prefect_dask import get_dask_client

        with get_dask_client() as client:
            secede()  # this task waits on the cluster's tasks: its thread must not hold a worker slot meanwhile
            try:
                yield client
            finally:
                rejoin()
        return
    with open_client(address) as client:
        yield client


def on_the_runner_cluster(address: str) -> bool:
    """Whether this code is a Prefect task run on a Dask worker whose scheduler is at ``address``."""
    if TaskRunContext.get() is None:
        return False
    from distributed import get_worker  # here: see TYPE_CHECKING above

    try:
        worker = get_worker()
    except ValueError:  # a task run in the flow's process (a direct call, another task runner)
        return False
    return worker.scheduler.address == address
