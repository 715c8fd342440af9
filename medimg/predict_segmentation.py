"""``medimg predict`` with a segmentation model: a label mask on each input's own voxels, its volumes, an overlay.

For every volume of the paths given (a NIfTI file; every DICOM series in a folder, grouped by
SeriesInstanceUID as :func:`medimg.data.series.read_series_folder` does; a multi-frame DICOM object), in
the output folder:

* ``<name>.mask.nii.gz``: uint8 labels (0 background, ``i`` = ``class_names[i]``) on the input's own
  voxel grid: :func:`medimg.segmentation.geometry.for_prediction` (orientation, intensity, padding to
  the contract's ``pad_multiple``, from the model's own metadata), ONNX Runtime, arg-max,
  :func:`~medimg.segmentation.geometry.to_source_orientation`. A NIfTI input's mask is in the file's
  own array order with its affine and header geometry (:func:`medimg.segmentation.nifti_masks.mask_like_file`:
  ``nib.load(mask).affine == nib.load(input).affine``, same shape); a DICOM volume's is on the volume's
  grid in NIfTI's RAS+ world (:func:`~medimg.segmentation.nifti_masks.mask_for_volume`);
* ``<name>.overlay.png``: slices with the structures blended in (:mod:`medimg.segmentation.overlay`);
* ``<name>.seg.dcm`` for a DICOM series of single-frame slices: a DICOM Segmentation object
  (:mod:`medimg.segmentation.dicom_seg`; BINARY, one segment per structure, every slice, the algorithm's
  name, version and ONNX sha256, referencing the source series); an input that cannot have one keeps its
  other files and says why in ``dicom_seg_skipped`` (:data:`~medimg.segmentation.dicom_seg.SEG_SKIP_REASONS`);
* one row per volume in ``volumes.csv`` (or ``volumes.json``, :func:`render`): per structure the voxel
  count and the volume in mL (count x the voxel's volume, the product of its spacings / 1000), the file
  names written, or the ``error`` of an input that could not be used.

``<name>`` is a NIfTI file's name without ``.nii``/``.nii.gz``; for a DICOM volume the keyed pseudonym of
its series (:func:`medimg.predict_volumes.series_name`), never its UID or a file or folder name (they can
hold identifying values); a name already used in this run gets ``-2``, ``-3``... The SEG itself carries the
source study's identifiers, as it must to go back to that archive; the rows, the messages and the NIfTI
masks never do.

Inputs are checked as 3D predict checks them (:func:`medimg.predict_volumes.check_volume`: ``non_finite``,
``modality_mismatch`` with the ``allow_modalities`` / ``any_modality`` overrides, ``blank`` on the oriented
uint8 image) and refused with the reasons of :mod:`medimg.predict_volumes` and :data:`SEGMENTATION_REASONS`
(an ``.npz`` array has no geometry to put a mask on). A 2D image gets ``image_for_3d_model``. One bad input
never stops the others.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medimg.artifacts import META_MLFLOW_RUN_ID, META_MODEL_NAME
from medimg.data.images import BadImage
from medimg.data.volumes import Volume, VolumeRefused
from medimg.input_checks import InputRules
from medimg.predict import is_volume_file
from medimg.predict_volumes import check_volume, series_folder_items, series_name
from medimg.preprocess import is_dicom_file
from medimg.provenance import file_sha256
from medimg.scoring import OnnxModel
from medimg.segmentation.contract import network_input
from medimg.segmentation.dicom_seg import Algorithm, SegNotWritten, write_dicom_seg
from medimg.segmentation.geometry import for_prediction, to_source_orientation, unfit
from medimg.segmentation.nifti_masks import mask_for_volume, mask_like_file, voxel_volume_ml
from medimg.segmentation.overlay import write_overlay

if TYPE_CHECKING:
    from medimg.model_record import ModelRecord

#: Reasons a segmentation input gets besides those of 3D predict (:mod:`medimg.predict_volumes`).
SEGMENTATION_REASONS: dict[str, str] = {
    "no_geometry": "an .npz archive has no voxel geometry to put a mask on: give NIfTI files or DICOM series",
}
MASK_SUFFIX = ".mask.nii.gz"
OVERLAY_SUFFIX = ".overlay.png"
SEG_SUFFIX = ".seg.dcm"
TABLE_NAME = "volumes"
#: The first columns of the table, in order; then ``voxels_<structure>`` and ``volume_ml_<structure>`` per structure.
FIELDS = ("file", "volume", "error", "mask", "overlay", "dicom_seg", "dicom_seg_skipped", "voxel_volume_ml")


@dataclass(frozen=True)
class SegmentationResult:
    """One volume's outcome: the files written (names in the output folder) and voxel counts per structure, or
    the ``error`` reason and nothing else.

    ``file``: the path as given (for a series folder's unreadable file: that file); ``volume``: the series
    pseudonym for a DICOM volume, else None. ``voxel_volume_ml``: one voxel's volume in mL.
    """

    file: str
    volume: str | None = None
    error: str | None = None
    mask: str | None = None
    overlay: str | None = None
    dicom_seg: str | None = None
    dicom_seg_skipped: str | None = None
    voxel_volume_ml: float | None = None
    voxels: dict[str, int] = field(default_factory=dict)

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Per structure: voxels x :attr:`voxel_volume_ml` (mL); empty for an error row."""
        if self.voxel_volume_ml is None:
            return {}
        return {name: n * self.voxel_volume_ml for name, n in self.voxels.items()}


def algorithm_for(model: OnnxModel, record: ModelRecord | None = None) -> Algorithm:
    """The algorithm a DICOM SEG names: from the registry ``record`` when the model came from there (name, version,
    its sha256 tag), else from the file's metadata (``medimg.model_name``, else the file's stem; version
    ``unregistered run <MLflow run id>``) and the file's own sha256."""
    if record is not None:
        return Algorithm(record.name, str(record.version), record.onnx_sha256 or file_sha256(model.path))
    run_id = model.metadata.get(META_MLFLOW_RUN_ID)
    return Algorithm(
        model.metadata.get(META_MODEL_NAME) or model.path.stem,
        f"unregistered run {run_id}" if run_id else "unregistered",
        file_sha256(model.path),
    )


def predict_segmentation(
    model: OnnxModel,
    paths: Sequence[str | Path],
    out_dir: Path,
    algorithm: Algorithm | None = None,
    allow_modalities: tuple[str, ...] = (),
    any_modality: bool = False,
    secret: bytes | None = None,
    modality: str | None = None,
) -> list[SegmentationResult]:
    """Segment every volume of ``paths`` (module docstring) into ``out_dir`` (created); one result per volume or
    refused input, in order. The table is written by :func:`write_table`.

    ``algorithm``: what the SEG names (None: :func:`algorithm_for` the model's file). ``secret``: the
    pseudonymisation key, needed for DICOM inputs (``ValueError`` without it). ``modality``: the Modality of
    NIfTI volumes. ``ValueError`` for a model that is not a segmentation model.
    """
    if not model.is_segmentation:
        raise ValueError(
            f"{model.path.name} is a {model.dims}D {model.task_kind} model, not a segmentation model: "
            + ("score volumes with predict_volumes" if model.dims == 3 else "score images with predict_files")
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    algorithm = algorithm or algorithm_for(model)
    rules = model.input_rules.allowing(allow_modalities, any_modality)
    used: set[str] = set()
    results = []
    for item in _inputs(paths, secret, modality):
        if item.error is not None or item.volume is None:
            results.append(SegmentationResult(item.file, item.name, item.error))
            continue
        stem = _unique(item.stem, used)
        results.append(_segmented(model, item, stem, out_dir, rules, algorithm))
    return results


@dataclass(frozen=True)
class _Input:
    """One volume to segment (``volume`` and where it came from) or a refusal (``error``)."""

    file: str
    name: str | None  # the series pseudonym of a DICOM volume
    stem: str = ""
    volume: Volume | None = None
    error: str | None = None
    nifti: Path | None = None  # the NIfTI file the volume was read from
    series_files: tuple[Path, ...] = ()  # the DICOM files of a series


def _inputs(paths: Sequence[str | Path], secret: bytes | None, modality: str | None) -> Iterator[_Input]:
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            yield _Input(str(path), None, error="not_found")
        elif path.is_dir():
            yield from _folder(path, _secret(secret))
        elif is_volume_file(path) and path.name.lower().endswith(".npz"):
            yield _Input(str(path), None, error="no_geometry")
        elif is_volume_file(path):
            yield _nifti(path, modality)
        elif is_dicom_file(path):
            yield _dicom_file(path, _secret(secret))
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            yield _Input(str(path), None, error="image_for_3d_model")
        else:
            yield _Input(str(path), None, error="not_a_volume")


def _nifti(path: Path, modality: str | None) -> _Input:
    from medimg.data.nifti import read_nifti  # here: nibabel's reader only where NIfTI is read

    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem
    try:
        volume = read_nifti(path, modality.upper() if modality else None)
    except VolumeRefused as refused:
        return _Input(str(path), None, error=refused.reason)
    return _Input(str(path), None, stem, volume, nifti=path)


def _folder(folder: Path, secret: bytes) -> Iterator[_Input]:
    for item in series_folder_items(folder, secret):
        if item.volume is not None:
            assert item.name is not None  # an assembled series always has its name
            yield _Input(item.file, item.name, item.name, item.volume, series_files=item.files)
        else:
            yield _Input(item.file, item.name, error=item.error)


def _dicom_file(path: Path, secret: bytes) -> _Input:
    from medimg.data.multiframe import read_multiframe  # here: pydicom only where DICOM is read
    from medimg.data.series import read_header

    try:
        header = read_header(path)
    except BadImage as bad:
        return _Input(str(path), None, error=bad.reason)
    except OSError:
        return _Input(str(path), None, error="unreadable")
    if header.frames <= 1:
        return _Input(str(path), None, error="image_for_3d_model")
    name = series_name(header.series_uid, (path,), path.parent, secret)
    try:
        volume = read_multiframe(path)
    except VolumeRefused as refused:
        return _Input(str(path), name, error=refused.reason)
    return _Input(str(path), name, name, volume, series_files=(path,))


def _segmented(
    model: OnnxModel, item: _Input, stem: str, out_dir: Path, rules: InputRules, algorithm: Algorithm
) -> SegmentationResult:
    """One volume segmented and its files written (module docstring)."""
    volume = item.volume
    assert volume is not None  # _inputs gives a volume or an error
    problem = check_volume(volume.voxels, volume.modality, rules)
    if problem is not None:
        return SegmentationResult(item.file, item.name, problem.reason)
    fitted = for_prediction(volume, model.config)
    image = unfit(fitted.image, fitted.offset, fitted.oriented_shape)  # oriented uint8, before padding
    problem = check_volume(volume.voxels, volume.modality, rules, image)
    if problem is not None:
        return SegmentationResult(item.file, item.name, problem.reason)
    labels = model.segment(network_input(fitted.image, model.config))[0]  # [D, H, W] on the padded grid
    mask = to_source_orientation(labels, fitted)  # the volume's own voxels
    k = len(model.class_names)
    mask_image = mask_like_file(mask, item.nifti, k) if item.nifti is not None else mask_for_volume(mask, volume, k)
    mask_name = stem + MASK_SUFFIX
    _save_nifti(mask_image, out_dir / mask_name)
    overlay_name = stem + OVERLAY_SUFFIX
    oriented_mask = unfit(labels, fitted.offset, fitted.oriented_shape)
    radiological = model.config.volume.orientation == "RAS"
    write_overlay(image, oriented_mask, model.class_names, out_dir / overlay_name, radiological)
    seg_name, skipped = None, None
    if item.series_files:
        try:
            write_dicom_seg(
                mask, item.series_files, volume, model.class_names, algorithm, out_dir / (stem + SEG_SUFFIX)
            )
            seg_name = stem + SEG_SUFFIX
        except SegNotWritten as not_written:
            skipped = not_written.reason
    counts = np.bincount(mask.ravel(), minlength=k)
    return SegmentationResult(
        item.file,
        item.name,
        mask=mask_name,
        overlay=overlay_name,
        dicom_seg=seg_name,
        dicom_seg_skipped=skipped,
        voxel_volume_ml=voxel_volume_ml(volume.spacing),
        voxels={name: int(counts[label]) for label, name in enumerate(model.class_names) if label > 0},
    )


def _save_nifti(image, path: Path) -> None:
    import nibabel as nib  # here: nibabel only where a mask is written

    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, tmp)
    tmp.replace(path)


def _unique(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def _secret(secret: bytes | None) -> bytes:
    if secret is None:
        raise ValueError("DICOM series are named by keyed pseudonyms: pass the secret (MEDIMG_DEID_SECRET)")
    return secret


def columns(structures: Sequence[str]) -> tuple[str, ...]:
    """The table's columns: :data:`FIELDS`, then ``voxels_<s>`` and ``volume_ml_<s>`` per structure."""
    return (*FIELDS, *(c for s in structures for c in (f"voxels_{s}", f"volume_ml_{s}")))


def to_rows(results: Sequence[SegmentationResult], structures: Sequence[str]) -> list[dict]:
    """The results as flat dicts with the keys of :func:`columns` (None where not applicable)."""
    rows = []
    for r in results:
        row: dict[str, object] = {name: getattr(r, name) for name in FIELDS}
        volumes = r.volumes_ml
        for s in structures:
            row[f"voxels_{s}"] = r.voxels.get(s)
            row[f"volume_ml_{s}"] = volumes.get(s)
        rows.append(row)
    return rows


def render(results: Sequence[SegmentationResult], structures: Sequence[str], fmt: str = "csv") -> str:
    """CSV (header :func:`columns`; empty cells for None) or a JSON list of rows (:func:`to_rows`)."""
    rows = to_rows(results, structures)
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}; expected csv or json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(structures), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else str(v)) for k, v in row.items()})
    return buffer.getvalue()


def write_table(results: Sequence[SegmentationResult], structures: Sequence[str], out_dir: Path, fmt: str = "csv"):
    """``out_dir/volumes.csv`` (or ``.json``) of :func:`render`, replaced whole; returns its path."""
    path = Path(out_dir) / f"{TABLE_NAME}.{fmt}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(results, structures, fmt))
    tmp.replace(path)
    return path
