"""The worklist: cases with their reviews, filtered (to review, reviewed, disagreements, by model version).

Pure functions over :class:`~medimg.review.cases.Case` and :class:`~medimg.review.reviews.Review` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from medimg.review.cases import Case
from medimg.review.reviews import Review

#: ``to_review``: no review yet; ``reviewed``: at least one; ``disagreements``: a reader said another class
#: than the model; ``all``.
Show = Literal["to_review", "reviewed", "disagreements", "all"]
SHOWS: tuple[str, ...] = get_args(Show)


@dataclass(frozen=True)
class WorklistRow:
    """One case with its reviews (oldest first) and whether the viewing reader reviewed it."""

    case: Case
    reviews: tuple[Review, ...]
    reviewed_by_viewer: bool

    @property
    def disagrees(self) -> bool:
        """True when a reader said another class than the model."""
        return any(not r.agrees for r in self.reviews)


def rows(
    cases: Sequence[Case],
    reviews: Sequence[Review],
    viewer: str,
    show: Show = "to_review",
    version: str | None = None,
    limit: int | None = None,
) -> list[WorklistRow]:
    """The cases (in the given order) that pass ``show`` and, when given, were scored by model ``version``;
    at most ``limit``. ``ValueError`` for an unknown ``show``."""
    if show not in SHOWS:
        raise ValueError(f"unknown worklist filter {show!r}; filters: {', '.join(SHOWS)}")
    by_case: dict[str, list[Review]] = {}
    for review in reviews:
        by_case.setdefault(review.case_id, []).append(review)
    out = []
    for case in cases:
        if version is not None and case.model_version != version:
            continue
        mine = tuple(by_case.get(case.case_id, ()))
        row = WorklistRow(case, mine, any(r.reader == viewer for r in mine))
        keep = {
            "to_review": not mine,
            "reviewed": bool(mine),
            "disagreements": row.disagrees,
            "all": True,
        }[show]
        if keep:
            out.append(row)
        if limit is not None and len(out) >= limit:
            break
    return out


def versions(cases: Sequence[Case]) -> list[str]:
    """The model versions that scored ``cases``, newest (highest number) first."""
    return sorted({c.model_version for c in cases}, key=lambda v: (len(v), v), reverse=True)
