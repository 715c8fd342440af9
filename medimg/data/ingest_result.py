"""What an ingest gives back (:class:`IngestResult`), and the dataset folder clean-up both ingests share.

The ingests themselves: :mod:`medimg.data.ingest_medmnist` (a MedMNIST archive) and
:mod:`medimg.data.ingest_folders` (folders of PNG/JPEG or DICOM files).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from medimg.data.quarantine import Quarantine
from medimg.data.skips import SkippedFile


@dataclass(frozen=True)
class IngestResult:
    """One ingest's outcome: the dataset ``folder`` it wrote and what went into it.

    ``split_counts``: images per split (train, val, test); ``source_md5``: the input fingerprint
    (the archive's MD5, or an MD5 over the folder files' (place, SHA-256) pairs); ``n_files``:
    images ingested or quarantined (1 for an archive); ``n_decoded``/``n_cached``: images decoded
    now / taken from the decode cache; ``skipped``: the files that are not images, by place.
    """

    folder: Path
    n_images: int
    split_counts: dict[str, int]
    source: str
    source_md5: str
    source_kind: str = "medmnist"
    n_files: int = 0
    n_decoded: int = 0
    n_cached: int = 0
    contract_hash: str = ""
    quarantine: Quarantine = field(default_factory=Quarantine, repr=False)
    skipped: tuple[SkippedFile, ...] = field(default=(), repr=False)  # files that are not images, by place


#: Stored items: folder under the dataset folder -> file pattern (2D images, 3D volumes).
STORED = {"images": "*.png", "volumes": "*.npy", "masks": "*.npy"}


def remove_stale_images(folder: Path, keep: set[str]) -> None:
    """Delete the stored items (PNGs under ``folder/images``, ``.npy`` volumes under ``folder/volumes``)
    whose folder-relative posix path is not in ``keep``, then the folders left empty.
    """
    for name, pattern in STORED.items():
        root = folder / name
        if not root.is_dir():
            continue
        for path in root.rglob(pattern):
            if path.relative_to(folder).as_posix() not in keep:
                path.unlink()
        for sub in sorted(root.rglob("*"), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                shutil.rmtree(sub)
