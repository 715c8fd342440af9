"""Near-duplicates by perceptual hash: real copies that were resized, re-encoded or brightened are
found, different real pictures are not, and the fail | warn | drop policy and the reports work on a
real ingested folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from datapaths import DATA_DIR, copy_chest_subset
from medimg import preprocess
from medimg.config import PreprocessConfig, ValidationConfig, parse_params
from medimg.data import manifest
from medimg.steps import ingest, validate
from medimg.validation import near_duplicates as nd
from medimg.validation.suite import validate_manifest
from medimg.workspace import Workspace

BRAIN = DATA_DIR / "brain_tumor_mri"
LABELS = [0, 1]
THRESHOLD = ValidationConfig().near_duplicate_distance
CONTRACT_64 = PreprocessConfig(size=64)


def _stored_hash(path: Path) -> np.ndarray:
    """The pHash of a file as ingest would store it at 64 px."""
    return nd.phash_words(preprocess.prepare_file(path, CONTRACT_64))


def _distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits((a ^ b).view(np.uint8)).sum())


def _save_jpeg(image: Image.Image, path: Path, quality: int = 75) -> Path:
    image.save(path, "JPEG", quality=quality)
    return path


def test_resized_reencoded_and_brightened_copies_of_a_real_mri_are_near_duplicates(tmp_path):
    source = BRAIN / "meningioma" / "Te-me_0010.jpg"
    picture = Image.open(source).convert("L")
    half = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.BICUBIC)
    copies = {
        "half size, JPEG q75": _save_jpeg(half, tmp_path / "half.jpg"),
        "10% brighter, JPEG q75": _save_jpeg(ImageEnhance.Brightness(picture).enhance(1.1), tmp_path / "bright.jpg"),
        "re-encoded as PNG": tmp_path / "copy.png",
        "3/4 size, 1% cropped, 10% brighter, JPEG q75": _save_jpeg(
            ImageEnhance.Brightness(
                picture.resize((picture.width * 3 // 4, picture.height * 3 // 4), Image.Resampling.BICUBIC).crop(
                    (4, 4, picture.width * 3 // 4 - 4, picture.height * 3 // 4 - 4)
                )
            ).enhance(1.1),
            tmp_path / "all.jpg",
        ),
    }
    picture.save(copies["re-encoded as PNG"])
    original = _stored_hash(source)
    distances = {name: _distance(original, _stored_hash(path)) for name, path in copies.items()}
    assert all(d <= THRESHOLD for d in distances.values()), distances
    assert distances["re-encoded as PNG"] == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("glioma/Te-gl_0212.jpg", "glioma/Te-gl_0213.jpg"),  # neighbouring sagittal slices: distance 40
        ("glioma/Te-gl_0055.jpg", "glioma/Te-gl_0296.jpg"),  # two dark axial slices 64-bit pHash puts at 6
    ],
)
def test_two_different_real_images_of_one_class_are_not_near_duplicates(first, second):
    assert _distance(_stored_hash(BRAIN / first), _stored_hash(BRAIN / second)) > THRESHOLD


def test_close_pairs_match_every_pair_computed_one_by_one():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**63, size=(40, nd.HASH_WORDS), dtype=np.uint64)
    hashes = np.concatenate([base, base[:10] ^ np.uint64(0b1011)])  # 10 rows at distance 3 per word: 12
    expected = [
        (i, j, _distance(hashes[i], hashes[j]))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if _distance(hashes[i], hashes[j]) <= 12
    ]
    i, j, d = nd.close_pairs(hashes, 12, block=7)  # blocks that do not divide the rows
    assert list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == expected
    assert len(expected) == 10


@pytest.fixture(scope="module")
def leaky_folder(tmp_path_factory):
    """Real chest X-rays ingested at 64 px, with a test image that is a resized, brightened, re-encoded copy of a
    train image under a new patient's name, and a byte-identical copy of the same train image in test."""
    tmp = tmp_path_factory.mktemp("near")
    root = tmp / "cx"
    copy_chest_subset(root, per_class=12)
    source = sorted((root / "train" / "NORMAL").iterdir())[0]
    picture = Image.open(source).convert("L")
    smaller = picture.resize((picture.width * 4 // 5, picture.height * 4 // 5), Image.Resampling.BILINEAR)
    _save_jpeg(ImageEnhance.Brightness(smaller).enhance(1.08), root / "test" / "NORMAL" / "IM-9999-0001.jpeg", 85)
    shutil.copy(source, root / "test" / "NORMAL" / "IM-9998-0001.jpeg")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDIMG_DEID_SECRET", "near-duplicate-test-secret-0123456789")
    params = {
        "workspace": {"path": str(tmp / "ws")},
        "preprocess": {"size": 64},
        "data": {"source": "image_folder", "root": str(root)},
        "validation": {"expected_split_sizes": None},
    }
    ws = Workspace.at(tmp / "ws")
    ingested = ingest.run(parse_params(params), ws)
    frame = manifest.read(ws.data)
    ids = dict(zip(frame["source_file"], frame["id"], strict=True))
    names = {
        "train": ids[f"train/NORMAL/{source.name}"],
        "near": ids["test/NORMAL/IM-9999-0001.jpeg"],
        "byte": ids["test/NORMAL/IM-9998-0001.jpeg"],
    }
    assert frame.set_index("id").loc[names["train"], "split"] in ("train", "val")
    yield params, ws, ingested, frame, names
    mp.undo()


def _near_failures(outcome):
    return [f for f in outcome.failed_critical + outcome.warnings if f["column"] == "near_duplicates_in_other_splits"]


def test_the_copy_is_found_across_splits_and_the_byte_identical_copy_is_not_reported_twice(leaky_folder):
    _, ws, _, frame, names = leaky_folder
    found = nd.find_near_duplicates(frame, ws.data, THRESHOLD)
    pairs = {frozenset((p.id_a, p.id_b)): p for p in found.pairs}
    leak = pairs[frozenset((names["train"], names["near"]))]
    assert leak.across_splits and leak.id_b == names["near"] and leak.split_b == "test"
    assert frozenset((names["train"], names["byte"])) not in pairs  # byte-identical: a duplicate already
    within = pairs[frozenset((names["near"], names["byte"]))]  # the two copies, both in test
    assert not within.across_splits and within.split_a == "test"
    assert found.summary()["near_duplicate_pairs_across_splits"] == len(found.across_splits) >= 1


def test_warn_policy_reports_the_pair_in_json_and_html_and_runs_on(leaky_folder):
    params, ws, ingested, _, names = leaky_folder
    summary = validate.run(parse_params(params), ws, ingested.data_version)
    assert summary.passed
    assert summary.warts["near_duplicates_checked"] and summary.warts["near_duplicate_distance"] == THRESHOLD
    assert summary.warts["near_duplicate_pairs_across_splits"] >= 1
    assert summary.warts["near_duplicate_pairs_within_split"]["test"] >= 1
    report = json.loads(summary.report.read_text())
    across = report["wart_details"]["near_duplicates_across_splits"]
    pair = next(p for p in across if p["id_b"] == names["near"])
    assert pair["id_a"] == names["train"] and pair["split_b"] == "test" and 0 <= pair["distance"] <= THRESHOLD
    within = report["wart_details"]["near_duplicates_within_split"]
    assert any({p["id_a"], p["id_b"]} == {names["near"], names["byte"]} for p in within)
    leak = next(w for w in report["warnings"] if w["column"] == "near_duplicates_in_other_splits")
    assert leak["severity"] == "warning" and {names["train"], names["near"]} <= set(leak["unexpected"])
    assert not report["dropped_ids"]
    html = summary.html_report.read_text()
    assert "Near-duplicates across splits" in html and names["near"] in html and names["train"] in html


def test_fail_policy_stops_the_run_naming_both_images(leaky_folder):
    _, ws, _, frame, names = leaky_folder
    config = ValidationConfig(near_duplicates_across_splits="fail", expected_split_sizes=None)
    outcome = validate_manifest(frame, config, LABELS, data_dir=ws.data)
    assert not outcome.passed
    failed = _near_failures(outcome)
    assert failed and failed[0]["severity"] == "critical"
    assert {names["train"], names["near"]} <= set(failed[0]["unexpected"])


def test_drop_policy_removes_the_test_side_and_lists_it(leaky_folder):
    params, ws, ingested, frame, names = leaky_folder
    found = nd.find_near_duplicates(frame, ws.data, THRESHOLD)
    config = ValidationConfig(near_duplicates_across_splits="drop", expected_split_sizes=None)
    outcome = validate_manifest(frame, config, LABELS, data_dir=ws.data)
    assert outcome.passed and not _near_failures(outcome)
    assert names["near"] in outcome.dropped_ids and names["train"] not in outcome.dropped_ids
    assert outcome.dropped_ids == outcome.warts["near_duplicates_dropped"] == nd.rows_to_drop(found)
    held_out = frame.set_index("id").loc[outcome.dropped_ids, "split"]
    assert set(held_out) <= {"val", "test"}
    dropping = parse_params({**params, "validation": {**params["validation"], "near_duplicates_across_splits": "drop"}})
    summary = validate.run(dropping, ws, ingested.data_version)
    report = json.loads(summary.report.read_text())
    assert report["wart_details"]["near_duplicates_dropped"] == outcome.dropped_ids == list(summary.dropped_ids)
    assert "held-out image(s) dropped by policy" in summary.html_report.read_text()


def test_a_manifest_without_its_images_says_near_duplicates_were_not_checked(leaky_folder):
    _, _, _, frame, _ = leaky_folder
    outcome = validate_manifest(frame, ValidationConfig(expected_split_sizes=None), LABELS)
    assert outcome.warts["near_duplicates_checked"] is False and outcome.warts["near_duplicate_pairs"] == []


def test_a_missing_stored_image_is_a_clear_error(leaky_folder, tmp_path):
    _, ws, _, frame, _ = leaky_folder
    copy = tmp_path / "dataset"
    shutil.copytree(ws.data, copy)
    (copy / frame["path"].iloc[0]).unlink()
    with pytest.raises(FileNotFoundError, match="re-ingest"):
        nd.find_near_duplicates(frame, copy, THRESHOLD)
