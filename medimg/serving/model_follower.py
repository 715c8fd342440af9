"""The model ``medimg serve`` answers with: the registry version an alias names, verified, followed as it moves.

:class:`ModelFollower` is the service's :class:`~medimg.serving.loaded_model.ModelHolder`. Each check
(:meth:`ModelFollower.refresh`; the background thread calls it every ``serve.poll_seconds``):

1. reads the version the alias (``serve.alias``, default ``champion``) names, with its
   ``medimg.onnx_sha256`` tag (:func:`medimg.registry.version_by_alias`);
2. when that version or its tag differs from the model in service, gets its ONNX file into
   ``<workspace>/serve/models/<version>/model.onnx``: a file already there is reused only when its
   sha256 equals the tag; otherwise it is downloaded into a ``.partial-*`` folder and checked
   (:func:`medimg.pull.fetch_verified_onnx`, the check ``medimg pull`` makes) before it is moved
   into place;
3. loads it (:class:`medimg.scoring.OnnxModel`) and swaps the reference under a lock.

A request takes the reference once (:meth:`ModelFollower.current`) and keeps it to the end, so a
swap happens between requests: a request never mixes two versions and none fails because of a
swap. A version that cannot be put in service (no sha256 tag or a sha256 mismatch, a failed
download, a file ONNX Runtime or medimg cannot load, a registry that does not answer) leaves the
model in service as it was; the failure is logged (a warning when it is new, the same failure
again at debug level), counted (``medimg_serve_model_load_failures_total``) and tried again at the
next check. Until a verified model is loaded the follower is not ready (:attr:`ModelFollower.ready`)
and :meth:`ModelFollower.current` is ``None``. An alias removed from the registry keeps the last
model in service.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medimg import registry
from medimg.artifacts import ONNX_FILE, TAG_ONNX_SHA256
from medimg.provenance import file_sha256
from medimg.pull import IntegrityError, fetch_verified_onnx
from medimg.scoring import OnnxModel
from medimg.serving.loaded_model import LoadedModel
from medimg.serving.metrics import LoadFailure, ServeMetrics

log = logging.getLogger(__name__)

#: What one check did: ``loaded`` the first model, ``swapped`` in a new one, found it ``unchanged``,
#: found ``no_alias`` (nothing to load), or ``failed`` (the model in service, if any, stays).
Outcome = Literal["loaded", "swapped", "unchanged", "no_alias", "failed"]


@dataclass(frozen=True)
class Refresh:
    """The result of one check: ``outcome``, the ``version`` the alias named (``None`` when unknown),
    ``failure`` (the reason code of a failed check) and ``detail`` (its message)."""

    outcome: Outcome
    version: str | None = None
    failure: LoadFailure | None = None
    detail: str | None = None


class ModelFollower:
    """Follows ``alias`` of registered model ``model_name``; models are kept under ``models_dir``.

    The caller points MLflow at the registry first (:func:`medimg.workspace.activate`). ``metrics``
    (optional) receives loads, swaps and failures. :meth:`start` runs the checks on a daemon thread
    every ``poll_seconds``; :meth:`refresh` makes one now (tests call it instead of waiting).
    """

    def __init__(
        self,
        model_name: str,
        alias: str,
        models_dir: Path,
        poll_seconds: float = 5.0,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.model_name = model_name
        self.alias = alias
        self.models_dir = Path(models_dir)
        self.poll_seconds = poll_seconds
        self.metrics = metrics
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()  # guards the reference
        self._refresh_lock = threading.Lock()  # one check at a time (thread and callers)
        self._last_failure: tuple[str | None, str | None, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ ModelHolder

    def current(self) -> LoadedModel | None:
        """The model to answer the next request with, or ``None`` before a verified one is loaded."""
        with self._swap_lock:
            return self._current

    @property
    def ready(self) -> bool:
        """True once a verified model is in service."""
        return self.current() is not None

    # ------------------------------------------------------------------ checking

    def refresh(self) -> Refresh:
        """Check the alias once and put a new version in service if it moved (see the module docstring).

        Never raises for a registry, download, integrity or load problem: the outcome says ``failed``.
        """
        with self._refresh_lock:
            try:
                info = registry.version_by_alias(self.model_name, self.alias)
            except Exception as err:  # a registry that does not answer must not stop the service
                return self._failed(None, None, "registry", f"reading {self.model_name}@{self.alias}: {err}")
            if info is None:
                if self._last_failure != (None, None, "no_alias"):
                    log.warning(
                        "model %s has no alias %r: %s",
                        self.model_name,
                        self.alias,
                        "keeping the model in service" if self.ready else "nothing to serve yet",
                    )
                    self._last_failure = (None, None, "no_alias")
                return Refresh("no_alias")
            expected = info.tags.get(TAG_ONNX_SHA256) or None
            current = self.current()
            if current is not None and current.version == info.version and current.onnx_sha256 == expected:
                return Refresh("unchanged", info.version)
            try:
                path = self._verified_file(info.version, expected)
            except IntegrityError as err:
                return self._failed(info.version, expected, "integrity", str(err))
            except Exception as err:  # the download (MLflow, the artifact store, the disk)
                return self._failed(info.version, expected, "download", f"{type(err).__name__}: {err}")
            try:
                model = OnnxModel(path)
            except Exception as err:  # ONNX Runtime or medimg's metadata
                return self._failed(info.version, expected, "load", f"{type(err).__name__}: {err}")
            assert expected is not None  # _verified_file raised IntegrityError without a tag
            loaded = LoadedModel(self.model_name, info.version, expected, model, self.alias)
            with self._swap_lock:
                previous, self._current = self._current, loaded
            self._last_failure = None
            if self.metrics is not None:
                self.metrics.model_loaded(loaded, swapped=previous is not None)
            log.info(
                "serving %s v%s (%s, sha256 %s)%s",
                self.model_name,
                info.version,
                self.alias,
                expected,
                f", replacing v{previous.version}" if previous is not None else "",
            )
            return Refresh("swapped" if previous is not None else "loaded", info.version)

    def _failed(self, version: str | None, sha256: str | None, reason: LoadFailure, detail: str) -> Refresh:
        if self.metrics is not None:
            self.metrics.load_failed(reason)
        key = (version, sha256, reason)
        keeping = f"keeping v{self._current.version}" if self._current is not None else "no model in service"
        (log.warning if key != self._last_failure else log.debug)(
            "model %s@%s%s not put in service (%s): %s; %s",
            self.model_name,
            self.alias,
            f" (v{version})" if version else "",
            reason,
            detail,
            keeping,
        )
        self._last_failure = key
        return Refresh("failed", version, reason, detail)

    def _verified_file(self, version: str, expected: str | None) -> Path:
        """``models_dir/<version>/model.onnx`` with sha256 ``expected``: reused if it is there, else downloaded and
        checked. :class:`IntegrityError` without a tag or for a mismatch (nothing is left behind)."""
        if not expected:
            raise IntegrityError(f"model {self.model_name} v{version} has no {TAG_ONNX_SHA256} tag: cannot verify it")
        target = self.models_dir / version / ONNX_FILE
        if target.is_file() and file_sha256(target) == expected:
            return target
        self.models_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=self.models_dir, prefix=f".partial-{version}-"))
        try:
            downloaded = fetch_verified_onnx(self.model_name, version, expected, partial)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(downloaded, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Check now and then every ``poll_seconds`` on a daemon thread, until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="medimg-model-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # refresh reports its own failures; this is a bug, and the thread must live on
                log.exception("model follower: unexpected error")
            self._stop.wait(self.poll_seconds)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread (after the check in progress, if any) and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
