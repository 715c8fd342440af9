"""The append-only promotion audit log (JSON lines in the workspace), one line per alias move."""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime
from pathlib import Path


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. ``2026-11-30T16:00:00+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def record(path: Path, event: dict, who: str | None = None) -> dict:
    """Append one event (``who`` and ``when`` are added) and fsync, so a crash loses no line.

    ``who``: the person acting (a review page's logged-in user); ``None``: the operating-system user.
    """
    if who is None:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
    entry = {"when": now_iso(), "who": who, **event}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return entry


def read(path: Path) -> list[dict]:
    """The entries of the JSON-lines audit log at ``path``, oldest first; [] when the file does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
