"""The stacking rules on plain geometry: ordering, tolerances, the order of the checks, and the interpolation.

The real series are in test_series.py; here the planes are numbers, so each rule's edge can be put
exactly where the docstring of medimg.data.slice_stack says it is.
"""

from __future__ import annotations

import numpy as np
import pytest

from medimg.data.slice_stack import DEFAULT_RULES, SlicePlane, StackRules, plan_stack, stack_slices
from medimg.data.volumes import VolumeRefused

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _planes(depths, orientation=AXIAL, shift_per_mm=0.0, size=(8, 6), spacing=(0.5, 0.5), tilt=None):
    """Axial planes at ``depths`` (mm along z), optionally sheared along y by ``shift_per_mm``."""
    return [
        SlicePlane(
            position=(10.0, -20.0 + shift_per_mm * d, d),
            orientation=orientation,
            pixel_spacing=spacing,
            rows=size[0],
            columns=size[1],
            gantry_tilt=tilt,
        )
        for d in depths
    ]


def _reason(planes, rules=DEFAULT_RULES) -> str:
    with pytest.raises(VolumeRefused) as info:
        plan_stack(planes, rules)
    return info.value.reason


def test_slices_are_ordered_along_the_normal_whatever_their_order():
    depths = [6.0, 0.0, 4.0, 2.0, 8.0]
    plan = plan_stack(_planes(depths))
    assert plan.order == (1, 3, 2, 0, 4)
    assert plan.spacing == pytest.approx((2.0, 0.5, 0.5))
    assert plan.origin == pytest.approx((10.0, -20.0, 0.0))
    assert plan.shape == (5, 8, 6) and plan.corrections == ()
    np.testing.assert_allclose(plan.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-12)


def test_gaps_within_the_tolerance_are_regular_and_beyond_it_irregular():
    assert plan_stack(_planes([0, 2, 4.09, 6.09, 8.09])).corrections == ()  # 2.09 vs 2: within 5%
    refuse = StackRules(irregular_spacing="refuse")
    assert _reason(_planes([0, 2, 4.2, 6.2, 8.2]), refuse) == "irregular_spacing"  # 2.2: 10% off
    assert plan_stack(_planes([0, 2, 4.2, 6.2, 8.2])).corrections == ("irregular_spacing",)


def test_a_gap_of_about_twice_the_median_is_missing_slices_and_never_resampled():
    assert _reason(_planes([0, 2, 4, 8, 10, 12])) == "missing_slices"
    assert _reason(_planes([0, 2, 4, 7.85, 9.85, 11.85])) == "missing_slices"  # 1.93 x the median
    assert plan_stack(_planes([0, 2, 4, 7.6, 9.6, 11.6])).corrections == ("irregular_spacing",)  # 1.8 x


def test_the_geometry_checks_come_first_and_name_what_differs():
    assert _reason(_planes([0, 2])) == "too_few_slices"
    assert plan_stack(_planes([0, 2]), StackRules(min_slices=2)).shape == (2, 8, 6)
    assert _reason(_planes([0, 2, 2.005, 4])) == "duplicate_positions"
    planes = _planes([0, 2, 4])
    assert _reason([*planes[:2], SlicePlane(None, AXIAL, (0.5, 0.5), 8, 6)]) == "missing_geometry"
    oblique = (1.0, 0.0, 0.0, 0.0, 0.9998, 0.02)  # about 1.1 degrees off the others
    assert _reason([*planes[:2], _planes([4], orientation=oblique)[0]]) == "inconsistent_geometry"
    assert _reason([*planes[:2], _planes([4], size=(8, 7))[0]]) == "inconsistent_geometry"
    assert _reason([*planes[:2], _planes([4], spacing=(0.5, 0.51))[0]]) == "inconsistent_geometry"
    assert _reason(_planes([0, 2, 4], orientation=(1.0, 0.0, 0.0, 0.1, 1.0, 0.0))) == "inconsistent_geometry"
    # even a few slices short of a regular grid: too few is checked before the spacing
    assert _reason(_planes([0, 4])) == "too_few_slices"


def test_a_sheared_stack_is_gantry_tilt_and_its_correction_enlarges_the_canvas():
    tan = np.tan(np.radians(20.0))  # the stack runs 20 degrees off the normal, along y
    planes = _planes([0, 2, 4, 6], shift_per_mm=tan)
    assert _reason(planes, StackRules(gantry_tilt="refuse")) == "gantry_tilt"
    plan = plan_stack(planes)
    assert plan.corrections == ("gantry_tilt",)
    assert plan.tilt_degrees == pytest.approx(20.0)
    shift_px = 6 * tan / 0.5  # 4.37 rows over the stack
    assert plan.shape == (4, 8 + int(np.ceil(shift_px)), 6)
    # slice k's first pixel is tan x depth further along the column direction (+y) than slice 0's
    np.testing.assert_allclose(plan.offsets[:, 0], np.array([0, 2, 4, 6]) * tan / 0.5)
    # a shift below 0.2 pixel is no tilt
    assert plan_stack(_planes([0, 2, 4, 6], shift_per_mm=0.015)).corrections == ()


def test_a_gantry_tilt_attribute_alone_is_refused_under_refuse_but_needs_no_correction():
    planes = _planes([0, 2, 4], tilt=15.0)
    assert _reason(planes, StackRules(gantry_tilt="refuse")) == "gantry_tilt"
    assert plan_stack(planes).corrections == ()


def test_equalising_interpolates_linearly_along_the_normal():
    depths = [0.0, 2.0, 5.0, 8.0, 11.0]
    planes = _planes(depths)
    plan = plan_stack(planes)
    assert plan.corrections == ("irregular_spacing",)
    # the smallest gap (2 mm) gives 6 planes, no more than 2 x 5: kept
    np.testing.assert_allclose(plan.output_depths, [0, 2, 4, 6, 8, 10])
    slices = [np.full((8, 6), d, dtype=np.float32) for d in depths]  # each slice's value is its depth
    volume = stack_slices(plan, slices)
    assert volume.shape == (6, 8, 6) and volume.dtype == np.float32
    np.testing.assert_allclose(volume[:, 3, 2], [0, 2, 4, 6, 8, 10], atol=1e-5)  # a linear function, exactly


def test_equalising_caps_the_plane_count_at_twice_the_slices():
    depths = [0.0, 0.5, 5.0, 10.0, 15.0]
    plan = plan_stack(_planes(depths))
    assert len(plan.output_depths) == 10  # 0.5 mm steps would need 31
    assert plan.spacing[0] == pytest.approx(15.0 / 9)
    assert plan.output_depths[-1] == pytest.approx(15.0)


def test_shear_correction_moves_each_slice_by_its_offset():
    tan = 0.5 / 2.0  # half a millimetre (one pixel) of shift per 2 mm slice
    planes = _planes([0, 2, 4, 6], shift_per_mm=tan)
    plan = plan_stack(planes)
    slices = [np.zeros((8, 6), dtype=np.float32) for _ in range(4)]
    for values in slices:
        values[2, :] = 100.0  # a bright row, at the same row index in every slice
    volume = stack_slices(plan, slices)
    assert volume.shape == (4, 11, 6)
    # slice k starts k pixels further along its columns than slice 0 in the world: on the canvas its
    # bright row sits at 2 + k
    assert [int(np.argmax(volume[k, :, 0])) for k in range(4)] == [2, 3, 4, 5]
    assert volume[3, 5, 0] == 100.0 and volume[3, 2, 0] == 0.0
    assert volume.min() == 0.0  # uncovered canvas: the lowest value of the series
