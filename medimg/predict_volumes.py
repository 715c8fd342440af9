"""``medimg predict`` with a 3D model: NIfTI files, ``.npz`` volumes and DICOM series folders, one row per volume.

The preprocessing comes only from the model's own 3D contract (:attr:`OnnxModel.config`, from its
``medimg.preprocessing`` metadata): each volume goes through
:func:`medimg.volume_contract.prepare_volume` (orientation, intensity, spacing, cube, resample,
quantise: the stored uint8 ``[S, S, S]``, as ingest stores it) and
:func:`medimg.volume_contract.apply` (``[N, C, S, S, S]``), then the model. Rows are the
:class:`~medimg.predict.Prediction` rows of 2D predict, with ``volume`` saying which volume of
``file`` each is.

What each path given may be (nothing is searched for by name):

* **a NIfTI file** (``.nii``, ``.nii.gz``): one volume (:func:`medimg.data.nifti.read_nifti`,
  canonical RAS+). NIfTI records no modality: ``modality`` (``medimg predict --modality CT``) says
  it, which picks the CT window of the ``auto`` intensity rule and is checked against the model's
  modalities; without it the volume's modality is unknown (percentile rule; never refused for its
  modality, like a PNG in 2D). ``volume`` is empty.
* **an .npz archive** (numpy, read without pickle): every array with 3 dimensions is one volume
  ``[D, H, W]`` and every array with 4 dimensions is ``N`` volumes ``[N, D, H, W]``, in the
  archive's key order; arrays of other ranks (labels, e.g. MedMNIST's ``test_labels`` ``[N, 1]``)
  are left out. ``volume`` is the key, with the index for a 4-D array (``test_images[3]``). The
  arrays are taken as oriented and have no geometry or modality, like MedMNIST 3D
  (:func:`medimg.volume_contract.prepare_array`: uint8 by ``v / 255`` under the ``auto`` rule,
  other dtypes by percentiles); a contract with a target spacing cannot use them
  (``missing_geometry``). An archive holding no such array is one row ``no_volumes``.
* **a folder**: every DICOM series under it (:func:`medimg.data.series.read_series_folder`: grouped
  by SeriesInstanceUID, files of any name, several series in one folder, multi-frame objects),
  one row per series with ``file`` the folder as given and ``volume`` the series' keyed pseudonym
  (:func:`series_name`), never its UID. A refused series has its
  :class:`~medimg.data.volumes.VolumeRefused` reason as ``error`` (``missing_slices``,
  ``irregular_spacing``, ...); an unreadable DICOM file a row of its own (``file`` its path) with
  its :class:`~medimg.data.images.BadImage` reason; a PNG or JPEG file ``image_for_3d_model``.
  Other files (text, hidden, DICOMDIR, non-image DICOM objects) are skipped, as 2D predict skips
  files that are not images. A folder with no series at all is one row ``no_series``.
* **a DICOM file**: a multi-frame object (Number of Frames > 1, e.g. an Enhanced CT) is one
  volume (:func:`medimg.data.multiframe.read_multiframe`), named like a series; a single slice is
  ``image_for_3d_model`` (give the folder of its series), like a PNG or JPEG file.

Input checks, on every volume, in this order (the first that applies is the row's ``error``):
``non_finite`` (NaN or infinite voxels; the NIfTI and DICOM readers already refuse them),
``modality_mismatch`` (a DICOM modality, or the one given for NIfTI, that the model is not for:
the rule and the ``allow_modalities`` / ``any_modality`` overrides of
:func:`medimg.input_checks.check_input`), ``blank`` (the stored uint8 cube's standard deviation
below the model's ``min_pixel_std``). The 2D limits on bits stored and on the sides in pixels are
not applied to volumes: a volume's values are Modality-LUT or float numbers, and its slices are
resampled to the cube whatever their size.

Privacy: the SeriesInstanceUID is identifying (:mod:`medimg.data.volumes`); it is turned into a
pseudonym at once and never reaches a row, a message or a log.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medimg import volume_contract
from medimg.config import PreprocessConfig
from medimg.data.deid import pseudonym
from medimg.data.images import BadImage
from medimg.data.volumes import Volume, VolumeRefused
from medimg.input_checks import InputProblem, InputRules
from medimg.predict import Prediction, is_volume_file, scored
from medimg.preprocess import is_dicom_file
from medimg.scoring import OnnxModel

#: Reasons a 3D input gets besides those of :class:`VolumeRefused`, :class:`BadImage`, the input checks and
#: :data:`medimg.predict.DIMENSION_REASONS`.
VOLUME_INPUT_REASONS: dict[str, str] = {
    "no_volumes": "an .npz archive without an array of 3 ([D, H, W]) or 4 ([N, D, H, W]) dimensions",
    "no_series": "a folder without a DICOM image series",
    "not_a_volume": "a file that is neither NIfTI, .npz nor DICOM",
    "not_found": "no such file or folder",
    "unreadable": "the file cannot be read",
}
#: Pseudonym kinds (:func:`medimg.data.deid.pseudonym`): a series by its SeriesInstanceUID (as ingest names it,
#: :func:`medimg.data.deid.identity_pseudonyms`), and a series without one by the paths of its files.
SERIES_KIND = "series"
SERIES_FILES_KIND = "seriesfiles"


@dataclass(frozen=True)
class VolumeInput:
    """One volume of an input path, ready to score (``stored``: uint8 ``[S, S, S]``) or refused (``error``).

    ``file``: the path as given (for a series folder's unreadable file: that file). ``volume``: which
    volume of it (module docstring), None for a NIfTI file.
    """

    file: str
    volume: str | None
    stored: np.ndarray | None = None
    error: str | None = None


def series_name(series_uid: str | None, files: Sequence[Path], folder: Path, secret: bytes) -> str:
    """The name of a series in predict's output: ``series-<16 hex>``, the keyed pseudonym of its
    SeriesInstanceUID (the one ingest gives it); for a series without a UID (anonymisers blank it),
    ``seriesfiles-<16 hex>``, the pseudonym of its files' paths relative to ``folder``, one a line in
    sorted order. Never the UID or a file name, which can hold identifying values."""
    if series_uid:
        return pseudonym(series_uid, secret, SERIES_KIND)
    rel = sorted(Path(f).resolve().relative_to(folder.resolve()).as_posix() for f in files)
    return pseudonym("\n".join(rel), secret, SERIES_FILES_KIND)


def needs_secret(paths: Sequence[str | Path]) -> bool:
    """True when some path is a folder or a DICOM file: its volumes are named by keyed pseudonyms."""
    return any(Path(p).is_dir() or (Path(p).is_file() and is_dicom_file(p)) for p in paths)


def check_volume(
    voxels: np.ndarray, modality: str | None, rules: InputRules, stored: np.ndarray | None = None
) -> InputProblem | None:
    """The first problem of a volume under ``rules`` (module docstring: ``non_finite``, ``modality_mismatch``,
    ``blank`` on ``stored``, the uint8 cube, when given), or None. Details hold counts and codes only."""
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        return InputProblem("non_finite", f"{bad} of {voxels.size} voxels are NaN or infinite")
    if rules.modalities is not None and modality is not None and modality.upper() not in rules.modalities:
        return InputProblem(
            "modality_mismatch", f"modality {modality}, the model is for {', '.join(sorted(rules.modalities))}"
        )
    if rules.min_pixel_std is not None and stored is not None:
        std = float(np.asarray(stored).std())
        if std < rules.min_pixel_std:
            return InputProblem("blank", f"voxel std {std:.3g} below {rules.min_pixel_std:g}")
    return None


def volume_inputs(
    paths: Sequence[str | Path],
    config: PreprocessConfig,
    rules: InputRules,
    secret: bytes | None,
    modality: str | None = None,
) -> Iterator[VolumeInput]:
    """Every volume of ``paths`` in order (folders: series in :func:`~medimg.data.series.read_series_folder`'s
    order), prepared by the 3D contract ``config`` and checked by ``rules``, or refused with its reason.

    ``secret`` keys the series pseudonyms; ``ValueError`` when it is None and a DICOM input needs one.
    ``modality``: the modality of NIfTI volumes (module docstring).
    """
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            yield VolumeInput(str(path), None, error="not_found")
        elif path.is_dir():
            yield from _folder(path, config, rules, _secret(secret))
        elif is_volume_file(path) and path.name.lower().endswith(".npz"):
            yield from _npz(path, config, rules)
        elif is_volume_file(path):
            yield _nifti(path, config, rules, modality)
        elif is_dicom_file(path):
            yield _dicom_file(path, config, rules, _secret(secret))
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            yield VolumeInput(str(path), None, error="image_for_3d_model")
        else:
            yield VolumeInput(str(path), None, error="not_a_volume")


def predict_volumes(
    model: OnnxModel,
    paths: Sequence[str | Path],
    batch_size: int = 8,
    allow_modalities: tuple[str, ...] = (),
    any_modality: bool = False,
    secret: bytes | None = None,
    modality: str | None = None,
) -> list[Prediction]:
    """One row per volume of ``paths`` (:func:`volume_inputs`) with a 3D ``model``; refused volumes carry their
    reason and do not stop the batch. ``ValueError`` for a 2D model (:func:`medimg.predict.predict_files`) or a
    segmentation model (:func:`medimg.predict_segmentation.predict_segmentation`).

    ``allow_modalities`` / ``any_modality``: as in 2D predict. ``secret``: the pseudonymisation key
    (:func:`medimg.data.deid.secret_from_env`), needed for DICOM inputs. ``batch_size`` volumes go to
    ONNX Runtime at once.
    """
    if model.is_segmentation:
        raise ValueError(f"{model.path.name} is a segmentation model: segment volumes with predict_segmentation")
    if model.dims != 3:
        raise ValueError(f"{model.path.name} is a {model.dims}D model: score images with predict_files")
    rules = model.input_rules.allowing(allow_modalities, any_modality)
    results: list[Prediction] = []
    pending: list[tuple[int, VolumeInput, np.ndarray]] = []

    def flush() -> None:
        if pending:
            x = volume_contract.apply(np.stack([stored for _, _, stored in pending]), model.config).numpy()
            rows = scored(model, x, [(item.file, item.volume) for _, item, _ in pending])
            for (index, _, _), row in zip(pending, rows, strict=True):
                results[index] = row
            pending.clear()

    for item in volume_inputs(paths, model.config, rules, secret, modality):
        results.append(Prediction(item.file, None, None, item.error, volume=item.volume))
        if item.error is None and item.stored is not None:
            pending.append((len(results) - 1, item, item.stored))
            if len(pending) >= batch_size:
                flush()
    flush()
    return results


def _secret(secret: bytes | None) -> bytes:
    if secret is None:
        raise ValueError("DICOM series are named by keyed pseudonyms: pass the secret (MEDIMG_DEID_SECRET)")
    return secret


def _prepared(file: str, name: str | None, volume: Volume, config: PreprocessConfig, rules: InputRules) -> VolumeInput:
    """A read volume checked, prepared to the stored cube, and checked again for ``blank`` on it."""
    problem = check_volume(volume.voxels, volume.modality, rules)
    if problem is not None:
        return VolumeInput(file, name, error=problem.reason)
    stored = volume_contract.prepare_volume(volume, config)
    problem = check_volume(volume.voxels, volume.modality, rules, stored)
    if problem is not None:
        return VolumeInput(file, name, error=problem.reason)
    return VolumeInput(file, name, stored)


def _nifti(path: Path, config: PreprocessConfig, rules: InputRules, modality: str | None) -> VolumeInput:
    from medimg.data.nifti import read_nifti  # here: nibabel only where NIfTI is read

    try:
        volume = read_nifti(path, modality.upper() if modality else None)
    except VolumeRefused as refused:
        return VolumeInput(str(path), None, error=refused.reason)
    return _prepared(str(path), None, volume, config, rules)


def _npz(path: Path, config: PreprocessConfig, rules: InputRules) -> Iterator[VolumeInput]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception:  # not a zip, truncated, an object array (pickle refused), ...
        yield VolumeInput(str(path), None, error="unreadable")
        return
    found = False
    for key, array in arrays.items():
        if array.ndim == 3:
            items = [(key, array)]
        elif array.ndim == 4:
            items = [(f"{key}[{i}]", volume) for i, volume in enumerate(array)]
        else:
            continue
        found = True
        for name, voxels in items:
            yield _npz_volume(str(path), name, voxels, config, rules)
    if not found:
        yield VolumeInput(str(path), None, error="no_volumes")


def _npz_volume(file: str, name: str, voxels: np.ndarray, config: PreprocessConfig, rules: InputRules) -> VolumeInput:
    if not (np.issubdtype(voxels.dtype, np.integer) or np.issubdtype(voxels.dtype, np.floating)):
        return VolumeInput(file, name, error="unreadable")
    problem = check_volume(voxels, None, rules)
    if problem is not None:
        return VolumeInput(file, name, error=problem.reason)
    if config.volume.spacing is not None:  # prepare_array needs a spacing the array does not have
        return VolumeInput(file, name, error="missing_geometry")
    stored = volume_contract.prepare_array(voxels, config)
    problem = check_volume(voxels, None, rules, stored)
    return VolumeInput(file, name, error=problem.reason) if problem is not None else VolumeInput(file, name, stored)


@dataclass(frozen=True)
class SeriesFolderItem:
    """One thing found in a folder of DICOM files: a series assembled as ``volume`` (with its ``files``), or an
    ``error`` reason (a refused series, an unreadable file, an image among the series, no series at all).
    ``file``: what the output row names; ``name``: the series' pseudonymous name (:func:`series_name`) or None."""

    file: str
    name: str | None
    volume: Volume | None = None
    files: tuple[Path, ...] = ()
    error: str | None = None


def series_folder_items(folder: Path, secret: bytes) -> Iterator[SeriesFolderItem]:
    """Every series of ``folder`` (:func:`medimg.data.series.read_series_folder`) and every file that kept one out,
    in the order predict reports them (the one walk of :func:`predict_volumes` and segmentation predict)."""
    from medimg.data.series import read_header, read_series_folder  # here: pydicom only where DICOM is read

    found = read_series_folder(folder)
    for outcome in found.outcomes:
        if outcome.volume is not None:
            name = series_name(outcome.volume.series_uid, outcome.files, folder, secret)
            yield SeriesFolderItem(str(folder), name, outcome.volume, tuple(outcome.files))
            continue
        assert outcome.refused is not None  # an outcome is a volume or a refusal
        try:
            uid = read_header(outcome.files[0]).series_uid if outcome.files else None
        except (BadImage, OSError):
            uid = None
        name = series_name(uid, outcome.files, folder, secret)
        yield SeriesFolderItem(str(folder), name, error=outcome.refused.reason)
    for bad in found.unreadable:
        yield SeriesFolderItem(str(bad.path), None, error=bad.reason)
    for skipped in found.skipped:
        if skipped.reason == "outside_layout":  # a PNG/JPEG among the series
            yield SeriesFolderItem(str(folder / skipped.rel), None, error="image_for_3d_model")
    if not found.outcomes and not found.unreadable:
        yield SeriesFolderItem(str(folder), None, error="no_series")


def _folder(folder: Path, config: PreprocessConfig, rules: InputRules, secret: bytes) -> Iterator[VolumeInput]:
    for item in series_folder_items(folder, secret):
        if item.volume is not None:
            yield _prepared(item.file, item.name, item.volume, config, rules)
        else:
            yield VolumeInput(item.file, item.name, error=item.error)


def _dicom_file(path: Path, config: PreprocessConfig, rules: InputRules, secret: bytes) -> VolumeInput:
    from medimg.data.multiframe import read_multiframe  # here: pydicom only where DICOM is read
    from medimg.data.series import read_header

    try:
        header = read_header(path)
    except BadImage as bad:
        return VolumeInput(str(path), None, error=bad.reason)
    except OSError:
        return VolumeInput(str(path), None, error="unreadable")
    if header.frames <= 1:
        return VolumeInput(str(path), None, error="image_for_3d_model")
    name = series_name(header.series_uid, (path,), path.parent, secret)
    try:
        volume = read_multiframe(path)
    except VolumeRefused as refused:
        return VolumeInput(str(path), name, error=refused.reason)
    return _prepared(str(path), name, volume, config, rules)
