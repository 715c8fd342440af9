"""The DICOM node against a real Orthanc: images in by C-STORE (pynetdicom), SRs back by STOW-RS, read by QIDO/WADO.

Orthanc is the one ``scripts/services.sh`` starts (``MEDIMG_ORTHANC_URL``, ``MEDIMG_ORTHANC_DICOM``,
``MEDIMG_ORTHANC_USERNAME``, ``MEDIMG_ORTHANC_PASSWORD`` from ``scripts/services.sh env``); without them these tests
fail and say how to start it. The outage test starts a private Orthanc with the same script in a temporary state
dir, so stopping it disturbs nobody. The model is the registry fixture's (v1 champion, v2 challenger; real MLflow
on SQLite), handed out by a holder that re-reads the ``champion`` alias on every call, as the service's follower
does on its own schedule.

The shared chest DICOMs are sent with fresh Study, Series and SOP Instance UIDs (mapped consistently within a test:
the two files that share a SOP Instance UID still do), so every run is new to a long-lived Orthanc; everything
else in the files, patient name and ID included, is as shared. Waits follow the prediction log (``progress``),
never a fixed time; "no loop" is checked by a last image sent after everything else, the feed being in order.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid
from pynetdicom import AE

from datapaths import DATA_DIR
from medimg import registry
from medimg.data.deid import pseudonym
from medimg.pacs.orthanc import OrthancClient
from medimg.pacs.structured_report import ReportedOutcome, structured_report
from medimg.predict import predict_files, registry_model
from medimg.promotion import promote
from medimg.scoring import OnnxModel
from medimg.segmentation.dicom_seg import Algorithm
from medimg.serving.dicom_node import DicomNode, cursor_path
from medimg.serving.loaded_model import LoadedModel
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog
from progress import wait_while_progressing
from registry_fixtures import MODEL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"pacs-test-secret-0123456789abcdef"
XRAYS = sorted((DATA_DIR / "dicom/xray").glob("*.dcm"))
CT_SLICE = DATA_DIR / "dicom/ct/CT_small.dcm"
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


class AliasHolder:
    """A :class:`~medimg.serving.loaded_model.ModelHolder` that resolves ``alias`` on every call and loads each
    version once (pulled and verified by :func:`medimg.predict.registry_model`)."""

    def __init__(self, dest: Path, alias: str = "champion") -> None:
        self.dest = dest
        self.alias = alias
        self.loaded: dict[str, LoadedModel] = {}

    def current(self) -> LoadedModel | None:
        info = registry.version_by_alias(MODEL, self.alias)
        if info is None:
            return None
        if info.version not in self.loaded:
            path, record = registry_model(MODEL, info.version, self.dest / info.version)
            assert record.onnx_sha256 is not None
            self.loaded[info.version] = LoadedModel(
                record.name, str(record.version), record.onnx_sha256, OnnxModel(path), self.alias
            )
        return self.loaded[info.version]


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


def entries(log: PredictionLog) -> list[LoggedPrediction]:
    return list(log.read())


def wait_for_entries(log: PredictionLog, count: int, what: str) -> list[LoggedPrediction]:
    return wait_while_progressing(
        lambda: len(entries(log)) >= count and entries(log), what, progress=lambda: len(entries(log)), stall=STALL_S
    )


def srs_in_study(client: OrthancClient, study_uid: str) -> list[Dataset]:
    """Every SR of the study, read back with WADO-RS (QIDO-RS to find them)."""
    found = client.dicomweb.search_for_instances(study_instance_uid=study_uid, search_filters={"Modality": "SR"})
    out = []
    for item in found:
        meta = Dataset.from_json(item)
        out.append(client.dicomweb.retrieve_instance(study_uid, meta.SeriesInstanceUID, meta.SOPInstanceUID))
    return out


def measurement(sr: Dataset, code_value: str) -> float:
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (group,) = report.content.get_image_measurement_groups()
    (value,) = [m.value for m in group.get_measurements() if m.name.value == code_value]
    return float(value)


def algorithm_text(sr: Dataset, code_value: str) -> str:
    """The text of the content item named ``code_value`` (DCM 111001 name, 111003 version, 111002 parameters)."""

    def walk(sequence):
        for item in sequence:
            yield item
            yield from walk(item.get("ContentSequence", []))

    (value,) = [
        str(i.TextValue) for i in walk(sr.ContentSequence) if i.ConceptNameCodeSequence[0].CodeValue == code_value
    ]
    return value


def referenced_sop(sr: Dataset) -> str:
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (group,) = report.content.get_image_measurement_groups()
    (source,) = group.source_images
    return str(source.referenced_sop_instance_uid)


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


def foreign_sr(source: Path, token: str) -> Dataset:
    """An SR another vendor's AI made for ``source`` (a real header), in a study of its own."""
    header = fresh(source, token + "-foreign")
    outcome = ReportedOutcome(
        (("normal", 0.5), ("pneumonia", 0.5)), 0.5, "pneumonia", True, 0.5, ("pneumonia",), "binary"
    )
    sr = structured_report([header], outcome, Algorithm("other-ai", "1", "f" * 64))
    sr.Manufacturer = "Other Vendor"
    sr.SeriesDescription = "other vendor AI"
    return sr


def identifying_values(datasets: Sequence[Dataset], originals: Sequence[Path]) -> set[str]:
    values = set()
    for ds in [*datasets, *(pydicom.dcmread(p, stop_before_pixels=True) for p in originals)]:
        for keyword in ("PatientName", "PatientID", *UID_KEYWORDS):
            if ds.get(keyword):
                values.add(str(ds.get(keyword)))
    return values


def test_chest_dicoms_get_one_sr_per_instance_ct_and_srs_are_refused(orthanc, fresh_registry, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    token = uuid.uuid4().hex
    xrays = [fresh(p, token) for p in XRAYS]
    distinct = list({ds.SOPInstanceUID: ds for ds in reversed(xrays)}.values())  # the first sent of each UID
    assert len(XRAYS) == 3 and len(distinct) == 2  # two shared files are one instance (same SOP Instance UID)
    ct = fresh(CT_SLICE, token)
    other = foreign_sr(XRAYS[-1], token)
    holder = AliasHolder(tmp_path / "models")
    node, log = node_for(orthanc, fresh_registry.ws.root, holder)
    client = orthanc.client()
    try:
        started(node)
        c_store(orthanc, [*xrays, ct, other])
        # 2 answered, 2 of our own SRs back through the feed, the CT slice, the foreign SR
        wait_for_entries(log, 6, "the node's six outcomes")
        sentinel = fresh(CT_SLICE, token + "-last")
        c_store(orthanc, [sentinel])
        last = pseudonym(sentinel.SOPInstanceUID, SECRET, "sop")
        wait_while_progressing(
            lambda: any(e.instance == last for e in entries(log)), "the last image", progress=lambda: len(entries(log))
        )
    finally:
        node.stop(timeout=60)
    found = entries(log)
    assert len(found) == 7, [(e.instance, e.refusal_reason) for e in found]  # nothing more: no loop
    assert found[-1].instance == last and found[-1].refusal_reason == "modality_mismatch"
    by_instance = {e.instance: e for e in found}
    champion = holder.loaded["1"]
    reference = {r.file: r for r in predict_files(champion.model, [_written(ds, tmp_path) for ds in distinct])}

    for ds in distinct:
        entry = by_instance[pseudonym(ds.SOPInstanceUID, SECRET, "sop")]
        assert entry.refusal_reason is None and entry.result_sop_class == "SR" and entry.source == "dicom"
        assert (entry.model_version, entry.onnx_sha256) == ("1", champion.onnx_sha256)
        assert entry.study == pseudonym(ds.StudyInstanceUID, SECRET, "study") and entry.modality == "CR"
        expected = reference[str(tmp_path / f"{ds.SOPInstanceUID}.dcm")]
        assert entry.p_abnormal == pytest.approx(expected.probability, abs=1e-6)
        assert entry.predicted_class == expected.label and entry.abnormal is expected.abnormal
        assert entry.input_mean is not None and entry.input_std is not None and entry.input_std > 0

        (sr,) = srs_in_study(client, ds.StudyInstanceUID)  # one SR in the source's own study
        assert sr.SOPClassUID == Comprehensive3DSRStorage and referenced_sop(sr) == ds.SOPInstanceUID
        assert sr.PatientID == ds.PatientID and sr.Manufacturer == "medimg"
        assert sr.SoftwareVersions == "1" and sr.SeriesDescription.startswith("medimg AI result")
        assert algorithm_text(sr, "111001") == MODEL
        assert algorithm_text(sr, "111003") == "1"
        assert algorithm_text(sr, "111002") == f"onnx_sha256={champion.onnx_sha256}"
        assert measurement(sr, "P-ABNORMAL") == pytest.approx(expected.probability, abs=1e-6)
        assert measurement(sr, "THRESHOLD") == pytest.approx(champion.model.threshold, abs=1e-9)
        report = hd.sr.Comprehensive3DSR.from_dataset(sr)
        (group,) = report.content.get_image_measurement_groups()
        decision = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
        assert decision["Pneumonia"] == ("Present" if expected.abnormal else "Absent")
        own = by_instance[pseudonym(sr.SOPInstanceUID, SECRET, "sop")]  # the SR came back and was refused
        assert own.refusal_reason == "own_result" and own.result_sop_class is None

    refused_ct = by_instance[pseudonym(ct.SOPInstanceUID, SECRET, "sop")]
    assert refused_ct.refusal_reason == "modality_mismatch" and refused_ct.modality == "CT"
    assert refused_ct.p_abnormal is None and refused_ct.model_version == "1"
    assert srs_in_study(client, ct.StudyInstanceUID) == []
    refused_sr = by_instance[pseudonym(other.SOPInstanceUID, SECRET, "sop")]
    assert refused_sr.refusal_reason == "non_image_object"
    assert [s.SOPInstanceUID for s in srs_in_study(client, other.StudyInstanceUID)] == [other.SOPInstanceUID]

    # privacy: no name, ID or UID of what was sent, nor Orthanc's identifiers of it (hashes of them), in the
    # prediction log, the cursor or any log record of the service's side (everything but the test's own sender)
    kept = "\n".join(
        [log.path.read_text(), cursor_path(fresh_registry.ws.root / "serve").read_text()]
        + [r.getMessage() for r in caplog.records if not r.name.startswith("pynetdicom")]
    )
    assert "refused: modality_mismatch" in kept  # the records were captured
    values = identifying_values([*xrays, ct, other, sentinel], [*XRAYS, CT_SLICE])
    for value in values | orthanc_ids(client, values):
        assert value not in kept


def orthanc_ids(client: OrthancClient, uids: set[str]) -> set[str]:
    """Orthanc's identifiers of the resources with these UIDs (``POST /tools/lookup``)."""
    out = set()
    for uid in uids:
        response = client.session.post(f"{client.url}/tools/lookup", data=uid, timeout=client.timeout)
        response.raise_for_status()
        out.update(str(item["ID"]) for item in response.json())
    assert out  # the sent instances are there
    return out


def _written(ds: Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    return path


def test_after_a_promotion_the_next_sr_names_the_new_version(orthanc, fresh_registry, tmp_path):
    holder = AliasHolder(tmp_path / "models")
    node, log = node_for(orthanc, fresh_registry.ws.root, holder)
    client = orthanc.client()
    versions = {}
    try:
        started(node)
        for round_, version in enumerate(("1", "2")):
            if version == "2":
                promote(
                    fresh_registry.params, fresh_registry.ws, "2", "pacs test: the node follows the alias", force=True
                )
            ds = fresh(XRAYS[-1], f"{uuid.uuid4().hex}-{round_}")
            c_store(orthanc, [ds])
            instance = pseudonym(ds.SOPInstanceUID, SECRET, "sop")
            entry = wait_while_progressing(
                lambda instance=instance: next((e for e in entries(log) if e.instance == instance), None),
                f"the SR of round {round_}",
                progress=lambda: len(entries(log)),
                stall=STALL_S,
            )
            assert entry.refusal_reason is None and entry.model_version == version
            (sr,) = srs_in_study(client, ds.StudyInstanceUID)
            versions[version] = (sr.SoftwareVersions, algorithm_text(sr, "111003"), algorithm_text(sr, "111002"))
    finally:
        node.stop(timeout=60)
    assert node.dicom_ready is False  # stopped
    sha = {v: holder.loaded[v].onnx_sha256 for v in ("1", "2")}
    assert sha["1"] != sha["2"]
    assert versions == {v: (v, v, f"onnx_sha256={sha[v]}") for v in ("1", "2")}


def _services(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDIMG_SERVICES_DIR": str(state), "MEDIMG_VENV": str(Path(sys.executable).parents[1])}
    return subprocess.run(
        [str(ROOT / "scripts/services.sh"), *args], env=env, capture_output=True, text=True, check=True, timeout=600
    )


@pytest.fixture
def private_orthanc(tmp_path):
    """An Orthanc of this test's own (``scripts/services.sh start orthanc`` in a temporary state dir), stopped after."""
    state = tmp_path / "services"
    _services(state, "start", "orthanc")
    try:
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in _services(state, "env").stdout.splitlines()
            if line.startswith("export MEDIMG_ORTHANC")
        )
        yield _orthanc_from(env), state
    finally:
        _services(state, "stop", "orthanc")


def test_orthanc_down_the_node_stays_up_not_ready_and_resumes_without_losing_a_change(
    private_orthanc, fresh_registry, tmp_path
):
    pacs, state = private_orthanc
    holder = AliasHolder(tmp_path / "models")
    first, log = node_for(pacs, fresh_registry.ws.root, holder, timeout=2.0, max_backoff=2.0)
    started(first)
    first.stop(timeout=60)  # the service goes down; its cursor stays in the workspace
    cursor = first.cursor
    ds = fresh(XRAYS[-1], uuid.uuid4().hex)
    c_store(pacs, [ds])  # a change while no node follows the feed
    _services(state, "stop", "orthanc")  # and then Orthanc goes down too

    second, _ = node_for(pacs, fresh_registry.ws.root, holder, timeout=2.0, max_backoff=2.0)
    second.start()  # the service restarts while Orthanc is down
    try:
        wait_while_progressing(lambda: second.last_error is not None, "the node's first failed read", stall=STALL_S)
        assert not second.dicom_ready and second._thread is not None and second._thread.is_alive()
        assert second.cursor == cursor and entries(log) == []  # nothing taken, nothing lost
        _services(state, "start", "orthanc")  # Orthanc is back (same storage, same ports)
        instance = pseudonym(ds.SOPInstanceUID, SECRET, "sop")
        entry = wait_while_progressing(
            lambda: next((e for e in entries(log) if e.instance == instance), None),
            "the change made while nothing followed",
            stall=STALL_S,
        )
        assert entry.refusal_reason is None and entry.result_sop_class == "SR"
        wait_while_progressing(lambda: second.dicom_ready, "ready again", stall=STALL_S)
        (sr,) = srs_in_study(pacs.client(), ds.StudyInstanceUID)
        assert referenced_sop(sr) == ds.SOPInstanceUID
    finally:
        second.stop(timeout=60)
    assert [e.instance for e in entries(log)].count(instance) == 1  # handled once
    assert second.cursor is not None and cursor is not None and second.cursor > cursor


def test_sr_bytes_round_trip_through_stow_and_wado(orthanc, tmp_path):
    """The SR made for a real radiograph is accepted by Orthanc's STOW-RS and comes back byte-equivalent (same
    content tree), through the client the node uses."""
    ds = fresh(XRAYS[-1], uuid.uuid4().hex)
    outcome = ReportedOutcome(
        (("normal", 0.25), ("pneumonia", 0.75)), 0.75, "pneumonia", True, 0.5, ("pneumonia",), "binary"
    )
    sr = structured_report([ds], outcome, Algorithm(MODEL, "9", "a" * 64))
    client = orthanc.client()
    client.store([sr])
    (back,) = srs_in_study(client, ds.StudyInstanceUID)
    buffer = io.BytesIO()
    sr.save_as(buffer)
    assert back.SOPInstanceUID == sr.SOPInstanceUID
    assert back.ContentSequence == pydicom.dcmread(io.BytesIO(buffer.getvalue())).ContentSequence
