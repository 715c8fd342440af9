"""Enhanced (multi-frame) DICOM objects: one file with Number of Frames > 1 becomes one
:class:`~medimg.data.volumes.Volume`.

Each frame is a slice: its plane comes from the functional groups (:func:`medimg.data.dicom_planes.frame_planes`:
Plane Position, Plane Orientation and Pixel Measures, per-frame else shared; PS3.3 C.7.6.16), its
values from the frame's pixels through its own Pixel Value Transformation
(:func:`medimg.data.dicom_frames.frame_values`). The frames are then checked, ordered along the
slice normal and stacked exactly as the files of a series are (:mod:`medimg.data.slice_stack`,
same :class:`~medimg.data.slice_stack.StackRules`): frame order in the file and the Dimension Index
are not used, positions are.

An object whose frames are not one spatial stack is refused: a cine loop or a legacy multi-frame
without per-frame positions (``missing_geometry``), several stacks or time points at the same
positions (``duplicate_positions``), or any other refusal of :mod:`medimg.data.slice_stack`.
Only the SeriesInstanceUID (identifying, for pseudonymising) leaves with the volume.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom

from medimg.data.dicom import _pydicom_unlogged
from medimg.data.dicom_frames import frame_values
from medimg.data.dicom_planes import frame_planes
from medimg.data.images import BadImage
from medimg.data.slice_stack import DEFAULT_RULES, StackRules, plan_stack, stack_slices
from medimg.data.volumes import Volume, VolumeRefused


def read_multiframe(path: str | Path, rules: StackRules = DEFAULT_RULES, allow_burned_in: bool = False) -> Volume:
    """The volume of one multi-frame DICOM image file (``source_kind`` ``dicom_multiframe``).

    The geometry is checked from the header before the pixels are decoded. Raises VolumeRefused
    (``files`` is ``(path,)``): ``bad_slice`` when the pixels cannot be used (its detail is the
    2-D reason code, e.g. ``truncated``), ``unreadable`` when the header cannot be read, or a
    refusal of :func:`medimg.data.slice_stack.plan_stack`.
    """
    path = Path(path)
    files = (path,)
    try:
        with _pydicom_unlogged(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # their texts can quote element values
            header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise VolumeRefused("unreadable", f"DICOM header unreadable ({type(err).__name__})", files) from None
    try:
        plan = plan_stack(frame_planes(header), rules)
    except VolumeRefused as refused:
        raise refused.with_files(files) from None
    try:
        ds, values = frame_values(path, allow_burned_in=allow_burned_in)
    except BadImage as bad:
        raise VolumeRefused("bad_slice", bad.reason, files) from None
    if values.shape[0] != len(plan.order):
        raise VolumeRefused(
            "inconsistent_geometry", f"{values.shape[0]} frames decoded, {len(plan.order)} planned", files
        )
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or None
    return Volume(
        voxels=stack_slices(plan, [values[i] for i in plan.order]),
        spacing=plan.spacing,
        origin=plan.origin,
        direction=plan.direction,
        modality=modality,
        source_kind="dicom_multiframe",
        series_uid=uid,
        corrections=plan.corrections,
    )
