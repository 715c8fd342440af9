"""Ingest a folder of PNG/JPEG files or of DICOM files into the workspace's dataset folder.

The folder's content is a pure function of the source (and inbox), the preprocessing contract,
the split settings and the de-identification secret, so ingesting the same input twice gives
byte-identical files and therefore the same DVC data version, and a changed input a new one.

The dataset folder holds contract images as PNG plus the manifest. (A MedMNIST archive:
:mod:`medimg.data.ingest_medmnist`.) :func:`ingest_files`:

* every file is hashed, decoded and preprocessed in worker processes, through the decode cache
  (:mod:`medimg.data.decode_pool`; a large folder on a Dask cluster, ``data.dask``:
  :mod:`medimg.data.decode_dask`): a file whose bytes were ingested before is not decoded again,
  and the dataset's PNGs are hard links to the cache's (copies where links are impossible);
* every file under the source and inbox is accounted for: ingested, quarantined or skipped. An
  image that cannot be used is quarantined with its reason (the reasons of
  :data:`medimg.data.images.REASONS`, plus those of :data:`EXTRA_REASONS`) and the batch
  goes on; :class:`~medimg.data.quarantine.QuarantineThresholdError` is raised, before anything
  is written to the dataset, when the quarantined share of the images exceeds
  ``data.max_bad_fraction``. A file that is not an image (hidden and system files, the labels
  CSV, other files, DICOMDIRs and other non-image DICOM objects: :data:`medimg.data.skips.SKIP_REASONS`)
  is skipped with its reason and counts toward nothing. A file set aside before decoding (no
  label, unknown class) has its header read first, so a label-less DICOMDIR is a skip, not a
  ``no_label``;
* the decoder is chosen by each file's content, the labels by the layout
  (:mod:`medimg.data.sources`) and, for image folders, ``data.image_folder.labels``: the class
  folder, a labels CSV (any folder tree; keyed by the path relative to the root or the file name),
  or the Kermany file-name rule (:mod:`medimg.data.kermany`). A class folder may hold DICOM
  beside JPEG files; DICOM rows are
  always named by their DICOM pseudonyms (patient, study, series) and a keyed file pseudonym;
* splits: the split folders of an image folder (or the labels CSV's split column) are kept; a
  split layout without ``val`` gets one carved from ``train`` by patient
  (``data.split.val_fraction``); files without a split are split by patient, stratified and
  seeded (:func:`medimg.data.splitting.split_by_patient`), or with ``data.split.stratify`` image by
  image (:func:`medimg.data.splitting.stratified_split`). Inbox files of a patient already in
  the data join that patient's split; new inbox patients get a split from their pseudonym (a
  uniform keyed hash, in ``data.split.fractions``), so adding files never moves existing ones
  (the rules: :func:`medimg.data.splitting.assign_splits`);
* patients, studies, series, ids and DICOM file names become keyed pseudonyms.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medimg import preprocess
from medimg.config import DataConfig, ImageFolderConfig, PreprocessConfig
from medimg.data import manifest, sources
from medimg.data.decode_dask import ClientFactory, DaskCluster, open_client
from medimg.data.decode_pool import DecodeCache, DecodeJob, DecodeOptions, cache_folder, decode
from medimg.data.deid import pseudonym
from medimg.data.images import REASONS
from medimg.data.ingest_result import IngestResult, account, remove_stale_images
from medimg.data.kermany import NORMAL_FOLDER, PNEUMONIA_FOLDER, kermany_outcome
from medimg.data.manifest import SPLITS
from medimg.data.quarantine import Quarantine
from medimg.data.skips import SkippedFile
from medimg.data.splitting import assign_splits

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MAX_LOGGED_QUARANTINE = 50
EXTRA_REASONS = {
    "unknown_class": "the class folder is not one of the configured classes",
    "no_label": "the labels CSV has no (usable) label for the file",
    "no_kermany_type": "a PNEUMONIA file whose name holds neither _bacteria_ nor _virus_ (or both): the Kermany "
    "file-name rule (data.image_folder.labels: kermany_filename) gives it no class",
}


def ingest_files(
    kind: str,
    config: DataConfig,
    class_names: tuple[str, ...],
    contract: PreprocessConfig,
    folder: Path,
    secret: bytes,
    root: Path,
    inbox: Path | None = None,
    cache_root: Path | None = None,
    quarantine_csv: Path | None = None,
    progress: Progress | None = None,
    skipped_csv: Path | None = None,
    dask_client: ClientFactory | None = None,
) -> IngestResult:
    """Ingest an ``image_folder`` or ``dicom_folder`` source (and its inbox) into ``folder``.

    ``class_names`` (``task.class_names``) map folder names, CSV labels and the Kermany rule's
    outcomes (through ``data.image_folder.kermany_classes``) to label indices.

    ``cache_root`` None (or ``config.cache`` False) decodes every file into a temporary folder.
    The quarantine list (:meth:`~medimg.data.quarantine.Quarantine.write_csv`) and the skip list
    (:func:`medimg.data.skips.write_csv`) are written to ``quarantine_csv`` and ``skipped_csv``
    (when given) before the threshold is checked, so a failed run still says which files were
    bad or skipped and why. ``n_files`` of the result counts the images (ingested or
    quarantined); ``skipped`` the rest, and the three add up to every file under the folders.

    Decoding runs in a local pool of ``data.workers`` processes, or, with ``data.dask.address`` set and at
    least ``data.dask.min_files`` files, on that Dask cluster (:mod:`medimg.data.decode_dask`; its workers
    must see the source and ``cache_root`` at the same paths), with a client from ``dask_client`` (default
    :func:`~medimg.data.decode_dask.open_client`). Either way the result is the same.
    """
    if kind not in ("image_folder", "dicom_folder"):
        raise ValueError(f"ingest_files: unknown source kind {kind!r}")
    files, skipped, table = _scan(kind, config, root, inbox)
    chash = preprocess.contract_hash(contract)
    quarantine = Quarantine()
    refs = {f.place: _ref(kind, f, secret) for f in files}
    labelled: dict[str, tuple[int | None, str | None]] = {}
    set_aside: dict[str, str] = {}
    jobs = []
    for file in files:
        label, split, reason = _label_before_decode(kind, config, class_names, file, table)
        if reason:  # hashed (for the fingerprint) and its header checked for a non-image object, not decoded
            set_aside[file.place] = reason
            jobs.append(DecodeJob(path=str(file.path), ref=file.place, kind=file.decoder, hash_only=True))
            continue
        labelled[file.place] = (label, split)
        jobs.append(DecodeJob(path=str(file.path), ref=file.place, kind=file.decoder))
    by_place = {f.place: f for f in files}

    def where(file: sources.SourceFile) -> str:
        """The file's place as found in its folder (the report's ``file``: what its owner looks for)."""
        base = root if file.origin == "source" else inbox
        return f"{file.origin}/{Path(os.path.relpath(file.path, base)).as_posix()}"

    def bad(file: sources.SourceFile, reason: str, meta: dict | None = None) -> None:
        meta = meta or {}
        _quarantine(
            quarantine,
            refs[file.place],
            reason,
            meta.get("detail", ""),
            file=where(file),
            file_pseudonym=pseudonym(file.place, secret, "file"),
            library_message=meta.get("library_message"),
        )

    temp = None
    use_cache = config.cache and cache_root is not None
    if use_cache and cache_root is not None:
        cache_dir = cache_folder(cache_root, chash, secret, config.min_side, config.dicom.allow_burned_in)
    else:
        temp = tempfile.TemporaryDirectory(prefix="medimg-decode-")
        cache_dir = Path(temp.name)
    options = DecodeOptions(
        preprocess=contract,
        cache_dir=str(cache_dir),
        min_side=config.min_side,
        allow_burned_in=config.dicom.allow_burned_in,
        secret=secret,
        use_cache=use_cache,
    )
    try:
        rows, n_decoded, n_cached = [], 0, 0
        sop_index = _sop_index(kind, config, table, secret)
        workers = config.workers or _cpu_count()
        cluster = _cluster(config, len(jobs), dask_client)
        hashes: dict[str, str | None] = {}
        for done, (job, meta, cached) in enumerate(decode(jobs, options, workers, cluster), start=1):
            file = by_place[job.ref]
            hashes[file.place] = meta.get("sha256")
            if not job.hash_only:
                n_cached += cached
                n_decoded += not cached
            if meta["status"] == "skipped":  # not an image (a DICOMDIR, a report...): no label needed, not bad
                skipped.append(
                    SkippedFile(where(file).split("/", 1)[1], file.origin, meta["reason"], meta.get("detail", ""))
                )
            elif job.hash_only:
                bad(file, set_aside[file.place])
            else:
                label, split = labelled[file.place]
                if meta["status"] == "ok" and label is None:  # keyed by SOPInstanceUID: known only now
                    entry = sop_index.get(meta.get("sop_pseudonym") or "")
                    label = sources.class_index(entry.label, class_names) if entry else None
                    split = entry.split if entry else None
                if meta["status"] != "ok":
                    bad(file, meta["reason"], meta)
                elif label is None:
                    bad(file, "no_label")
                else:
                    rows.append(
                        _row(
                            kind,
                            config,
                            class_names,
                            file,
                            meta,
                            label,
                            split,
                            secret,
                            refs[file.place],
                            root,
                            inbox,
                            chash,
                            contract.size,
                        )
                    )
            if progress is not None:
                progress(done, len(jobs))
            elif len(jobs) >= 500 and done % max(1, len(jobs) // 10) == 0:
                log.info("decoded %d of %d files (%d from the cache)", done, len(jobs), n_cached)
        n_total = len(rows) + len(quarantine)
        log.info(
            "%s: %d images, %d decoded, %d from the cache, %d quarantined, %d other files skipped",
            root.name,
            n_total,
            n_decoded,
            n_cached,
            len(quarantine),
            len(skipped),
        )
        account(
            quarantine,
            skipped,
            n_total,
            config.max_bad_fraction,
            inputs="images",
            not_inputs="images",
            quarantine_csv=quarantine_csv,
            skipped_csv=skipped_csv,
        )
        if not rows:
            raise sources.SourceLayoutError(f"{root}: no usable image among {n_total} files")
        assign_splits(rows, config.split)
        frame = manifest.to_frame(_ordered(rows))
        _store(folder, frame, rows, cache_dir)
    finally:
        if temp is not None:
            temp.cleanup()
    return IngestResult(
        folder=folder,
        n_images=len(frame),
        split_counts={split: int((frame["split"] == split).sum()) for split in SPLITS},
        source=str(root),
        source_md5=_fingerprint(files, hashes),
        source_kind=kind,
        n_files=n_total,
        n_decoded=n_decoded,
        n_cached=n_cached,
        contract_hash=chash,
        quarantine=quarantine,
        skipped=tuple(sorted(skipped, key=lambda s: s.place)),
    )


def _cluster(config: DataConfig, n_jobs: int, connect: ClientFactory | None) -> DaskCluster | None:
    """The Dask cluster to decode ``n_jobs`` files on (``data.dask``), or None for the local pool; logs which."""
    dask = config.dask
    if dask.address is None or n_jobs < dask.min_files:
        why = "" if dask.address is None else f" (fewer than data.dask.min_files {dask.min_files})"
        log.info(
            "decoding %d files in the local pool of %s process(es)%s", n_jobs, config.workers or "one per CPU", why
        )
        return None
    log.info(
        "decoding %d files on the Dask cluster at %s (data.dask.address), %d per task",
        n_jobs,
        dask.address,
        dask.chunk_files,
    )
    return DaskCluster(dask.address, dask.chunk_files, connect or open_client)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _scan(kind: str, config: DataConfig, root: Path, inbox: Path | None):
    """(files to decode, files skipped, labels table) of the source and the inbox."""
    table: dict[str, sources.LabelEntry] = {}
    folder_cfg = config.image_folder
    if kind == "image_folder" and folder_cfg.labels != "csv":
        scan = sources.scan_image_layout(root, "source", folder_cfg.patient_id)
        extra = sources.inbox_scan(inbox, kind, folder_cfg.patient_id)
        return scan.files + extra.files, scan.skipped + extra.skipped, table
    csv_cfg = folder_cfg if kind == "image_folder" else config.dicom
    labels_csv = csv_cfg.labels_csv
    if not labels_csv:
        raise sources.SourceLayoutError("data.dicom.labels_csv is not set: DICOM folders need a labels CSV")
    csv_path = root / labels_csv
    columns = (csv_cfg.key_column, csv_cfg.label_column, csv_cfg.split_column)
    table = sources.read_label_table(csv_path, *columns)
    if kind == "image_folder":
        scan = sources.scan_labelled_layout(root, "source", _inside(csv_path, root), folder_cfg.patient_id)
    else:
        scan = sources.scan_dicom_layout(root, "source", _inside(csv_path, root))
    if inbox is not None and (inbox / labels_csv).is_file():
        inbox_table = sources.read_label_table(inbox / labels_csv, *columns)
        table = {**table, **{k: v for k, v in inbox_table.items() if k not in table}}
    extra_scan = sources.inbox_scan(
        inbox,
        kind,
        folder_cfg.patient_id,
        labels_csv=_inside(inbox / labels_csv, inbox) if inbox else None,
        csv_labels=kind == "image_folder",
    )
    return scan.files + extra_scan.files, scan.skipped + extra_scan.skipped, table


def _inside(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (posix), or None when it is not inside it."""
    rel = Path(os.path.relpath(path, folder))
    return None if rel.parts[:1] == ("..",) else rel.as_posix()


def _ref(kind: str, file: sources.SourceFile, secret: bytes) -> str:
    """How a file is named in outputs: its relative path, or for DICOM (any file of a DICOM folder, or a
    DICOM file of an image folder) a keyed pseudonym of it: DICOM file names can be UIDs or patient names."""
    if kind == "dicom_folder" or file.decoder == "dicom":
        return pseudonym(file.place, secret, "file")
    return file.rel if file.origin == "source" else f"inbox/{file.rel}"


def _quarantine(
    quarantine: Quarantine,
    ref: str,
    reason: str,
    detail: str = "",
    *,
    file: str = "",
    file_pseudonym: str = "",
    library_message: str | None = None,
) -> None:
    """Add one entry; the log line names the file by its pseudonym only (file names can hold patient names)."""
    text = f"{ref}: {reason} ({detail or REASONS.get(reason) or EXTRA_REASONS.get(reason, reason)})"
    quarantine.add(ref, reason, text, file=file, pseudonym=file_pseudonym, library_message=library_message)
    if len(quarantine) <= MAX_LOGGED_QUARANTINE:
        log.warning("quarantined %s: %s", file_pseudonym or ref, reason)
    elif len(quarantine) == MAX_LOGGED_QUARANTINE + 1:
        log.warning("more files quarantined; the quarantine CSV lists all of them")


def _label_before_decode(kind, config: DataConfig, class_names: tuple[str, ...], file: sources.SourceFile, table):
    """(label or None when it needs the decoded header, split, quarantine reason or None)."""
    if kind == "image_folder":
        return _image_folder_label(config.image_folder, class_names, file, table)
    if config.dicom.label_key == "sop_instance_uid":
        return None, None, None
    entry = sources.lookup_dicom_label(file, table, config.dicom.label_key)
    label = sources.class_index(entry.label, class_names) if entry else None
    if entry is None or label is None:
        return None, None, "no_label"
    return label, entry.split, None


def _image_folder_label(cfg: ImageFolderConfig, class_names: tuple[str, ...], file: sources.SourceFile, table):
    """(label, split, None) of an image folder's file by ``data.image_folder.labels``, or (None, None, reason).

    ``folders``: the class folder; ``csv``: the table's row for the file's relative path or name
    (its split column, else the split folder); ``kermany_filename``: :func:`kermany_outcome`
    mapped by ``kermany_classes``.
    """
    if cfg.labels == "csv":
        entry = sources.lookup_dicom_label(file, table, "file")
        label = sources.class_index(entry.label, class_names) if entry else None
        if entry is None or label is None:
            return None, None, "no_label"
        return label, entry.split or file.split, None
    if cfg.labels == "kermany_filename":
        if (file.class_name or "").lower() not in (NORMAL_FOLDER, PNEUMONIA_FOLDER):
            return None, None, "unknown_class"
        outcome = kermany_outcome(file.class_name, file.path.name)
        if outcome is None:
            return None, None, "no_kermany_type"
        return class_names.index(cfg.kermany_classes[outcome]), file.split, None
    label = sources.class_index(file.class_name, class_names, cfg.class_folders)
    return (label, file.split, None) if label is not None else (None, None, "unknown_class")


def _sop_index(kind: str, config: DataConfig, table, secret: bytes) -> dict:
    if kind != "dicom_folder" or config.dicom.label_key != "sop_instance_uid":
        return {}
    return {pseudonym(uid, secret, "sop"): entry for uid, entry in table.items()}


def _source_folder(file: sources.SourceFile, root: Path, inbox: Path | None) -> Path:
    """The folder ``file`` was found in: the source ``root``, or the inbox for an inbox file."""
    if file.origin == "source":
        return root
    if inbox is None:
        raise ValueError(f"{file.rel}: an inbox file, but no inbox folder is set")
    return inbox


def _row(
    kind,
    config: DataConfig,
    class_names: tuple[str, ...],
    file: sources.SourceFile,
    meta: dict,
    label: int,
    split: str | None,
    secret: bytes,
    ref: str,
    root: Path,
    inbox: Path | None,
    chash: str,
    size: int,
) -> dict:
    image_id = pseudonym(file.place, secret, "img")
    if kind == "image_folder" and meta["file_format"] != "dicom":
        patient = pseudonym(file.patient_key or file.place, secret, "pat")
        study = series = None
    else:  # DICOM (of either layout) by its header's pseudonyms; a raster of a DICOM folder is its own patient
        patient = meta.get("patient_pseudonym") or meta.get("study_pseudonym") or pseudonym(file.place, secret, "pat")
        study, series = meta.get("study_pseudonym"), meta.get("series_pseudonym")
    return {
        "id": image_id,
        "sha256": meta["sha256"],
        "label": int(label),
        "label_name": class_names[int(label)],
        "split": split,
        "source": _source_folder(file, root, inbox).name,
        "path": None,  # set once the split is known
        "height": size,
        "width": size,
        "pixel_mean": meta["pixel_mean"],
        "pixel_std": meta["pixel_std"],
        "patient_id": patient,
        "study_id": study,
        "series_id": series,
        "source_kind": kind,
        "source_file": ref,
        "file_format": meta["file_format"],
        "modality": meta.get("modality") or config.modality,
        "original_height": meta["original_height"],
        "original_width": meta["original_width"],
        "bit_depth": meta["bit_depth"],
        "photometric": meta["photometric"],
        "contract_hash": chash,
        "_origin": file.origin,
        "_explicit_split": split is not None,
        "_key": file.rel,  # the stratified split's key (data.split.stratify): the path relative to the root
    }


def _ordered(rows: list[dict]) -> list[dict]:
    rank = {s: i for i, s in enumerate(SPLITS)}
    ordered = sorted(rows, key=lambda r: (rank[r["split"]], r["id"]))
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in ordered]


def _store(folder: Path, frame: pd.DataFrame, rows: list[dict], cache_dir: Path) -> None:
    """Put each row's contract image at its ``path``: a hard link to the cache file.

    Cache files are only ever replaced (written aside, then renamed), never changed in place, so
    a link never sees its content change; a file system without hard links gets copies.
    """
    cache = DecodeCache(cache_dir)
    made: set[Path] = set()
    for row in rows:
        target = folder / row["path"]
        source = cache.image_path(row["sha256"])
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if target.exists():
            if os.path.samefile(source, target) or target.read_bytes() == source.read_bytes():
                continue
            target.unlink()
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    remove_stale_images(folder, set(frame["path"]))
    manifest.write(frame, folder)


def _fingerprint(files: list[sources.SourceFile], hashes: dict[str, str | None]) -> str:
    """MD5 over the sorted (place, sha256) pairs: changes exactly when the input files do.

    Every file was hashed by a worker; an unreadable one (hash None) counts as such, it is not
    read again.
    """
    digest = hashlib.md5()
    for place in sorted(f.place for f in files):
        digest.update(f"{place}\0{hashes.get(place)}\n".encode())
    return digest.hexdigest()
