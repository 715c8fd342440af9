"""Ingest of segmentation pairs (``data.source: nifti_pairs``) on the real MSD hippocampus set.

``shared/data/msd_hippocampus`` (read-only): 240 T1 MR crops in ``imagesTr/`` with their masks (0 background,
1 anterior, 2 posterior) in ``labelsTr/``. Most tests copy 20 pairs into tmp_path and break some of them there;
one ingests all 240 (about 2 s).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datapaths import HIPPOCAMPUS
from medimg.config import load_params
from medimg.data import manifest
from medimg.data.deid import pseudonym
from medimg.data.ingest_pairs import PairRefused, grid_distance_mm, ingest_pairs, mask_labels
from medimg.data.nifti import read_nifti
from medimg.data.quarantine import QuarantineThresholdError
from medimg.data.sources import SourceLayoutError
from medimg.segmentation.geometry import unfit
from medimg.steps import ingest, source_check
from medimg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
MSD = HIPPOCAMPUS.parent  # imagesTr/ and labelsTr/
SECRET = "test-secret-for-medimg-pair-ingest-0123456789abcdef"
GRID = (48, 64, 48)
N_SUBSET = 20


@pytest.fixture()
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


def _cases() -> list[str]:
    return sorted(p.name for p in (MSD / "imagesTr").glob("*.nii.gz"))


@pytest.fixture()
def subset(tmp_path) -> Path:
    """The first 20 pairs of the MSD hippocampus set, copied (writable) into ``tmp_path/msd``."""
    root = tmp_path / "msd"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for name in _cases()[:N_SUBSET]:
            target = root / folder / name
            shutil.copyfile(MSD / folder / name, target)
            target.chmod(0o644)
    return root


def _params(root: Path, ws: Path | None = None, **data):
    overrides: dict = {"data": {"root": str(root), "workers": 1, **data}}
    if ws is not None:
        overrides["workspace"] = {"path": str(ws)}
    return load_params(ROOT / "params" / "hippocampus.yaml", overrides=overrides)


def _ingest(params, out: Path, secret: bytes, root: Path):
    return ingest_pairs(
        params.data,
        params.task.class_names,
        params.preprocess,
        out / "data",
        secret,
        root,
        quarantine_csv=out / "quarantine.csv",
        skipped_csv=out / "skipped.csv",
    )


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _source_mask(path: Path) -> np.ndarray:
    return np.rint(read_nifti(path).voxels).astype(np.uint8)


def _save_like(reference: Path, target: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """``array`` (nibabel's (i, j, k) order) as a NIfTI file at ``target`` with ``reference``'s header and affine."""
    image = nib.load(reference)
    header = image.header.copy()
    header.set_data_dtype(array.dtype)
    nib.save(nib.Nifti1Image(array, image.affine if affine is None else affine, header), target)


# --------------------------------------------------------------------------- pure checks


def test_the_grid_distance_is_the_largest_voxel_displacement_in_mm():
    eye = np.eye(4)
    shifted = eye.copy()
    shifted[:3, 3] = (0.0, 2.0, 0.0)
    assert grid_distance_mm(eye, eye, (30, 40, 30)) == 0.0
    assert grid_distance_mm(eye, shifted, (30, 40, 30)) == pytest.approx(2.0)
    scaled = np.diag([1.0, 1.0, 1.01, 1.0])  # 1 % more spacing along the last axis: 0.29 mm at voxel 29
    assert grid_distance_mm(eye, scaled, (30, 40, 30)) == pytest.approx(0.29)


def test_mask_values_must_be_integral_labels_of_the_task():
    assert mask_labels(np.array([0.0, 1.0, 2.0000001]), 3).tolist() == [0, 1, 2]
    assert mask_labels(np.array([0.0, 1.0, 2.0]), 3).dtype == np.uint8
    with pytest.raises(PairRefused, match=r"bad_mask_labels \(labels 7 outside 0\.\.2") as err:
        mask_labels(np.array([0, 1, 7, 7], dtype=np.float32), 3)
    assert err.value.reason == "bad_mask_labels"
    with pytest.raises(PairRefused, match=r"2 voxels not integral \(e\.g\. 0\.5\)"):
        mask_labels(np.array([0.0, 0.5, 0.5, 1.0]), 3)
    with pytest.raises(PairRefused, match=r"labels -1 outside"):
        mask_labels(np.array([-1.0, 0.0]), 3)


# --------------------------------------------------------------------------- the MSD layout


def test_msd_pairs_are_stored_on_the_grid_split_by_case_with_their_masks_intact(tmp_path, secret, subset):
    params = _params(subset)
    result = _ingest(params, tmp_path / "out", secret, subset)
    folder = tmp_path / "out" / "data"
    frame = manifest.read(folder)

    assert result.n_images == N_SUBSET and result.n_files == 2 * N_SUBSET and len(result.quarantine) == 0
    assert result.source_kind == "nifti_pairs" and not result.skipped
    assert manifest.is_segmentation_frame(frame) and manifest.is_volume_frame(frame)
    # seeded, by case: 0.7 / 0.1 / 0.2 of 20 cases in 10 folds of two
    assert result.split_counts == {"train": 14, "val": 2, "test": 4}
    names = _cases()[:N_SUBSET]
    places = {pseudonym(f"source/imagesTr/{n}", secret, "pat"): n for n in names}
    assert sorted(frame["patient_id"]) == sorted(places)  # one patient per case: the image file's pseudonym
    assert sorted(frame["id"]) == sorted(pseudonym(f"source/imagesTr/{n}", secret, "case") for n in names)
    again = _ingest(params, tmp_path / "again", secret, subset)
    assert again.split_counts == result.split_counts
    assert manifest.read(tmp_path / "again" / "data").equals(frame)  # same input, same dataset

    assert set(frame["source_kind"]) == {"nifti_pairs"} and set(frame["file_format"]) == {"nifti"}
    assert set(frame["modality"]) == {"MR"} and set(frame["axcodes"]) == {"SAR"}
    assert (frame[["depth", "height", "width"]].to_numpy() == GRID).all()
    assert set(frame["spacing_z"]) == set(frame["spacing_y"]) == set(frame["spacing_x"]) == {1.0}
    assert set(frame["labels_present"]) == {"1;2"} and set(frame["label"]) == {2}
    assert set(frame["label_name"]) == {"posterior"}
    for row in frame.itertuples():
        image = np.load(folder / row.path, allow_pickle=False)
        mask = np.load(folder / row.mask_path, allow_pickle=False)
        assert image.shape == mask.shape == GRID and image.dtype == mask.dtype == np.uint8
        assert row.path == f"volumes/{row.split}/{row.id}.npy" and row.mask_path == f"masks/{row.split}/{row.id}.npy"
        source = _source_mask(MSD / "labelsTr" / places[row.patient_id])
        assert (row.original_depth, row.original_height, row.original_width) == source.shape
        # the stored mask is the source's, voxel for voxel, at the recorded offset; nothing cropped
        offset = (row.offset_z, row.offset_y, row.offset_x)
        assert np.array_equal(unfit(mask, offset, source.shape), source)
        assert (
            np.bincount(mask.ravel(), minlength=3)[1:].tolist() == np.bincount(source.ravel(), minlength=3)[1:].tolist()
        )
        assert row.foreground_fraction == pytest.approx(np.count_nonzero(source) / np.prod(GRID))
        assert image[mask > 0].mean() > image.mean()  # the hippocampus is brighter than the padded grid's mean


def test_broken_pairs_are_quarantined_and_junk_skipped_each_with_its_reason(tmp_path, secret, subset):
    images, masks = subset / "imagesTr", subset / "labelsTr"
    names = _cases()[:N_SUBSET]
    shapes = {n: nib.load(images / n).shape for n in names}
    mismatched = names[0]
    other = next(n for n in names if shapes[n] != shapes[mismatched])
    shutil.copyfile(masks / other, masks / mismatched)  # another case's mask, of another shape
    (masks / names[1]).unlink()  # an image without its mask
    (images / names[2]).unlink()  # a mask without its image
    data = np.asarray(nib.load(masks / names[3]).dataobj).copy()
    data[data == 2] = 7  # posterior relabelled 7: not a label of the task
    _save_like(masks / names[3], masks / names[3], data)
    raw = (images / names[4]).read_bytes()
    (images / names[4]).write_bytes(raw[: len(raw) // 2])  # a truncated .nii.gz
    shifted = nib.load(masks / names[5]).affine.copy()
    shifted[1, 3] += 2.0  # the mask 2 mm anterior of its image
    _save_like(masks / names[5], masks / names[5], np.asarray(nib.load(masks / names[5]).dataobj), shifted)
    for folder, dtype in ((images, np.float32), (masks, np.uint8)):  # a case 70 voxels long: larger than the grid
        array = np.asarray(nib.load(folder / names[6]).dataobj)
        padded = np.zeros((array.shape[0], 70, array.shape[2]), dtype=dtype)
        padded[:, : array.shape[1]] = array
        _save_like(folder / names[6], folder / names[6], padded)
    halves = np.asarray(nib.load(masks / names[7]).dataobj).astype(np.float32) * 0.5  # 0.5 and 1.0: not integral
    _save_like(masks / names[7], masks / names[7], halves)
    # MSD's junk and extras
    (subset / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Anterior"}}))
    (images / f"._{names[8]}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (masks / f"._{names[8]}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (subset / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (masks / "README.txt").write_text("labels: 1 anterior, 2 posterior\n")
    (subset / "imagesTs").mkdir()
    shutil.copyfile(MSD / "imagesTr" / names[9], subset / "imagesTs" / "hippocampus_999.nii.gz")

    params = _params(subset, max_bad_fraction=0.5)
    result = _ingest(params, tmp_path / "out", secret, subset)
    frame = manifest.read(tmp_path / "out" / "data")
    quarantined = _rows(tmp_path / "out" / "quarantine.csv")
    skipped = _rows(tmp_path / "out" / "skipped.csv")

    by_file = {row["file"]: row for row in quarantined}
    expected = {
        f"source/imagesTr/{mismatched}": "pair_shape_mismatch",
        f"source/labelsTr/{mismatched}": "pair_shape_mismatch",
        f"source/imagesTr/{names[1]}": "unpaired_image",
        f"source/labelsTr/{names[2]}": "unpaired_mask",
        f"source/imagesTr/{names[3]}": "bad_mask_labels",
        f"source/labelsTr/{names[3]}": "bad_mask_labels",
        f"source/imagesTr/{names[4]}": "unreadable",
        f"source/labelsTr/{names[4]}": "unreadable",
        f"source/imagesTr/{names[5]}": "pair_geometry_mismatch",
        f"source/labelsTr/{names[5]}": "pair_geometry_mismatch",
        f"source/imagesTr/{names[6]}": "too_large_for_grid",
        f"source/labelsTr/{names[6]}": "too_large_for_grid",
        f"source/imagesTr/{names[7]}": "bad_mask_labels",
        f"source/labelsTr/{names[7]}": "bad_mask_labels",
    }
    assert {f: r["reason"] for f, r in by_file.items()} == expected
    assert "labels 7 outside 0..2" in by_file[f"source/labelsTr/{names[3]}"]["message"]
    assert "not integral" in by_file[f"source/labelsTr/{names[7]}"]["message"]
    assert "image: " in by_file[f"source/imagesTr/{names[4]}"]["message"]  # which file of the pair failed
    assert "2 mm apart" in by_file[f"source/labelsTr/{names[5]}"]["message"]
    assert f"{tuple(GRID)}: it would be cropped" in by_file[f"source/imagesTr/{names[6]}"]["message"]
    assert "shape" in by_file[f"source/labelsTr/{mismatched}"]["message"]
    assert {(r["file"], r["reason"]) for r in skipped} == {
        ("source/dataset.json", "not_an_image_file"),
        (f"source/imagesTr/._{names[8]}", "hidden"),
        (f"source/labelsTr/._{names[8]}", "hidden"),
        ("source/.DS_Store", "hidden"),
        ("source/labelsTr/README.txt", "not_an_image_file"),
        ("source/imagesTs/hippocampus_999.nii.gz", "outside_layout"),
    }
    assert "dataset description" in next(r["detail"] for r in skipped if r["file"] == "source/dataset.json")

    # every file accounted for: ingested, quarantined or skipped, exactly once
    stored = {pseudonym(f"source/imagesTr/{n}", secret, "case"): n for n in names}
    ingested = {f"source/{d}/{stored[i]}" for i in frame["id"] for d in ("imagesTr", "labelsTr")}
    on_disk = {f"source/{p.relative_to(subset).as_posix()}" for p in subset.rglob("*") if p.is_file()}
    assert len(frame) == N_SUBSET - 8 == result.n_images
    assert ingested | set(by_file) | {r["file"] for r in skipped} == on_disk
    assert len(ingested) + len(by_file) + len(skipped) == len(on_disk)
    assert result.n_files == len(ingested) + len(by_file)


def test_too_many_broken_pairs_stop_the_ingest_before_anything_is_written(tmp_path, secret, subset):
    for name in _cases()[:5]:
        (subset / "labelsTr" / name).unlink()
    params = _params(subset)  # max_bad_fraction 0.05: 5 of 35 files is 14 %
    with pytest.raises(QuarantineThresholdError, match=r"5 of 35 files .*unpaired_image: 5"):
        _ingest(params, tmp_path / "out", secret, subset)
    assert not (tmp_path / "out" / "data" / manifest.MANIFEST_FILE).exists()
    assert len(_rows(tmp_path / "out" / "quarantine.csv")) == 5  # the report is written all the same


def test_a_source_without_the_images_folder_is_a_clear_error(tmp_path, secret):
    (tmp_path / "empty" / "labelsTr").mkdir(parents=True)
    with pytest.raises(SourceLayoutError, match=r"no imagesTr/ folder"):
        _ingest(_params(tmp_path / "empty"), tmp_path / "out", secret, tmp_path / "empty")


def test_inbox_pairs_join_the_dataset_and_the_source_cases_do_not_move(tmp_path, secret, subset):
    params = _params(subset)
    before = _ingest(params, tmp_path / "before", secret, subset)
    inbox = tmp_path / "inbox"
    for folder in ("imagesTr", "labelsTr"):
        (inbox / folder).mkdir(parents=True)
        for name in _cases()[N_SUBSET : N_SUBSET + 3]:
            shutil.copyfile(MSD / folder / name, inbox / folder / name)
    after = ingest_pairs(
        params.data, params.task.class_names, params.preprocess, tmp_path / "after" / "data", secret, subset, inbox
    )
    old = manifest.read(tmp_path / "before" / "data")
    new = manifest.read(tmp_path / "after" / "data")
    assert before.n_images == N_SUBSET and after.n_images == N_SUBSET + 3 and after.n_files == 2 * (N_SUBSET + 3)
    kept = new.set_index("id").loc[old["id"]]
    assert (kept["split"].to_numpy() == old["split"].to_numpy()).all()  # adding cases moves none
    added = new[~new["id"].isin(old["id"])]
    assert sorted(added["id"]) == sorted(
        pseudonym(f"inbox/imagesTr/{n}", secret, "case") for n in _cases()[N_SUBSET : N_SUBSET + 3]
    )
    assert set(added["source"]) == {"inbox"} and set(added["labels_present"]) == {"1;2"}


# --------------------------------------------------------------------------- a pairs CSV


def test_a_pairs_csv_names_pairs_under_other_names_with_its_own_splits(tmp_path, secret):
    root = tmp_path / "pairs"
    (root / "scans").mkdir(parents=True)
    (root / "outlines").mkdir()
    names = _cases()[:8]
    splits = ["train"] * 5 + ["val", "test", "test"]
    lines = ["image,mask,split"]
    for index, (name, split) in enumerate(zip(names, splits, strict=True)):
        shutil.copyfile(MSD / "imagesTr" / name, root / "scans" / f"scan{index}.nii.gz")
        shutil.copyfile(MSD / "labelsTr" / name, root / "outlines" / f"seg{index}.nii.gz")
        lines.append(f"scans/scan{index}.nii.gz,outlines/seg{index}.nii.gz,{split}")
    lines.append("scans/scan8.nii.gz,outlines/seg0-missing.nii.gz,train")  # neither file exists
    shutil.copyfile(MSD / "imagesTr" / _cases()[9], root / "scans" / "scan9.nii.gz")
    lines.append("scans/scan9.nii.gz,outlines/seg9.nii.gz,val")  # its mask does not exist
    shutil.copyfile(MSD / "imagesTr" / _cases()[10], root / "scans" / "unlisted.nii.gz")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    params = _params(
        root,
        segmentation={"layout": "csv", "pairs_csv": "pairs.csv", "split_column": "split"},
        max_bad_fraction=0.5,
    )
    result = _ingest(params, tmp_path / "out", secret, root)
    frame = manifest.read(tmp_path / "out" / "data")

    assert result.split_counts == {"train": 5, "val": 1, "test": 2}  # as the CSV says
    by_id = dict(zip(frame["id"], frame["split"], strict=True))
    for index, split in enumerate(splits):
        assert by_id[pseudonym(f"source/scans/scan{index}.nii.gz", secret, "case")] == split
    assert {(r["file"], r["reason"]) for r in _rows(tmp_path / "out" / "quarantine.csv")} == {
        ("source/scans/scan8.nii.gz", "missing_file"),
        ("source/outlines/seg0-missing.nii.gz", "missing_file"),
        ("source/outlines/seg9.nii.gz", "missing_file"),
        ("source/scans/scan9.nii.gz", "unpaired_image"),
    }
    assert {(r["file"], r["reason"]) for r in _rows(tmp_path / "out" / "skipped.csv")} == {
        ("source/pairs.csv", "labels_csv"),
        ("source/scans/unlisted.nii.gz", "outside_layout"),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,outline\na.nii.gz,b.nii.gz\n", r"missing column\(s\) \['mask'\]"),
        ("image,mask\n../a.nii.gz,b.nii.gz\n", r"line 2: '\.\./a\.nii\.gz' must be a path inside data\.root"),
        ("image,mask\na.nii.gz,m.nii.gz\nb.nii.gz,m.nii.gz\n", r"line 3: m\.nii\.gz is already named on line 2"),
        ("image,mask,split\na.nii.gz,m.nii.gz,holdout\n", r"split 'holdout' is not one of"),
    ],
)
def test_a_broken_pairs_csv_is_a_clear_error(tmp_path, secret, text, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pairs.csv").write_text(text)
    split_column = "split" if "split" in text.splitlines()[0] else None
    params = _params(
        tmp_path / "src", segmentation={"layout": "csv", "pairs_csv": "pairs.csv", "split_column": split_column}
    )
    with pytest.raises(SourceLayoutError, match=message):
        _ingest(params, tmp_path / "out", secret, tmp_path / "src")


# --------------------------------------------------------------------------- the step, DVC, the whole set


def test_the_ingest_step_versions_pairs_and_removes_stale_images_and_masks(tmp_path, secret, subset, caplog):
    ws = Workspace.at(tmp_path / "ws")
    params = _params(subset, ws.root)

    with caplog.at_level(logging.INFO):
        first = source_check.run(params, ws, ingest.run)
        unchanged = source_check.run(params, ws, ingest.run)
    assert first.source_kind == "nifti_pairs" and first.n_images == N_SUBSET and first.new_version
    assert unchanged.skipped and unchanged.data_version == first.data_version
    frame = manifest.read(ws.data)
    stored = sorted(p.relative_to(ws.data).as_posix() for p in ws.data.rglob("*.npy"))
    assert stored == sorted([*frame["path"], *frame["mask_path"]])
    assert (ws.data_versions / f"{first.data_version}.dvc").is_file()
    assert "refused" not in caplog.text and "hippocampus_" not in caplog.text  # logs name cases by pseudonym only

    gone = _cases()[0]
    (subset / "imagesTr" / gone).unlink()
    (subset / "labelsTr" / gone).unlink()
    second = source_check.run(params, ws, ingest.run)
    after = manifest.read(ws.data)
    assert not second.skipped and second.new_version and second.data_version != first.data_version
    assert second.n_images == N_SUBSET - 1
    gone_id = pseudonym(f"source/imagesTr/{gone}", secret, "case")
    assert gone_id in set(frame["id"]) and gone_id not in set(after["id"])
    stored = sorted(p.relative_to(ws.data).as_posix() for p in ws.data.rglob("*.npy"))
    assert stored == sorted([*after["path"], *after["mask_path"]])  # its image and its mask are gone
    assert not any(gone_id in s for s in stored)
    version = json.loads((ws.pipeline / ingest.VERSION_FILE).read_text())
    assert version["source_kind"] == "nifti_pairs" and version["n_images"] == N_SUBSET - 1


def test_all_240_msd_hippocampus_cases_ingest_on_the_grid(tmp_path, secret):
    params = _params(MSD)
    start = time.perf_counter()
    result = _ingest(params, tmp_path / "out", secret, MSD)
    seconds = time.perf_counter() - start
    print(f"\n240-case MSD hippocampus ingest: {seconds:.1f} s")  # reported, not asserted
    frame = manifest.read(tmp_path / "out" / "data")

    assert result.n_images == 240 and result.n_files == 480 and len(result.quarantine) == 0 and not result.skipped
    assert result.split_counts == {"train": 168, "val": 24, "test": 48}
    assert frame["patient_id"].nunique() == 240
    assert set(frame["labels_present"]) == {"1;2"}  # every case outlines both structures
    largest = frame[["original_depth", "original_height", "original_width"]].max().tolist()
    assert (
        all(n <= g for n, g in zip(largest, GRID, strict=True))
        and (frame[["offset_z", "offset_y", "offset_x"]] >= 0).all().all()
    )
    assert 0.01 < frame["foreground_fraction"].min() < frame["foreground_fraction"].max() < 0.04
