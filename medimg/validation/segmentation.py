"""The Great Expectations checks of a segmentation dataset (image/mask pairs, ``data.source: nifti_pairs``).

A segmentation manifest (:func:`medimg.data.manifest.is_segmentation_frame`) runs the volume suite of
:mod:`medimg.validation.suite` without its contract-cube checks (the stored grid is ``preprocess.volume.shape``,
not a cube) and with these:

* **label values**: ``labels_present`` (and, read from the file, ``stored_mask_labels``) only the task's structure
  labels ``1..K-1`` (``task.class_names``); the stored mask's labels and labelled share what the manifest records
  (the file is the one ingested);
* **empty masks**: ``label`` (the largest label present) at least 1; its severity is ``validation.empty_masks``
  (``warn``: reported, the run goes on; ``fail``);
* **foreground fraction**: ``foreground_fraction`` of every non-empty mask within
  ``validation.foreground_fraction_range`` (the share of the stored grid's voxels labelled);
* **image/mask geometry**: ``depth``/``height``/``width`` the grid, and, read from the files, the stored image and
  mask both of the grid's shape, the mask ``uint8`` and present (``missing``/``unreadable`` name the row); offsets
  >= 0 (the whole case inside the grid: padded, never cropped);
* **intensity range**: as for every volume dataset (the voxel mean within 0..255, no blank volume: the volume
  checks of :mod:`medimg.validation.suite`);
* **every structure in every split** (the split suite, over :func:`split_summary`): each split has cases, and
  each structure is labelled in at least one case of each split (else its Dice there is undefined); the expected
  split sizes when ``validation.expected_split_sizes`` gives them. The class-balance check of classification does
  not apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medimg.config import ValidationConfig
from medimg.data.manifest import SPLITS
from medimg.validation import stored_masks
from medimg.validation.stored_volumes import shape_text

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

#: Stored masks are uint8 label values (:mod:`medimg.data.ingest_pairs`).
MASK_DTYPE = "uint8"


def labels_regex(n_labels: int) -> str:
    """A regex matching ``labels_present`` values whose labels all lie in ``1..n_labels - 1``: ``""`` (empty) or
    labels joined by ``;`` (e.g. ``"1;2"``)."""
    allowed = "|".join(str(v) for v in range(n_labels - 1, 0, -1)) or "(?!)"
    return rf"^(?:(?:{allowed})(?:;(?:{allowed}))*)?$"


def structure_names(n_labels: int, class_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The name of each structure label ``1..n_labels - 1``: ``class_names[1:]``, else ``label_<value>``."""
    if class_names is not None and len(class_names) == n_labels:
        return tuple(class_names[1:])
    return tuple(f"label_{v}" for v in range(1, n_labels))


def segmentation_expectations(
    config: ValidationConfig, n_labels: int, grid: tuple[int, int, int] | None, stored: bool
) -> list:
    """The row-level segmentation checks (module docstring). ``n_labels`` = ``len(task.class_names)``; ``grid`` =
    ``preprocess.volume.shape`` (None: the stored shape is not checked); ``stored``: the checked manifest carries
    the columns of :mod:`medimg.validation.stored_volumes` and :data:`~medimg.validation.stored_masks.
    STORED_MASK_COLUMNS`."""
    import great_expectations.expectations as gxe  # here: GX takes 2 s to import; only when a suite runs
    from great_expectations.expectations.metadata_types import FailureSeverity

    regex = labels_regex(n_labels)
    labels = f"1..{n_labels - 1}" if n_labels > 1 else "none"
    lo, hi = config.foreground_fraction_range
    empty = FailureSeverity.CRITICAL if config.empty_masks == "fail" else FailureSeverity.WARNING
    out: list[Expectation] = [
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c, description="every case has its mask and mask facts")
            for c in ("mask_path", "labels_present", "foreground_fraction")
        ],
        gxe.ExpectColumnValuesToMatchRegex(
            column="labels_present",
            regex=regex,
            description=f"mask labels within the task's structures {labels} (task.class_names)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="label",
            min_value=1,
            severity=empty,
            description="no empty mask: every case labels a structure (label 0: none; validation.empty_masks "
            f"{config.empty_masks})",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="foreground_fraction",
            min_value=lo,
            max_value=hi,
            row_condition="label>0",
            condition_parser="pandas",
            description=f"labelled share of the stored grid within {lo:g}..{hi:g} for every non-empty mask "
            "(validation.foreground_fraction_range)",
        ),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=0,
                description="the whole case inside the stored grid (offset >= 0: padded, never cropped)",
            )
            for c in ("offset_z", "offset_y", "offset_x")
        ],
    ]
    if grid is not None:
        out += [
            gxe.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=n,
                max_value=n,
                description=f"stored cases on the grid preprocess.volume.shape {list(grid)}",
            )
            for c, n in zip(("depth", "height", "width"), grid, strict=True)
        ]
    if stored:
        if grid is not None:
            text = shape_text(grid)
            out += [
                gxe.ExpectColumnValuesToBeInSet(
                    column=c,
                    value_set=[text],
                    description=f"stored {what} .npy on the grid {text} (read from the file; "
                    f"'{stored_masks.MISSING}' or '{stored_masks.UNREADABLE}': no such array)",
                )
                for c, what in (("stored_shape", "image"), ("stored_mask_shape", "mask"))
            ]
        out += [
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="stored_shape",
                column_B="stored_mask_shape",
                description="stored image and mask of one shape (image/mask geometry; read from the files)",
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="stored_mask_dtype",
                value_set=[MASK_DTYPE],
                description=f"stored mask is {MASK_DTYPE} label values (read from the file)",
            ),
            gxe.ExpectColumnValuesToMatchRegex(
                column="stored_mask_labels",
                regex=regex,
                description=f"stored mask labels within the task's structures {labels} (read from the file)",
            ),
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="labels_present",
                column_B="stored_mask_labels",
                ignore_row_if="neither",
                description="stored mask labels as the manifest records them (the file is the one ingested)",
            ),
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="foreground_fraction",
                column_B="stored_mask_foreground_fraction",
                ignore_row_if="neither",
                description="stored mask's labelled share as the manifest records it (the file is the one ingested)",
            ),
        ]
    return out


def split_summary(manifest: pd.DataFrame, n_labels: int, class_names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per split (train, val, test): ``n_images`` (cases), ``n_empty_masks`` and ``n_with_<structure>``
    (cases whose ``labels_present`` has the structure's label) for each structure (:func:`structure_names`)."""
    present = manifest["labels_present"].fillna("").astype(str).map(lambda text: set(filter(None, text.split(";"))))
    rows = []
    for split in SPLITS:
        mine = manifest["split"] == split
        row: dict = {"split": split, "n_images": int(mine.sum()), "n_empty_masks": int((present[mine] == set()).sum())}
        for value, name in enumerate(structure_names(n_labels, class_names), start=1):
            row[f"n_with_{name}"] = int(present[mine].map(lambda labels, v=str(value): v in labels).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def summary_expectations(config: ValidationConfig, n_labels: int, class_names: tuple[str, ...] | None = None) -> list:
    """The per-split suite over :func:`split_summary` (module docstring)."""
    import great_expectations.expectations as gxe  # here: GX takes 2 s to import; only when a suite runs

    out: list[Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(column="n_images", min_value=1, description="every split has cases"),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=f"n_with_{name}",
                min_value=1,
                description=f"every structure in every split: at least one case per split labels {name} "
                f"(label {value})",
            )
            for value, name in enumerate(structure_names(n_labels, class_names), start=1)
        ],
    ]
    if config.expected_split_sizes:
        out.append(gxe.ExpectColumnPairValuesToBeEqual(column_A="n_images", column_B="expected_n_images"))
    return out


def statistics(
    checked: pd.DataFrame,
    summary: pd.DataFrame,
    n_labels: int,
    class_names: tuple[str, ...] | None,
    grid: tuple[int, int, int] | None,
    stored: bool,
) -> dict:
    """What the segmentation checks saw, JSON-ready: structures, cases per structure and split, empty masks, the
    labelled-share range, label sets, and (when read) the stored masks' shapes and types."""

    def counts(column: str) -> dict[str, int]:
        values = checked[column].dropna().astype(str)
        return {str(k): int(v) for k, v in sorted(values.value_counts().items())}

    names = structure_names(n_labels, class_names)
    labelled = checked.loc[checked["label"] > 0, "foreground_fraction"].astype("float64")
    return {
        "structures": {str(v): name for v, name in enumerate(names, start=1)},
        "grid_shape": list(grid) if grid is not None else None,
        "cases_with_structure": {
            str(r["split"]): {name: int(r[f"n_with_{name}"]) for name in names} for r in summary.to_dict("records")
        },
        "empty_masks": int((checked["label"] <= 0).sum()),
        "foreground_fraction_range": [float(labelled.min()), float(labelled.max())] if len(labelled) else None,
        "foreground_fraction_median": float(np.median(labelled)) if len(labelled) else None,
        "labels_present": {k or "(empty)": v for k, v in counts("labels_present").items()},
        "stored_checked": stored,
        "stored_mask_shapes": counts("stored_mask_shape") if stored else None,
        "stored_mask_dtypes": counts("stored_mask_dtype") if stored else None,
    }
