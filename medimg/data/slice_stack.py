"""Slice stacks: from the planes of 2-D slices (position, orientation, size, pixel spacing) to a regular volume grid.

Pure geometry and numpy, shared by the DICOM series reader (:mod:`medimg.data.series`) and the
enhanced multi-frame reader (:mod:`medimg.data.multiframe`). :func:`plan_stack` checks the planes
and decides the output grid; :func:`stack_slices` fills it from the slices' values.

**The slice normal and the order** (DICOM PS3.3 C.7.6.2.1.1). A slice's Image Orientation
(Patient) gives the unit vector ``r`` along a row (increasing column index) and ``c`` down a
column (increasing row index); the normal is ``n = r x c``. Slices are ordered by the projection
of their Image Position (Patient) (the centre of their first pixel) on ``n``, ascending, so array
axis 0 runs along ``+n``; Instance Number is not used (it is not a position). The gaps are the
differences of consecutive projections.

**The checks, in this order**; the first that fails raises
:class:`~medimg.data.volumes.VolumeRefused` with its reason:

1. ``missing_geometry``: a plane without finite position, orientation, pixel spacing, rows, columns;
2. ``inconsistent_geometry``: direction cosines differ from the first slice's by more than
   ``StackRules.orientation_tolerance`` (absolute, per cosine), or the orientation is not
   orthonormal (|r|, |c| not 1 or r.c not 0 within that tolerance), or rows/columns differ, or a
   pixel spacing differs by more than ``pixel_spacing_tolerance`` (relative);
3. ``too_few_slices``: fewer than ``min_slices`` (default 3: with two slices there is one gap, and
   neither regular spacing nor a missing slice can be checked);
4. ``duplicate_positions``: two projections closer than ``duplicate_tolerance_mm``;
5. ``missing_slices``: a gap of at least ``missing_gap_ratio`` (default 1.9, "about twice") times
   the median gap: a slice (or more) is missing. Never corrected: interpolating across lost data
   would invent anatomy;
6. ``irregular_spacing``: a gap that differs from the median by more than
   ``max(spacing_tolerance * median, spacing_tolerance_mm)`` (defaults 5% and 0.01 mm); refused when
   ``rules.irregular_spacing == "refuse"``, else corrected (below);
7. ``gantry_tilt``: the stack is sheared. Each slice's position relative to the first is split into
   its in-plane part (along ``r`` and ``c``) and its part along ``n``; a straight stack has no
   in-plane part. Tilt is found when some in-plane part exceeds ``shear_tolerance`` pixels (default
   0.2), or when a slice's Gantry/Detector Tilt (0018,1120) is not 0. Refused when
   ``rules.gantry_tilt == "refuse"``; else corrected from the positions themselves (below), which
   needs no vendor sign convention for the tilt angle. (A non-zero Gantry/Detector Tilt whose
   positions show no shear needs no correction: the positions are what places the voxels.)

So a series that is both tilted and irregularly spaced, with both rules at "refuse", is refused
with ``irregular_spacing``.

**The corrections** (both as dcm2niix does them, ``nii_saveNII3Dtilt`` then ``nii_saveNII3Deq``, but
from the positions rather than from the tilt angle):

* *Gantry tilt, shear correction.* The output grid keeps the slices' own in-plane axes ``r`` and
  ``c`` and their pixel spacing, with ``n`` as the third axis: an orthogonal grid. Every slice is
  translated within its own plane by its in-plane offset (linear interpolation,
  :func:`scipy.ndimage.affine_transform` with order 1), onto a canvas enlarged to hold every
  translated slice (nothing is cropped; dcm2niix enlarges the same way). Canvas voxels that no
  slice covers take the series' lowest value (air for CT; dcm2niix's "darkest observed value").
* *Irregular spacing, equalising.* Output planes at equal steps along ``n`` from the first slice to
  the last; each is the linear interpolation, voxel by voxel, of the two slices around it (after the
  shear correction, the two are on one grid). The step is the smallest gap, unless that gives more
  than ``max_resampled_factor`` (default 2) times the input slice count, in which case that many
  planes span first to last (dcm2niix's cap).

Without either correction the slices are stacked as they are (no interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import affine_transform

from medimg.data.volumes import VolumeRefused


@dataclass(frozen=True)
class StackRules:
    """Tolerances and what to do with irregular spacing and gantry tilt (see the module docstring)."""

    min_slices: int = 3
    orientation_tolerance: float = 1e-3  # absolute, per direction cosine (about 0.06 degree)
    pixel_spacing_tolerance: float = 1e-3  # relative
    duplicate_tolerance_mm: float = 0.01
    missing_gap_ratio: float = 1.9  # gap / median gap
    spacing_tolerance: float = 0.05  # relative to the median gap
    spacing_tolerance_mm: float = 0.01  # absolute floor (positions are often rounded to 0.001 mm)
    shear_tolerance: float = 0.2  # in-plane offset, in pixels
    irregular_spacing: Literal["resample", "refuse"] = "resample"
    gantry_tilt: Literal["correct", "refuse"] = "correct"
    max_resampled_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.irregular_spacing not in ("resample", "refuse"):
            raise ValueError(f"irregular_spacing must be 'resample' or 'refuse', got {self.irregular_spacing!r}")
        if self.gantry_tilt not in ("correct", "refuse"):
            raise ValueError(f"gantry_tilt must be 'correct' or 'refuse', got {self.gantry_tilt!r}")
        if self.min_slices < 2:
            raise ValueError("min_slices must be at least 2: one slice has no spacing")
        if self.missing_gap_ratio <= 1.0 or self.max_resampled_factor < 1.0:
            raise ValueError("missing_gap_ratio must be > 1 and max_resampled_factor >= 1")


#: The default rules: tilt corrected, irregular spacing resampled, at least 3 slices.
DEFAULT_RULES = StackRules()


@dataclass(frozen=True)
class SlicePlane:
    """Where one 2-D slice lies, from its header.

    ``position``: Image Position (Patient), mm (LPS). ``orientation``: Image Orientation (Patient),
    the six direction cosines (row direction, then column direction). ``pixel_spacing``: Pixel
    Spacing, mm (between rows, between columns). ``gantry_tilt``: Gantry/Detector Tilt in degrees,
    None when absent. Any of the geometry may be None when the header lacks it (refused with
    ``missing_geometry``).
    """

    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None
    gantry_tilt: float | None = None


@dataclass(frozen=True)
class StackPlan:
    """The checked stack and the grid it becomes.

    ``order``: indices into the planes given to :func:`plan_stack`, ascending along the normal.
    ``depths``: mm along the normal of each ordered slice from the first (0 first, increasing).
    ``offsets``: (slices, 2) in-plane offset in pixels (rows, columns) of each ordered slice's first
    pixel on the output canvas (non-zero only with the gantry tilt correction). ``output_depths``:
    mm along the normal of each output plane from the first slice. ``slice_shape``: (rows, columns)
    of every input slice. ``shape``: (slices, rows, columns) of the output. ``spacing``: mm (z, y,
    x). ``origin``: LPS mm of output voxel [0, 0, 0]. ``direction``: 3x3, columns ``n``, ``c``,
    ``r``. ``corrections``: what :func:`stack_slices` will apply (keys of
    :data:`medimg.data.volumes.CORRECTIONS`). ``tilt_degrees``: the angle between the stack and the
    normal, from the positions.
    """

    order: tuple[int, ...]
    depths: np.ndarray
    offsets: np.ndarray
    output_depths: np.ndarray
    slice_shape: tuple[int, int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    corrections: tuple[str, ...]
    tilt_degrees: float


def plan_stack(planes: Sequence[SlicePlane], rules: StackRules = DEFAULT_RULES) -> StackPlan:
    """Check ``planes`` and plan the output grid (see the module docstring for the checks, their
    order and the corrections). Raises :class:`~medimg.data.volumes.VolumeRefused`."""
    geometry = _checked_geometry(planes, rules)
    row_dir, col_dir, normal, spacing_yx, rows, columns = geometry
    if len(planes) < rules.min_slices:
        raise VolumeRefused("too_few_slices", f"{len(planes)} slice(s), at least {rules.min_slices} needed")
    positions = np.array([p.position for p in planes], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    rel = positions[order] - positions[order[0]]
    depths = rel @ normal
    gaps = np.diff(depths)
    _check_gaps(gaps, rules)
    median = float(np.median(gaps))
    irregular = bool(np.abs(gaps - median).max() > _gap_tolerance(median, rules))

    # in-plane offsets of each slice's first pixel from the first slice's, in pixels (rows, columns)
    in_plane = np.stack([rel @ col_dir / spacing_yx[0], rel @ row_dir / spacing_yx[1]], axis=1)
    shear = float(np.abs(in_plane).max())
    tilt_degrees = math.degrees(math.atan2(float(np.linalg.norm(rel[-1] - depths[-1] * normal)), float(depths[-1])))
    header_tilt = max((abs(p.gantry_tilt) for p in planes if p.gantry_tilt is not None), default=0.0)
    tilted = shear > rules.shear_tolerance
    if irregular and rules.irregular_spacing == "refuse":
        spread = f"gaps {gaps.min():.3f} to {gaps.max():.3f} mm, median {median:.3f} mm"
        also = f"; also sheared by {tilt_degrees:.1f} degrees" if tilted else ""
        raise VolumeRefused("irregular_spacing", spread + also)
    if (tilted or header_tilt > 0) and rules.gantry_tilt == "refuse":
        raise VolumeRefused(
            "gantry_tilt",
            f"stack at {tilt_degrees:.1f} degrees to the slice normal, Gantry/Detector Tilt {header_tilt:.1f} degrees",
        )

    corrections: list[str] = []
    offsets = np.zeros((len(planes), 2))
    out_rows, out_columns = rows, columns
    grid_shift = np.zeros(3)
    if tilted:
        corrections.append("gantry_tilt")
        low = in_plane.min(axis=0)
        offsets = in_plane - low  # every slice lands at or after the canvas's first pixel
        extent = np.ceil(offsets.max(axis=0) - 1e-6).astype(int)
        out_rows, out_columns = rows + int(extent[0]), columns + int(extent[1])
        grid_shift = low[0] * spacing_yx[0] * col_dir + low[1] * spacing_yx[1] * row_dir
    if irregular:
        corrections.append("irregular_spacing")
        output_depths = _equalised_depths(depths, rules.max_resampled_factor)
        step = float(output_depths[1] - output_depths[0])
    else:
        output_depths = depths.copy()
        step = float(depths[-1]) / (len(depths) - 1)  # the mean gap: first and last slice exactly in place
    origin = positions[order[0]] + grid_shift
    return StackPlan(
        order=tuple(int(i) for i in order),
        depths=depths,
        offsets=offsets,
        output_depths=output_depths,
        slice_shape=(rows, columns),
        shape=(len(output_depths), out_rows, out_columns),
        spacing=(step, float(spacing_yx[0]), float(spacing_yx[1])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=np.stack([normal, col_dir, row_dir], axis=1),
        corrections=tuple(corrections),
        tilt_degrees=tilt_degrees,
    )


def stack_slices(plan: StackPlan, slices: Sequence[np.ndarray]) -> np.ndarray:
    """The volume of ``plan``: float32, shape ``plan.shape``, from ``slices`` (each (rows, columns),
    in ``plan.order``). Slices are shifted onto the canvas when the plan corrects a gantry tilt, and
    interpolated between along the normal when it corrects irregular spacing (module docstring)."""
    if len(slices) != len(plan.order):
        raise ValueError(f"{len(slices)} slices for a plan of {len(plan.order)}")
    shapes = {np.shape(s) for s in slices}
    if shapes != {plan.slice_shape}:
        raise ValueError(f"slices of shape {sorted(shapes)} for a plan of {plan.slice_shape}")
    if "gantry_tilt" in plan.corrections:
        fill = float(min(np.min(s) for s in slices))
        canvas = plan.shape[1:]
        planes = [_shifted(s, plan.offsets[k], canvas, fill) for k, s in enumerate(slices)]
    else:
        planes = [np.asarray(s, dtype=np.float32) for s in slices]
    if "irregular_spacing" not in plan.corrections:
        return np.stack(planes)
    out = np.empty(plan.shape, dtype=np.float32)
    depths = plan.depths
    for t, depth in enumerate(plan.output_depths):
        hi = int(np.searchsorted(depths, depth - 1e-6))
        if hi >= len(depths):
            hi = len(depths) - 1
        if hi == 0 or abs(depths[hi] - depth) <= 1e-6:
            out[t] = planes[hi]
            continue
        lo = hi - 1
        weight = (depth - depths[lo]) / (depths[hi] - depths[lo])
        out[t] = (1.0 - weight) * planes[lo] + weight * planes[hi]
    return out


def _checked_geometry(planes: Sequence[SlicePlane], rules: StackRules):
    """(r, c, n, (row spacing, column spacing), rows, columns) shared by all planes, or VolumeRefused."""
    if not planes:
        raise VolumeRefused("too_few_slices", "no slices")
    for k, p in enumerate(planes):
        values = [p.position, p.orientation, p.pixel_spacing]
        if any(v is None for v in values) or p.rows is None or p.columns is None:
            raise VolumeRefused("missing_geometry", f"slice {k + 1} of {len(planes)}")
        if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in values):
            raise VolumeRefused("missing_geometry", f"slice {k + 1} of {len(planes)}: non-finite geometry")
    orientations = np.array([p.orientation for p in planes], dtype=np.float64)
    spread = float(np.abs(orientations - orientations[0]).max())
    if spread > rules.orientation_tolerance:
        raise VolumeRefused("inconsistent_geometry", f"direction cosines differ by up to {spread:.4f}")
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    norms = (float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir)))
    off = max(abs(norms[0] - 1.0), abs(norms[1] - 1.0), abs(float(row_dir @ col_dir)))
    if off > rules.orientation_tolerance:
        raise VolumeRefused("inconsistent_geometry", "Image Orientation (Patient) is not two orthogonal unit vectors")
    row_dir = row_dir / norms[0]
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    sizes = {(p.rows, p.columns) for p in planes}
    if len(sizes) > 1:
        raise VolumeRefused("inconsistent_geometry", f"{len(sizes)} different slice sizes")
    rows, columns = int(planes[0].rows or 0), int(planes[0].columns or 0)
    if rows < 1 or columns < 1:
        raise VolumeRefused("missing_geometry", f"slice size {rows}x{columns}")
    spacings = np.array([p.pixel_spacing for p in planes], dtype=np.float64)
    if (spacings <= 0).any():
        raise VolumeRefused("missing_geometry", "pixel spacing not positive")
    relative = float(np.abs(spacings / spacings[0] - 1).max())
    if relative > rules.pixel_spacing_tolerance:
        raise VolumeRefused("inconsistent_geometry", f"pixel spacings differ by up to {relative:.2%}")
    return row_dir, col_dir, normal, (float(spacings[0, 0]), float(spacings[0, 1])), rows, columns


def _gap_tolerance(median: float, rules: StackRules) -> float:
    return max(rules.spacing_tolerance * median, rules.spacing_tolerance_mm)


def _check_gaps(gaps: np.ndarray, rules: StackRules) -> None:
    """Refuse duplicate positions and missing slices (checks 4 and 5 of the module docstring)."""
    duplicates = int((gaps < rules.duplicate_tolerance_mm).sum())
    if duplicates:
        raise VolumeRefused("duplicate_positions", f"{duplicates} of {len(gaps) + 1} slices at the position of another")
    median = float(np.median(gaps))
    ratios = gaps / median
    wide = ratios >= rules.missing_gap_ratio
    if wide.any():
        missing = int(np.round(ratios[wide] - 1).sum())
        raise VolumeRefused(
            "missing_slices",
            f"{int(wide.sum())} gap(s) of {gaps[wide].max():.3f} mm where the median is {median:.3f} mm: "
            f"about {missing} slice(s) missing",
        )


def _equalised_depths(depths: np.ndarray, max_factor: float) -> np.ndarray:
    """Equal steps from the first depth to at most the last: the smallest gap, or the span in
    ``max_factor`` x slices planes when that would be more (dcm2niix's ``nii_saveNII3Deq``)."""
    span = float(depths[-1] - depths[0])
    step = float(np.diff(depths).min())
    count = math.floor(span / step + 1e-6) + 1
    cap = int(max_factor * len(depths))
    if count > cap:
        count = cap
        step = span / (count - 1)
    return depths[0] + step * np.arange(count)


def _shifted(values: np.ndarray, offset: np.ndarray, canvas: tuple[int, int], fill: float) -> np.ndarray:
    """``values`` translated by ``offset`` (rows, columns; pixels, may be fractional) onto a
    ``canvas``-sized plane, by linear interpolation; uncovered pixels are ``fill``."""
    shifted = affine_transform(
        np.asarray(values, dtype=np.float64),
        np.eye(2),
        offset=-np.asarray(offset, dtype=np.float64),
        output_shape=canvas,
        order=1,
        mode="constant",
        cval=fill,
    )
    return shifted.astype(np.float32)
