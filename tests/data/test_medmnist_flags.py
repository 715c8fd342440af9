"""Any 2D MedMNIST flag by the medmnist package's INFO: BreastMNIST ingested with its official split,
the MD5 check, and the flags or class counts that must fail at start."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from datapaths import DATA_DIR
from medimg.config import ConfigError, parse_params
from medimg.data import manifest
from medimg.data.medmnist import DataSourceError, MedMNISTFlagError, check_flag, flags_2d, locate
from medimg.steps import ingest
from medimg.workspace import Workspace

BREAST = DATA_DIR / "breastmnist" / "breastmnist.npz"
BREAST_TASK = {
    "kind": "binary",
    "class_names": ["malignant", "benign"],
    "abnormal": ["malignant"],
    "modalities": ["US"],
}


def _params(ws, task=BREAST_TASK, **data):
    return parse_params(
        {
            "workspace": {"path": str(ws)},
            "task": task,
            "data": {
                "source": "medmnist",
                "medmnist_flag": "breastmnist",
                "data_dir": str(DATA_DIR),
                "download": False,
                "modality": "US",
                **data,
            },
            "validation": {"expected_split_sizes": None},
        }
    )


def test_breastmnist_is_checked_by_its_info_and_ingested_with_its_official_split(tmp_path):
    info = check_flag("breastmnist", BREAST_TASK["class_names"])
    assert info.labels == ("malignant", "normal, benign") and info.n_channels == 1 and not info.volumetric
    assert info.md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert info.split_sizes == {"train": 546, "val": 78, "test": 156}

    ws = Workspace.at(tmp_path / "ws")
    summary = ingest.run(_params(ws.root), ws)
    assert summary.source_md5 == info.md5 and summary.source_kind == "medmnist"
    assert summary.split_counts == info.split_sizes and summary.n_images == 780
    frame = manifest.read(ws.data)
    with np.load(BREAST) as npz:
        for split in ("train", "val", "test"):
            official = np.bincount(npz[f"{split}_labels"].reshape(-1), minlength=2)
            got = frame.loc[frame["split"] == split, "label"].value_counts().reindex([0, 1]).to_numpy()
            assert got.tolist() == official.tolist(), split
    assert dict(zip(frame["label"], frame["label_name"], strict=True)) == {0: "malignant", 1: "benign"}
    assert set(frame["modality"]) == {"US"}


def test_the_archive_is_also_found_directly_in_the_data_dir_and_a_wrong_md5_names_both(tmp_path):
    shutil.copy(BREAST, tmp_path / "breastmnist.npz")
    assert locate("breastmnist", tmp_path, tmp_path / "dl", download=False).path == tmp_path / "breastmnist.npz"
    data = bytearray(BREAST.read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "breastmnist.npz").write_bytes(bytes(data))
    with pytest.raises(DataSourceError) as err:
        locate("breastmnist", tmp_path, tmp_path / "dl", download=False)
    text = str(err.value)
    assert str(tmp_path / "breastmnist.npz") in text
    assert "expected 750601b1f35ba3300ea97c75c52ff8f6" in text

    assert f"MD5 {hashlib.md5(bytes(data)).hexdigest()}" in text


def test_a_class_count_mismatch_fails_at_start_before_anything_is_read(tmp_path):
    three = {
        "kind": "multiclass",
        "class_names": ["malignant", "benign", "normal"],
        "abnormal": ["malignant"],
        "modalities": ["US"],
    }
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(ConfigError, match=r"data\.medmnist_flag 'breastmnist' has 2 classes .*task\.class_names has 3"):
        ingest.run(_params(ws.root, task=three, data_dir=str(tmp_path / "nowhere")), ws)
    assert not ws.root.exists()  # failed before the workspace, the archive or a download was touched
    # a DataSourceError too: `medimg ingest` reports it in one line with the other data errors
    with pytest.raises(DataSourceError, match=r"0 malignant, 1 normal, benign"):
        check_flag("breastmnist", three["class_names"])


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("vesselmnist3d", r"'vesselmnist3d' is a 3D MedMNIST flag: set preprocess.dims: 3"),
        ("pathmnist", r"'pathmnist' holds RGB images \(3 channels\)"),
        ("chestmnist", r"'chestmnist' is multi-label"),
        ("pneumonia", r"unknown MedMNIST flag 'pneumonia' \(data\.medmnist_flag\); 2D flags .*breastmnist"),
    ],
)
def test_flags_medimg_cannot_ingest_are_refused_by_name(flag, message):
    with pytest.raises(MedMNISTFlagError, match=message):
        check_flag(flag, ("normal", "pneumonia"), channels=3)


def test_a_3d_flag_needs_a_3d_contract_and_a_2d_flag_a_2d_one():
    assert check_flag("vesselmnist3d", ("vessel", "aneurysm"), dims=3).volumetric
    with pytest.raises(MedMNISTFlagError, match=r"'breastmnist' is a 2D MedMNIST flag but preprocess.dims is 3"):
        check_flag("breastmnist", ("malignant", "benign"), dims=3)


def test_the_2d_flags_are_those_of_the_installed_package():
    flags = flags_2d()
    assert {"pneumoniamnist", "breastmnist", "organamnist", "pathmnist"} <= set(flags)
    assert not any(f.endswith("3d") for f in flags) and len(flags) == 12
    # every grey single-label 2D flag passes with as many class names as it has labels
    organ = check_flag("organamnist", tuple(f"c{i}" for i in range(11)))
    assert organ.labels[0] == "bladder" and organ.task == "multi-class"
