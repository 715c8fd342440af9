"""Scoring with an exported medimg ONNX model: the session, its metadata, and registered versions' files.

The library side of inference, shared by the pipeline (the gate step scores the champion on the
candidate's test images, the drift step on the new data) and by ``medimg predict``
(:mod:`medimg.predict`, which adds the file handling). The model's own metadata
(:mod:`medimg.artifacts` ``META_*`` keys, written by :func:`medimg.steps.export.metadata`) says how
to use it: the preprocessing contract, the decision threshold, the class names, the task kind,
the abnormal classes and the input name. One definition of the outputs (issue 12): class
probabilities are softmax(logits) ``[N, K]`` in ``class_names`` order; the abnormality probability
p_abnormal is their sum over the abnormal classes, in [0, 1]; a case is flagged abnormal when
p_abnormal >= the threshold. The predicted class is decided by that threshold for a binary task
and by arg-max for a multiclass one. Models exported before the task was recorded (no
``medimg.abnormal_classes``) are binary with the abnormal class at index 1, as they were scored then.

A model is for images (input ``[N, C, H, W]``) or volumes (``[N, C, D, H, W]``): its contract's
``dims`` (2 or 3, :mod:`medimg.volume_contract`) says which, and must agree with the rank of the
ONNX input.

A segmentation model (``medimg.task_kind`` ``segmentation``, :func:`medimg.steps.export.segmentation_metadata`)
gives logits per voxel ``[N, K, D, H, W]``: :meth:`OnnxModel.voxel_probabilities` (softmax over the K classes) and
:meth:`OnnxModel.segment` (the arg-max label mask); it has no threshold and no per-case abnormality
probability, so the classification methods refuse it. Its contract is the segmentation contract
(:mod:`medimg.segmentation.contract`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medimg import preprocess
from medimg.artifacts import (
    META_ABNORMAL_CLASSES,
    META_CLASS_NAMES,
    META_INPUT_LAYOUT,
    META_INPUT_NAME,
    META_PREPROCESSING,
    META_TASK_KIND,
    META_THRESHOLD,
    ONNX_FILE,
    TAG_ONNX_SHA256,
)
from medimg.config import PreprocessConfig
from medimg.export.onnx_export import INPUT_NAME, onnx_logits, session
from medimg.input_checks import InputRules
from medimg.probabilities import abnormal_probability, decide, softmax
from medimg.segmentation import contract as segmentation_contract

if TYPE_CHECKING:
    from medimg.model_record import ModelRecord
    from medimg.registry import VersionInfo

#: Items scored per ONNX Runtime call when the caller does not say, by the contract's ``dims``: a batch of
#: 16 volumes of 64^3 through the 3D ResNet already takes about a gigabyte of activations.
DEFAULT_BATCH_SIZE = {2: 256, 3: 16}
#: Volumes segmented per ONNX Runtime call when the caller does not say: a U-Net keeps full-resolution
#: activations for every voxel, and volumes to predict rarely share a shape.
SEGMENTATION_BATCH_SIZE = 1
SEGMENTATION = "segmentation"


class ModelMetadataError(ValueError):
    """The ONNX file lacks the medimg metadata needed to preprocess and interpret its input."""


class OnnxModel:
    """An ONNX Runtime session plus what the file's metadata says about using it.

    The file is parsed once, by ONNX Runtime; the metadata comes from the session. Raises
    :class:`ModelMetadataError` when the preprocessing contract, threshold or class names are
    missing or unreadable, the task kind or abnormal classes do not fit the class names, or the
    recorded input checks cannot be read, or the contract's ``dims`` does not fit the rank of the ONNX
    input (4 for images, 5 for volumes).

    Attributes besides the session: ``class_names`` (index = class; segmentation: the mask's label values),
    ``task_kind`` (``binary`` | ``multiclass`` | ``segmentation``), ``abnormal_classes`` (names, in class
    order; segmentation: the structures, ``class_names[1:]``), ``abnormal_indices``,
    ``positive_class`` (binary: the abnormal class, which may be index 0; otherwise None),
    ``threshold`` (on p_abnormal; NaN for segmentation, whose mask is the arg-max), ``contract`` and
    ``config`` (preprocessing), ``dims`` (2: images ``[N, C, H, W]``; 3: volumes ``[N, C, D, H, W]``),
    ``input_layout`` (e.g. ``NCDHW float32``), ``input_rules``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.session = session(self.path)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        segmenting = meta.get(META_TASK_KIND) == SEGMENTATION
        try:
            contract = json.loads(meta[META_PREPROCESSING])
            self.threshold = float("nan") if segmenting else float(meta[META_THRESHOLD])
            self.class_names = list(json.loads(meta[META_CLASS_NAMES]))
        except (KeyError, ValueError, TypeError) as err:
            raise ModelMetadataError(f"{self.path.name}: not a medimg model, metadata incomplete ({err})") from None
        self.task_kind, self.abnormal_classes = _task(meta, self.class_names, self.path.name)
        self.abnormal_indices = tuple(self.class_names.index(c) for c in self.abnormal_classes)
        self.positive_class = self.abnormal_classes[0] if self.task_kind == "binary" else None
        try:
            self.input_rules = InputRules.from_metadata(meta)  # what the model may be given (medimg.input_checks)
        except (ValueError, TypeError) as err:
            raise ModelMetadataError(f"{self.path.name}: input checks in the metadata unreadable ({err})") from None
        self.contract = contract
        self.config = _config(contract, segmenting, self.path.name)
        self.input_name = meta.get(META_INPUT_NAME, INPUT_NAME)
        self.dims = self.config.dims
        self.input_layout = meta.get(META_INPUT_LAYOUT, contract.get("layout", "NCHW float32"))
        rank = len(self.session.get_inputs()[0].shape)
        if rank != self.dims + 2:
            raise ModelMetadataError(
                f"{self.path.name}: the preprocessing contract is for {self.dims}D inputs but the ONNX input has "
                f"rank {rank} (images: 4, [N, C, H, W]; volumes: 5, [N, C, D, H, W])"
            )
        self.metadata = meta

    @property
    def is_segmentation(self) -> bool:
        """True for a segmentation model (logits per voxel, :meth:`voxel_probabilities`)."""
        return self.task_kind == SEGMENTATION

    def voxel_probabilities(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Segmentation: softmax over the classes, float32 ``[N, K, D, H, W]`` (``class_names`` order), for network
        inputs ``[N, C, D, H, W]`` (:func:`medimg.segmentation.contract.network_input`; D, H, W multiples of the
        contract's ``pad_multiple``), ``batch_size`` volumes at a time (None: :data:`SEGMENTATION_BATCH_SIZE`).
        ``ValueError`` for a classification model."""
        self._require_segmentation("voxel_probabilities")
        logits = onnx_logits(
            self.session, x.astype(np.float32, copy=False), batch_size or SEGMENTATION_BATCH_SIZE, self.input_name
        )
        return softmax(logits).astype(np.float32)

    def segment(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Segmentation: the label mask uint8 ``[N, D, H, W]`` (arg-max of the logits over the K classes; the value
        is the class index, 0 background) for network inputs ``[N, C, D, H, W]``. ``ValueError`` for a
        classification model."""
        self._require_segmentation("segment")
        logits = onnx_logits(
            self.session, x.astype(np.float32, copy=False), batch_size or SEGMENTATION_BATCH_SIZE, self.input_name
        )
        return logits.argmax(axis=1).astype(np.uint8)

    def _require_segmentation(self, method: str) -> None:
        if not self.is_segmentation:
            raise ValueError(
                f"{self.path.name} is a {self.dims}D {self.task_kind} model: {method} is for segmentation models "
                "(use class_probabilities)"
            )

    def _refuse_segmentation(self, method: str) -> None:
        if self.is_segmentation:
            raise ValueError(
                f"{self.path.name} is a segmentation model (logits per voxel): {method} is for classification "
                "models; use voxel_probabilities or segment"
            )

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider the session runs on (e.g. ``CPUExecutionProvider``)."""
        return self.session.get_providers()[0]

    def label(self, probability: float) -> str:
        """Binary tasks: the class decided by the abnormality ``probability``: the abnormal class at or above the
        threshold, else the other one. ``ValueError`` for a multiclass model (see :meth:`predicted_classes`).
        """
        self._refuse_segmentation("label")
        if self.task_kind != "binary":
            raise ValueError(f"{self.path.name}: multiclass model, the class is the arg-max (predicted_classes)")
        row = np.empty((1, 2))
        row[0, self.abnormal_indices[0]] = probability
        row[0, 1 - self.abnormal_indices[0]] = 1.0 - probability
        return self.predicted_classes(row)[0]

    def class_probabilities(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """softmax(logits) float64 ``[N, K]`` (``class_names`` order) for preprocessed inputs ``[N, C, H, W]``
        (volumes: ``[N, C, D, H, W]``), run ``batch_size`` at a time (None: :data:`DEFAULT_BATCH_SIZE`).
        """
        self._refuse_segmentation("class_probabilities")
        batch_size = batch_size or DEFAULT_BATCH_SIZE[self.dims]
        return softmax(onnx_logits(self.session, x.astype(np.float32, copy=False), batch_size, self.input_name))

    def abnormal_from(self, probs: np.ndarray) -> np.ndarray:
        """p_abnormal ``[N]`` from class probabilities ``[N, K]``: their sum over the abnormal classes."""
        self._refuse_segmentation("abnormal_from")
        return abnormal_probability(probs, self.abnormal_indices)

    def abnormal_probability(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """p_abnormal float64 ``[N]`` in [0, 1] for preprocessed inputs ``[N, C, H, W]`` (or ``[N, C, D, H, W]``)."""
        return self.abnormal_from(self.class_probabilities(x, batch_size))

    def probabilities(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """The abnormality probability ``[N]`` (:meth:`abnormal_probability`), what gate and drift compare.

        For a binary model with the abnormal class at index 1 (every model exported before issue
        12) this is softmax(logits)[:, 1], as it always was.
        """
        return self.abnormal_probability(x, batch_size)

    def predicted_classes(self, probs: np.ndarray) -> list[str]:
        """The decided class name per row of class probabilities ``[N, K]`` (:func:`medimg.probabilities.decide`):
        binary by the threshold on p_abnormal, multiclass by arg-max."""
        self._refuse_segmentation("predicted_classes")
        decided = decide(probs, self.task_kind, self.abnormal_indices, self.threshold)
        return [self.class_names[i] for i in decided]


def _config(contract: dict, segmenting: bool, name: str) -> PreprocessConfig:
    """The preprocessing config of a model's contract; a segmentation model's must be a 3D segmentation contract
    (:mod:`medimg.segmentation.contract`). ``ModelMetadataError`` otherwise."""
    if segmenting != segmentation_contract.is_segmentation_contract(contract):
        raise ModelMetadataError(
            f"{name}: {META_TASK_KIND} {'segmentation' if segmenting else 'classification'} but the preprocessing "
            f"contract is {'not ' if segmenting else ''}a segmentation contract"
        )
    try:
        if segmenting:
            return segmentation_contract.config_from_contract(contract)
        return preprocess.config_from_contract(contract)
    except (KeyError, ValueError, TypeError) as err:
        raise ModelMetadataError(f"{name}: preprocessing contract unreadable ({err})") from None


def _task(meta: dict[str, str], class_names: list[str], name: str) -> tuple[str, list[str]]:
    """(task kind, abnormal class names in class order) from a model's metadata.

    Without ``medimg.abnormal_classes`` (exported before issue 12) the model is binary with the
    abnormal class at index 1. A segmentation model's abnormal classes are its structures, every
    class but the background at index 0. ``ModelMetadataError`` for a kind other than binary,
    multiclass or segmentation, an abnormal class that is not a class, a binary model without two
    classes and one abnormal, or a segmentation model whose structures are not ``class_names[1:]``.
    """
    if META_ABNORMAL_CLASSES not in meta:
        if len(class_names) != 2:
            raise ModelMetadataError(
                f"{name}: {len(class_names)} classes but no {META_ABNORMAL_CLASSES}: cannot tell which are abnormal"
            )
        return "binary", [class_names[1]]
    try:
        abnormal = [str(c) for c in json.loads(meta[META_ABNORMAL_CLASSES])]
    except (ValueError, TypeError) as err:
        raise ModelMetadataError(f"{name}: {META_ABNORMAL_CLASSES} unreadable ({err})") from None
    kind = meta.get(META_TASK_KIND, "binary" if len(class_names) == 2 else "multiclass")
    if kind == SEGMENTATION:
        if len(class_names) < 2 or abnormal != class_names[1:]:
            raise ModelMetadataError(
                f"{name}: a segmentation model's {META_ABNORMAL_CLASSES} must be its structures "
                f"{class_names[1:]} (class_names[1:]), got {abnormal}"
            )
        return kind, abnormal
    unknown = [c for c in abnormal if c not in class_names]
    if kind not in ("binary", "multiclass") or unknown or not abnormal:
        raise ModelMetadataError(
            f"{name}: {META_TASK_KIND} {kind!r} with {META_ABNORMAL_CLASSES} {abnormal} does not fit "
            f"{META_CLASS_NAMES} {class_names}"
        )
    if kind == "binary" and (len(class_names) != 2 or len(abnormal) != 1):
        raise ModelMetadataError(f"{name}: a binary model needs two classes and one abnormal, got {abnormal}")
    return kind, sorted(abnormal, key=class_names.index)


def cached_version_model(info: ModelRecord | VersionInfo, cache_root: Path) -> OnnxModel:
    """A registered version's model (its record, or the registry's handle of it), downloaded into ``cache_root`` once
    (:func:`cached_version_onnx`)."""
    return OnnxModel(cached_version_onnx(info, cache_root))


def cached_version_onnx(info: ModelRecord | VersionInfo, cache_root: Path) -> Path:
    """A registered version's ONNX file (its record, or the registry's handle of it), downloaded into ``cache_root``
    once; its path.

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
    return path
