"""NIfTI files as volumes, on the MSD hippocampus images (and changed copies of them in tmp_path)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from datapaths import HIPPOCAMPUS
from medimg.data.nifti import read_nifti
from medimg.data.volumes import VolumeRefused

# 42 x 51 x 28 voxels (i, j, k): three different lengths, so a swapped axis shows
SAMPLE = HIPPOCAMPUS / "hippocampus_015.nii.gz"


def test_a_hippocampus_image_is_a_canonical_volume_in_slice_row_column_order():
    image = nib.load(SAMPLE)
    assert image.shape == (42, 51, 28) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    volume = read_nifti(SAMPLE, modality="MR")
    assert volume.shape == (28, 51, 42)  # (k, j, i)
    assert volume.voxels.dtype == np.float32 and volume.source_kind == "nifti" and volume.modality == "MR"
    assert volume.spacing == pytest.approx(image.header.get_zooms()[::-1])
    assert volume.axcodes == ("S", "A", "R")
    assert volume.series_uid is None
    data = image.get_fdata()
    np.testing.assert_array_equal(volume.voxels, data.transpose(2, 1, 0))
    # the same point in the world for a voxel: nibabel's RAS+ affine, and ours in LPS (x, y negated)
    for i, j, k in [(0, 0, 0), (41, 50, 27), (20, 7, 13)]:
        ras = image.affine @ [i, j, k, 1]
        lps = volume.affine @ [k, j, i, 1]
        np.testing.assert_allclose(lps[:3], [-ras[0], -ras[1], ras[2]], atol=1e-9)


def test_every_hippocampus_image_is_about_35x50x35_at_1_mm():
    files = sorted(HIPPOCAMPUS.glob("*.nii.gz"))
    assert len(files) == 240
    for path in files[::20]:
        volume = read_nifti(path)
        assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
        assert all(20 <= n <= 60 for n in volume.shape)
        assert volume.voxels.max() > 0


def test_a_reoriented_copy_reads_back_to_the_same_canonical_volume(tmp_path):
    image = nib.load(SAMPLE)
    # axes transposed and flipped, the affine to match: nothing like RAS any more
    turned = image.as_reoriented(np.array([[1, -1], [2, -1], [0, -1]]))
    assert nib.aff2axcodes(turned.affine) == ("I", "L", "P")
    path = tmp_path / "turned.nii.gz"
    nib.save(turned, path)
    original, copy = read_nifti(SAMPLE), read_nifti(path)
    assert copy.shape == original.shape
    np.testing.assert_array_equal(copy.voxels, original.voxels)
    np.testing.assert_allclose(copy.affine, original.affine, atol=1e-6)


def test_a_singleton_fourth_dimension_is_dropped_and_a_real_one_refused(tmp_path):
    image = nib.load(SAMPLE)
    data = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(data[..., np.newaxis], image.affine), tmp_path / "one.nii.gz")
    assert read_nifti(tmp_path / "one.nii.gz").shape == (28, 51, 42)
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), image.affine), tmp_path / "two.nii.gz")
    with pytest.raises(VolumeRefused) as info:
        read_nifti(tmp_path / "two.nii.gz")
    assert info.value.reason == "not_3d"


def test_non_finite_voxels_and_non_nifti_files_are_refused(tmp_path):
    image = nib.load(SAMPLE)
    data = image.get_fdata(dtype=np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), tmp_path / "nan.nii.gz")
    with pytest.raises(VolumeRefused) as info:
        read_nifti(tmp_path / "nan.nii.gz")
    assert info.value.reason == "non_finite" and "1 of" in info.value.detail
    (tmp_path / "text.nii.gz").write_text("not a volume")
    with pytest.raises(VolumeRefused) as info:
        read_nifti(tmp_path / "text.nii.gz")
    assert info.value.reason == "unreadable"
    assert "text.nii.gz" not in str(info.value)
