"""What a volume dataset actually holds on disk: each stored ``.npy`` read once for its facts and its hash.

The manifest says what ingest wrote (``depth``/``height``/``width``, ``pixel_mean``/``pixel_std``); a file
written over afterwards (a blank volume, a volume of another shape or type) would pass every check of
the manifest alone. :func:`survey` reads every stored volume of a manifest (``np.load``,
``allow_pickle=False``, as :func:`medimg.training.data.load_split` reads them) and gives, per row:

* ``stored_shape``: the array's shape as ``"DxHxW"`` (e.g. ``"28x28x28"``; any number of axes);
* ``stored_dtype``: its numpy dtype name (``"uint8"`` for the contract, :mod:`medimg.volume_contract`);
* ``stored_pixel_mean``/``stored_pixel_std``: mean and standard deviation of its voxels (grey levels,
  0..255 for uint8; NaN for an empty array);

and the near-duplicate hash of each (:func:`medimg.validation.near_duplicates.phash_volume_words`); a
stored array that is not a non-empty 3D volume gets no hash (``hashable`` False) and is left out of
the near-duplicate pairs, its shape expectation names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.validation import near_duplicates as nearlib

#: The columns :func:`survey` adds to the checked manifest, in order.
STORED_COLUMNS = ("stored_shape", "stored_dtype", "stored_pixel_mean", "stored_pixel_std")


@dataclass(frozen=True)
class StoredVolumes:
    """The survey of a manifest's stored volumes, rows in manifest order.

    ``facts``: :data:`STORED_COLUMNS` plus ``id``; ``hashes``: ``[n, VOLUME_HASH_WORDS]`` uint64;
    ``hashable``: bool ``[n]``, False where the stored array is not a non-empty 3D volume (hash all 0).
    """

    facts: pd.DataFrame
    hashes: np.ndarray
    hashable: np.ndarray


def shape_text(shape: Sequence[int]) -> str:
    """A shape as the survey writes it: ``(28, 28, 28)`` -> ``"28x28x28"``."""
    return "x".join(str(int(n)) for n in shape)


def survey(data_dir: Path, manifest: pd.DataFrame) -> StoredVolumes:
    """Read the stored volume of each row of ``manifest`` (columns ``id``, ``path`` relative to ``data_dir``).

    Raises ``FileNotFoundError`` naming the first missing file and ``ValueError`` naming the first
    file ``np.load`` cannot read as an array (the dataset is not the one its manifest describes:
    re-ingest it).
    """
    n = len(manifest)
    hashes = np.zeros((n, nearlib.VOLUME_HASH_WORDS), dtype=np.uint64)
    hashable = np.zeros(n, dtype=bool)
    shapes, dtypes, means, stds = [], [], [], []
    for row, relative in enumerate(manifest["path"].tolist()):
        path = Path(data_dir) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path}: stored volume of the manifest missing; re-ingest the dataset")
        try:
            voxels = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(
                f"{path}: stored volume unreadable as a .npy array ({err}); re-ingest the dataset"
            ) from err
        if not isinstance(voxels, np.ndarray):  # an .npz archive: np.load gives an NpzFile
            raise ValueError(f"{path}: stored volume is not a single .npy array; re-ingest the dataset")
        shapes.append(shape_text(voxels.shape))
        dtypes.append(voxels.dtype.name)
        numeric = voxels.size > 0 and voxels.dtype.kind in "biuf"  # bool, integers, floats
        means.append(float(voxels.mean(dtype=np.float64)) if numeric else float("nan"))
        stds.append(float(voxels.std(dtype=np.float64)) if numeric else float("nan"))
        if numeric and voxels.ndim == 3:
            hashes[row] = nearlib.phash_volume_words(voxels)
            hashable[row] = True
    facts = pd.DataFrame(
        {
            "id": manifest["id"].to_numpy(dtype=object),
            "stored_shape": pd.Series(shapes, dtype=object),
            "stored_dtype": pd.Series(dtypes, dtype=object),
            "stored_pixel_mean": pd.Series(means, dtype="float64"),
            "stored_pixel_std": pd.Series(stds, dtype="float64"),
        }
    )
    return StoredVolumes(facts=facts, hashes=hashes, hashable=hashable)
