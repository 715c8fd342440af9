"""A review site for the tests: ``medimg serve``'s app with the review pages mounted, real users and sessions.

No model is served (the pages do not need one) and no registry is reachable unless the test points MLflow at
one; the cases are made from real PneumoniaMNIST test images with an outcome written down here (the review
pages read a case's outcome, they do not recompute it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from starlette.testclient import TestClient

from datapaths import PNEUMONIAMNIST
from medimg.config import Params, load_params
from medimg.data.deid import DEMO_SECRET
from medimg.review.cases import Case, CaseStore
from medimg.review.login_limit import LoginLimiter
from medimg.review.sessions import SessionStore
from medimg.review.web import create_review_app
from medimg.serving.app import create_app
from medimg.serving.loaded_model import LoadedModel, ModelHolder
from medimg.serving.metrics import ServeMetrics
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog
from medimg.users import UserStore
from medimg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {"rad": "rad-password-1", "rad2": "rad2-password-2", "boss": "boss-password-3", "svc": "svc-password-4"}
ROLES = {"rad": "radiologist", "rad2": "radiologist", "boss": "admin", "svc": "service"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


class Clock:
    """A settable clock (seconds) for the session store and the login limiter."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class NoModel:
    """A model holder with no model loaded (what the service has before its first verified version)."""

    def current(self) -> LoadedModel | None:
        return None


@dataclass
class Site:
    app: FastAPI
    params: Params
    ws: Workspace
    inbox: Path
    users: UserStore
    sessions: SessionStore
    clock: Clock
    metrics: ServeMetrics
    cases: CaseStore

    def client(self, address: str = "testclient") -> TestClient:
        return TestClient(self.app, follow_redirects=False, client=(address, 50000))

    def login(self, client: TestClient, name: str, password: str | None = None) -> str:
        """Log ``name`` in on ``client``; the session's CSRF token."""
        form = client.get("/review/login")
        token = CSRF_FIELD.search(form.text).group(1)
        answer = client.post(
            "/review/login",
            data={"username": name, "password": password or PASSWORDS[name], "csrf": token, "next": "/review/worklist"},
        )
        assert answer.status_code == 303, answer.text
        page = client.get("/review/worklist")
        assert page.status_code == 200, page.text
        return CSRF_FIELD.search(page.text).group(1)


def make_users(path: Path) -> UserStore:
    store = UserStore(path)
    for name, password in PASSWORDS.items():
        store.add(name, ROLES[name], password)
    return store


def make_site(
    tmp: Path,
    users_file: Path,
    overrides: dict | None = None,
    ws_root: Path | None = None,
    holder: ModelHolder | None = None,
) -> Site:
    """A site in ``tmp`` (or on the workspace at ``ws_root``) with a copy of the user store at ``users_file``
    (hashed once per module); ``holder``: the model in service (none by default)."""
    ws = Workspace.at(ws_root or tmp / "ws")
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.users_file).write_bytes(users_file.read_bytes())
    holder = holder or NoModel()
    inbox = tmp / "inbox"
    params = load_params(
        ROOT / "params.yaml",
        {"workspace": {"path": str(ws.root)}, "data": {"inbox": str(inbox)}, **(overrides or {})},
    )
    users = UserStore(ws.users_file)
    clock = Clock()
    sessions = SessionStore(ws.sessions_db, params.review.session_minutes * 60, params.review.idle_minutes * 60, clock)
    limiter = LoginLimiter(params.review.login_max_failures, params.review.login_window_seconds, clock)
    metrics = ServeMetrics()
    review = create_review_app(
        params,
        ws,
        users,
        holder,
        secret=DEMO_SECRET,
        metrics_registry=metrics.registry,
        sessions=sessions,
        limiter=limiter,
    )
    app = create_app(holder, metrics, PredictionLog(ws.prediction_log), users, params, review_app=review)
    return Site(app, params, ws, inbox, users, sessions, clock, metrics, CaseStore(ws.cases))


def real_images(n: int, start: int = 0) -> np.ndarray:
    """``n`` real PneumoniaMNIST test images (uint8 ``[n, 28, 28]``)."""
    with np.load(PNEUMONIAMNIST) as archive:
        return archive["test_images"][start : start + n]


def add_case(store: CaseStore, image: np.ndarray, p_abnormal: float = 0.8, version: str = "1") -> Case:
    """A case for ``image`` as the DICOM node would make it for a binary pneumonia model with threshold 0.5."""
    entry = LoggedPrediction(
        source="dicom",
        model_name="pneumonia-classifier",
        model_version=version,
        onnx_sha256="ab" * 32,
        latency_ms=12.0,
        class_probabilities={"normal": 1 - p_abnormal, "pneumonia": p_abnormal},
        p_abnormal=p_abnormal,
        predicted_class="pneumonia" if p_abnormal >= 0.5 else "normal",
        abnormal=p_abnormal >= 0.5,
        threshold=0.5,
        study="study-00000000000000aa",
        series="series-00000000000000bb",
        instance="sop-00000000000000cc",
        modality="CR",
        input_mean=float(image.mean()),
        input_std=float(image.std()),
        result_sop_class="SR",
    )
    return store.add(entry, image, ("pneumonia",), "binary")
