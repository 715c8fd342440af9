"""The validation report as one self-contained HTML file that reads offline.

Great Expectations' Data Docs load their styles and scripts from the web; this page has its CSS
inline, no scripts, no images and no links to anything outside itself, so it reads the same in
an air-gapped hospital network, as an MLflow artifact, or attached to an e-mail. Every value is
HTML-escaped. It renders the report JSON the validation step writes (:func:`render_html`).
"""

from __future__ import annotations

import html
import json

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2rem;color:#1d2330;
  background:#fafbfc;line-height:1.4}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:1.8rem 0 .5rem;border-bottom:1px solid #d6dae1;
  padding-bottom:.2rem}h3{font-size:1rem;margin:1.2rem 0 .4rem}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:.8rem;font-weight:600;font-size:.9rem}
.pass{background:#d9f2e1;color:#14532d}.fail{background:#fde2e1;color:#7f1d1d}.warn{background:#fff1c2;color:#713f12}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.86rem;background:#fff}
th,td{border:1px solid #d6dae1;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82rem}
.muted{color:#5b6475}.small{font-size:.8rem}
"""

MAX_ROWS = 200


def _e(value) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows[:MAX_ROWS]:
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    more = f'<p class="muted small">{len(rows) - MAX_ROWS} more rows in the JSON report.</p>' if len(rows) > MAX_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _expectation_rows(report: dict) -> dict[str, list[list]]:
    """suite -> rows (status, expectation, column, description, severity, unexpected, examples)."""
    failed = {}
    for item in report.get("failed_critical", []) + report.get("warnings", []):
        failed[(item["suite"], item["expectation"], item.get("column"), item.get("description"))] = item
    out: dict[str, list[list]] = {}
    for suite, result in (report.get("great_expectations") or {}).items():
        rows = []
        for res in result.get("results", []):
            config = res.get("expectation_config") or {}
            kwargs = config.get("kwargs") or {}
            column = kwargs.get("column") or kwargs.get("column_A")
            description = config.get("description")
            item = failed.get((suite, config.get("type"), kwargs.get("column"), description))
            severity = str(config.get("severity") or "critical")
            if res.get("success"):
                status = "pass"
            else:
                status = "FAIL" if (item or {}).get("severity", severity) == "critical" else "warn"
            result_part = res.get("result") or {}
            examples = ", ".join((item or {}).get("unexpected") or [])[:240]
            rows.append([status, config.get("type"), column or "", description or "", severity,
                         result_part.get("unexpected_count", ""), examples])
        out[suite] = rows
    return out


def render_html(report: dict) -> str:
    """The report JSON (as written by :mod:`medimg.steps.validate`) -> one offline HTML page."""
    passed = report.get("passed")
    badge = '<span class="badge pass">PASSED</span>' if passed else '<span class="badge fail">FAILED</span>'
    warts = report.get("warts", {})
    stats = report.get("statistics", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medimg data validation {_e(report.get('data_version'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Data validation {badge}</h1>",
        f'<p class="muted">data version <code>{_e(report.get("data_version"))}</code> &middot; source kind '
        f'<code>{_e(stats.get("source_kind"))}</code> &middot; {_e(stats.get("n_rows"))} rows, '
        f'{_e(stats.get("n_kept"))} kept &middot; contract <code>{_e(report.get("contract_hash"))}</code></p>',
    ]
    failed = report.get("failed_critical", [])
    warnings = report.get("warnings", [])
    parts.append("<h2>Outcome</h2>")
    if failed:
        parts.append("<p>Critical expectations failed; training must not start:</p>")
        parts.append(_table(["suite", "expectation", "column", "description", "unexpected", "examples"],
                            [[f["suite"], f["expectation"], f.get("column"), f.get("description"),
                              f.get("unexpected_count"), ", ".join(f.get("unexpected") or [])[:300]] for f in failed]))
    else:
        parts.append("<p>No critical expectation failed.</p>")
    if warnings:
        parts.append(f'<p><span class="badge warn">{len(warnings)} warning(s)</span> reported by policy, run not stopped.</p>')
    if report.get("dropped_ids"):
        parts.append(f"<p>{len(report['dropped_ids'])} rows dropped by policy (listed in the JSON report).</p>")

    parts.append("<h2>Splits</h2>")
    parts.append(_table(["split", "images", "positives", "positive fraction"],
                        [[r.get("split"), r.get("n_images"), r.get("n_positive"), r.get("positive_fraction")]
                         for r in stats.get("split_summary", [])], {1, 2, 3}))

    parts.append("<h2>Data warts</h2>")
    parts.append(_table(["wart", "count"], [
        ["duplicate groups within a split", warts.get("duplicate_groups_within_split")],
        ["extra copies within a split", warts.get("extra_copies_within_split")],
        ["sha256 shared across splits", warts.get("hashes_across_splits")],
        ["images with a hash shared across splits", warts.get("images_across_splits")],
        ["patients in two or more splits", warts.get("patients_across_splits")],
        ["images of those patients", warts.get("images_of_patients_across_splits")],
        ["patients across splits, by splits", warts.get("patients_across_splits_by_splits")],
    ]))
    detail = report.get("wart_details", {})
    if detail.get("within_split"):
        parts.append("<h3>Byte-identical files within a split</h3>")
        parts.append(_table(["split", "sha256", "files"], [[g["split"], g["sha256"][:16], ", ".join(g["files"])]
                                                            for g in detail["within_split"]]))
    if detail.get("across_splits"):
        parts.append("<h3>Byte-identical files across splits</h3>")
        parts.append(_table(["splits", "sha256", "files"], [[", ".join(g["splits"]), g["sha256"][:16],
                                                             ", ".join(g["files"])] for g in detail["across_splits"]]))
    if detail.get("patients_across_splits"):
        parts.append("<h3>Patients (pseudonyms) with images in several splits</h3>")
        parts.append(_table(["patient", "splits", "images per split"],
                            [[g["patient_id"], ", ".join(g["splits"]), g["images"]]
                             for g in detail["patients_across_splits"]]))

    parts.append("<h2>Expectations</h2>")
    for suite, rows in _expectation_rows(report).items():
        parts.append(f"<h3>Suite <code>{_e(suite)}</code></h3>")
        parts.append(_table(["status", "expectation", "column", "description", "severity", "unexpected", "examples"],
                            rows, {5}))
    parts.append('<p class="muted small">Generated by medimg from Great Expectations results; self-contained, '
                 "no external resources.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
