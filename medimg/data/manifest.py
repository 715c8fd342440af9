"""The manifest: one row per image, the contract between ingest, validation and training.

Columns are fixed here and nowhere else. ``sha256`` is the hash of the image's pixel bytes as
delivered by the source, so byte-identical images collide whatever file they came in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

MANIFEST_FILE = "manifest.parquet"

COLUMNS = (
    "id",
    "sha256",
    "label",
    "label_name",
    "split",
    "source",
    "path",
    "height",
    "width",
    "pixel_mean",
    "pixel_std",
)


def pixel_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def rows_for_split(
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    source: str,
) -> list[dict]:
    rows = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        image_id = f"{split}-{index:05d}"
        rows.append(
            {
                "id": image_id,
                "sha256": pixel_sha256(image),
                "label": int(label),
                "label_name": class_names[int(label)],
                "split": split,
                "source": source,
                "path": f"images/{split}/{image_id}.png",
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "pixel_mean": float(image.mean()),
                "pixel_std": float(image.std()),
            }
        )
    return rows


def to_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"label": "int64", "height": "int64", "width": "int64"})


def write(frame: pd.DataFrame, folder: Path) -> Path:
    path = folder / MANIFEST_FILE
    frame.to_parquet(path, index=False)
    return path


def read(folder: Path) -> pd.DataFrame:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run the ingest step first")
    return pd.read_parquet(path)
