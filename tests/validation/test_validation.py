"""The Great Expectations suites on the real PneumoniaMNIST manifest and on broken copies of it."""

from __future__ import annotations

import pytest

from medimg.config import DataConfig, ValidationConfig
from medimg.data import manifest
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.validation.suite import validate_manifest
from medimg.validation.warts import find_warts, rows_to_drop

LABELS = [0, 1]
OFFICIAL = {"train": 4708, "val": 524, "test": 624}


@pytest.fixture(scope="module")
def real_manifest(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset")
    archive = locate("pneumoniamnist", data_dir, folder / "dl", download=False)
    ingest_medmnist(archive, DataConfig(), ("normal", "pneumonia"), folder)
    return manifest.read(folder)


def _failed(outcome, column):
    return [f for f in outcome.failed_critical + outcome.warnings if f["column"] == column]


def test_finds_every_known_wart_in_the_official_archive(real_manifest):
    summary = find_warts(real_manifest).summary()
    assert summary["extra_copies_within_split"] == {"train": 18, "val": 0, "test": 3}
    assert summary["duplicate_groups_within_split"] == {"train": 18, "val": 0, "test": 3}
    assert summary["hashes_across_splits"] == 8
    groups = find_warts(real_manifest).across_splits
    assert all(g["splits"] == ["train", "val"] for g in groups)


def test_default_policy_warns_and_lets_the_run_go_on(real_manifest):
    outcome = validate_manifest(real_manifest, ValidationConfig(expected_split_sizes=OFFICIAL), LABELS)
    assert outcome.passed
    copies = _failed(outcome, "copies_in_split")[0]
    assert copies["severity"] == "warning" and copies["unexpected_count"] == 36 + 6
    leaked = _failed(outcome, "splits_with_hash")[0]
    assert leaked["unexpected_count"] == 18
    assert all(i.startswith(("train-", "val-")) for i in leaked["unexpected"])


def test_fail_policy_stops_and_names_the_images(real_manifest):
    config = ValidationConfig(duplicates_across_splits="fail")
    outcome = validate_manifest(real_manifest, config, LABELS)
    assert not outcome.passed
    failed = outcome.failed_critical[0]
    assert failed["column"] == "splits_with_hash" and len(failed["unexpected"]) == 18


def test_drop_policy_removes_train_copies_and_keeps_the_test_split_whole(real_manifest):
    dropped = rows_to_drop(real_manifest, within=False, across=True)
    assert dropped and all(i.startswith("train-") for i in dropped)
    outcome = validate_manifest(real_manifest, ValidationConfig(duplicates_across_splits="drop"), LABELS)
    assert outcome.passed and not _failed(outcome, "splits_with_hash")
    assert outcome.dropped_ids == dropped


def test_blank_image_wrong_label_and_split_size_fail(real_manifest):
    broken = real_manifest.copy()
    broken.loc[0, "pixel_std"] = 0.0
    broken.loc[1, "label"] = 7
    outcome = validate_manifest(broken, ValidationConfig(expected_split_sizes={**OFFICIAL, "test": 600}), LABELS)
    assert not outcome.passed
    failed = {(f["expectation"], f["column"]) for f in outcome.failed_critical}
    assert ("expect_column_values_to_be_between", "pixel_std") in failed
    assert ("expect_column_values_to_be_in_set", "label") in failed
    assert any(f["expectation"] == "expect_column_pair_values_to_be_equal" for f in outcome.failed_critical)
    blank = next(f for f in outcome.failed_critical if f["column"] == "pixel_std")
    assert blank["unexpected"] == [broken.loc[0, "id"]]


def test_missing_column_fails_the_schema(real_manifest):
    outcome = validate_manifest(real_manifest.drop(columns=["source"]), ValidationConfig(), LABELS)
    assert not outcome.passed
    assert any(f["expectation"] == "expect_table_columns_to_match_set" for f in outcome.failed_critical)
