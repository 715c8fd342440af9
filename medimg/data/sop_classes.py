"""Which DICOM files are images: the SOP Class rule that sets non-image objects aside as *skipped*.

A DICOM folder holds more than images. A CD/DVD export has a ``DICOMDIR`` (Media Storage
Directory Storage, ``1.2.840.10008.1.3.10``: an index of the other files, DICOM PS3.3 Annex F and
PS3.10 section 8.6); a PACS export adds structured reports, key object selections, presentation
states, encapsulated PDF/CDA/STL documents, raw data and waveforms. None of them is a bad or an
unlabelled image: they are not images at all, and counting them as quarantined would fail an
ingest for doing nothing wrong (a 12-image CD plus its DICOMDIR is 7.7% "bad").

The rule (:func:`non_image_object`), on the SOP Class UID of the object (the data set's
SOPClassUID, else the file meta's MediaStorageSOPClassUID) and pydicom's UID registry (the UIDs
of DICOM PS3.6 Annex A, with their names):

* Media Storage Directory Storage -> skipped, reason ``dicomdir``;
* an object with no pixel data element (Pixel Data, Float Pixel Data or Double Float Pixel Data,
  PS3.3 C.7.6.3) whose SOP Class is not an image storage SOP Class -> skipped, reason
  ``non_image_dicom``. Image storage SOP Classes are those PS3.4 Annex B.5 (Table B.5-1, the
  Standard Storage SOP Classes) names "... Image Storage" (CT, CR, DX, MR, Secondary Capture,
  VL Photographic, ...); every other registered SOP Class (the SR family, Key Object Selection,
  the Softcopy Presentation States, Encapsulated PDF/CDA/STL/OBJ/MTL, Raw Data, the Waveforms,
  Spatial Registration, RT Plan/Structure Set/records, measurements, protocols...) and private
  (unregistered) SOP Classes are not;
* everything else goes to the decoder: an image SOP Class without pixel data is a broken image
  (quarantined ``missing_pixel_data``), and a non-image SOP Class *with* pixel data (RT Dose,
  Segmentation, Parametric Map) is decoded like any image, as it was before this rule.

The pixel-data guard is what keeps the rule free of a hand list of pixel-bearing SOP Classes.
Only files with the DICOM Part 10 ``DICM`` marker are looked at; a file whose header cannot be
read is left to the decoder, which says why (PS3.10 section 7.1). What is returned is a reason
code and the public name of a SOP Class (a DICOM standard name, or the UID of a private class):
never a value that could identify a patient.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.uid import UID, MediaStorageDirectoryStorage

#: Reason codes for DICOM files that are not images (see the module docstring).
NON_IMAGE_REASONS: dict[str, str] = {
    "dicomdir": "a DICOMDIR: the media's directory of the other files (no pixels; DICOM PS3.10 section 8.6)",
    "non_image_dicom": "a DICOM object of a non-image SOP Class (report, presentation state, document, "
    "waveform, raw data...; DICOM PS3.4 Annex B)",
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_HEADER_TAGS = ("SOPClassUID", *_PIXEL_KEYWORDS)


@dataclass(frozen=True)
class NonImage:
    """Why a DICOM file is not an image: ``reason`` (a key of :data:`NON_IMAGE_REASONS`) and
    ``sop_class`` (the SOP Class's registry name, or its UID when private/unregistered)."""

    reason: str
    sop_class: str


def is_image_storage(uid: str) -> bool:
    """True for an image storage SOP Class: registered (PS3.6 Annex A) with "Image Storage" in its name
    (``CT Image Storage``, ``Digital X-Ray Image Storage - For Presentation``; PS3.4 Table B.5-1)."""
    known = UID(uid)
    return known.type == "SOP Class" and "Image Storage" in known.name


def sop_class_name(uid: str) -> str:
    """The registry name of a SOP Class UID (``Basic Text SR Storage``), or the UID itself when unregistered."""
    known = UID(uid)
    return known.name if known.type else str(uid)


def non_image_object(data: bytes) -> NonImage | None:
    """The reason a DICOM Part 10 file's ``data`` is not an image, or None (an image, not DICOM, or unreadable).

    Reads the header only (the values of large elements are not loaded): about 0.1-1 ms a file.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings can quote header values
            ds = pydicom.dcmread(io.BytesIO(data), defer_size=64, specific_tags=list(_HEADER_TAGS))
    except Exception:  # a header pydicom cannot read: the decoder reports it
        return None
    meta = getattr(ds, "file_meta", None)
    uid = str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else "") or "").strip()
    if not uid:
        return None
    if uid == MediaStorageDirectoryStorage:
        return NonImage("dicomdir", sop_class_name(uid))
    if any(keyword in ds for keyword in _PIXEL_KEYWORDS) or is_image_storage(uid):
        return None
    return NonImage("non_image_dicom", sop_class_name(uid))
