"""Which instances the DICOM node lets through to a model: the header rules of :mod:`medimg.pacs.selection`.

Real headers from the shared data (chest radiographs, a CT slice), changed in memory where a case needs it.
"""

from __future__ import annotations

import copy

import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from datapaths import DATA_DIR
from medimg.input_checks import InputRules
from medimg.pacs.selection import SELECTION_REASONS, code_string, refusal

CHEST = InputRules(modalities=frozenset({"CR", "DX"}))
XRAY = DATA_DIR / "dicom/xray/RG1_J2KI.dcm"
CT = DATA_DIR / "dicom/ct/CT_small.dcm"


def header(path=XRAY, **changes) -> pydicom.Dataset:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def reason(ds, rules=CHEST, body_part="CHEST") -> str | None:
    found = refusal(ds, rules, body_part)
    if found is not None:
        assert found.reason in SELECTION_REASONS
        for value in (ds.get("PatientName"), ds.get("PatientID"), ds.get("StudyInstanceUID"), ds.get("SOPInstanceUID")):
            assert not value or str(value) not in found.detail  # codes only
    return found.reason if found is not None else None


def test_a_chest_radiograph_goes_through_a_chest_model():
    assert reason(header()) is None
    assert reason(header(BodyPartExamined="chest ")) is None  # a code string, compared trimmed and upper case
    assert reason(header(BodyPartExamined=None)) is None  # unknown body part: not refused for it
    assert reason(header(BodyPartExamined="ABDOMEN"), body_part=None) is None  # the model records none
    assert reason(header(Modality=None)) is None  # cannot say: left to the decoder's rules
    assert reason(header(path=CT), rules=InputRules()) is None  # a model without recorded modalities


def test_a_ct_slice_is_refused_by_a_radiograph_model():
    found = refusal(header(path=CT), CHEST, "CHEST")
    assert found is not None and found.reason == "modality_mismatch"
    assert found.detail == "modality CT, the model is for CR, DX"


def test_another_body_part_is_refused_when_both_are_known():
    found = refusal(header(BodyPartExamined="ABDOMEN"), CHEST, "CHEST")
    assert found is not None and found.reason == "body_part_mismatch" and "ABDOMEN" in found.detail
    # free text in the coded field is not trusted (nor quoted): the image is not refused for it
    assert reason(header(BodyPartExamined="Thorax (John)")) is None
    assert code_string("Thorax (John)") is None and code_string(" chest") == "CHEST"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"Manufacturer": "medimg"}, "own_result"),  # our own result, even with an image SOP Class
        ({"Manufacturer": "MEDIMG ", "SOPClassUID": SegmentationStorage}, "own_result"),
        ({"SOPClassUID": SegmentationStorage}, "non_image_object"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.22"}, "non_image_object"),  # Enhanced SR
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "non_image_object"),  # Encapsulated PDF
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.11.1"}, "non_image_object"),  # Grayscale Softcopy Presentation State
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59"}, "non_image_object"),  # Key Object Selection
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, None),  # Secondary Capture Image: an image
    ],
)
def test_results_and_non_image_objects_never_reach_the_model(changes, expected):
    assert reason(header(**changes)) == expected


def test_a_header_without_a_sop_class_is_not_taken_for_an_image():
    ds = header(SOPClassUID=None)
    ds.file_meta = copy.deepcopy(ds.file_meta)
    del ds.file_meta.MediaStorageSOPClassUID
    found = refusal(ds, CHEST, "CHEST")
    assert found is not None and found.reason == "non_image_object" and found.detail == "no SOP Class UID"
    # the file meta's Media Storage SOP Class UID stands in for a missing SOP Class UID
    assert reason(header(SOPClassUID=None)) is None


def test_the_own_result_rule_comes_before_the_modality_rule():
    assert reason(header(path=CT, Manufacturer="medimg")) == "own_result"
    assert reason(header(path=CT, SOPClassUID=SegmentationStorage)) == "non_image_object"
