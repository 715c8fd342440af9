"""Field case float-pixel-data-nan at ingest: a Float Pixel Data image with NaN pixels is quarantined as
``non_finite`` (never landed as a blank image), and its twin without NaN lands with real contrast.

(The same file at predict: ``tests/test_input_checks.py``; the decoder's rule: ``tests/test_dicom.py``.)
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from datapaths import FIELD_CASES
from medimg.config import load_params
from medimg.data import manifest
from medimg.steps import ingest
from medimg.workspace import Workspace
from registry_fixtures import write_params

SECRET = "test-secret-for-medimg-float-nan-0123456789"
CASE = FIELD_CASES / "float-pixel-data-nan"


def test_nan_float_image_is_quarantined_non_finite_and_its_twin_lands(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    root = tmp_path / "src"
    for cls, name in (("normal", "reference_float_no_nan.dcm"), ("pneumonia", "float_with_nan.dcm")):
        (root / cls).mkdir(parents=True)
        shutil.copy(CASE / name, root / cls / name)
        (root / cls / name).chmod(0o644)
    (root / "labels.csv").write_text("key,label\nnormal,normal\npneumonia,pneumonia\n")
    ws = Workspace.at(tmp_path / "ws")
    # two files, one bad: allow it, so the run lands the good one and reports the bad one
    params = load_params(
        write_params(tmp_path, ws.root),
        {
            "data": {
                "source": "dicom_folder",
                "root": str(root),
                "max_bad_fraction": 0.5,
                "dicom": {"label_key": "folder"},
                "split": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
            },
            "task": {"modalities": None},
        },
    )
    summary = ingest.run(params, ws)

    assert summary.n_images == 1 and summary.quarantine_by_reason == {"non_finite": 1}
    with open(summary.quarantine_csv, newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["file"] == "source/pneumonia/float_with_nan.dcm" and row["reason"] == "non_finite"
    assert "NaN" in row["message"]
    [landed] = manifest.read(ws.data).to_dict("records")
    assert landed["label_name"] == "normal" and landed["pixel_std"] > 2.0  # not a blank image
    stored = np.asarray(Image.open(ws.data / landed["path"]))
    assert stored.std() > 2.0 and stored.max() > stored.min()


@pytest.mark.parametrize("name", ["float_with_nan.dcm"])
def test_the_nan_file_alone_fails_the_ingest_instead_of_landing_a_blank_image(tmp_path, monkeypatch, name):
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    root = tmp_path / "src" / "pneumonia"
    root.mkdir(parents=True)
    shutil.copy(CASE / name, root / name)
    (root.parent / "labels.csv").write_text("key,label\npneumonia,pneumonia\n")
    ws = Workspace.at(tmp_path / "ws")
    params = load_params(
        write_params(tmp_path, ws.root),
        {"data": {"source": "dicom_folder", "root": str(root.parent), "dicom": {"label_key": "folder"}}},
    )
    with pytest.raises(Exception, match="non_finite"):
        ingest.run(params, ws)
    assert not (ws.data / "manifest.parquet").exists()
