"""What is new in an inbox folder since the last look: a snapshot of names, sizes and mtimes.

The snapshot is cheap (no file is read) and kept in the workspace, so a watcher started again
after a restart does not retrigger on files it already handed to a retrain. It is taken by the
same walk as the ingest's skip check and its DICOM scan (:func:`medimg.data.sources.tree`, by
:func:`~medimg.data.sources.walk_files`), so they agree on which files exist (symbolic links
followed, each folder once, nothing hidden), limited to the files an ingest reads as images
(:data:`medimg.data.sources.IMAGE_SUFFIXES`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from medimg.data.sources import IMAGE_SUFFIXES, tree


def snapshot(folder: Path) -> dict[str, list[int]]:
    """The image files under ``folder`` (by suffix, posix path relative to it) -> their ``[size, mtime_ns]``."""
    return {rel: stat for rel, stat in tree(folder).items() if _is_image(PurePosixPath(rel))}


def _is_image(rel: PurePosixPath) -> bool:
    return rel.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts)


def changed(previous: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    """Files that are new or whose size or mtime changed."""
    return sorted(name for name, meta in current.items() if previous.get(name) != meta)


def load(state_file: Path) -> dict[str, list[int]]:
    """The snapshot saved at ``state_file``; {} when there is none."""
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def save(state_file: Path, snap: dict[str, list[int]]) -> None:
    """Write ``snap`` to ``state_file`` as JSON, atomically (written aside, then renamed)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(snap, sort_keys=True))
    os.replace(tmp, state_file)
