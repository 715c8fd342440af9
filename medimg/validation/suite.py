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
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medimg.config import ValidationConfig, WartPolicy
from medimg.data.manifest import COLUMNS, SPLITS, plain_strings
from medimg.validation import near_duplicates as nearlib
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


FILE_FORMATS = {"medmnist": ["npz"], "image_folder": ["png", "jpeg"], "dicom_folder": ["dicom"]}
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
}
CHECK_COLUMNS = ("copies_in_split", "splits_with_hash", "splits_with_patient", "near_duplicates_in_other_splits")


def manifest_expectations(
    config: ValidationConfig,
    class_labels: list[int],
    source_kind: str = "medmnist",
    contract_hash: str | None = None,
    contract_size: int | None = None,
) -> list:
    """The row-level suite for one source kind (see the module docstring)."""
    import great_expectations.expectations as gxe  # here: GX takes 2 s to import; only when a suite runs

    schema = list(COLUMNS) + list(CHECK_COLUMNS)
    lo_bits, hi_bits = config.bit_depth_range
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
            column="pixel_std", min_value=config.min_pixel_std, description="no blank or near-constant images"
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
            description="no near-duplicate image (perceptual hash) in another split (leakage)",
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
                description="stored images at the contract size",
            )
            for c in ("height", "width")
        ]
    return out


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
) -> ValidationOutcome:
    """Apply the wart policy, run the source kind's two suites, and say whether training may proceed.

    ``source_kind`` defaults to the manifest's own (its most common ``source_kind``), else
    ``medmnist``; ``contract_hash``/``contract_size`` None skip the contract checks. ``data_dir``
    is the dataset folder holding the stored images (the manifest's ``path`` is relative to it):
    their near-duplicates are found and the ``near_duplicates_across_splits`` policy applied; None
    skips that check (the warts then say ``near_duplicates_checked: false``). Raises
    ``FileNotFoundError`` when a stored image is missing.
    """
    import great_expectations as gx  # here: GX takes 2 s to import; only when a suite runs

    if source_kind is None:
        kinds = manifest["source_kind"].dropna() if "source_kind" in manifest.columns else pd.Series([], dtype=object)
        source_kind = str(kinds.mode().iloc[0]) if len(kinds) else "medmnist"
    found = wartlib.find_warts(manifest)
    near = None
    if data_dir is not None:
        start = time.perf_counter()
        near = nearlib.find_near_duplicates(manifest, data_dir, config.near_duplicate_distance)
        log.info(
            "near-duplicates of %d stored images found in %.1f s: %d pairs across splits, %d within",
            len(manifest),
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
        manifest_expectations(config, class_labels, source_kind, contract_hash, contract_size),
    )
    summary_json, summary_failures = _run_suite(context, summary_suite, summary, summary_expectations(config))
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
        },
        results={manifest_suite: manifest_json, summary_suite: summary_json},
    )
