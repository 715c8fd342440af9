"""DICOM series: the files under a folder grouped by SeriesInstanceUID, each series one
:class:`~medimg.data.volumes.Volume`.

What a caller can rely on:

* **Every file is accounted for** (:func:`read_series_folder`): part of a series (which becomes a
  volume or is refused with a reason), skipped with a reason (a
  :class:`~medimg.data.skips.SkippedFile`: hidden and system files, non-DICOM files, a
  ``DICOMDIR``, non-image DICOM objects such as structured reports; PNG/JPEG files have no place in
  a series and are skipped as ``outside_layout``), or unreadable (a
  :class:`~medimg.data.images.BadImage`: a ``.dcm`` that is not DICOM, a header pydicom cannot
  read, an image without a SeriesInstanceUID). Files are DICOM by the same rule as the 2-D ingest
  (:func:`medimg.data.sources.decoder_for`: the ``DICM`` marker, whatever the name; files may have
  no extension).
* **Grouping.** Headers are read first (pydicom ``stop_before_pixels``), and single-frame images are
  grouped by SeriesInstanceUID: one folder may hold several series of one study. Anonymisers
  sometimes blank the UID (the shared 20-slice CT has none): files without one are grouped with the
  files of the *same folder* that also lack it and share their Frame of Reference UID, and their
  volume's ``series_uid`` is None (the caller names it otherwise, e.g. by a pseudonym of its path).
  Grouping is never done on anything else: files that do not make one stack are then refused by the
  geometry checks rather than silently split. A multi-frame object (Number of Frames > 1, e.g. an
  Enhanced CT/MR Image) is a volume of its own (:func:`medimg.data.multiframe.read_multiframe`).
* **Geometry.** Ordering by Image Position (Patient) on the slice normal, the checks (one
  orientation, one size and pixel spacing, duplicates, missing slices, irregular spacing, gantry
  tilt), their order and the corrections are those of :mod:`medimg.data.slice_stack`, under a
  :class:`~medimg.data.slice_stack.StackRules`. By default a gantry tilt is corrected (shear) and
  irregular spacing resampled to equal steps, as dcm2niix does; missing slices and duplicate
  positions are always refused. Headers are checked before any pixel is decoded.
* **Values.** Each slice's pixels follow medimg's 2-D DICOM rules up to the Modality LUT
  (:mod:`medimg.data.dicom_frames`): stored bits only, Modality LUT applied, so CT is in HU; no
  window. A slice that fails them refuses its series with ``bad_slice``.
* **Privacy.** A volume carries no patient, study or date value; only ``series_uid``, which is
  identifying and there to be pseudonymised by the caller (:mod:`medimg.data.volumes`). Refusal
  and skip messages hold reason codes and numbers, never a header value or file name (the files
  are attributes, for the report inside the workspace).

pydicom's warnings are swallowed and its logger does not propagate while headers are read: read
folders in worker processes, not threads, when parallelising (both are process-global).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from medimg.data.dicom import _pydicom_unlogged, _read
from medimg.data.dicom_frames import slice_values
from medimg.data.dicom_planes import plane_of
from medimg.data.images import BadImage
from medimg.data.multiframe import read_multiframe
from medimg.data.skips import SkippedFile
from medimg.data.slice_stack import DEFAULT_RULES, SlicePlane, StackRules, plan_stack, stack_slices
from medimg.data.sop_classes import non_image_object
from medimg.data.sources import _set_aside, decoder_for, walk_files
from medimg.data.volumes import Volume, VolumeRefused


@dataclass(frozen=True)
class SliceHeader:
    """What the header of one DICOM image file says, for grouping and stacking.

    ``series_uid`` is the SeriesInstanceUID: IDENTIFYING, for grouping and pseudonymising only; None
    when the file has none. ``frame_of_reference`` (Frame of Reference UID, also identifying, or
    None) groups files without a series UID. ``frames``: Number of Frames (1 when absent).
    ``plane``: the slice's geometry (of the object, not of its frames, for a multi-frame one).
    """

    path: Path
    series_uid: str | None
    frame_of_reference: str | None
    frames: int
    modality: str | None
    plane: SlicePlane


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one series (or one multi-frame object), with their headers, sorted by path.

    ``series_uid`` is IDENTIFYING (see :class:`SliceHeader`), None for files without one.
    ``multiframe``: one file holding all the frames.
    """

    series_uid: str | None
    headers: tuple[SliceHeader, ...]
    multiframe: bool = False

    @property
    def files(self) -> tuple[Path, ...]:
        """The paths, in the order of ``headers``."""
        return tuple(h.path for h in self.headers)


@dataclass(frozen=True)
class SeriesScan:
    """Every file under a folder: ``series`` (sorted by their first file's path), ``skipped`` and
    ``unreadable`` files, each with a reason."""

    series: tuple[SeriesFiles, ...]
    skipped: tuple[SkippedFile, ...]
    unreadable: tuple[BadImage, ...]


@dataclass(frozen=True)
class SeriesOutcome:
    """One series of a folder: its ``files`` and either its ``volume`` or why it was ``refused``."""

    files: tuple[Path, ...]
    volume: Volume | None
    refused: VolumeRefused | None


@dataclass(frozen=True)
class FolderVolumes:
    """What :func:`read_series_folder` made of every file under a folder."""

    outcomes: tuple[SeriesOutcome, ...]
    skipped: tuple[SkippedFile, ...]
    unreadable: tuple[BadImage, ...]

    @property
    def volumes(self) -> tuple[Volume, ...]:
        """The volumes of the series that were not refused, in the order of ``outcomes``."""
        return tuple(o.volume for o in self.outcomes if o.volume is not None)

    @property
    def refused(self) -> tuple[VolumeRefused, ...]:
        """The refusals, in the order of ``outcomes``."""
        return tuple(o.refused for o in self.outcomes if o.refused is not None)


def read_header(path: str | Path) -> SliceHeader:
    """The header of one DICOM image file (pixels not read). Raises BadImage (``empty``,
    ``not_an_image``, ``truncated``, ``invalid_header``)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImage(path, "empty")
    with _pydicom_unlogged(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their texts can quote element values
        ds = _read_header(path, None)
    return _slice_header(path, ds)


def scan_series_folder(folder: str | Path) -> SeriesScan:
    """Every file under ``folder`` (recursively, links followed once), grouped into series by
    SeriesInstanceUID or set aside with a reason (module docstring). Reads headers only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    skipped: list[SkippedFile] = []
    unreadable: list[BadImage] = []
    groups: dict[tuple[str, ...], list[SliceHeader]] = {}
    multiframes: list[SliceHeader] = []
    for rel, path in walk_files(folder, hidden=True):
        reason = _set_aside(tuple(rel.split("/")), path)
        if reason is None:
            decoder = decoder_for(path)
            if decoder is None:
                reason = "not_an_image_file"
            elif decoder == "raster":
                skipped.append(SkippedFile(rel, "source", "outside_layout", "a PNG/JPEG in a DICOM series folder"))
                continue
        if reason is not None:
            skipped.append(SkippedFile(rel, "source", reason))
            continue
        try:
            header, non_image = _scan_file(path)
        except BadImage as bad:
            unreadable.append(bad)
            continue
        if non_image is not None:
            skipped.append(SkippedFile(rel, "source", non_image[0], non_image[1]))
        elif header is not None and header.frames > 1:
            multiframes.append(header)
        elif header is not None:
            groups.setdefault(_group_key(rel, header), []).append(header)
    series = [SeriesFiles(headers[0].series_uid, tuple(headers)) for headers in groups.values()]
    series += [SeriesFiles(h.series_uid, (h,), multiframe=True) for h in multiframes]
    series.sort(key=lambda s: s.headers[0].path)
    return SeriesScan(tuple(series), tuple(skipped), tuple(unreadable))


def assemble_series(series: SeriesFiles, rules: StackRules = DEFAULT_RULES, allow_burned_in: bool = False) -> Volume:
    """The volume of one scanned series: headers checked and planned, then each slice decoded to
    Modality-LUT values and stacked (module docstring). Raises VolumeRefused naming the files
    (in slice order once the planes are valid)."""
    files = series.files
    if series.multiframe:
        return read_multiframe(files[0], rules, allow_burned_in=allow_burned_in)
    try:
        plan = plan_stack([h.plane for h in series.headers], rules)
    except VolumeRefused as refused:
        raise refused.with_files(files) from None
    ordered = tuple(files[i] for i in plan.order)
    slices = []
    for k, path in enumerate(ordered):
        try:
            slices.append(slice_values(path, allow_burned_in=allow_burned_in))
        except BadImage as bad:
            raise VolumeRefused("bad_slice", f"slice {k + 1} of {len(ordered)}: {bad.reason}", ordered) from None
    return Volume(
        voxels=stack_slices(plan, slices),
        spacing=plan.spacing,
        origin=plan.origin,
        direction=plan.direction,
        modality=series.headers[0].modality,
        source_kind="dicom_series",
        series_uid=series.series_uid,
        corrections=plan.corrections,
    )


def read_series(
    files: Sequence[str | Path], rules: StackRules = DEFAULT_RULES, allow_burned_in: bool = False
) -> Volume:
    """The volume of the DICOM image ``files`` of one series (single-frame files, any order; files
    without a SeriesInstanceUID must share a Frame of Reference UID).

    Raises VolumeRefused (``inconsistent_geometry`` when they belong to more than one series,
    ``bad_slice`` when one is unreadable, ``too_few_slices`` for none) or the refusals of
    :mod:`medimg.data.slice_stack`.
    """
    paths = tuple(sorted(Path(f) for f in files))
    headers = []
    for k, path in enumerate(paths):
        try:
            headers.append(read_header(path))
        except BadImage as bad:
            raise VolumeRefused("bad_slice", f"file {k + 1} of {len(paths)}: {bad.reason}", paths) from None
    uids = {(h.series_uid, None if h.series_uid else h.frame_of_reference) for h in headers}
    if len(uids) > 1:
        raise VolumeRefused("inconsistent_geometry", f"the files belong to {len(uids)} series", paths)
    if not headers:
        raise VolumeRefused("too_few_slices", "no files")
    return assemble_series(SeriesFiles(headers[0].series_uid, tuple(headers)), rules, allow_burned_in)


def read_series_folder(
    folder: str | Path, rules: StackRules = DEFAULT_RULES, allow_burned_in: bool = False
) -> FolderVolumes:
    """Every series under ``folder`` as a volume or a refusal, and every other file with a reason."""
    scan = scan_series_folder(folder)
    outcomes = []
    for series in scan.series:
        try:
            outcomes.append(SeriesOutcome(series.files, assemble_series(series, rules, allow_burned_in), None))
        except VolumeRefused as refused:
            outcomes.append(SeriesOutcome(series.files, None, refused))
    return FolderVolumes(tuple(outcomes), scan.skipped, scan.unreadable)


def _group_key(rel: str, header: SliceHeader) -> tuple[str, ...]:
    """The series UID; without one, the file's folder and Frame of Reference UID (module docstring)."""
    if header.series_uid:
        return ("uid", header.series_uid)
    return ("folder", rel.rpartition("/")[0], header.frame_of_reference or "")


def _scan_file(path: Path) -> tuple[SliceHeader | None, tuple[str, str] | None]:
    """(header, None) for an image; (None, (skip reason, SOP Class name)) for a non-image object."""
    data = path.read_bytes()
    if not data:
        raise BadImage(path, "empty")
    with _pydicom_unlogged(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        non_image = non_image_object(data)
        if non_image is not None:
            return None, (non_image.reason, non_image.sop_class)
        ds = _read_header(path, data)
    return _slice_header(path, ds), None


def _read_header(path: Path, data: bytes | None) -> Dataset:
    return _read(path, data, header_only=True)


def _slice_header(path: Path, ds: Dataset) -> SliceHeader:
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or None
    frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "").strip() or None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise BadImage(path, "invalid_header", "Number of Frames unusable") from None
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    return SliceHeader(
        path=path,
        series_uid=uid,
        frame_of_reference=frame_of_reference,
        frames=frames,
        modality=modality,
        plane=plane_of(ds),
    )
