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
        **_split_table(stats),
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
        volume_rows=_volume_rows(stats.get("volumes")),
        segmentation_rows=_segmentation_rows(stats.get("segmentation")),
    )


def _split_table(stats: dict) -> dict:
    """``split_headers``, ``split_rows`` and ``split_numeric`` of the splits table: images and positives, or for a
    segmentation dataset cases, empty masks and the cases labelling each structure."""
    rows = stats.get("split_summary", [])
    segmentation = stats.get("segmentation")
    if not segmentation:
        return {
            "split_headers": ["split", "images", "positives", "positive fraction"],
            "split_rows": [
                [r.get("split"), r.get("n_images"), r.get("n_positive"), r.get("positive_fraction")] for r in rows
            ],
            "split_numeric": (1, 2, 3),
        }
    names = list((segmentation.get("structures") or {}).values())
    return {
        "split_headers": ["split", "cases", "empty masks", *[f"cases with {name}" for name in names]],
        "split_rows": [
            [r.get("split"), r.get("n_images"), r.get("n_empty_masks"), *[r.get(f"n_with_{n}") for n in names]]
            for r in rows
        ],
        "split_numeric": tuple(range(1, 3 + len(names))),
    }


def _segmentation_rows(segmentation: dict | None) -> list[list]:
    """What the segmentation checks saw (``statistics.segmentation`` of a segmentation dataset's report); empty for
    classification."""
    if not segmentation:
        return []
    labelled = segmentation.get("foreground_fraction_range")
    read = segmentation.get("stored_checked")
    return [
        ["structures (label: name)", segmentation.get("structures")],
        ["stored grid (z, y, x)", segmentation.get("grid_shape") or "not checked"],
        ["label sets of the masks (labels: cases)", segmentation.get("labels_present")],
        ["empty masks", segmentation.get("empty_masks")],
        [
            "labelled share of the grid, non-empty masks (min..max, median)",
            f"{labelled[0]:.4g}..{labelled[1]:.4g}, {segmentation.get('foreground_fraction_median'):.4g}"
            if labelled
            else "no labelled mask",
        ],
        [
            "stored masks (shape: count)",
            segmentation.get("stored_mask_shapes") if read else "not read (no dataset folder given)",
        ],
        ["stored mask types (dtype: count)", segmentation.get("stored_mask_dtypes") if read else ""],
    ]


def _volume_rows(volumes: dict | None) -> list[list]:
    """What the volume checks saw (``statistics.volumes`` of a volume dataset's report); empty for images."""
    if not volumes:
        return []
    spacing = volumes.get("spacing_mm_range")
    return [
        [
            "stored volumes (shape: count)",
            volumes.get("stored_shapes") if volumes.get("stored_checked") else "not read (no dataset folder given)",
        ],
        ["stored voxel types (dtype: count)", volumes.get("stored_dtypes") if volumes.get("stored_checked") else ""],
        ["volumes with a known spacing", volumes.get("volumes_with_spacing")],
        [
            "source spacing range, mm (z, y, x)",
            ", ".join(f"{axis} {lo:g}..{hi:g}" for axis, (lo, hi) in spacing.items()) if spacing else "unknown",
        ],
        ["source orientations (axcodes: count)", volumes.get("axcodes") or "unknown"],
        ["orientation every volume must have", volumes.get("expected_axcodes") or "none known: not checked"],
        ["geometry corrections (name: volumes)", volumes.get("corrections") or "none"],
    ]


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
