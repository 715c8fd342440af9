"""Where things came from: the git commit of the medimg checkout, and the content hash of a file."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=8)
def git_commit(root: Path = PROJECT_ROOT) -> str:
    """``<sha>`` or ``<sha>-dirty``; ``unknown`` outside a git checkout.

    Read once per process, so every tag a run writes names the same commit even if the
    checkout moves on while the run is going.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes: the identity of source images and ONNX files in medimg."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
