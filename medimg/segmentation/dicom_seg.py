"""A predicted label mask as a DICOM Segmentation object (highdicom) that goes back to the source series' PACS.

What the object holds (PS3.3 A.51, Segmentation IOD; made by :class:`highdicom.seg.Segmentation`):

* **BINARY**, one segment per structure (label value ``i`` of ``class_names`` is segment number ``i``,
  Segment Label the class name), Segmented Property Category "Anatomical Structure" (SCT 91723000),
  Segmented Property Type a code of the private scheme :data:`CODING_SCHEME` (code value the label value,
  meaning the class name): medimg does not know the structure's SNOMED code;
* **the algorithm** (Segment Algorithm Type AUTOMATIC, Segmentation Algorithm Identification Sequence):
  Algorithm Name the model name, Algorithm Version its version, Algorithm Family "Artificial Intelligence"
  (DCM 123110), Algorithm Source ``medimg``, Algorithm Parameters ``onnx_sha256=<hex>``;
* **frames**: every source slice for every segment, empty ones included (``omit_empty_frames=False``), so
  Number of Frames = slices x segments whatever the mask; frame ``s`` of segment ``k`` lies on source slice
  ``s`` (sorted along the slice normal, as the volume's axis 0 is) with that slice's position, orientation
  and pixel spacing, and references its SOP Instance (Derivation Image / Source Image Sequence);
* **references**: Referenced Series Sequence = the source SeriesInstanceUID and every SOP instance of it;
  the patient and study attributes are the source's (highdicom copies them), which is allowed because the
  object goes back to the source's own archive. The SEG's own Series and SOP Instance UIDs are new.

Source headers that lack a type 2 attribute of the Patient or General Study module (PS3.3 C.7.1.1, C.7.2.1;
e.g. Patient's Birth Date) get it empty, as type 2 allows, on the in-memory copy only.

Only a series of single-frame slices stacked without correction maps slice for slice onto a SEG; otherwise
:class:`SegNotWritten` says why (:data:`SEG_SKIP_REASONS`). Nothing here logs: highdicom's and pydicom's
log records stay in their own loggers while the object is made, since they can quote header values.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medimg import __version__
from medimg.data.volumes import Volume
from medimg.pacs.selection import MANUFACTURER, SERIES_DESCRIPTION_PREFIX

#: The private coding scheme (PS3.3 8.2: a designator starting "99") of the Segmented Property Type codes.
CODING_SCHEME = "99MEDIMG"
#: Series Number of the SEG series (a derived series, numbered apart from the acquisition's).
SEG_SERIES_NUMBER = 9901
#: Why a DICOM input got no DICOM SEG (its NIfTI mask, volumes and overlay are still written).
SEG_SKIP_REASONS: dict[str, str] = {
    "multiframe_source": "the input is a multi-frame object: medimg writes a DICOM SEG for series of single-frame "
    "slices only",
    "corrected_source": "the series was corrected onto a regular grid (gantry tilt, irregular spacing): the mask's "
    "slices are not the source's",
    "source_mismatch": "the source slices' positions or sizes do not match the volume's grid",
    "missing_uids": "the source lacks a Study, Series or SOP Instance UID the SEG must reference",
}
#: Type 2 attributes of the Patient and General Study modules highdicom copies from the source.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_POSITION_TOLERANCE_MM = 1e-3


class SegNotWritten(Exception):
    """No DICOM SEG for this input: ``reason`` is a key of :data:`SEG_SKIP_REASONS` (no header value, no path)."""

    def __init__(self, reason: str) -> None:
        if reason not in SEG_SKIP_REASONS:
            raise ValueError(f"unknown reason {reason!r}; expected one of {sorted(SEG_SKIP_REASONS)}")
        self.reason = reason
        super().__init__(f"{reason} ({SEG_SKIP_REASONS[reason]})")


@dataclass(frozen=True)
class Algorithm:
    """What made the mask: the model ``name`` and ``version`` (registry, or the ONNX metadata) and the ONNX file's
    ``onnx_sha256`` (hex)."""

    name: str
    version: str
    onnx_sha256: str


def source_slices(files: Sequence[Path], volume: Volume) -> list[Dataset]:
    """The headers (no pixels) of ``files``, one single-frame slice each, in the order of ``volume``'s axis 0.

    Sorted by Image Position (Patient) along the volume's slice direction (``volume.direction[:, 0]``), as
    :mod:`medimg.data.slice_stack` ordered them. Raises :class:`SegNotWritten` (``multiframe_source``,
    ``corrected_source``, ``source_mismatch``, ``missing_uids``).
    """
    if volume.source_kind != "dicom_series":
        raise SegNotWritten("multiframe_source")
    if volume.corrections:
        raise SegNotWritten("corrected_source")
    with quiet():
        headers = [pydicom.dcmread(Path(f), stop_before_pixels=True) for f in files]
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise SegNotWritten("multiframe_source")
    if not all(h.get("StudyInstanceUID") and h.get("SeriesInstanceUID") and h.get("SOPInstanceUID") for h in headers):
        raise SegNotWritten("missing_uids")
    normal = np.asarray(volume.direction)[:, 0]
    try:
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError):
        raise SegNotWritten("source_mismatch") from None
    order = np.argsort(positions @ normal, kind="stable")
    ordered = [headers[i] for i in order]
    depth, rows, columns = volume.shape
    sizes = {(int(h.Rows), int(h.Columns)) for h in ordered}
    if len(ordered) != depth or sizes != {(rows, columns)}:
        raise SegNotWritten("source_mismatch")
    if np.abs(positions[order[0]] - np.asarray(volume.origin)).max() > _POSITION_TOLERANCE_MM:
        raise SegNotWritten("source_mismatch")
    return [fill_type2(header) for header in ordered]


def fill_type2(header: Dataset) -> Dataset:
    """``header`` (changed in place and returned) with every type 2 attribute of the Patient and General Study
    modules it lacks added empty, as type 2 allows: highdicom copies them from a source into a SEG or SR."""
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def segmentation(
    mask: np.ndarray, sources: Sequence[Dataset], class_names: Sequence[str], algorithm: Algorithm
) -> hd.seg.Segmentation:
    """The DICOM Segmentation (module docstring) of ``mask`` uint8 ``[slices, rows, columns]`` (label values, on the
    grid of ``sources``, :func:`source_slices`) with one segment per structure ``class_names[1:]``.

    ``ValueError`` when the mask's shape is not the sources' or it holds a value that is not a label.
    """
    mask = np.asarray(mask)
    if mask.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"mask shape {mask.shape} does not fit {len(sources)} source slices")
    structures = list(class_names[1:])
    if mask.size and int(mask.max()) > len(structures):
        raise ValueError(f"mask value {int(mask.max())} is not a label of {list(class_names)}")
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version[:64],
        source=MANUFACTURER,
        parameters={"onnx_sha256": algorithm.onnx_sha256},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(value=str(label), scheme_designator=CODING_SCHEME, meaning=name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for label, name in enumerate(structures, start=1)
    ]
    with quiet():
        return hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm.name[:64],
            software_versions=__version__,
            device_serial_number=algorithm.onnx_sha256[:16],
            series_description=f"{SERIES_DESCRIPTION_PREFIX}: {algorithm.name} {algorithm.version} segmentation"[:64],
            content_description=f"{algorithm.name} {algorithm.version}"[:64],
            omit_empty_frames=False,
        )


def write_dicom_seg(
    mask: np.ndarray,
    files: Sequence[Path],
    volume: Volume,
    class_names: Sequence[str],
    algorithm: Algorithm,
    path: Path,
) -> Path:
    """``mask`` uint8 on ``volume``'s grid (the series read from ``files``) as a DICOM SEG at ``path``.

    Raises :class:`SegNotWritten` when the series does not map slice for slice (:func:`source_slices`).
    """
    seg = segmentation(mask, source_slices(files, volume), class_names, algorithm)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        seg.save_as(path)
    return path


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """highdicom's and pydicom's log records and warnings stay out of the caller's logs (they can quote values)."""
    loggers = [logging.getLogger(name) for name in ("highdicom", "pydicom")]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.propagate = propagate
