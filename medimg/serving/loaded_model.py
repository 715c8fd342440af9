"""The model a service is answering with, and what hands it out.

A :class:`LoadedModel` is one verified registry version loaded into ONNX Runtime: whoever holds a
reference keeps using that version until it is done, so a swap (a moved alias) never changes the
model in the middle of a request. A :class:`ModelHolder` hands out the current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from medimg.scoring import OnnxModel


@dataclass(frozen=True)
class LoadedModel:
    """A registered version, verified against its ``medimg.onnx_sha256`` tag and loaded.

    ``name``: the registered model name; ``version``: its version number as text; ``onnx_sha256``:
    the sha256 (hex) of the ONNX file that is loaded; ``alias``: the alias it was resolved from
    (``None`` when served by version); ``model``: the ONNX Runtime session with the model's own
    preprocessing contract and task metadata.
    """

    name: str
    version: str
    onnx_sha256: str
    model: OnnxModel
    alias: str | None = "champion"


class ModelHolder(Protocol):
    """Hands out the model to answer with; ``None`` until a verified model is loaded."""

    def current(self) -> LoadedModel | None:
        """The model to use for the next request (a reference: keep it for the whole request)."""
        ...
