"""Show a :class:`~medimg.lineage.report.LineageReport`: plain text, JSON, or one archivable HTML page.

``render_html`` returns one self-contained HTML document (template ``lineage.html.j2``): inline CSS
(``report.css``), no scripts, no web fonts, no links or references to any network resource (a
Content-Security-Policy meta tag forbids loading anything but inline styles and ``data:`` images),
with the ROC curve embedded as a ``data:`` URI. The data version, the gate decision and the ONNX
sha256 are in a banner at the top. Every value from the records is HTML-escaped (autoescaping,
:mod:`medimg.rendering`).
"""

from __future__ import annotations

import json

from medimg import rendering
from medimg.lineage.report import LineageReport, MetricSummary

HTML_TEMPLATE = "lineage.html.j2"


def to_json(report: LineageReport, with_figures: bool = False) -> str:
    """The report as JSON; embedded figures (base64 PNG) are left out unless asked for."""
    exclude = None if with_figures else {"figures": {"__all__": {"png_base64"}}}
    return json.dumps(report.model_dump(mode="json", exclude=exclude), indent=1, default=str)


def _fmt_metric(item: MetricSummary) -> str:
    ci = item.ci95
    return f"{item.value:.4f}" + (f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")


def render_text(report: LineageReport) -> str:
    """Plain text for the terminal (no markup, so Rich or a pipe prints it as is)."""
    model, run, code, data = report.model, report.run, report.code, report.data
    val, gate, onnx, promo = report.validation, report.gate, report.onnx, report.promotion
    lines = [
        f"Lineage of {model.name} v{model.version}"
        + (f" (aliases: {', '.join(model.aliases)})" if model.aliases else " (no alias)"),
        f"  data version   {data.version}",
        f"  gate decision  {gate.decision}" + (f" (failed: {', '.join(gate.failed)})" if gate.failed else ""),
        f"  onnx sha256    {onnx.sha256}",
        "",
        "1. MLflow run",
        f"  id {run.id}  name {run.name}  status {run.status}",
        f"  started {run.start}  ended {run.end}  flow run {run.flow_run_name} ({run.flow_run_id})",
    ]
    for name, item in run.metrics.items():
        lines.append(f"  test {name:<12} {_fmt_metric(item)}")
    if run.threshold is not None:
        lines.append(f"  threshold      {run.threshold:.4f}")
    lines += [
        "",
        "2. Code",
        f"  git commit {code.commit}" + (f"  ({code.subject})" if code.subject else "  (not in this checkout)"),
    ]
    lines += [
        "",
        "3. Data (DVC)",
        f"  version {data.version}  md5 {data.md5}",
        f"  .dvc file {data.dvc_file} ({'present' if data.dvc_file_exists else 'MISSING'})",
        f"  files {data.nfiles}  bytes {data.size}  source {data.source} (md5 {data.source_md5})",
        "  fetch exactly this data:",
    ]
    lines += [f"    {cmd}" for cmd in data.fetch_commands]
    lines += [
        "",
        "4. Data validation",
        f"  passed {val.passed}  warnings {val.n_warnings}  dropped rows {val.n_dropped}  ({val.artifact})",
    ]
    for key, value in val.warts.items():
        lines.append(f"  wart {key}: {json.dumps(value)}")
    for finding in val.warnings:
        lines.append(f"  warning: {finding.description or finding.expectation} ({finding.unexpected_count} rows)")
    lines += ["", "5. Gate report", f"  decision {gate.decision}  threshold {gate.threshold}"]
    for rule in gate.rules:
        lines.append(f"  [{'PASS' if rule.passed else 'FAIL'}] {rule.name}: {rule.reason}")
    lines += [
        "",
        "6. ONNX",
        f"  sha256 tag    {onnx.sha256}",
        f"  stored file   {onnx.stored_sha256}",
        f"  parity max |logit diff| {onnx.parity_max_abs_diff}",
    ]
    if onnx.error:
        lines.append(f"  ERROR {onnx.error}")
    lines += ["", "7. Promotion history", f"  current aliases {json.dumps(promo.current_aliases)}"]
    if not promo.alias_history:
        lines.append("  no audit-log events for this model")
    for event in promo.alias_history:
        previous = f"v{event.previous}" if event.previous else "none"
        lines.append(
            f"  {event.when} {event.action} {event.alias or ''} v{event.version} "
            f"(previous: {previous}) by {event.who}: {event.reason}"
        )
    reviews = report.reviews
    lines += ["", "8. Reviews in the training data"]
    if not reviews.found:
        lines.append("  the data version's manifest is not in this workspace: reviews not traced")
    elif not reviews.reviews:
        lines.append(f"  none of the {reviews.n_images} images came from a review ({reviews.reviews_log})")
    for reviewed in reviews.reviews:
        verdict = "agrees" if reviewed.agrees else "corrected"
        lines.append(
            f"  {reviewed.reviewed_at} case {reviewed.case_id} by {reviewed.reader_pseudonym}: "
            f"v{reviewed.model_version} said {reviewed.model_said}, reader said {reviewed.reader_said} ({verdict}); "
            f"{reviewed.example} sha256 {reviewed.sha256[:16]}"
        )
    lines += ["", "Checks"]
    for check in report.checks:
        lines.append(f"  [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    return "\n".join(lines) + "\n"


def render_html(report: LineageReport) -> str:
    """One self-contained HTML document for archiving (see the module docstring for the promises)."""
    return rendering.render(HTML_TEMPLATE, report=report)
