"""The Great Expectations suites that gate a dataset before training, one pair per source kind.

Two suites run on plain DataFrames with an ephemeral GX context (nothing written to disk by GX):
``<kind>.manifest`` checks every row and ``<kind>.split_summary`` per-split counts and class
balance, where ``<kind>`` is the manifest's source kind (``medmnist``, ``image_folder``,
``dicom_folder``). Every kind checks: the schema (exact column set), not-null keys, unique ids,
the label and split sets, no blank or near-constant images, no sha256 duplicates within a split
or across splits, source bit depth and sizes in range, modality in the allowed set, and (when
given) that the stored images were made with the current preprocessing contract at its size.
Folder kinds add: a pseudonymous patient id on every row, no patient in two splits, the file
formats and photometric interpretations the kind can have. Given the dataset folder, every kind
also checks that no stored image has a near-duplicate (perceptual hash,
:mod:`medimg.validation.near_duplicates`) in another split. Wart expectations (duplicates,
near-duplicates, patient overlap) carry the severity chosen by the policy in params: ``warning``
reports without stopping the run, ``critical`` stops it. The run passes when no critical
expectation fails.

Volume datasets (:func:`medimg.data.manifest.is_volume_frame`: ``volumes/<split>/<id>.npy``, uint8
``[S, S, S]``) run the same two suites with the volume columns in the schema, the contract cube
(``depth``/``height``/``width`` == ``preprocess.size``) and :func:`volume_expectations`: the voxel mean
in 0..255, the source's spacing within ``validation.volume_spacing_range_mm`` where known (NaN, e.g.
MedMNIST 3D, passes), valid orientation codes and one source orientation across the dataset (critical
when the contract keeps the source orientation, a warning when it reorients every volume to RAS), the
known geometry corrections and, given the dataset folder, the stored files themselves
(:mod:`medimg.validation.stored_volumes`): their shape is the contract cube, their type uint8, and none
is blank. Their near-duplicates are found by the volume hash of :mod:`medimg.validation.near_duplicates`
at ``validation.volume_near_duplicate_distance``.

Segmentation datasets (:func:`medimg.data.manifest.is_segmentation_frame`: a stored mask beside each volume, on the
grid ``preprocess.volume.shape``) run the volume checks without the contract cube, plus the label, empty-mask,
foreground-fraction and image/mask geometry checks of :mod:`medimg.validation.segmentation` (the stored masks read
by :mod:`medimg.validation.stored_masks`); their split suite asks for every structure in every split instead of a
class balance.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medimg.config import ValidationConfig, WartPolicy
from medimg.data.manifest import (
    COLUMNS,
    SEGMENTATION_COLUMNS,
    SPLITS,
    VOLUME_COLUMNS,
    is_segmentation_frame,
    is_volume_frame,
    plain_strings,
)
from medimg.validation import near_duplicates as nearlib
from medimg.validation import segmentation as seglib
from medimg.validation import stored_masks as masklib
from medimg.validation import stored_volumes as storedlib
from medimg.validation import warts as wartlib

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation
    from great_expectations.expectations.metadata_types import FailureSeverity

ID_COLUMN = "id"

log = logging.getLogger(__name__)


@dataclass
class ValidationOutcome:
    """The verdict of both suites: passed, critical failures, warnings, ids to drop, warts, split statistics, GX
    results.
    """

    passed: bool
    failed_critical: list[dict]
    warnings: list[dict]
    dropped_ids: list[str]
    warts: dict
    statistics: dict
    results: dict = field(repr=False)  # GX's own result JSON, per suite

    def to_json(self) -> dict:
        """The outcome as a JSON-ready dict (GX's own results under ``great_expectations``)."""
        return {
            "passed": self.passed,
            "failed_critical": self.failed_critical,
            "warnings": self.warnings,
            "dropped_ids": self.dropped_ids,
            "warts": self.warts,
            "statistics": self.statistics,
            "great_expectations": self.results,
        }


def _severity(policy: WartPolicy) -> FailureSeverity:
    # here: GX takes 2 s to import; the suite builders that call this have loaded it already
    from great_expectations.expectations.metadata_types import FailureSeverity

    return FailureSeverity.CRITICAL if policy == WartPolicy.FAIL else FailureSeverity.WARNING


FILE_FORMATS = {
    "medmnist": ["npz"],
    "image_folder": ["png", "jpeg"],
    "dicom_folder": ["dicom"],
    "nifti_folder": ["nifti"],
    "dicom_series": ["dicom"],
    "nifti_pairs": ["nifti"],
}
PHOTOMETRICS = {
    "medmnist": ["MONOCHROME2"],
    "image_folder": ["MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL"],
    "dicom_folder": [
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "YBR_RCT",
        "PALETTE COLOR",
    ],
    "nifti_folder": ["MONOCHROME2"],  # NIfTI has no photometric interpretation: grey, larger is brighter
    "dicom_series": ["MONOCHROME1", "MONOCHROME2"],  # a CT or MR series is grey
    "nifti_pairs": ["MONOCHROME2"],
}
CHECK_COLUMNS = ("copies_in_split", "splits_with_hash", "splits_with_patient", "near_duplicates_in_other_splits")
#: Stored volumes are uint8 grey levels (:mod:`medimg.volume_contract`).
VOLUME_DTYPE = "uint8"
GREY_RANGE = (0.0, 255.0)


def manifest_expectations(
    config: ValidationConfig,
    class_labels: list[int],
    source_kind: str = "medmnist",
    contract_hash: str | None = None,
    contract_size: int | None = None,
    volumes: bool = False,
    stored: bool = False,
    segmentation: bool = False,
) -> list:
    """The row-level suite for one source kind (see the module docstring).

    ``volumes``: the manifest of a volume dataset (its :data:`~medimg.data.manifest.VOLUME_COLUMNS` in the
    schema, the contract size checked on ``depth`` too); ``stored``: it carries the columns of
    :data:`medimg.validation.stored_volumes.STORED_COLUMNS`. The volume checks proper are
    :func:`volume_expectations`. ``segmentation``: a segmentation dataset's (its
    :data:`~medimg.data.manifest.SEGMENTATION_COLUMNS`, and with ``stored`` those of
    :data:`medimg.validation.stored_masks.STORED_MASK_COLUMNS`, in the schema; the checks proper are
    :func:`medimg.validation.segmentation.segmentation_expectations`).
    """
    import great_expectations.expectations as gxe  # here: GX takes 2 s to import; only when a suite runs

    schema = list(COLUMNS) + list(CHECK_COLUMNS)
    if volumes:
        schema += list(VOLUME_COLUMNS) + (list(storedlib.STORED_COLUMNS) if stored else [])
    if segmentation:
        schema += list(SEGMENTATION_COLUMNS) + (list(masklib.STORED_MASK_COLUMNS) if stored else [])
    lo_bits, hi_bits = config.bit_depth_range
    if source_kind in ("nifti_folder", "nifti_pairs"):  # NIfTI stores float32/float64 voxels as often as integers
        hi_bits = max(hi_bits, 64)
    lo_side, hi_side = config.original_side_range
    out: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=schema, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("id", "sha256", "label", "split", "path", "source_kind", "contract_hash")
        ],
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValueLengthsToEqual(column="sha256", value=64),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=class_labels),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToBeInSet(
            column="source_kind", value_set=[source_kind], description=f"every row comes from a {source_kind} source"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_std",
            min_value=config.min_pixel_std,
            description="no blank or near-constant volumes (empty volume)"
            if volumes
            else "no blank or near-constant images",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="copies_in_split",
            max_value=1,
            severity=_severity(config.duplicates_within_split),
            description="no byte-identical duplicate images within a split",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="splits_with_hash",
            max_value=1,
            severity=_severity(config.duplicates_across_splits),
            description="no image shared between splits (leakage)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="near_duplicates_in_other_splits",
            max_value=0,
            severity=_severity(config.near_duplicates_across_splits),
            description="no near-duplicate "
            + ("volume (perceptual hash of projections)" if volumes else "image (perceptual hash)")
            + " in another split (leakage)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="bit_depth", min_value=lo_bits, max_value=hi_bits, description="source bit depth in range"
        ),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=lo_side, max_value=hi_side, description="source image size in range"
            )
            for c in ("original_height", "original_width")
        ],
        gxe.ExpectColumnValuesToBeInSet(
            column="modality", value_set=list(config.allowed_modalities), description="modality in the allowed set"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="file_format",
            value_set=FILE_FORMATS.get(source_kind, []),
            description=f"file formats a {source_kind} source has",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="photometric",
            value_set=PHOTOMETRICS.get(source_kind, []),
            description="photometric interpretation a grey image can come from",
        ),
    ]
    if source_kind != "medmnist":
        out += [
            gxe.ExpectColumnValuesToNotBeNull(column="patient_id", description="every image has a patient pseudonym"),
            gxe.ExpectColumnValuesToBeBetween(
                column="splits_with_patient",
                max_value=1,
                severity=_severity(config.patient_overlap),
                description="no patient in two splits (leakage)",
            ),
        ]
    if contract_hash is not None:
        out.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="contract_hash",
                value_set=[contract_hash],
                description="images stored by the current preprocessing contract (re-ingest after changing it)",
            )
        )
    if contract_size is not None:
        out += [
            gxe.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=contract_size,
                max_value=contract_size,
                description="stored volumes at the contract cube (preprocess.size)"
                if volumes
                else "stored images at the contract size",
            )
            for c in (("depth", "height", "width") if volumes else ("height", "width"))
        ]
    return out


def majority_axcodes(manifest: pd.DataFrame) -> str | None:
    """The most common known ``axcodes`` of a volume manifest (ties: the first in sorting order); None when no
    row knows its orientation (MedMNIST 3D)."""
    known = manifest["axcodes"].dropna() if "axcodes" in manifest.columns else pd.Series([], dtype=object)
    if not len(known):
        return None
    counts = known.astype(str).value_counts()
    return sorted(counts[counts == counts.max()].index)[0]


def volume_expectations(
    config: ValidationConfig,
    contract_size: int | None = None,
    orientation: str | None = None,
    contract_orientation: str | None = None,
    stored: bool = False,
) -> list:
    """The volume checks added to the row-level suite of a volume dataset (module docstring).

    ``orientation``: the axcodes every row that knows its orientation must have (:func:`majority_axcodes`;
    None: none known, no check); the check is critical unless ``contract_orientation`` is ``"RAS"``
    (the contract reorients every volume, so the stored volumes agree: a warning). ``stored``: the
    manifest carries :data:`medimg.validation.stored_volumes.STORED_COLUMNS`, checked against the
    contract cube ``contract_size`` (None: shape not checked), uint8 and not blank.
    """
    import great_expectations.expectations as gxe  # here: GX takes 2 s to import; only when a suite runs
    from great_expectations.expectations.metadata_types import FailureSeverity

    from medimg.data.volumes import CORRECTIONS  # here: it loads nibabel (0.4 s); only a volume suite needs it

    _, hi_side = config.original_side_range
    lo_mm, hi_mm = config.volume_spacing_range_mm
    grey_lo, grey_hi = GREY_RANGE
    known = "|".join(re.escape(name) for name in sorted(CORRECTIONS))
    out: list[Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_mean",
            min_value=grey_lo,
            max_value=grey_hi,
            description="voxel mean within the uint8 grey range 0..255 (intensity range)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="original_depth", min_value=1, max_value=hi_side, description="source slices in range"
        ),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=lo_mm,
                max_value=hi_mm,
                description=f"source voxel spacing within {lo_mm:g}..{hi_mm:g} mm where known "
                "(validation.volume_spacing_range_mm)",
            )
            for c in ("spacing_z", "spacing_y", "spacing_x")
        ],
        gxe.ExpectColumnValuesToMatchRegex(
            column="axcodes",
            regex=r"^(?=.*[RL])(?=.*[AP])(?=.*[SI])[RLAPSI]{3}$",
            description="orientation codes: one of R/L, A/P, S/I per axis",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="corrections",
            regex=rf"^(?:(?:{known})(?:;(?:{known}))*)?$",
            description="geometry corrections the volume readers know (medimg.data.volumes.CORRECTIONS)",
        ),
    ]
    if orientation is not None:
        reoriented = contract_orientation == "RAS"
        out.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="axcodes",
                value_set=[orientation],
                severity=FailureSeverity.WARNING if reoriented else FailureSeverity.CRITICAL,
                description=f"one source orientation across the dataset ({orientation}, the most common); "
                + (
                    "the contract reorients every volume to RAS"
                    if reoriented
                    else "the contract keeps the source orientation, so the stored volumes would disagree"
                ),
            )
        )
    if stored:
        if contract_size is not None:
            cube = storedlib.shape_text((contract_size,) * 3)
            out.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column="stored_shape",
                    value_set=[cube],
                    description=f"stored .npy volume is the contract cube {cube} (read from the file)",
                )
            )
        out += [
            gxe.ExpectColumnValuesToBeInSet(
                column="stored_dtype",
                value_set=[VOLUME_DTYPE],
                description=f"stored .npy volume is {VOLUME_DTYPE} (read from the file)",
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="stored_pixel_std",
                min_value=config.min_pixel_std,
                description="no blank or near-constant stored volume (empty volume; read from the file)",
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="stored_pixel_mean",
                min_value=grey_lo,
                max_value=grey_hi,
                description="stored voxel mean within 0..255 (intensity range; read from the file)",
            ),
        ]
    return out


def volume_statistics(frame: pd.DataFrame, orientation: str | None, stored: bool) -> dict:
    """What the volume checks saw, JSON-ready: stored shapes and types (when read), spacing range where known,
    orientations, corrections."""
    spacing = frame[["spacing_z", "spacing_y", "spacing_x"]].astype("float64")
    known = spacing.notna().all(axis=1)

    def counts(column: str) -> dict[str, int]:
        values = frame[column].dropna().astype(str)
        return {str(k): int(v) for k, v in sorted(values.value_counts().items())}

    corrections: dict[str, int] = {}
    for text in frame["corrections"].dropna().astype(str):
        for name in filter(None, text.split(";")):
            corrections[name] = corrections.get(name, 0) + 1
    return {
        "stored_checked": stored,
        "stored_shapes": counts("stored_shape") if stored else None,
        "stored_dtypes": counts("stored_dtype") if stored else None,
        "volumes_with_spacing": int(known.sum()),
        "spacing_mm_range": {
            axis: [
                float(spacing.loc[known, f"spacing_{axis}"].min()),
                float(spacing.loc[known, f"spacing_{axis}"].max()),
            ]
            for axis in ("z", "y", "x")
        }
        if known.any()
        else None,
        "axcodes": counts("axcodes"),
        "expected_axcodes": orientation,
        "corrections": dict(sorted(corrections.items())),
    }


def summary_expectations(config: ValidationConfig) -> list:
    """The per-split suite over :func:`medimg.validation.warts.split_summary`: every split has images, class balance,
    expected sizes.
    """
    import great_expectations.expectations as gxe  # here: GX takes 2 s to import; only when a suite runs

    out: list[Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(column="n_images", min_value=1, description="every split has images"),
        gxe.ExpectColumnValuesToBeBetween(
            column="positive_fraction",
            min_value=config.min_class_fraction,
            max_value=1 - config.min_class_fraction,
            description="class balance within bounds",
        ),
    ]
    if config.expected_split_sizes:
        out.append(gxe.ExpectColumnPairValuesToBeEqual(column_A="n_images", column_B="expected_n_images"))
    return out


def _run_suite(context, name: str, frame: pd.DataFrame, expectations: list) -> tuple[dict, list[dict]]:
    import great_expectations as gx  # here: GX takes 2 s to import; only when a suite runs

    frame = plain_strings(frame)  # GX predates pandas' str dtype and its NaN
    asset = context.data_sources.add_pandas(name).add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": frame})
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    index_cols = [ID_COLUMN] if ID_COLUMN in frame.columns else ["split"]
    result = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": index_cols,
            "partial_unexpected_count": 50,
        },
    )
    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        res = item.result or {}
        failures.append(
            {
                "suite": name,
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "description": config.description,
                "severity": str(getattr(config.severity, "value", config.severity)),
                "unexpected_count": res.get("unexpected_count"),
                "unexpected": _unexpected_keys(res, index_cols),
                "observed_value": _jsonable(res.get("observed_value")),
                "exception": (item.exception_info or {}).get("exception_message")
                if item.exception_info and item.exception_info.get("raised_exception")
                else None,
            }
        )
    return result.to_json_dict(), failures


def _unexpected_keys(result: dict, index_cols: list[str]) -> list:
    rows = result.get("unexpected_index_list") or []
    keys = [row.get(index_cols[0]) if isinstance(row, dict) else row for row in rows]
    return sorted(str(k) for k in keys)[:200]


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, dict, str, int, float, bool)) or value is None:
        return value
    return str(value)


def validate_manifest(
    manifest: pd.DataFrame,
    config: ValidationConfig,
    class_labels: list[int],
    source_kind: str | None = None,
    contract_hash: str | None = None,
    contract_size: int | None = None,
    data_dir: Path | None = None,
    contract_orientation: str | None = None,
    grid_shape: tuple[int, int, int] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> ValidationOutcome:
    """Apply the wart policy, run the source kind's two suites, and say whether training may proceed.

    ``source_kind`` defaults to the manifest's own (its most common ``source_kind``), else
    ``medmnist``; ``contract_hash``/``contract_size`` None skip the contract checks. ``data_dir``
    is the dataset folder holding the stored images (the manifest's ``path`` is relative to it):
    their near-duplicates are found and the ``near_duplicates_across_splits`` policy applied; None
    skips that check (the warts then say ``near_duplicates_checked: false``). Raises
    ``FileNotFoundError`` when a stored image is missing.

    A volume manifest (:func:`~medimg.data.manifest.is_volume_frame`) also runs :func:`volume_expectations`;
    given ``data_dir`` its stored volumes are read (:mod:`medimg.validation.stored_volumes`; ``ValueError``
    for a file that is not a .npy array) and hashed by the volume rule. ``contract_orientation``
    (``preprocess.volume.orientation``: RAS or source) sets the severity of the one-orientation check.

    A segmentation manifest (:func:`~medimg.data.manifest.is_segmentation_frame`) runs the segmentation checks
    (:mod:`medimg.validation.segmentation`) instead of the contract cube and class balance: ``grid_shape`` is
    ``preprocess.volume.shape`` (None: not checked), ``class_names`` the task's (``class_labels`` are the mask's
    label values; the names title the per-structure counts); given ``data_dir`` its stored masks are read too
    (:mod:`medimg.validation.stored_masks`).
    """
    import great_expectations as gx  # here: GX takes 2 s to import; only when a suite runs

    if source_kind is None:
        kinds = manifest["source_kind"].dropna() if "source_kind" in manifest.columns else pd.Series([], dtype=object)
        source_kind = str(kinds.mode().iloc[0]) if len(kinds) else "medmnist"
    found = wartlib.find_warts(manifest)
    volumes = is_volume_frame(manifest)
    segmentation = is_segmentation_frame(manifest)
    n_labels = len(class_labels)
    cube = None if segmentation else contract_size  # a segmentation grid is preprocess.volume.shape, not a cube
    near = None
    surveyed = None
    if data_dir is not None:
        start = time.perf_counter()
        if volumes:
            surveyed = storedlib.survey(data_dir, manifest)
            near = nearlib.pairs_of(
                manifest,
                surveyed.hashes,
                config.volume_near_duplicate_distance,
                hash_name=nearlib.VOLUME_HASH_NAME,
                comparable=surveyed.hashable,
            )
        else:
            near = nearlib.find_near_duplicates(manifest, data_dir, config.near_duplicate_distance)
        log.info(
            "near-duplicates of %d stored %s found in %.1f s: %d pairs across splits, %d within",
            len(manifest),
            "volumes" if volumes else "images",
            time.perf_counter() - start,
            len(near.across_splits),
            len(near.within_split),
        )
    dropped = wartlib.rows_to_drop(
        manifest,
        within=config.duplicates_within_split == WartPolicy.DROP,
        across=config.duplicates_across_splits == WartPolicy.DROP,
        patients=config.patient_overlap == WartPolicy.DROP,
    )
    near_dropped = (
        nearlib.rows_to_drop(near) if near and config.near_duplicates_across_splits == WartPolicy.DROP else []
    )
    dropped = sorted(set(dropped) | set(near_dropped))
    kept = manifest[~manifest["id"].isin(dropped)].reset_index(drop=True)
    checked = wartlib.add_check_columns(kept)
    checked["near_duplicates_in_other_splits"] = nearlib.partners_in_other_splits(near, checked["id"])
    row_expectations = manifest_expectations(
        config,
        class_labels,
        source_kind,
        contract_hash,
        cube,
        volumes=volumes,
        stored=surveyed is not None,
        segmentation=segmentation,
    )
    orientation = None
    if volumes:
        if surveyed is not None:
            checked = checked.merge(surveyed.facts, on="id", how="left", validate="one_to_one")
        orientation = majority_axcodes(checked)
        row_expectations += volume_expectations(
            config, cube, orientation, contract_orientation, stored=surveyed is not None
        )
    if segmentation:
        if surveyed is not None:
            masks = masklib.survey(data_dir, checked)  # type: ignore[arg-type]  # surveyed: data_dir is given
            checked = checked.merge(masks, on="id", how="left", validate="one_to_one")
        row_expectations += seglib.segmentation_expectations(config, n_labels, grid_shape, stored=surveyed is not None)
        summary = seglib.split_summary(kept, n_labels, class_names)
    else:
        summary = wartlib.split_summary(kept)
    if config.expected_split_sizes:
        summary["expected_n_images"] = summary["split"].map(config.expected_split_sizes).fillna(-1).astype("int64")

    from great_expectations.data_context.types.base import ProgressBarsConfig  # here: as gx above

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    manifest_suite, summary_suite = f"{source_kind}.manifest", f"{source_kind}.split_summary"
    manifest_json, manifest_failures = _run_suite(
        context,
        manifest_suite,
        checked,
        row_expectations,
    )
    summary_json, summary_failures = _run_suite(
        context,
        summary_suite,
        summary,
        seglib.summary_expectations(config, n_labels, class_names) if segmentation else summary_expectations(config),
    )
    failures = manifest_failures + summary_failures
    critical = [f for f in failures if f["severity"] == "critical"]
    warnings = [f for f in failures if f["severity"] != "critical"]
    return ValidationOutcome(
        passed=not critical,
        failed_critical=critical,
        warnings=warnings,
        dropped_ids=dropped,
        warts={
            **found.summary(),
            **(near.summary() if near is not None else nearlib.not_checked_summary()),
            "within_split": found.within_split,
            "across_splits": found.across_splits,
            "patients_across_splits_list": found.patients_across_splits,
            "near_duplicate_pairs": [p.to_json() for p in near.pairs] if near is not None else [],
            "near_duplicates_dropped": near_dropped,
        },
        statistics={
            "source_kind": source_kind,
            "n_rows": len(manifest),
            "n_kept": len(kept),
            "split_summary": summary.drop(columns=["expected_n_images"], errors="ignore").to_dict("records"),
            **({"volumes": volume_statistics(checked, orientation, surveyed is not None)} if volumes else {}),
            **(
                {
                    "segmentation": seglib.statistics(
                        checked, summary, n_labels, class_names, grid_shape, surveyed is not None
                    )
                }
                if segmentation
                else {}
            ),
        },
        results={manifest_suite: manifest_json, summary_suite: summary_json},
    )
