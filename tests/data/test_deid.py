"""De-identification: keyed pseudonyms, the secret, and that safe_metadata leaks nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import warnings

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from datapaths import DATA_DIR
from medimg.data.deid import (
    DEMO_SECRET,
    PHI_KEYWORDS,
    MissingSecretError,
    pseudonym,
    safe_metadata,
    secret_from_env,
)

DICOM_FILES = sorted((DATA_DIR / "dicom").rglob("*.dcm"))
SECRET = b"test-secret-0123456789abcdef"
OTHER_SECRET = b"another-secret-0123456789abcdef"

# Chosen here, independently of PHI_KEYWORDS, so the test does not just mirror the module.
IDENTIFYING = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "DeviceSerialNumber",
    "StationName",
    "StudyDescription",
    "SeriesDescription",
}
ALLOWED_KEYS = {
    "patient_pseudonym",
    "study_pseudonym",
    "series_pseudonym",
    "modality",
    "photometric",
    "rows",
    "columns",
    "bits_stored",
    "body_part",
    "view_position",
}


def _string_values(ds: Dataset) -> dict[str, set[str]]:
    """keyword -> every non-empty string value in the data set, nested sequences included."""
    found: dict[str, set[str]] = {}

    def visit(dataset: Dataset) -> None:
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    visit(item)
                continue
            if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or element.value is None:
                continue
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                text = str(value).strip()
                if text:
                    found.setdefault(element.keyword or str(element.tag), set()).add(text)

    visit(ds)
    if hasattr(ds, "file_meta"):
        visit(ds.file_meta)
    return found


def test_pseudonym_format_and_definition():
    value = pseudonym("1CT1", SECRET, "pat")
    assert re.fullmatch(r"pat-[0-9a-f]{16}", value)
    expected = hmac.new(SECRET, b"pat\x001CT1", hashlib.sha256).hexdigest()[:16]
    assert value == f"pat-{expected}"


def test_pseudonyms_are_stable_keyed_and_kind_separated():
    assert pseudonym("9RG1", SECRET, "pat") == pseudonym("9RG1", SECRET, "pat")
    assert pseudonym("9RG1 ", SECRET, "pat") == pseudonym("9RG1", SECRET, "pat")  # DICOM padding
    assert pseudonym("9RG1", SECRET, "pat") != pseudonym("9RG1", OTHER_SECRET, "pat")
    assert pseudonym("9RG1", SECRET, "pat")[4:] != pseudonym("9RG1", SECRET, "study")[6:]
    assert pseudonym("9RG1", SECRET, "pat") != pseudonym("9RG2", SECRET, "pat")
    # not the unkeyed hash, which anyone could recompute from a list of candidate IDs
    assert pseudonym("9RG1", SECRET, "pat")[4:] not in hashlib.sha256(b"9RG1").hexdigest()


def test_pseudonym_rejects_bad_input():
    with pytest.raises(ValueError):
        pseudonym("", SECRET, "pat")
    with pytest.raises(ValueError):
        pseudonym("   ", SECRET, "pat")
    with pytest.raises(ValueError):
        pseudonym("x", b"short", "pat")
    with pytest.raises(TypeError):
        pseudonym("x", "a string secret, not bytes", "pat")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pseudonym("x", SECRET, "Bad Kind")


def test_secret_from_env(monkeypatch):
    monkeypatch.delenv("MEDIMG_DEID_SECRET", raising=False)
    with pytest.raises(MissingSecretError, match="MEDIMG_DEID_SECRET"):
        secret_from_env()
    assert secret_from_env(demo=True) == DEMO_SECRET
    monkeypatch.setenv("MY_SECRET_VAR", "too-short")
    with pytest.raises(MissingSecretError, match="MY_SECRET_VAR"):
        secret_from_env("MY_SECRET_VAR", demo=True)  # a mistyped secret never falls back to demo
    monkeypatch.setenv("MEDIMG_DEID_SECRET", "a-properly-long-project-secret-value")
    assert secret_from_env() == b"a-properly-long-project-secret-value"
    assert secret_from_env(demo=True) == b"a-properly-long-project-secret-value"


def test_phi_keywords_cover_annex_e_basics():
    assert len(PHI_KEYWORDS) >= 40
    assert all(tag_for_keyword(k) is not None for k in PHI_KEYWORDS), "every entry a real DICOM keyword"
    assert IDENTIFYING <= PHI_KEYWORDS
    assert {"PatientBirthDate", "DeviceSerialNumber", "OperatorsName", "AccessionNumber"} <= PHI_KEYWORDS
    # fields safe_metadata keeps must not be on the list
    assert not {"Modality", "Rows", "Columns", "BodyPartExamined", "ViewPosition"} & PHI_KEYWORDS


@pytest.mark.parametrize("path", DICOM_FILES, ids=lambda p: p.name)
def test_safe_metadata_contains_no_identifying_value(path):
    ds = pydicom.dcmread(path)
    meta = safe_metadata(ds, SECRET)
    assert (
        {
            "patient_pseudonym",
            "study_pseudonym",
            "series_pseudonym",
            "modality",
            "photometric",
            "rows",
            "columns",
            "bits_stored",
        }
        <= set(meta)
        <= ALLOWED_KEYS
    )
    text = json.dumps(meta)
    values = _string_values(ds)
    phi = {v for keyword, vs in values.items() if keyword in IDENTIFYING | PHI_KEYWORDS for v in vs}
    assert phi, "the sample files carry identifying-looking values to test against"
    for value in phi:
        if len(value) >= 4:
            assert value not in text, f"{path.name}: a PHI value leaked"
        else:
            assert value not in {str(v) for v in meta.values()}, f"{path.name}: a PHI value leaked"
    # stronger: no string from the file at all, except the coded fields that are meant to pass
    kept = {str(meta[k]) for k in ("modality", "photometric", "body_part", "view_position") if meta.get(k)}
    for keyword, vs in values.items():
        for value in vs:
            if len(value) >= 6 and value not in kept:
                assert value not in text, f"{path.name}: {keyword} leaked"
    assert meta["patient_pseudonym"] == pseudonym(str(ds.PatientID), SECRET, "pat")
    assert meta["study_pseudonym"] == pseudonym(str(ds.StudyInstanceUID), SECRET, "study")
    assert meta["rows"] == ds.Rows and meta["columns"] == ds.Columns
    assert meta["modality"] == ds.Modality


def test_sample_values_and_grouping():
    siim = DATA_DIR / "dicom" / "xray" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    fake = DATA_DIR / "dicom" / "xray" / "Fake_MONOHR1.dcm"
    a, b = safe_metadata(pydicom.dcmread(siim), SECRET), safe_metadata(pydicom.dcmread(fake), SECRET)
    assert a["patient_pseudonym"] == b["patient_pseudonym"]  # same patient -> same group
    assert a["body_part"] == "CHEST" and a["view_position"] == "PA"
    assert (a["modality"], a["photometric"], b["photometric"]) == ("CR", "MONOCHROME2", "MONOCHROME1")
    mr = safe_metadata(pydicom.dcmread(DATA_DIR / "dicom" / "mr" / "MR_small.dcm"), SECRET)
    assert "body_part" not in mr and "view_position" not in mr
    assert mr["bits_stored"] == 16
    assert mr["patient_pseudonym"] != a["patient_pseudonym"]
    other = safe_metadata(pydicom.dcmread(siim), OTHER_SECRET)
    assert other["patient_pseudonym"] != a["patient_pseudonym"]


def test_missing_ids_and_free_text_in_coded_fields():
    ds = Dataset()
    ds.Modality = "CR"
    with warnings.catch_warnings():  # pydicom warns (quoting the value!) about the bad CS
        warnings.simplefilter("ignore")
        ds.BodyPartExamined = "jane doe chest, bed 4"  # free text typed into a coded field
    ds.ViewPosition = "AP"
    ds.Rows, ds.Columns = 256, 256
    meta = safe_metadata(ds, SECRET)
    assert meta["patient_pseudonym"] is None and meta["study_pseudonym"] is None
    assert "body_part" not in meta and meta["view_position"] == "AP"
    assert meta["bits_stored"] is None and meta["photometric"] is None
    assert "jane" not in json.dumps(meta).lower()
