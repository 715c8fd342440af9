"""The SR the DICOM node stores: built from real chest radiograph headers, written, and read back with pydicom and
highdicom (:mod:`medimg.pacs.structured_report`)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from datapaths import DATA_DIR
from medimg.input_checks import InputRules
from medimg.pacs.selection import MANUFACTURER, SERIES_DESCRIPTION_PREFIX, refusal
from medimg.pacs.structured_report import ReportedOutcome, structured_report
from medimg.segmentation.dicom_seg import Algorithm

ALGORITHM = Algorithm("pneumonia-classifier", "7", "0123456789abcdef" * 4)
SOURCES = [
    DATA_DIR / "dicom/xray/RG1_J2KI.dcm",
    DATA_DIR / "dicom/xray/Fake_MONOHR1.dcm",
    DATA_DIR / "dicom/ct/CT_small.dcm",
]


def binary(p: float, threshold: float = 0.5) -> ReportedOutcome:
    abnormal = p >= threshold
    return ReportedOutcome(
        (("normal", 1 - p), ("pneumonia", p)),
        p,
        "pneumonia" if abnormal else "normal",
        abnormal,
        threshold,
        ("pneumonia",),
        "binary",
    )


def written(sr: Dataset) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer)
    return buffer.getvalue()


def items(sequence) -> Iterator[Dataset]:
    """Every content item of a content tree, depth first."""
    for item in sequence:
        yield item
        yield from items(item.get("ContentSequence", []))


def text_values(ds: Dataset, code_value: str) -> list[str]:
    return [
        str(i.TextValue)
        for i in items(ds.ContentSequence)
        if i.get("ConceptNameCodeSequence") and i.ConceptNameCodeSequence[0].CodeValue == code_value
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_the_sr_holds_the_outcome_and_the_algorithm_and_goes_to_the_source_study(path):
    source = pydicom.dcmread(path, stop_before_pixels=True)
    data = written(structured_report([source], binary(0.8125, threshold=0.625), ALGORITHM))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == Comprehensive3DSRStorage and ds.Modality == "SR"
    # the study's identity (it goes back to that archive), its own series and instance
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.PatientName == source.PatientName
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
    # medimg's identity, what keeps the SR out of the node's input
    assert ds.Manufacturer == MANUFACTURER and ds.ManufacturerModelName == "pneumonia-classifier"
    assert ds.SoftwareVersions == "7" and ds.SeriesDescription.startswith(SERIES_DESCRIPTION_PREFIX)
    assert refusal(ds, InputRules(), None).reason == "own_result"
    # TID 4019 algorithm identification: name, version, the ONNX sha256
    assert text_values(ds, "111001") == ["pneumonia-classifier"]  # Algorithm Name
    assert text_values(ds, "111003") == ["7"]  # Algorithm Version
    assert text_values(ds, "111002") == [f"onnx_sha256={ALGORITHM.onnx_sha256}"]  # Algorithm Parameters
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    report = hd.sr.srread(io.BytesIO(data))
    (group,) = report.content.get_image_measurement_groups()
    assert group.finding_type.value == "233604007" and group.finding_type.scheme_designator == "SCT"
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values == {
        "Probability of normal": (pytest.approx(0.1875), "{probability}"),
        "Probability of pneumonia": (0.8125, "{probability}"),
        "Probability of abnormality": (0.8125, "{probability}"),
        "Decision threshold": (0.625, "{probability}"),
    }
    evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["Pneumonia"].value == "52101004"  # Present
    assert evaluations["Predicted class"].meaning == "Pneumonia"
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [source.SOPInstanceUID]
    assert [s.referenced_sop_class_uid for s in group.source_images] == [source.SOPClassUID]
    assert report.get_evidence() == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source.SOPClassUID)
    ]


def test_below_the_threshold_the_finding_is_absent_and_the_class_normal():
    source = pydicom.dcmread(SOURCES[0], stop_before_pixels=True)
    report = hd.sr.srread(io.BytesIO(written(structured_report([source], binary(0.25), ALGORITHM))))
    (group,) = report.content.get_image_measurement_groups()
    evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
    assert evaluations["Pneumonia"].value == "272519000"  # Absent
    assert evaluations["Predicted class"].value == "17621005"  # SCT Normal


def test_a_multiclass_outcome_names_the_predicted_class_and_every_probability():
    source = pydicom.dcmread(SOURCES[0], stop_before_pixels=True)
    probs = (("glioma", 0.1), ("meningioma", 0.6), ("notumor", 0.2), ("pituitary", 0.1))
    outcome = ReportedOutcome(probs, 0.8, "meningioma", True, 0.5, ("glioma", "meningioma", "pituitary"), "multiclass")
    report = hd.sr.srread(io.BytesIO(written(structured_report([source], outcome, ALGORITHM))))
    (group,) = report.content.get_image_measurement_groups()
    assert (group.finding_type.value, group.finding_type.scheme_designator) == ("meningioma", "99MEDIMG")
    measured = {m.name.value: m.value for m in group.get_measurements()}
    assert measured == {
        "P-glioma": 0.1,
        "P-meningioma": 0.6,
        "P-notumor": 0.2,
        "P-pituitary": 0.1,
        "P-ABNORMAL": 0.8,
        "THRESHOLD": 0.5,
    }


def test_a_series_is_reported_once_with_every_slice_as_source():
    slices = []
    for index in range(3):  # three slices of one series, made from the real CT header
        ds = pydicom.dcmread(SOURCES[2], stop_before_pixels=True)
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["slice", str(index)])
        slices.append(ds)
    report = hd.sr.srread(io.BytesIO(written(structured_report(slices, binary(0.5), ALGORITHM))))
    (group,) = report.content.get_image_measurement_groups()
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [s.SOPInstanceUID for s in slices]


def test_sources_are_not_changed_and_missing_type2_attributes_are_filled():
    source = pydicom.dcmread(SOURCES[0], stop_before_pixels=True)
    del source.PatientBirthDate, source.AccessionNumber
    before = source.to_json()
    ds = pydicom.dcmread(io.BytesIO(written(structured_report([source], binary(0.5), ALGORITHM))))
    assert source.to_json() == before
    assert ds.PatientBirthDate == "" and ds.AccessionNumber == ""


def test_sources_without_identifiers_are_refused():
    source = pydicom.dcmread(SOURCES[0], stop_before_pixels=True)
    with pytest.raises(ValueError, match="no source"):
        structured_report([], binary(0.5), ALGORITHM)
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="SOP Instance UID"):
        structured_report([source], binary(0.5), ALGORITHM)
