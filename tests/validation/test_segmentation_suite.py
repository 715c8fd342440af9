"""The validation step on a segmentation dataset: the real MSD hippocampus set (240 pairs) ingested by the real
ingest passes every check; copies broken one way each (an emptied mask, a mask of the wrong shape or with label 7
written over its .npy, a deleted mask, a structure missing from a split, a labelled share out of range) fail or
warn on the named expectation, naming the row (or the split)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datapaths import HIPPOCAMPUS
from medimg import preprocess
from medimg.config import ConfigError, load_params
from medimg.data import manifest
from medimg.data.deid import DEMO_SECRET
from medimg.data.ingest_pairs import ingest_pairs
from medimg.steps import validate
from medimg.validation.segmentation import labels_regex
from medimg.validation.suite import validate_manifest
from medimg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params" / "hippocampus.yaml"
GRID = "48x64x48"


@pytest.fixture(scope="module")
def hippocampus(tmp_path_factory):
    """All 240 MSD hippocampus pairs ingested by the real ingest into a workspace's dataset folder."""
    root = tmp_path_factory.mktemp("hippocampus")
    params = load_params(
        PARAMS, {"workspace": {"path": str(root / "ws")}, "data": {"root": str(HIPPOCAMPUS.parent), "workers": 1}}
    )
    ws = Workspace.at(root / "ws")
    ingest_pairs(params.data, params.task.class_names, params.preprocess, ws.data, DEMO_SECRET, HIPPOCAMPUS.parent)
    return params, ws, manifest.read(ws.data)


@pytest.fixture
def broken_copy(hippocampus, tmp_path):
    """A writable copy of the ingested dataset folder, to break."""
    params, ws, frame = hippocampus
    folder = tmp_path / "dataset"
    shutil.copytree(ws.data, folder)
    return params, folder, frame.copy()


def _found(outcome, column, expectation=None):
    return [
        f
        for f in outcome.failed_critical + outcome.warnings
        if (f["column"] == column or (f["column"] is None and column is None))
        and (expectation is None or f["expectation"] == expectation)
    ]


def _one(outcome, column, expectation=None):
    items = _found(outcome, column, expectation)
    assert len(items) == 1, (column, outcome.failed_critical, outcome.warnings)
    return items[0]


def _failures(outcome) -> set[tuple[str | None, str, str]]:
    return {(f["column"], f["expectation"], f["severity"]) for f in outcome.failed_critical + outcome.warnings}


def test_the_real_hippocampus_dataset_passes_every_segmentation_check(hippocampus):
    params, ws, frame = hippocampus
    assert manifest.is_segmentation_frame(frame) and len(frame) == 240
    outcome = validate.check(params, frame, ws.data)
    assert outcome.passed and not outcome.failed_critical and not outcome.warnings
    checked = {
        (r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column"))
        for r in outcome.results["nifti_pairs.manifest"]["results"]
    }
    for item in [
        ("expect_column_values_to_match_regex", "labels_present"),
        ("expect_column_values_to_match_regex", "stored_mask_labels"),
        ("expect_column_values_to_be_between", "label"),
        ("expect_column_values_to_be_between", "foreground_fraction"),
        ("expect_column_values_to_be_in_set", "stored_mask_shape"),
        ("expect_column_values_to_be_in_set", "stored_shape"),
        ("expect_column_values_to_be_in_set", "stored_mask_dtype"),
        ("expect_column_values_to_be_between", "pixel_mean"),
        ("expect_column_values_to_be_between", "stored_pixel_std"),
        ("expect_column_values_to_be_between", "depth"),
        ("expect_column_values_to_be_between", "offset_y"),
    ]:
        assert item in checked, item
    pairs = {
        (r["expectation_config"]["kwargs"]["column_A"], r["expectation_config"]["kwargs"]["column_B"])
        for r in outcome.results["nifti_pairs.manifest"]["results"]
        if r["expectation_config"]["type"] == "expect_column_pair_values_to_be_equal"
    }
    assert pairs == {
        ("stored_shape", "stored_mask_shape"),
        ("labels_present", "stored_mask_labels"),
        ("foreground_fraction", "stored_mask_foreground_fraction"),
    }
    summary_columns = {
        r["expectation_config"]["kwargs"].get("column") for r in outcome.results["nifti_pairs.split_summary"]["results"]
    }
    assert summary_columns == {"n_images", "n_with_anterior", "n_with_posterior"}  # no class balance
    seg = outcome.statistics["segmentation"]
    assert seg["structures"] == {"1": "anterior", "2": "posterior"} and seg["grid_shape"] == [48, 64, 48]
    assert seg["cases_with_structure"] == {
        "train": {"anterior": 168, "posterior": 168},
        "val": {"anterior": 24, "posterior": 24},
        "test": {"anterior": 48, "posterior": 48},
    }
    assert seg["empty_masks"] == 0 and seg["labels_present"] == {"1;2": 240}
    assert seg["stored_mask_shapes"] == {GRID: 240} and seg["stored_mask_dtypes"] == {"uint8": 240}
    lo, hi = seg["foreground_fraction_range"]
    assert params.validation.foreground_fraction_range[0] < lo < hi < params.validation.foreground_fraction_range[1]
    assert outcome.statistics["volumes"]["stored_shapes"] == {GRID: 240}


def test_an_emptied_mask_warns_or_fails_by_policy_naming_its_row(broken_copy):
    params, folder, frame = broken_copy
    victim = frame.index[5]
    victim_id = frame.loc[victim, "id"]
    np.save(folder / frame.loc[victim, "mask_path"], np.zeros((48, 64, 48), dtype=np.uint8), allow_pickle=False)
    frame.loc[victim, ["label", "label_name", "labels_present", "foreground_fraction"]] = [0, "background", "", 0.0]

    warned = validate.check(
        params.model_copy(update={"validation": params.validation.model_copy(update={"empty_masks": "warn"})}),
        frame,
        folder,
    )
    assert warned.passed and not warned.failed_critical
    empty = _one(warned, "label")
    assert empty["severity"] == "warning" and empty["unexpected"] == [victim_id]
    assert victim_id in validate._describe(empty) and "no empty mask" in validate._describe(empty)
    assert warned.statistics["segmentation"]["empty_masks"] == 1

    failed = validate.check(params, frame, folder)  # hippocampus.yaml: validation.empty_masks fail
    assert not failed.passed
    assert _failures(failed) == {("label", "expect_column_values_to_be_between", "critical")}
    assert _one(failed, "label")["unexpected"] == [victim_id]


def test_a_mask_emptied_behind_the_manifest_fails_as_not_the_one_ingested(broken_copy):
    params, folder, frame = broken_copy
    victim = frame.iloc[17]
    np.save(folder / victim["mask_path"], np.zeros((48, 64, 48), dtype=np.uint8), allow_pickle=False)
    outcome = validate.check(params, frame, folder)
    assert not outcome.passed
    assert {(f["column"], f.get("severity")) for f in outcome.failed_critical} == {
        (None, "critical")
    }  # the two column-pair checks: labels and labelled share
    assert len(outcome.failed_critical) == 2
    for item in outcome.failed_critical:
        assert item["expectation"] == "expect_column_pair_values_to_be_equal"
        assert item["unexpected"] == [victim["id"]] and victim["id"] in validate._describe(item)
        assert "the file is the one ingested" in item["description"]


def test_a_mask_of_the_wrong_shape_fails_the_geometry_checks_naming_its_row(broken_copy):
    params, folder, frame = broken_copy
    victim = frame.iloc[40]
    mask = np.load(folder / victim["mask_path"])
    np.save(folder / victim["mask_path"], mask[:, :48, :], allow_pickle=False)  # 48x48x48: not the image's shape
    outcome = validate.check(params, frame, folder)
    assert not outcome.passed
    shape = _one(outcome, "stored_mask_shape")
    assert shape["severity"] == "critical" and shape["unexpected"] == [victim["id"]]
    assert "48x64x48" in validate._describe(shape) and victim["id"] in validate._describe(shape)
    pair = [f for f in outcome.failed_critical if f["expectation"] == "expect_column_pair_values_to_be_equal"]
    assert {f["description"].split(" (")[0] for f in pair} >= {"stored image and mask of one shape"}
    assert all(f["unexpected"] == [victim["id"]] for f in pair)
    assert outcome.statistics["segmentation"]["stored_mask_shapes"] == {GRID: 239, "48x48x48": 1}


def test_a_label_out_of_range_fails_in_the_file_and_in_the_manifest_naming_the_row(broken_copy):
    params, folder, frame = broken_copy
    victim = frame.index[3]
    victim_id = frame.loc[victim, "id"]
    path = folder / frame.loc[victim, "mask_path"]
    mask = np.load(path)
    mask[mask == 2] = 7
    np.save(path, mask, allow_pickle=False)
    outcome = validate.check(params, frame, folder)
    assert not outcome.passed
    stored = _one(outcome, "stored_mask_labels", "expect_column_values_to_match_regex")
    assert stored["unexpected"] == [victim_id] and "1..2" in stored["description"]
    assert victim_id in validate._describe(stored)

    frame.loc[victim, "labels_present"] = "1;7"  # the manifest says so too: its own check fails
    outcome = validate.check(params, frame, folder)
    assert _one(outcome, "labels_present", "expect_column_values_to_match_regex")["unexpected"] == [victim_id]


def test_a_deleted_mask_or_uint16_mask_is_named(broken_copy):
    params, folder, frame = broken_copy
    gone, wide = frame.iloc[0], frame.iloc[1]
    (folder / gone["mask_path"]).unlink()
    np.save(folder / wide["mask_path"], np.load(folder / wide["mask_path"]).astype(np.uint16), allow_pickle=False)
    outcome = validate.check(params, frame, folder)
    assert not outcome.passed
    assert _one(outcome, "stored_mask_shape")["unexpected"] == [gone["id"]]
    assert _one(outcome, "stored_mask_dtype")["unexpected"] == [wide["id"]]  # a missing mask has no type: None
    assert outcome.statistics["segmentation"]["stored_mask_shapes"] == {GRID: 239, "missing": 1}


def test_a_structure_missing_from_a_split_fails_naming_the_split(hippocampus):
    params, _, frame = hippocampus
    broken = frame.copy()
    val = broken["split"] == "val"
    broken.loc[val, "labels_present"] = "1"  # no val case outlines the posterior hippocampus
    broken.loc[val, ["label", "label_name"]] = [1, "anterior"]
    outcome = validate_manifest(broken, params.validation, [0, 1, 2], class_names=params.task.class_names)
    assert not outcome.passed
    item = _one(outcome, "n_with_posterior")
    assert item["suite"] == "nifti_pairs.split_summary" and item["unexpected"] == ["val"]
    assert "every structure in every split" in validate._describe(item) and "[val]" in validate._describe(item)
    assert outcome.statistics["segmentation"]["cases_with_structure"]["val"] == {"anterior": 24, "posterior": 0}
    assert not outcome.statistics["segmentation"]["stored_checked"]


def test_a_labelled_share_out_of_range_and_a_cropped_case_fail_naming_their_rows(hippocampus):
    params, _, frame = hippocampus
    broken = frame.copy()
    broken.loc[7, "foreground_fraction"] = 0.4
    broken.loc[9, "offset_y"] = -2
    broken.loc[11, "height"] = 60
    outcome = validate_manifest(
        broken, params.validation, [0, 1, 2], grid_shape=(48, 64, 48), class_names=params.task.class_names
    )
    assert _one(outcome, "foreground_fraction")["unexpected"] == [broken.loc[7, "id"]]
    assert "0.005..0.1" in _one(outcome, "foreground_fraction")["description"]
    assert _one(outcome, "offset_y")["unexpected"] == [broken.loc[9, "id"]]
    assert _one(outcome, "height")["unexpected"] == [broken.loc[11, "id"]]
    assert {f["column"] for f in outcome.failed_critical} == {"foreground_fraction", "offset_y", "height"}


def test_the_step_writes_the_segmentation_checks_into_the_json_and_html_reports(hippocampus):
    params, ws, _ = hippocampus
    summary = validate.run(params, ws, "seg-test")
    assert summary.passed and summary.n_warnings == 0
    report = json.loads(summary.report.read_text())
    assert report["statistics"]["segmentation"]["stored_mask_shapes"] == {GRID: 240}
    assert report["contract_hash"] == preprocess.contract_hash(params.preprocess)
    html = summary.html_report.read_text()
    assert "<h2>Segmentation masks</h2>" in html and "cases with anterior" in html and "cases with posterior" in html
    assert "mask labels within the task&#39;s structures 1..2" in html
    assert "no empty mask" in html and "stored image and mask of one shape" in html
    assert "every structure in every split" in html and "48x64x48" in html
    assert "positive fraction" not in html  # the classification split table does not apply


def test_the_labels_regex_and_the_foreground_range_param():
    import re

    pattern = re.compile(labels_regex(3))
    assert all(pattern.match(t) for t in ("", "1", "2", "1;2"))
    assert not any(pattern.match(t) for t in ("0", "3", "1;7", "12", "1;", ";2"))
    with pytest.raises(ConfigError, match="foreground_fraction_range"):
        load_params(PARAMS, {"validation": {"foreground_fraction_range": [0.5, 0.1]}})
    with pytest.raises(ConfigError, match="empty_masks"):
        load_params(PARAMS, {"validation": {"empty_masks": "drop"}})
