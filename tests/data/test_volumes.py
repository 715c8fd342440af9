"""The Volume type: its checks, its repr, reorientation, and the refusal error."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from datapaths import HIPPOCAMPUS, MR_STUDY
from medimg.data.nifti import read_nifti
from medimg.data.series import read_series
from medimg.data.volumes import VOLUME_REASONS, Volume, VolumeRefused, reoriented

SAMPLE = HIPPOCAMPUS / "hippocampus_015.nii.gz"


def test_a_volume_refuses_arrays_and_geometry_that_break_its_conventions():
    volume = read_nifti(SAMPLE)
    with pytest.raises(ValueError, match="float32"):
        replace(volume, voxels=volume.voxels.astype(np.float64))
    with pytest.raises(ValueError, match="3-D"):
        replace(volume, voxels=volume.voxels[0])
    with pytest.raises(ValueError, match="spacing"):
        replace(volume, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="orthonormal"):
        replace(volume, direction=np.diag([1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="source_kind"):
        replace(volume, source_kind="png")
    with pytest.raises(ValueError, match="corrections"):
        replace(volume, corrections=("smoothing",))
    assert not volume.direction.flags.writeable


def test_the_repr_shows_geometry_but_neither_voxels_nor_the_series_uid():
    volume = read_series(sorted((MR_STUDY / "11_HCropVolume").iterdir()))
    assert volume.series_uid and volume.series_uid not in repr(volume)
    assert repr(volume) == (
        "Volume(shape=(40, 50, 34), spacing=(1, 1, 1), origin=(0, 0, 1), axcodes='SPL', modality='MR', "
        "source_kind='dicom_series', corrections=())"
    )


def test_reorienting_keeps_every_voxel_at_its_world_position():
    volume = read_nifti(SAMPLE)  # S, A, R
    turned = reoriented(volume, "SPL")  # a DICOM axial series' usual orientation
    assert turned.axcodes == ("S", "P", "L") and turned.shape == volume.shape
    assert not np.array_equal(turned.voxels, volume.voxels)
    for index in [(0, 0, 0), (27, 50, 41), (13, 20, 9)]:
        world = volume.affine @ [*index, 1]
        k, i, j = np.round(np.linalg.solve(turned.affine, world)[:3]).astype(int)
        assert turned.voxels[k, i, j] == volume.voxels[index]
    back = reoriented(turned, ("S", "A", "R"))
    np.testing.assert_array_equal(back.voxels, volume.voxels)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    transposed = reoriented(volume, "RAS")
    assert transposed.shape == volume.shape[::-1] and transposed.spacing == pytest.approx(volume.spacing[::-1])
    with pytest.raises(ValueError):
        reoriented(volume, "SSR")


def test_volume_refused_carries_a_known_reason_and_survives_pickling(tmp_path):
    with pytest.raises(ValueError):
        VolumeRefused("blurry")
    refused = VolumeRefused("missing_slices", "1 gap(s) of 4.000 mm", (tmp_path / "a", tmp_path / "b"))
    assert str(refused) == "missing_slices (1 gap(s) of 4.000 mm)"
    again = pickle.loads(pickle.dumps(refused))
    assert (again.reason, again.detail, again.files) == (refused.reason, refused.detail, refused.files)
    assert set(VOLUME_REASONS) >= {
        "irregular_spacing",
        "missing_slices",
        "gantry_tilt",
        "inconsistent_geometry",
        "too_few_slices",
    }
    assert isinstance(read_nifti(SAMPLE), Volume)
