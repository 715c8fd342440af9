"""The validation report as one self-contained HTML file that reads offline.

Great Expectations' Data Docs load their styles and scripts from the web; this page (template
``validation_report.html.j2`` with the shared ``report.css``, :mod:`medimg.rendering`) has its CSS
inline, no scripts, no images and no links to anything outside itself, so it reads the same in
an air-gapped hospital network, as an MLflow artifact, or attached to an e-mail. Every value is
HTML-escaped (autoescaping). It renders the report JSON the validation step writes (:func:`render_html`).
"""

from __future__ import annotations

from medimg import rendering

TEMPLATE = "validation_report.html.j2"

MAX_ROWS = 200


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
            rows.append(
                [
                    status,
                    config.get("type"),
                    column or "",
                    description or "",
                    severity,
                    result_part.get("unexpected_count", ""),
                    examples,
                ]
            )
        out[suite] = rows
    return out


def render_html(report: dict) -> str:
    """The report JSON (as written by :mod:`medimg.steps.validate`) -> one offline HTML page."""
    stats = report.get("statistics") or {}
    warts = report.get("warts") or {}
    detail = report.get("wart_details") or {}
    wart_details = []
    if detail.get("within_split"):
        wart_details.append(
            (
                "Byte-identical files within a split",
                ["split", "sha256", "files"],
                [[g["split"], g["sha256"][:16], ", ".join(g["files"])] for g in detail["within_split"]],
            )
        )
    if detail.get("across_splits"):
        wart_details.append(
            (
                "Byte-identical files across splits",
                ["splits", "sha256", "files"],
                [[", ".join(g["splits"]), g["sha256"][:16], ", ".join(g["files"])] for g in detail["across_splits"]],
            )
        )
    if detail.get("patients_across_splits"):
        wart_details.append(
            (
                "Patients (pseudonyms) with images in several splits",
                ["patient", "splits", "images per split"],
                [[g["patient_id"], ", ".join(g["splits"]), g["images"]] for g in detail["patients_across_splits"]],
            )
        )
    dropped = set(detail.get("near_duplicates_dropped") or [])
    near_headers = ["image", "split", "near-duplicate", "split", "pHash distance"]
    if detail.get("near_duplicates_across_splits"):
        wart_details.append(
            (
                "Near-duplicates across splits (leakage)"
                + (f"; {len(dropped)} held-out image(s) dropped by policy" if dropped else ""),
                [*near_headers, "dropped"],
                [
                    [
                        p["id_a"],
                        p["split_a"],
                        p["id_b"],
                        p["split_b"],
                        p["distance"],
                        p["id_b"] if p["id_b"] in dropped else "",
                    ]
                    for p in detail["near_duplicates_across_splits"]
                ],
            )
        )
    if detail.get("near_duplicates_within_split"):
        wart_details.append(
            (
                "Near-duplicates within a split",
                near_headers,
                [
                    [p["id_a"], p["split_a"], p["id_b"], p["split_b"], p["distance"]]
                    for p in detail["near_duplicates_within_split"]
                ],
            )
        )
    return rendering.render(
        TEMPLATE,
        report=report,
        max_rows=MAX_ROWS,
        expectations=_expectation_rows(report),
        wart_details=wart_details,
        failed_rows=[
            [
                f["suite"],
                f["expectation"],
                f.get("column"),
                f.get("description"),
                f.get("unexpected_count"),
                ", ".join(f.get("unexpected") or [])[:300],
            ]
            for f in report.get("failed_critical") or []
        ],
        split_rows=[
            [r.get("split"), r.get("n_images"), r.get("n_positive"), r.get("positive_fraction")]
            for r in stats.get("split_summary", [])
        ],
        wart_rows=[
            ["duplicate groups within a split", warts.get("duplicate_groups_within_split")],
            ["extra copies within a split", warts.get("extra_copies_within_split")],
            ["sha256 shared across splits", warts.get("hashes_across_splits")],
            ["images with a hash shared across splits", warts.get("images_across_splits")],
            ["patients in two or more splits", warts.get("patients_across_splits")],
            ["images of those patients", warts.get("images_of_patients_across_splits")],
            ["patients across splits, by splits", warts.get("patients_across_splits_by_splits")],
            *_near_duplicate_rows(warts),
        ],
    )


def _near_duplicate_rows(warts: dict) -> list[list]:
    if not warts.get("near_duplicates_checked"):
        return [["near-duplicates (perceptual hash)", "not checked (no stored images given)"]]
    distance = warts.get("near_duplicate_distance")
    return [
        [
            f"near-duplicate pairs across splits (pHash distance <= {distance})",
            warts.get("near_duplicate_pairs_across_splits"),
        ],
        ["near-duplicate pairs across splits, by splits", warts.get("near_duplicate_pairs_across_splits_by_splits")],
        ["images in near-duplicate pairs across splits", warts.get("images_in_near_duplicate_pairs_across_splits")],
        ["near-duplicate pairs within a split", warts.get("near_duplicate_pairs_within_split")],
        ["near-duplicate hash", warts.get("near_duplicate_hash")],
    ]
