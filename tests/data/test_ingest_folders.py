"""Ingest of image folders and DICOM folders on the real files: manifest, pseudonyms, splits,
incremental inbox with DVC versions, quarantine of every kind of bad file, the secret."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from datapaths import CHEST, DICOM, copy_chest_subset, copy_dicom_samples
from medimg import preprocess
from medimg.config import parse_params
from medimg.data import manifest
from medimg.data.deid import MissingSecretError, pseudonym
from medimg.data.quarantine import QuarantineThresholdError
from medimg.data.sources import kermany_patient_key
from medimg.provenance import file_sha256
from medimg.steps import ingest
from medimg.validation.warts import find_warts
from medimg.workspace import Workspace

SECRET = "test-secret-for-medimg-ingest-0123456789"


@pytest.fixture()
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


def _params(ws: Path, **data):
    raw = {
        "workspace": {"path": str(ws)},
        "preprocess": {"size": 64},
        "data": {"workers": 2, **data},
        "validation": {"expected_split_sizes": None},
    }
    return parse_params(raw)


# --------------------------------------------------------------------------- image folders


def test_image_folder_manifest_is_pseudonymous_contract_sized_and_split_by_patient(tmp_path, secret):
    root = tmp_path / "cx"
    files = copy_chest_subset(root)
    twin = root / "train" / "NORMAL" / "copy-of-first.jpeg"
    shutil.copy(files[0], twin)  # a byte-identical duplicate within train
    params = _params(tmp_path / "ws", source="image_folder", root=str(root))
    summary = ingest.run(params, Workspace.at(tmp_path / "ws"))
    frame = manifest.read(Workspace.at(tmp_path / "ws").data)

    assert list(frame.columns) == list(manifest.COLUMNS) and len(frame) == 41 == summary.n_images
    # the twin's bytes are decoded once, or twice when both copies are in the workers at the same moment
    assert summary.n_decoded + summary.n_cached == 41 and summary.n_decoded >= 40
    assert (frame["height"] == 64).all() and (frame["width"] == 64).all()
    assert (frame["contract_hash"] == preprocess.contract_hash(params.preprocess)).all()
    assert (frame["source_kind"] == "image_folder").all() and set(frame["file_format"]) == {"jpeg"}
    assert frame["id"].str.match(r"^img-[0-9a-f]{16}$").all()
    # the patient id is the keyed pseudonym of the Kermany id in the file name, never the raw id
    by_file = frame.set_index("source_file")
    for path in files[:5]:
        rel = path.relative_to(root).as_posix()
        assert by_file.loc[rel, "patient_id"] == pseudonym(kermany_patient_key(path.name), secret, "pat")
        assert by_file.loc[rel, "sha256"] == file_sha256(path)
        stored = np.asarray(Image.open(Workspace.at(tmp_path / "ws").data / by_file.loc[rel, "path"]))
        assert np.array_equal(stored, preprocess.prepare_file(path, params.preprocess))
    assert not frame["patient_id"].str.contains("person|IM-", regex=True).any()
    # official test split kept; val carved out of train by patient
    counts = frame["split"].value_counts().to_dict()
    assert counts["test"] == 20 and counts["train"] + counts["val"] == 21 and counts["val"] > 0
    train_patients = set(frame.loc[frame["split"] == "train", "patient_id"])
    assert not train_patients & set(frame.loc[frame["split"] == "val", "patient_id"])
    warts = find_warts(frame)
    assert any(
        twin.name in frame.set_index("id").loc[i, "source_file"]
        for g in warts.within_split + warts.across_splits
        for i in g["ids"]
    )


def test_inbox_is_ingested_incrementally_and_versions_follow_content(tmp_path, secret):
    root, inbox = tmp_path / "cx", tmp_path / "inbox"
    copy_chest_subset(root, per_class=8)
    # a patient with two pneumonia images: the first in the source now, the second in the inbox later
    by_patient: dict[str, list[Path]] = {}
    for path in sorted((CHEST / "train" / "PNEUMONIA").iterdir())[8:]:
        by_patient.setdefault(kermany_patient_key(path.name), []).append(path)
    first_image, sibling = next(paths for paths in by_patient.values() if len(paths) >= 2)[:2]
    shutil.copy(first_image, root / "train" / "PNEUMONIA" / first_image.name)
    params = _params(tmp_path / "ws", source="image_folder", root=str(root), inbox=str(inbox))
    ws = Workspace.at(tmp_path / "ws")
    first = ingest.run(params, ws)  # the inbox does not exist yet: nothing from it
    assert first.new_version and first.n_decoded == 33

    again = ingest.run(params, ws)
    assert again.data_version == first.data_version and not again.new_version
    assert again.n_decoded == 0 and again.n_cached == 33

    before = manifest.read(ws.data)
    # three new files: two images of new patients and the second image of a patient already in the data
    (inbox / "NORMAL").mkdir(parents=True)
    (inbox / "PNEUMONIA").mkdir(parents=True)
    new_normal = sorted((CHEST / "train" / "NORMAL").iterdir())[100:102]
    for src in new_normal:
        shutil.copy(src, inbox / "NORMAL" / src.name)
    shutil.copy(sibling, inbox / "PNEUMONIA" / sibling.name)

    third = ingest.run(params, ws)
    assert third.new_version and third.data_version != first.data_version
    assert third.n_decoded == 3 and third.n_cached == 33 and third.n_images == 36
    after = manifest.read(ws.data)
    old = before.set_index("id")[["split", "sha256", "path"]]
    assert after.set_index("id").loc[old.index, ["split", "sha256", "path"]].equals(old)  # nothing moved
    rows = after.set_index("source_file")
    added = rows.loc[f"inbox/PNEUMONIA/{sibling.name}"]
    same_patient = after[(after["patient_id"] == added["patient_id"]) & ~after["source_file"].str.startswith("inbox/")]
    assert set(same_patient["split"]) == {added["split"]}
    assert (rows.loc[[f"inbox/NORMAL/{p.name}" for p in new_normal], "source"] == "inbox").all()
    assert (ws.data_versions / f"{first.data_version}.dvc").is_file()


def test_missing_secret_is_a_clear_error_and_demo_mode_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MEDIMG_DEID_SECRET", raising=False)
    root = tmp_path / "cx"
    copy_chest_subset(root, per_class=2)
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(MissingSecretError, match="MEDIMG_DEID_SECRET is not set"):
        ingest.run(_params(ws.root, source="image_folder", root=str(root)), ws)
    assert not ws.data.exists()
    with caplog.at_level(logging.WARNING, logger="medimg"):
        summary = ingest.run(
            _params(ws.root, source="image_folder", root=str(root), deid={"demo": True}, workers=1), ws
        )
    assert summary.n_images == 8
    assert any("PUBLIC demo" in r.getMessage() for r in caplog.records)


def _bad_rasters(folder: Path) -> dict[str, str]:
    """One file of each kind of bad PNG/JPEG in ``folder``; name -> expected reason."""
    good = (CHEST / "test" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes()
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.jpeg").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpeg").write_text("not an image at all\n")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / "tiny.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "anim.png", format="GIF")
    return {
        "empty.png": "empty",
        "cut.jpeg": "truncated",
        "notes.jpeg": "not_an_image",
        "tiny.png": "too_small",
        "anim.png": "unsupported_format",
    }


def _quarantine_rows(csv_file: Path) -> dict[str, str]:
    with open(csv_file, newline="") as handle:
        return {row["path"]: row["reason"] for row in csv.DictReader(handle)}


def test_every_bad_raster_kind_is_quarantined_and_the_rest_lands(tmp_path, secret, caplog):
    root = tmp_path / "cx"
    copy_chest_subset(root, per_class=6)
    expected = {f"train/NORMAL/{name}": reason for name, reason in _bad_rasters(root / "train" / "NORMAL").items()}
    (root / "train" / "OTHER").mkdir()
    shutil.copy(CHEST / "test" / "NORMAL" / "IM-0001-0001.jpeg", root / "train" / "OTHER" / "x.jpeg")
    expected["train/OTHER/x.jpeg"] = "unknown_class"
    ws = Workspace.at(tmp_path / "ws")
    with caplog.at_level(logging.WARNING, logger="medimg"):
        summary = ingest.run(_params(ws.root, source="image_folder", root=str(root), max_bad_fraction=0.5), ws)
    assert _quarantine_rows(summary.quarantine_csv) == expected
    assert summary.n_images == 24 and summary.n_files == 30 and summary.n_quarantined == 6
    with open(summary.quarantine_csv, newline="") as handle:  # the owner's report: where each file is
        assert {row["file"]: row["reason"] for row in csv.DictReader(handle)} == {
            f"source/{name}": reason for name, reason in expected.items()
        }
    # the log names files by pseudonym only (file names can hold patient names)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(
        f"quarantined {pseudonym(f'source/{name}', secret, 'file')}: {reason}" in logged
        for name, reason in expected.items()
    )
    assert not any(Path(name).name in logged for name in expected)

    # a stricter threshold fails the run, writes the list anyway and leaves the data version alone
    (ws.reports / "quarantine.csv").unlink()
    with pytest.raises(QuarantineThresholdError, match=r"6 of 30 files \(20.0%\)"):
        ingest.run(_params(ws.root, source="image_folder", root=str(root), max_bad_fraction=0.1), ws)
    assert len(_quarantine_rows(ws.reports / "quarantine.csv")) == 6
    from medimg.data import versioning

    assert versioning.current_version(ws) == summary.data_version


def test_unreadable_files_are_quarantined_and_the_ingest_goes_on(tmp_path, secret):
    """A file that lists as a file but cannot be read (``/proc/self/mem`` fails with EIO, even for
    root, whom chmod 000 does not stop): quarantined, whether it was to be decoded or set aside."""
    root = tmp_path / "cx"
    copy_chest_subset(root, per_class=3)
    (root / "train" / "OTHER").mkdir()
    for folder in ("NORMAL", "OTHER"):
        (root / "train" / folder / "unreadable.jpeg").symlink_to("/proc/self/mem")
    ws = Workspace.at(tmp_path / "ws")
    params = _params(ws.root, source="image_folder", root=str(root), max_bad_fraction=0.5)
    summary = ingest.run(params, ws)
    assert _quarantine_rows(summary.quarantine_csv) == {
        "train/NORMAL/unreadable.jpeg": "not_an_image",
        "train/OTHER/unreadable.jpeg": "unknown_class",
    }
    assert summary.n_images == 12 and summary.n_files == 14
    assert ingest.run(params, ws).source_md5 == summary.source_md5


# --------------------------------------------------------------------------- DICOM folders


def _dicom_folder(root: Path) -> dict[str, str]:
    """The shared samples (xray/ct/mr, incl. the truncated MR) plus one file of each other bad kind.

    Returns rel path -> expected quarantine reason.
    """
    copy_dicom_samples(root)
    bad = root / "mr"
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "notes.dcm").write_text("a text file renamed .dcm\n")
    shutil.copy(get_testdata_file("reportsi.dcm"), bad / "report.dcm")  # a structured report: skipped, not bad
    ds = pydicom.dcmread(DICOM / "mr" / "MR_small.dcm")
    del ds.PixelData  # an MR image without its pixels: a broken image
    ds.save_as(bad / "no_pixels.dcm")
    shutil.copy(get_testdata_file("rtdose_1frame.dcm"), bad / "dose.dcm")  # 10 x 10
    shutil.copy(get_testdata_file("rtdose.dcm"), bad / "dose_frames.dcm")  # 15 frames
    ds = pydicom.dcmread(DICOM / "ct" / "CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.save_as(root / "ct" / "burned.dcm")
    ds = pydicom.dcmread(DICOM / "mr" / "MR_small.dcm")
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds.PixelData = encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG-2: no decoder
    ds.save_as(bad / "mpeg2.dcm", enforce_file_format=True)
    return {
        "mr/MR_truncated.dcm": "truncated",
        "mr/empty.dcm": "empty",
        "mr/notes.dcm": "not_an_image",
        "mr/no_pixels.dcm": "missing_pixel_data",
        "mr/dose.dcm": "too_small",
        "mr/dose_frames.dcm": "multiframe",
        "ct/burned.dcm": "burned_in_annotation",
        "mr/mpeg2.dcm": "unsupported_transfer_syntax",
    }


def test_every_bad_dicom_kind_is_quarantined_and_the_rest_lands(tmp_path, secret):
    root = tmp_path / "dicom"
    expected = _dicom_folder(root)
    ws = Workspace.at(tmp_path / "ws")
    params = _params(
        ws.root,
        source="dicom_folder",
        root=str(root),
        dicom={"label_key": "folder"},
        max_bad_fraction=0.5,
        split={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
    )
    summary = ingest.run(params, ws)
    refs = {pseudonym(f"source/{rel}", secret, "file"): reason for rel, reason in expected.items()}
    assert _quarantine_rows(summary.quarantine_csv) == refs  # named by pseudonym: DICOM file names can be UIDs
    # the structured report is no image: skipped with its SOP Class, beside the labels CSV
    with open(summary.skipped_files_csv, newline="") as handle:
        assert [tuple(row.values()) for row in csv.DictReader(handle)] == [
            ("source/labels.csv", "labels_csv", ""),
            ("source/mr/report.dcm", "non_image_dicom", "Basic Text SR Storage"),
        ]
    frame = manifest.read(ws.data)
    assert len(frame) == 10 and summary.n_files == 18 and summary.n_skipped_files == 2
    assert set(frame["modality"]) == {"CR", "CT", "MR"} and set(frame["file_format"]) == {"dicom"}
    assert frame.groupby("label")["source_file"].count().to_dict() == {0: 7, 1: 3}
    assert frame["patient_id"].str.match(r"^pat-[0-9a-f]{16}$").all() and frame["study_id"].notna().all()
    # six patients in the samples; a patient's images never straddle splits
    assert frame["patient_id"].nunique() == 6 and (frame.groupby("patient_id")["split"].nunique() == 1).all()
    mono1 = frame[frame["photometric"] == "MONOCHROME1"]
    assert set(mono1["bit_depth"]) == {8, 15} and len(mono1) == 2

    # the burned-in file lands when params allow it; keyed labels by file and by SOP Instance UID
    allowed = params.model_copy(
        update={
            "data": params.data.model_copy(
                update={"dicom": params.data.dicom.model_copy(update={"allow_burned_in": True})}
            )
        }
    )
    assert ingest.run(allowed, ws).n_images == 11


def test_jpeg2000_reduce_changes_only_the_jpeg2000_images_and_keeps_the_original_sizes(tmp_path, secret):
    root = tmp_path / "dicom"
    _dicom_folder(root)
    frames, images = {}, {}
    for reduce in (False, True):
        ws = Workspace.at(tmp_path / f"ws-{reduce}")
        params = _params(
            ws.root,
            source="dicom_folder",
            root=str(root),
            dicom={"label_key": "folder"},
            max_bad_fraction=0.5,
            split={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
        )
        params = params.model_copy(
            update={
                "preprocess": params.preprocess.model_copy(update={"interpolation": "area", "jpeg2000_reduce": reduce})
            }
        )
        ingest.run(params, ws)
        frame = manifest.read(ws.data).set_index("sha256").sort_index()
        frames[reduce] = frame
        images[reduce] = {
            sha: np.asarray(Image.open(ws.data / rel), dtype=np.float64) for sha, rel in frame["path"].items()
        }
    full, fast = frames[False], frames[True]
    same = ["original_height", "original_width", "bit_depth", "photometric", "modality", "patient_id", "split", "label"]
    pd.testing.assert_frame_equal(full[same], fast[same])
    assert full["contract_hash"].nunique() == fast["contract_hash"].nunique() == 1
    assert full["contract_hash"].iloc[0] != fast["contract_hash"].iloc[0]
    changed = {sha for sha in full.index if not np.array_equal(images[False][sha], images[True][sha])}
    # RG1_J2KI and MR2_J2KI are the JPEG 2000 files large enough to reduce (693_J2KI's header and
    # codestream disagree on the bit depth, so it is decoded in full): exactly those two change
    big_j2k = {file_sha256(DICOM / rel) for rel in ("xray/RG1_J2KI.dcm", "mr/MR2_J2KI.dcm")}
    assert changed == big_j2k
    for sha in changed:
        a, b = images[False][sha].ravel(), images[True][sha].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.97


def test_dicom_labels_keyed_by_file_or_sop_instance_uid(tmp_path, secret):
    root = tmp_path / "dicom"
    copy_dicom_samples(root, ("xray", "ct"), labels=None)
    files = sorted(p for p in root.rglob("*.dcm"))
    by_file = [(p.relative_to(root).as_posix(), "pneumonia" if "xray" in p.parts else "0") for p in files[:-1]]
    (root / "labels.csv").write_text("key,label\n" + "".join(f"{k},{v}\n" for k, v in by_file))
    ws = Workspace.at(tmp_path / "ws")
    split = {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}
    summary = ingest.run(_params(ws.root, source="dicom_folder", root=str(root), max_bad_fraction=0.5, split=split), ws)
    assert summary.n_images == len(files) - 1 and summary.quarantine_by_reason == {"no_label": 1}

    # the last file again unlabelled (the two 693_* CT files share one SOP Instance UID: one row labels both)
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): "normal" for p in files[:-1]}.items()
    (root / "labels.csv").write_text("uid,diagnosis\n" + "".join(f"{k},{v}\n" for k, v in uids))
    params = _params(
        ws.root,
        source="dicom_folder",
        root=str(root),
        max_bad_fraction=0.5,
        split=split,
        dicom={"label_key": "sop_instance_uid", "key_column": "uid", "label_column": "diagnosis"},
    )
    summary = ingest.run(params, ws)
    assert summary.n_images == len(files) - 1 and summary.quarantine_by_reason == {"no_label": 1}
    # same bytes, contract and secret: only the file the first CSV left unlabelled is decoded now
    assert summary.n_decoded == 1 and summary.n_cached == len(files) - 1
    assert (manifest.read(ws.data)["label"] == 0).all()


def test_one_or_two_decoding_processes_give_the_same_data_version(tmp_path, secret):
    """The dataset is a pure function of the input: process count and completion order do not matter."""
    root = tmp_path / "cx"
    copy_chest_subset(root, per_class=5)
    versions = set()
    for workers in (1, 2):
        ws = Workspace.at(tmp_path / f"ws{workers}")
        versions.add(
            ingest.run(_params(ws.root, source="image_folder", root=str(root), workers=workers), ws).data_version
        )
    assert len(versions) == 1


@pytest.mark.integration
def test_the_whole_kermany_folder_reports_its_duplicates_and_patient_overlap(tmp_path, secret):
    """All 5,840 chest_xray files at 64 px: the data README's warts are found, none is hidden.

    30 groups of byte-identical files, all within one split; 170 Kermany patient ids in both the
    official train and test folders (their images keep the official split, so the overlap shows);
    val is carved from train by patient, so no patient is in both train and val.
    """
    from medimg.data.ingest_folders import ingest_files
    from medimg.validation.warts import find_warts

    params = _params(tmp_path / "ws", source="image_folder", root=str(CHEST), cache=False)
    result = ingest_files(
        "image_folder", params.data, params.task.class_names, params.preprocess, tmp_path / "dataset", secret, CHEST
    )
    assert result.n_images == 5840 and result.split_counts["test"] == 624 and not len(result.quarantine)
    assert result.split_counts["train"] + result.split_counts["val"] == 5216 and result.split_counts["val"] > 400
    frame = manifest.read(tmp_path / "dataset")
    summary = find_warts(frame).summary()
    assert sum(summary["duplicate_groups_within_split"].values()) == 30 and summary["hashes_across_splits"] == 0
    assert summary["patients_across_splits"] == 170
    assert set(summary["patients_across_splits_by_splits"]) <= {"train|test", "val|test"}


# --------------------------------------------------------------------------- decode cache, scans, walks


def test_the_decode_cache_keeps_a_result_per_decoder_kind(tmp_path, secret):
    """The same bytes read as a raster and as DICOM are two outcomes: a cached one never serves the other."""
    from medimg.data.decode_pool import DecodeJob, DecodeOptions, decode

    png = tmp_path / "a.png"
    Image.open(sorted((CHEST / "train" / "NORMAL").iterdir())[0]).convert("L").save(png)
    as_dcm = tmp_path / "dicom" / "a.dcm"  # the same bytes under a DICOM name
    as_dcm.parent.mkdir()
    shutil.copy(png, as_dcm)
    dcm = DICOM / "ct" / "CT_small.dcm"
    options = DecodeOptions(
        preprocess=parse_params({"preprocess": {"size": 64}}).preprocess,
        cache_dir=str(tmp_path / "cache"),
        secret=secret,
    )

    def run(*jobs):
        return [(meta, cached) for _, meta, cached in decode(list(jobs), options, workers=1)]

    first = run(DecodeJob(str(png), "png", kind="raster"), DecodeJob(str(dcm), "dcm", kind="dicom"))
    assert [(m["status"], cached) for m, cached in first] == [("ok", False), ("ok", False)]
    assert first[1][0]["patient_pseudonym"]
    again = run(DecodeJob(str(png), "png", kind="raster"), DecodeJob(str(dcm), "dcm", kind="dicom"))
    assert [cached for _, cached in again] == [True, True]
    assert [m for m, _ in again] == [m for m, _ in first]  # the stored kind is not part of what the caller gets
    # the other decoder: decoded again, not the cached "ok" (a raster passed off as DICOM, no pseudonyms)
    other = run(DecodeJob(str(as_dcm), "as_dcm", kind="dicom"), DecodeJob(str(dcm), "dcm-raster", kind="raster"))
    assert [(m["status"], m["reason"], cached) for m, cached in other] == [("bad", "not_an_image", False)] * 2
    assert all("kind" not in m for m, _ in first + other)


def test_file_patients_of_source_and_inbox_never_collide(tmp_path):
    from medimg.data.sources import inbox_files, scan_images

    src = sorted((CHEST / "train" / "NORMAL").iterdir())[0]
    for folder in (tmp_path / "root", tmp_path / "inbox"):
        (folder / "train" / "NORMAL").mkdir(parents=True)
        shutil.copy(src, folder / "train" / "NORMAL" / "x.jpeg")
    [source] = scan_images(tmp_path / "root", "source", patient_id="file")
    [inbox] = inbox_files(tmp_path / "inbox", "image_folder", patient_id="file")
    assert source.rel == inbox.rel == "train/NORMAL/x.jpeg"
    assert source.patient_key == "train/NORMAL/x.jpeg"  # source pseudonyms unchanged
    assert inbox.patient_key == "inbox/train/NORMAL/x.jpeg"


def test_dicom_scan_tree_and_watcher_agree_on_symlinked_folders_and_cycles_end(tmp_path):
    from medimg import watch
    from medimg.data.sources import scan_dicom, tree

    elsewhere = tmp_path / "elsewhere" / "batch"
    elsewhere.mkdir(parents=True)
    inbox = tmp_path / "inbox"
    (inbox / "plain").mkdir(parents=True)
    for i, rel in enumerate(("ct/CT_small.dcm", "mr/MR_small.dcm", "xray/Fake_MONOHR1.dcm")):
        shutil.copy(DICOM / rel, (elsewhere if i else inbox / "plain") / Path(rel).name)
    (inbox / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "up").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a cycle through the link
    (inbox / "plain" / "self").symlink_to(inbox, target_is_directory=True)  # and one back to the root
    (inbox / "labels").write_text("key,label\n")  # a suffix-less labels file is no DICOM
    (inbox / ".hidden").mkdir()
    (inbox / ".hidden" / "h.dcm").write_bytes(b"")

    scanned = [f.rel for f in scan_dicom(inbox, "inbox", "labels")]
    # each folder once: linked/up/batch and plain/self are the folders already walked
    assert scanned == ["linked/Fake_MONOHR1.dcm", "linked/MR_small.dcm", "plain/CT_small.dcm"]
    assert set(tree(inbox)) == {*scanned, "labels"}
    assert set(watch.snapshot(inbox)) == {*scanned, "labels"}
