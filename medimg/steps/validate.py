"""Step 2: the Great Expectations suites over the manifest; a critical failure stops the run.

Writes ``reports/validation-<version>.json`` (the outcome, the warts with the files they concern,
and GX's own result JSON) and ``reports/validation-<version>.html`` (the same, readable offline),
plus ``pipeline/validation-latest.{json,html}`` copies for the ``dvc.yaml`` stage. The summary returned names both
(:class:`~medimg.contracts.ValidationSummary` ``report``, ``html_report``) so the flow can log them to MLflow.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from medimg import preprocess
from medimg.config import Params
from medimg.contracts import ValidationSummary
from medimg.data import manifest
from medimg.validation.report import render_html
from medimg.validation.suite import ValidationOutcome, validate_manifest
from medimg.workspace import Workspace

#: Wart lists that go to ``wart_details`` (with the files they concern), not to the counts in ``warts``.
_WART_LISTS = (
    "within_split",
    "across_splits",
    "patients_across_splits_list",
    "near_duplicate_pairs",
    "near_duplicates_dropped",
)

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The data failed a critical expectation; training must not start."""


def _describe(item: dict) -> str:
    where = f" on column {item['column']}" if item.get("column") else ""
    what = item.get("description") or item["expectation"]
    examples = ", ".join(item.get("unexpected") or [])[:300]
    count = item.get("unexpected_count")
    return (
        f"{item['suite']}: {what} ({item['expectation']}{where}): {count if count is not None else 'n/a'} unexpected"
        + (f" [{examples}]" if examples else "")
    )


def _wart_details(frame, warts: dict) -> dict:
    """The warts with files named by ``source_file`` (never a raw identifier: see the manifest)."""
    name = dict(zip(frame["id"], frame["source_file"] if "source_file" in frame.columns else frame["id"], strict=True))
    return {
        "within_split": [
            {"split": g["split"], "sha256": g["sha256"], "files": [name.get(i, i) for i in g["ids"]]}
            for g in warts["within_split"]
        ],
        "across_splits": [
            {"splits": g["splits"], "sha256": g["sha256"], "files": [name.get(i, i) for i in g["ids"]]}
            for g in warts["across_splits"]
        ],
        "patients_across_splits": warts.get("patients_across_splits_list", []),
        # pseudonymous ids only: a near-duplicate pair is found in the stored images, not the source files
        "near_duplicates_across_splits": [
            p for p in warts.get("near_duplicate_pairs", []) if p["split_a"] != p["split_b"]
        ],
        "near_duplicates_within_split": [
            p for p in warts.get("near_duplicate_pairs", []) if p["split_a"] == p["split_b"]
        ],
        "near_duplicates_dropped": warts.get("near_duplicates_dropped", []),
    }


def check(params: Params, frame, data_dir: Path | None = None) -> ValidationOutcome:
    """The manifest against every suite, the preprocessing contract of ``params`` included.

    The one call that the flow and ``medimg reproduce`` share, so that data ingested under another
    contract never trains on either path. ``data_dir`` is the dataset folder of ``frame``'s stored
    images (for the near-duplicate check and its drop policy; for volumes, the stored files' checks
    too); None: the dataset folder of the workspace ``params.workspace.path``. A segmentation task's stored grid is
    ``preprocess.volume.shape``."""
    return validate_manifest(
        frame,
        params.validation,
        list(range(len(params.task.class_names))),
        contract_hash=preprocess.contract_hash(params.preprocess),
        contract_size=params.preprocess.size,
        data_dir=data_dir if data_dir is not None else Workspace.at(params.workspace.path).data,
        contract_orientation=params.preprocess.volume.orientation if params.preprocess.dims == 3 else None,
        grid_shape=params.preprocess.volume.shape if params.task.kind == "segmentation" else None,
        class_names=params.task.class_names,
    )


def run(params: Params, ws: Workspace, data_version: str) -> ValidationSummary:
    """Validate the workspace's dataset, which must be data version ``data_version`` (it names the reports).

    Writes the reports (module docstring) and returns the outcome; a failed critical expectation
    does not raise here (see :func:`raise_if_failed`). Raises ``FileNotFoundError`` when the
    workspace holds no manifest.
    """
    frame = manifest.read(ws.data)
    outcome = check(params, frame, ws.data)
    version = data_version
    payload = {
        "data_version": version,
        "contract_hash": preprocess.contract_hash(params.preprocess),
        **outcome.to_json(),
    }
    payload["wart_details"] = _wart_details(frame, outcome.warts)
    payload["warts"] = {k: v for k, v in outcome.warts.items() if k not in _WART_LISTS}
    ws.reports.mkdir(parents=True, exist_ok=True)
    report = ws.reports / f"validation-{version}.json"
    text = json.dumps(payload, indent=1, default=str)
    report.write_text(text)
    html_report = ws.reports / f"validation-{version}.html"
    html_report.write_text(render_html(json.loads(text)), encoding="utf-8")  # the JSON's values, as written
    ws.pipeline.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report, ws.pipeline / "validation-latest.json")
    shutil.copyfile(html_report, ws.pipeline / "validation-latest.html")
    warts = outcome.warts
    log.info(
        "warts: duplicate groups within split %s (extra copies %s); %d hashes shared across splits (%d images); "
        "%d patients in two or more splits (%d images) %s",
        warts["duplicate_groups_within_split"],
        warts["extra_copies_within_split"],
        warts["hashes_across_splits"],
        warts["images_across_splits"],
        warts["patients_across_splits"],
        warts["images_of_patients_across_splits"],
        warts["patients_across_splits_by_splits"],
    )
    if warts.get("near_duplicates_checked"):
        log.info(
            "near-duplicates (pHash distance <= %d): %d pairs across splits %s, within split %s",
            warts["near_duplicate_distance"],
            warts["near_duplicate_pairs_across_splits"],
            warts["near_duplicate_pairs_across_splits_by_splits"],
            warts["near_duplicate_pairs_within_split"],
        )
    for item in outcome.warnings:
        log.warning("validation warning: %s", _describe(item))
    if outcome.dropped_ids:
        log.warning("dropped %d rows by policy: %s", len(outcome.dropped_ids), ", ".join(outcome.dropped_ids[:20]))
    summary = ValidationSummary(
        data_version=version,
        passed=outcome.passed,
        report=report,
        html_report=html_report,
        n_warnings=len(outcome.warnings),
        failed=tuple(_describe(f) for f in outcome.failed_critical),
        dropped_ids=tuple(outcome.dropped_ids),
        warts=json.loads(json.dumps(payload["warts"], default=str)),  # the report's JSON values
    )
    for item in outcome.failed_critical:
        log.error("validation failed: %s", _describe(item))
    log.info("validation %s: %s (offline HTML %s)", "passed" if outcome.passed else "FAILED", report, html_report)
    return summary


def raise_if_failed(summary: ValidationSummary) -> None:
    """Raise :class:`ValidationFailed` (naming each failed expectation and the report) unless ``summary`` passed."""
    if not summary.passed:
        raise ValidationFailed(
            f"data validation failed ({len(summary.failed)} critical expectation(s)); report: {summary.report}\n  "
            + "\n  ".join(summary.failed)
        )
