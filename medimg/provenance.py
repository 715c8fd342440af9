"""Where things came from: the git commit of the medimg checkout, the content hash of its source, and of a file.

Two names for the code, with two jobs. :func:`git_commit` is the human-readable provenance tag
(``<sha>``, ``<sha>-dirty``): it says which commit to check out, but every uncommitted edit gives
the same ``-dirty`` name. :func:`code_hash` hashes the source itself, so it changes with every
edit, committed or not, and is what decides whether two runs ran the same code (the code part of
the run key, :func:`medimg.tracking.run_key`, and so of the Prefect cache keys of the steps).
"""

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
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes: the identity of source images and ONNX files in medimg."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


#: The folders of the installed distribution (pyproject's ``packages.find``) whose source is the code.
CODE_PACKAGES = ("medimg", "tasks", "flows")
#: What counts as source in them: Python modules and package data (``medimg/reference/*.yaml``).
CODE_SUFFIXES = (".py", ".yaml")


@functools.lru_cache(maxsize=8)
def code_hash(root: Path = PROJECT_ROOT) -> str:
    """16 hex digits of SHA-256 over the source of :data:`CODE_PACKAGES` under ``root``.

    Every file with a :data:`CODE_SUFFIXES` suffix below those folders (``__pycache__`` and hidden
    files or folders left out), in sorted order of its path relative to ``root``, contributes its
    path, its length and its bytes; so any edit, added or removed module changes the hash, whether
    or not it is committed, and the same source gives the same hash in any checkout or install
    (git is not consulted). Read once per process (about a hundred small files), like
    :func:`git_commit`, so every tag a run writes names the same code.
    """
    root = Path(root)
    files = sorted(
        path
        for package in CODE_PACKAGES
        if (root / package).is_dir()
        for path in (root / package).rglob("*")
        if path.suffix in CODE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts)
    )
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]
