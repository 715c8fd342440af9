"""The review cases: every scored DICOM-node prediction, with the image the model saw, for the review pages.

A case is one folder ``<workspace>/serve/cases/<case id>/`` (:attr:`medimg.workspace.Workspace.cases`):

* ``case.json``: the :class:`Case` (the prediction, the model, pseudonyms; no tag value of the file);
* ``image.png``: the de-identified stored-size grey image (uint8, the pixels the model scored and nothing
  else: no text chunks, no DICOM header);
* ``gradcam.png`` / ``gradcam.json``: the Grad-CAM overlay, or why there is none, made on first view
  (:mod:`medimg.review.overlay`).

The case id is random (``secrets.token_urlsafe(12)``, 16 characters), never derived from a UID, so it says
nothing about the patient or study and cannot be guessed from them. A case folder is written aside and renamed
into place, so a reader never sees half a case. :meth:`CaseStore.add` is what the DICOM node calls (through
:meth:`CaseStore.recorder`); tests call it directly.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from medimg.serving.loaded_model import LoadedModel
from medimg.serving.prediction_log import LoggedPrediction

CASE_FILE = "case.json"
IMAGE_FILE = "image.png"
#: A case id: 16 characters of the URL-safe base64 alphabet (what ``secrets.token_urlsafe(12)`` gives).
CASE_ID = re.compile(r"^[A-Za-z0-9_-]{16}$")
FORMAT = 1


@dataclass(frozen=True)
class Case:
    """One scored prediction to review.

    ``case_id``: random, see the module docstring; ``created``: when the case was made and ``predicted_at``:
    the prediction log entry's time (ISO 8601 UTC); the model: ``model_name``, ``model_version``,
    ``onnx_sha256``, ``task_kind``, ``class_names`` (index = class), ``abnormal_classes``; the outcome:
    ``class_probabilities`` (softmax, in ``class_names`` order), ``p_abnormal`` (their sum over the abnormal
    classes), ``predicted_class``, ``abnormal`` (p_abnormal >= ``threshold``); ``study``, ``series``,
    ``instance``: keyed pseudonyms (:func:`medimg.data.deid.pseudonym`), ``modality`` its code; ``height``
    x ``width``: the stored image's size in pixels.
    """

    case_id: str
    created: str
    predicted_at: str
    model_name: str
    model_version: str
    onnx_sha256: str
    task_kind: str
    class_names: tuple[str, ...]
    abnormal_classes: tuple[str, ...]
    class_probabilities: tuple[float, ...]
    p_abnormal: float
    predicted_class: str
    abnormal: bool
    threshold: float
    study: str | None
    series: str | None
    instance: str | None
    modality: str | None
    height: int
    width: int

    def probability_of(self, class_name: str) -> float:
        """The softmax probability of ``class_name``; ``KeyError`` for a class the model does not have."""
        return self.class_probabilities[self.class_names.index(class_name)]

    def is_abnormal_class(self, class_name: str) -> bool:
        """True when ``class_name`` is one of the model's abnormal classes."""
        return class_name in self.abnormal_classes


def _case_from_json(raw: dict) -> Case:
    raw = {k: v for k, v in raw.items() if k != "format"}
    for key in ("class_names", "abnormal_classes", "class_probabilities"):
        raw[key] = tuple(raw[key])
    return Case(**raw)


def png_bytes(image: np.ndarray) -> bytes:
    """A grey uint8 ``[H, W]`` image as PNG bytes (pixels only; PIL writes no text chunk unless asked).

    ``ValueError`` for anything but a 2-D uint8 array."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"a case image is grey uint8 [H, W], got {image.dtype} {image.shape}")
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


class CaseStore:
    """The cases under ``root`` (``<workspace>/serve/cases``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, case_id: str) -> Path | None:
        """The case's folder, or ``None`` when ``case_id`` is malformed or names no case."""
        if not CASE_ID.fullmatch(case_id):
            return None
        folder = self.root / case_id
        return folder if (folder / CASE_FILE).is_file() else None

    def add(
        self, entry: LoggedPrediction, image: np.ndarray, abnormal_classes: tuple[str, ...], task_kind: str
    ) -> Case:
        """A new case for a scored ``entry`` of the prediction log and the stored-size grey ``image`` (uint8
        ``[H, W]``) it scored; ``abnormal_classes`` and ``task_kind`` of the model that scored it.

        ``ValueError`` for an entry without an outcome (refused, or no probabilities) or a bad image."""
        if entry.class_probabilities is None or entry.p_abnormal is None or entry.predicted_class is None:
            raise ValueError("only a scored prediction becomes a case (this entry has no outcome)")
        if entry.model_name is None or entry.model_version is None or entry.onnx_sha256 is None:
            raise ValueError("a case needs the model's name, version and sha256")
        png = png_bytes(image)
        names = tuple(entry.class_probabilities)
        case = Case(
            case_id=secrets.token_urlsafe(12),
            created=datetime.now(UTC).isoformat(timespec="milliseconds"),
            predicted_at=entry.time,
            model_name=entry.model_name,
            model_version=entry.model_version,
            onnx_sha256=entry.onnx_sha256,
            task_kind=task_kind,
            class_names=names,
            abnormal_classes=tuple(abnormal_classes),
            class_probabilities=tuple(float(entry.class_probabilities[c]) for c in names),
            p_abnormal=float(entry.p_abnormal),
            predicted_class=entry.predicted_class,
            abnormal=bool(entry.abnormal),
            threshold=float(entry.threshold if entry.threshold is not None else float("nan")),
            study=entry.study,
            series=entry.series,
            instance=entry.instance,
            modality=entry.modality,
            height=int(image.shape[0]),
            width=int(image.shape[1]),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        aside = self.root / f".new-{case.case_id}"
        aside.mkdir(mode=0o700)
        try:
            (aside / IMAGE_FILE).write_bytes(png)
            (aside / CASE_FILE).write_text(json.dumps({"format": FORMAT, **asdict(case)}, indent=1), encoding="utf-8")
            os.rename(aside, self.root / case.case_id)
        except BaseException:
            shutil.rmtree(aside, ignore_errors=True)
            raise
        return case

    def recorder(self, entry: LoggedPrediction, image: np.ndarray, loaded: LoadedModel) -> None:
        """:meth:`add` in the DICOM node's ``on_scored`` form: the model's classes from ``loaded``."""
        self.add(entry, image, tuple(loaded.model.abnormal_classes), loaded.model.task_kind)

    def get(self, case_id: str) -> Case | None:
        """The case ``case_id``, or ``None`` (malformed id, no such case)."""
        folder = self.folder(case_id)
        if folder is None:
            return None
        return _case_from_json(json.loads((folder / CASE_FILE).read_text(encoding="utf-8")))

    def image(self, case_id: str) -> bytes | None:
        """The case's image as PNG bytes, or ``None`` when there is no such case."""
        folder = self.folder(case_id)
        return (folder / IMAGE_FILE).read_bytes() if folder is not None else None

    def pixels(self, case_id: str) -> np.ndarray | None:
        """The case's image as grey uint8 ``[H, W]``, or ``None`` when there is no such case."""
        data = self.image(case_id)
        if data is None:
            return None
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8).copy()

    def all(self) -> list[Case]:
        """Every case, newest first (by ``created``)."""
        if not self.root.is_dir():
            return []
        found = [c for c in (self.get(p.name) for p in self.root.iterdir() if p.is_dir()) if c is not None]
        return sorted(found, key=lambda c: c.created, reverse=True)
