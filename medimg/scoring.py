"""Scoring with an exported medimg ONNX model: the session, its metadata, and registered versions' files.

The library side of inference, shared by the pipeline (the gate step scores the champion on the
candidate's test images, the drift step on the new data) and by ``medimg predict``
(:mod:`medimg.predict`, which adds the file handling). The model's own metadata
(:mod:`medimg.artifacts` ``META_*`` keys, written by :func:`medimg.steps.export.metadata`) says how
to use it: the preprocessing contract, the decision threshold, the class names and the input
name. Probabilities are softmax(logits)[:, 1], the positive class's, in [0, 1].
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medimg import preprocess
from medimg.artifacts import (
    META_CLASS_NAMES,
    META_INPUT_NAME,
    META_PREPROCESSING,
    META_THRESHOLD,
    ONNX_FILE,
    TAG_ONNX_SHA256,
)
from medimg.export.onnx_export import INPUT_NAME, onnx_logits, session, softmax_positive
from medimg.input_checks import InputRules

if TYPE_CHECKING:
    from medimg.model_record import ModelRecord
    from medimg.registry import VersionInfo


class ModelMetadataError(ValueError):
    """The ONNX file lacks the medimg metadata needed to preprocess and interpret its input."""


class OnnxModel:
    """An ONNX Runtime session plus what the file's metadata says about using it.

    The file is parsed once, by ONNX Runtime; the metadata comes from the session. Raises
    :class:`ModelMetadataError` when the preprocessing contract, threshold or class names are
    missing or unreadable, or the recorded input checks cannot be read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.session = session(self.path)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            contract = json.loads(meta[META_PREPROCESSING])
            self.threshold = float(meta[META_THRESHOLD])
            self.class_names = list(json.loads(meta[META_CLASS_NAMES]))
        except (KeyError, ValueError, TypeError) as err:
            raise ModelMetadataError(f"{self.path.name}: not a medimg model, metadata incomplete ({err})") from None
        try:
            self.input_rules = InputRules.from_metadata(meta)  # what the model may be given (medimg.input_checks)
        except (ValueError, TypeError) as err:
            raise ModelMetadataError(f"{self.path.name}: input checks in the metadata unreadable ({err})") from None
        self.contract = contract
        self.config = preprocess.config_from_contract(contract)
        self.input_name = meta.get(META_INPUT_NAME, INPUT_NAME)
        self.metadata = meta

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider the session runs on (e.g. ``CPUExecutionProvider``)."""
        return self.session.get_providers()[0]

    def label(self, probability: float) -> str:
        """The class name for a positive-class ``probability``: the positive class at or above the threshold."""
        return self.class_names[1] if probability >= self.threshold else self.class_names[0]

    def probabilities(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """softmax(logits)[:, 1] for preprocessed inputs ``[N, C, H, W]``, run ``batch_size`` at a time."""
        logits = onnx_logits(self.session, x.astype(np.float32, copy=False), batch_size, self.input_name)
        return softmax_positive(logits)


def cached_version_model(info: ModelRecord | VersionInfo, cache_root: Path) -> OnnxModel:
    """A registered version's model (its record, or the registry's handle of it), downloaded into ``cache_root`` once.

    A registered version's file never changes, and the download is moved into place only when
    complete (and, when the version is tagged with its sha256, only when it matches, as ``medimg
    pull`` checks it), so a file already there is reused: drift and gate score the champion from
    one download per retrain. The folder names the model, version and (when tagged) sha256.
    Raises :class:`medimg.pull.IntegrityError` when the download does not match its sha256 tag.
    """
    # here: scoring a local file (medimg predict model.onnx) needs neither MLflow nor pull (about 1 s of imports)
    from medimg import registry
    from medimg.pull import fetch_verified_onnx

    expected = info.tags.get(TAG_ONNX_SHA256, "")
    sha = expected[:16]
    folder = Path(cache_root) / info.name / (f"v{info.version}-{sha}" if sha else f"v{info.version}")
    path = folder / ONNX_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".partial-") as partial:
            downloaded = (
                fetch_verified_onnx(info.name, info.version, expected, Path(partial))
                if sha
                else registry.download_onnx(info.name, info.version, Path(partial))
            )
            downloaded.replace(path)
    return OnnxModel(path)
