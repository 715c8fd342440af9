"""Ingest a folder of volumes (``data.source: nifti_folder`` or ``dicom_series``) into the workspace's dataset.

The dataset folder holds ``volumes/<split>/<id>.npy`` (uint8 ``[S, S, S]``, ``np.save`` without pickle, the
3D contract: :func:`medimg.volume_contract.prepare_volume`) and the manifest with :data:`~medimg.data.manifest.
VOLUME_COLUMNS` (:func:`medimg.data.manifest.to_frame` with ``volumes=True``). Like the 2D ingests its content is
a pure function of the source (and inbox), the labels CSV, the contract, the split settings and the
de-identification secret, so the same input gives byte-identical files and the same DVC data version.

**What a volume is.**

* ``nifti_folder``: every ``.nii`` / ``.nii.gz`` file under the folder is one volume
  (:func:`medimg.data.nifti.read_nifti`) of the modality ``data.modality`` declares (NIfTI has none; the
  contract's intensity rule depends on it: CT is windowed in HU). The labels CSV (``data.volumes``) is keyed
  by the file's path relative to the folder, else by its bare name. No patient is known: each file is its
  own patient. A file with fewer than ``data.volumes.min_slices`` voxels along any axis is refused
  (``too_few_slices``): a slab, not a volume.
* ``dicom_series``: the DICOM files under the folder (any names, no extension needed) are grouped into series
  by SeriesInstanceUID and each series (or enhanced multi-frame object) is one volume
  (:func:`medimg.data.series.scan_series_folder`, :func:`~medimg.data.series.assemble_series`; one folder may
  hold several series). The geometry rules are :class:`~medimg.data.slice_stack.StackRules` from
  ``data.volumes``: ``min_slices``, ``gantry_tilt`` (correct | refuse), ``irregular_spacing`` (resample |
  refuse); missing slices and duplicate positions are always refused. The labels CSV is keyed by the folder
  holding the series, relative to the source folder (``.`` for the folder itself): a series gets the label of
  the deepest folder above its files (their common folder) that the CSV names, so one row labels every
  series below it.

**Every file is accounted for**: part of a stored volume; quarantined with its reason (every file of a refused
volume with the :class:`~medimg.data.volumes.VolumeRefused` reason, e.g. ``missing_slices``,
``irregular_spacing``, ``gantry_tilt``, ``bad_slice``, ``unreadable``; every file of a volume without a
label with ``no_label``; a DICOM file whose header cannot be read with its :class:`~medimg.data.images.BadImage`
reason); or skipped with a reason (hidden and system files, the labels CSV, non-DICOM files in a series folder,
non-NIfTI files in a NIfTI folder, DICOMDIRs and other non-image objects: :data:`medimg.data.skips.SKIP_REASONS`).
Quarantine counts files (``IngestSummary.n_quarantined``), and ``data.max_bad_fraction`` compares the
quarantined files with all files ingested or quarantined; the check is made before anything is written.

**Manifest rows** (one per volume): ``id`` ``vol-<16 hex>``, a keyed pseudonym of the volume's place (the
series' UID, or its folder and Frame of Reference when the files have no UID, or the file); ``patient_id`` /
``study_id`` / ``series_id`` the keyed pseudonyms of PatientID, StudyInstanceUID and SeriesInstanceUID
(:func:`medimg.data.deid.safe_metadata`: the same pseudonyms a 2D DICOM ingest gives those values). Without a
PatientID the study's pseudonym names the patient, without either the folder's; without a SeriesInstanceUID the
series is named by a pseudonym of its place. ``source_file`` is a keyed pseudonym too (of the NIfTI file, the
multi-frame file or the series' folder): file names can be UIDs, dates or patient names. ``sha256`` is the
file's SHA-256 for NIfTI, and for a series the SHA-256 of its files' sorted SHA-256 hex digests (so a renamed
copy has the same). ``original_depth``/``original_height``/``original_width`` and ``spacing_z/y/x`` (mm)
describe the volume as the reader gave it (after its corrections; e.g. a tilted series' sheared canvas) along
the stored axes: after the contract's orientation step (flips and transposes only; ``preprocess.volume.
orientation``), before any resampling. ``axcodes`` is the orientation as read (e.g. ``SPL`` for an axial DICOM
series, ``SAR`` for NIfTI), ``corrections`` the reader's corrections joined by ``;``. ``file_format`` is
``dicom`` or ``nifti``; ``bit_depth`` BitsStored for DICOM, the bits of the NIfTI data type;
``photometric`` the DICOM Photometric Interpretation (None for NIfTI).

**Splits** as the 2D ingests (:func:`medimg.data.splitting.assign_splits`): the CSV's ``split_column`` is kept,
the rest is split by patient; inbox volumes of a known patient join its split.

**Workers.** Series and files are read in worker processes (``data.workers``; pydicom's warnings and logger are
process-global, so never threads), from a ``forkserver`` as in :mod:`medimg.data.decode_pool`; a worker writes
the stored cube to a staging folder beside the dataset folder, so volumes never pass through the parent.
Headers are scanned in the parent first (to group series and look up labels). There is no decode cache: every
ingest reads every volume again.

**Privacy.** Workers return sizes, codes, hashes and keyed pseudonyms only; no UID, PatientID, name, date or
file name reaches the manifest or a log line (volumes are logged by their pseudonym). The quarantine and skip
reports inside the workspace name files by their place in the source folder, as the 2D ones do.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np

from medimg import preprocess, volume_contract
from medimg.config import DataConfig, PreprocessConfig
from medimg.data import manifest, sources
from medimg.data.deid import pseudonym, safe_metadata
from medimg.data.dicom import _pydicom_unlogged, _read
from medimg.data.images import REASONS
from medimg.data.ingest_result import IngestResult, account, remove_stale_images
from medimg.data.manifest import SPLITS
from medimg.data.nifti import read_nifti
from medimg.data.quarantine import Quarantine
from medimg.data.series import SeriesFiles, assemble_series, scan_series_folder
from medimg.data.skips import SkippedFile
from medimg.data.slice_stack import StackRules
from medimg.data.splitting import assign_splits
from medimg.data.volumes import VOLUME_REASONS, VolumeRefused, reoriented

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
VOLUME_SOURCE_KINDS = ("nifti_folder", "dicom_series")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_LOGGED_QUARANTINE = 50
#: Quarantine reasons besides those of :data:`medimg.data.volumes.VOLUME_REASONS` and
#: :data:`medimg.data.images.REASONS`.
EXTRA_REASONS = {"no_label": "the labels CSV has no (usable) label for the volume"}
_CODE = re.compile(r"^[A-Z0-9 _]{1,16}$")
_REASON_TEXT = {**VOLUME_REASONS, **EXTRA_REASONS}


@dataclass(frozen=True)
class VolumeJob:
    """One volume to read (or, ``hash_only``, only to hash: set aside before reading, e.g. for want of a label).

    ``volume_id`` is its manifest id (a pseudonym); ``files`` its files (one for NIfTI and multi-frame);
    ``series`` the scanned series (DICOM), whose ``series_uid`` is IDENTIFYING and only pseudonymised;
    ``patient_fallback``/``series_fallback``: the pseudonyms to use when the headers have no PatientID or
    StudyInstanceUID / no SeriesInstanceUID.
    """

    volume_id: str
    files: tuple[Path, ...]
    series: SeriesFiles | None = None
    patient_fallback: str = ""
    series_fallback: str | None = None
    hash_only: bool = False


@dataclass(frozen=True)
class ReadOptions:
    """How the workers read and store: the contract, the stacking rules, the key, the staging folder, and the
    modality declared for NIfTI files (``data.modality``: the contract's intensity rule depends on it)."""

    contract: PreprocessConfig
    rules: StackRules
    allow_burned_in: bool
    secret: bytes
    staging: str
    modality: str | None = None


@dataclass
class _Planned:
    """A job with what the parent knows of it: origin, label and split (or the reason it is set aside)."""

    job: VolumeJob
    origin: str
    places: tuple[str, ...]  # "<origin>/<path relative to its folder>" of each file
    source_file: str  # the manifest's source_file (a pseudonym)
    rel: str  # what the labels CSV is looked up by: the NIfTI file's path, or the folder holding the series
    label: int | None
    split: str | None
    reason: str | None


def stack_rules(config: DataConfig) -> StackRules:
    """``data.volumes`` as :class:`~medimg.data.slice_stack.StackRules` (min_slices, gantry_tilt, irregular_spacing;
    the tolerances keep their defaults)."""
    vol = config.volumes
    return StackRules(min_slices=vol.min_slices, gantry_tilt=vol.gantry_tilt, irregular_spacing=vol.irregular_spacing)


def ingest_volumes(
    kind: str,
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
    """Ingest a ``nifti_folder`` or ``dicom_series`` source (and its inbox) into the dataset ``folder`` (module
    docstring).

    ``class_names`` (``task.class_names``) map the CSV's labels (a name, any case, or an index) to label indices.
    The quarantine and skip lists are written to ``quarantine_csv``/``skipped_csv`` (when given) before the
    threshold is checked. ``n_files`` of the result counts the files ingested or quarantined, ``n_images`` the
    volumes, ``n_decoded`` the files read. Raises ``ValueError`` for another kind or a 2D contract,
    :class:`~medimg.data.sources.SourceLayoutError` for a missing labels CSV or column, or no usable volume,
    :class:`~medimg.data.quarantine.QuarantineThresholdError` above ``data.max_bad_fraction``.
    """
    if kind not in VOLUME_SOURCE_KINDS:
        raise ValueError(f"ingest_volumes: unknown source kind {kind!r}; expected one of {VOLUME_SOURCE_KINDS}")
    if contract.dims != 3:
        raise ValueError(f"data.source {kind} gives volumes: preprocess.dims must be 3")
    vol = config.volumes
    columns = (vol.key_column, vol.label_column, vol.split_column)
    csv_path = root / vol.labels_csv
    table = sources.read_label_table(csv_path, *columns)
    origins: list[tuple[str, Path, str | None]] = [("source", root, _inside(csv_path, root))]
    if inbox is not None and inbox.is_dir():
        inbox_csv = inbox / vol.labels_csv
        if inbox_csv.is_file():
            extra = sources.read_label_table(inbox_csv, *columns)
            table = {**table, **{k: v for k, v in extra.items() if k not in table}}
        origins.append(("inbox", inbox, _inside(inbox_csv, inbox)))
    elif inbox is not None:
        log.warning("inbox %s does not exist: nothing new to ingest from it", inbox)

    quarantine = Quarantine()
    skipped: list[SkippedFile] = []
    planned: list[_Planned] = []
    hashes: dict[str, str | None] = {}
    n_unreadable = 0
    for origin, base, labels_rel in origins:
        found, set_aside, unreadable = (_scan_nifti if kind == "nifti_folder" else _scan_series)(
            base, origin, labels_rel, secret
        )
        skipped.extend(set_aside)
        n_unreadable += len(unreadable)
        for bad in unreadable:
            place = _place(origin, base, bad.path)
            hashes[place] = _sha256_or_none(bad.path)
            message = f"{bad.reason} ({bad.detail or REASONS[bad.reason]})"
            _quarantine_file(quarantine, place, secret, bad.reason, message, library_message=bad.library_message)
        for item in found:
            entry = (_nifti_label if kind == "nifti_folder" else _folder_label)(item, table)
            label = sources.class_index(entry.label, class_names) if entry else None
            item.label, item.split = label, entry.split if entry else None
            if label is None:
                item.reason = "no_label"
                item.job = VolumeJob(item.job.volume_id, item.job.files, hash_only=True)
            planned.append(item)

    chash = preprocess.contract_hash(contract)
    workers = min(config.workers or _cpu_count(), max(1, len(planned)))
    staging = tempfile.TemporaryDirectory(prefix=".medimg-volumes-", dir=_staging_parent(folder))
    options = ReadOptions(contract, stack_rules(config), vol.allow_burned_in, secret, staging.name, config.modality)
    try:
        rows: list[dict] = []
        n_decoded = 0
        jobs = [p.job for p in planned]
        for done, (item, result) in enumerate(zip(planned, _read_all(jobs, options, workers), strict=True), 1):
            hashes.update(zip(item.places, result["hashes"], strict=True))
            if not item.job.hash_only:
                n_decoded += len(item.job.files)
            if item.reason is not None:
                _refuse(quarantine, item, secret, item.reason, "")
            elif result["status"] != "ok":
                _refuse(quarantine, item, secret, result["reason"], result["detail"], result.get("library_message"))
            else:
                found_in = root if item.origin == "source" else inbox
                rows.append(_row(kind, config, class_names, item, result["meta"], found_in, contract.size, chash))
            if progress is not None:
                progress(done, len(planned))
        n_files = sum(len(p.places) for p in planned) + n_unreadable
        log.info(
            "%d volumes from %d files (%d files read), %d files quarantined, %d other files skipped",
            len(rows),
            n_files,
            n_decoded,
            len(quarantine),
            len(skipped),
        )
        account(
            quarantine,
            skipped,
            n_files,
            config.max_bad_fraction,
            inputs="files",
            not_inputs="volumes",
            quarantine_csv=quarantine_csv,
            skipped_csv=skipped_csv,
        )
        if not rows:
            raise sources.SourceLayoutError(f"{root}: no usable volume among {n_files} files")
        assign_splits(rows, config.split)
        for row in rows:
            row["path"] = f"volumes/{row['split']}/{row['id']}.npy"
        frame = manifest.to_frame(_ordered(rows), volumes=True)
        _store(folder, frame, Path(staging.name))
    finally:
        staging.cleanup()
    return IngestResult(
        folder=folder,
        n_images=len(frame),
        split_counts={split: int((frame["split"] == split).sum()) for split in SPLITS},
        source=str(root),
        source_md5=_fingerprint(hashes),
        source_kind=kind,
        n_files=n_files,
        n_decoded=n_decoded,
        n_cached=0,
        contract_hash=chash,
        quarantine=quarantine,
        skipped=tuple(sorted(skipped, key=lambda s: s.place)),
    )


# --------------------------------------------------------------------------- scanning (parent)


def _scan_nifti(base: Path, origin: str, labels_rel: str | None, secret: bytes):
    """(planned volumes, skipped files, unreadable files) of a NIfTI folder: every ``.nii``/``.nii.gz`` a volume."""
    found, skipped = [], []
    for rel, path in sources.walk_files(base, hidden=True):
        reason = sources._set_aside(tuple(rel.split("/")), path)
        detail = ""
        if reason is None and rel == labels_rel:
            reason = "labels_csv"
        if reason is None and not path.name.lower().endswith(NIFTI_SUFFIXES):
            if sources.decoder_for(path) is not None:
                reason, detail = "outside_layout", "a DICOM/PNG/JPEG file in a NIfTI folder"
            else:
                reason, detail = "not_an_image_file", "not a NIfTI file (.nii, .nii.gz)"
        if reason is not None:
            skipped.append(SkippedFile(rel, origin, reason, detail))
            continue
        place = f"{origin}/{rel}"
        job = VolumeJob(pseudonym(place, secret, "vol"), (path,), patient_fallback=pseudonym(place, secret, "pat"))
        found.append(
            _Planned(job, origin, (place,), pseudonym(place, secret, "file"), rel, None, None, None),
        )
    return found, skipped, []


def _scan_series(base: Path, origin: str, labels_rel: str | None, secret: bytes):
    """(planned volumes, skipped files, unreadable files) of a DICOM series folder (headers read here)."""
    scan = scan_series_folder(base)
    skipped = [
        SkippedFile(s.rel, origin, "labels_csv")
        if s.rel == labels_rel
        else SkippedFile(s.rel, origin, s.reason, s.detail)
        for s in scan.skipped
    ]
    found = []
    for series in scan.series:
        rels = [Path(os.path.relpath(f, base)).as_posix() for f in series.files]
        folder = _common_folder(rels)
        folder_place = f"{origin}/{folder}" if folder else origin
        if series.multiframe:
            key = f"{origin}\0file\0{rels[0]}"
            source_file = pseudonym(f"{origin}/{rels[0]}", secret, "file")
        elif series.series_uid:
            key = f"{origin}\0series\0{series.series_uid}"
            source_file = pseudonym(folder_place, secret, "folder")
        else:
            key = f"{origin}\0folder\0{folder}\0{series.headers[0].frame_of_reference or ''}"
            source_file = pseudonym(folder_place, secret, "folder")
        job = VolumeJob(
            volume_id=pseudonym(key, secret, "vol"),
            files=series.files,
            series=series,
            patient_fallback=pseudonym(folder_place, secret, "pat"),
            series_fallback=None if series.series_uid else pseudonym(key, secret, "series"),
        )
        places = tuple(f"{origin}/{rel}" for rel in rels)
        found.append(_Planned(job, origin, places, source_file, folder, None, None, None))
    return found, skipped, list(scan.unreadable)


def _common_folder(rels: list[str]) -> str:
    """The deepest folder (posix, relative; "" for the base) holding every one of ``rels``."""
    parts = [PurePosixPath(r).parts[:-1] for r in rels]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)


def _nifti_label(item: _Planned, table: dict[str, sources.LabelEntry]) -> sources.LabelEntry | None:
    """The CSV row of a NIfTI file: by its path relative to its folder, else its bare name."""
    return table.get(item.rel) or table.get(PurePosixPath(item.rel).name)


def _folder_label(item: _Planned, table: dict[str, sources.LabelEntry]) -> sources.LabelEntry | None:
    """The CSV row of a series: the deepest folder above its files that the table names (``.``: the base)."""
    parts = PurePosixPath(item.rel).parts if item.rel else ()
    for depth in range(len(parts), 0, -1):
        entry = table.get("/".join(parts[:depth]))
        if entry is not None:
            return entry
    return table.get(".")


def _inside(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (posix), or None when it is not inside it."""
    rel = Path(os.path.relpath(path, folder))
    return None if rel.parts[:1] == ("..",) else rel.as_posix()


def _place(origin: str, base: Path, path: Path) -> str:
    return f"{origin}/{Path(os.path.relpath(path, base)).as_posix()}"


# --------------------------------------------------------------------------- reading (workers)

_OPTIONS: ReadOptions | None = None


def _init(options: ReadOptions) -> None:
    global _OPTIONS
    _OPTIONS = options
    logging.getLogger("pydicom").propagate = False


def read_job(job: VolumeJob) -> dict:
    """Read, check, store (``<staging>/<volume_id>.npy``) and describe one volume; runs in a worker.

    Returns ``hashes`` (SHA-256 hex of each file, None when unreadable) and ``status``: ``ok`` with ``meta``
    (the manifest's measured columns), ``refused`` with ``reason``/``detail`` (and ``library_message``, for the
    workspace's report only), or ``hashed`` for a ``hash_only`` job. Nothing identifying is returned.
    """
    assert _OPTIONS is not None, "read_job runs in a pool initialised with _init (or in _read_all)"
    hashes = [_sha256_or_none(path) for path in job.files]
    if job.hash_only:
        return {"status": "hashed", "hashes": hashes}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = _read_and_store(job, _OPTIONS, hashes)
    except VolumeRefused as refused:
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


def _read_and_store(job: VolumeJob, options: ReadOptions, hashes: list[str | None]) -> dict:
    if job.series is not None:
        volume = assemble_series(job.series, options.rules, allow_burned_in=options.allow_burned_in)
        header = _header_metadata(job.files[0], options.secret)
        file_format, bit_depth, photometric = "dicom", header.get("bits_stored"), header.get("photometric")
        patient = header.get("patient_pseudonym") or header.get("study_pseudonym") or job.patient_fallback
        study = header.get("study_pseudonym")
        series = header.get("series_pseudonym") or job.series_fallback
        digest = hashlib.sha256("".join(sorted(h or "" for h in hashes)).encode()).hexdigest()
    else:
        volume = read_nifti(job.files[0], options.modality)
        if min(volume.shape) < options.rules.min_slices:
            raise VolumeRefused(
                "too_few_slices", f"shape {volume.shape}: fewer than {options.rules.min_slices} voxels along an axis"
            )
        file_format, bit_depth, photometric = "nifti", _nifti_bits(job.files[0]), None
        patient, study, series = job.patient_fallback, None, None
        digest = hashes[0] or ""
    stored = volume_contract.prepare_volume(volume, options.contract)
    target = Path(options.staging) / f"{job.volume_id}.npy"
    np.save(target, np.ascontiguousarray(stored), allow_pickle=False)
    oriented = volume
    if options.contract.volume.orientation == "RAS":
        oriented = reoriented(volume, volume_contract.RAS_AXCODES)
    modality = volume.modality if volume.modality and _CODE.match(volume.modality) else None
    return {
        "sha256": digest,
        "shape": [int(n) for n in oriented.shape],
        "spacing": [float(s) for s in oriented.spacing],
        "axcodes": "".join(volume.axcodes),
        "corrections": ";".join(volume.corrections),
        "modality": modality,
        "file_format": file_format,
        "bit_depth": bit_depth,
        "photometric": photometric,
        "patient": patient,
        "study": study,
        "series": series,
        "pixel_mean": float(stored.mean()),
        "pixel_std": float(stored.std()),
    }


def _header_metadata(path: Path, secret: bytes) -> dict:
    """:func:`medimg.data.deid.safe_metadata` of one DICOM file's header (pseudonyms and codes only)."""
    with _pydicom_unlogged(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return safe_metadata(_read(path, None, header_only=True), secret)


def _nifti_bits(path: Path) -> int:
    """Bits per voxel of the NIfTI file's data type (header only; read_nifti has checked it is NIfTI-1 or -2)."""
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise VolumeRefused("unreadable", f"a {type(image).__name__}, not NIfTI", (path,))
    return int(image.get_data_dtype().itemsize * 8)


def _sha256_or_none(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _read_all(jobs: list[VolumeJob], options: ReadOptions, workers: int) -> Iterator[dict]:
    """:func:`read_job` of every job, in order: in this process for one worker, else in a forkserver pool."""
    global _OPTIONS
    if not jobs:
        return
    if workers <= 1:
        saved = _OPTIONS
        _OPTIONS = options
        try:
            for job in jobs:
                yield read_job(job)
        finally:
            _OPTIONS = saved
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["medimg.data.ingest_volumes", "medimg.data.series", "medimg.volume_contract"])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(options,))
    try:
        yield from pool.map(read_job, jobs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- results (parent)


def _refuse(
    quarantine: Quarantine,
    item: _Planned,
    secret: bytes,
    reason: str,
    detail: str,
    library_message: str | None = None,
) -> None:
    """Quarantine every file of a refused volume; one log line naming the volume by its pseudonym."""
    before = len(quarantine)
    explained = f"{reason} ({detail or _REASON_TEXT.get(reason, reason)})"
    for place in item.places:
        text = f"volume {item.job.volume_id} ({len(item.places)} files): {explained}"
        _quarantine_file(quarantine, place, secret, reason, text, library_message=library_message, log_it=False)
    if before < MAX_LOGGED_QUARANTINE:
        log.warning("refused volume %s (%d files): %s", item.job.volume_id, len(item.places), explained)


def _quarantine_file(
    quarantine: Quarantine,
    place: str,
    secret: bytes,
    reason: str,
    message: str = "",
    *,
    library_message: str | None = None,
    log_it: bool = True,
) -> None:
    """One quarantined file, named by its keyed pseudonym (its place is the report's ``file``)."""
    ref = pseudonym(place, secret, "file")
    text = f"{ref}: {message or reason}"
    quarantine.add(ref, reason, text, file=place, pseudonym=ref, library_message=library_message)
    if log_it and len(quarantine) <= MAX_LOGGED_QUARANTINE:
        log.warning("quarantined %s: %s", ref, reason)


def _row(
    kind: str,
    config: DataConfig,
    class_names: tuple[str, ...],
    item: _Planned,
    meta: dict,
    base: Path | None,
    size: int,
    chash: str,
) -> dict:
    """The manifest row of one stored volume (``split`` None unless the CSV gave one; ``path`` set later)."""
    depth, height, width = meta["shape"]
    label = int(item.label)  # type: ignore[arg-type]
    return {
        "id": item.job.volume_id,
        "sha256": meta["sha256"],
        "label": label,
        "label_name": class_names[label],
        "split": item.split,
        "source": base.name if base is not None else "",
        "path": None,
        "height": size,
        "width": size,
        "pixel_mean": meta["pixel_mean"],
        "pixel_std": meta["pixel_std"],
        "patient_id": meta["patient"],
        "study_id": meta["study"],
        "series_id": meta["series"],
        "source_kind": kind,
        "source_file": item.source_file,
        "file_format": meta["file_format"],
        "modality": meta["modality"] or config.modality,
        "original_height": height,
        "original_width": width,
        "bit_depth": int(meta["bit_depth"] or 0),
        "photometric": meta["photometric"],
        "contract_hash": chash,
        "depth": size,
        "original_depth": depth,
        "spacing_z": meta["spacing"][0],
        "spacing_y": meta["spacing"][1],
        "spacing_x": meta["spacing"][2],
        "axcodes": meta["axcodes"],
        "corrections": meta["corrections"],
        "_origin": item.origin,
        "_explicit_split": item.split is not None,
        "_key": item.places[0],  # the stratified split's key (data.split.stratify): unique per volume
    }


def _ordered(rows: list[dict]) -> list[dict]:
    rank = {s: i for i, s in enumerate(SPLITS)}
    ordered = sorted(rows, key=lambda r: (rank[r["split"]], r["id"]))
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in ordered]


def _staging_parent(folder: Path) -> Path:
    """Where the workers' cubes wait for their split: beside the dataset folder (one file system, so moved, not
    copied)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent


def _store(folder: Path, frame, staging: Path) -> None:
    """Move each row's cube from ``staging`` to its ``path`` (an identical file already there is kept), remove
    stored items of no row, write the manifest."""
    made: set[Path] = set()
    for volume_id, rel in zip(frame["id"], frame["path"], strict=True):
        source, target = staging / f"{volume_id}.npy", folder / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if target.is_file() and target.read_bytes() == source.read_bytes():
            continue
        target.unlink(missing_ok=True)  # never write through a hard link
        shutil.move(source, target)
    remove_stale_images(folder, set(frame["path"]))
    manifest.write(frame, folder)


def _fingerprint(hashes: dict[str, str | None]) -> str:
    """MD5 over the sorted (place, sha256) pairs of every file read or quarantined: changes exactly when they do."""
    digest = hashlib.md5()
    for place in sorted(hashes):
        digest.update(f"{place}\0{hashes[place]}\n".encode())
    return digest.hexdigest()
