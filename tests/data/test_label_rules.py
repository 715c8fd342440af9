"""Labels from where users keep them: class folders, a labels CSV, the Kermany file-name rule.

Real files throughout: the Kermany chest X-ray folder (read in place for the rule, copied for the
ingest) and brain MRI JPEGs copied under a labels CSV. Every file is accounted for: ingested,
quarantined with a reason, or skipped with a reason.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from datapaths import CHEST, DATA_DIR, copy_chest_subset
from medimg.config import ConfigError, parse_params
from medimg.data import manifest
from medimg.data.deid import pseudonym
from medimg.data.kermany import kermany_outcome
from medimg.data.sources import kermany_patient_key, scan_image_layout
from medimg.steps import ingest
from medimg.workspace import Workspace

SECRET = "test-secret-for-medimg-labels-0123456789"
BRAIN = DATA_DIR / "brain_tumor_mri"
BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
KERMANY3 = {"kind": "multiclass", "class_names": ["normal", "bacterial", "viral"], "abnormal": ["bacterial", "viral"]}
BRAIN_TASK = {
    "kind": "multiclass",
    "class_names": list(BRAIN_CLASSES),
    "abnormal": ["glioma", "meningioma", "pituitary"],
    "modalities": ["MR"],
}


@pytest.fixture()
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


def _params(ws: Path, task: dict | None = None, **data):
    raw = {
        "workspace": {"path": str(ws)},
        "preprocess": {"size": 32},
        "data": {"workers": 2, "source": "image_folder", **data},
        "validation": {"expected_split_sizes": None},
    }
    if task is not None:
        raw["task"] = task
    return parse_params(raw)


def _files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the Kermany file-name rule


def test_the_kermany_rule_on_every_file_of_the_real_folder():
    """5840 files: every PNEUMONIA name holds exactly one of _bacteria_ / _virus_; counts per official split."""
    scan = scan_image_layout(CHEST, "source")
    counts = Counter((f.split, kermany_outcome(f.class_name, f.path.name)) for f in scan.files)
    assert counts == {
        ("train", "normal"): 1341,
        ("train", "bacteria"): 2530,
        ("train", "virus"): 1345,
        ("test", "normal"): 234,
        ("test", "bacteria"): 242,
        ("test", "virus"): 148,
    }
    assert len(scan.files) == 5840 and scan.skipped == []


def test_the_kermany_rule_on_names_it_cannot_read():
    assert kermany_outcome("PNEUMONIA", "person1_bacteria_1.jpeg") == "bacteria"
    assert kermany_outcome("pneumonia", "PERSON1_VIRUS_6.JPEG") == "virus"
    assert kermany_outcome("NORMAL", "person1_virus_6.jpeg") == "normal"  # the folder decides for NORMAL
    assert kermany_outcome("PNEUMONIA", "IM-0115-0001.jpeg") is None  # neither token
    assert kermany_outcome("PNEUMONIA", "person1_bacteria_virus_1.jpeg") is None  # both
    assert kermany_outcome("PNEUMONIA", "person1bacteria1.jpeg") is None  # the token needs its underscores
    assert kermany_outcome("OTHER", "person1_virus_6.jpeg") is None
    assert kermany_outcome(None, "person1_virus_6.jpeg") is None


def test_kermany_filename_ingest_gives_three_classes_by_patient_and_loses_nothing(tmp_path, secret):
    root = tmp_path / "cx"
    copied = copy_chest_subset(root, per_class=12)
    # a real pneumonia image under a name that holds no type, and a real image in a folder of no class
    untyped = root / "train" / "PNEUMONIA" / "person9999_1.jpeg"
    shutil.copy(copied[-1], untyped)
    (root / "train" / "OTHER").mkdir()
    shutil.copy(copied[0], root / "train" / "OTHER" / "person9998_virus_1.jpeg")
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    n_files = _files(root)
    expected = Counter(
        {"normal": "normal", "bacteria": "bacterial", "virus": "viral"}[kermany_outcome(p.parent.name, p.name)]
        for p in copied
    )
    assert expected["bacterial"] > 0 and expected["viral"] > 0  # the copied subset holds both types

    ws = Workspace.at(tmp_path / "ws")
    params = _params(
        ws.root, KERMANY3, root=str(root), max_bad_fraction=0.1, image_folder={"labels": "kermany_filename"}
    )
    summary = ingest.run(params, ws)
    frame = manifest.read(ws.data)

    assert summary.n_images + summary.n_quarantined + summary.n_skipped_files == n_files == 51
    assert summary.quarantine_by_reason == {"no_kermany_type": 1, "unknown_class": 1}
    assert summary.skipped_files_by_reason == {"hidden": 1}
    assert Counter(frame["label_name"]) == expected and summary.n_images == len(copied) == 48
    assert (frame["label"] == frame["label_name"].map({"normal": 0, "bacterial": 1, "viral": 2})).all()
    # the official test split is kept; val is carved out of train by patient (Kermany ids in the names)
    assert (frame["split"] == "test").sum() == 24 and set(frame["split"]) == {"train", "val", "test"}
    by_file = frame.set_index("source_file")
    for path in copied[:6]:
        rel = path.relative_to(root).as_posix()
        assert by_file.loc[rel, "patient_id"] == pseudonym(kermany_patient_key(path.name), secret, "pat")
    report = (ws.reports / "quarantine.csv").read_text()
    assert "source/train/PNEUMONIA/person9999_1.jpeg" in report and "neither _bacteria_ nor _virus_" in report

    # the same files, two outcomes pooled into the binary task: exactly the class-folder labels
    binary = _params(
        ws.root,
        root=str(root),
        max_bad_fraction=0.1,
        image_folder={
            "labels": "kermany_filename",
            "kermany_classes": {"normal": "normal", "bacteria": "pneumonia", "virus": "pneumonia"},
        },
    )
    ingest.run(binary, ws)
    pooled = manifest.read(ws.data).set_index("source_file")["label_name"].sort_index()
    folders = ingest.run(_params(ws.root, root=str(root), max_bad_fraction=0.1), ws)
    assert folders.quarantine_by_reason == {"unknown_class": 1}  # the untyped file is a pneumonia by its folder
    by_folder = manifest.read(ws.data).set_index("source_file")["label_name"]
    assert pooled.equals(by_folder.drop(untyped.relative_to(root).as_posix()).sort_index())


# --------------------------------------------------------------------------- a labels CSV


def _copy_brain(target: Path, per_class: int, skip: int = 0) -> list[tuple[Path, str]]:
    """``per_class`` JPEGs (after ``skip``) of each brain MRI class, copied flat into ``target`` (no class
    folders), as (copy, class name)."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for cls in BRAIN_CLASSES:
        for src in sorted((BRAIN / cls).iterdir())[skip : skip + per_class]:
            copied.append((Path(shutil.copy(src, target / f"{cls[:2]}-{src.name}")), cls))
    return copied


def test_csv_labels_keyed_by_path_or_name_with_a_split_column(tmp_path, secret):
    root = tmp_path / "mri"
    copied = _copy_brain(root / "scans", per_class=8) + _copy_brain(root / "more" / "deeper", per_class=2, skip=8)
    unlabelled, *labelled = copied
    rows = ["file,diagnosis,set"]
    for i, (path, cls) in enumerate(labelled):
        key = path.relative_to(root).as_posix() if i % 2 else path.name  # relative path or bare file name
        label = str(BRAIN_CLASSES.index(cls)) if i % 5 == 0 else (cls.upper() if i % 3 == 0 else cls)
        rows.append(f"{key},{label},{('train', 'val', 'test')[i % 3]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "notes.txt").write_text("not an image")
    n_files = _files(root)

    ws = Workspace.at(tmp_path / "ws")
    cfg = {
        "labels": "csv",
        "labels_csv": "labels.csv",
        "key_column": "file",
        "label_column": "diagnosis",
        "split_column": "set",
        "patient_id": "file",
    }
    params = _params(ws.root, BRAIN_TASK, root=str(root), modality="MR", max_bad_fraction=0.1, image_folder=cfg)
    summary = ingest.run(params, ws)
    frame = manifest.read(ws.data).set_index("source_file")

    assert summary.n_images + summary.n_quarantined + summary.n_skipped_files == n_files == 42
    assert summary.quarantine_by_reason == {"no_label": 1}
    assert summary.skipped_files_by_reason == {"labels_csv": 1, "not_an_image_file": 1}
    assert unlabelled[0].relative_to(root).as_posix() not in frame.index
    for i, (path, cls) in enumerate(labelled):
        row = frame.loc[path.relative_to(root).as_posix()]
        assert row["label_name"] == cls and row["split"] == ("train", "val", "test")[i % 3]
    assert frame["patient_id"].nunique() == len(frame)  # patient_id: file


def test_csv_labels_without_a_split_column_take_split_folders_else_the_seeded_split(tmp_path, secret):
    root = tmp_path / "mri"
    train = _copy_brain(root / "Train", per_class=6)
    test = _copy_brain(root / "test", per_class=2, skip=6)
    (root / "labels.csv").write_text("key,label\n" + "".join(f"{p.name},{c}\n" for p, c in train + test))
    ws = Workspace.at(tmp_path / "ws")
    cfg = {"labels": "csv", "labels_csv": "labels.csv", "patient_id": "file"}
    params = _params(ws.root, BRAIN_TASK, root=str(root), modality="MR", image_folder=cfg)
    summary = ingest.run(params, ws)
    frame = manifest.read(ws.data).set_index("source_file")
    assert summary.n_images == 32 and summary.n_quarantined == 0
    assert summary.skipped_files_by_reason == {"labels_csv": 1}
    assert (frame.loc[[p.relative_to(root).as_posix() for p, _ in test], "split"] == "test").all()
    # a split layout without val: val carved out of train (by patient, here by file)
    assert set(frame.loc[[p.relative_to(root).as_posix() for p, _ in train], "split"]) == {"train", "val"}


# --------------------------------------------------------------------------- bad combinations fail at load


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"image_folder": {"labels": "csv"}}},
            r"data\.image_folder\.labels is csv but data\.image_folder\.labels_csv is not set",
        ),
        (
            {"data": {"source": "image_folder", "image_folder": {"labels": "kermany_filename"}}},
            r"data\.image_folder\.kermany_classes maps to \['bacterial', 'viral'\], which are not in task\.class_names",
        ),
        (
            {
                "task": {**KERMANY3, "class_names": ["normal", "bacterial", "viral", "covid"]},
                "data": {"source": "image_folder", "image_folder": {"labels": "kermany_filename"}},
            },
            r"task\.class_names \['covid'\] get no image from the Kermany file-name rule",
        ),
        (
            {"data": {"image_folder": {"kermany_classes": {"normal": "normal", "bacteria": "pneumonia"}}}},
            r"data\.image_folder\.kermany_classes must map exactly \['normal', 'bacteria', 'virus'\]",
        ),
        (
            {"data": {"image_folder": {"labels": "kermany_filename", "class_folders": {"PNEUMONIA": "pneumonia"}}}},
            r"data\.image_folder\.class_folders applies to labels: folders only",
        ),
        (
            {"data": {"source": "image_folder", "split": {"stratify": True}}},
            r"data\.split\.stratify .* needs .* data\.image_folder\.patient_id: file",
        ),
        (
            {"data": {"source": "dicom_folder", "split": {"stratify": True}}},
            r"data\.split\.stratify .*; data\.source dicom_folder has patient ids",
        ),
        ({"data": {"medmnist_flag": "Breast MNIST"}}, r"data\.medmnist_flag"),
    ],
)
def test_a_label_rule_the_params_cannot_serve_fails_at_load_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_label_rules_that_work_load():
    kermany3 = parse_params(
        {"task": KERMANY3, "data": {"source": "image_folder", "image_folder": {"labels": "kermany_filename"}}}
    )
    assert kermany3.data.image_folder.kermany_classes == {"normal": "normal", "bacteria": "bacterial", "virus": "viral"}
    brain = parse_params(
        {
            "task": BRAIN_TASK,
            "data": {
                "source": "image_folder",
                "modality": "MR",
                "image_folder": {"patient_id": "file"},
                "split": {"stratify": True, "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}},
            },
        }
    )
    assert brain.data.split.stratify and brain.data.image_folder.labels == "folders"
    # the defaults are today's behaviour: class folders, patient split
    default = parse_params({})
    assert default.data.image_folder.labels == "folders" and not default.data.split.stratify
