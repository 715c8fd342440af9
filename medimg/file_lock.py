"""A blocking, exclusive lock beside a file that several processes rewrite (the user store, the review log).

``with locked(path):`` holds ``fcntl.flock(LOCK_EX)`` on ``<path>.lock`` (created 0600 with its folder)
for the block, so read-modify-write sequences of cooperating processes do not interleave. Advisory:
only code that takes the same lock is kept out. The retrain's own non-blocking lock is
:func:`medimg.workspace.exclusive`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (on ``<path>.lock``) for the ``with`` block; waits for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
