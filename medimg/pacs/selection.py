"""Which instances a PACS sends the DICOM node may go through a model: the rules on the header, before any pixel.

Pure: a pydicom header (:class:`pydicom.dataset.Dataset`, pixels not needed), the model's
:class:`~medimg.input_checks.InputRules` and the body part the model is for give a :class:`Refusal` or None.
The rules, in the order they are checked (the first that applies is the reason):

* ``own_result``: Manufacturer (0008,0070) is ``medimg``: a result medimg stored (an SR, a SEG), which must
  never be fed back into a model (no loops), whatever its SOP Class;
* ``non_image_object``: the SOP Class is not an image storage class (PS3.4 Annex B; a Structured Report, a
  Segmentation, a Presentation State, a Key Object Selection, an encapsulated PDF, RT objects...; see
  :func:`medimg.data.sop_classes.is_image_storage`), or the header names no SOP Class;
* ``modality_mismatch``: the header's Modality (0008,0060) is not one the model is for
  (:attr:`InputRules.modalities`; a header without Modality, or a model that records no modalities, passes),
  the rule :func:`medimg.input_checks.check_input` applies after decoding;
* ``body_part_mismatch``: Body Part Examined (0018,0015) and the model's body part (ONNX ``medimg.body_part``)
  are both known and differ (compared as DICOM code strings: trimmed, upper case).

Everything else (decoding, bits, size, blank images, ...) is decided by medimg predict's own path
(:func:`medimg.predict.prepare_input`). A refusal's ``detail`` holds codes only (modality, body part as a
code string, SOP Class name), never a name, an identifier, a UID or a date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from medimg.data.sop_classes import is_image_storage, sop_class_name
from medimg.input_checks import InputRules

#: The Manufacturer (0008,0070) of every object medimg creates (SR, SEG).
MANUFACTURER = "medimg"
#: The refusal reason of medimg's own results (an SR or SEG coming back through the PACS): never an input.
OWN_RESULT = "own_result"
#: What the Series Description of every object medimg creates starts with.
SERIES_DESCRIPTION_PREFIX = "medimg AI result"

#: Every reason :func:`refusal` may give, with what it means.
SELECTION_REASONS: dict[str, str] = {
    "own_result": "a result medimg made (Manufacturer medimg): never an input",
    "non_image_object": "not an image (SR, SEG, presentation state, key object selection, document, ...)",
    "modality_mismatch": "the header's Modality is not one the model is for",
    "body_part_mismatch": "the header's Body Part Examined is not the one the model is for",
}

_CODE = re.compile(r"^[A-Z0-9 _]{1,16}$")


@dataclass(frozen=True)
class Refusal:
    """Why an instance does not go through the model: ``reason`` a key of :data:`SELECTION_REASONS`;
    ``detail`` codes only, safe to log."""

    reason: str
    detail: str


def refusal(header: Dataset, rules: InputRules, body_part: str | None) -> Refusal | None:
    """The first rule (module docstring) ``header`` breaks for a model with ``rules`` and ``body_part``, or None.

    ``header``: the instance's data set (pixel data not needed); ``body_part``: the model's Body Part
    Examined code (``CHEST``), None when the model records none.
    """
    if str(header.get("Manufacturer", "") or "").strip().lower() == MANUFACTURER:
        return Refusal(OWN_RESULT, "Manufacturer medimg")
    sop_class = _sop_class(header)
    if not sop_class:
        return Refusal("non_image_object", "no SOP Class UID")
    if not is_image_storage(sop_class):
        return Refusal("non_image_object", sop_class_name(sop_class))
    modality = code_string(header.get("Modality"))
    if rules.modalities is not None and modality is not None and modality not in rules.modalities:
        return Refusal(
            "modality_mismatch", f"modality {modality}, the model is for {', '.join(sorted(rules.modalities))}"
        )
    wanted = code_string(body_part)
    found = code_string(header.get("BodyPartExamined"))
    if wanted is not None and found is not None and found != wanted:
        return Refusal("body_part_mismatch", f"body part {found}, the model is for {wanted}")
    return None


def code_string(value: object) -> str | None:
    """A DICOM code string value (CS: upper case letters, digits, space, underscore; at most 16), trimmed and
    upper-cased; None when empty or when it is not one (free text typed into a coded field is not trusted)."""
    text = str(value or "").strip().upper()
    return text if _CODE.match(text) else None


def _sop_class(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    value = header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return str(value or "").strip()
