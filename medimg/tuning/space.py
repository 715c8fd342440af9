"""The search space (pure): Optuna suggestions for ``tune.space.<task kind>``, and the trial's params.

A trial's suggestions are (dotted key, value) pairs; :func:`nested` turns them into a params overlay and
:func:`apply` into the trial's validated :class:`~medimg.config.Params`. A trial always trains one network: an
ensemble (``model.ensemble``) is built by the normal flow from the best trial, not by every trial.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Protocol

from medimg.config import Params, SearchDimension, deep_merge, parse_params
from medimg.tuning.results import Value, Values


class Suggests(Protocol):
    """What :func:`suggest` needs of a trial (``optuna.Trial`` has it)."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = ..., log: bool = ...) -> float:
        """A float in [low, high]."""
        ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = ..., log: bool = ...) -> int:
        """An int in [low, high]."""
        ...

    def suggest_categorical(self, name: str, choices: Sequence) -> object:
        """One of ``choices``."""
        ...


def suggest(trial: Suggests, dims: Sequence[SearchDimension]) -> Values:
    """The trial's value of every entry of ``dims``, in order, named by the entry's params key."""
    out: list[tuple[str, Value]] = []
    for d in dims:
        value: Value
        if d.kind == "categorical":
            value = trial.suggest_categorical(d.key, list(d.choices or ()))  # type: ignore[assignment]
        elif d.kind == "int":
            step = int(d.step) if d.step is not None else 1
            value = trial.suggest_int(d.key, int(d.low or 0), int(d.high or 0), step=step, log=d.log)
        else:
            value = trial.suggest_float(d.key, float(d.low or 0), float(d.high or 0), step=d.step, log=d.log)
        out.append((d.key, value))
    return tuple(out)


def nested(values: Values) -> dict:
    """A params overlay from (dotted key, value) pairs: ``(("train.lr", 0.01),)`` -> ``{"train": {"lr": 0.01}}``."""
    out: dict = {}
    for key, value in values:
        node = out
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


def apply(params: Params, values: Values) -> Params:
    """``params`` with the trial's values, validated as a whole (``ConfigError`` for a combination the params
    refuse, e.g. ``train.augment.scale_min`` above ``scale_max``); one network (``model.ensemble`` reset)."""
    raw = deep_merge(params.model_dump(mode="json"), nested(values))
    raw["model"]["ensemble"] = {"members": 1, "tta_flips": []}
    return parse_params(raw, "trial params")


def digest(dims: Sequence[SearchDimension]) -> str:
    """A short hash of the search space (keys, kinds, bounds, choices): part of the default study name."""
    blob = json.dumps([d.model_dump(mode="json") for d in dims], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
