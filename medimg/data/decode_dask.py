"""Ingest decoding on a Dask cluster: :mod:`medimg.data.decode_pool`'s per-file work, in chunks, one Dask task each.

For a large folder (``data.dask``: a scheduler's ``address`` and at least ``min_files`` files) the job list is
cut into chunks of ``chunk_files`` jobs; each chunk is one Dask task, :func:`decode_chunk`, which decodes its
files one after another on a worker with :func:`medimg.data.decode_pool.process_with`, exactly as one local
decoding process does (``data.workers: 1`` semantics: one file at a time, warnings caught and dropped, the same
cache lookups and entries), so the results, the cached PNGs and the dataset built from them are the same as the
local pool's.

Promises:

* **Streaming, in input order.** :func:`decode` yields ``(job, meta, from_cache)`` per file, chunk after chunk in
  input order, as soon as the chunk and every chunk before it are done; at most twice as many chunks as the
  cluster has worker threads are in flight at once, so neither the cluster nor this process holds the results
  of the whole folder. The images themselves never travel: a worker writes them to the cache folder.
* **One chunk at a time per worker process.** Decoding captures warnings, which is process-wide state, so a
  worker process with several threads still decodes one chunk at a time (the others wait): scale a cluster with
  processes (``dask worker --nworkers N --nthreads 1``), not threads. A worker loads the cache's index once per
  :func:`decode` call (a *session*) and reuses it for the session's later chunks; the session's state is dropped
  at its end.
* **Shared folder.** Workers read the source files and write the decode cache at the paths this process gives
  them: they must see both at the same paths (the same host, or a shared file system mounted alike), and they
  must import ``medimg`` (the same checkout or version on their ``PYTHONPATH``) to unpickle the tasks.
* **Errors name the chunk.** A chunk that raises (on the worker: caught there, only the exception's type comes
  back), a worker that dies while decoding it (a decoder crashing on a hostile file, a worker out of memory:
  ``KilledWorker`` once the scheduler gives up) or a cluster without workers raise :class:`ClusterDecodeError`
  naming the chunk (its number and the range of job positions) and the scheduler, never a file name or a DICOM
  value. The remaining chunks are cancelled.
* **Privacy.** What travels back is :func:`~medimg.data.decode_pool.process`'s metadata (sizes, codes,
  pseudonyms, the library message kept for the workspace's quarantine report) without the job: the caller pairs
  results with its own jobs. The Dask task keys hold a random session id and the chunk number only.

The client: :class:`DaskCluster` names the scheduler and how to connect (``connect``: :func:`open_client` by
default, a plain :class:`distributed.Client`; the Prefect tasks hand in one that prefers prefect-dask's client
inside a Dask task runner, :mod:`tasks.dask_client`).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medimg.data.decode_pool import DecodeCache, DecodeJob, DecodeOptions, process_with

if TYPE_CHECKING:  # distributed is imported where it is used: the ingest of a small folder never loads it
    from distributed import Client, Future

log = logging.getLogger(__name__)

#: Prefix of the Dask task keys: ``medimg-decode-<session>-<chunk>``.
KEY_PREFIX = "medimg-decode"

#: How a client of the scheduler at an address is opened (a context manager that closes it).
ClientFactory = Callable[[str], AbstractContextManager["Client"]]


class ClusterDecodeError(RuntimeError):
    """A chunk of files that could not be decoded on the Dask cluster (its number, not its files, in the message)."""


@contextmanager
def open_client(address: str) -> Iterator[Client]:
    """A :class:`distributed.Client` of the scheduler at ``address`` (``tcp://host:port``), closed on exit.

    It is not made the default client (a Prefect Dask task runner in the same process keeps its own). Raises
    :class:`ClusterDecodeError` when the scheduler cannot be reached within the connect timeout
    (``distributed.comm.timeouts.connect``).
    """
    from distributed import Client  # here: see TYPE_CHECKING above

    try:
        client = Client(address, set_as_default=False)
    except OSError as err:  # TimeoutError included: nothing of the files in the message
        raise ClusterDecodeError(f"no Dask scheduler at {address} ({type(err).__name__}): data.dask.address") from None
    with client:
        yield client


@dataclass(frozen=True)
class DaskCluster:
    """Where decoding goes: the Dask scheduler at ``address``, ``chunk_files`` jobs per task, ``connect`` to
    open a client (:func:`open_client` unless given)."""

    address: str
    chunk_files: int = 200
    connect: ClientFactory = open_client

    def decode(self, todo: list[DecodeJob], options: DecodeOptions) -> Iterator[tuple[DecodeJob, dict, bool]]:
        """:func:`decode` on this cluster (what :func:`medimg.data.decode_pool.decode` calls)."""
        return decode(todo, options, self)


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk's Dask task returns: per job of the chunk, in order, ``(meta, from_cache)``; the worker
    (its Dask name and process id) that decoded it; ``error``, the type name of an exception that stopped it."""

    index: int
    worker: str
    pid: int
    results: tuple[tuple[dict, bool], ...]
    error: str | None = None


def decode(
    todo: list[DecodeJob], options: DecodeOptions, cluster: DaskCluster
) -> Iterator[tuple[DecodeJob, dict, bool]]:
    """Yield ``(job, meta, from_cache)`` for every job of ``todo``, in input order, decoded on ``cluster``.

    ``options.cache_dir`` must exist and be reachable by the workers at that path. Raises
    :class:`ClusterDecodeError` (see the module docstring).
    """
    for jobs, chunk in decode_chunks(todo, options, cluster):
        yield from ((job, meta, cached) for job, (meta, cached) in zip(jobs, chunk.results, strict=True))


def decode_chunks(
    todo: list[DecodeJob], options: DecodeOptions, cluster: DaskCluster
) -> Iterator[tuple[tuple[DecodeJob, ...], ChunkResult]]:
    """Each chunk's jobs and its :class:`ChunkResult`, in input order, as they are done (streaming).

    Chunks are ``cluster.chunk_files`` consecutive jobs of ``todo``; the last may be shorter.
    """
    if not todo:
        return
    chunks = [tuple(todo[i : i + cluster.chunk_files]) for i in range(0, len(todo), cluster.chunk_files)]
    with cluster.connect(cluster.address) as client:
        yield from _stream(client, chunks, options, cluster.address, len(todo))


def _stream(
    client: Client, chunks: list[tuple[DecodeJob, ...]], options: DecodeOptions, address: str, n_jobs: int
) -> Iterator[tuple[tuple[DecodeJob, ...], ChunkResult]]:
    threads = sum(client.nthreads().values())
    if threads == 0:
        raise ClusterDecodeError(f"the Dask cluster at {address} has no worker: start one (dask worker {address})")
    session = uuid.uuid4().hex[:12]
    ahead = max(2, 2 * threads)
    pending: deque[Future] = deque()
    workers: set[str] = set()

    def where(index: int) -> str:
        start = index * len(chunks[0])
        return (
            f"chunk {index + 1} of {len(chunks)} (jobs {start + 1}-{start + len(chunks[index])} of {n_jobs}) "
            f"on the Dask cluster at {address}"
        )

    def submit() -> None:
        index = len(pending) + done
        pending.append(
            client.submit(
                decode_chunk, session, index, chunks[index], options, key=f"{KEY_PREFIX}-{session}-{index}", retries=0
            )
        )

    done = 0
    try:
        while len(pending) < ahead and done + len(pending) < len(chunks):
            submit()
        while pending:
            future = pending.popleft()
            try:
                result: ChunkResult = future.result()
            except Exception as err:  # KilledWorker, a lost connection, ...: its text may quote the task's arguments
                raise ClusterDecodeError(f"{where(done)} failed: {_cause(err)}") from None
            finally:
                future.release()
            if result.error is not None:
                raise ClusterDecodeError(f"{where(done)} failed on worker {result.worker}: {result.error} raised")
            done += 1
            if done + len(pending) < len(chunks):
                submit()
            workers.add(result.worker)
            yield chunks[result.index], result
        log.info(
            "%d files decoded on the Dask cluster at %s in %d chunk(s) by %d worker(s)",
            n_jobs,
            address,
            done,
            len(workers),
        )
    finally:  # a consumer that stops early, or an error: the rest is not decoded
        for future in pending:
            future.cancel()
        try:
            client.run(end_session, session)
        except Exception:  # a worker gone: its state went with it
            log.debug("could not end decode session on every Dask worker", exc_info=True)


def _cause(err: Exception) -> str:
    from distributed.scheduler import KilledWorker  # here: see TYPE_CHECKING above

    if isinstance(err, KilledWorker):
        return "a Dask worker died while decoding it (KilledWorker: a decoder crashing on a file, or out of memory)"
    return type(err).__name__


# --------------------------------------------------------------------------- worker side

_LOCK = threading.Lock()
#: (session, its cache) of the last session on this worker process.
_SESSION: tuple[str, DecodeCache] | None = None


def decode_chunk(session: str, index: int, jobs: tuple[DecodeJob, ...], options: DecodeOptions) -> ChunkResult:
    """The Dask task of one chunk: decode ``jobs`` one after another in this worker process.

    Never raises: an exception stops the chunk and comes back as its type name in ``error`` (its text, and the
    traceback Dask would log, could quote a file name).
    """
    global _SESSION
    worker, pid = _worker_name(), os.getpid()
    with _LOCK:  # one chunk at a time per process: warnings.catch_warnings is process-wide
        try:
            current = _SESSION
            if current is not None and current[0] == session:
                cache = current[1]
            else:
                cache = DecodeCache(options.cache_dir)
                if options.use_cache:
                    cache.load()
                _SESSION = (session, cache)
            results = []
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for job in jobs:
                        _, meta, cached = process_with(job, options, cache)
                        results.append((meta, cached))
            finally:
                cache.close()  # an index file per chunk: no file left open between tasks
        except Exception as err:  # see the docstring
            return ChunkResult(index, worker, pid, (), error=type(err).__name__)
    return ChunkResult(index, worker, pid, tuple(results))


def end_session(session: str) -> None:
    """Drop ``session``'s cache index on this worker (run on every worker when a :func:`decode` call ends)."""
    global _SESSION
    if _SESSION is not None and _SESSION[0] == session:
        _SESSION = None


def _worker_name() -> str:
    from distributed import get_worker  # here: see TYPE_CHECKING above (a worker has it loaded)

    try:
        return str(get_worker().name)
    except ValueError:  # called outside a Dask worker (a test)
        return "none"
