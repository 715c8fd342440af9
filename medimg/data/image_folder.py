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

Records are sorted by (split, class, file name), so two scans of the same folder are equal. The
layout rules and the Kermany patient keys are those of :func:`medimg.data.sources.scan_images`.
"""

from __future__ import annotations

from pathlib import Path

from medimg.data.sources import scan_images
from medimg.provenance import file_sha256


def scan_image_folder(root: str | Path) -> list[dict]:
    """One record per image file: ``path`` (str, absolute), ``class_name`` (the folder name as
    written), ``split`` (train/val/test or None), ``patient_key`` (see
    :func:`medimg.data.sources.kermany_patient_key`) and ``sha256``.

    Raises ``FileNotFoundError`` when ``root`` is not a folder, and ``ValueError`` when it mixes
    split folders with class folders (an ambiguous layout) or holds no images at all.
    """
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
