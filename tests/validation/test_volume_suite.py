"""The validation step on a volume dataset: the real VesselMNIST3D archive ingested by the real ingest passes,
and copies broken one way each (a blank volume, a volume of the wrong shape or type written over its .npy, a
manifest row with a spacing out of range, a mixed or invalid orientation, an unknown correction) fail the named
expectation, naming the row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datapaths import DATA_DIR
from medimg import preprocess, volume_contract
from medimg.config import ConfigError, load_params
from medimg.data import manifest
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.steps import validate
from medimg.validation import near_duplicates as nd
from medimg.validation.suite import validate_manifest
from medimg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
VESSEL_PARAMS = ROOT / "params" / "vessel3d.yaml"
CUBE = "28x28x28"
#: The cross-split pairs the default volume rule flags in VesselMNIST3D (28^3), checked by eye: one vessel
#: segment stored twice (voxel IoU 0.78 to 0.87), see params.yaml.
VESSEL_PAIRS_ACROSS = {
    ("train-00083", "val-00177"),
    ("train-00083", "test-00012"),
    ("train-00502", "test-00184"),
    ("val-00177", "test-00012"),
}


@pytest.fixture(scope="module")
def vessel(tmp_path_factory):
    """VesselMNIST3D (28^3, the official archive) ingested by the real ingest into a workspace's dataset folder."""
    root = tmp_path_factory.mktemp("vessel3d")
    params = load_params(VESSEL_PARAMS, {"workspace": {"path": str(root / "ws")}})
    ws = Workspace.at(root / "ws")
    archive = locate(params.data.medmnist_flag, DATA_DIR, root / "dl", download=False, size=params.data.medmnist_size)
    ingest_medmnist(archive, params.data, params.task.class_names, ws.data, params.preprocess)
    return params, ws, manifest.read(ws.data)


@pytest.fixture
def broken_copy(vessel, tmp_path):
    """A writable copy of the ingested dataset folder, to break."""
    params, ws, frame = vessel
    folder = tmp_path / "dataset"
    shutil.copytree(ws.data, folder)
    return params, folder, frame


def _found(outcome, column, expectation=None):
    return [
        f
        for f in outcome.failed_critical + outcome.warnings
        if f["column"] == column and (expectation is None or f["expectation"] == expectation)
    ]


def _one(outcome, column, expectation=None):
    items = _found(outcome, column, expectation)
    assert len(items) == 1, (column, outcome.failed_critical, outcome.warnings)
    return items[0]


def test_the_real_vessel_dataset_passes_with_every_volume_check(vessel):
    params, ws, frame = vessel
    assert manifest.is_volume_frame(frame) and len(frame) == 1335 + 191 + 382
    outcome = validate.check(params, frame, ws.data)
    assert outcome.passed and not outcome.failed_critical
    # the only findings: the segments stored twice across splits, a warning by the default policy
    assert {(f["column"], f["severity"]) for f in outcome.warnings} == {("near_duplicates_in_other_splits", "warning")}
    checked = {
        (r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column"))
        for r in outcome.results["medmnist.manifest"]["results"]
    }
    for column in ("depth", "stored_shape", "stored_dtype", "stored_pixel_std", "stored_pixel_mean", "pixel_mean"):
        assert ("expect_column_values_to_be_between", column) in checked or (
            "expect_column_values_to_be_in_set",
            column,
        ) in checked, column
    for column in ("spacing_z", "spacing_y", "spacing_x"):  # NaN for MedMNIST 3D: checked where known, here nowhere
        assert ("expect_column_values_to_be_between", column) in checked
    assert ("expect_column_values_to_match_regex", "axcodes") in checked
    volumes = outcome.statistics["volumes"]
    assert volumes["stored_shapes"] == {CUBE: 1908} and volumes["stored_dtypes"] == {"uint8": 1908}
    assert volumes["volumes_with_spacing"] == 0 and volumes["spacing_mm_range"] is None
    assert volumes["expected_axcodes"] is None  # no orientation known: the one-orientation check is not added
    assert outcome.warts["near_duplicate_hash"] == nd.VOLUME_HASH_NAME
    assert outcome.warts["near_duplicate_distance"] == params.validation.volume_near_duplicate_distance == 120
    across = {(p["id_a"], p["id_b"]) for p in outcome.warts["near_duplicate_pairs"] if p["split_a"] != p["split_b"]}
    assert across == VESSEL_PAIRS_ACROSS


def test_a_volume_and_its_64_cube_copy_are_near_duplicates_and_two_different_vessels_are_not(vessel):
    params, ws, frame = vessel
    limit = params.validation.volume_near_duplicate_distance
    big = np.load(DATA_DIR / "vesselmnist3d" / "vesselmnist3d_64.npz")["train_images"]
    stored = {i: np.load(ws.data / p) for i, p in zip(frame["id"], frame["path"], strict=True)}

    def distance(a: np.ndarray, b: np.ndarray) -> int:
        return int(np.unpackbits((nd.phash_volume_words(a) ^ nd.phash_volume_words(b)).view(np.uint8)).sum())

    for index in (0, 1, 2, 3):  # the 64^3 archive holds the same volumes in the same order
        copy = volume_contract.resample(big[index].astype(np.float32) / 255, (28, 28, 28), "trilinear")
        copy = np.round(np.clip(copy, 0, 1) * 255).astype(np.uint8)
        assert distance(stored[f"train-{index:05d}"], copy) <= limit
    assert distance(stored["train-00000"], stored["train-00001"]) > limit
    assert distance(stored["train-00502"], stored["test-00184"]) <= limit  # one segment stored twice


def test_a_blank_volume_written_over_its_file_fails_naming_it(broken_copy):
    params, folder, frame = broken_copy
    victim = frame.iloc[7]
    np.save(folder / victim["path"], np.zeros((28, 28, 28), dtype=np.uint8), allow_pickle=False)
    outcome = validate.check(params, frame, folder)
    assert not outcome.passed
    blank = _one(outcome, "stored_pixel_std")
    assert blank["severity"] == "critical" and blank["unexpected"] == [victim["id"]]
    message = validate._describe(blank)
    assert victim["id"] in message and "stored_pixel_std" in message and "blank" in message
    assert {f["column"] for f in outcome.failed_critical} == {"stored_pixel_std"}


def test_a_blank_volume_in_the_manifest_fails_the_empty_volume_check(vessel):
    params, ws, frame = vessel
    broken = frame.copy()
    broken.loc[3, "pixel_std"] = 0.0
    outcome = validate.check(params, broken, ws.data)
    blank = _one(outcome, "pixel_std")
    assert not outcome.passed and blank["unexpected"] == [broken.loc[3, "id"]]
    assert "empty volume" in blank["description"]


def test_volumes_of_the_wrong_shape_or_type_fail_naming_their_rows(broken_copy):
    params, folder, frame = broken_copy
    rng = np.random.default_rng(0)
    short, flat, floating = frame.iloc[10], frame.iloc[1400], frame.iloc[1700]
    np.save(folder / short["path"], rng.integers(0, 256, (28, 28, 20), dtype=np.uint8), allow_pickle=False)
    np.save(folder / flat["path"], rng.integers(0, 256, (28, 28), dtype=np.uint8), allow_pickle=False)
    np.save(folder / floating["path"], rng.random((28, 28, 28), dtype=np.float32) * 255, allow_pickle=False)
    outcome = validate.check(params, frame, folder)
    assert not outcome.passed
    shape = _one(outcome, "stored_shape")
    assert shape["unexpected"] == sorted([short["id"], flat["id"]]) and shape["severity"] == "critical"
    assert CUBE in shape["description"] and short["id"] in validate._describe(shape)
    assert _one(outcome, "stored_dtype")["unexpected"] == [floating["id"]]
    assert outcome.statistics["volumes"]["stored_shapes"] == {CUBE: 1906, "28x28": 1, "28x28x20": 1}
    # the 2D array has no volume hash: it is in no near-duplicate pair
    assert all(flat["id"] not in (p["id_a"], p["id_b"]) for p in outcome.warts["near_duplicate_pairs"])


def test_a_file_that_is_not_a_npy_array_is_a_clear_error(broken_copy):
    params, folder, frame = broken_copy
    victim = frame.iloc[0]
    (folder / victim["path"]).write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match=rf"{victim['id']}\.npy: stored volume unreadable"):
        validate.check(params, frame, folder)
    (folder / victim["path"]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{victim['id']}\.npy: stored volume of the manifest missing"):
        validate.check(params, frame, folder)


def test_a_contract_cube_of_another_size_fails_on_depth_height_and_width(vessel):
    params, ws, frame = vessel
    outcome = validate_manifest(frame, params.validation, [0, 1], contract_size=64, data_dir=ws.data)
    assert {f["column"] for f in outcome.failed_critical} == {"depth", "height", "width", "stored_shape"}
    assert all(f["unexpected_count"] == len(frame) for f in outcome.failed_critical)


def test_a_spacing_out_of_range_fails_naming_the_row_and_axis(vessel):
    params, ws, frame = vessel
    broken = frame.copy()
    broken[["spacing_z", "spacing_y", "spacing_x"]] = [2.0, 0.5, 0.5]  # known, in range ...
    broken.loc[5, "spacing_z"] = 25.0  # ... but one volume 25 mm between slices
    broken.loc[6, "spacing_x"] = 0.0
    outcome = validate.check(params, broken, ws.data)
    assert not outcome.passed
    assert _one(outcome, "spacing_z")["unexpected"] == [broken.loc[5, "id"]]
    assert _one(outcome, "spacing_x")["unexpected"] == [broken.loc[6, "id"]]
    assert not _found(outcome, "spacing_y")
    message = validate._describe(_one(outcome, "spacing_z"))
    assert broken.loc[5, "id"] in message and "spacing_z" in message and "0.1..10 mm" in message
    assert outcome.statistics["volumes"]["spacing_mm_range"]["z"] == [2.0, 25.0]


def test_a_mixed_orientation_warns_when_the_contract_reorients_and_fails_when_it_keeps_the_source(vessel):
    params, ws, frame = vessel
    broken = frame.copy()
    broken["axcodes"] = "SPL"
    broken.loc[9, "axcodes"] = "SAR"
    assert params.preprocess.volume.orientation == "RAS"
    reoriented = validate.check(params, broken, ws.data)
    mixed = _one(reoriented, "axcodes")
    assert reoriented.passed and mixed["severity"] == "warning" and mixed["unexpected"] == [broken.loc[9, "id"]]
    assert "SPL" in mixed["description"] and broken.loc[9, "id"] in validate._describe(mixed)
    assert reoriented.statistics["volumes"]["axcodes"] == {"SAR": 1, "SPL": 1907}
    kept = validate_manifest(
        broken, params.validation, [0, 1], contract_size=28, data_dir=ws.data, contract_orientation="source"
    )
    assert not kept.passed
    assert _one(kept, "axcodes")["severity"] == "critical"


def test_invalid_orientation_codes_and_unknown_corrections_fail(vessel):
    params, _, frame = vessel
    broken = frame.copy()
    broken.loc[11, "axcodes"] = "SSR"  # two axes towards superior
    broken.loc[12, "corrections"] = "gantry_tilt;irregular_spacing"  # known: passes
    broken.loc[13, "corrections"] = "warped"
    outcome = validate_manifest(broken, params.validation, [0, 1], contract_size=28)
    regex = _one(outcome, "axcodes", "expect_column_values_to_match_regex")
    assert regex["unexpected"] == [broken.loc[11, "id"]]
    assert _one(outcome, "corrections")["unexpected"] == [broken.loc[13, "id"]]
    assert outcome.statistics["volumes"]["corrections"] == {"gantry_tilt": 1, "irregular_spacing": 1, "warped": 1}
    assert not outcome.statistics["volumes"]["stored_checked"]  # no dataset folder: the manifest alone


def test_the_step_writes_the_volume_checks_into_the_json_and_html_reports(vessel):
    params, ws, _ = vessel
    summary = validate.run(params, ws, "v3d-test")
    assert summary.passed
    report = json.loads(summary.report.read_text())
    assert report["statistics"]["volumes"]["stored_shapes"] == {CUBE: 1908}
    assert report["contract_hash"] == preprocess.contract_hash(params.preprocess)
    assert len(report["wart_details"]["near_duplicates_across_splits"]) == len(VESSEL_PAIRS_ACROSS)
    html = summary.html_report.read_text()
    assert "<h2>Volumes</h2>" in html and "28x28x28" in html
    assert "stored .npy volume is the contract cube 28x28x28" in html
    assert "source voxel spacing within 0.1..10 mm" in html and "no blank or near-constant stored volume" in html
    assert "val-00177" in html and "768-bit" in html


def test_the_spacing_range_must_be_ordered():
    with pytest.raises(ConfigError, match="volume_spacing_range_mm"):
        load_params(VESSEL_PARAMS, {"validation": {"volume_spacing_range_mm": [5.0, 1.0]}})
