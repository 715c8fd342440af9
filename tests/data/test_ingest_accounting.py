"""Ingest accounting: every file under a source is ingested, quarantined or skipped with a reason.

Field cases (``/work/shared/field-cases``): a CD export whose DICOMDIR failed the ingest as a bad
and unlabelled image, and a Kaggle class-folder layout mixing JPEG and DICOM files that was taken
for a DICOM folder. Plus the SOP Class rule on real objects, the quarantine report's file column
and the skip list's reasons.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from datapaths import CHEST, DICOM, FIELD_CASES
from medimg.cli import app
from medimg.config import load_params
from medimg.data import manifest
from medimg.data.deid import pseudonym
from medimg.data.sop_classes import is_image_storage, non_image_object
from medimg.steps import ingest
from medimg.workspace import Workspace
from registry_fixtures import write_params

SECRET = "test-secret-for-medimg-accounting-0123456789"
CD_EXPORT = FIELD_CASES / "dicomdir-cd-export"
MIXED = FIELD_CASES / "mixed-class-folders"


@pytest.fixture()
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


@pytest.fixture()
def cli_env(tmp_path, monkeypatch) -> Path:
    """The workspace root for a CLI ingest; the variables the CLI would set are set here (and undone)."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("MEDIMG_WORKSPACE", str(ws))
    monkeypatch.setenv("PREFECT_HOME", str(ws / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", Workspace.at(ws).default_tracking_uri())
    return ws


def _copy(src: Path, dst: Path) -> Path:
    """A writable copy of a read-only shared folder."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def _rows(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _ingest_cli(source: Path, params_file: Path, *extra: str):
    result = CliRunner().invoke(app, ["ingest", str(source), "--params", str(params_file), *extra])
    assert result.exit_code == 0, result.output
    return result


def _files_on_disk(*roots: Path) -> int:
    """Every directory entry that is not a folder under ``roots`` (hidden ones and dangling links included)."""
    n = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            n += len(filenames) + sum(1 for d in dirnames if not os.path.isdir(os.path.join(dirpath, d)))
    return n


# --------------------------------------------------------------------------- the SOP Class rule


def test_non_image_dicom_objects_are_told_by_their_sop_class():
    def check(path: Path):
        return non_image_object(Path(path).read_bytes())

    dicomdir = check(CD_EXPORT / "DICOMDIR")
    assert (dicomdir.reason, dicomdir.sop_class) == ("dicomdir", "Media Storage Directory Storage")
    for name, sop_class in (
        ("reportsi.dcm", "Basic Text SR Storage"),
        ("test-SR.dcm", "Comprehensive SR Storage"),
        ("rtplan.dcm", "RT Plan Storage"),
        ("waveform_ecg.dcm", "12-lead ECG Waveform Storage"),
    ):
        found = check(get_testdata_file(name))
        assert (found.reason, found.sop_class) == ("non_image_dicom", sop_class), name
    # images, and non-image SOP Classes that carry pixel data (RT Dose; the float Parametric Map field
    # case), go to the decoder: it decides what is wrong with them, if anything
    for path in (
        DICOM / "ct" / "CT_small.dcm",
        CD_EXPORT / "PT000000" / "ST000000" / "SE000000" / "IM000000",
        MIXED / "PNEUMONIA" / "rg1-j2k-chest.dcm",
        get_testdata_file("rtdose_1frame.dcm"),
        FIELD_CASES / "float-pixel-data-nan" / "float_with_nan.dcm",
        CHEST / "test" / "NORMAL" / "IM-0001-0001.jpeg",
    ):
        assert check(path) is None, path
    assert non_image_object(b"") is None and non_image_object(b"\0" * 128 + b"DICM" + b"garbage") is None


def test_an_image_sop_class_without_pixels_is_a_broken_image_and_a_private_class_without_pixels_is_no_image(tmp_path):
    ds = pydicom.dcmread(DICOM / "mr" / "MR_small.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "no_pixels.dcm")
    assert non_image_object((tmp_path / "no_pixels.dcm").read_bytes()) is None  # quarantined missing_pixel_data
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.12.2.1107.5.9.1"  # a vendor's private non-image class
    ds.save_as(tmp_path / "private.dcm")
    found = non_image_object((tmp_path / "private.dcm").read_bytes())
    assert (found.reason, found.sop_class) == ("non_image_dicom", "1.3.12.2.1107.5.9.1")


def test_the_registry_rule_puts_every_report_state_document_and_waveform_class_outside_the_images():
    from pydicom._uid_dict import UID_dictionary

    storage = {uid: info[0] for uid, info in UID_dictionary.items() if info[1] == "SOP Class"}
    families = ("SR Storage", "Presentation State", "Encapsulated", "Waveform", "Key Object Selection", "Raw Data")
    non_images = [uid for uid, name in storage.items() if any(f in name for f in families)]
    assert len(non_images) > 50 and not any(is_image_storage(uid) for uid in non_images)
    for name in (
        "CT Image Storage",
        "Computed Radiography Image Storage",
        "Secondary Capture Image Storage",
        "Digital X-Ray Image Storage - For Presentation",
        "Enhanced MR Image Storage",
    ):
        assert is_image_storage(next(uid for uid, n in storage.items() if n == name)), name


# --------------------------------------------------------------------------- field case: a CD export with a DICOMDIR


def test_cd_export_lands_all_12_images_with_default_params_and_skips_its_dicomdir(tmp_path, secret):
    root = _copy(CD_EXPORT, tmp_path / "cd")
    ws = Workspace.at(tmp_path / "ws")
    params = load_params(write_params(tmp_path, ws.root), {"data": {"source": "dicom_folder", "root": str(root)}})
    assert params.data.max_bad_fraction == 0.05 and params.data.dicom.labels_csv == "labels.csv"  # the defaults
    summary = ingest.run(params, ws)

    assert summary.n_images == 12 and summary.n_quarantined == 0 and summary.quarantine_by_reason == {}
    assert summary.skipped_files_by_reason == {"dicomdir": 1, "labels_csv": 1}
    assert _rows(summary.skipped_files_csv) == [
        {"file": "source/DICOMDIR", "reason": "dicomdir", "detail": "Media Storage Directory Storage"},
        {"file": "source/labels.csv", "reason": "labels_csv", "detail": ""},
    ]
    frame = manifest.read(ws.data)
    assert frame["label_name"].value_counts().to_dict() == {"normal": 6, "pneumonia": 6}
    assert set(frame["modality"]) == {"CR"} and frame["patient_id"].nunique() == 12


def test_cd_export_through_the_cli_without_kind_is_a_dicom_folder(tmp_path, secret, cli_env):
    root = _copy(CD_EXPORT, tmp_path / "cd")
    result = _ingest_cli(root, write_params(tmp_path, cli_env))
    summary = json.loads((Workspace.at(cli_env).reports / "ingest-latest.json").read_text())
    assert summary["source_kind"] == "dicom_folder" and summary["n_images"] == 12 and summary["n_quarantined"] == 0
    assert summary["skipped_files_by_reason"] == {"dicomdir": 1, "labels_csv": 1}
    assert "skipped (not images)" in result.output


def test_the_quarantine_report_lets_the_owner_find_the_file_and_mlflow_gets_pseudonyms_only(tmp_path, secret, caplog):
    root = _copy(CD_EXPORT, tmp_path / "cd")
    good = root / "PT000000" / "ST000000" / "SE000000" / "IM000000"
    cut = root / "PT000012" / "ST000000" / "SE000000" / "IM000000"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with open(root / "labels.csv", "a") as handle:
        handle.write("PT000012/ST000000/SE000000/IM000000,normal\n")
    ws = Workspace.at(tmp_path / "ws")
    params = load_params(
        write_params(tmp_path, ws.root),
        {"data": {"source": "dicom_folder", "root": str(root), "max_bad_fraction": 0.1}},
    )
    summary = ingest.run(params, ws)

    file_pseudonym = pseudonym("source/PT000012/ST000000/SE000000/IM000000", secret, "file")
    [row] = _rows(summary.quarantine_csv)
    assert (row["file"], row["pseudonym"], row["path"], row["reason"]) == (
        "source/PT000012/ST000000/SE000000/IM000000",
        file_pseudonym,
        file_pseudonym,
        "truncated",
    )
    assert "library_message" in row  # the decoding library's text, when it gave one
    # what leaves the workspace: the MLflow artifact and the summary logged with it
    public = Path(summary.quarantine_pseudonymous_csv)
    assert public.name == Path(summary.quarantine_csv).name and public.parent.name == "pseudonymous"
    assert public.read_text().splitlines() == ["pseudonym,reason", f"{file_pseudonym},truncated"]
    assert "PT000012" not in summary.model_dump_json()
    assert summary.n_images == 12 and summary.n_files == 13


# ---------------------------------------------------------------------- field case: class folders mixing JPEG and DICOM


def test_mixed_class_folders_through_the_cli_land_all_8_files_with_folder_labels_and_deidentified(
    tmp_path, secret, cli_env
):
    root = _copy(MIXED, tmp_path / "mixed")
    _ingest_cli(root, write_params(tmp_path, cli_env))
    ws = Workspace.at(cli_env)
    summary = json.loads((ws.reports / "ingest-latest.json").read_text())
    assert summary["source_kind"] == "image_folder" and summary["n_images"] == 8 and summary["n_quarantined"] == 0
    frame = manifest.read(ws.data)
    assert frame["label_name"].value_counts().to_dict() == {"normal": 4, "pneumonia": 4}

    dicoms = frame[frame["file_format"] == "dicom"].set_index("label_name")
    assert len(dicoms) == 2 and set(frame["file_format"]) == {"jpeg", "dicom"}
    identities: list[str] = []
    for label, name in (("normal", "NORMAL/siim-cr-chest.dcm"), ("pneumonia", "PNEUMONIA/rg1-j2k-chest.dcm")):
        ds = pydicom.dcmread(root / name, stop_before_pixels=True)
        # de-identified like a DICOM folder's rows: the patient is the pseudonym of the file's Patient ID
        assert dicoms.loc[label, "patient_id"] == pseudonym(str(ds.PatientID), secret, "pat")
        assert dicoms.loc[label, "source_file"] == pseudonym(f"source/{name}", secret, "file")
        assert dicoms.loc[label, "modality"] == "CR" and dicoms.loc[label, "study_id"].startswith("study-")
        identities += [str(ds.PatientID), str(ds.PatientName), *str(ds.PatientName).split("^")]
    assert "9RG1" in identities and "CompressedSamples" in identities
    # no Patient Name or ID of those files anywhere in the workspace: manifest, reports, DVC, cache index
    for path in (p for p in ws.root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not [v for v in identities if v.encode() in data], path


# --------------------------------------------------------------------------- no file vanishes


def test_every_file_is_ingested_quarantined_or_skipped_with_its_reason(tmp_path, secret):
    root, inbox = tmp_path / "cx", tmp_path / "inbox"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for src in sorted((CHEST / "train" / cls).iterdir())[:4]:
            shutil.copy(src, root / cls / src.name)
    shutil.copy(DICOM / "ct" / "CT_small.dcm", root / "NORMAL" / "ct.dcm")  # a DICOM image in a class folder
    shutil.copy(DICOM / "mr" / "MR_small.dcm", root / "PNEUMONIA" / "IM000001")  # DICOM without a suffix
    good = (CHEST / "test" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes()
    (root / "PNEUMONIA" / "cut.jpeg").write_bytes(good[: len(good) // 2])  # quarantined: truncated
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "NORMAL" / "._x.jpeg").write_bytes(b"\0\5\26\7AppleDouble")
    (root / "NORMAL" / "notes.txt").write_text("seen by Dr Who\n")
    shutil.copy(get_testdata_file("reportsi.dcm"), root / "PNEUMONIA" / "report.dcm")  # a Basic Text SR
    (root / "NORMAL" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    shutil.copy(CHEST / "test" / "NORMAL" / "IM-0003-0001.jpeg", root / "stray.jpeg")  # beside the class folders
    (root / "NORMAL" / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "objects" / "ab").write_bytes(b"x")
    (inbox / "NORMAL").mkdir(parents=True)
    shutil.copy(CHEST / "test" / "NORMAL" / "IM-0005-0001.jpeg", inbox / "NORMAL" / "new.jpeg")
    (inbox / "NORMAL" / ".DS_Store").write_bytes(b"\0")

    ws = Workspace.at(tmp_path / "ws")
    params = load_params(
        write_params(tmp_path, ws.root),
        {"data": {"source": "image_folder", "root": str(root), "inbox": str(inbox), "max_bad_fraction": 0.2}},
    )
    summary = ingest.run(params, ws)

    skipped = {row["file"]: (row["reason"], row["detail"]) for row in _rows(summary.skipped_files_csv)}
    assert skipped == {
        "source/.DS_Store": ("hidden", ""),
        "source/.git/objects/ab": ("hidden", ""),
        "source/NORMAL/._x.jpeg": ("hidden", ""),
        "source/NORMAL/notes.txt": ("not_an_image_file", ""),
        "source/NORMAL/Thumbs.db": ("system_file", ""),
        "source/NORMAL/gone.jpeg": ("not_a_file", ""),
        "source/PNEUMONIA/report.dcm": ("non_image_dicom", "Basic Text SR Storage"),
        "source/stray.jpeg": ("outside_layout", ""),
        "inbox/NORMAL/.DS_Store": ("hidden", ""),
    }
    assert {row["file"]: row["reason"] for row in _rows(summary.quarantine_csv)} == {
        "source/PNEUMONIA/cut.jpeg": "truncated"
    }
    assert summary.n_images == 11  # 8 JPEGs, 2 DICOM images, 1 from the inbox
    assert summary.n_images + summary.n_quarantined + summary.n_skipped_files == _files_on_disk(root, inbox)
    # skips do not count toward the bad fraction: 1 of 12 images is bad, not 1 of 21 files
    assert summary.n_files == 12
    frame = manifest.read(ws.data)
    assert set(frame["file_format"]) == {"jpeg", "dicom"} and set(
        frame.loc[frame["file_format"] == "dicom", "label_name"]
    ) == {"normal", "pneumonia"}


def test_a_label_less_dicomdir_is_skipped_whatever_the_label_key(tmp_path, secret):
    """label_key folder: the DICOMDIR at the root is under no labelled folder; it is still no ``no_label``."""
    root = _copy(CD_EXPORT, tmp_path / "cd")
    (root / "labels.csv").write_text(
        "key,label\n" + "".join(f"PT{i:06d},{'pneumonia' if i % 2 == 0 else 'normal'}\n" for i in range(12))
    )
    ws = Workspace.at(tmp_path / "ws")
    params = load_params(
        write_params(tmp_path, ws.root),
        {"data": {"source": "dicom_folder", "root": str(root), "dicom": {"label_key": "folder"}}},
    )
    summary = ingest.run(params, ws)
    assert summary.n_images == 12 and summary.n_quarantined == 0
    assert summary.skipped_files_by_reason == {"dicomdir": 1, "labels_csv": 1}


def test_source_kind_is_told_by_the_layout_not_by_the_first_dcm_file(tmp_path):
    from medimg.cli import source_overrides
    from medimg.config import ConfigError

    assert source_overrides(str(MIXED), None, None, "medmnist")["data"]["source"] == "image_folder"
    assert source_overrides(str(CD_EXPORT), None, None, "medmnist")["data"]["source"] == "dicom_folder"
    (tmp_path / "split" / "train" / "NORMAL").mkdir(parents=True)
    assert source_overrides(str(tmp_path / "split"), None, None, "medmnist")["data"]["source"] == "image_folder"
    (tmp_path / "plain" / "series1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="--kind"):
        source_overrides(str(tmp_path / "plain"), None, None, "medmnist")
    # params that name a folder kind, and --kind, still win
    assert source_overrides(str(MIXED), None, None, "dicom_folder")["data"]["source"] == "dicom_folder"
    assert source_overrides(str(CD_EXPORT), "image_folder", None, "medmnist")["data"]["source"] == "image_folder"
