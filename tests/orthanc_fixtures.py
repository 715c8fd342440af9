"""A real Orthanc for the integration tests, and what they do with it: C-STORE (pynetdicom), reading results
back (QIDO-RS, WADO-RS), waiting on a DICOM node's prediction log.

``orthanc``: the one ``scripts/services.sh`` starts, named by ``MEDIMG_ORTHANC_URL``, ``MEDIMG_ORTHANC_DICOM``,
``MEDIMG_ORTHANC_USERNAME`` and ``MEDIMG_ORTHANC_PASSWORD`` (``scripts/services.sh env``); without them a test
that asks for it fails and says how to start it. ``private_orthanc``: one of the test's own (the same script in a
temporary state dir), which a test may stop and start. Registered as a plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from medimg.pacs.orthanc import OrthancClient
from medimg.serving.dicom_node import DicomNode, cursor_path
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog
from progress import wait_while_progressing

ROOT = Path(__file__).resolve().parents[1]
#: The pseudonymisation key of the nodes in the tests.
SECRET = b"pacs-test-secret-0123456789abcdef"
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
STALL_S = 120.0


@dataclass(frozen=True)
class Orthanc:
    url: str
    aet: str
    host: str
    port: int
    username: str
    password: str

    def client(self, timeout: float = 10.0) -> OrthancClient:
        return OrthancClient(self.url, self.username, self.password, timeout=timeout)


def _orthanc_from(env: dict[str, str]) -> Orthanc:
    aet, address = env["MEDIMG_ORTHANC_DICOM"].split("@")
    host, port = address.rsplit(":", 1)
    return Orthanc(
        env["MEDIMG_ORTHANC_URL"], aet, host, int(port), env["MEDIMG_ORTHANC_USERNAME"], env["MEDIMG_ORTHANC_PASSWORD"]
    )


@pytest.fixture(scope="module")
def orthanc() -> Orthanc:
    """The integration layer's Orthanc (``scripts/services.sh``), checked to answer."""
    names = ("MEDIMG_ORTHANC_URL", "MEDIMG_ORTHANC_DICOM", "MEDIMG_ORTHANC_USERNAME", "MEDIMG_ORTHANC_PASSWORD")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: start Orthanc with "
            '`scripts/services.sh start orthanc && eval "$(scripts/services.sh env)"` '
            "(or run `make test`, which does it)"
        )
    found = _orthanc_from(dict(os.environ))
    if not found.client().ping():
        pytest.fail(f"Orthanc does not answer GET {found.url}/system with the credentials; is it running?")
    return found


def fresh(path: Path, token: str) -> Dataset:
    """The file's data set with its Study, Series and SOP Instance UIDs replaced by ones derived from ``token`` and
    the old UID (so files that shared a UID still do)."""
    ds = pydicom.dcmread(path)
    for keyword in UID_KEYWORDS:
        setattr(ds, keyword, generate_uid(entropy_srcs=[token, str(getattr(ds, keyword))]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def c_store(orthanc: Orthanc, datasets: Sequence[Dataset]) -> None:
    """C-STORE ``datasets`` in one association (their own transfer syntaxes); every status success or warning."""
    ae = AE(ae_title="MEDIMG-TEST")
    for pair in dict.fromkeys((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets):
        ae.add_requested_context(*pair)
    assoc = ae.associate(orthanc.host, orthanc.port, ae_title=orthanc.aet)
    assert assoc.is_established, "no association with Orthanc's DICOM port"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and (status.Status == 0x0000 or status.Status & 0xF000 == 0xB000), status
    finally:
        assoc.release()


def entries(log: PredictionLog, study: str | None = None) -> list[LoggedPrediction]:
    """The log's entries; with ``study`` (a study pseudonym) only that study's. A shared Orthanc may still raise a
    ``StableSeries`` for an earlier test's series (its result, stored just before that test's node stopped) while a
    later test's node follows the feed: a test that counts entries counts its own study's."""
    return [e for e in log.read() if study is None or e.study == study]


def wait_for_entries(log: PredictionLog, count: int, what: str, study: str | None = None) -> list[LoggedPrediction]:
    return wait_while_progressing(
        lambda: len(entries(log, study)) >= count and entries(log, study),
        what,
        progress=lambda: len(entries(log)),
        stall=STALL_S,
    )


def srs_in_study(client: OrthancClient, study_uid: str) -> list[Dataset]:
    """Every SR of the study, read back with WADO-RS (QIDO-RS to find them)."""
    found = client.dicomweb.search_for_instances(study_instance_uid=study_uid, search_filters={"Modality": "SR"})
    out = []
    for item in found:
        meta = Dataset.from_json(item)
        out.append(client.dicomweb.retrieve_instance(study_uid, meta.SeriesInstanceUID, meta.SOPInstanceUID))
    return out


def node_for(orthanc: Orthanc, ws_root: Path, holder, **kwargs) -> tuple[DicomNode, PredictionLog]:
    log = PredictionLog(ws_root / "serve/predictions.jsonl")
    node = DicomNode(
        orthanc.client(timeout=kwargs.pop("timeout", 10.0)),
        holder,
        log,
        cursor_path(ws_root / "serve"),
        SECRET,
        poll_seconds=0.2,
        **kwargs,
    )
    return node, log


def started(node: DicomNode) -> DicomNode:
    """``node`` started and past its first read of the feed (its cursor is set: later changes are its)."""
    node.start()
    wait_while_progressing(lambda: node.dicom_ready and node.cursor is not None, "the node's first read", stall=STALL_S)
    return node


def services_sh(state: Path, *args: str) -> subprocess.CompletedProcess:
    """`scripts/services.sh ARGS` with its state in ``state`` (the venv: this interpreter's)."""
    env = {**os.environ, "MEDIMG_SERVICES_DIR": str(state), "MEDIMG_VENV": str(Path(sys.executable).parents[1])}
    return subprocess.run(
        [str(ROOT / "scripts/services.sh"), *args], env=env, capture_output=True, text=True, check=True, timeout=600
    )


@pytest.fixture
def private_orthanc(tmp_path):
    """An Orthanc of this test's own (``scripts/services.sh start orthanc`` in a temporary state dir), stopped after."""
    state = tmp_path / "services"
    services_sh(state, "start", "orthanc")
    try:
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in services_sh(state, "env").stdout.splitlines()
            if line.startswith("export MEDIMG_ORTHANC")
        )
        yield _orthanc_from(env), state
    finally:
        services_sh(state, "stop", "orthanc")
