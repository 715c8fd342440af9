"""``medimg predict``: ONNX Runtime inference over DICOM, PNG and JPEG files, from the model's metadata.

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
* every other row has ``probability`` = softmax(logits)[:, 1] in [0, 1] and ``label`` = the
  positive class when ``probability >= threshold`` (the threshold stored in the model), else
  the negative one;
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medimg import preprocess
from medimg.config import PreprocessConfig
from medimg.data.images import BadImage
from medimg.data.sources import IMAGE_SUFFIXES
from medimg.input_checks import check_input
from medimg.scoring import OnnxModel

if TYPE_CHECKING:
    from medimg.model_record import ModelRecord

FIELDS = ("file", "probability", "label", "error")


@dataclass(frozen=True)
class Prediction:
    """One file's outcome: positive-class probability and label, or None for both and the ``error`` reason."""

    file: str
    probability: float | None
    label: str | None
    error: str | None = None


def load_grey_uint8(path: str | Path, config: PreprocessConfig | None = None) -> np.ndarray:
    """One file -> grey uint8 ``[H, W]`` at its own size, by the contract's intensity rules.

    Raises :class:`BadImage` (with ``.reason``) when the file is unusable.
    """
    config = config or PreprocessConfig()
    return preprocess.grey_uint8(preprocess.decode_file(Path(path), config), config)


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
    the modality check off (both the caller's explicit decision; see the module docstring).
    """
    rules = model.input_rules.allowing(allow_modalities, any_modality)
    results: list[Prediction | None] = [None] * len(files)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        x = np.concatenate([tensor for _, tensor in pending])
        for (index, _), prob in zip(pending, model.probabilities(x), strict=True):
            results[index] = Prediction(str(files[index]), float(prob), model.label(float(prob)))
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
            try:
                decoded = preprocess.decode_file(path, model.config)
                problem = check_input(decoded, rules)  # before grey uint8, which would turn NaN into black
                grey = None
                if problem is None:
                    grey = preprocess.prepare(decoded, model.config)  # uint8 [size, size], as ingest stores it
                    problem = check_input(decoded, rules, grey)  # and blank, on the stored image
            except BadImage as err:
                results[index] = Prediction(str(path), None, None, err.reason)
            except FileNotFoundError:
                results[index] = Prediction(str(path), None, None, "not_found")
            except OSError:
                results[index] = Prediction(str(path), None, None, "unreadable")
            except Exception:  # one undecodable file must not stop the batch
                results[index] = Prediction(str(path), None, None, "decode_error")
            else:
                if problem is not None:
                    results[index] = Prediction(str(path), None, None, problem.reason)
                else:
                    assert grey is not None  # prepared whenever the first check found no problem
                    pending.append((index, preprocess.apply(grey, model.config).numpy()))
                if len(pending) >= batch_size:
                    flush()
            if progress is not None:
                progress.advance(task)
        flush()
    finally:
        if progress is not None:
            progress.stop()
    return [r for r in results if r is not None]


def to_rows(predictions: list[Prediction]) -> list[dict]:
    """The predictions as dicts (file, probability, label, error), for CSV or JSON output."""
    return [asdict(p) for p in predictions]


def render(predictions: list[Prediction], fmt: str) -> str:
    """CSV (header ``file,probability,label,error``) or a JSON list of rows."""
    if fmt == "json":
        return json.dumps(to_rows(predictions), indent=1)
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}; expected csv or json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in to_rows(predictions):
        writer.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in row.items()})
    return buffer.getvalue()


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
