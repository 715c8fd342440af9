"""The DICOM node of ``medimg serve``: follows Orthanc's change feed, scores new images, stores results back.

**Why the change feed** (and not C-STORE routing to a listener of our own): the service opens no DICOM port
(Orthanc 1.10 already binds its DICOM port on all interfaces; a second listener would widen that); the feed
is resumable (the last sequence number handled is kept in the workspace, ``<workspace>/serve/orthanc_cursor.json``,
written atomically after each change, so an outage or a restart loses nothing and handles nothing twice); and
Orthanc needs no routing configuration or Lua script.

What the node does, in a thread (:meth:`DicomNode.start`, :meth:`DicomNode.stop`):

* reads ``GET /changes?since=<cursor>`` every ``poll_seconds`` (at once again while more are waiting). On the
  first start (no cursor, or a cursor of another Orthanc) it starts from Orthanc's latest change: the archive
  is not read again. A cursor beyond Orthanc's latest change (Orthanc's database was reset) is moved back to it;
* acts on ``NewInstance`` for a 2D model and on ``StableSeries`` for a 3D model (classification volumes and
  segmentation); every other change only moves the cursor. The model is the holder's current one
  (:class:`~medimg.serving.loaded_model.ModelHolder`), taken once per change, so a promotion applies from the
  next change on, without a restart; while the holder has none, changes wait (the cursor stays);
* fetches the original bytes (``GET /instances/{id}/file``), refuses by the header first
  (:func:`medimg.pacs.selection.refusal`: ``own_result``, ``non_image_object``, ``modality_mismatch``,
  ``body_part_mismatch``), then by ``medimg predict``'s own path: 2D images through
  :func:`medimg.predict.prepare_input` and :func:`medimg.predict.score_prepared` (every decoding and input-check
  reason: ``truncated``, ``non_finite``, ``blank``...); a series is written to a temporary folder and goes
  through :func:`medimg.predict_volumes.predict_volumes` or
  :func:`medimg.predict_segmentation.predict_segmentation`;
* stores the result into the source's study with STOW-RS: a Comprehensive 3D SR
  (:func:`medimg.pacs.structured_report.structured_report`) for a classification model, the DICOM SEG
  (:mod:`medimg.segmentation.dicom_seg`) for a segmentation model;
* appends one :class:`~medimg.serving.prediction_log.LoggedPrediction` per image (2D) or series (3D) acted on,
  answered or refused, to the prediction log, logs it (reason and pseudonyms only) and hands it to
  ``on_outcome`` (e.g. Prometheus counters), whose failures are logged and ignored. The node's own results
  come back through the feed too and are refused ``own_result`` (never a loop).

Faults: Orthanc down, slow (``timeout``), or refusing the credentials: :class:`~medimg.pacs.orthanc.PacsUnavailable`
after the client's retries; the node keeps the cursor, reports :attr:`DicomNode.dicom_ready` False, waits 1 s,
doubling up to ``max_backoff`` seconds, and takes the same change again when Orthanc answers. An instance gone
before it was read is logged ``not_found``; a result Orthanc refuses ``store_refused``; a result that cannot be
made ``result_not_made`` (e.g. ``dicom_seg_skipped`` reasons for a SEG); anything unexpected ``internal_error``:
the cursor moves on, one bad instance never blocks the feed.

Privacy: logs, the prediction log and ``on_outcome`` get keyed pseudonyms (:func:`medimg.data.deid.pseudonym`
with the node's ``secret``) of the study, series and SOP instance, reason codes and the Modality code, never a
UID, a name, a date or an Orthanc identifier (a hash of the identifiers). The results stored in Orthanc carry
the study's real identifiers: they go back to the archive the images came from.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medimg.artifacts import META_BODY_PART
from medimg.config import ServeConfig
from medimg.data import deid
from medimg.data.dicom import read_header_bytes
from medimg.data.images import BadImage
from medimg.pacs.orthanc import (
    NEW_INSTANCE,
    STABLE_SERIES,
    Change,
    OrthancClient,
    PacsError,
    PacsNotFound,
    PacsUnavailable,
)
from medimg.pacs.selection import code_string, refusal
from medimg.predict import Prediction, prepare_input, score_prepared
from medimg.serving.loaded_model import LoadedModel, ModelHolder
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog

logger = logging.getLogger(__name__)

#: The cursor's file name in ``<workspace>/serve/``.
CURSOR_NAME = "orthanc_cursor.json"
#: Reasons the node gives besides those of selection, decoding, the input checks and 3D predict.
NODE_REASONS: dict[str, str] = {
    "not_found": "the instance or series was deleted from Orthanc before it was read",
    "store_refused": "Orthanc refused the result (STOW-RS)",
    "result_not_made": "the result object could not be made from the source's header",
    "internal_error": "an unexpected error while handling the change (a bug: see the service log)",
}
FIRST_BACKOFF_S = 1.0

#: Called with every outcome the node appended to the prediction log.
OutcomeCallback = Callable[[LoggedPrediction], None]
#: Called with each scored 2D image's entry, the stored-size grey uint8 image it scored and the model (review
#: cases: :meth:`medimg.review.cases.CaseStore.recorder`).
ScoredCallback = Callable[[LoggedPrediction, np.ndarray, LoadedModel], None]


@dataclass(frozen=True)
class _Identity:
    """The pseudonyms and Modality code of an input (never a raw value)."""

    study: str | None = None
    series: str | None = None
    instance: str | None = None
    modality: str | None = None


class DicomNode:
    """Follows ``client``'s change feed with the models of ``holder`` (module docstring).

    ``log``: the prediction log; ``cursor_path``: the cursor's file (``<workspace>/serve/orthanc_cursor.json``);
    ``secret``: the pseudonymisation key (:func:`medimg.data.deid.secret_from_env`); ``poll_seconds``: wait
    between reads of an idle feed; ``max_backoff``: longest wait (seconds) between tries while Orthanc does not
    answer; ``on_outcome``: called with each appended entry; ``scratch``: parent of the temporary folders of
    3D series (None: the system's); ``on_scored``: called with each scored 2D image (entry, the stored-size grey
    image, the model), e.g. to make a review case; its failures are logged and ignored.
    """

    def __init__(
        self,
        client: OrthancClient,
        holder: ModelHolder,
        log: PredictionLog,
        cursor_path: Path,
        secret: bytes,
        poll_seconds: float = 0.5,
        max_backoff: float = 30.0,
        on_outcome: OutcomeCallback | None = None,
        scratch: Path | None = None,
        on_scored: ScoredCallback | None = None,
    ) -> None:
        deid.pseudonym("check", secret, "check")  # a missing or short secret fails here, not on the first image
        self.client = client
        self.holder = holder
        self.log = log
        self.cursor_path = Path(cursor_path)
        self.secret = secret
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.on_outcome = on_outcome
        self.scratch = scratch
        self.on_scored = on_scored
        self._cursor: int | None = None
        self._ready = False
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dicom_ready(self) -> bool:
        """True while the node runs and Orthanc answered its last request."""
        return self._ready and self._thread is not None and self._thread.is_alive()

    @property
    def last_error(self) -> str | None:
        """Why Orthanc could not be used the last time it failed (no identifier in it); None until it fails."""
        return self._last_error

    @property
    def cursor(self) -> int | None:
        """The sequence number of the last change handled (None before the first read)."""
        return self._cursor

    def start(self) -> None:
        """Start following the feed in a daemon thread (no-op when it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="medimg-dicom-node", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the change in hand (its cursor is kept) and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._ready = False

    # -- the loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stop.is_set():
            try:
                more = self.poll()
            except PacsUnavailable as err:
                self._last_error = str(err)
                if self._ready or backoff == FIRST_BACKOFF_S:
                    logger.warning(
                        "dicom node: Orthanc unavailable (%s); retrying, waiting up to %.0f s", err, self.max_backoff
                    )
                self._ready = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception as err:  # a bug must not end the thread: log its type, wait, go on
                self._last_error = f"unexpected {type(err).__name__}"
                logger.error("dicom node: unexpected %s while reading the change feed", type(err).__name__)
                self._ready = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if not self._ready:
                logger.info("dicom node: following Orthanc's change feed from change %s", self._cursor)
            self._ready = True
            backoff = FIRST_BACKOFF_S
            if not more:
                self._stop.wait(self.poll_seconds)

    def poll(self) -> bool:
        """Read one page of the feed and handle its changes; True when more changes are waiting.

        Raises :class:`~medimg.pacs.orthanc.PacsUnavailable` (the cursor stays on the last change handled).
        """
        if self._cursor is None:
            self._cursor = self._load_cursor()
            if self._cursor is None:
                self._save_cursor(self.client.last_change())
        assert self._cursor is not None
        batch = self.client.changes(self._cursor)
        if not batch.changes:
            if batch.last < self._cursor:
                logger.warning(
                    "dicom node: Orthanc's feed ends before the cursor (database reset?): following it from there"
                )
                self._save_cursor(batch.last)
            return False
        for change in batch.changes:
            if self._stop.is_set():
                return False
            if change.change_type in (NEW_INSTANCE, STABLE_SERIES):
                loaded = self.holder.current()
                if loaded is None:
                    return False  # no verified model yet: the change waits
                self.handle(change, loaded)
            self._save_cursor(change.seq)
        return not batch.done

    def handle(self, change: Change, loaded: LoadedModel) -> LoggedPrediction | None:
        """Act on one change with ``loaded`` (module docstring); the entry appended, None when the change is not
        one the model acts on. Raises :class:`~medimg.pacs.orthanc.PacsUnavailable` to be retried."""
        model = loaded.model
        wanted = NEW_INSTANCE if model.dims == 2 and not model.is_segmentation else STABLE_SERIES
        if change.change_type != wanted:
            return None
        started = time.perf_counter()
        try:
            if wanted == NEW_INSTANCE:
                entry = self._instance(change.resource_id, loaded, started)
            else:
                entry = self._series(change.resource_id, loaded, started)
        except PacsUnavailable:
            raise
        except PacsNotFound:
            entry = self._entry(loaded, started, _Identity(), refusal_reason="not_found")
        except Exception as err:  # one bad change never blocks the feed
            logger.error("dicom node: unexpected %s while handling a change", type(err).__name__)
            entry = self._entry(loaded, started, _Identity(), refusal_reason="internal_error")
        self._record(entry)
        return entry

    # -- one image ----------------------------------------------------------------------------------------

    def _instance(self, instance_id: str, loaded: LoadedModel, started: float) -> LoggedPrediction:
        data = self.client.instance_file(instance_id)
        try:
            header = read_header_bytes(data)
        except BadImage as bad:
            return self._entry(loaded, started, _Identity(), refusal_reason=bad.reason)
        who = self._identity(header)
        model = loaded.model
        refused = refusal(header, model.input_rules, model.metadata.get(META_BODY_PART))
        if refused is not None:
            return self._entry(loaded, started, who, refusal_reason=refused.reason)
        prepared = prepare_input(model, Path(who.instance or "instance"), model.input_rules, data=data)
        stats = (
            (float(prepared.stored.mean()), float(prepared.stored.std()))
            if prepared.stored is not None
            else (None, None)
        )
        if prepared.error is not None:
            return self._entry(loaded, started, who, refusal_reason=prepared.error, input_stats=stats)
        prediction = score_prepared(model, prepared)
        reason = self._store_report([header], prediction, loaded)
        entry = self._entry(loaded, started, who, prediction, refusal_reason=reason, input_stats=stats)
        if self.on_scored is not None and prepared.stored is not None and entry.p_abnormal is not None:
            try:
                self.on_scored(entry, prepared.stored, loaded)
            except Exception as err:  # an observer's failure is not the node's
                logger.error("dicom node: on_scored raised %s", type(err).__name__)
        return entry

    # -- one series ---------------------------------------------------------------------------------------

    def _series(self, series_id: str, loaded: LoadedModel, started: float) -> LoggedPrediction:
        instances = self.client.series_instances(series_id)
        files = [self.client.instance_file(i) for i in instances]
        headers: list[Dataset] = []
        for data in files:
            try:
                headers.append(read_header_bytes(data))
            except BadImage as bad:
                return self._entry(loaded, started, _Identity(), refusal_reason=bad.reason)
        if not headers:
            return self._entry(loaded, started, _Identity(), refusal_reason="no_series")
        who = replace(self._identity(headers[0]), instance=None)
        model = loaded.model
        refused = refusal(headers[0], model.input_rules, model.metadata.get(META_BODY_PART))
        if refused is not None:
            return self._entry(loaded, started, who, refusal_reason=refused.reason)
        with tempfile.TemporaryDirectory(prefix="medimg-series-", dir=self.scratch) as tmp:
            folder = Path(tmp) / "series"
            folder.mkdir()
            for index, data in enumerate(files):
                (folder / f"{index:05d}.dcm").write_bytes(data)
            if model.is_segmentation:
                return self._segment(folder, Path(tmp) / "out", loaded, started, who)
            return self._classify_volume(folder, headers, loaded, started, who)

    def _classify_volume(
        self, folder: Path, headers: list[Dataset], loaded: LoadedModel, started: float, who: _Identity
    ) -> LoggedPrediction:
        from medimg.predict_volumes import predict_volumes  # here: the 3D readers only for a 3D model

        rows = predict_volumes(loaded.model, [folder], secret=self.secret)
        ours = [r for r in rows if r.volume == who.series] or rows
        bad = next((r for r in ours if r.error is not None), None)
        if bad is not None or len(ours) != 1:
            return self._entry(loaded, started, who, refusal_reason=bad.error if bad is not None else "no_series")
        reason = self._store_report(headers, ours[0], loaded)
        return self._entry(loaded, started, who, ours[0], refusal_reason=reason)

    def _segment(
        self, folder: Path, out: Path, loaded: LoadedModel, started: float, who: _Identity
    ) -> LoggedPrediction:
        # here: the segmentation stack (nibabel, highdicom SEG) only for a segmentation model
        from medimg.predict_segmentation import predict_segmentation  # here: segmentation stack
        from medimg.segmentation.dicom_seg import Algorithm  # here: highdicom

        algorithm = Algorithm(loaded.name, loaded.version, loaded.onnx_sha256)
        results = predict_segmentation(loaded.model, [folder], out, algorithm=algorithm, secret=self.secret)
        ours = [r for r in results if r.volume == who.series] or results
        bad = next((r for r in ours if r.error is not None), None)
        if bad is not None or len(ours) != 1:
            return self._entry(loaded, started, who, refusal_reason=bad.error if bad is not None else "no_series")
        if ours[0].dicom_seg is None:
            return self._entry(loaded, started, who, refusal_reason="result_not_made")
        reason = self._store([pydicom.dcmread(out / ours[0].dicom_seg)])
        return self._entry(loaded, started, who, refusal_reason=reason, result_sop_class=None if reason else "SEG")

    # -- results --------------------------------------------------------------------------------------------

    def _store_report(self, sources: Sequence[Dataset], prediction: Prediction, loaded: LoadedModel) -> str | None:
        """Make and store the SR of ``prediction``; None when stored, else the reason."""
        # here: highdicom (1 s) only once an SR is made
        from medimg.pacs.structured_report import ReportedOutcome, structured_report
        from medimg.segmentation.dicom_seg import Algorithm  # here: highdicom

        model = loaded.model
        outcome = ReportedOutcome(
            class_probabilities=tuple((prediction.class_probabilities or {}).items()),
            p_abnormal=float(prediction.probability or 0.0),
            predicted_class=str(prediction.label),
            abnormal=bool(prediction.abnormal),
            threshold=float(model.threshold),
            abnormal_classes=tuple(model.abnormal_classes),
            task_kind=model.task_kind,
        )
        try:
            report = structured_report(sources, outcome, Algorithm(loaded.name, loaded.version, loaded.onnx_sha256))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            logger.warning("dicom node: no SR made (%s)", type(err).__name__)
            return "result_not_made"
        return self._store([report])

    def _store(self, datasets: Sequence[Dataset]) -> str | None:
        try:
            self.client.store(datasets)
        except PacsUnavailable:
            raise
        except PacsError as err:
            logger.warning("dicom node: %s", err)
            return "store_refused"
        return None

    def _identity(self, header: Dataset) -> _Identity:
        ids = deid.identity_pseudonyms(header, self.secret)
        return _Identity(
            ids["study_pseudonym"], ids["series_pseudonym"], ids["sop_pseudonym"], code_string(header.get("Modality"))
        )

    def _entry(
        self,
        loaded: LoadedModel,
        started: float,
        who: _Identity,
        prediction: Prediction | None = None,
        refusal_reason: str | None = None,
        input_stats: tuple[float | None, float | None] = (None, None),
        result_sop_class: str | None = None,
    ) -> LoggedPrediction:
        answered = prediction is not None and prediction.error is None
        if answered and refusal_reason is None and result_sop_class is None:
            result_sop_class = "SR"
        return LoggedPrediction(
            source="dicom",
            model_name=loaded.name,
            model_version=loaded.version,
            onnx_sha256=loaded.onnx_sha256,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            refusal_reason=refusal_reason,
            class_probabilities=prediction.class_probabilities if answered and prediction else None,
            p_abnormal=prediction.probability if answered and prediction else None,
            predicted_class=prediction.label if answered and prediction else None,
            abnormal=prediction.abnormal if answered and prediction else None,
            threshold=float(loaded.model.threshold) if answered else None,
            study=who.study,
            series=who.series,
            instance=who.instance,
            modality=who.modality,
            input_mean=input_stats[0],
            input_std=input_stats[1],
            result_sop_class=result_sop_class,
        )

    def _record(self, entry: LoggedPrediction) -> None:
        self.log.append(entry)
        subject = entry.instance or entry.series or "-"
        if entry.refusal_reason is None:
            logger.info(
                "dicom node: %s %s by %s v%s (%s, %.0f ms)",
                subject,
                "answered" if entry.result_sop_class is None else f"answered, {entry.result_sop_class} stored",
                entry.model_name,
                entry.model_version,
                entry.predicted_class or "-",
                entry.latency_ms,
            )
        else:
            logger.info(
                "dicom node: %s refused: %s (%s v%s)",
                subject,
                entry.refusal_reason,
                entry.model_name,
                entry.model_version,
            )
        if self.on_outcome is not None:
            try:
                self.on_outcome(entry)
            except Exception as err:  # an observer's failure is not the node's
                logger.error("dicom node: on_outcome raised %s", type(err).__name__)

    # -- the cursor ---------------------------------------------------------------------------------------

    def _load_cursor(self) -> int | None:
        try:
            data = json.loads(self.cursor_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.warning("dicom node: unreadable cursor file: starting from Orthanc's latest change")
            return None
        if (
            not isinstance(data, dict)
            or data.get("orthanc") != self.client.url
            or not isinstance(data.get("last_seq"), int)
        ):
            logger.info("dicom node: no cursor for this Orthanc: starting from its latest change")
            return None
        return int(data["last_seq"])

    def _save_cursor(self, seq: int) -> None:
        """Write the cursor atomically (a temporary file renamed over it)."""
        self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cursor_path.with_name(f".{self.cursor_path.name}.tmp")
        tmp.write_text(json.dumps({"orthanc": self.client.url, "last_seq": int(seq)}))
        os.replace(tmp, self.cursor_path)
        self._cursor = int(seq)


#: Where the node's Orthanc credentials come from (``scripts/services.sh env``), never from a params file.
USERNAME_ENV = "MEDIMG_ORTHANC_USERNAME"
PASSWORD_ENV = "MEDIMG_ORTHANC_PASSWORD"


def node_from_settings(
    serve: ServeConfig,
    url: str,
    holder: ModelHolder,
    log: PredictionLog,
    serve_dir: Path,
    secret: bytes,
    on_outcome: OutcomeCallback | None = None,
    on_scored: ScoredCallback | None = None,
) -> DicomNode:
    """The node ``medimg serve`` runs: Orthanc at ``url`` with the credentials of ``$MEDIMG_ORTHANC_USERNAME`` and
    ``$MEDIMG_ORTHANC_PASSWORD`` (no auth when the user name is unset), ``serve.pacs_timeout_seconds`` per request,
    ``serve.pacs_poll_seconds`` between reads, ``serve.pacs_max_backoff_seconds``; the cursor in ``serve_dir``
    (:attr:`medimg.workspace.Workspace.serve`); ``on_outcome`` / ``on_scored`` as for :class:`DicomNode`."""
    client = OrthancClient(
        url, os.environ.get(USERNAME_ENV) or None, os.environ.get(PASSWORD_ENV), timeout=serve.pacs_timeout_seconds
    )
    return DicomNode(
        client,
        holder,
        log,
        cursor_path(serve_dir),
        secret,
        poll_seconds=serve.pacs_poll_seconds,
        max_backoff=serve.pacs_max_backoff_seconds,
        on_outcome=on_outcome,
        on_scored=on_scored,
    )


def cursor_path(serve_dir: Path) -> Path:
    """The cursor's file in the workspace's ``serve`` folder (:attr:`medimg.workspace.Workspace.serve`)."""
    return Path(serve_dir) / CURSOR_NAME
