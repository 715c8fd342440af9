"""Atomic release folders: ``--out DIR`` is a symbolic link swapped, in one ``rename(2)``, onto a complete folder.

Layout::

    PARENT/DIR -> .DIR.releases/<name>/          (the link readers open)
    PARENT/.DIR.releases/.partial-<random>/      (a release being written)
    PARENT/.DIR.releases/<name>/                 (sealed releases, the current one and recent ones)

Promises: a release is written under ``.partial-*`` in the same file system as ``DIR`` and renamed
to its final name only once every file in it is fsynced (:func:`seal`); :func:`swap_link` then
points ``DIR`` at it with ``os.replace`` of a new link, so ``DIR`` is at every instant the old
complete set or the new one. :func:`prune` deletes only releases that are neither current, nor among
the newest ``keep_previous``, nor younger than :data:`PRUNE_AFTER_S` (a reader may hold them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from medimg.pull.errors import PullError

PRUNE_AFTER_S = 600  # seconds a finished release stays after it stops being current
PARTIAL_PREFIX = ".partial-"


def releases_dir(out_dir: Path) -> Path:
    """Where the release folders of the link ``out_dir`` live: ``PARENT/.DIR.releases``."""
    return out_dir.parent / f".{out_dir.name}.releases"


def check_out_dir(out_dir: Path) -> None:
    """:class:`PullError` unless ``out_dir`` is a link, absent, or an empty directory (it cannot be swapped)."""
    if out_dir.is_symlink() or not out_dir.exists():
        return
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return
    raise PullError(
        f"{out_dir} exists and is not a link made by medimg pull; pull manages --out as a symlink to a verified "
        "release so it can be swapped atomically. Remove it or choose another --out."
    )


def new_partial(out_dir: Path) -> Path:
    """A new, empty ``.partial-<random>`` folder beside ``out_dir``'s releases."""
    rel = releases_dir(out_dir)
    rel.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=rel))


def partial_id(partial: Path) -> str:
    """The random part of a partial folder's name (unique among concurrent pulls)."""
    return partial.name[len(PARTIAL_PREFIX) :]


def write_synced(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` and fsync it."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` itself, so a rename or link inside it survives a crash (POSIX); raises
    ``OSError``.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(partial: Path, name: str) -> Path:
    """Fsync every file in ``partial``, make it readable by all (0755), and rename it to ``name``; the release."""
    for path in partial.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    partial.chmod(0o755)  # mkdtemp makes it 0700; deployment readers may be other users
    fsync_dir(partial)
    release = partial.parent / name
    os.rename(partial, release)
    return release


def swap_link(out_dir: Path, release: Path) -> None:
    """Point ``out_dir`` at ``release`` in one atomic rename (an empty real directory is removed first)."""
    tmp_link = out_dir.parent / f".{out_dir.name}.link-{uuid.uuid4().hex}"
    os.symlink(os.path.relpath(release, out_dir.parent), tmp_link)
    try:
        if out_dir.is_dir() and not out_dir.is_symlink():
            out_dir.rmdir()  # checked empty before the download; rmdir fails if it no longer is
        os.replace(tmp_link, out_dir)
    except OSError:
        tmp_link.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir.parent)


def prune(out_dir: Path, keep_previous: int) -> None:
    """Delete old releases (beyond the newest ``keep_previous``, older than PRUNE_AFTER_S) and stale partials."""
    rel = releases_dir(out_dir)
    current = Path(os.path.realpath(out_dir)) if out_dir.is_symlink() else None
    now = time.time()
    entries = sorted((p for p in rel.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    finished = [p for p in entries if not p.name.startswith(PARTIAL_PREFIX) and p.resolve() != current]
    stale = [p for p in entries if p.name.startswith(PARTIAL_PREFIX) and now - p.stat().st_mtime > 6 * PRUNE_AFTER_S]
    for path in finished[keep_previous:] + stale:
        if now - path.stat().st_mtime > PRUNE_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)
