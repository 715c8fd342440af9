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
import uuid
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from datapaths import DATA_DIR
from medimg import registry
from medimg.data.deid import pseudonym
from medimg.pacs.orthanc import OrthancClient
from medimg.pacs.structured_report import ReportedOutcome, structured_report
from medimg.predict import predict_files, registry_model
from medimg.promotion import promote
from medimg.scoring import OnnxModel
from medimg.segmentation.dicom_seg import Algorithm
from medimg.serving.dicom_node import cursor_path
from medimg.serving.loaded_model import LoadedModel
from orthanc_fixtures import (
    SECRET,
    STALL_S,
    UID_KEYWORDS,
    c_store,
    entries,
    fresh,
    node_for,
    services_sh,
    srs_in_study,
    started,
    wait_for_entries,
)
from progress import wait_while_progressing
from registry_fixtures import MODEL

pytestmark = pytest.mark.integration

XRAYS = sorted((DATA_DIR / "dicom/xray").glob("*.dcm"))
CT_SLICE = DATA_DIR / "dicom/ct/CT_small.dcm"


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
    services_sh(state, "stop", "orthanc")  # and then Orthanc goes down too

    second, _ = node_for(pacs, fresh_registry.ws.root, holder, timeout=2.0, max_backoff=2.0)
    second.start()  # the service restarts while Orthanc is down
    try:
        wait_while_progressing(lambda: second.last_error is not None, "the node's first failed read", stall=STALL_S)
        assert not second.dicom_ready and second._thread is not None and second._thread.is_alive()
        assert second.cursor == cursor and entries(log) == []  # nothing taken, nothing lost
        services_sh(state, "start", "orthanc")  # Orthanc is back (same storage, same ports)
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
