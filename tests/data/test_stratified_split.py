"""stratified_split (data.split.stratify) on the real brain tumour MRI folder: the exact scikit-learn
rule, counts per class, determinism, and the ingest of a folder without patient ids using it."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest
from sklearn.model_selection import train_test_split

from datapaths import DATA_DIR
from medimg.config import parse_params
from medimg.data import manifest
from medimg.data.splitting import stratified_split
from medimg.steps import ingest
from medimg.workspace import Workspace

BRAIN = DATA_DIR / "brain_tumor_mri"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@pytest.fixture(scope="module")
def brain() -> tuple[list[str], list[int]]:
    """(file path relative to the root, class index) of all 1181 images, in folder-listing order."""
    files = [p for cls in CLASSES for p in (BRAIN / cls).iterdir()]
    assert len(files) == 1181
    return [p.relative_to(BRAIN).as_posix() for p in files], [CLASSES.index(p.parent.name) for p in files]


def _counts(split: dict[str, str], keys: list[str], labels: list[int]) -> dict[str, dict[str, int]]:
    c = Counter((split[k], CLASSES[y]) for k, y in zip(keys, labels, strict=True))
    return {s: {cls: c[(s, cls)] for cls in CLASSES} for s in ("train", "val", "test")}


def test_the_split_is_exactly_the_documented_scikit_learn_rule(brain):
    keys, labels = brain
    split = stratified_split(keys, labels, FRACTIONS, seed=42)
    # the rule as a plain script writes it (the floor benchmark imports the function instead)
    ordered = sorted(zip(keys, labels, strict=True))
    k, y = [a for a, _ in ordered], [b for _, b in ordered]
    rest, test, rest_y, _ = train_test_split(k, y, stratify=y, test_size=0.15, random_state=42)
    train, val = train_test_split(rest, stratify=rest_y, test_size=0.15 / 0.85, random_state=42)
    assert split == {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}


def test_counts_per_class_on_the_real_folder(brain):
    keys, labels = brain
    counts = _counts(stratified_split(keys, labels, FRACTIONS, seed=42), keys, labels)
    assert counts == {
        "train": {"glioma": 189, "meningioma": 193, "notumor": 255, "pituitary": 189},
        "val": {"glioma": 40, "meningioma": 42, "notumor": 55, "pituitary": 40},
        "test": {"glioma": 41, "meningioma": 41, "notumor": 55, "pituitary": 41},
    }
    assert sum(sum(c.values()) for c in counts.values()) == 1181


def test_input_order_does_not_matter_and_the_seed_does(brain):
    keys, labels = brain
    first = stratified_split(keys, labels, FRACTIONS, seed=42)
    pairs = list(zip(keys, labels, strict=True))
    random.Random(0).shuffle(pairs)
    assert stratified_split([k for k, _ in pairs], [y for _, y in pairs], FRACTIONS, seed=42) == first
    other = stratified_split(keys, labels, FRACTIONS, seed=7)
    assert other != first and Counter(other.values()) == Counter(first.values())


def test_a_zero_fraction_and_bad_input(brain):
    keys, labels = brain
    two_way = stratified_split(keys, labels, {"train": 0.8, "val": 0.0, "test": 0.2}, seed=1)
    assert set(two_way.values()) == {"train", "test"}
    assert sum(v == "test" for v in two_way.values()) == 237  # ceil(0.2 * 1181), sklearn's rounding
    with pytest.raises(ValueError, match="2 keys but 1 labels"):
        stratified_split(["a", "b"], [0], FRACTIONS, seed=0)
    with pytest.raises(ValueError, match="distinct"):
        stratified_split(["a", "a"], [0, 1], FRACTIONS, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(keys, labels, {"train": 0.7, "test": 0.2}, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        stratified_split(keys, labels, {"train": 0.7, "holdout": 0.3}, seed=0)
    with pytest.raises(ValueError):  # scikit-learn: a class with one member cannot be stratified
        stratified_split([f"k{i}" for i in range(10)], [0] * 9 + [1], FRACTIONS, seed=0)


def test_the_ingest_of_a_folder_without_patient_ids_uses_it(tmp_path, monkeypatch):
    """A copied part of the real folder (class folders, no split folders), ingested with stratify: each
    image's split is stratified_split's for its path relative to the root; nothing is lost."""
    monkeypatch.setenv("MEDIMG_DEID_SECRET", "test-secret-for-medimg-stratify-0123456789")
    root = tmp_path / "mri"
    keys, labels = [], []
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for src in sorted((BRAIN / cls).iterdir())[:25]:
            shutil.copy(src, root / cls / src.name)
            keys.append(f"{cls}/{src.name}")
            labels.append(CLASSES.index(cls))
    params = parse_params(
        {
            "workspace": {"path": str(tmp_path / "ws")},
            "task": {
                "kind": "multiclass",
                "class_names": list(CLASSES),
                "abnormal": ["glioma", "meningioma", "pituitary"],
                "modalities": ["MR"],
            },
            "preprocess": {"size": 32, "jpeg_dct_scaling": True},
            "data": {
                "source": "image_folder",
                "root": str(root),
                "modality": "MR",
                "workers": 2,
                "image_folder": {"patient_id": "file"},
                "split": {"stratify": True, "fractions": FRACTIONS, "seed": 42},
            },
            "validation": {"expected_split_sizes": None},
        }
    )
    ws = Workspace.at(tmp_path / "ws")
    summary = ingest.run(params, ws)
    frame = manifest.read(ws.data)
    assert summary.n_images == 100 and summary.n_quarantined == 0 and summary.n_skipped_files == 0
    assert dict(zip(frame["source_file"], frame["split"], strict=True)) == stratified_split(keys, labels, FRACTIONS, 42)
    assert summary.split_counts == {"train": 69, "val": 16, "test": 15}
    assert frame["patient_id"].nunique() == 100
