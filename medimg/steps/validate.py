"""Step 2: the Great Expectations suites over the manifest; a critical failure stops the run."""

from __future__ import annotations

import json
import logging

from medimg.config import Params
from medimg.data import manifest
from medimg.validation.suite import validate_manifest
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The data failed a critical expectation; training must not start."""


def _describe(item: dict) -> str:
    where = f" on column {item['column']}" if item.get("column") else ""
    what = item.get("description") or item["expectation"]
    examples = ", ".join(item.get("unexpected") or [])[:300]
    count = item.get("unexpected_count")
    return f"{item['suite']}: {what} ({item['expectation']}{where}): {count if count is not None else 'n/a'} unexpected" + (
        f" [{examples}]" if examples else ""
    )


def run(params: Params, ws: Workspace, ingested: dict) -> dict:
    frame = manifest.read(ws.data)
    outcome = validate_manifest(frame, params.validation, list(range(len(params.data.class_names))))
    report = ws.reports / f"validation-{ingested['data_version']}.json"
    report.write_text(json.dumps({"data_version": ingested["data_version"], **outcome.to_json()}, indent=1, default=str))
    warts = outcome.warts
    log.info(
        "warts: duplicate groups within split %s (extra copies %s); %d hashes shared across splits (%d images)",
        warts["duplicate_groups_within_split"], warts["extra_copies_within_split"],
        warts["hashes_across_splits"], warts["images_across_splits"],
    )
    for item in outcome.warnings:
        log.warning("validation warning: %s", _describe(item))
    if outcome.dropped_ids:
        log.warning("dropped %d rows by policy: %s", len(outcome.dropped_ids), ", ".join(outcome.dropped_ids[:20]))
    summary = {
        "passed": outcome.passed,
        "report": str(report),
        "n_warnings": len(outcome.warnings),
        "failed": [_describe(f) for f in outcome.failed_critical],
        "dropped_ids": outcome.dropped_ids,
        "warts": {k: v for k, v in warts.items() if k not in ("within_split", "across_splits")},
    }
    for item in outcome.failed_critical:
        log.error("validation failed: %s", _describe(item))
    return summary


def raise_if_failed(summary: dict) -> None:
    if not summary["passed"]:
        raise ValidationFailed(
            f"data validation failed ({len(summary['failed'])} critical expectation(s)); report: {summary['report']}\n  "
            + "\n  ".join(summary["failed"])
        )
