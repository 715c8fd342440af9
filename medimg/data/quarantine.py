"""Quarantine: the list of input files set aside as unusable, and the limit on how many may be.

A few broken files in a large collection are normal and should not stop ingestion; many of them
mean something upstream is wrong (a bad export, a wrong folder, a missing decoder plugin), and
training on what is left would silently change the data set. So bad files are recorded with a
reason instead of raising, the list is written next to the data for review, and
:meth:`Quarantine.check_threshold` stops the run when their share exceeds a configured limit.

Two versions of the list: :meth:`Quarantine.write_csv` is the workspace's report for the owner of
the source, who must be able to find each file: its place in the source folder (``file``:
``source/<rel>`` or ``inbox/<rel>``) and the decoding library's own error message
(``library_message``) beside the pseudonym and reason; both may hold patient names (file names,
header values quoted by a library). :meth:`Quarantine.write_pseudonymous_csv` is what may leave
the workspace (MLflow): pseudonym and reason code only.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medimg.data.images import BadImage

CSV_COLUMNS = ("path", "reason", "message", "file", "pseudonym", "library_message")
PSEUDONYMOUS_COLUMNS = ("pseudonym", "reason")


class QuarantineThresholdError(RuntimeError):
    """Too large a share of the input was quarantined."""


@dataclass(frozen=True)
class QuarantineEntry:
    """``path``: how the caller names the file (a pseudonym, or a path); ``message``: PHI-free text;
    ``file``: its place in the source folder; ``pseudonym``: a keyed pseudonym of that place (the
    ``path`` when not given); ``library_message``: the decoding library's error text, or None."""

    path: str
    reason: str
    message: str
    file: str = ""
    pseudonym: str = ""
    library_message: str | None = None


class Quarantine:
    """Entries (path, reason, message) in the order they were added.

    Messages should be PHI-free; those of :class:`~medimg.data.images.BadImage` are.
    """

    def __init__(self) -> None:
        self._entries: list[QuarantineEntry] = []

    def add(
        self,
        path: str | Path,
        reason: str,
        message: str = "",
        *,
        file: str = "",
        pseudonym: str = "",
        library_message: str | None = None,
    ) -> None:
        """Record one quarantined image: its ``path`` (or ref), ``reason`` code and PHI-free ``message``.

        ``file``: its place in the source folder; ``pseudonym``: the keyed file pseudonym (default: the
        path). ``ValueError`` when ``reason`` is empty.
        """
        if not reason:
            raise ValueError("a quarantine entry needs a reason")
        self._entries.append(
            QuarantineEntry(str(path), reason, message, file, pseudonym or str(path), library_message or None)
        )

    def add_bad_image(self, error: BadImage) -> None:
        """Record a :class:`BadImage` with its own path, reason, message and library message (when it has one)."""
        self.add(error.path, error.reason, str(error), library_message=getattr(error, "library_message", None))

    @property
    def entries(self) -> tuple[QuarantineEntry, ...]:
        """The entries, in the order they were added."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def counts_by_reason(self) -> dict[str, int]:
        """{reason: count}, most frequent first (ties by reason name)."""
        counts = Counter(entry.reason for entry in self._entries)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def write_csv(self, path: str | Path) -> Path:
        """Write the workspace's report: :data:`CSV_COLUMNS` rows (header included, even with no entries).

        It names files by their place in the source and quotes library messages: keep it in the workspace.
        """
        return self._write(
            path, CSV_COLUMNS, lambda e: (e.path, e.reason, e.message, e.file, e.pseudonym, e.library_message or "")
        )

    def write_pseudonymous_csv(self, path: str | Path) -> Path:
        """Write what may leave the workspace: ``pseudonym,reason`` rows (header included, even with no entries)."""
        return self._write(path, PSEUDONYMOUS_COLUMNS, lambda e: (e.pseudonym, e.reason))

    def _write(self, path: str | Path, columns: tuple[str, ...], row) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for entry in self._entries:
                writer.writerow(row(entry))
        return path

    def bad_fraction(self, n_total: int) -> float:
        """Quarantined entries / ``n_total`` (the number of files looked at, bad ones included)."""
        if n_total < len(self._entries):
            raise ValueError(
                f"n_total={n_total} is less than the {len(self._entries)} quarantined files; "
                "it must count every file looked at, bad ones included"
            )
        return 0.0 if n_total == 0 else len(self._entries) / n_total

    def check_threshold(self, n_total: int, max_fraction: float) -> None:
        """Raise :class:`QuarantineThresholdError` when ``bad_fraction(n_total) > max_fraction``.

        The message gives the counts by reason, which usually says what went wrong upstream.
        """
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        fraction = self.bad_fraction(n_total)
        if fraction > max_fraction:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in self.counts_by_reason().items())
            raise QuarantineThresholdError(
                f"{len(self._entries)} of {n_total} files ({fraction:.1%}) were quarantined, more "
                f"than the allowed {max_fraction:.1%} ({reasons})"
            )
