"""The radiologists' reviews: an append-only JSON-lines log in the workspace (``serve/reviews.jsonl``).

One line per review: who (the reader's login name, and the keyed reader pseudonym the training data gets),
when, which case, what the model said (class, p_abnormal, whether abnormal, model name, version and ONNX
sha256), what the reader said (class, whether abnormal), whether they agree, the reader's comment, and the
training example the review put in the inbox (its path relative to the inbox and its sha256), if any.

Append-only: lines are never changed or removed. A reader reviews a case once: a second review of the same
case by the same reader is refused (:class:`AlreadyReviewed`, HTTP 409 on the page) and nothing is written.
The check and the append happen under an exclusive ``flock`` of ``<log>.lock``, so two submissions at the
same moment cannot both pass it. The comment is free text the reader typed: the page escapes it on output;
it stays in this workspace file and never reaches the inbox, the training data or MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from medimg.file_lock import locked

#: Longest comment kept (characters); a longer one is refused (HTTP 422).
MAX_COMMENT_CHARS = 2000


class AlreadyReviewed(Exception):
    """This reader already reviewed this case; nothing was written."""


@dataclass(frozen=True)
class Review:
    """One review (module docstring). ``reader_said`` is one of the model's classes; ``agrees`` is
    ``reader_said == model_said``; ``example`` / ``example_sha256``: the inbox file the review wrote (path
    relative to the inbox) and the SHA-256 of its bytes, ``None`` when it wrote none (not the case's first
    review, or no inbox configured); ``feedback``: why not, or ``written``."""

    case_id: str
    reader: str
    reader_pseudonym: str | None
    time: str
    model_name: str
    model_version: str
    onnx_sha256: str
    model_said: str
    model_abnormal: bool
    p_abnormal: float
    reader_said: str
    reader_abnormal: bool
    agrees: bool
    comment: str
    example: str | None = None
    example_sha256: str | None = None
    feedback: str = "not_written"

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReviewLog:
    """The review log at ``path`` (created with its folder on the first review)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[Review]:
        """Every review, oldest first; [] when there is none. A torn last line is skipped."""
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n") and line.strip():
                    out.append(Review(**json.loads(line)))
        return out

    def of_case(self, case_id: str) -> list[Review]:
        """The reviews of one case, oldest first."""
        return [r for r in self.read() if r.case_id == case_id]

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path)

    def add(self, review: Review, feed: Callable[[Review], tuple[str, str] | str] | None = None) -> Review:
        """Append ``review``; the stored review is returned.

        :class:`AlreadyReviewed` (nothing written) when its reader already reviewed its case. ``feed`` is
        called, under the lock, only for the case's first review: it writes the training example and gives
        ``(example path relative to the inbox, its sha256)``, or a reason code when it wrote none; later
        reviews get ``feedback`` ``case_already_in_inbox``. ``ValueError`` for a comment over
        :data:`MAX_COMMENT_CHARS`.
        """
        if len(review.comment) > MAX_COMMENT_CHARS:
            raise ValueError(f"the comment has {len(review.comment)} characters; at most {MAX_COMMENT_CHARS}")
        with self._locked():
            earlier = self.of_case(review.case_id)
            if any(r.reader == review.reader for r in earlier):
                raise AlreadyReviewed(f"{review.reader} already reviewed case {review.case_id}")
            if earlier:
                review = replace(review, feedback="case_already_in_inbox")
            elif feed is not None:
                fed = feed(review)
                if isinstance(fed, tuple):
                    review = replace(review, example=fed[0], example_sha256=fed[1], feedback="written")
                else:
                    review = replace(review, feedback=fed)
            data = (review.to_json() + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return review
