"""Dice, HD95 and volume error per case and structure: cases small enough to work out by hand, the empty-mask
conventions, and real MSD hippocampus masks against themselves and against shifted copies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datapaths import HIPPOCAMPUS
from medimg.data.nifti import read_nifti
from medimg.segmentation.metrics import (
    case_dice,
    case_scores,
    case_table,
    dice,
    hd95,
    volume_ml,
    voxel_confusion,
    voxel_volume_ml,
)

LABELS = HIPPOCAMPUS.parent / "labelsTr"
STRUCTURES = ("anterior", "posterior")


def _cube(z0: int, y0: int = 2, x0: int = 2, side: int = 4, shape=(12, 12, 12)) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    out[z0 : z0 + side, y0 : y0 + side, x0 : x0 + side] = 1
    return out


def _real_mask(name: str = "hippocampus_001.nii.gz", pad: int = 2) -> np.ndarray:
    """A real MSD label map (0/1/2) with ``pad`` background voxels around it, so a shift loses nothing."""
    volume = read_nifti(LABELS / name, "MR")
    return np.pad(np.rint(volume.voxels).astype(np.uint8), pad)


# --------------------------------------------------------------------------- by hand


def test_two_cubes_offset_by_two_slices_with_anisotropic_spacing() -> None:
    # 4x4x4 cubes, the second two slices further along z: they share 2 of their 4 slices.
    a, b = _cube(2), _cube(4)
    # Dice = 2 * (2 * 4 * 4) / (64 + 64) = 0.5
    assert dice(a, b) == 0.5
    # Surface = the cube's 56 edge voxels (64 minus the 2x2x2 core). From a's edge to b's (spacing z 2 mm):
    # the 16 voxels of a's bottom face (z=2) are 2 slices = 4 mm from b's (z=4); its z=3 ring (12) 2 mm; its z=4
    # ring (12) and z=5 ring (12) lie on b's edge (0 mm); the 4 inner voxels of a's top face (z=5) are 1 mm
    # (one voxel along y or x) from b's side walls. Sorted: 24 x 0, 4 x 1, 12 x 2, 16 x 4; the 95th percentile
    # (position 0.95 * 55 = 52.25) falls in the 4 mm block, and b to a is the mirror image: HD95 = 4 mm.
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(4.0)
    # the same voxels at 1 mm and at 0.5 mm along z: the offset is 2 mm and 1 mm
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(a, b, (0.5, 1.0, 1.0)) == pytest.approx(1.0)


def test_the_spacing_applies_along_its_own_axis() -> None:
    a = _cube(2)
    shifted_in_x = _cube(2, x0=4)  # two voxels along x, 0.5 mm each
    assert dice(a, shifted_in_x) == 0.5
    assert hd95(a, shifted_in_x, (2.0, 1.0, 0.5)) == pytest.approx(1.0)
    assert hd95(a, shifted_in_x, (2.0, 1.0, 3.0)) == pytest.approx(6.0)


def test_two_parallel_plates_are_their_gap_apart() -> None:
    # single-slice plates are all surface: every voxel is exactly the gap (2 slices x 2 mm) from the other plate
    a, b = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    a[2, 2:6, 2:6] = 1
    b[4, 2:6, 2:6] = 1
    assert dice(a, b) == 0.0
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(4.0)


def test_identical_masks() -> None:
    a = _cube(3)
    assert dice(a, a) == 1.0
    assert hd95(a, a, (1.5, 0.7, 0.7)) == 0.0


def test_empty_masks() -> None:
    empty, cube = np.zeros((12, 12, 12), np.uint8), _cube(2)
    # both empty: nothing to find and nothing found
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    # empty prediction, or empty reference: Dice 0, HD95 undefined (NaN)
    assert dice(empty, cube) == 0.0 and math.isnan(hd95(empty, cube, (1, 1, 1)))
    assert dice(cube, empty) == 0.0 and math.isnan(hd95(cube, empty, (1, 1, 1)))


def test_volumes_in_millilitres() -> None:
    cube = _cube(2)  # 64 voxels
    assert voxel_volume_ml((2.0, 1.0, 0.5)) == pytest.approx(0.001)
    assert volume_ml(cube, (2.0, 1.0, 0.5)) == pytest.approx(0.064)
    assert volume_ml(cube, (10.0, 10.0, 10.0)) == pytest.approx(64.0)  # 1 mL per 10 mm cube


def test_case_scores_per_structure() -> None:
    reference = np.zeros((12, 12, 12), np.uint8)
    reference[_cube(2) == 1] = 1  # anterior: 64 voxels
    reference[8:10, 8:10, 8:10] = 2  # posterior: 8 voxels
    predicted = np.zeros_like(reference)
    predicted[_cube(4) == 1] = 1  # anterior two slices off; posterior missed
    scores = case_scores(predicted, reference, (2.0, 1.0, 1.0), STRUCTURES)
    assert scores["dice_anterior"] == 0.5 and scores["hd95_anterior"] == pytest.approx(4.0)
    assert scores["volume_error_ml_anterior"] == 0.0
    assert scores["reference_ml_anterior"] == pytest.approx(0.128)  # 64 voxels x 2 mm^3
    assert scores["dice_posterior"] == 0.0 and math.isnan(scores["hd95_posterior"])
    assert scores["volume_error_ml_posterior"] == pytest.approx(0.016)  # 8 voxels x 2 mm^3 missed
    assert scores["predicted_ml_posterior"] == 0.0


def test_case_table_and_dice_matrix() -> None:
    reference = np.stack([_cube(2), _cube(2), np.zeros((12, 12, 12), np.uint8)])
    predicted = np.stack([_cube(2), _cube(4), np.zeros((12, 12, 12), np.uint8)])
    table = case_table(["a", "b", "c"], predicted, reference, [(1, 1, 1)] * 3, ("structure",))
    assert table["id"].tolist() == ["a", "b", "c"]
    assert table["dice_structure"].tolist() == [1.0, 0.5, 1.0]
    assert table["hd95_structure"].tolist() == [0.0, 2.0, 0.0]
    assert table["mean_dice"].tolist() == [1.0, 0.5, 1.0]
    assert case_dice(predicted, reference, ("structure",)).tolist() == [[1.0], [0.5], [1.0]]


def test_voxel_confusion_counts() -> None:
    reference = np.array([[[0, 1, 1, 2]]], np.uint8)
    predicted = np.array([[[0, 1, 2, 2]]], np.uint8)
    assert voxel_confusion(predicted, reference, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"0\.\.1"):
        voxel_confusion(predicted, reference, 2)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(_cube(2), _cube(2), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(_cube(2), _cube(2), (1.0, 1.0))
    with pytest.raises(ValueError, match="ids"):
        case_table(["a"], np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 4)), [(1, 1, 1)] * 2, STRUCTURES)


# --------------------------------------------------------------------------- real MSD hippocampus masks


def test_a_real_mask_against_itself() -> None:
    mask = _real_mask()
    assert set(np.unique(mask)) == {0, 1, 2}
    scores = case_scores(mask, mask, (1.0, 1.0, 1.0), STRUCTURES)
    for name in STRUCTURES:
        assert scores[f"dice_{name}"] == 1.0
        assert scores[f"hd95_{name}"] == 0.0
        assert scores[f"volume_error_ml_{name}"] == 0.0
    # hippocampus_001: 1324 anterior and 1624 posterior voxels of 1 mm^3
    assert scores["reference_ml_anterior"] == pytest.approx(1.324)
    assert scores["reference_ml_posterior"] == pytest.approx(1.624)


@pytest.mark.parametrize("name", ["hippocampus_001.nii.gz", "hippocampus_172.nii.gz", "hippocampus_394.nii.gz"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_real_mask_shifted_by_one_voxel_is_one_spacing_away(name: str, axis: int) -> None:
    # Each surface voxel of the shifted copy is a surface voxel of the original moved one voxel, so no distance
    # exceeds one spacing along that axis; a one-voxel shift of a real structure moves far more than 5% of its
    # surface, so at 1 mm the 95th percentile is exactly 1 mm. The volume is unchanged.
    mask = _real_mask(name)
    shifted = np.roll(mask, 1, axis=axis)
    iso = case_scores(shifted, mask, (1.0, 1.0, 1.0), STRUCTURES)
    for structure in STRUCTURES:
        assert iso[f"hd95_{structure}"] == 1.0
        assert 0.5 < iso[f"dice_{structure}"] < 1.0
        assert iso[f"volume_error_ml_{structure}"] == pytest.approx(0.0, abs=1e-12)
    # anisotropic: the shift is spacing[axis] mm; a surface voxel nearer along a finer axis can only be closer
    spacing = (2.0, 1.5, 1.2)
    scores = case_scores(shifted, mask, spacing, STRUCTURES)
    for structure in STRUCTURES:
        assert 0.0 < scores[f"hd95_{structure}"] <= spacing[axis] + 1e-6, (structure, scores)  # MONAI: float32
        assert scores[f"dice_{structure}"] == iso[f"dice_{structure}"]  # Dice counts voxels, spacing-free


def test_a_real_mask_against_an_empty_prediction() -> None:
    mask = _real_mask()
    scores = case_scores(np.zeros_like(mask), mask, (1.0, 1.0, 1.0), STRUCTURES)
    assert scores["dice_anterior"] == 0.0 and math.isnan(scores["hd95_anterior"])
    assert scores["volume_error_ml_anterior"] == pytest.approx(1.324)
    assert scores["volume_error_ml_posterior"] == pytest.approx(1.624)
