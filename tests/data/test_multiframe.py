"""Enhanced multi-frame DICOM as volumes, on pydicom-data's real Enhanced CT and Enhanced MR objects."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from datapaths import CT_SERIES
from medimg.data.multiframe import read_multiframe
from medimg.data.series import read_series_folder
from medimg.data.slice_stack import StackRules
from medimg.data.volumes import VolumeRefused

# Enhanced CT Image Storage: 2 frames of 512x512, 10 mm apart, positions in the per-frame Plane
# Position groups, orientation, pixel measures and rescale in the shared groups.
ENHANCED_CT = str(get_testdata_file("eCT_Supplemental.dcm"))
# Enhanced MR Image Storage with 10 frames but its functional groups stripped: no frame positions.
ENHANCED_MR_NO_GROUPS = str(get_testdata_file("emri_small.dcm"))
TWO_FRAMES = StackRules(min_slices=2)


def test_an_enhanced_ct_becomes_a_volume_from_its_functional_groups():
    volume = read_multiframe(ENHANCED_CT, TWO_FRAMES)
    ds = pydicom.dcmread(ENHANCED_CT)
    shared = ds.SharedFunctionalGroupsSequence[0]
    positions = [
        [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        for item in ds.PerFrameFunctionalGroupsSequence
    ]
    assert volume.shape == (2, 512, 512) and volume.source_kind == "dicom_multiframe" and volume.modality == "CT"
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert volume.spacing == pytest.approx((10.0, *spacing))
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])  # (-1,0,0) x (0,1,0) = (0,0,-1): feet-wards
    np.testing.assert_allclose(volume.direction, np.stack([normal, iop[3:], iop[:3]], axis=1), atol=1e-9)
    assert volume.axcodes == ("I", "P", "R")
    # ordered along the normal: the frame higher up (z -149) comes first, though it is frame 2 in the file
    first = int(np.argmax([p[2] for p in positions]))
    assert first == 1
    assert volume.origin == pytest.approx(positions[first])
    # values through the shared Pixel Value Transformation (intercept -1024): HU
    transform = shared.PixelValueTransformationSequence[0]
    expected = ds.pixel_array[first].astype(np.float64) * float(transform.RescaleSlope) + float(
        transform.RescaleIntercept
    )
    np.testing.assert_array_equal(volume.voxels[0], expected)
    assert np.median(volume.voxels[:, :32, :32]) < -900
    assert volume.series_uid == str(ds.SeriesInstanceUID)


def test_two_frames_are_too_few_under_the_default_rules():
    with pytest.raises(VolumeRefused) as info:
        read_multiframe(ENHANCED_CT)
    assert info.value.reason == "too_few_slices"


def test_frames_without_positions_are_refused_with_missing_geometry():
    with pytest.raises(VolumeRefused) as info:
        read_multiframe(ENHANCED_MR_NO_GROUPS)
    assert info.value.reason == "missing_geometry"
    assert len(info.value.files) == 1


def test_a_multiframe_object_in_a_series_folder_is_a_volume_of_its_own(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(CT_SERIES, folder / "ct")
    shutil.copy(ENHANCED_CT, folder / "enhanced")
    result = read_series_folder(folder, TWO_FRAMES)
    assert not result.refused and not result.skipped and not result.unreadable
    assert sorted((v.source_kind, v.shape) for v in result.volumes) == [
        ("dicom_multiframe", (2, 512, 512)),
        ("dicom_series", (20, 512, 512)),
    ]
