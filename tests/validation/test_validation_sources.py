"""Per-source-kind Great Expectations suites on real ingested folders: patient overlap policies,
duplicates named by file, range/modality/contract checks, and the offline HTML report."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from datapaths import CHEST, copy_chest_subset
from medimg import preprocess
from medimg.config import PreprocessConfig, ValidationConfig, parse_params
from medimg.data import manifest
from medimg.data.sources import kermany_patient_key
from medimg.steps import ingest, validate
from medimg.validation.suite import validate_manifest
from medimg.workspace import Workspace

LABELS = [0, 1]


def _overlap_patient() -> tuple[str, list[Path], list[Path]]:
    """A Kermany patient id with images in both train and test (170 such ids exist)."""

    def by_key(split):
        out: dict[str, list[Path]] = {}
        for path in sorted((CHEST / split / "PNEUMONIA").iterdir()):
            out.setdefault(kermany_patient_key(path.name), []).append(path)
        return out

    train, test = by_key("train"), by_key("test")
    key = sorted(set(train) & set(test))[0]
    return key, train[key], test[key]


@pytest.fixture(scope="module")
def folder_ws(tmp_path_factory):
    """A small real image folder (one patient in train and test, one duplicate file) ingested at 32 px."""
    tmp = tmp_path_factory.mktemp("val")
    root = tmp / "cx"
    copy_chest_subset(root, per_class=12)
    key, train_images, test_images = _overlap_patient()
    for src in train_images:
        shutil.copy(src, root / "train" / "PNEUMONIA" / src.name)
    for src in test_images:
        shutil.copy(src, root / "test" / "PNEUMONIA" / src.name)
    first = sorted((root / "test" / "NORMAL").iterdir())[0]
    shutil.copy(first, root / "test" / "NORMAL" / "duplicate-of-first.jpeg")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDIMG_DEID_SECRET", "validation-test-secret-0123456789")
    params = parse_params(
        {
            "workspace": {"path": str(tmp / "ws")},
            "preprocess": {"size": 32},
            "data": {"source": "image_folder", "root": str(root)},
            "validation": {"expected_split_sizes": None},
        }
    )
    ws = Workspace.at(tmp / "ws")
    ingested = ingest.run(params, ws)
    yield params, ws, ingested, key, first.name
    mp.undo()


def _failures(outcome, column):
    return [f for f in outcome.failed_critical + outcome.warnings if f["column"] == column]


def test_patient_overlap_warns_by_default_and_the_offline_reports_name_patient_and_files(folder_ws):
    params, ws, ingested, key, duplicated = folder_ws
    summary = validate.run(params, ws, ingested.data_version)
    assert summary.passed and summary.warts["patients_across_splits"] >= 1
    report = json.loads(summary.report.read_text())
    assert "image_folder.manifest" in report["great_expectations"]
    overlap = report["wart_details"]["patients_across_splits"]
    assert all(g["patient_id"].startswith("pat-") and key not in json.dumps(g) for g in overlap)
    leak = next(w for w in report["warnings"] if w["column"] == "splits_with_patient")
    assert leak["severity"] == "warning" and leak["unexpected_count"] >= 2
    dup = next(g for g in report["wart_details"]["within_split"] if g["split"] == "test")
    assert sorted(dup["files"]) == sorted([f"test/NORMAL/{duplicated}", "test/NORMAL/duplicate-of-first.jpeg"])
    html = summary.html_report.read_text()
    assert html == (ws.root / "pipeline" / "validation-latest.html").read_text()
    assert "duplicate-of-first.jpeg" in html and overlap[0]["patient_id"] in html
    _assert_self_contained(html)


def _assert_self_contained(html: str) -> None:
    """No scripts, stylesheets, images, frames or URLs: the page reads offline as it is."""

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: list[str] = []
            self.refs: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.refs += [v for k, v in attrs if k in ("href", "src") and v]

    parser = Refs()
    parser.feed(html)
    assert "style" in parser.tags and not parser.refs
    assert not {"script", "link", "img", "iframe"} & set(parser.tags)
    assert not re.search(r"https?://|//cdn|@import|url\(", html)


def test_fail_and_drop_policies_for_patient_overlap(folder_ws):
    _params, ws, _, _, _ = folder_ws
    frame = manifest.read(ws.data)
    failed = validate_manifest(frame, ValidationConfig(patient_overlap="fail"), LABELS)
    assert not failed.passed
    leak = next(f for f in failed.failed_critical if f["column"] == "splits_with_patient")
    assert leak["unexpected"] and all(i.startswith("img-") for i in leak["unexpected"])
    dropped = validate_manifest(frame, ValidationConfig(patient_overlap="drop"), LABELS)
    assert dropped.passed and not _failures(dropped, "splits_with_patient")
    gone = frame[frame["id"].isin(dropped.dropped_ids)]
    assert len(gone) and set(gone["split"]) <= {"train", "val"}  # the test split stays whole


def test_range_modality_contract_and_patient_checks_fail_on_bad_rows(folder_ws):
    params, ws, _, _, _ = folder_ws
    frame = manifest.read(ws.data)
    chash = preprocess.contract_hash(params.preprocess)
    assert validate_manifest(frame, ValidationConfig(), LABELS, contract_hash=chash, contract_size=32).passed
    bad = frame.copy()
    bad.loc[0, "modality"] = "US"
    bad.loc[1, "bit_depth"] = 32
    bad.loc[2, "original_width"] = 4
    bad.loc[3, "patient_id"] = None
    outcome = validate_manifest(bad, ValidationConfig(), LABELS, contract_hash=chash, contract_size=32)
    failed = {f["column"]: f["unexpected"] for f in outcome.failed_critical}
    assert failed["modality"] == [bad.loc[0, "id"]] and failed["bit_depth"] == [bad.loc[1, "id"]]
    assert failed["original_width"] == [bad.loc[2, "id"]] and failed["patient_id"] == [bad.loc[3, "id"]]
    other = preprocess.contract_hash(PreprocessConfig(size=32, clahe=True))
    stale = validate_manifest(frame, ValidationConfig(), LABELS, contract_hash=other, contract_size=64)
    assert {f["column"] for f in stale.failed_critical} == {"contract_hash", "height", "width"}


def test_a_manifest_checked_against_another_kind_fails(folder_ws):
    _, ws, _, _, _ = folder_ws
    outcome = validate_manifest(manifest.read(ws.data), ValidationConfig(), LABELS, source_kind="dicom_folder")
    assert not outcome.passed
    assert {f["column"] for f in outcome.failed_critical} >= {"source_kind", "file_format"}
    assert all(f["suite"].startswith("dicom_folder.") for f in outcome.failed_critical)
