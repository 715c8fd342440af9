"""The skip list: files under a source that are not images, each with the reason it was not ingested.

Every file under a source folder (and its inbox) is accounted for: ingested, quarantined (an image
that cannot be used, :mod:`medimg.data.quarantine`) or *skipped* (not an image at all). Skips do
not count toward ``data.max_bad_fraction``: a ``.DS_Store`` or a CD's ``DICOMDIR`` is no sign of a
bad export. The reasons are the codes of :data:`SKIP_REASONS`.

The list names a file by its place in the source (``source/<rel>`` or ``inbox/<rel>``), so its
owner can find it; file names can hold patient names, so the list stays in the workspace
(``reports/skipped.csv``). What leaves it (logs, MLflow) is the count per reason only.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medimg.data.sop_classes import NON_IMAGE_REASONS

#: Every reason a file may be skipped for, with what it means.
SKIP_REASONS: dict[str, str] = {
    "hidden": "a hidden file, or a file in a hidden folder (name starting with '.': .DS_Store, AppleDouble ._*)",
    "system_file": "file-manager metadata: Thumbs.db, ehthumbs.db, desktop.ini, anything under __MACOSX/",
    "labels_csv": "the source's labels CSV (data.dicom.labels_csv or data.image_folder.labels_csv)",
    "not_an_image_file": "neither PNG/JPEG (by suffix) nor DICOM "
    "(by suffix .dcm/.dicom or the DICM marker at byte 128)",
    "outside_layout": "an image where the class-folder layout gives it no class (beside or below the class folders)",
    "not_a_file": "a link to nothing, a folder loop, a socket, a pipe or another non-regular file",
    **NON_IMAGE_REASONS,
}

CSV_COLUMNS = ("file", "reason", "detail")


@dataclass(frozen=True)
class SkippedFile:
    """A file not ingested because it is not an image. ``rel``: its posix path inside its folder;
    ``detail``: what it is, in public terms (a DICOM SOP Class name), or empty."""

    rel: str
    origin: str  # "source" or "inbox"
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; expected one of {sorted(SKIP_REASONS)}")

    @property
    def place(self) -> str:
        """``<origin>/<rel>``: how the workspace's reports name a file."""
        return f"{self.origin}/{self.rel}"


def counts_by_reason(skipped: list[SkippedFile] | tuple[SkippedFile, ...]) -> dict[str, int]:
    """{reason: count}, most frequent first (ties by reason name): what logs and MLflow may carry."""
    counts = Counter(s.reason for s in skipped)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def write_csv(skipped: list[SkippedFile] | tuple[SkippedFile, ...], path: str | Path) -> Path:
    """``file,reason,detail`` rows sorted by file (header included, even with none). For the workspace only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for item in sorted(skipped, key=lambda s: s.place):
            writer.writerow((item.place, item.reason, item.detail))
    return path
