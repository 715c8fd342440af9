"""scan_image_folder on the real Kermany folders: counts, byte-identical groups, cross-split patients."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pytest

from datapaths import DATA_DIR
from medimg.data.image_folder import scan_image_folder
from medimg.data.sources import kermany_patient_key

CHEST = DATA_DIR / "chest_xray"
FULLRES = DATA_DIR / "chest_xray_fullres"


@pytest.fixture(scope="module")
def chest_records() -> list[dict]:
    return scan_image_folder(CHEST)


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("person100_bacteria_475.jpeg", "person100"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1491_virus_2602_1.jpeg", "person1491"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0608-0001-0001.jpeg", "IM-0608"),
        ("NORMAL2-IM-0383-0001.jpeg", "NORMAL2-IM-0383"),
        ("NORMAL2-IM-1116-0001-0002.jpeg", "NORMAL2-IM-1116"),
        ("scan_2024_07.png", "scan_2024_07"),  # no rule fits: the stem
        ("IM-0115.jpeg", "IM-0115"),  # no image number: the stem, which here is the same
        ("personX_bacteria_1.jpeg", "personX_bacteria_1"),
    ],
)
def test_kermany_patient_key(filename, patient):
    assert kermany_patient_key(filename) == patient


def test_counts_per_split_and_class(chest_records):
    counts: dict[tuple, int] = defaultdict(int)
    for record in chest_records:
        counts[(record["split"], record["class_name"])] += 1
    assert dict(counts) == {
        ("train", "NORMAL"): 1341,
        ("train", "PNEUMONIA"): 3875,
        ("test", "NORMAL"): 234,
        ("test", "PNEUMONIA"): 390,
    }
    assert sum(r["split"] == "train" for r in chest_records) == 5216
    assert sum(r["split"] == "test" for r in chest_records) == 624
    assert set(chest_records[0]) == {"path", "class_name", "split", "patient_key", "sha256"}


def test_sha256_is_of_the_file_bytes(chest_records):
    for record in chest_records[:: len(chest_records) // 5]:
        assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()


def test_byte_identical_groups(chest_records):
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for record in chest_records:
        by_hash[record["sha256"]].append(record)
    groups = [g for g in by_hash.values() if len(g) > 1]
    # measured on the shared copy: 30 groups (28 pairs, 2 triples) holding 62 files
    assert len(groups) == 30
    assert sorted(len(g) for g in groups) == [2] * 28 + [3] * 2
    # none crosses a split or a class; one spans two patient ids (NORMAL2-IM-0095 and -0096)
    assert all(len({r["split"] for r in g}) == 1 for g in groups)
    assert all(len({r["class_name"] for r in g}) == 1 for g in groups)
    multi_patient = [sorted({r["patient_key"] for r in g}) for g in groups if len({r["patient_key"] for r in g}) > 1]
    assert multi_patient == [["NORMAL2-IM-0095", "NORMAL2-IM-0096"]]


def test_patients_in_both_train_and_test(chest_records):
    train = {r["patient_key"] for r in chest_records if r["split"] == "train"}
    test = {r["patient_key"] for r in chest_records if r["split"] == "test"}
    both = train & test
    assert (len(train), len(test)) == (2846, 427)
    assert len(both) == 170  # the figure the issue quotes, verified
    # all of them are pneumonia "personN" ids
    assert all(key.startswith("person") for key in both)
    normal_test = {r["patient_key"] for r in chest_records if r["split"] == "test" and r["class_name"] == "NORMAL"}
    assert not normal_test & train


def test_scan_is_deterministic_and_sorted(chest_records):
    again = scan_image_folder(CHEST)
    assert again == chest_records
    keys = [(r["split"], r["class_name"], Path(r["path"]).name) for r in chest_records]
    assert keys == sorted(keys, key=lambda k: ({"train": 0, "val": 1, "test": 2}[k[0]], k[1], k[2]))


def test_folder_without_split():
    records = scan_image_folder(FULLRES)
    assert len(records) == 30
    assert {r["split"] for r in records} == {None}
    assert sum(r["class_name"] == "NORMAL" for r in records) == 15
    assert {r["patient_key"] for r in records if r["class_name"] == "NORMAL"} >= {"IM-0608", "NORMAL2-IM-1116"}


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_layout_rules(tmp_path):
    root = tmp_path / "split_layout"
    _touch(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", b"a")
    _touch(root / "train" / "NORMAL" / "IM-0001-0002.JPG", b"b")
    _touch(root / "val" / "PNEUMONIA" / "person3_virus_1.png", b"c")
    _touch(root / "train" / "NORMAL" / ".DS_Store")
    _touch(root / "train" / "NORMAL" / "notes.txt")
    _touch(root / "train" / "NORMAL" / "nested" / "IM-0009-0001.jpeg")
    _touch(root / "__MACOSX" / "train" / "NORMAL" / "._IM-0001-0001.jpeg")
    records = scan_image_folder(root)
    assert [(r["split"], r["class_name"], r["patient_key"]) for r in records] == [
        ("train", "NORMAL", "IM-0001"),
        ("train", "NORMAL", "IM-0001"),
        ("val", "PNEUMONIA", "person3"),
    ]
    assert records[2]["sha256"] == hashlib.sha256(b"c").hexdigest()

    mixed = tmp_path / "mixed"
    _touch(mixed / "train" / "NORMAL" / "a.png")
    _touch(mixed / "PNEUMONIA" / "b.png")
    with pytest.raises(ValueError, match="mixes split folders"):
        scan_image_folder(mixed)
    with pytest.raises(FileNotFoundError):
        scan_image_folder(tmp_path / "absent")
    empty = tmp_path / "empty"
    (empty / "NORMAL").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no .jpeg"):
        scan_image_folder(empty)
