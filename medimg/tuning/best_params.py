"""The best trial as a params file that goes through the normal flow (``medimg run --params <file>``).

The file holds only what differs from the params the study ran on: ``base:`` names that file (absolute path, see
:func:`medimg.config.read_params_file`), then the overrides the study was started with (``--set``, ``--trials``)
and the best trial's values, nested by section. A comment header says where it came from. The retrain flow's
gates decide about it as about any candidate.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from medimg.config import BASE_KEY, deep_merge, load_params
from medimg.tuning.results import Values
from medimg.tuning.space import nested

FILE_NAME = "best_params.yaml"


def best_params_text(
    original: Path, overrides: dict | None, values: Values, study_name: str, number: int, metric: str, value: float
) -> str:
    """The YAML text: a header naming the study, trial and value, ``base: <original, absolute>``, then the
    ``overrides`` with the trial's ``values`` laid over them. ``ValueError`` for a non-finite value."""
    if not math.isfinite(value):
        raise ValueError(f"trial {number} has no finite {metric}: not a best trial")
    body = deep_merge(overrides or {}, nested(values))
    header = (
        f"# The best trial of Optuna study {study_name} (medimg tune): trial {number}, {metric} {value:.6f}.\n"
        f"# Its values over {original.name}; run it through the normal flow, whose gates decide:\n"
        f"#   medimg run --params <this file>\n"
    )
    return header + yaml.safe_dump({BASE_KEY: str(original.resolve()), **body}, sort_keys=False)


def write_best_params(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (its folder created; replaced whole, never half-written) after checking that it
    loads as valid params (``ConfigError`` otherwise); ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    try:
        load_params(partial)
    except Exception:
        partial.unlink()
        raise
    partial.replace(path)
    return path
