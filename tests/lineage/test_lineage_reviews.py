"""The lineage lists the radiologists' reviews its data version holds: reviews whose training example's SHA-256
is in the version's manifest, by the reader's pseudonym, in the text and HTML reports. (The whole chain, a
review through the inbox watcher to a retrained model, is the browser test's: tests/review/test_browser.py.)"""

from __future__ import annotations

import pandas as pd

from medimg import registry
from medimg.data import versioning
from medimg.lineage import lineage, render_html, render_text
from medimg.review.reviews import Review, ReviewLog
from registry_fixtures import MODEL


def _review(case_id: str, sha256: str | None, reader: str = "rad") -> Review:
    return Review(
        case_id=case_id,
        reader=reader,
        reader_pseudonym=f"reader-{case_id.lower()[:16]}",
        time="2026-01-02T03:04:05.000+00:00",
        model_name=MODEL,
        model_version="1",
        onnx_sha256="ab" * 32,
        model_said="pneumonia",
        model_abnormal=True,
        p_abnormal=0.9,
        reader_said="normal",
        reader_abnormal=False,
        agrees=False,
        comment="<b>comment</b>",
        example=f"normal/review-{case_id}.png" if sha256 else None,
        example_sha256=sha256,
        feedback="written" if sha256 else "no_inbox",
    )


def test_lineage_lists_the_reviews_its_data_holds(lineage_ws):
    ws, params = lineage_ws.ws, lineage_ws.params
    data_version = registry.get_version(MODEL, "1").tags["medimg.data_version"]
    manifest = pd.read_parquet(versioning.version_manifest(ws, data_version), columns=["sha256"])
    held = manifest["sha256"].iloc[7]
    log = ReviewLog(ws.reviews_log)
    log.add(_review("HeldHeldHeldHeld", held))
    log.add(_review("ElsewhereElsewhe", "0" * 64))  # an example this data version does not hold
    log.add(_review("NoExampleNoExamp", None))

    report = lineage(params, ws, "1")
    assert report.reviews.found and report.reviews.n_images == len(set(manifest["sha256"]))
    assert [r.case_id for r in report.reviews.reviews] == ["HeldHeldHeldHeld"]
    item = report.reviews.reviews[0]
    assert (item.reader_pseudonym, item.model_said, item.reader_said, item.sha256) == (
        "reader-heldheldheldheld",
        "pneumonia",
        "normal",
        held,
    )
    text = render_text(report)
    assert "8. Reviews in the training data" in text and "case HeldHeldHeldHeld by reader-heldheldheldheld" in text
    html = render_html(report)
    assert "HeldHeldHeldHeld" in html and "ElsewhereElsewhe" not in html
    assert " rad " not in text and "<b>comment</b>" not in html and "comment" not in text  # no name, no comment


def test_without_the_manifest_the_reviews_are_not_traced(fresh_lineage_ws):
    ws, params = fresh_lineage_ws.ws, fresh_lineage_ws.params
    for kept in ws.data_versions.glob("*.manifest.parquet"):
        kept.unlink()
    report = lineage(params, ws, "1")
    assert not report.reviews.found and report.reviews.reviews == ()
    assert "not traced" in render_text(report)
