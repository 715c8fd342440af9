"""Ingest a MedMNIST archive into the workspace's dataset folder (contract images as PNG plus the manifest).

The folder's content is a pure function of the archive, the preprocessing contract and the class
names, so ingesting the same archive twice gives byte-identical files and therefore the same DVC
data version. The archive's own train/val/test splits are kept as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medimg import preprocess, volume_contract
from medimg.config import DataConfig, PreprocessConfig
from medimg.data import manifest
from medimg.data.images import DecodedImage
from medimg.data.ingest_result import IngestResult, remove_stale_images
from medimg.data.manifest import SPLITS
from medimg.data.medmnist import MedMNISTArchive


def ingest_medmnist(
    archive: MedMNISTArchive,
    config: DataConfig,
    class_names: tuple[str, ...],
    folder: Path,
    contract: PreprocessConfig | None = None,
) -> IngestResult:
    """The archive's splits as they are, each image through the contract (a no-op at 28 px defaults).

    A 3D archive (``preprocess.dims: 3``) stores each volume as ``volumes/<split>/<id>.npy``
    (:func:`medimg.volume_contract.prepare_array`: unchanged when the archive's size is the contract's).
    """
    contract = contract or PreprocessConfig()
    chash = preprocess.contract_hash(contract)
    if contract.dims == 3:
        return _ingest_volumes(archive, config, class_names, folder, contract, chash)
    arrays = archive.load()
    rows: list[dict] = []
    for split in SPLITS:
        images, labels = arrays[split]
        _check_labels(archive.path, split, labels, class_names)
        stored = _contract_images(images, contract)
        split_rows = manifest.rows_for_split(
            split,
            stored,
            labels,
            class_names,
            archive.path.name,
            source_images=images,
            modality=config.modality,
            contract_hash=chash,
        )
        _write_pngs(folder, split_rows, stored)
        rows.extend(split_rows)
    frame = manifest.to_frame(rows)
    remove_stale_images(folder, set(frame["path"]))
    manifest.write(frame, folder)
    return IngestResult(
        folder=folder,
        n_images=len(frame),
        split_counts={split: int((frame["split"] == split).sum()) for split in SPLITS},
        source=str(archive.path),
        source_md5=archive.md5,
        source_kind="medmnist",
        n_files=1,
        contract_hash=chash,
    )


def _ingest_volumes(
    archive: MedMNISTArchive,
    config: DataConfig,
    class_names: tuple[str, ...],
    folder: Path,
    contract: PreprocessConfig,
    chash: str,
) -> IngestResult:
    arrays = archive.load(volumes=True)
    rows: list[dict] = []
    for split in SPLITS:
        volumes, labels = arrays[split]
        _check_labels(archive.path, split, labels, class_names)
        stored = np.stack([volume_contract.prepare_array(v, contract) for v in volumes])
        split_rows = manifest.volume_rows_for_split(
            split, stored, labels, class_names, archive.path.name, volumes, config.modality, chash
        )
        for row, volume in zip(split_rows, stored, strict=True):
            target = folder / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            np.save(target, volume, allow_pickle=False)
        rows.extend(split_rows)
    frame = manifest.to_frame(rows, volumes=True)
    remove_stale_images(folder, set(frame["path"]))
    manifest.write(frame, folder)
    return IngestResult(
        folder=folder,
        n_images=len(frame),
        split_counts={split: int((frame["split"] == split).sum()) for split in SPLITS},
        source=str(archive.path),
        source_md5=archive.md5,
        source_kind="medmnist",
        n_files=1,
        contract_hash=chash,
    )


def _contract_images(images: np.ndarray, contract: PreprocessConfig) -> np.ndarray:
    out = np.empty((len(images), contract.size, contract.size), dtype=np.uint8)
    for i, image in enumerate(images):
        decoded = DecodedImage(
            pixels=image.astype(np.float32),
            original_height=image.shape[0],
            original_width=image.shape[1],
            bit_depth=8,
            photometric="MONOCHROME2",
            modality=None,
            source_kind="npz",
        )
        out[i] = preprocess.prepare(decoded, contract)
    return out


def _check_labels(path: Path, split: str, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    bad = sorted(set(np.unique(labels).tolist()) - set(range(len(class_names))))
    if bad:
        raise ValueError(f"{path}: {split} labels {bad} are outside 0..{len(class_names) - 1} ({class_names})")


def _write_pngs(folder: Path, rows: list[dict], images: np.ndarray) -> None:
    for row, image in zip(rows, images, strict=True):
        target = folder / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # never write through a hard link into the decode cache
        Image.fromarray(image, mode="L").save(target, format="PNG", optimize=False)
