"""Slice planes from DICOM headers: the geometry :mod:`medimg.data.slice_stack` stacks.

* A single-frame image (:func:`plane_of`): its Image Plane module (PS3.3 C.7.6.2: Image Position
  (Patient), Image Orientation (Patient), Pixel Spacing), Rows, Columns and Gantry/Detector Tilt.
* Each frame of an enhanced multi-frame image (:func:`frame_planes`): the Plane Position (Patient),
  Plane Orientation (Patient) and Pixel Measures functional groups (PS3.3 C.7.6.16.2.3, .4, .1), taken
  from the frame's item of the Per-Frame Functional Groups Sequence, else from the Shared Functional
  Groups Sequence (PS3.3 C.7.6.16); the tilt from the CT Acquisition Details group (C.8.15.3.2),
  else the top level.

Absent or unusable values are None in the plane (refused later with ``missing_geometry``), never
guessed. Only geometry is read: nothing here returns an identifying value.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medimg.data.deid import _int
from medimg.data.slice_stack import SlicePlane


def plane_of(ds: Dataset) -> SlicePlane:
    """The plane of a single-frame image's header; absent or unusable values are None."""
    return SlicePlane(
        position=floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=floats(ds, "ImageOrientationPatient", 6),  # type: ignore[arg-type]
        pixel_spacing=floats(ds, "PixelSpacing", 2),  # type: ignore[arg-type]
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        gantry_tilt=_first(floats(ds, "GantryDetectorTilt", 1)),
    )


def frame_planes(ds: Dataset) -> list[SlicePlane]:
    """The plane of each frame of an enhanced multi-frame image (Number of Frames of them).

    Frames without functional groups (a legacy multi-frame object such as a cine loop) get planes
    without position or orientation.
    """
    n_frames = _int(ds, "NumberOfFrames") or 1
    shared = _items(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = _items(ds.get("PerFrameFunctionalGroupsSequence"))
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    top_tilt = _first(floats(ds, "GantryDetectorTilt", 1))
    planes = []
    for f in range(n_frames):
        groups = [per_frame[f]] if f < len(per_frame) else []
        groups += shared[:1]
        position = _from_groups(groups, "PlanePositionSequence", "ImagePositionPatient", 3)
        orientation = _from_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        spacing = _from_groups(groups, "PixelMeasuresSequence", "PixelSpacing", 2)
        tilt = _first(_from_groups(groups, "CTAcquisitionDetailsSequence", "GantryDetectorTilt", 1))
        planes.append(
            SlicePlane(
                position=position,  # type: ignore[arg-type]
                orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing=spacing,  # type: ignore[arg-type]
                rows=rows,
                columns=columns,
                gantry_tilt=tilt if tilt is not None else top_tilt,
            )
        )
    return planes


def floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """The ``count`` numbers of a (multi-valued) numeric element of ``ds``, or None when absent or unusable."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _from_groups(groups: list[Dataset], sequence: str, keyword: str, count: int) -> tuple[float, ...] | None:
    """``keyword`` from the first item of ``sequence`` in the first group holding it."""
    for group in groups:
        items = _items(group.get(sequence))
        if items:
            return floats(items[0], keyword, count)
    return None


def _items(sequence) -> list[Dataset]:
    return list(sequence) if sequence else []


def _first(values: tuple[float, ...] | None) -> float | None:
    return values[0] if values else None
