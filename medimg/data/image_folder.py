"""Scan a class-per-folder image collection (the Kaggle chest-xray-pneumonia layout).

Two layouts are accepted:

* ``<root>/<split>/<CLASS>/<file>`` with split in train/val/test (the official split is kept in
  each record, so leakage across it can be measured), or
* ``<root>/<CLASS>/<file>`` with no split (``split`` is None).

Only ``.jpeg``/``.jpg``/``.png`` files (any case) and DICOM files (``.dcm``, ``.dicom``, or the
``DICM`` marker) directly inside a class folder are images; hidden files and folders
(``.DS_Store``, ``__MACOSX``) and anything else are not (the ingest lists them as skipped, with a
reason: :func:`medimg.data.sources.scan_image_layout`).
Nothing is decoded here (see :func:`medimg.data.images.decode_raster`): the scan is cheap, and
the SHA-256 of the bytes lets the caller find byte-identical files, which the Kermany set has.

Records are sorted by (split, class, file name), so two scans of the same folder are equal.
"""

from __future__ import annotations

import re
from pathlib import Path

from medimg.provenance import file_sha256

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


def scan_image_folder(root: str | Path) -> list[dict]:
    """One record per image file: ``path`` (str, absolute), ``class_name`` (the folder name as
    written), ``split`` (train/val/test or None), ``patient_key`` (see
    :func:`kermany_patient_key`) and ``sha256``.

    Raises ``FileNotFoundError`` when ``root`` is not a folder, and ``ValueError`` when it mixes
    split folders with class folders (an ambiguous layout) or holds no images at all.
    """
    from medimg.data.sources import scan_images

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    return [
        {
            "path": str(file.path.resolve()),
            "class_name": file.class_name,
            "split": file.split,
            "patient_key": file.patient_key,
            "sha256": file_sha256(file.path),
        }
        for file in scan_images(root, origin="source")
    ]


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))),
        key=lambda d: d.name,
    )
