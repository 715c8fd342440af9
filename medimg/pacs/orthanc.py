"""Orthanc over HTTP: its change feed, the original bytes of its instances, and STOW-RS into it.

I/O only: no decision about what an instance is for is made here (:mod:`medimg.pacs.selection`,
:mod:`medimg.serving.dicom_node`). The REST calls are Orthanc's own (``/changes``, ``/instances/{id}/file``,
``/series/{id}/instances``, ``/system``; Orthanc REST API, Orthanc Book "REST API of the Orthanc core");
storing goes through DICOMweb STOW-RS at ``<url>/dicom-web`` (the ``orthanc-dicomweb`` plugin) with
:class:`dicomweb_client.DICOMwebClient`, on the same authenticated session.

Faults: every request has a ``timeout`` (seconds) and is retried by urllib3 (:class:`urllib3.util.Retry` on the
session: ``retries`` more attempts on a refused or dropped connection, a timeout, or a 502/503/504 answer,
waiting ``backoff * 2**k`` seconds between them). What still fails is a :class:`PacsUnavailable` (no answer, a
5xx, or credentials refused: 401/403), a :class:`PacsNotFound` (404: the resource went away), or a
:class:`PacsError` (any other refusal). The longer wait while Orthanc is down (1 s doubling to 30 s) is the
caller's: :mod:`medimg.serving.dicom_node`.

Privacy: messages name the kind of request (``GET /instances/{id}/file``), never an Orthanc identifier (a
hash of the patient's and study's identifiers) or a UID. ``dicomweb_client`` logs UIDs (the study of a store,
failed SOP instances); its records stop at its own logger and never reach the application's handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

# dicomweb_client logs Study and SOP Instance UIDs at INFO and ERROR level: keep them out of every log.
logging.getLogger("dicomweb_client").propagate = False

#: Orthanc's change types the DICOM node acts on (Orthanc's ``ChangeType``).
NEW_INSTANCE = "NewInstance"
STABLE_SERIES = "StableSeries"
#: How many changes one ``/changes`` call asks for (Orthanc's own maximum is 10000).
CHANGES_LIMIT = 100
#: Answers urllib3 retries before giving up (a proxy or Orthanc starting up, overloaded or going down).
RETRY_STATUSES = (502, 503, 504)


class PacsError(Exception):
    """Orthanc refused a request; ``status`` is the HTTP status (None when there was no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PacsUnavailable(PacsError):
    """Orthanc did not answer after the retries (refused or dropped connection, timeout), answered 5xx, or
    refused the credentials (401/403): the PACS cannot be used now; wait and try again."""


class PacsNotFound(PacsError):
    """404: the resource is not (or no longer) in Orthanc, e.g. an instance deleted after its change."""


@dataclass(frozen=True)
class Change:
    """One entry of Orthanc's change feed: ``seq`` its sequence number, ``change_type`` (``NewInstance``,
    ``StableSeries``, ...), ``resource_type`` (``Instance``, ``Series``, ...) and ``resource_id`` (Orthanc's
    identifier of the resource: a hash of DICOM identifiers, so never logged)."""

    seq: int
    change_type: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class ChangeBatch:
    """One page of the change feed: ``changes`` in sequence order, ``last`` the sequence number to read on
    from, ``done`` True when no more changes were waiting."""

    changes: tuple[Change, ...]
    last: int
    done: bool


class OrthancClient:
    """Orthanc's REST API and its DICOMweb plugin at ``url`` (``http://127.0.0.1:8042``, no trailing path),
    with HTTP Basic auth as ``username``/``password`` (None: no auth), ``timeout`` seconds per request,
    ``retries`` extra attempts per request with ``backoff`` seconds doubling between them.
    """

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if username is not None:
            self.session.auth = (username, password or "")
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),  # a STOW of the same instance again is stored once
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.dicomweb = DICOMwebClient(f"{self.url}/dicom-web", session=self.session, timeout=timeout)
        self.dicomweb.set_http_retry_params(retry=False)  # the session retries

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def _get(self, path: str, what: str, params: dict[str, str | int] | None = None) -> requests.Response:
        try:
            response = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout)
        except requests.RequestException as err:
            raise PacsUnavailable(f"{what}: no answer from Orthanc ({type(err).__name__})") from None
        _raise_for(response, what)
        return response

    def ping(self) -> bool:
        """True when Orthanc answers ``GET /system`` with these credentials."""
        try:
            self._get("/system", "GET /system")
        except PacsError:
            return False
        return True

    def changes(self, since: int, limit: int = CHANGES_LIMIT) -> ChangeBatch:
        """The changes after sequence number ``since`` (at most ``limit``), in order."""
        data = self._get("/changes", "GET /changes", {"since": int(since), "limit": int(limit)}).json()
        changes = tuple(
            Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]), str(c["ID"]))
            for c in data.get("Changes", [])
        )
        return ChangeBatch(changes, int(data["Last"]), bool(data.get("Done", True)))

    def last_change(self) -> int:
        """The sequence number of the latest change (0 for an empty Orthanc)."""
        return int(self._get("/changes", "GET /changes?last", {"last": ""}).json()["Last"])

    def instance_file(self, instance_id: str) -> bytes:
        """The instance's DICOM Part 10 file as Orthanc received it (no transcoding)."""
        return self._get(f"/instances/{instance_id}/file", "GET /instances/{id}/file").content

    def series_instances(self, series_id: str) -> list[str]:
        """The Orthanc identifiers of the series' instances."""
        listing = self._get(f"/series/{series_id}/instances", "GET /series/{id}/instances").json()
        return [str(item["ID"]) for item in listing]

    def series_instance_files(self, series_id: str) -> list[bytes]:
        """Every instance file of the series (:meth:`instance_file`), in Orthanc's order."""
        return [self.instance_file(instance) for instance in self.series_instances(series_id)]

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store ``datasets`` with STOW-RS (``POST <url>/dicom-web/studies``).

        :class:`PacsError` when Orthanc answers that an instance failed (Failed SOP Sequence), with the
        failure count only.
        """
        try:
            answer = self.dicomweb.store_instances(list(datasets))
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else None
            _raise_status(status, "STOW-RS")
            raise PacsError(f"STOW-RS: HTTP {status}", status) from None
        except requests.RequestException as err:
            raise PacsUnavailable(f"STOW-RS: no answer from Orthanc ({type(err).__name__})") from None
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            raise PacsError(f"STOW-RS: {len(failed)} of {len(datasets)} instances refused")


def _raise_for(response: requests.Response, what: str) -> None:
    if response.status_code >= 400:
        _raise_status(response.status_code, what)
        raise PacsError(f"{what}: HTTP {response.status_code}", response.status_code)


def _raise_status(status: int | None, what: str) -> None:
    if status is None or status >= 500:
        raise PacsUnavailable(f"{what}: Orthanc answered HTTP {status}", status)
    if status in (401, 403):
        raise PacsUnavailable(f"{what}: Orthanc refused the credentials (HTTP {status})", status)
    if status == 404:
        raise PacsNotFound(f"{what}: not found", status)
