"""``medimg predict``: ONNX Runtime inference over DICOM, PNG and JPEG files, from the model's metadata.

This module scores images with a 2D model; a 3D model (contract ``dims`` 3) scores NIfTI files,
``.npz`` volumes and DICOM series folders through :mod:`medimg.predict_volumes`, into the same rows.
A volume file given to a 2D model gets the reason ``volume_for_2d_model`` (and an image given to a
3D model ``image_for_3d_model``, :data:`DIMENSION_REASONS`).

The preprocessing comes only from the ONNX file's own ``medimg.preprocessing`` contract
(:func:`medimg.preprocess.config_from_contract`), never from ``params.yaml``, so a model predicts
the way it was exported whatever the local configuration says. Each file goes through exactly
the functions ingest used for the training images: :func:`medimg.preprocess.decode_file`
(:func:`~medimg.data.dicom.decode_dicom` or :func:`~medimg.data.images.decode_raster`), the input
check (below), :func:`medimg.preprocess.prepare` (grey uint8 by the contract's rules, resize
policy, resize, filters) and then
:func:`medimg.preprocess.apply` (scale, normalise, channels).

Promises:

* a file that cannot be used becomes a row with ``error`` set to its :class:`BadImage` reason
  code (``truncated``, ``not_an_image``, ...; ``not_found`` and ``unreadable`` for a path that
  cannot be read) and no probability; the batch goes on;
* so does a file that decodes but that ingest validation would have kept out of the model's
  training data, or that the model is not for: :func:`medimg.input_checks.check_input` with the
  rules the model's own metadata records (:attr:`OnnxModel.input_rules`), reasons ``non_finite``,
  ``modality_mismatch``, ``bit_depth_out_of_range``, ``size_out_of_range``, ``blank``. The
  decoded pixels are checked before the grey uint8 mapping (which would make NaN pixels an
  all-black image), the stored-size image for ``blank``. Models exported before these limits
  were recorded get only the ``non_finite`` check (and ``modality_mismatch`` if they record
  ``medimg.modalities``). ``allow_modalities`` / ``any_modality`` (``medimg predict
  --allow-modality CT`` / ``--any-modality``) are the caller's explicit override of the modality
  rule; PNG and JPEG files, which cannot say their modality, are never refused for it;
* every other row has each class's probability ``p_<class>`` (softmax(logits), in the model's
  ``class_names`` order), ``abnormal_probability`` (p_abnormal: their sum over the model's
  abnormal classes, in [0, 1]), ``abnormal`` (p_abnormal >= the threshold stored in the model)
  and ``predicted_class`` (binary: the abnormal class when flagged abnormal, else the other one;
  multiclass: arg-max). ``probability`` and ``label``, the columns of earlier versions, stay:
  they are p_abnormal and the predicted class (for the default pneumonia task exactly
  softmax(logits)[:, 1] and the class by the threshold, as before);
* rows come back in input order (folders expanded in sorted order);
* the session runs on CUDA where ONNX Runtime has it, otherwise on the CPU; :attr:`OnnxModel.provider`
  says which one actually runs.

Which file is which kind is read from its bytes (the ``DICM`` marker at offset 128), not its
name, so extension-less DICOM files work. Folders are searched recursively for ``.dcm``,
``.dicom``, ``.png``, ``.jpg``, ``.jpeg`` and extension-less files; hidden files are skipped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medimg import preprocess
from medimg.config import PreprocessConfig
from medimg.data.images import BadImage
from medimg.data.sources import IMAGE_SUFFIXES
from medimg.input_checks import InputRules, check_input
from medimg.scoring import OnnxModel

if TYPE_CHECKING:
    from medimg.model_record import ModelRecord

#: The columns of every output, first and in this order (those of earlier versions); :func:`columns` adds the rest.
FIELDS = ("file", "probability", "label", "error")
TASK_FIELDS = ("predicted_class", "abnormal_probability", "abnormal")
#: The last column of a 3D model's output: which volume of ``file`` the row is (:mod:`medimg.predict_volumes`).
VOLUME_FIELD = "volume"
#: Volume files by name: NIfTI (``.nii``, ``.nii.gz``) and numpy ``.npz`` archives of volumes.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npz")
#: The input does not have the model's number of dimensions.
DIMENSION_REASONS: dict[str, str] = {
    "volume_for_2d_model": "a volume (NIfTI, .npz) given to a 2D model: it takes images (DICOM, PNG, JPEG)",
    "image_for_3d_model": "a 2D image (PNG, JPEG, a single-frame DICOM) given to a 3D model: it takes NIfTI files, "
    ".npz volumes and folders holding DICOM series",
}


@dataclass(frozen=True)
class Prediction:
    """One file's outcome, or None for every value and the ``error`` reason.

    ``probability`` is p_abnormal and ``label`` the predicted class (also readable as
    :attr:`abnormal_probability` and :attr:`predicted_class`); ``class_probabilities`` maps each
    class name to its softmax probability; ``abnormal`` is p_abnormal >= the model's threshold.
    """

    file: str
    probability: float | None
    label: str | None
    error: str | None = None
    class_probabilities: dict[str, float] | None = None
    abnormal: bool | None = None
    volume: str | None = None  # 3D models: which volume of ``file`` (npz key[index], series pseudonym); else None

    @property
    def abnormal_probability(self) -> float | None:
        """p_abnormal: the class probabilities summed over the model's abnormal classes (= ``probability``)."""
        return self.probability

    @property
    def predicted_class(self) -> str | None:
        """Binary: by the threshold; multiclass: arg-max (= ``label``)."""
        return self.label


def load_grey_uint8(path: str | Path, config: PreprocessConfig | None = None) -> np.ndarray:
    """One file -> grey uint8 ``[H, W]`` at its own size, by the contract's intensity rules.

    Raises :class:`BadImage` (with ``.reason``) when the file is unusable.
    """
    config = config or PreprocessConfig()
    return preprocess.grey_uint8(preprocess.decode_file(Path(path), config), config)


def is_volume_file(path: str | Path) -> bool:
    """True for a name ending in one of :data:`VOLUME_SUFFIXES` (any case)."""
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES)


def scored(model: OnnxModel, x: np.ndarray, items: Sequence[tuple[str, str | None]]) -> list[Prediction]:
    """One :class:`Prediction` per ``(file, volume)`` of ``items`` for its preprocessed input in ``x`` ``[N, C, ...]``:
    every class's probability, p_abnormal, the decided class and the abnormality flag."""
    probs = model.class_probabilities(x)
    decided = model.predicted_classes(probs)
    return [
        Prediction(
            file,
            float(p_abnormal),
            name,
            class_probabilities=dict(zip(model.class_names, map(float, row), strict=True)),
            abnormal=bool(p_abnormal >= model.threshold),
            volume=volume,
        )
        for (file, volume), row, p_abnormal, name in zip(items, probs, model.abnormal_from(probs), decided, strict=True)
    ]


@dataclass(frozen=True)
class PreparedInput:
    """One input through decoding, the input check and the contract, or the reason it stopped.

    ``file``: the name it is reported under; ``tensor``: the model's input ``[1, C, H, W]`` float32
    (:func:`medimg.preprocess.apply`); ``stored``: the contract's grey uint8 ``[size, size]`` image
    (grey levels 0-255, what ingest stores), set once the image got that far, also when ``blank``
    refused it; ``error``: the reason code (:class:`BadImage` reasons, ``not_found``, ``unreadable``,
    ``decode_error`` and those of :func:`medimg.input_checks.check_input`), None when ``tensor`` is set.
    """

    file: str
    tensor: np.ndarray | None
    stored: np.ndarray | None = None
    error: str | None = None


def prepare_input(model: OnnxModel, path: str | Path, rules: InputRules, data: bytes | None = None) -> PreparedInput:
    """Decode one DICOM, PNG or JPEG input and check and preprocess it for ``model``: what every 2D input goes
    through (:func:`predict_files`, the DICOM node, the HTTP service), never raising for a bad input.

    ``data``: the input's bytes when they are in memory (``path`` then only names it in messages);
    ``rules``: the model's :attr:`~OnnxModel.input_rules`, with the caller's overrides. The pixels are
    checked before the grey uint8 mapping (which would turn NaN into black), ``blank`` on the stored image.
    """
    path = Path(path)
    try:
        decoded = preprocess.decode_file(path, model.config, data=data)
        problem = check_input(decoded, rules)  # before grey uint8, which would turn NaN into black
        if problem is not None:
            return PreparedInput(str(path), None, None, problem.reason)
        grey = preprocess.prepare(decoded, model.config)  # uint8 [size, size], as ingest stores it
        problem = check_input(decoded, rules, grey)  # and blank, on the stored image
        if problem is not None:
            return PreparedInput(str(path), None, grey, problem.reason)
        return PreparedInput(str(path), preprocess.apply(grey, model.config).numpy(), grey)
    except BadImage as err:
        return PreparedInput(str(path), None, None, err.reason)
    except FileNotFoundError:
        return PreparedInput(str(path), None, None, "not_found")
    except OSError:
        return PreparedInput(str(path), None, None, "unreadable")
    except Exception:  # one undecodable input must not stop the others
        return PreparedInput(str(path), None, None, "decode_error")


def score_prepared(model: OnnxModel, prepared: PreparedInput) -> Prediction:
    """The :class:`Prediction` of one prepared input: scored by :func:`scored`, or its ``error`` row."""
    if prepared.tensor is None:
        return Prediction(prepared.file, None, None, prepared.error or "decode_error")
    return scored(model, prepared.tensor, [(prepared.file, None)])[0]


def collect_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named directly (whatever their suffix) plus image files found in named folders."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                    and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            out.append(path)
    return out


def predict_files(
    model: OnnxModel,
    files: list[Path],
    batch_size: int = 32,
    show_progress: bool = False,
    console=None,
    allow_modalities: tuple[str, ...] = (),
    any_modality: bool = False,
) -> list[Prediction]:
    """Predictions for ``files`` in order; bad files carry their reason and do not stop the batch.

    ``allow_modalities`` adds DICOM modalities to those the model is for; ``any_modality`` turns
    the modality check off (both the caller's explicit decision; see the module docstring). A 2D
    model only: ``ValueError`` for a 3D one (:func:`medimg.predict_volumes.predict_volumes`) or a segmentation model
    (:func:`medimg.predict_segmentation.predict_segmentation`).
    """
    if model.is_segmentation:
        raise ValueError(f"{model.path.name} is a segmentation model: segment volumes with predict_segmentation")
    if model.dims != 2:
        raise ValueError(f"{model.path.name} is a {model.dims}D model: score volumes with predict_volumes")
    rules = model.input_rules.allowing(allow_modalities, any_modality)
    results: list[Prediction | None] = [None] * len(files)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        x = np.concatenate([tensor for _, tensor in pending])
        rows = scored(model, x, [(str(files[index]), None) for index, _ in pending])
        for (index, _), row in zip(pending, rows, strict=True):
            results[index] = row
        pending.clear()

    progress = None
    if show_progress:
        # here: only a run that shows a bar needs rich
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("predict"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        progress.start()
        task = progress.add_task("predict", total=len(files))
    try:
        for index, path in enumerate(files):
            if is_volume_file(path):
                results[index] = Prediction(str(path), None, None, "volume_for_2d_model")
                if progress is not None:
                    progress.advance(task)
                continue
            prepared = prepare_input(model, path, rules)
            if prepared.error is not None:
                results[index] = Prediction(str(path), None, None, prepared.error)
            else:
                assert prepared.tensor is not None  # set whenever no error is
                pending.append((index, prepared.tensor))
                if len(pending) >= batch_size:
                    flush()
            if progress is not None:
                progress.advance(task)
        flush()
    finally:
        if progress is not None:
            progress.stop()
    return [r for r in results if r is not None]


def columns(class_names: Sequence[str], volumes: bool = False) -> tuple[str, ...]:
    """The output columns: :data:`FIELDS`, then ``p_<class>`` per class (in class order), then :data:`TASK_FIELDS`,
    then, with ``volumes`` (a 3D model's rows), :data:`VOLUME_FIELD`."""
    return (*FIELDS, *(f"p_{c}" for c in class_names), *TASK_FIELDS, *((VOLUME_FIELD,) if volumes else ()))


def _class_names(predictions: list[Prediction]) -> list[str]:
    return next((list(p.class_probabilities) for p in predictions if p.class_probabilities), [])


def _has_volumes(predictions: list[Prediction], volumes: bool | None) -> bool:
    return any(p.volume is not None for p in predictions) if volumes is None else volumes


def to_rows(
    predictions: list[Prediction], class_names: Sequence[str] | None = None, volumes: bool | None = None
) -> list[dict]:
    """The predictions as flat dicts with the keys of :func:`columns` (None where a file was not usable).

    ``class_names``: the model's (None: those of the first usable prediction). ``volumes``: add the
    :data:`VOLUME_FIELD` (a 3D model's rows; None: when some prediction names a volume).
    """
    names = list(class_names) if class_names is not None else _class_names(predictions)
    volumes = _has_volumes(predictions, volumes)
    rows = []
    for p in predictions:
        probs = p.class_probabilities or {}
        row = {"file": p.file, "probability": p.probability, "label": p.label, "error": p.error}
        row.update({f"p_{c}": probs.get(c) for c in names})
        row.update(
            {
                "predicted_class": p.predicted_class,
                "abnormal_probability": p.abnormal_probability,
                "abnormal": p.abnormal,
            }
        )
        if volumes:
            row[VOLUME_FIELD] = p.volume
        rows.append(row)
    return rows


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def render(
    predictions: list[Prediction], fmt: str, class_names: Sequence[str] | None = None, volumes: bool | None = None
) -> str:
    """CSV (header :func:`columns`, ``abnormal`` as true/false) or a JSON list of rows (:func:`to_rows`)."""
    names = list(class_names) if class_names is not None else _class_names(predictions)
    volumes = _has_volumes(predictions, volumes)
    if fmt == "json":
        return json.dumps(to_rows(predictions, names, volumes), indent=1)
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}; expected csv or json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(names, volumes), lineterminator="\n")
    writer.writeheader()
    for row in to_rows(predictions, names, volumes):
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


def summary(predictions: list[Prediction], class_names: Sequence[str]) -> list[tuple[str, int, int]]:
    """Per class: (class name, files predicted as it, of those flagged abnormal), in class order."""
    return [
        (c, sum(p.label == c for p in predictions), sum(p.label == c and p.abnormal is True for p in predictions))
        for c in class_names
    ]


def registry_model(model_name: str, spec: str, dest: Path) -> tuple[Path, ModelRecord]:
    """``spec`` (``champion``, ``challenger``, ``3`` or ``v3``) -> (verified ONNX path, the version's record).

    The file is checked against the version's sha256 tag like ``medimg pull`` does.
    """
    # here: MLflow and pull (2 s) only for a registered model, not for a local .onnx file
    from medimg import model_record, registry
    from medimg.pull import PullError, fetch_verified_onnx

    try:
        record = model_record.resolve(spec, model_name)
    except registry.VersionNotFound as err:
        raise PullError(str(err)) from None
    return fetch_verified_onnx(record.name, record.version, record.onnx_sha256, dest), record
