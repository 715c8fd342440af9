"""Ingest: turn a source into the workspace's dataset folder (images as PNG plus the manifest).

The folder's content is a pure function of the source, so ingesting the same archive twice gives
byte-identical files and therefore the same DVC data version.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medimg.config import DataConfig
from medimg.data import manifest
from medimg.data.medmnist import SPLITS, MedMNISTArchive


@dataclass(frozen=True)
class IngestResult:
    folder: Path
    n_images: int
    split_counts: dict[str, int]
    source: str
    source_md5: str


def ingest_medmnist(archive: MedMNISTArchive, config: DataConfig, folder: Path) -> IngestResult:
    arrays = archive.load()
    rows: list[dict] = []
    for split in SPLITS:
        images, labels = arrays[split]
        _check_labels(archive.path, split, labels, config.class_names)
        split_rows = manifest.rows_for_split(split, images, labels, config.class_names, archive.path.name)
        _write_pngs(folder, split_rows, images)
        rows.extend(split_rows)
    frame = manifest.to_frame(rows)
    _remove_stale(folder, set(frame["path"]))
    manifest.write(frame, folder)
    return IngestResult(
        folder=folder,
        n_images=len(frame),
        split_counts={split: int((frame["split"] == split).sum()) for split in SPLITS},
        source=str(archive.path),
        source_md5=archive.md5,
    )


def _check_labels(path: Path, split: str, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    bad = sorted(set(np.unique(labels).tolist()) - set(range(len(class_names))))
    if bad:
        raise ValueError(f"{path}: {split} labels {bad} are outside 0..{len(class_names) - 1} ({class_names})")


def _write_pngs(folder: Path, rows: list[dict], images: np.ndarray) -> None:
    for row, image in zip(rows, images, strict=True):
        target = folder / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(target, format="PNG", optimize=False)


def _remove_stale(folder: Path, keep: set[str]) -> None:
    images_root = folder / "images"
    for path in images_root.rglob("*.png"):
        if path.relative_to(folder).as_posix() not in keep:
            path.unlink()
    for sub in sorted(images_root.rglob("*"), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            shutil.rmtree(sub)
