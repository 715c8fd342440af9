"""What an ingest gives back (:class:`IngestResult`), and what the ingests share: the accounting of quarantined
and skipped files (:func:`account`) and the dataset folder clean-up.

The ingests themselves: :mod:`medimg.data.ingest_medmnist` (a MedMNIST archive),
:mod:`medimg.data.ingest_folders` (folders of PNG/JPEG or DICOM files), :mod:`medimg.data.ingest_volumes`
(NIfTI and DICOM series) and :mod:`medimg.data.ingest_pairs` (image/mask pairs).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medimg.data import skips
from medimg.data.quarantine import Quarantine
from medimg.data.skips import SkippedFile

log = logging.getLogger(__name__)


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


def account(
    quarantine: Quarantine,
    skipped: Sequence[SkippedFile],
    n_inputs: int,
    max_bad_fraction: float,
    *,
    inputs: str,
    not_inputs: str,
    quarantine_csv: Path | None = None,
    skipped_csv: Path | None = None,
) -> None:
    """Log the quarantined and skipped files by reason, write their CSVs, and stop a mostly bad source.

    ``n_inputs``: the inputs considered (ingested + quarantined), called ``inputs`` in the messages
    (``images``, ``files``); ``not_inputs``: what a skipped file is not (``images``, ``volumes``).
    Raises :class:`medimg.data.quarantine.QuarantineThresholdError` (:meth:`Quarantine.check_threshold`) when
    more than ``max_bad_fraction`` of the inputs were quarantined, after the CSVs are written.
    """
    if len(quarantine):
        counts = ", ".join(f"{k}: {v}" for k, v in quarantine.counts_by_reason().items())
        log.warning("quarantined %d of %d %s (%s)", len(quarantine), n_inputs, inputs, counts)
    if skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in skips.counts_by_reason(list(skipped)).items())
        log.info("skipped %d files that are not %s (%s)", len(skipped), not_inputs, counts)
    if quarantine_csv is not None:
        quarantine.write_csv(quarantine_csv)
    if skipped_csv is not None:
        skips.write_csv(list(skipped), skipped_csv)
    quarantine.check_threshold(n_inputs, max_bad_fraction)


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
