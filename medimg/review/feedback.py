"""Reviewed images into the training inbox: the case's image under the reader's label, with its provenance.

The inbox is ``data.inbox``, the folder the inbox watcher (``flows/watch_inbox.py``, ``medimg schedule``)
snapshots and the ingest of an ``image_folder`` source reads in the plain class-folder layout
(:func:`medimg.data.sources.scan_image_layout`: ``<inbox>/<class>/<file>``, class folders named by
``task.class_names``, any case). A review writes

* ``<inbox>/<reader's class>/review-<case id>.png``: the case's de-identified stored-size grey image (the
  bytes of the case's ``image.png``: pixels only); the ingest records the SHA-256 of these bytes in the
  manifest's ``sha256`` column, which is how a data version (and the lineage of a model trained on it) is
  traced back to the reviews it holds;
* ``<inbox>/<reader's class>/review-<case id>.provenance.json`` beside it: the reader's keyed pseudonym, the
  time, the label, the model (name, version, ONNX sha256) and what it said, the case id, the study, series
  and instance pseudonyms and the image's SHA-256. Not an image: the ingest lists it as skipped
  (``not_an_image_file``) and the watcher ignores it.

The sidecar is written first and the image last (each written aside and renamed into place), so the
watcher never sees an image without its provenance. No comment, name or tag value is written here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from medimg.review.cases import Case
from medimg.review.reviews import Review

FORMAT = 1
PROVENANCE_SUFFIX = ".provenance.json"


@dataclass(frozen=True)
class FeedbackExample:
    """One example written to the inbox: ``image`` and ``provenance`` (absolute paths), ``rel`` the image's path
    relative to the inbox (posix), ``sha256`` of the image's bytes."""

    image: Path
    provenance: Path
    rel: str
    sha256: str


def example_name(case_id: str) -> str:
    """The image's file name for a case: ``review-<case id>.png``."""
    return f"review-{case_id}.png"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_example(inbox: Path, case: Case, image_png: bytes, review: Review) -> FeedbackExample:
    """Write the case's image under ``review.reader_said`` into ``inbox`` with its provenance sidecar.

    ``image_png``: the case's ``image.png`` bytes. ``ValueError`` when the reader's class is not one of the
    case's classes or the review has no reader pseudonym (no pseudonymisation key: nothing is written)."""
    if review.reader_said not in case.class_names:
        raise ValueError(f"{review.reader_said!r} is not one of the model's classes {list(case.class_names)}")
    if not review.reader_pseudonym:
        raise ValueError("a training example needs the reader's pseudonym (a pseudonymisation key)")
    folder = Path(inbox) / review.reader_said
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / example_name(case.case_id)
    provenance = image.with_name(image.stem + PROVENANCE_SUFFIX)
    sha256 = hashlib.sha256(image_png).hexdigest()
    record = {
        "format": FORMAT,
        "source": "medimg review",
        "case_id": case.case_id,
        "label": review.reader_said,
        "reader_pseudonym": review.reader_pseudonym,
        "reviewed_at": review.time,
        "model_name": case.model_name,
        "model_version": case.model_version,
        "onnx_sha256": case.onnx_sha256,
        "model_said": case.predicted_class,
        "p_abnormal": case.p_abnormal,
        "predicted_at": case.predicted_at,
        "study_pseudonym": case.study,
        "series_pseudonym": case.series,
        "instance_pseudonym": case.instance,
        "image_sha256": sha256,
    }
    _write_atomic(provenance, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    _write_atomic(image, image_png)
    return FeedbackExample(image, provenance, image.relative_to(inbox).as_posix(), sha256)
