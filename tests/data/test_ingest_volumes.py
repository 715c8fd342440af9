"""Ingest of volume sources (``data.source: dicom_series`` and ``nifti_folder``) on the shared real series.

The series (``shared/data/dicom_series``, read-only: copied into tmp_path where a test changes them): a 20-slice
JPEG 2000 CT without file extensions, a GE head CT with an 18.5 degree gantry tilt and uneven gaps, a 5-series MR
study. NIfTI files are written here with nibabel from those series' own voxels and geometry. Contract cubes are
32^3 to keep the tests fast; the 512x512 CT still takes about a second to decode.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from datapaths import CT_SERIES, CT_TILTED, MR_STUDY
from medimg import preprocess, volume_contract
from medimg.config import load_params
from medimg.data import manifest
from medimg.data.deid import pseudonym
from medimg.data.ingest_volumes import ingest_volumes
from medimg.data.quarantine import QuarantineThresholdError
from medimg.data.series import read_series_folder
from medimg.data.volumes import Volume
from medimg.steps import ingest, validate
from medimg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-for-medimg-volume-ingest-0123456789"
CLASSES = ("normal", "abnormal")
MR_CROP = "11_HCropVolume"  # the 40-slice 50x34 hippocampus crop of the MR study: the quickest real series
# Identifying attributes whose values must reach no manifest, log line or summary.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "InstitutionName",
)


@pytest.fixture()
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


@pytest.fixture(scope="module")
def series_volumes() -> dict[str, list[Volume]]:
    """The shared CT and MR series read once by the series reader (for NIfTI files and expected cubes)."""
    return {"ct": list(read_series_folder(CT_SERIES).volumes), "mr": list(read_series_folder(MR_STUDY).volumes)}


def _params(ws: Path, root: Path, source: str = "dicom_series", volumes: dict | None = None, **data):
    overrides = {
        "workspace": {"path": str(ws)},
        "task": {
            "kind": "binary",
            "class_names": list(CLASSES),
            "abnormal": ["abnormal"],
            "modalities": ["CT", "MR"],
            "body_part": None,
        },
        "data": {"source": source, "root": str(root), "modality": "CT", "workers": 1, **data},
        "preprocess": {"dims": 3, "size": 32},
        "model": {"architecture": "resnet3d"},
        "validation": {"expected_split_sizes": None, "allowed_modalities": ["CT", "MR"]},
    }
    if volumes:
        overrides["data"]["volumes"] = volumes
    return load_params(ROOT / "params.yaml", overrides=overrides)


def _copy(src: Path, dst: Path) -> Path:
    """A writable copy of a read-only shared folder."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def _labels(root: Path, rows: list[tuple[str, ...]], header: str = "key,label") -> None:
    (root / "labels.csv").write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))


def _ingest(params, ws: Path, secret: bytes, root: Path):
    return ingest_volumes(
        params.data.source,
        params.data,
        params.task.class_names,
        params.preprocess,
        ws / "data",
        secret,
        root,
        quarantine_csv=ws / "quarantine.csv",
        skipped_csv=ws / "skipped.csv",
    )


def _quarantine(ws: Path) -> list[dict]:
    with open(ws / "quarantine.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _identifying_values(folder: Path) -> set[str]:
    """Values of IDENTIFYING attributes in the folder's headers, and the file names that are UIDs."""
    values = set()
    for path in (p for p in folder.rglob("*") if p.is_file() and pydicom.misc.is_dicom(p)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 6:
                values.add(value)
        if path.name.count(".") >= 4:  # CT.1.3.12.2.1107...: named by its UID
            values.add(path.name)
    return values


# --------------------------------------------------------------------------- DICOM series


def test_a_series_folder_gives_one_volume_per_series_with_the_source_geometry(tmp_path, secret, series_volumes):
    root = tmp_path / "series"
    _copy(CT_SERIES, root / "ct_abdomen_j2k_20")
    _copy(MR_STUDY, root / "mr_brain_study_5series")
    (root / "notes.txt").write_text("acquisition notes")
    (root / ".DS_Store").write_bytes(b"\0" * 16)
    _labels(root, [("ct_abdomen_j2k_20", "abnormal"), ("mr_brain_study_5series", "normal")])
    params = _params(tmp_path / "ws", root)
    result = _ingest(params, tmp_path / "ws", secret, root)
    frame = manifest.read(tmp_path / "ws" / "data")

    assert list(frame.columns) == list(manifest.COLUMNS + manifest.VOLUME_COLUMNS)
    assert len(frame) == result.n_images == 6 and not len(result.quarantine)
    assert {(s.rel, s.reason) for s in result.skipped} == {
        (".DS_Store", "hidden"),
        ("labels.csv", "labels_csv"),
        ("notes.txt", "not_an_image_file"),
    }
    # every file: 20 CT + 128 MR files in volumes, three skipped
    assert result.n_files == 148 == sum(1 for p in root.rglob("*") if p.is_file()) - 3
    assert (frame["source_kind"] == "dicom_series").all() and (frame["file_format"] == "dicom").all()
    assert frame["id"].str.match(r"^vol-[0-9a-f]{16}$").all() and frame["id"].is_unique
    assert (frame[["depth", "height", "width"]] == 32).all().all()
    assert (frame["contract_hash"] == preprocess.contract_hash(params.preprocess)).all()

    # the CT: one volume of (20, 512, 512), 2 mm apart, as read (before the contract), axial SPL, no correction
    (ct,) = frame[frame["modality"] == "CT"].itertuples()
    assert (ct.original_depth, ct.original_height, ct.original_width) == (20, 512, 512)
    assert ct.spacing_z == 2.0
    assert (ct.spacing_y, ct.spacing_x) == pytest.approx((0.9765625, 0.9765625))
    assert ct.axcodes == "SPL" and ct.corrections == "" and ct.label_name == "abnormal"
    assert ct.bit_depth == 12 and ct.photometric == "MONOCHROME2"
    # its files have no PatientID, StudyInstanceUID or SeriesInstanceUID: named after their folder
    assert ct.patient_id == pseudonym("source/ct_abdomen_j2k_20", secret, "pat") and pd.isna(ct.study_id)
    assert ct.series_id.startswith("series-") and ct.source_file == pseudonym(
        "source/ct_abdomen_j2k_20", secret, "folder"
    )
    # the stored cube is the 3D contract applied to the series reader's volume
    stored = np.load(tmp_path / "ws" / "data" / ct.path)
    assert stored.dtype == np.uint8 and stored.shape == (32, 32, 32)
    np.testing.assert_array_equal(stored, volume_contract.prepare_volume(series_volumes["ct"][0], params.preprocess))
    assert ct.pixel_mean == pytest.approx(float(stored.mean()))

    # the MR study: five series with their sizes, all labelled by the study folder, one patient and study
    mr = frame[frame["modality"] == "MR"]
    sizes = sorted(zip(mr["original_depth"], mr["original_height"], mr["original_width"], strict=True))
    assert sizes == [(22, 320, 280)] * 4 + [(40, 50, 34)]
    assert set(mr["label_name"]) == {"normal"}
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in MR_STUDY.rglob("*") if p.is_file()]
    assert set(mr["patient_id"]) == {pseudonym(str(headers[0].PatientID), secret, "pat")}
    assert set(mr["study_id"]) == {pseudonym(str(headers[0].StudyInstanceUID), secret, "study")}
    # one series_id per SeriesInstanceUID: the pseudonym a 2D DICOM ingest gives it
    assert set(mr["series_id"]) == {pseudonym(str(ds.SeriesInstanceUID), secret, "series") for ds in headers}
    oblique = mr[mr["original_depth"] == 22]
    assert oblique["spacing_z"].to_numpy() == pytest.approx([6.5] * 4, abs=0.01)
    assert oblique["spacing_y"].to_numpy() == pytest.approx([0.6875] * 4)
    # stored where the manifest says, one split per patient
    for row in frame.itertuples():
        assert row.path == f"volumes/{row.split}/{row.id}.npy" and (tmp_path / "ws" / "data" / row.path).is_file()
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_the_tilted_ct_is_corrected_to_the_stated_geometry_or_refused_with_gantry_tilt(tmp_path, secret):
    """Corrected (default ``data.volumes.gantry_tilt: correct``): each of the 28 slices shifted in its plane onto
    one orthogonal grid (canvas 512 + 99 rows) and the uneven gaps (about 1, 4 and 7 mm) equalised to 56 planes
    (dcm2niix's cap, 2 x 28) 2.6198 mm apart: (56, 611, 512) at (2.6198, 0.48828, 0.48828) mm, as measured.
    With ``gantry_tilt: refuse`` its 28 files are quarantined with ``gantry_tilt``."""
    root = tmp_path / "series"
    _copy(CT_TILTED, root / "head")
    _copy(MR_STUDY / MR_CROP, root / "crop")
    _labels(root, [("head", "abnormal"), ("crop", "normal")])

    params = _params(tmp_path / "ws", root)
    result = _ingest(params, tmp_path / "ws", secret, root)
    frame = manifest.read(tmp_path / "ws" / "data")
    assert len(frame) == 2 and not len(result.quarantine)
    head = frame[frame["label_name"] == "abnormal"].iloc[0]
    assert (head["original_depth"], head["original_height"], head["original_width"]) == (56, 611, 512)
    assert head["spacing_z"] == pytest.approx(2.6198, abs=1e-4)
    assert (head["spacing_y"], head["spacing_x"]) == pytest.approx((0.48828125, 0.48828125), abs=1e-6)
    assert head["corrections"] == "gantry_tilt;irregular_spacing" and head["axcodes"] == "SPL"

    refusing = _params(tmp_path / "ws2", root, volumes={"gantry_tilt": "refuse"}, max_bad_fraction=1.0)
    result = _ingest(refusing, tmp_path / "ws2", secret, root)
    frame = manifest.read(tmp_path / "ws2" / "data")
    assert list(frame["label_name"]) == ["normal"] and result.n_files == 28 + 40
    assert result.quarantine.counts_by_reason() == {"gantry_tilt": 28}
    entries = _quarantine(tmp_path / "ws2")
    assert sorted(e["file"] for e in entries) == [f"source/head/{n:02d}.dcm" for n in range(1, 29)]
    assert all("18.5 degrees" in e["message"] for e in entries)


def test_a_ct_with_a_slice_removed_unreadable_and_unlabelled_files_are_quarantined(tmp_path, secret):
    root = tmp_path / "series"
    ct = _copy(CT_SERIES, root / "ct")
    removed = sorted(ct.iterdir())[10]
    removed.unlink()
    _copy(MR_STUDY / MR_CROP, root / "crop")
    _copy(MR_STUDY / "26401-T1prereg-52906", root / "unlabelled" / "t1")
    (root / "crop" / "broken.dcm").write_text("a text file named like DICOM")
    _labels(root, [("ct", "abnormal"), ("crop", "normal")])

    params = _params(tmp_path / "ws", root, max_bad_fraction=1.0)
    result = _ingest(params, tmp_path / "ws", secret, root)
    frame = manifest.read(tmp_path / "ws" / "data")
    assert result.n_files == 19 + 40 + 22 + 1 and list(frame["original_depth"]) == [40]
    assert result.quarantine.counts_by_reason() == {"no_label": 22, "missing_slices": 19, "not_an_image": 1}
    assert result.n_decoded == 19 + 40  # the unlabelled series is hashed, not read
    entries = {e["file"]: e for e in _quarantine(tmp_path / "ws")}
    missing = [e for f, e in entries.items() if f.startswith("source/ct/")]
    assert len(missing) == 19 and {e["reason"] for e in missing} == {"missing_slices"}
    assert all("4.000 mm" in e["message"] and "2.000 mm" in e["message"] for e in missing)
    assert entries["source/crop/broken.dcm"]["reason"] == "not_an_image"
    # the report names each file by its place (inside the workspace), its message by pseudonyms only
    assert all(removed.name not in e["message"] and e["pseudonym"].startswith("file-") for e in entries.values())

    with pytest.raises(QuarantineThresholdError, match="missing_slices"):
        _ingest(_params(tmp_path / "ws3", root), tmp_path / "ws3", secret, root)
    assert not (tmp_path / "ws3" / "data" / manifest.MANIFEST_FILE).exists()  # nothing written


# --------------------------------------------------------------------------- NIfTI


def _write_nifti(volume: Volume, path: Path, dtype=np.int16, every: int = 1) -> Path:
    """``volume`` (LPS, axes z, y, x) as a NIfTI file: array axes (x, y, z), RAS affine; rows and columns
    subsampled by ``every`` (their spacing grows accordingly)."""
    voxels = volume.voxels[:, ::every, ::every]
    affine = volume.affine.copy()
    affine[:3, 1:3] *= every
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine[:, [2, 1, 0, 3]]
    image = nib.Nifti1Image(np.ascontiguousarray(voxels.transpose(2, 1, 0)).astype(dtype), ras)
    image.set_qform(ras, code=1)
    image.set_sform(ras, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def test_a_nifti_folder_ingests_with_labels_and_splits_and_quarantines_bad_files(tmp_path, secret, series_volumes):
    root = tmp_path / "nifti"
    ct_volume = series_volumes["ct"][0]
    _write_nifti(ct_volume, root / "ct.nii")
    mr = sorted(series_volumes["mr"], key=lambda v: (v.shape, float(v.voxels.mean())))
    for k, volume in enumerate(mr):
        _write_nifti(volume, root / "mr" / f"series{k}.nii.gz", every=1 if volume.shape[1] < 100 else 4)
    _write_nifti(ct_volume, root / "unlabelled.nii.gz", every=8)
    thin = Volume(ct_volume.voxels[:3, ::8, ::8].copy(), (2.0, 7.8125, 7.8125), (0, 0, 0), np.eye(3), "CT", "nifti")
    _write_nifti(thin, root / "thin.nii")
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b this is no gzip stream")
    (root / "README.txt").write_text("converted with nibabel")
    shutil.copy(sorted(CT_SERIES.iterdir())[0], root / "stray_slice.dcm")
    splits = ["test", "val", "", "", "train", ""]
    _labels(
        root,
        [("ct.nii", "abnormal", "test"), ("thin.nii", "abnormal", ""), ("broken.nii.gz", "1", "")]
        + [(f"mr/series{k}.nii.gz", "normal", splits[k + 1]) for k in range(5)],
        header="key,label,split",
    )
    params = _params(
        tmp_path / "ws", root, source="nifti_folder", volumes={"split_column": "split"}, max_bad_fraction=1
    )
    result = _ingest(params, tmp_path / "ws", secret, root)
    frame = manifest.read(tmp_path / "ws" / "data")

    assert (
        len(frame) == 6 and (frame["file_format"] == "nifti").all() and (frame["source_kind"] == "nifti_folder").all()
    )
    assert result.quarantine.counts_by_reason() == {"no_label": 1, "too_few_slices": 1, "unreadable": 1}
    reasons = {e["file"]: e["reason"] for e in _quarantine(tmp_path / "ws")}
    assert reasons == {
        "source/broken.nii.gz": "unreadable",
        "source/thin.nii": "too_few_slices",
        "source/unlabelled.nii.gz": "no_label",
    }
    assert {(s.rel, s.reason) for s in result.skipped} == {
        ("README.txt", "not_an_image_file"),
        ("labels.csv", "labels_csv"),
        ("stray_slice.dcm", "outside_layout"),
    }
    assert result.n_files == 9
    # labels and explicit splits from the CSV; the rest split by patient (each file its own patient)
    by_file = frame.set_index("source_file")
    ct = by_file.loc[pseudonym("source/ct.nii", secret, "file")]
    assert ct["label_name"] == "abnormal" and ct["split"] == "test"
    for k in range(5):
        row = by_file.loc[pseudonym(f"source/mr/series{k}.nii.gz", secret, "file")]
        assert row["label_name"] == "normal" and row["patient_id"] == pseudonym(
            f"source/mr/series{k}.nii.gz", secret, "pat"
        )
        if splits[k + 1]:
            assert row["split"] == splits[k + 1]
    assert set(frame["split"]) <= {"train", "val", "test"} and frame["patient_id"].is_unique
    # read in canonical RAS+ (axcodes SAR), the declared modality; the CT keeps its 2 mm slices
    assert set(frame["axcodes"]) == {"SAR"} and (ct["original_depth"], ct["original_height"]) == (20, 512)
    assert (ct["spacing_z"], ct["spacing_y"]) == pytest.approx((2.0, 0.9765625)) and ct["modality"] == "CT"
    assert ct["bit_depth"] == 16 and pd.isna(ct["photometric"]) and pd.isna(ct["study_id"])
    # the same voxels and geometry as the DICOM series give the same stored cube
    stored = np.load(tmp_path / "ws" / "data" / ct["path"])
    np.testing.assert_array_equal(stored, volume_contract.prepare_volume(ct_volume, params.preprocess))


def test_inbox_volumes_join_the_dataset_and_the_source_volumes_do_not_move(tmp_path, secret, series_volumes):
    crop = next(v for v in series_volumes["mr"] if v.shape == (40, 50, 34))
    root, inbox = tmp_path / "nifti", tmp_path / "inbox"
    rows = []
    for k in range(12):  # shifted copies of the crop: twelve files, twelve patients
        shifted = Volume(np.roll(crop.voxels, k, axis=0), crop.spacing, crop.origin, crop.direction, "MR", "nifti")
        _write_nifti(shifted, root / f"case{k:02d}.nii.gz")
        rows.append((f"case{k:02d}.nii.gz", ["normal", "abnormal"][k % 2]))
    _labels(root, rows)
    params = _params(tmp_path / "ws", root, "nifti_folder", inbox=str(inbox), modality="MR")
    first = _ingest(params, tmp_path / "ws", secret, root)
    before = manifest.read(tmp_path / "ws" / "data").set_index("id")["split"]
    assert first.n_images == 12 and {"train", "test"} <= set(before) <= {"train", "val", "test"}

    _write_nifti(crop, inbox / "new.nii.gz")
    _labels(inbox, [("new.nii.gz", "abnormal")])
    second = ingest_volumes(
        "nifti_folder", params.data, CLASSES, params.preprocess, tmp_path / "ws" / "data", secret, root, inbox
    )
    after = manifest.read(tmp_path / "ws" / "data").set_index("id")
    assert second.n_images == 13 and second.source_md5 != first.source_md5
    assert after.loc[before.index, "split"].equals(before)  # nothing moved
    new = after.loc[pseudonym("inbox/new.nii.gz", secret, "vol")]
    assert new["label_name"] == "abnormal" and new["patient_id"] == pseudonym("inbox/new.nii.gz", secret, "pat")
    assert (tmp_path / "ws" / "data" / new["path"]).is_file()


# --------------------------------------------------------------------------- the ingest step


def _series_root(tmp_path: Path) -> Path:
    """The CT, the MR study, the CT with its eighth slice removed and a text file, labelled by folder."""
    root = tmp_path / "series"
    _copy(CT_SERIES, root / "ct_abdomen_j2k_20")
    _copy(MR_STUDY, root / "mr_brain_study_5series")
    broken = _copy(CT_SERIES, root / "ct_missing")
    sorted(broken.iterdir())[7].unlink()
    (root / "notes.txt").write_text("not an image")
    _labels(root, [("ct_abdomen_j2k_20", "abnormal"), ("ct_missing", "abnormal"), ("mr_brain_study_5series", "0")])
    return root


def _leaks(identifying: set[str], texts: dict[str, str]) -> dict[str, list[str]]:
    return {name: sorted(v for v in identifying if v in text) for name, text in texts.items()}


def test_the_ingest_step_versions_volumes_with_dvc_and_no_identifier_leaves_the_workspace(tmp_path, secret, caplog):
    """The whole step (in this process, so that every log record reaches ``caplog``; the worker processes are the
    next test's)."""
    root = _series_root(tmp_path)
    ws = Workspace.at(tmp_path / "ws")
    params = _params(ws.root, root, max_bad_fraction=0.2)

    with caplog.at_level(logging.DEBUG):
        summary = ingest.run(params, ws)
        again = ingest.run(params, ws)
    frame = manifest.read(ws.data)

    assert summary.n_images == 6 and summary.source_kind == "dicom_series" and summary.new_version
    assert summary.n_files == 20 + 128 + 19 and summary.quarantine_by_reason == {"missing_slices": 19}
    assert summary.skipped_files_by_reason == {"labels_csv": 1, "not_an_image_file": 1}
    # DVC: every stored volume is in the data version; the same input is the same version
    assert again.data_version == summary.data_version and not again.new_version
    dvc = json.loads((ws.pipeline / ingest.VERSION_FILE).read_text())
    assert dvc["data_version"] == summary.data_version and dvc["n_images"] == 6
    assert sorted(p.relative_to(ws.data).as_posix() for p in ws.data.rglob("*.npy")) == sorted(frame["path"])
    assert (ws.data_versions / f"{summary.data_version}.dvc").is_file()

    # privacy: the shared series' UIDs, PatientID, names, dates and UID file names appear nowhere outside
    identifying = _identifying_values(root)
    assert {"PGBM-003", "Albus^Dumbledore"} <= identifying and any(v.startswith("CT.1.3.12") for v in identifying)
    leaving = {
        "manifest": " ".join(str(v) for v in frame.astype(str).to_numpy().ravel()),
        "logs": caplog.text,
        "summary": summary.model_dump_json(),
        "ingest-latest.json": (ws.reports / ingest.SUMMARY_FILE).read_text(),
        "data-version.json": (ws.pipeline / ingest.VERSION_FILE).read_text(),
        "pseudonymous quarantine": Path(summary.quarantine_pseudonymous_csv).read_text(),
    }
    assert _leaks(identifying, leaving) == {name: [] for name in leaving}
    assert "refused volume vol-" in caplog.text  # refusals are logged, by the volume's pseudonym

    # the validation suite knows this source kind: schema, formats, geometry and the stored cubes hold
    # (six volumes of three patients leave val and test empty: only that fails)
    outcome = validate.check(params, frame, ws.data)
    assert [(f["suite"], f["column"]) for f in outcome.failed_critical] == [("dicom_series.split_summary", "n_images")]


def test_worker_processes_give_the_same_dataset_and_print_nothing_identifying(tmp_path, secret, caplog, capfd):
    """``data.workers: 2`` reads the series in a process pool: the same manifest and cubes as one process, and
    nothing identifying on the processes' stdout/stderr. (No DVC here: its logger would keep capfd's stream.)"""
    root = _series_root(tmp_path)
    one = _params(tmp_path / "ws1", root, max_bad_fraction=0.2)
    two = _params(tmp_path / "ws2", root, workers=2, max_bad_fraction=0.2)
    _ingest(one, tmp_path / "ws1", secret, root)
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        result = _ingest(two, tmp_path / "ws2", secret, root)
    out, err = capfd.readouterr()

    assert result.n_images == 6
    first, second = manifest.read(tmp_path / "ws1" / "data"), manifest.read(tmp_path / "ws2" / "data")
    pd.testing.assert_frame_equal(first, second)
    for rel in first["path"]:
        assert (tmp_path / "ws1" / "data" / rel).read_bytes() == (tmp_path / "ws2" / "data" / rel).read_bytes()
    texts = {"logs": caplog.text, "stdout": out, "stderr": err}
    assert _leaks(_identifying_values(root), texts) == {name: [] for name in texts}
