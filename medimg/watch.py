"""What is new in an inbox folder since the last look: a snapshot of names, sizes and mtimes.

The snapshot is cheap (no file is read) and kept in the workspace, so a watcher started again
after a restart does not retrigger on files it already handed to a retrain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}


def snapshot(folder: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            stat = path.stat()
            out[path.relative_to(folder).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return out


def changed(previous: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    """Files that are new or whose size or mtime changed."""
    return sorted(name for name, meta in current.items() if previous.get(name) != meta)


def load(state_file: Path) -> dict[str, list[int]]:
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def save(state_file: Path, snap: dict[str, list[int]]) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(snap, sort_keys=True))
    os.replace(tmp, state_file)
