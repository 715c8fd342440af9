"""What a segmentation dataset's stored masks hold: each ``masks/<split>/<id>.npy`` read once for its facts.

The manifest says what ingest wrote (``labels_present``, ``foreground_fraction``); a mask written over afterwards
(emptied, of another shape or type, with a label the task does not have) or deleted would pass every check of the
manifest alone. :func:`survey` reads each row's ``mask_path`` (``np.load``, ``allow_pickle=False``, as
:func:`medimg.training.data.load_split` reads them) and gives, per row, the columns of :data:`STORED_MASK_COLUMNS`:

* ``stored_mask_shape``: the array's shape as ``"DxHxW"`` (:func:`medimg.validation.stored_volumes.shape_text`), or
  ``"missing"`` (no file) / ``"unreadable"`` (not a single ``.npy`` array): the shape expectation then names the row;
* ``stored_mask_dtype``: its numpy dtype name (``"uint8"`` as stored; None when missing or unreadable);
* ``stored_mask_labels``: its non-zero values, ascending, joined by ``;`` (``""`` for an empty mask; None when
  missing, unreadable or not numeric), the manifest's ``labels_present`` format;
* ``stored_mask_foreground_fraction``: the share of its voxels that are non-zero (NaN when missing or unreadable).

Unlike a missing stored volume (:mod:`medimg.validation.stored_volumes` raises), a missing or unreadable mask is a
fact the suite reports with the row's id, beside the other mask checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medimg.validation.stored_volumes import shape_text

#: The columns :func:`survey` adds to the checked manifest, in order.
STORED_MASK_COLUMNS = (
    "stored_mask_shape",
    "stored_mask_dtype",
    "stored_mask_labels",
    "stored_mask_foreground_fraction",
)
MISSING = "missing"
UNREADABLE = "unreadable"


def survey(data_dir: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """:data:`STORED_MASK_COLUMNS` plus ``id`` for each row of ``manifest`` (columns ``id``, ``mask_path`` relative to
    ``data_dir``), in manifest order (module docstring). Never raises for a bad file: it says so in the row."""
    shapes: list[str] = []
    dtypes: list[str | None] = []
    labels: list[str | None] = []
    fractions: list[float] = []
    for relative in manifest["mask_path"].tolist():
        facts = _facts(Path(data_dir) / str(relative)) if relative else (MISSING, None, None, float("nan"))
        for column, value in zip((shapes, dtypes, labels, fractions), facts, strict=True):
            column.append(value)  # type: ignore[attr-defined]
    return pd.DataFrame(
        {
            "id": manifest["id"].to_numpy(dtype=object),
            "stored_mask_shape": pd.Series(shapes, dtype=object),
            "stored_mask_dtype": pd.Series(dtypes, dtype=object),
            "stored_mask_labels": pd.Series(labels, dtype=object),
            "stored_mask_foreground_fraction": pd.Series(fractions, dtype="float64"),
        }
    )


def _facts(path: Path) -> tuple[str, str | None, str | None, float]:
    if not path.is_file():
        return MISSING, None, None, float("nan")
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return UNREADABLE, None, None, float("nan")
    if not isinstance(mask, np.ndarray):  # an .npz archive: np.load gives an NpzFile
        return UNREADABLE, None, None, float("nan")
    if mask.size == 0 or mask.dtype.kind not in "biuf":
        return shape_text(mask.shape), mask.dtype.name, None, float("nan")
    present = [v for v in np.unique(mask).tolist() if v != 0]
    text = ";".join(f"{v:g}" if isinstance(v, float) else str(v) for v in present)
    return shape_text(mask.shape), mask.dtype.name, text, float(np.count_nonzero(mask)) / mask.size
