"""Ingest segmentation pairs (``data.source: nifti_pairs``): NIfTI images with their label masks, checked pair by pair.

The dataset folder holds, per case, the image ``volumes/<split>/<id>.npy`` and its mask ``masks/<split>/<id>.npy``,
both uint8 of ``preprocess.volume.shape`` (np.save without pickle; :func:`medimg.segmentation.geometry.training_pair`:
orientation, the contract's intensity rule, centred zero-padding, never resampling), and the manifest with
:data:`~medimg.data.manifest.VOLUME_COLUMNS` and :data:`~medimg.data.manifest.SEGMENTATION_COLUMNS`
(:func:`medimg.data.manifest.to_frame` with ``segmentation=True``). The same input, contract, split settings and
de-identification key give byte-identical files and the same DVC data version.

**Where the pairs come from** (``data.segmentation``):

* ``layout: msd`` (the Medical Segmentation Decathlon): ``<root>/imagesTr/<case>.nii.gz`` and
  ``<root>/labelsTr/<case>.nii.gz`` (``images_dir``/``masks_dir``), paired by the case name: the path inside its
  folder without ``.nii``/``.nii.gz``. MSD's ``dataset.json`` and every file outside the two folders (``imagesTs/``:
  test images without masks) are skipped with a reason, as are macOS ``._*`` files (hidden).
* ``layout: csv``: ``<root>/<pairs_csv>`` with ``image_column`` and ``mask_column`` (paths relative to the root,
  inside it) and an optional ``split_column`` (train/val/test, kept as given). Files under the root that the CSV
  does not name are skipped (``outside_layout`` for NIfTI files).

**What is checked**, pair by pair (both files read with :func:`medimg.data.nifti.read_nifti`, canonical RAS,
``(z, y, x)``): the image and the mask are readable 3D NIfTI (else the reader's reason: ``unreadable``,
``not_3d``, ``non_finite``); same shape (``pair_shape_mismatch``); the same world position for every voxel, within
``data.segmentation.geometry_tolerance_mm`` (:func:`grid_distance_mm`; ``pair_geometry_mismatch``); mask values
integral and within ``0..len(task.class_names) - 1`` (:func:`mask_labels`; ``bad_mask_labels``); the oriented case
no larger than ``preprocess.volume.shape`` (``too_large_for_grid``: storing it would crop, and could cut labelled
structures away). Reasons: :data:`PAIR_REASONS` beside :data:`medimg.data.volumes.VOLUME_REASONS`.

**Every file is accounted for**: part of a stored case; quarantined with its reason (both files of a refused pair,
an image without a mask ``unpaired_image``, a mask without an image ``unpaired_mask``, a file the pairs CSV names
that does not exist ``missing_file``); or skipped with a reason (:data:`medimg.data.skips.SKIP_REASONS`). Quarantine
counts files, ``data.max_bad_fraction`` compares them with every file ingested or quarantined, before anything is
written.

**Manifest rows** (one per case): ``id`` ``case-<16 hex>``, ``patient_id`` ``pat-<16 hex>`` and ``source_file``
``file-<16 hex>``: keyed pseudonyms (:func:`medimg.data.deid.pseudonym`) of the image file's place
(``source/<path relative to the root>``); each case is its own patient (no source says otherwise). ``sha256`` the
image file's. Depth/height/width the stored shape, ``original_*`` the oriented image's shape, ``spacing_z/y/x`` the
mm spacing along the stored axes, ``offset_z/y/x`` where the oriented image's voxel 0 lies in the stored arrays,
``foreground_fraction`` the share of the stored mask's voxels that are labelled, ``labels_present`` its non-zero
labels joined by ``;``, ``label`` the largest label present (0: an empty mask) and ``label_name`` its class name.
``axcodes`` is ``SAR`` (NIfTI as read), ``bit_depth`` the image's data type's bits, ``photometric`` None.

**Splits** by case (:func:`medimg.data.splitting.assign_splits`: seeded, ``data.split.fractions``/``seed``,
stratified by ``label``) unless the pairs CSV gives one; inbox cases (``data.inbox`` in the same layout) are placed by
a keyed hash so that adding cases moves none.

**Workers**: pairs are read and stored in ``data.workers`` processes (a forkserver, as
:mod:`medimg.data.ingest_volumes`), which write to a staging folder beside the dataset folder; a small source
(:data:`PARALLEL_MIN_BYTES`, :func:`worker_count`) is read in this process, which is quicker.

**Privacy**: logs name cases by pseudonym; the quarantine and skip reports inside the workspace name files by their
place in the source folder, as every ingest's do.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from medimg import preprocess
from medimg.config import DataConfig, PreprocessConfig
from medimg.data import manifest, sources
from medimg.data.deid import pseudonym
from medimg.data.ingest_result import IngestResult, account, remove_stale_images
from medimg.data.ingest_volumes import (
    _cpu_count,
    _fingerprint,
    _ordered,
    _sha256_or_none,
    _staging_parent,
)
from medimg.data.manifest import SPLITS
from medimg.data.nifti import read_nifti
from medimg.data.quarantine import Quarantine
from medimg.data.skips import SkippedFile
from medimg.data.splitting import assign_splits
from medimg.data.volumes import VOLUME_REASONS, Volume, VolumeRefused
from medimg.segmentation import geometry

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
SOURCE_KIND = "nifti_pairs"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MSD_DESCRIPTION = "dataset.json"
MAX_LOGGED_QUARANTINE = 50
#: Below this many bytes of (compressed) files the pairs are read in this process: the MSD hippocampus set (240
#: pairs, 19 MB) takes 2.1 s in one process and 3.9 to 5.8 s with two forkserver workers, whose start (importing
#: nibabel, torch and medimg) costs more than the reading they share (2 shared CPU cores, measured).
PARALLEL_MIN_BYTES = 64 * 2**20
#: Largest distance of a mask value from an integer that still counts as that integer (float masks written
#: with a scale slope).
INTEGRAL_TOLERANCE = 1e-3

#: The quarantine reasons of a segmentation pair, beside :data:`medimg.data.volumes.VOLUME_REASONS` (which an
#: unreadable image or mask gets: ``unreadable``, ``not_3d``, ``non_finite``).
PAIR_REASONS: dict[str, str] = {
    "unpaired_image": "an image without a mask of the same case (msd: no file of its case name in the masks "
    "folder; csv: its mask is missing)",
    "unpaired_mask": "a mask without an image of the same case",
    "missing_file": "a file the pairs CSV names does not exist",
    "pair_shape_mismatch": "the image and its mask have different shapes (after both are turned to RAS)",
    "pair_geometry_mismatch": "the image's and the mask's voxels lie in different places: their affines differ by "
    "more than data.segmentation.geometry_tolerance_mm",
    "bad_mask_labels": "mask values that are not integers or not a label of task.class_names (0..K-1)",
    "too_large_for_grid": "the case is larger than preprocess.volume.shape along an axis: storing it would crop it "
    "and could cut labelled structures away (enlarge the shape)",
}
_REASON_TEXT = {**VOLUME_REASONS, **PAIR_REASONS}


class PairRefused(ValueError):
    """A pair that cannot be stored: ``reason`` a key of :data:`PAIR_REASONS` or
    :data:`~medimg.data.volumes.VOLUME_REASONS`; ``detail`` numbers and the file's role only (no file name)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in _REASON_TEXT:
            raise ValueError(f"unknown PairRefused reason {reason!r}; expected one of {sorted(_REASON_TEXT)}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason} ({detail or _REASON_TEXT[reason]})")


@dataclass(frozen=True)
class PairJob:
    """One case to read: its id (a pseudonym), the image and mask files."""

    case_id: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class PairOptions:
    """How the workers read and store: the contract (``preprocess``, with ``volume.shape``), the number of labels,
    the geometry tolerance (mm), the modality declared for the images and the staging folder."""

    contract: PreprocessConfig
    n_labels: int
    tolerance_mm: float
    modality: str | None
    staging: str


@dataclass
class _Planned:
    """A pair with what the parent knows of it: origin, places, pseudonyms and the CSV's split."""

    job: PairJob
    origin: str
    places: tuple[str, str]  # "<origin>/<rel>" of the image and the mask
    source_file: str
    patient: str
    split: str | None


@dataclass(frozen=True)
class _Loose:
    """A file set aside before reading (unpaired, or named by the CSV and missing), with its reason."""

    place: str
    path: Path
    reason: str
    detail: str


# --------------------------------------------------------------------------- pure checks


def grid_distance_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, int, int]) -> float:
    """The largest distance (mm) between the world positions two affines (4x4, voxel -> mm) give the corner voxels of
    a grid of ``shape``: 0 for equal affines, and, both maps being affine, the largest displacement of any voxel."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    ).T
    moved = (np.asarray(a, dtype=np.float64) @ corners)[:3] - (np.asarray(b, dtype=np.float64) @ corners)[:3]
    return float(np.linalg.norm(moved, axis=0).max())


def mask_labels(values: np.ndarray, n_labels: int) -> np.ndarray:
    """A mask's voxel values (any number type) -> uint8 labels (``np.rint``).

    Raises :class:`PairRefused` ``bad_mask_labels`` when a value is further than :data:`INTEGRAL_TOLERANCE` from an
    integer or the integer is not in ``0..n_labels - 1`` (the detail lists up to five such values).
    """
    values = np.asarray(values)
    rounded = np.rint(values)
    off = np.abs(values - rounded) > INTEGRAL_TOLERANCE
    if off.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(values[off])[:5])
        raise PairRefused("bad_mask_labels", f"{int(off.sum())} voxels not integral (e.g. {shown})")
    present = np.unique(rounded)
    bad = present[(present < 0) | (present >= n_labels)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise PairRefused("bad_mask_labels", f"labels {shown} outside 0..{n_labels - 1} (task.class_names)")
    return rounded.astype(np.uint8)


def check_pair(
    image: Volume, mask: Volume, n_labels: int, tolerance_mm: float, grid: tuple[int, int, int]
) -> np.ndarray:
    """The mask of ``image`` as uint8 labels on its voxels ``[D, H, W]``, after the pair checks (module docstring).

    ``image`` and ``mask`` in the contract's orientation (:func:`medimg.segmentation.geometry.oriented` of what
    :func:`~medimg.data.nifti.read_nifti` gives: both in one orientation, so equal shapes and affines mean
    voxel-to-voxel correspondence); ``grid`` is ``preprocess.volume.shape`` (z, y, x). Raises
    :class:`PairRefused` (``pair_shape_mismatch``, ``pair_geometry_mismatch``, ``bad_mask_labels``,
    ``too_large_for_grid``).
    """
    if image.shape != mask.shape:
        raise PairRefused("pair_shape_mismatch", f"image {image.shape}, mask {mask.shape}")
    distance = grid_distance_mm(image.affine, mask.affine, image.shape)
    if distance > tolerance_mm:
        raise PairRefused(
            "pair_geometry_mismatch", f"voxels up to {distance:.4g} mm apart (tolerance {tolerance_mm:g} mm)"
        )
    labels = mask_labels(mask.voxels, n_labels)
    if any(s > g for s, g in zip(image.shape, grid, strict=True)):
        raise PairRefused(
            "too_large_for_grid",
            f"shape {image.shape} (z, y, x) larger than preprocess.volume.shape {tuple(grid)}: it would be cropped",
        )
    return labels


# --------------------------------------------------------------------------- the ingest


def ingest_pairs(
    config: DataConfig,
    class_names: tuple[str, ...],
    contract: PreprocessConfig,
    folder: Path,
    secret: bytes,
    root: Path,
    inbox: Path | None = None,
    quarantine_csv: Path | None = None,
    skipped_csv: Path | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Ingest a ``nifti_pairs`` source (and its inbox) into the dataset ``folder`` (module docstring).

    ``class_names`` are ``task.class_names`` (the mask's label values 0..K-1). The quarantine and skip lists are
    written to ``quarantine_csv``/``skipped_csv`` (when given) before the threshold is checked. ``n_files`` counts
    the files ingested or quarantined, ``n_images`` the cases, ``n_decoded`` the files read. Raises ``ValueError``
    for a contract without ``preprocess.volume.shape`` or dims 2, :class:`~medimg.data.sources.SourceLayoutError`
    for a missing images folder or pairs CSV (or column, or a path outside the root, or a file named twice) and when
    no case is usable, :class:`~medimg.data.quarantine.QuarantineThresholdError` above ``data.max_bad_fraction``.
    """
    if contract.dims != 3 or contract.volume.shape is None:
        raise ValueError(f"data.source {SOURCE_KIND} needs preprocess.dims 3 and preprocess.volume.shape (z, y, x)")
    seg = config.segmentation
    origins: list[tuple[str, Path]] = [("source", root)]
    if inbox is not None and inbox.is_dir():
        origins.append(("inbox", inbox))
    elif inbox is not None:
        log.warning("inbox %s does not exist: nothing new to ingest from it", inbox)

    quarantine = Quarantine()
    skipped: list[SkippedFile] = []
    planned: list[_Planned] = []
    hashes: dict[str, str | None] = {}
    n_loose = 0
    for origin, base in origins:
        if seg.layout == "msd":
            pairs, loose, set_aside = scan_msd(base, origin, seg.images_dir, seg.masks_dir, required=origin == "source")
        else:
            columns = (seg.image_column, seg.mask_column, seg.split_column)
            pairs, loose, set_aside = scan_pairs_csv(base, origin, seg.pairs_csv, *columns, required=origin == "source")
        skipped.extend(set_aside)
        n_loose += len(loose)
        for lone in loose:
            hashes[lone.place] = _sha256_or_none(lone.path) if lone.reason != "missing_file" else None
            text = f"{lone.reason} ({lone.detail or PAIR_REASONS[lone.reason]})"
            _quarantine_file(quarantine, lone.place, secret, lone.reason, text)
        for image_rel, mask_rel, image, mask, split in pairs:
            image_place, mask_place = f"{origin}/{image_rel}", f"{origin}/{mask_rel}"
            planned.append(
                _Planned(
                    PairJob(pseudonym(image_place, secret, "case"), image, mask),
                    origin,
                    (image_place, mask_place),
                    pseudonym(image_place, secret, "file"),
                    pseudonym(image_place, secret, "pat"),
                    split,
                )
            )

    chash = preprocess.contract_hash(contract)
    workers = worker_count(config.workers, [p.job for p in planned])
    staging = tempfile.TemporaryDirectory(prefix=".medimg-pairs-", dir=_staging_parent(folder))
    options = PairOptions(contract, len(class_names), seg.geometry_tolerance_mm, config.modality, staging.name)
    try:
        rows: list[dict] = []
        for done, (item, result) in enumerate(
            zip(planned, _read_all([p.job for p in planned], options, workers), strict=True), 1
        ):
            hashes.update(zip(item.places, result["hashes"], strict=True))
            if result["status"] != "ok":
                _refuse(quarantine, item, secret, result["reason"], result["detail"], result.get("library_message"))
            else:
                found_in = root if item.origin == "source" else inbox
                rows.append(_row(config, class_names, item, result["meta"], found_in, chash))
            if progress is not None:
                progress(done, len(planned))
        n_files = 2 * len(planned) + n_loose
        log.info(
            "%d cases from %d files (%d files read), %d files quarantined, %d other files skipped",
            len(rows),
            n_files,
            2 * len(planned),
            len(quarantine),
            len(skipped),
        )
        account(
            quarantine,
            skipped,
            n_files,
            config.max_bad_fraction,
            inputs="files",
            not_inputs="image/mask pairs",
            quarantine_csv=quarantine_csv,
            skipped_csv=skipped_csv,
        )
        if not rows:
            raise sources.SourceLayoutError(f"{root}: no usable image/mask pair among {n_files} files")
        assign_splits(rows, config.split)
        for row in rows:
            row["path"] = f"volumes/{row['split']}/{row['id']}.npy"
            row["mask_path"] = f"masks/{row['split']}/{row['id']}.npy"
        frame = manifest.to_frame(_ordered(rows), segmentation=True)
        _store(folder, frame, Path(staging.name))
    finally:
        staging.cleanup()
    return IngestResult(
        folder=folder,
        n_images=len(frame),
        split_counts={split: int((frame["split"] == split).sum()) for split in SPLITS},
        source=str(root),
        source_md5=_fingerprint(hashes),
        source_kind=SOURCE_KIND,
        n_files=n_files,
        n_decoded=2 * len(planned),
        n_cached=0,
        contract_hash=chash,
        quarantine=quarantine,
        skipped=tuple(sorted(skipped, key=lambda s: s.place)),
    )


# --------------------------------------------------------------------------- scanning (parent)

Pair = tuple[str, str, Path, Path, str | None]  # image rel, mask rel, image path, mask path, split


def case_name(rel: str) -> str | None:
    """A NIfTI file's case name: its path without ``.nii.gz``/``.nii`` (any case); None for other files."""
    lower = rel.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return rel[: -len(suffix)]
    return None


def scan_msd(
    base: Path, origin: str, images_dir: str, masks_dir: str, required: bool = True
) -> tuple[list[Pair], list[_Loose], list[SkippedFile]]:
    """(pairs, unpaired files, skipped files) of a folder in the MSD layout (module docstring), sorted by case.

    ``SourceLayoutError`` when ``required`` and ``base/images_dir`` is not a folder.
    """
    if required and not (base / images_dir).is_dir():
        raise sources.SourceLayoutError(
            f"{base}: no {images_dir}/ folder (data.segmentation.layout msd: {images_dir}/<case>.nii.gz with "
            f"{masks_dir}/<case>.nii.gz)"
        )
    found: dict[str, dict[str, tuple[str, Path]]] = {images_dir: {}, masks_dir: {}}
    skipped: list[SkippedFile] = []
    loose: list[_Loose] = []
    for rel, path in sources.walk_files(base, hidden=True):
        parts = tuple(rel.split("/"))
        reason = sources._set_aside(parts, path)
        detail = ""
        name = case_name(rel)
        top = parts[0] if len(parts) > 1 else None
        if reason is None and rel == MSD_DESCRIPTION:
            reason, detail = "not_an_image_file", "the MSD dataset description (dataset.json)"
        elif reason is None and top in found and name is None:
            reason, detail = "not_an_image_file", "not a NIfTI file (.nii, .nii.gz)"
        elif reason is None and top not in found:
            if name is not None:
                reason = "outside_layout"
                detail = f"a NIfTI file outside {images_dir}/ and {masks_dir}/ (e.g. MSD imagesTs: no masks)"
            else:
                reason, detail = "not_an_image_file", f"not a NIfTI file in {images_dir}/ or {masks_dir}/"
        if reason is not None:
            skipped.append(SkippedFile(rel, origin, reason, detail))
            continue
        case = case_name("/".join(parts[1:]))
        assert top is not None and case is not None
        if case in found[top]:  # a.nii beside a.nii.gz: one case, two files
            loose.append(
                _Loose(
                    f"{origin}/{rel}",
                    path,
                    "unpaired_image" if top == images_dir else "unpaired_mask",
                    f"another file in {top}/ has the same case name",
                )
            )
            continue
        found[top][case] = (rel, path)
    images, masks = found[images_dir], found[masks_dir]
    pairs: list[Pair] = []
    for case in sorted(images.keys() | masks.keys()):
        if case in images and case in masks:
            (image_rel, image), (mask_rel, mask) = images[case], masks[case]
            pairs.append((image_rel, mask_rel, image, mask, None))
        elif case in images:
            rel, path = images[case]
            loose.append(_Loose(f"{origin}/{rel}", path, "unpaired_image", f"no mask of this case in {masks_dir}/"))
        else:
            rel, path = masks[case]
            loose.append(_Loose(f"{origin}/{rel}", path, "unpaired_mask", f"no image of this case in {images_dir}/"))
    return pairs, sorted(loose, key=lambda item: item.place), skipped


def read_pairs_table(
    path: Path, image_column: str, mask_column: str, split_column: str | None
) -> list[tuple[str, str, str | None]]:
    """(image, mask, split) of each row of a pairs CSV (header row; values stripped, paths as posix; empty cells
    ``""``; rows with both paths empty ignored).

    Raises :class:`~medimg.data.sources.SourceLayoutError` for a missing file or column, a split outside
    train/val/test, an absolute path or one leaving the root (``..``), or a file named twice.
    """
    if not path.is_file():
        raise sources.SourceLayoutError(f"pairs CSV {path} not found (data.segmentation.pairs_csv)")
    out: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (image_column, mask_column, split_column) if c]
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise sources.SourceLayoutError(f"{path.name}: missing column(s) {missing}; has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            image, mask = (_relative(row[c] or "", path.name, line) for c in (image_column, mask_column))
            if not image and not mask:
                continue
            split = (row[split_column] or "").strip().lower() or None if split_column else None
            if split is not None and split not in SPLITS:
                raise sources.SourceLayoutError(f"{path.name} line {line}: split {split!r} is not one of {SPLITS}")
            for rel in filter(None, (image, mask)):
                if rel in seen:
                    raise sources.SourceLayoutError(
                        f"{path.name} line {line}: {rel} is already named on line {seen[rel]}; each file belongs to "
                        "one pair"
                    )
                seen[rel] = line
            out.append((image, mask, split))
    return out


def _relative(raw: str, name: str, line: int) -> str:
    text = raw.strip().replace("\\", "/")
    if not text:
        return ""
    rel = PurePosixPath(text)
    if rel.is_absolute() or ".." in rel.parts:
        raise sources.SourceLayoutError(f"{name} line {line}: {text!r} must be a path inside data.root")
    return rel.as_posix()


def scan_pairs_csv(
    base: Path,
    origin: str,
    pairs_csv: str | None,
    image_column: str,
    mask_column: str,
    split_column: str | None,
    required: bool = True,
) -> tuple[list[Pair], list[_Loose], list[SkippedFile]]:
    """(pairs, loose files, skipped files) of a folder with a pairs CSV (module docstring); an inbox without its
    CSV (``required`` False) has no pairs and every file is skipped. ``SourceLayoutError`` as
    :func:`read_pairs_table` (and without ``pairs_csv``)."""
    if not pairs_csv:
        raise sources.SourceLayoutError("data.segmentation.layout csv needs data.segmentation.pairs_csv")
    csv_path = base / pairs_csv
    table = (
        read_pairs_table(csv_path, image_column, mask_column, split_column) if required or csv_path.is_file() else []
    )
    named = {rel for image, mask, _ in table for rel in (image, mask) if rel}
    csv_rel = PurePosixPath(pairs_csv).as_posix()
    skipped: list[SkippedFile] = []
    for rel, path in sources.walk_files(base, hidden=True):
        if rel in named:
            continue
        reason = sources._set_aside(tuple(rel.split("/")), path)
        detail = ""
        if reason is None and rel == csv_rel:
            reason, detail = "labels_csv", "the pairs CSV (data.segmentation.pairs_csv)"
        elif reason is None and case_name(rel) is not None:
            reason, detail = "outside_layout", "a NIfTI file the pairs CSV does not name"
        elif reason is None:
            reason, detail = "not_an_image_file", "not a NIfTI file the pairs CSV names"
        skipped.append(SkippedFile(rel, origin, reason, detail))
    pairs: list[Pair] = []
    loose: list[_Loose] = []
    for image_rel, mask_rel, split in table:
        image, mask = base / image_rel, base / mask_rel
        image_ok = bool(image_rel) and image.is_file()
        mask_ok = bool(mask_rel) and mask.is_file()
        for rel, path, ok in ((image_rel, image, image_ok), (mask_rel, mask, mask_ok)):
            if rel and not ok:
                loose.append(_Loose(f"{origin}/{rel}", path, "missing_file", "named in the pairs CSV, not found"))
        if image_ok and mask_ok:
            pairs.append((image_rel, mask_rel, image, mask, split))
        elif image_ok:
            loose.append(_Loose(f"{origin}/{image_rel}", image, "unpaired_image", "its mask is missing"))
        elif mask_ok:
            loose.append(_Loose(f"{origin}/{mask_rel}", mask, "unpaired_mask", "its image is missing"))
    return pairs, loose, skipped


# --------------------------------------------------------------------------- reading (workers)

_OPTIONS: PairOptions | None = None


def _init(options: PairOptions) -> None:
    global _OPTIONS
    _OPTIONS = options


def read_pair(job: PairJob) -> dict:
    """Read, check and store (``<staging>/<case_id>.npy`` and ``.mask.npy``) one pair; runs in a worker.

    Returns ``hashes`` (SHA-256 hex of the image and the mask file, None when unreadable) and ``status``: ``ok`` with
    ``meta`` (the manifest's measured columns), or ``refused`` with ``reason``/``detail`` (and ``library_message``
    for an unforeseen error, for the workspace's report only).
    """
    assert _OPTIONS is not None, "read_pair runs in a pool initialised with _init (or in _read_all)"
    hashes = [_sha256_or_none(job.image), _sha256_or_none(job.mask)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = _read_and_store(job, _OPTIONS, hashes)
    except PairRefused as refused:
        return {"status": "refused", "hashes": hashes, "reason": refused.reason, "detail": refused.detail}
    except Exception as err:  # a reader failing in an unforeseen way: quarantined, the type only in logs
        return {
            "status": "refused",
            "hashes": hashes,
            "reason": "unreadable",
            "detail": f"unexpected {type(err).__name__}",
            "library_message": " ".join(str(err).split())[:500],
        }
    return {"status": "ok", "hashes": hashes, "meta": meta}


def _read_and_store(job: PairJob, options: PairOptions, hashes: list[str | None]) -> dict:
    volumes = []
    for role, path in (("image", job.image), ("mask", job.mask)):
        try:
            volumes.append(read_nifti(path, options.modality if role == "image" else None))
        except VolumeRefused as refused:
            raise PairRefused(refused.reason, f"{role}: {refused.detail or VOLUME_REASONS[refused.reason]}") from None
    image, mask = volumes
    contract = options.contract
    grid = contract.volume.shape
    assert grid is not None
    turned = geometry.oriented(image, contract)  # NIfTI is read in RAS: the same shape either way
    labels = check_pair(turned, geometry.oriented(mask, contract), options.n_labels, options.tolerance_mm, grid)
    stored, stored_mask, offset = geometry.training_pair(image, labels, contract)
    staging = Path(options.staging)
    np.save(staging / f"{job.case_id}.npy", np.ascontiguousarray(stored), allow_pickle=False)
    np.save(staging / f"{job.case_id}.mask.npy", np.ascontiguousarray(stored_mask), allow_pickle=False)
    present = [int(v) for v in np.unique(stored_mask) if v > 0]
    return {
        "sha256": hashes[0] or "",
        "shape": [int(n) for n in turned.shape],
        "stored_shape": [int(n) for n in stored.shape],
        "spacing": [float(s) for s in turned.spacing],
        "axcodes": "".join(image.axcodes),
        "bit_depth": _nifti_bits(job.image),
        "offset": [int(o) for o in offset],
        "foreground_fraction": float(np.count_nonzero(stored_mask)) / stored_mask.size,
        "labels_present": present,
        "pixel_mean": float(stored.mean()),
        "pixel_std": float(stored.std()),
    }


def worker_count(configured: int | None, jobs: list[PairJob]) -> int:
    """How many processes read ``jobs``: ``data.workers`` (None: one per CPU), at most one per job, and one (this
    process) when the files add up to less than :data:`PARALLEL_MIN_BYTES`, where starting workers costs more than
    it saves."""
    total = 0
    for job in jobs:
        for path in (job.image, job.mask):
            try:
                total += path.stat().st_size
            except OSError:
                continue
    if total < PARALLEL_MIN_BYTES:
        return 1
    return min(configured or _cpu_count(), max(1, len(jobs)))


def _nifti_bits(path: Path) -> int:
    """Bits per voxel of the NIfTI file's data type (header only; read_nifti has read the file)."""
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)  # Nifti2Image is a subclass
    return int(image.get_data_dtype().itemsize * 8)


def _read_all(jobs: list[PairJob], options: PairOptions, workers: int) -> Iterator[dict]:
    """:func:`read_pair` of every job, in order: in this process for one worker, else in a forkserver pool."""
    global _OPTIONS
    if not jobs:
        return
    if workers <= 1:
        saved = _OPTIONS
        _OPTIONS = options
        try:
            for job in jobs:
                yield read_pair(job)
        finally:
            _OPTIONS = saved
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["medimg.data.ingest_pairs"])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(options,))
    try:
        yield from pool.map(read_pair, jobs, chunksize=8)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- results (parent)


def _refuse(
    quarantine: Quarantine,
    item: _Planned,
    secret: bytes,
    reason: str,
    detail: str,
    library_message: str | None = None,
) -> None:
    """Quarantine both files of a refused pair; one log line naming the case by its pseudonym."""
    before = len(quarantine)
    explained = f"{reason} ({detail or _REASON_TEXT.get(reason, reason)})"
    for place in item.places:
        text = f"case {item.job.case_id} (image and mask): {explained}"
        _quarantine_file(quarantine, place, secret, reason, text, library_message=library_message, log_it=False)
    if before < MAX_LOGGED_QUARANTINE:
        log.warning("refused case %s: %s", item.job.case_id, explained)


def _quarantine_file(
    quarantine: Quarantine,
    place: str,
    secret: bytes,
    reason: str,
    message: str,
    *,
    library_message: str | None = None,
    log_it: bool = True,
) -> None:
    """One quarantined file, named by its keyed pseudonym (its place is the report's ``file``)."""
    ref = pseudonym(place, secret, "file")
    quarantine.add(ref, reason, f"{ref}: {message}", file=place, pseudonym=ref, library_message=library_message)
    if log_it and len(quarantine) <= MAX_LOGGED_QUARANTINE:
        log.warning("quarantined %s: %s", ref, reason)


def _row(
    config: DataConfig, class_names: tuple[str, ...], item: _Planned, meta: dict, base: Path | None, chash: str
) -> dict:
    """The manifest row of one stored case (``split`` None unless the CSV gave one; ``path``/``mask_path`` later)."""
    depth, height, width = meta["stored_shape"]
    original_depth, original_height, original_width = meta["shape"]
    present = meta["labels_present"]
    label = max(present, default=0)
    return {
        "id": item.job.case_id,
        "sha256": meta["sha256"],
        "label": label,
        "label_name": class_names[label],
        "split": item.split,
        "source": base.name if base is not None else "",
        "path": None,
        "height": height,
        "width": width,
        "pixel_mean": meta["pixel_mean"],
        "pixel_std": meta["pixel_std"],
        "patient_id": item.patient,
        "study_id": None,
        "series_id": None,
        "source_kind": SOURCE_KIND,
        "source_file": item.source_file,
        "file_format": "nifti",
        "modality": config.modality,
        "original_height": original_height,
        "original_width": original_width,
        "bit_depth": meta["bit_depth"],
        "photometric": None,
        "contract_hash": chash,
        "depth": depth,
        "original_depth": original_depth,
        "spacing_z": meta["spacing"][0],
        "spacing_y": meta["spacing"][1],
        "spacing_x": meta["spacing"][2],
        "axcodes": meta["axcodes"],
        "corrections": "",
        "mask_path": None,
        "offset_z": meta["offset"][0],
        "offset_y": meta["offset"][1],
        "offset_x": meta["offset"][2],
        "foreground_fraction": meta["foreground_fraction"],
        "labels_present": ";".join(str(v) for v in present),
        "_origin": item.origin,
        "_explicit_split": item.split is not None,
        "_key": item.places[0],
    }


def _store(folder: Path, frame, staging: Path) -> None:
    """Move each case's image and mask from ``staging`` to ``path``/``mask_path`` (an identical file already there is
    kept), remove stored images and masks of no row, write the manifest."""
    made: set[Path] = set()
    for case_id, image_rel, mask_rel in zip(frame["id"], frame["path"], frame["mask_path"], strict=True):
        for source, target in (
            (staging / f"{case_id}.npy", folder / image_rel),
            (staging / f"{case_id}.mask.npy", folder / mask_rel),
        ):
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            if target.is_file() and target.read_bytes() == source.read_bytes():
                continue
            target.unlink(missing_ok=True)  # never write through a hard link
            shutil.move(source, target)
    remove_stale_images(folder, set(frame["path"]) | set(frame["mask_path"]))
    manifest.write(frame, folder)
