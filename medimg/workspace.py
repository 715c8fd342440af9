"""The workspace: one folder that holds every piece of state a run produces.

Prefect's home, the MLflow SQLite store and artifacts, the DVC project with its local remote,
the ingested data and the reports all live under it, so deleting the folder resets the platform
and nothing is written elsewhere. ``activate`` must run before Prefect or MLflow are imported by
the process that starts a flow, because both read their settings from the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
}


#: Seconds Prefect's ephemeral API server may take to start (Prefect's default: 20).
EPHEMERAL_STARTUP_SECONDS = 120


@dataclass(frozen=True)
class Workspace:
    """The folder holding one deployment's state: dataset, runs, MLflow store, DVC remote, Prefect home, reports,
    audit log.
    """

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> Workspace:
        """The workspace at ``path`` (``~`` expanded, made absolute); nothing is created."""
        return cls(Path(path).expanduser().resolve())

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME of this workspace."""
        return self.root / "prefect"

    @property
    def mlflow_db(self) -> Path:
        """The SQLite file of the default MLflow tracking store."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """The MLflow artifact root."""
        return self.root / "mlartifacts"

    @property
    def dvc_remote(self) -> Path:
        """The local DVC remote the data versions are pushed to."""
        return self.root / "dvc-remote"

    @property
    def data(self) -> Path:
        """The DVC-tracked dataset folder (images and manifest)."""
        return self.root / "data" / "dataset"

    @property
    def data_versions(self) -> Path:
        """One ``.dvc`` file per data version, so any version can be restored later."""
        return self.root / "data" / "versions"

    @property
    def reports(self) -> Path:
        """Where HTML and JSON reports are written."""
        return self.root / "reports"

    @property
    def runs(self) -> Path:
        """Per-run scratch folders (checkpoints, plots, ONNX files) before they go to MLflow."""
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        """``runs/<MLflow run id>``, created if missing: one run's checkpoints, reports, figures and ONNX file."""
        path = self.runs / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def pipeline(self) -> Path:
        """The files ``dvc.yaml`` tracks (``data-version.json``, ``validation-latest.*``).

        Outside ``reports/``, which the workspace's own DVC project ignores.
        """
        return self.root / "pipeline"

    @property
    def decode_cache(self) -> Path:
        """Decoded source files, one folder per way of decoding (:func:`medimg.data.decode_pool.cache_folder`)."""
        return self.root / "cache" / "decoded"

    @property
    def champion_cache(self) -> Path:
        """Registered models downloaded for scoring (gate and drift share one download per version)."""
        return self.runs / "champion-cache"

    @property
    def audit_log(self) -> Path:
        """The JSON-lines promotion audit log."""
        return self.root / "audit.jsonl"

    @property
    def serve(self) -> Path:
        """``medimg serve``'s state: verified model downloads, the PACS cursor, the prediction log."""
        return self.root / "serve"

    @property
    def prediction_log(self) -> Path:
        """The service's JSON-lines prediction log (:mod:`medimg.serving.prediction_log`)."""
        return self.serve / "predictions.jsonl"

    @property
    def sessions_db(self) -> Path:
        """The review pages' server-side sessions (SQLite; :mod:`medimg.review.sessions`)."""
        return self.serve / "sessions.sqlite"

    @property
    def cases(self) -> Path:
        """The review cases: one folder per scored DICOM-node prediction (:mod:`medimg.review.cases`)."""
        return self.serve / "cases"

    @property
    def reviews_log(self) -> Path:
        """The append-only JSON-lines log of the radiologists' reviews (:mod:`medimg.review.reviews`)."""
        return self.serve / "reviews.jsonl"

    @property
    def monitoring(self) -> Path:
        """The latest live-monitoring report and its plots (:mod:`medimg.monitoring`)."""
        return self.serve / "monitoring"

    @property
    def users_file(self) -> Path:
        """The service's user store: names, roles and argon2 password hashes (:mod:`medimg.users`)."""
        return self.root / "users.json"

    @property
    def lock_file(self) -> Path:
        """The lock file that lets one retrain at a time run in this workspace."""
        return self.root / ".retrain.lock"

    @property
    def prefect_results(self) -> Path:
        """Where Prefect persists task results (for resuming a crashed run)."""
        return self.prefect_home / "results"

    def default_tracking_uri(self) -> str:
        """``sqlite:///`` URI of :attr:`mlflow_db`, used when params set no tracking URI."""
        return f"sqlite:///{self.mlflow_db}"

    def ensure(self) -> Workspace:
        """Create the workspace's folders (root, Prefect home, MLflow artifacts, reports, runs) and return self."""
        for folder in (self.root, self.prefect_home, self.mlflow_artifacts, self.reports, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def activate(workspace: Workspace, tracking_uri: str | None = None, prefect_api_url: str | None = None) -> None:
    """Point Prefect and MLflow at the workspace (unless the user set remote servers) and mute telemetry.

    Values already in the environment win, so ``MLFLOW_TRACKING_URI`` or ``PREFECT_API_URL``
    exported by the user select a remote server without touching params.yaml.
    """
    workspace.ensure()
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(workspace.prefect_home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri or workspace.default_tracking_uri())
    os.environ.setdefault("MEDIMG_WORKSPACE", str(workspace.root))
    if prefect_api_url:
        os.environ.setdefault("PREFECT_API_URL", prefect_api_url)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "medimg")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    # Prefect's ephemeral API (no PREFECT_API_URL) must answer within 20 s by default; its first start in a new
    # PREFECT_HOME creates the database, and a `medimg run` on 2 busy cores was refused with "Timed out while
    # attempting to connect to ephemeral Prefect API server" (session 8)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_SECONDS))


@contextlib.contextmanager
def exclusive(workspace: Workspace) -> Iterator[bool]:
    """Hold the workspace's retrain lock; yields False at once when another process holds it.

    An OS file lock, so a crashed holder never leaves it stuck. Deployments add Prefect's own
    concurrency limit on top; this guards direct ``medimg run`` calls on one machine.
    """
    workspace.root.mkdir(parents=True, exist_ok=True)
    with open(workspace.lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
