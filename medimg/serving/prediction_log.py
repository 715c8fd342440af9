"""The service's prediction log: one JSON line per answered or refused input, in the workspace.

It is the input of live monitoring (score and input drift, refusal rates, realised sensitivity
from reviews). It holds pseudonyms only: study, series and SOP instance UIDs go through
:func:`medimg.data.deid.pseudonym` before they reach a :class:`LoggedPrediction`; no tag value,
no file name from a request, no date of the patient is ever written.

Appends are whole lines written with one ``write`` under an exclusive ``flock``, so several
processes (HTTP workers, the DICOM node) can share one log and a reader never sees half a line.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

#: Where a prediction came from: the HTTP API (tensor or file) or the DICOM node.
Source = Literal["http_tensor", "http_file", "dicom"]


@dataclass(frozen=True)
class LoggedPrediction:
    """One answered or refused input.

    Answered: ``class_probabilities`` (class name -> softmax probability), ``p_abnormal`` (their
    sum over the abnormal classes), ``predicted_class``, ``abnormal`` (p_abnormal >= ``threshold``).
    Refused: ``refusal_reason`` set (a reason code such as ``modality_mismatch``), the outcome fields
    ``None``. ``latency_ms``: from receiving the input to the answer (DICOM: to the result stored).
    ``study``, ``series``, ``instance``: pseudonyms (``None`` for HTTP inputs without them).
    ``input_mean`` / ``input_std``: mean and standard deviation of the stored-size grey uint8 image
    (0-255) the model saw, for input drift; ``None`` when refused before decoding.
    ``result_sop_class``: the DICOM object sent back (``SR``, ``SEG``) when one was stored.
    """

    source: Source
    model_name: str | None
    model_version: str | None
    onnx_sha256: str | None
    latency_ms: float
    refusal_reason: str | None = None
    class_probabilities: dict[str, float] | None = None
    p_abnormal: float | None = None
    predicted_class: str | None = None
    abnormal: bool | None = None
    threshold: float | None = None
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    modality: str | None = None
    input_mean: float | None = None
    input_std: float | None = None
    result_sop_class: str | None = None
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    def to_json(self) -> str:
        """One line of JSON (no newline), keys in field order."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> LoggedPrediction:
        """The inverse of :meth:`to_json`; ``ValueError`` for a line that is not one."""
        try:
            raw = json.loads(line)
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"not a prediction log line: {err}") from None


class PredictionLog:
    """Append-only JSON lines at ``path`` (created with its folder on the first append)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, entry: LoggedPrediction) -> None:
        """Write ``entry`` as one line, atomically with respect to other appenders."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (entry.to_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> Iterator[LoggedPrediction]:
        """Every entry in order; nothing when the log does not exist. A torn last line is skipped."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n") and line.strip():
                    yield LoggedPrediction.from_json(line)
