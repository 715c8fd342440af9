"""A classification model's outcome as a DICOM Comprehensive 3D SR (TID 1500) that goes back to the source's study.

Pure: the source headers and the outcome in, a :class:`highdicom.sr.Comprehensive3DSR` out (made by highdicom,
DICOM PS3.16 TID 1500 "Measurement Report").

What the document holds:

* **observation context**: a device observer (DCM 121007 "Device") named for the model, manufacturer
  ``medimg``, with a UID derived from the model's name, version and ONNX sha256;
* **procedure reported**: SCT 363679005 "Imaging procedure"; the **image library** (TID 1600, optional in
  TID 1500) lists every source image when highdicom can describe them all (TID 1601 needs, e.g., a
  radiograph's Imager Pixel Spacing, which many headers lack), else it is left out;
* **one measurement group** (TID 1501, :class:`highdicom.sr.MeasurementsAndQualitativeEvaluations`):

  - tracking identifier ``medimg <model name>`` and a new tracking UID;
  - finding type: binary models: the abnormal class; multiclass models: the predicted class (codes below);
  - algorithm identification (TID 4019): Algorithm Name the model name, Algorithm Version its registry
    version, Algorithm Parameters ``onnx_sha256=<hex>``;
  - qualitative evaluations: the finding (binary: the abnormal class, multiclass: the predicted class) with
    value SCT 52101004 "Present" when the model flags the image abnormal, else SCT 272519000 "Absent"; and
    ``Predicted class`` (99MEDIMG) with the predicted class's code;
  - measurements, each in UCUM ``{probability}`` (a dimensionless number in [0, 1]): ``Probability of
    <class>`` for every class (softmax of the logits, the model's class order), ``Probability of
    abnormality`` (p_abnormal: the sum over the abnormal classes) and ``Decision threshold`` (on p_abnormal;
    flagged abnormal when p_abnormal >= it);
  - source images (``Source`` items, SourceImageForMeasurementGroup): every source image.

Codes: SNOMED CT where one is standard (:data:`CLASS_CODES`: pneumonia 233604007, normal 17621005); every
other concept is in the private scheme ``99MEDIMG`` (PS3.3 8.2: a designator starting "99"), code value the
class name. **Identity** of the object (what :mod:`medimg.pacs.selection` uses to keep results out of the
input): Manufacturer ``medimg``, Manufacturer's Model Name the model name, Software Versions the model
version, Series Description starting ``medimg AI result``; new Series and SOP Instance UIDs.

The patient and study attributes are the source's (highdicom copies them from the first source): the
report goes back to the archive the source came from. A source lacking a type 2 attribute of the Patient
or General Study module gets it empty, on a copy. highdicom's and pydicom's log records stay in their own
loggers while the object is made (they can quote header values).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medimg.pacs.selection import MANUFACTURER, SERIES_DESCRIPTION_PREFIX
from medimg.segmentation.dicom_seg import Algorithm, fill_type2, quiet

#: The private coding scheme of the concepts that have no standard code.
CODING_SCHEME = "99MEDIMG"
#: Series Number of an SR series (a derived series, numbered apart from the acquisition's).
SR_SERIES_NUMBER = 9902
#: Class names with a standard SNOMED CT code (lower case name -> code).
CLASS_CODES: dict[str, hd.sr.CodedConcept] = {
    "pneumonia": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
    "normal": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
}
PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
PREDICTED_CLASS = hd.sr.CodedConcept("PREDICTED-CLASS", CODING_SCHEME, "Predicted class")
P_ABNORMAL = hd.sr.CodedConcept("P-ABNORMAL", CODING_SCHEME, "Probability of abnormality")
THRESHOLD = hd.sr.CodedConcept("THRESHOLD", CODING_SCHEME, "Decision threshold")


@dataclass(frozen=True)
class ReportedOutcome:
    """What the report says about the source images.

    ``class_probabilities``: ``(class name, softmax probability)`` in the model's class order;
    ``p_abnormal``: their sum over ``abnormal_classes``; ``predicted_class``; ``abnormal``: p_abnormal >=
    ``threshold``; ``task_kind``: ``binary`` or ``multiclass``.
    """

    class_probabilities: tuple[tuple[str, float], ...]
    p_abnormal: float
    predicted_class: str
    abnormal: bool
    threshold: float
    abnormal_classes: tuple[str, ...]
    task_kind: str

    @property
    def finding(self) -> str:
        """The class the finding names: the abnormal class of a binary model, the predicted class otherwise."""
        if self.task_kind == "binary" and len(self.abnormal_classes) == 1:
            return self.abnormal_classes[0]
        return self.predicted_class


def class_code(name: str) -> hd.sr.CodedConcept:
    """The code of a class name: SNOMED CT from :data:`CLASS_CODES`, else ``(name, 99MEDIMG, name)``."""
    return CLASS_CODES.get(name.strip().lower()) or hd.sr.CodedConcept(name[:64], CODING_SCHEME, name[:64])


def probability_code(name: str) -> hd.sr.CodedConcept:
    """The measurement name of a class's probability: ``(P-<name>, 99MEDIMG, Probability of <name>)``."""
    return hd.sr.CodedConcept(f"P-{name}"[:64], CODING_SCHEME, f"Probability of {name}"[:64])


def structured_report(
    sources: Sequence[Dataset], outcome: ReportedOutcome, algorithm: Algorithm, instance_number: int = 1
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR (module docstring) of ``outcome`` for ``sources`` (their headers; pixels are not
    needed: an image, or every slice of a series, all of one study), made by ``algorithm``.

    ``ValueError`` for no sources, or sources that lack a Study, Series or SOP Instance UID or a SOP Class UID.
    """
    if not sources:
        raise ValueError("no source images")
    for source in sources:
        if not all(source.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")):
            raise ValueError("a source lacks a Study, Series or SOP Instance UID or a SOP Class UID")
    headers = [fill_type2(_header(source)) for source in sources]
    with quiet():
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm.name, algorithm.version, algorithm.onnx_sha256]),
            name=algorithm.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name[:64],
        )
        context = hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        )
        finding = class_code(outcome.finding)
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"medimg {algorithm.name}"[:64]),
            finding_type=finding,
            algorithm_id=hd.sr.AlgorithmIdentification(
                name=algorithm.name[:64],
                version=algorithm.version[:64],
                parameters=[f"onnx_sha256={algorithm.onnx_sha256}"],
            ),
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(finding, codes.SCT.Present if outcome.abnormal else codes.SCT.Absent),
                hd.sr.QualitativeEvaluation(PREDICTED_CLASS, class_code(outcome.predicted_class)),
            ],
            measurements=[
                *(
                    hd.sr.Measurement(probability_code(n), float(p), PROBABILITY_UNIT)
                    for n, p in outcome.class_probabilities
                ),
                hd.sr.Measurement(P_ABNORMAL, float(outcome.p_abnormal), PROBABILITY_UNIT),
                hd.sr.Measurement(THRESHOLD, float(outcome.threshold), PROBABILITY_UNIT),
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in headers],
        )
        report = hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=codes.SCT.ImagingProcedure,
            imaging_measurements=[group],
            referenced_images=headers if _describable(headers) else None,
        )
        return hd.sr.Comprehensive3DSR(
            evidence=headers,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm.name[:64],
            software_versions=algorithm.version[:64],
            series_description=f"{SERIES_DESCRIPTION_PREFIX}: {algorithm.name} {algorithm.version}"[:64],
            is_complete=True,
        )


def _describable(headers: Sequence[Dataset]) -> bool:
    """True when highdicom can make every header's Image Library entry (TID 1601): it needs, e.g., Imager Pixel
    Spacing of a radiograph or Slice Thickness of a CT slice, which many real headers lack."""
    try:
        for header in headers:
            hd.sr.ImageLibraryEntryDescriptors(header)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return False
    return True


def _header(source: Dataset) -> Dataset:
    """A copy of ``source`` without its pixel data (the SR needs the header only)."""
    header = Dataset()
    header.update({tag: copy.deepcopy(elem) for tag, elem in source.items() if tag.group != 0x7FE0})
    if hasattr(source, "file_meta"):
        header.file_meta = copy.deepcopy(source.file_meta)
    return header
