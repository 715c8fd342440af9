"""The input check: may this decoded image go through the model, as ingest validation would let it train?

One rule, in one function (:func:`check_input`), so that ``medimg predict`` never scores an
image that ingest validation would have kept out of the training data. The limits are the ones
the Great Expectations suites apply to every manifest row (:mod:`medimg.validation.suite`,
configured by the ``validation`` section of params); the export step records those that applied to
the model's training data in its ONNX metadata (:data:`META_INPUT_CHECKS`, plus the modalities the
model is for in :data:`META_MODALITIES`), and predict reads them back from the model, never from
the local params.

Reasons, in the order they are checked (the first that applies is returned):

* ``non_finite``: a pixel is NaN or infinite (e.g. Float Pixel Data, DICOM PS3.3 C.7.6.3.1.8,
  holding NaN). Checked on the decoded pixels *before* the grey uint8 mapping, which would turn
  them into a constant (all-black) image: every min/max or percentile of an array with a NaN is
  NaN. Always checked, whatever the model's metadata says.
* ``modality_mismatch``: the file says its DICOM Modality (0008,0060) and it is not one the model
  is for. Files that cannot say (PNG, JPEG, a DICOM without Modality) are never refused for it.
* ``bit_depth_out_of_range``: bits stored (DICOM Bits Stored (0028,0101); 8 or 16 for PNG/JPEG;
  32/64 for float pixel data) outside ``bit_depth_range`` (the suite's ``bit_depth`` rule).
* ``size_out_of_range``: rows or columns of the source image outside ``original_side_range``
  (the suite's ``original_height``/``original_width`` rules).
* ``blank``: the standard deviation of the stored image (the contract's uint8 ``[size, size]``
  image, 0..255, exactly what ingest stores and the suite's ``pixel_std`` rule measures) is below
  ``min_pixel_std``: a blank or near-constant image. Needs the stored image; skipped without it.

A limit that is None is not checked: models exported before the limits were recorded carry
none, so only ``non_finite`` (and ``modality_mismatch`` when the modalities were recorded) applies
to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from medimg.artifacts import META_INPUT_CHECKS, META_MODALITIES

if TYPE_CHECKING:
    from medimg.config import ValidationConfig
    from medimg.data.images import DecodedImage


#: Every reason :func:`check_input` may give, with what it means.
REASONS: dict[str, str] = {
    "non_finite": "pixel values that are NaN or infinite: no grey value can be derived from them",
    "modality_mismatch": "the file's DICOM Modality is not one the model is for",
    "bit_depth_out_of_range": "bits stored outside the range the model's training data was validated for",
    "size_out_of_range": "rows or columns outside the range the model's training data was validated for",
    "blank": "blank or near-constant image: pixel standard deviation below the validation minimum",
}


@dataclass(frozen=True)
class InputRules:
    """The limits an input must meet; None means "not checked".

    ``min_pixel_std`` is in grey levels of the stored uint8 image (0..255); ``bit_depth_range``
    and ``original_side_range`` are inclusive ``(low, high)`` bounds in bits and pixels;
    ``modalities`` the DICOM Modality codes accepted (upper case).
    """

    min_pixel_std: float | None = None
    bit_depth_range: tuple[int, int] | None = None
    original_side_range: tuple[int, int] | None = None
    modalities: frozenset[str] | None = None

    @classmethod
    def from_validation(cls, validation: ValidationConfig, modalities: Iterable[str] | None = None) -> InputRules:
        """The rules of params' ``validation`` section (what the training data passed), with ``modalities``."""
        return cls(
            min_pixel_std=float(validation.min_pixel_std),
            bit_depth_range=(int(validation.bit_depth_range[0]), int(validation.bit_depth_range[1])),
            original_side_range=(int(validation.original_side_range[0]), int(validation.original_side_range[1])),
            modalities=None if modalities is None else frozenset(m.upper() for m in modalities),
        )

    def limits_json(self) -> dict:
        """The value of :data:`META_INPUT_CHECKS` (modalities go into :data:`META_MODALITIES`)."""
        return {
            "min_pixel_std": self.min_pixel_std,
            "bit_depth_range": list(self.bit_depth_range) if self.bit_depth_range is not None else None,
            "original_side_range": list(self.original_side_range) if self.original_side_range is not None else None,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> InputRules:
        """The rules an ONNX model's metadata records; absent keys (older models) leave limits unchecked.

        Raises ``ValueError`` when a key is present but malformed.
        """
        limits: dict = {}
        if META_INPUT_CHECKS in meta:
            data = json.loads(meta[META_INPUT_CHECKS])
            if not isinstance(data, dict):
                raise ValueError(f"{META_INPUT_CHECKS} is not a JSON object")
            if data.get("min_pixel_std") is not None:
                limits["min_pixel_std"] = float(data["min_pixel_std"])
            for key in ("bit_depth_range", "original_side_range"):
                if data.get(key) is not None:
                    low, high = data[key]
                    limits[key] = (int(low), int(high))
        if META_MODALITIES in meta:
            values = json.loads(meta[META_MODALITIES])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{META_MODALITIES} is not a JSON list of strings")
            limits["modalities"] = frozenset(v.upper() for v in values)
        return cls(**limits)

    def allowing(self, modalities: Iterable[str] = (), any_modality: bool = False) -> InputRules:
        """These rules with extra accepted modalities, or with no modality check at all."""
        if any_modality:
            return replace(self, modalities=None)
        extra = frozenset(m.strip().upper() for m in modalities)
        if self.modalities is None or not extra:
            return self
        return replace(self, modalities=self.modalities | extra)

    def describe(self) -> str:
        """One line for a terminal: which checks apply."""
        parts = ["non-finite pixels"]
        parts.append(
            "modality " + ", ".join(sorted(self.modalities)) if self.modalities is not None else "any modality"
        )
        if self.bit_depth_range is not None:
            parts.append(f"bits stored {self.bit_depth_range[0]}-{self.bit_depth_range[1]}")
        if self.original_side_range is not None:
            parts.append(f"sides {self.original_side_range[0]}-{self.original_side_range[1]} px")
        if self.min_pixel_std is not None:
            parts.append(f"pixel std >= {self.min_pixel_std:g}")
        return "; ".join(parts)


@dataclass(frozen=True)
class InputProblem:
    """Why an input is refused: ``reason`` one of :data:`REASONS`; ``detail`` holds no value that identifies."""

    reason: str
    detail: str


def check_input(image: DecodedImage, rules: InputRules, stored: np.ndarray | None = None) -> InputProblem | None:
    """The first problem of ``image`` under ``rules`` (module docstring, in that order), or None.

    ``image`` is the decoded file (:func:`medimg.preprocess.decode_file`), checked before any
    preprocessing; ``stored`` is its contract-size uint8 image (:func:`medimg.preprocess.prepare`),
    needed only for ``blank`` (skipped when None). Pure: reads its arguments, nothing else. The
    detail names modality codes, bit depths and sizes only, never a value that identifies anyone.
    """
    pixels = image.pixels
    if not np.isfinite(pixels).all():
        bad = int(pixels.size - np.count_nonzero(np.isfinite(pixels)))
        return InputProblem("non_finite", f"{bad} of {pixels.size} pixels are NaN or infinite")
    if rules.modalities is not None and image.modality is not None and image.modality.upper() not in rules.modalities:
        return InputProblem(
            "modality_mismatch", f"modality {image.modality}, the model is for {', '.join(sorted(rules.modalities))}"
        )
    if rules.bit_depth_range is not None:
        low, high = rules.bit_depth_range
        if not low <= image.bit_depth <= high:
            return InputProblem("bit_depth_out_of_range", f"{image.bit_depth} bits stored, expected {low}-{high}")
    if rules.original_side_range is not None:
        low, high = rules.original_side_range
        sides = (image.original_height, image.original_width)
        if not all(low <= side <= high for side in sides):
            return InputProblem("size_out_of_range", f"{sides[0]}x{sides[1]}, expected sides {low}-{high}")
    if rules.min_pixel_std is not None and stored is not None:
        std = float(np.asarray(stored).std())
        if std < rules.min_pixel_std:
            return InputProblem("blank", f"pixel std {std:.3g} below {rules.min_pixel_std:g}")
    return None
