"""The ingest's up-to-date check: what it fingerprints decides whether a changed source is re-read."""

from __future__ import annotations

import shutil

from datapaths import DATA_DIR
from medimg.config import parse_params
from medimg.steps.source_check import source_fingerprint
from medimg.workspace import Workspace


def _folder_params(root, **image_folder):
    return parse_params(
        {
            "task": {"class_names": ["glioma", "notumor"], "abnormal": ["glioma"], "modalities": None},
            "data": {"source": "image_folder", "root": str(root), "image_folder": image_folder},
        }
    )


def test_renaming_or_reordering_the_classes_changes_the_fingerprint(tmp_path):
    root = tmp_path / "src"
    for name in ("glioma", "notumor"):
        (root / name).mkdir(parents=True)
        shutil.copy(sorted((DATA_DIR / "brain_tumor_mri" / name).glob("*.jpg"))[0], root / name)
    ws = Workspace(tmp_path / "ws")
    params = _folder_params(root)
    flipped = params.model_copy(update={"task": params.task.model_copy(update={"class_names": ("notumor", "glioma")})})
    assert source_fingerprint(params, ws) == source_fingerprint(params, ws)
    assert source_fingerprint(params, ws) != source_fingerprint(flipped, ws), "labels are indices into class_names"


def test_an_image_folder_labels_csv_outside_the_tree_is_fingerprinted(tmp_path):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    shutil.copy(sorted((DATA_DIR / "brain_tumor_mri" / "glioma").glob("*.jpg"))[0], root / "images" / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label\nimages/a.jpg,glioma\n")
    ws = Workspace(tmp_path / "ws")
    params = _folder_params(root, labels="csv", labels_csv="../labels.csv")
    before = source_fingerprint(params, ws)
    labels.write_text("key,label\nimages/a.jpg,notumor\n")
    assert source_fingerprint(params, ws) != before
