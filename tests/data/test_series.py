"""DICOM series folders as volumes, on the shared real series (and broken copies of them in tmp_path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from datapaths import CHEST, CT_SERIES, CT_TILTED, MR_SMALL, MR_STUDY
from medimg.data.dicom_frames import slice_values
from medimg.data.series import read_series, read_series_folder, scan_series_folder
from medimg.data.slice_stack import StackRules
from medimg.data.volumes import VolumeRefused

# Identifying attributes whose values must not reach a volume (besides the documented series_uid).
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "AccessionNumber",
    "StudyInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "InstitutionName",
    "SeriesInstanceUID",
)


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*")) if p.is_file()]


def _identifying_values(folder: Path) -> set[str]:
    """Values of IDENTIFYING attributes in the folder's headers, long enough to be searched for."""
    values = set()
    for ds in _headers(folder):
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 4:
                values.add(value)
    return values


def test_the_jpeg2000_ct_is_a_20_slice_volume_2_mm_apart_in_hounsfield_units():
    result = read_series_folder(CT_SERIES)
    assert not result.skipped and not result.unreadable and not result.refused
    (volume,) = result.volumes
    assert volume.shape == (20, 512, 512)
    assert volume.voxels.dtype == np.float32
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.modality == "CT" and volume.source_kind == "dicom_series" and volume.corrections == ()
    # axial, ordered along the normal (+z, feet to head): the first plane is the lowest slice
    assert volume.axcodes == ("S", "P", "L")
    headers = {p.name: pydicom.dcmread(p, stop_before_pixels=True) for p in CT_SERIES.iterdir()}
    lowest = min(headers, key=lambda name: float(headers[name].ImagePositionPatient[2]))
    assert volume.origin == pytest.approx([float(v) for v in headers[lowest].ImagePositionPatient])
    # HU: the stored values through Rescale Slope 1 / Intercept -1024, read here with pydicom alone
    raw = pydicom.dcmread(CT_SERIES / lowest).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(volume.voxels[0], raw * 1.0 - 1024.0)
    assert np.median(volume.voxels[:, :32, :32]) < -900  # air around the patient
    assert 0 <= np.median(volume.voxels[:, 240:272, 240:272]) <= 100  # soft tissue in the abdomen
    # the files carry no SeriesInstanceUID (blanked by their anonymiser): grouped by folder, uid None
    assert all(not str(ds.get("SeriesInstanceUID", "")).strip() for ds in headers.values())
    assert volume.series_uid is None


def test_the_mr_study_folder_gives_its_five_series_with_their_sizes():
    result = read_series_folder(MR_STUDY)
    assert not result.refused and not result.skipped and not result.unreadable
    assert len(result.volumes) == 5
    shapes = sorted(v.shape for v in result.volumes)
    assert shapes == [(22, 320, 280)] * 4 + [(40, 50, 34)]
    uids = {str(ds.SeriesInstanceUID): ds for ds in _headers(MR_STUDY)}
    assert {v.series_uid for v in result.volumes} == set(uids)  # one volume per SeriesInstanceUID
    for outcome in result.outcomes:
        volume = outcome.volume
        assert volume is not None and volume.modality == "MR"
        assert {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in outcome.files} == {
            volume.series_uid
        }
        header = uids[volume.series_uid]
        if volume.shape[0] == 22:  # the oblique axial series: 6.5 mm apart, as the header's Spacing Between Slices
            assert volume.spacing[0] == pytest.approx(float(header.SpacingBetweenSlices), abs=0.01)
            assert volume.spacing[1:] == pytest.approx([float(v) for v in header.PixelSpacing])
        else:
            assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))


def test_no_identifying_value_reaches_a_volume_but_its_documented_series_uid():
    for folder in (MR_STUDY, CT_TILTED):
        identifying = _identifying_values(folder)
        assert identifying  # the headers do hold names, IDs, dates and UIDs
        for volume in read_series_folder(folder).volumes:
            shown = " ".join(
                [
                    repr(volume),
                    repr(volume.spacing),
                    repr(volume.origin),
                    repr(volume.direction),
                    repr(volume.modality),
                    repr(volume.source_kind),
                    repr(volume.corrections),
                ]
            )
            assert not [value for value in identifying if value in shown]
            assert volume.series_uid in identifying  # the one identifying field, documented as such


def test_a_series_with_a_slice_removed_is_refused_with_missing_slices(tmp_path):
    folder = _copy(CT_SERIES, tmp_path / "ct")
    files = sorted(folder.iterdir())
    files[10].unlink()
    (outcome,) = read_series_folder(folder).outcomes
    assert outcome.volume is None and outcome.refused is not None
    assert outcome.refused.reason == "missing_slices"
    assert "4.000 mm" in outcome.refused.detail and "2.000 mm" in outcome.refused.detail
    assert len(outcome.files) == 19
    assert not any(f.name in str(outcome.refused) for f in files)  # no file name in the message


def test_a_copied_slice_is_refused_as_a_duplicate_position(tmp_path):
    folder = _copy(CT_SERIES, tmp_path / "ct")
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "copy_of_a_slice")
    with pytest.raises(VolumeRefused) as info:
        read_series(sorted(folder.iterdir()))
    assert info.value.reason == "duplicate_positions"
    assert len(info.value.files) == 21


def test_a_truncated_slice_refuses_its_series_with_bad_slice(tmp_path):
    folder = _copy(CT_SERIES, tmp_path / "ct")
    victim = sorted(folder.iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # cut inside the JPEG 2000 pixel data; the header is whole
    (outcome,) = read_series_folder(folder).outcomes
    assert outcome.refused is not None and outcome.refused.reason == "bad_slice"
    assert "truncated" in outcome.refused.detail
    assert victim in outcome.refused.files


def test_every_file_of_a_mixed_folder_is_a_series_file_skipped_or_unreadable(tmp_path):
    root = tmp_path / "study"
    _copy(MR_STUDY / "11_HCropVolume", root / "crop")
    shutil.copy(MR_SMALL, root / "single_slice")  # a one-slice series, no extension
    shutil.copy(str(get_testdata_file("test-SR.dcm")), root / "report.dcm")
    shutil.copy(str(get_testdata_file("DICOMDIR")), root / "DICOMDIR")
    shutil.copy(next((CHEST / "test" / "NORMAL").iterdir()), root / "photo.jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.dcm").write_text("a text file named like DICOM")
    (root / ".DS_Store").write_bytes(b"\0" * 16)
    (root / "Thumbs.db").write_bytes(b"\0" * 16)

    result = read_series_folder(root)
    in_series = [f for o in result.outcomes for f in o.files]
    skipped = {s.rel: s.reason for s in result.skipped}
    unreadable = {b.path.name: b.reason for b in result.unreadable}
    all_files = [p for p in root.rglob("*") if p.is_file()]
    assert len(in_series) + len(skipped) + len(unreadable) == len(all_files) == 48
    assert skipped == {
        ".DS_Store": "hidden",
        "DICOMDIR": "dicomdir",
        "Thumbs.db": "system_file",
        "notes.txt": "not_an_image_file",
        "photo.jpeg": "outside_layout",
        "report.dcm": "non_image_dicom",
    }
    assert unreadable == {"broken.dcm": "not_an_image"}
    assert [v.shape for v in result.volumes] == [(40, 50, 34)]
    (refused,) = result.refused
    assert refused.reason == "too_few_slices" and refused.files == (root / "single_slice",)
    scan = scan_series_folder(root)
    assert sorted(len(s.files) for s in scan.series) == [1, 40]


def test_the_tilted_ct_is_sheared_and_equalised_onto_an_orthogonal_grid():
    (volume,) = read_series_folder(CT_TILTED).volumes
    assert volume.corrections == ("gantry_tilt", "irregular_spacing")
    headers = sorted(_headers(CT_TILTED), key=lambda ds: float(ds.ImagePositionPatient[2]))
    iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    depths = np.array([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in headers])
    gaps = np.diff(depths)
    # the gaps along the normal are about 4 mm (13), 1.1 mm (1) and 7 mm (13); the table moved along z,
    # 18.5 degrees off the normal
    assert sorted(np.round(gaps).astype(int).tolist()) == [1] + [4] * 13 + [7] * 13
    assert np.degrees(np.arccos(normal[2])) == pytest.approx(18.5, abs=0.05)
    # the grid: the slices' own row and column axes plus the normal, orthogonal
    np.testing.assert_allclose(volume.direction, np.stack([normal, col_dir, row_dir], axis=1), atol=1e-6)
    # 56 planes = 2 x 28 (dcm2niix's cap: the smallest gap, 1.08 mm, would need 134) spanning first to last
    span = depths[-1] - depths[0]
    assert volume.shape == (56, 611, 512)  # 611 rows = 512 + ceil(98.7 px of in-plane shift over the stack)
    assert volume.spacing == pytest.approx((span / 55, 0.48828125, 0.48828125), rel=1e-6)
    # the last slice lies on the last plane with no shift: its values, as they are
    last = slice_values(CT_TILTED / "28.dcm")
    np.testing.assert_allclose(volume.voxels[-1, :512], last, atol=1e-3)
    assert (volume.voxels[-1, 512:] == last.min()).all()  # uncovered canvas: the series' darkest value
    middle = volume.voxels[28]
    assert np.median(middle[250:350, 200:312]) == pytest.approx(30, abs=30)  # brain, in HU
    assert np.median(volume.voxels[:, :20, :20]) < -900


def test_the_tilt_correction_puts_every_voxel_at_its_world_position():
    """On the first 14 slices (evenly 4 mm apart: tilt only), each output voxel's world position,
    from the volume's affine, is sampled from the source slice at that position, located from the
    headers here independently and interpolated linearly between rows."""
    files = sorted(CT_TILTED.iterdir())[:14]
    volume = read_series(files)
    assert volume.corrections == ("gantry_tilt",)
    assert volume.spacing[0] == pytest.approx(4.0, abs=0.01)
    largest_shift = 0.0
    for k in (0, 6, 13):
        ds = pydicom.dcmread(files[k])
        source = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        sy, sx = (float(v) for v in ds.PixelSpacing)
        for r in range(120, 600, 23):
            for c in (100, 256, 400):
                world = (volume.affine @ [k, r, c, 1])[:3] - position
                assert abs(world @ np.cross(iop[:3], iop[3:])) < 1e-3  # on the slice's plane
                i, j = world @ iop[3:] / sy, world @ iop[:3] / sx
                if not 0 <= i <= 510:
                    continue
                assert j == pytest.approx(c, abs=1e-4)  # the shift is along the columns only
                lo = int(np.floor(i))
                expected = (lo + 1 - i) * source[lo, c] + (i - lo) * source[lo + 1, c]
                assert volume.voxels[k, r, c] == pytest.approx(expected, abs=0.05)
                largest_shift = max(largest_shift, abs(i - r))
    assert largest_shift > 30  # stacking the slices unshifted would put some voxels 30+ pixels off


def test_the_tilted_ct_refused_under_the_refusing_rules():
    with pytest.raises(VolumeRefused) as info:
        read_series(sorted(CT_TILTED.iterdir()), StackRules(irregular_spacing="refuse"))
    # spacing is checked before tilt: with both refused, the reason is irregular_spacing
    assert info.value.reason == "irregular_spacing" and "sheared by 18.5 degrees" in info.value.detail
    with pytest.raises(VolumeRefused) as info:
        read_series(sorted(CT_TILTED.iterdir()), StackRules(gantry_tilt="refuse"))
    assert info.value.reason == "gantry_tilt" and "18.5 degrees" in info.value.detail
