"""``medimg serve``: build the service's parts from params and a workspace, and run them.

:func:`build_service` makes the parts (metrics, the model follower, the prediction log, the user
store, the DICOM node when a PACS is configured, the FastAPI app); :func:`run_service` starts the
background threads, serves HTTP with uvicorn on ``serve.host``:``serve.port`` until SIGINT/SIGTERM,
then stops the threads. The caller points MLflow at the registry first
(:func:`medimg.workspace.activate`).

One process serves: the follower and the DICOM node are threads beside uvicorn's event loop, and
ONNX Runtime runs the requests on the event loop's worker threads.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fastapi import FastAPI

from medimg.config import Params
from medimg.data import deid
from medimg.review.cases import CaseStore
from medimg.review.web import create_review_app
from medimg.serving.app import create_app
from medimg.serving.metrics import ServeMetrics
from medimg.serving.model_follower import ModelFollower
from medimg.serving.prediction_log import PredictionLog
from medimg.users import UserStore
from medimg.workspace import Workspace

if TYPE_CHECKING:
    from medimg.serving.dicom_node import ScoredCallback

log = logging.getLogger(__name__)

#: The environment variable that names Orthanc's HTTP base when params name no PACS (``scripts/services.sh env``).
PACS_URL_ENV = "MEDIMG_ORTHANC_URL"


class DicomNodeLike(Protocol):
    """What the service needs of the DICOM node (:mod:`medimg.serving.dicom_node`): a thread to start and stop,
    and whether the DICOM path is ready (the PACS answers)."""

    def start(self) -> None:
        """Start following the PACS."""
        ...

    def stop(self) -> None:
        """Stop, after the change in progress."""
        ...

    @property
    def dicom_ready(self) -> bool:
        """True while the PACS answers."""
        ...


@dataclass(frozen=True)
class Service:
    """The parts of one running service."""

    app: FastAPI
    follower: ModelFollower
    metrics: ServeMetrics
    prediction_log: PredictionLog
    users: UserStore
    dicom_node: DicomNodeLike | None
    host: str
    port: int


def pacs_url(params: Params) -> str | None:
    """Orthanc's HTTP base: ``serve.pacs_url``, else ``$MEDIMG_ORTHANC_URL``, else ``None`` (no DICOM node)."""
    return params.serve.pacs_url or os.environ.get(PACS_URL_ENV) or None


def deid_secret(params: Params) -> bytes | None:
    """The pseudonymisation key (``MEDIMG_DEID_SECRET``; the demo key when ``data.deid.demo``), or ``None`` with a
    warning: uploaded DICOM files are then logged without study, series and instance pseudonyms."""
    try:
        secret = deid.secret_from_env(demo=params.data.deid.demo)
    except deid.MissingSecretError as err:
        log.warning("no pseudonymisation key (%s): DICOM inputs are logged without pseudonyms", err)
        return None
    if secret == deid.DEMO_SECRET:
        log.warning("pseudonyms use the public demo key (data.deid.demo): they protect nothing")
    return secret


def dicom_node(
    params: Params,
    ws: Workspace,
    follower: ModelFollower,
    metrics: ServeMetrics,
    prediction_log: PredictionLog,
    secret: bytes | None,
    on_scored: ScoredCallback | None = None,
) -> DicomNodeLike | None:
    """The DICOM node following Orthanc's change feed, when a PACS is configured (:func:`pacs_url`); else ``None``.

    :class:`medimg.serving.dicom_node.DicomNode` with ``follower`` as its model holder, ``metrics.observe_dicom``
    as its observer, ``prediction_log``, ``secret``, the cursor under ``ws.serve``, the ``serve.pacs_*``
    settings and Orthanc's credentials from ``MEDIMG_ORTHANC_USERNAME`` / ``MEDIMG_ORTHANC_PASSWORD``;
    ``on_scored``: each scored image (review cases). Without a pseudonymisation key the node is not built
    (it logs pseudonyms only) and a warning says so.
    """
    url = pacs_url(params)
    if url is None:
        return None
    if secret is None:
        log.warning("a PACS is configured but there is no pseudonymisation key: the DICOM node does not run")
        return None
    # here: the PACS client and the node only when a PACS is configured
    from medimg.serving.dicom_node import node_from_settings

    return node_from_settings(
        params.serve,
        url,
        follower,
        prediction_log,
        ws.serve,
        secret,
        on_outcome=lambda entry: metrics.observe_dicom(entry.refusal_reason, entry.latency_ms / 1000.0),
        on_scored=on_scored,
    )


def build_service(params: Params, ws: Workspace, port: int | None = None) -> Service:
    """Every part of the service for ``params`` and ``ws`` (nothing started); ``port`` overrides ``serve.port``."""
    metrics = ServeMetrics()
    follower = ModelFollower(
        params.registry.model_name, params.serve.alias, ws.serve / "models", params.serve.poll_seconds, metrics
    )
    prediction_log = PredictionLog(ws.prediction_log)
    users = UserStore(ws.users_file)
    secret = deid_secret(params)
    cases = CaseStore(ws.cases)
    node = dicom_node(params, ws, follower, metrics, prediction_log, secret, on_scored=cases.recorder)
    review = create_review_app(params, ws, users, follower, secret=secret, metrics_registry=metrics.registry)
    app = create_app(
        follower,
        metrics,
        prediction_log,
        users,
        params,
        secret=secret,
        dicom_ready=(lambda: node.dicom_ready) if node is not None else None,
        review_app=review,
    )
    return Service(app, follower, metrics, prediction_log, users, node, params.serve.host, port or params.serve.port)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's graceful shutdown (uvicorn raises the signal it caught again): exit 0 through the
    ``finally`` blocks, so the threads are stopped, instead of dying by the signal."""
    raise SystemExit(0)


def run_service(service: Service) -> None:
    """Start the follower (and the DICOM node), serve HTTP until SIGINT or SIGTERM, then stop them.

    SIGTERM: uvicorn finishes the requests in flight, the threads are stopped, the process exits 0. SIGINT
    (Ctrl-C) does the same and ends in ``KeyboardInterrupt`` (the CLI exits 130).
    """
    # here: uvicorn only for a process that serves
    import uvicorn

    previous = (
        signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    )

    if not service.users.users():
        log.warning(
            "no users in %s: every request but the health checks will be refused; add one with "
            "`medimg users add NAME --role service`",
            service.users.path,
        )
    service.follower.start()
    if service.dicom_node is not None:
        service.dicom_node.start()
    try:
        config = uvicorn.Config(service.app, host=service.host, port=service.port, log_level="info", access_log=True)
        uvicorn.Server(config).run()
    finally:
        if service.dicom_node is not None:
            service.dicom_node.stop()
        service.follower.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
