"""The manifest: one row per image, the contract between ingest, validation and training.

Columns are fixed here and nowhere else (:data:`COLUMNS`). What each one promises:

* ``id`` unique per row and stable across ingests of the same input (MedMNIST: ``<split>-<index>``;
  files: a keyed pseudonym of the file's place in the source, ``img-<16 hex>``); ``path`` the
  stored PNG, relative to the dataset folder, already preprocessed by the contract whose hash is
  ``contract_hash`` (``height`` x ``width`` is the contract size);
* ``sha256`` the hash of the source bytes: the file's bytes for PNG/JPEG/DICOM, the image's pixel
  bytes for a MedMNIST archive, so byte-identical inputs collide whatever they are called;
* ``label``/``label_name``, ``split`` (train/val/test);
* ``patient_id``/``study_id``/``series_id``: keyed pseudonyms (HMAC, :mod:`medimg.data.deid`),
  never a raw identifier; None when the source cannot say (MedMNIST has no patients);
* ``source`` the source folder's or archive's name, ``source_kind`` (medmnist, image_folder,
  dicom_folder), ``source_file`` the file's path relative to its folder for PNG/JPEG, a keyed
  pseudonym for DICOM (DICOM file names are often UIDs, which identify), the archive entry for
  MedMNIST; ``file_format`` (npz, png, jpeg, dicom);
* ``modality`` (DICOM's own, else the one declared in params), ``original_height``/
  ``original_width``/``bit_depth``/``photometric`` of the source file;
* ``pixel_mean``/``pixel_std`` of the stored image (0..255), for blank-image checks.

Volume datasets (``preprocess.dims: 3``) store ``volumes/<split>/<id>.npy`` (uint8 ``[S, S, S]``,
:mod:`medimg.volume_contract`) and have the columns of :data:`VOLUME_COLUMNS` after these:
``depth`` (stored slices; ``height``/``width`` the stored rows/columns), ``original_depth``, the
source's ``spacing_z``/``spacing_y``/``spacing_x`` in mm along the stored axes' sources (NaN where the
source has none: MedMNIST 3D), ``axcodes`` the source's orientation as read (e.g. ``SPL``; None
without geometry) and ``corrections`` the reader's geometry corrections joined by ``;`` (empty: none).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

MANIFEST_FILE = "manifest.parquet"

#: The split names, in their order; the only definition in medimg.
SPLITS = ("train", "val", "test")

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
    "patient_id",
    "study_id",
    "series_id",
    "source_kind",
    "source_file",
    "file_format",
    "modality",
    "original_height",
    "original_width",
    "bit_depth",
    "photometric",
    "contract_hash",
)

#: The extra columns of a volume dataset, after :data:`COLUMNS`.
VOLUME_COLUMNS = ("depth", "original_depth", "spacing_z", "spacing_y", "spacing_x", "axcodes", "corrections")
#: The extra columns of a segmentation dataset, after :data:`VOLUME_COLUMNS`: ``mask_path`` the stored uint8
#: label mask (``masks/<split>/<id>.npy``, the image's shape), ``offset_z/y/x`` where the oriented source's voxel 0
#: lies in the stored arrays (:func:`medimg.segmentation.geometry.fit`), ``foreground_fraction`` of the stored
#: mask's voxels, ``labels_present`` the mask's non-zero label values joined by ``;`` (empty: an empty mask).
#: ``label`` is the largest label value present (0: empty), ``label_name`` its class name.
SEGMENTATION_COLUMNS = ("mask_path", "offset_z", "offset_y", "offset_x", "foreground_fraction", "labels_present")

INT_COLUMNS = ("label", "height", "width", "original_height", "original_width", "bit_depth")
VOLUME_INT_COLUMNS = ("depth", "original_depth")
STRING_COLUMNS = ("patient_id", "study_id", "series_id", "modality", "photometric", "axcodes")


def pixel_sha256(image: np.ndarray) -> str:
    """Hex SHA-256 of the array's bytes in C order (dtype and shape are not hashed)."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def rows_for_split(
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    source: str,
    source_images: np.ndarray | None = None,
    modality: str = "DX",
    contract_hash: str = "",
) -> list[dict]:
    """Manifest rows of one MedMNIST split; ``images`` are the stored (contract) images and
    ``source_images`` the archive's (hashed and measured as the original), the same by default."""
    originals = images if source_images is None else source_images
    rows = []
    for index, (image, original, label) in enumerate(zip(images, originals, labels, strict=True)):
        image_id = f"{split}-{index:05d}"
        rows.append(
            {
                "id": image_id,
                "sha256": pixel_sha256(original),
                "label": int(label),
                "label_name": class_names[int(label)],
                "split": split,
                "source": source,
                "path": f"images/{split}/{image_id}.png",
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "pixel_mean": float(image.mean()),
                "pixel_std": float(image.std()),
                "patient_id": None,
                "study_id": None,
                "series_id": None,
                "source_kind": "medmnist",
                "source_file": f"{source}:{split}_images[{index}]",
                "file_format": "npz",
                "modality": modality,
                "original_height": int(original.shape[0]),
                "original_width": int(original.shape[1]),
                "bit_depth": 8,
                "photometric": "MONOCHROME2",
                "contract_hash": contract_hash,
            }
        )
    return rows


def volume_rows_for_split(
    split: str,
    volumes: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    source: str,
    source_volumes: np.ndarray,
    modality: str,
    contract_hash: str,
) -> list[dict]:
    """Manifest rows of one MedMNIST 3D split: ``volumes`` uint8 ``[N, S, S, S]`` as stored, ``source_volumes``
    the archive's ``[N, D, H, W]`` (hashed and measured as the original); no spacing or orientation is known."""
    rows = rows_for_split(split, volumes, labels, class_names, source, source_volumes, modality, contract_hash)
    for row, volume, original in zip(rows, volumes, source_volumes, strict=True):
        row.update(
            {
                "path": f"volumes/{split}/{row['id']}.npy",
                "height": int(volume.shape[1]),
                "width": int(volume.shape[2]),
                "original_height": int(original.shape[1]),
                "original_width": int(original.shape[2]),
                "depth": int(volume.shape[0]),
                "original_depth": int(original.shape[0]),
                "spacing_z": float("nan"),
                "spacing_y": float("nan"),
                "spacing_x": float("nan"),
                "axcodes": None,
                "corrections": "",
            }
        )
    return rows


def is_volume_frame(frame: pd.DataFrame) -> bool:
    """True for the manifest of a volume dataset (it has :data:`VOLUME_COLUMNS`)."""
    return "depth" in frame.columns


def is_segmentation_frame(frame: pd.DataFrame) -> bool:
    """True for the manifest of a segmentation dataset (it has :data:`SEGMENTATION_COLUMNS`)."""
    return "mask_path" in frame.columns


def to_frame(rows: list[dict], volumes: bool = False, segmentation: bool = False) -> pd.DataFrame:
    """The manifest DataFrame of ``rows`` (dicts keyed by :data:`COLUMNS`, plus :data:`VOLUME_COLUMNS` with
    ``volumes``, plus :data:`SEGMENTATION_COLUMNS` with ``segmentation``), in column order with int64 and string
    types.
    """
    volumes = volumes or segmentation
    columns: tuple[str, ...] = COLUMNS + VOLUME_COLUMNS if volumes else COLUMNS
    ints: tuple[str, ...] = INT_COLUMNS + VOLUME_INT_COLUMNS if volumes else INT_COLUMNS
    if segmentation:
        columns += SEGMENTATION_COLUMNS
        ints += ("offset_z", "offset_y", "offset_x")
    frame = pd.DataFrame(rows, columns=list(columns))
    if volumes:
        frame = frame.astype({c: "float64" for c in ("spacing_z", "spacing_y", "spacing_x")})
    strings = tuple(c for c in STRING_COLUMNS if c in frame.columns)
    return plain_strings(frame.astype({c: "int64" for c in ints}), strings)


def plain_strings(frame: pd.DataFrame, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A copy whose text ``columns`` (None: all) are object dtype with None for a missing value.

    Not pandas' ``str`` dtype with NaN: the manifest's Parquet metadata records object columns
    (so its bytes, and the data version, do not depend on the pandas default), and Great
    Expectations predates that dtype.
    """
    out = frame.copy()
    for column in out.columns if columns is None else columns:
        if pd.api.types.is_string_dtype(out[column]) and not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def write(frame: pd.DataFrame, folder: Path) -> Path:
    """Write ``frame`` as ``folder``/:data:`MANIFEST_FILE` (Parquet, no index; all-None string columns typed string);
    returns the path.
    """
    path = folder / MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    for column in STRING_COLUMNS:  # an all-None column would otherwise be written as type null
        index = schema.get_field_index(column)
        if index >= 0:
            schema = schema.set(index, pa.field(column, pa.string()))
    frame.to_parquet(path, index=False, schema=schema)
    return path


def read(folder: Path) -> pd.DataFrame:
    """The manifest of the dataset ``folder``; ``FileNotFoundError`` when it has none (ingest has not run)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run the ingest step first")
    return pd.read_parquet(path)
