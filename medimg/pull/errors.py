"""What can go wrong in ``medimg pull``; both leave the output folder as it was."""

from __future__ import annotations


class PullError(RuntimeError):
    """The model could not be pulled; the output folder was left as it was."""


class IntegrityError(PullError):
    """The file downloaded from the registry is not the file the registry's sha256 tag names."""
