"""File sources: what to ingest from an image folder or a DICOM folder (and their inbox).

Scanning is cheap: it reads no file but the first 132 bytes of those whose suffix says nothing
(:func:`decoder_for`). It lists the files and what the *layout* says about each:
its class folder, split folder and (Kermany names) patient for image folders; its place in the
tree for DICOM folders and for image folders labelled by a CSV (:func:`scan_labelled_layout`),
whose labels come from that CSV (:func:`read_label_table`). The files'
SHA-256 (the manifest's ``sha256`` and the decode cache's key) is computed by the decoding
workers, in parallel, from the bytes they read anyway. :func:`medimg.data.image_folder.scan_image_folder`
lists the same files with their SHA-256, for analysis.

The inbox is a second folder scanned the same way (``origin == "inbox"``): new files dropped
there are ingested together with the source on the next run, and only they are decoded (the
rest comes from the cache). It may use the split layout or the plain ``<CLASS>/`` one.

Nothing here is written anywhere: raw patient keys and paths stay in memory and are turned into
keyed pseudonyms by the ingest before they reach the manifest.

Folder trees are walked by one walker, :func:`walk_files` (symbolic links followed, each folder
once, hidden names skipped unless asked for), used by the scans, by :func:`tree` (the ingest's
skip check) and by the inbox watcher, so all of them agree on which files exist.

No file vanishes: the scans (:func:`scan_image_layout`, :func:`scan_dicom_layout`) return every
file under the folder, hidden ones included, either as a :class:`SourceFile` to decode or as a
:class:`~medimg.data.skips.SkippedFile` with its reason (:data:`~medimg.data.skips.SKIP_REASONS`).
The *layout* gives the labels (class folders, or the labels CSV); the *content* gives the decoder
(:func:`decoder_for`): ``.png``/``.jpg``/``.jpeg`` are rasters, ``.dcm``/``.dicom`` DICOM, and any
other file is DICOM when it has the Part 10 ``DICM`` marker at byte 128 (CD exports name their
files ``IM000000``, some PACS by UID), else not an image. So a class folder may hold DICOM files
beside its JPEGs, and a DICOM folder PNGs that its CSV labels.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from medimg.data.manifest import SPLITS
from medimg.data.skips import SkippedFile
from medimg.preprocess import is_dicom_file

log = logging.getLogger(__name__)

#: File suffixes (lower case) of the files medimg reads as images: PNG/JPEG, and DICOM (which
#: may have no suffix at all); :data:`IMAGE_SUFFIXES` is both.
RASTER_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ""})
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES


# Kermany file names: person100_bacteria_475 / person1_virus_6 -> person100 / person1;
# IM-0115-0001 (and IM-0608-0001-0001) -> IM-0115; NORMAL2-IM-0383-0001 -> NORMAL2-IM-0383.
_KERMANY = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE),
)


def kermany_patient_key(filename: str) -> str:
    """The patient id a Kermany chest X-ray file name carries, or the file stem when none.

    ``person100_bacteria_475.jpeg`` -> ``person100``; ``IM-0115-0001.jpeg`` -> ``IM-0115``;
    ``NORMAL2-IM-0383-0001.jpeg`` -> ``NORMAL2-IM-0383``. The key is returned as written (the
    raw id, not a pseudonym). A name that fits no rule is its own patient: that never merges two
    patients, but cannot group one patient's images either, so group-aware splitting is only as
    good as the file names.
    """
    stem = Path(filename).stem
    for pattern in _KERMANY:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))),
        key=lambda d: d.name,
    )


@dataclass(frozen=True)
class SourceFile:
    """One file of a source. ``rel`` is its posix path relative to its folder."""

    path: Path
    rel: str
    origin: str  # "source" or "inbox"
    class_name: str | None = None  # the class folder (image folders)
    split: str | None = None  # the split folder (image folders) or the CSV's split column
    patient_key: str | None = None  # raw, from the file name (image folders); never stored
    decoder: str = "raster"  # "raster" or "dicom": which decoder reads it (decoder_for)

    @property
    def place(self) -> str:
        """``<origin>/<rel>``: unique over source and inbox; input to the id and file pseudonyms."""
        return f"{self.origin}/{self.rel}"


class SourceLayoutError(ValueError):
    """The source folder is missing or not in a layout medimg can read."""


def walk_files(root: Path, hidden: bool = False) -> Iterator[tuple[str, Path]]:
    """``(posix path relative to root, path)`` of every file under ``root``, sorted by path parts.

    Symbolic links to folders are followed, but each folder (by device and inode) is walked once,
    so a link cycle ends; hidden folders and files (name starting with ".") are skipped unless
    ``hidden``. Lists names only (one stat per folder): what is listed may be a link to nothing or
    not a regular file, which the caller checks when it matters. A missing folder has no files.
    """
    seen: set[tuple[int, int]] = set()
    found: list[tuple[tuple[str, ...], str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: a cycle or an alias
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if hidden or not d.startswith("."))
        base = Path(dirpath)
        parts = PurePosixPath(Path(os.path.relpath(dirpath, root)).as_posix()).parts  # () for root itself
        for name in filenames:
            if hidden or not name.startswith("."):
                found.append(((*parts, name), "/".join((*parts, name)), base / name))
    found.sort(key=lambda item: item[0])
    for _, rel, path in found:
        yield rel, path


def file_stat(path: Path) -> list | None:
    """``[size, mtime_ns]`` of a file (links followed), ``["dir"]`` for anything else, None when missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else ["dir"]


def tree(folder: Path | None) -> dict[str, list]:
    """Every file :func:`walk_files` lists under ``folder``: relative posix path -> :func:`file_stat`.

    Stat calls only; a missing folder (or None) is empty. The ingest's skip check and the inbox
    watcher's snapshot.
    """
    out: dict[str, list] = {}
    if folder is None or not folder.is_dir():
        return out
    for rel, path in walk_files(folder):
        entry = file_stat(path)
        if entry is not None:
            out[rel] = entry
    return out


#: File-manager metadata that is not hidden by its name (Windows thumbnails and folder settings,
#: macOS resource forks in zip files).
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"})
SYSTEM_FOLDERS = frozenset({"__macosx"})


@dataclass(frozen=True)
class Scan:
    """Every file under a folder: ``files`` to decode and ``skipped`` ones, each with a reason."""

    files: list[SourceFile]
    skipped: list[SkippedFile]


def decoder_for(path: Path) -> str | None:
    """``"raster"``, ``"dicom"`` or None (not an image file) for one file, by suffix then content.

    ``.png``/``.jpg``/``.jpeg`` (any case) -> raster; ``.dcm``/``.dicom`` -> DICOM (a broken one is
    then quarantined by the DICOM decoder with its reason); anything else -> DICOM when it has the
    DICOM Part 10 ``DICM`` marker at byte 128 (PS3.10 section 7.1; 132 bytes read), else None.
    """
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in (".dcm", ".dicom"):
        return "dicom"
    return "dicom" if is_dicom_file(path) else None


def _set_aside(parts: tuple[str, ...], path: Path) -> str | None:
    """The skip reason a file has by its name and type alone (hidden, system file, not a file), or None."""
    if any(part.startswith(".") for part in parts):
        return "hidden"
    if parts[-1].lower() in SYSTEM_FILES or any(part.lower() in SYSTEM_FOLDERS for part in parts[:-1]):
        return "system_file"
    if not path.is_file():
        return "not_a_file"
    return None


def scan_image_layout(root: Path, origin: str, patient_id: str = "kermany") -> Scan:
    """Every file of an image folder: the images of its class folders, sorted by (split, class, name),
    and every other file skipped with its reason. Reads 132 bytes of files whose suffix says nothing.

    Layouts: ``<root>/<split>/<CLASS>/`` or ``<root>/<CLASS>/``, images directly inside a class
    folder (folders starting with "." or "__" are not class folders). Raises
    :class:`SourceLayoutError` for a missing folder, split folders mixed with class folders, or
    (for the source) no image at all.
    """
    if not root.is_dir():
        raise SourceLayoutError(f"image folder {root} does not exist or is not a folder")
    top = _visible_dirs(root)
    split_dirs = [d for d in top if d.name.lower() in SPLITS]
    if split_dirs and len(split_dirs) != len(top):
        others = sorted(d.name for d in top if d not in split_dirs)
        raise SourceLayoutError(
            f"{root}: mixes split folders {sorted(d.name for d in split_dirs)} with other folders {others}; "
            "expected either <root>/<split>/<class>/ or <root>/<class>/"
        )
    # the folder (as walked) -> (split, class folder)
    class_dirs: dict[tuple[str, ...], tuple[str | None, str]] = (
        {(d.name, c.name): (d.name.lower(), c.name) for d in split_dirs for c in _visible_dirs(d)}
        if split_dirs
        else {(c.name,): (None, c.name) for c in top}
    )
    files, skipped = [], []
    for walked, path in walk_files(root, hidden=True):
        parts = tuple(walked.split("/"))
        reason = _set_aside(parts, path)
        decoder = decoder_for(path) if reason is None else None
        if reason is None and decoder is None:
            reason = "not_an_image_file"
        if reason is None and parts[:-1] not in class_dirs:
            reason = "outside_layout"
        if reason is not None:
            skipped.append(SkippedFile(walked, origin, reason))
            continue
        assert decoder is not None  # reason is set whenever no decoder reads the file
        split, class_name = class_dirs[parts[:-1]]
        rel = "/".join(p for p in (split, class_name, path.name) if p)
        # "file": each file its own patient, named by its place so source and inbox never share one
        own = rel if origin == "source" else f"{origin}/{rel}"
        files.append(
            SourceFile(
                path=path,
                rel=rel,
                origin=origin,
                class_name=class_name,
                split=split,
                patient_key=kermany_patient_key(path.name) if patient_id == "kermany" else own,
                decoder=decoder,
            )
        )
    if not files and origin == "source":
        raise SourceLayoutError(f"{root}: no .jpeg/.jpg/.png or DICOM images found in class folders")
    order: dict[str | None, int] = {name: i for i, name in enumerate(SPLITS)}
    files.sort(key=lambda f: (order.get(f.split, -1), f.class_name, f.path.name))
    return Scan(files, skipped)


def scan_images(root: Path, origin: str, patient_id: str = "kermany") -> list[SourceFile]:
    """The images of an image folder (:func:`scan_image_layout` without its skip list)."""
    return scan_image_layout(root, origin, patient_id).files


def scan_dicom_layout(root: Path, origin: str, labels_csv: str | None = None) -> Scan:
    """Every file under a DICOM folder: DICOM files and the rasters among them (:func:`decoder_for`),
    in :func:`walk_files` order, and every other file skipped with its reason.

    ``labels_csv``: the labels CSV, as a path relative to ``root`` (skipped as ``labels_csv``).
    Raises :class:`SourceLayoutError` for a missing folder or (for the source) no image file.
    """
    if not root.is_dir():
        raise SourceLayoutError(f"DICOM folder {root} does not exist or is not a folder")
    files, skipped = _scan_tree(root, origin, labels_csv)
    if not files and origin == "source":
        raise SourceLayoutError(f"{root}: no DICOM files (*.dcm, *.dicom or with the DICM marker) found")
    return Scan(files, skipped)


def scan_labelled_layout(root: Path, origin: str, labels_csv: str | None, patient_id: str = "kermany") -> Scan:
    """Every file of an image folder whose labels come from a CSV (``data.image_folder.labels: csv``).

    Any folder tree: every image file under ``root`` (:func:`decoder_for`), in :func:`walk_files`
    order, is a :class:`SourceFile` (no ``class_name``: the CSV gives it); everything else is
    skipped with its reason, the labels CSV (``labels_csv``, relative to ``root``) as ``labels_csv``.
    A file below a top-level split folder (``train/``, ``val/``, ``test/``, any case) has that
    ``split``; ``patient_key`` follows ``patient_id`` as in :func:`scan_image_layout`. Raises
    :class:`SourceLayoutError` for a missing folder or (for the source) no image file.
    """
    if not root.is_dir():
        raise SourceLayoutError(f"image folder {root} does not exist or is not a folder")
    files, skipped = _scan_tree(root, origin, labels_csv)
    if not files and origin == "source":
        raise SourceLayoutError(f"{root}: no .jpeg/.jpg/.png or DICOM images found")
    placed = []
    for file in files:
        parts = file.rel.split("/")
        split = parts[0].lower() if len(parts) > 1 and parts[0].lower() in SPLITS else None
        own = file.rel if origin == "source" else f"{origin}/{file.rel}"
        key = kermany_patient_key(file.path.name) if patient_id == "kermany" else own
        placed.append(replace(file, split=split, patient_key=key))
    return Scan(placed, skipped)


def _scan_tree(root: Path, origin: str, labels_csv: str | None) -> tuple[list[SourceFile], list[SkippedFile]]:
    """(image files, skipped files) of every file under ``root``; ``labels_csv`` (relative) is skipped as such."""
    labels = PurePosixPath(labels_csv).as_posix() if labels_csv else None
    files, skipped = [], []
    for rel, path in walk_files(root, hidden=True):
        reason = _set_aside(tuple(rel.split("/")), path)
        if reason is None and rel == labels:
            reason = "labels_csv"
        decoder = decoder_for(path) if reason is None else None
        if reason is None and decoder is None:
            reason = "not_an_image_file"
        if reason is not None:
            skipped.append(SkippedFile(rel, origin, reason))
            continue
        assert decoder is not None  # reason is set whenever no decoder reads the file
        files.append(SourceFile(path=path, rel=rel, origin=origin, decoder=decoder))
    return files, skipped


def scan_dicom(root: Path, origin: str, skip: str | None = None) -> list[SourceFile]:
    """The image files of a DICOM folder (:func:`scan_dicom_layout` without its skip list);
    ``skip``: the labels CSV, relative to ``root``."""
    return scan_dicom_layout(root, origin, skip).files


def inbox_scan(
    inbox: Path | None,
    kind: str,
    patient_id: str = "kermany",
    labels_csv: str | None = None,
    csv_labels: bool = False,
) -> Scan:
    """The inbox's files and skipped files; a missing or empty inbox has none (a missing one is logged).

    ``csv_labels``: an image folder labelled by a CSV (:func:`scan_labelled_layout`), not by class folders.
    """
    if inbox is None:
        return Scan([], [])
    if not inbox.is_dir():
        log.warning("inbox %s does not exist: nothing new to ingest from it", inbox)
        return Scan([], [])
    if kind == "dicom_folder":
        return scan_dicom_layout(inbox, "inbox", labels_csv)
    if csv_labels:
        return scan_labelled_layout(inbox, "inbox", labels_csv, patient_id)
    return scan_image_layout(inbox, "inbox", patient_id)


def inbox_files(
    inbox: Path | None, kind: str, patient_id: str = "kermany", labels_csv: str | None = None
) -> list[SourceFile]:
    """The inbox's files to decode (:func:`inbox_scan` without its skip list)."""
    return inbox_scan(inbox, kind, patient_id, labels_csv).files


def guess_kind(
    folder: Path,
    class_names: tuple[str, ...],
    class_folders: dict[str, str] | None = None,
    labels_csv: str | None = "labels.csv",
) -> str | None:
    """The source kind a folder's *layout* says (its file types do not: a class folder may hold DICOM), or None.

    ``image_folder`` when a top-level folder (not hidden, not ``__*``) is named after a split
    (train/val/test) or a class (``class_names`` or a ``class_folders`` key, any case): the Kaggle
    layouts; else ``dicom_folder`` when ``labels_csv`` is a file in it (labels come from a CSV);
    else None (the caller asks for ``--kind``). Lists one folder; reads no file.
    """
    names = {d.name.lower() for d in _visible_dirs(folder)}
    known = {*SPLITS, *(c.lower() for c in class_names), *(f.lower() for f in (class_folders or {}))}
    if names & known:
        return "image_folder"
    if labels_csv and (folder / labels_csv).is_file():
        return "dicom_folder"
    return None


@dataclass(frozen=True)
class LabelEntry:
    """One row of a labels CSV (DICOM folder, or image folder with ``labels: csv``): the class name as
    written and the split (None when the CSV gives none)."""

    label: str
    split: str | None


def read_label_table(path: Path, key_column: str, label_column: str, split_column: str | None) -> dict[str, LabelEntry]:
    """key -> (label as written, split or None) from a CSV with a header row.

    Raises :class:`SourceLayoutError` for a missing file or column, a duplicated key with two
    different labels, or a split outside train/val/test. Keys and values are stripped.
    """
    if not path.is_file():
        raise SourceLayoutError(f"label file {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (key_column, label_column, split_column) if c]
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceLayoutError(f"{path.name}: missing column(s) {missing}; has {reader.fieldnames}")
        table: dict[str, LabelEntry] = {}
        for line, row in enumerate(reader, start=2):
            key = (row[key_column] or "").strip()
            if not key:
                continue
            split = (row[split_column] or "").strip().lower() or None if split_column else None
            if split is not None and split not in SPLITS:
                raise SourceLayoutError(f"{path.name} line {line}: split {split!r} is not one of {SPLITS}")
            entry = LabelEntry((row[label_column] or "").strip(), split)
            if key in table and table[key] != entry:
                raise SourceLayoutError(f"{path.name} line {line}: a key appears twice with different labels")
            table[key] = entry
    return table


def class_index(
    name: str | None, class_names: tuple[str, ...], class_folders: dict[str, str] | None = None
) -> int | None:
    """The class index a folder name or CSV label stands for, or None.

    ``class_folders`` maps folder names to class names first; then a class name matches ignoring
    case, and a plain integer is taken as the index.
    """
    if name is None:
        return None
    text = str(name).strip()
    if class_folders:
        text = class_folders.get(text, text)
    lowered = [c.lower() for c in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    return None


def lookup_dicom_label(file: SourceFile, table: dict[str, LabelEntry], label_key: str) -> LabelEntry | None:
    """The CSV entry for a file keyed by ``file`` or ``folder`` (SOP UIDs are looked up after decoding).

    Used for DICOM folders and for image folders labelled by a CSV (always ``file`` there).

    ``file``: the path relative to the file's folder (source or inbox), else its bare name.
    ``folder``: the deepest folder above the file (relative path) that the table names.
    """
    if label_key == "file":
        return table.get(file.rel) or table.get(Path(file.rel).name)
    if label_key == "folder":
        parts = Path(file.rel).parts[:-1]
        for depth in range(len(parts), 0, -1):
            entry = table.get("/".join(parts[:depth]))
            if entry is not None:
                return entry
        return None
    raise ValueError(f"label_key {label_key!r} is resolved after decoding")
