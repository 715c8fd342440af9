"""Reference figures from the literature and from measured baselines, shipped as data files."""

from __future__ import annotations

import copy
import functools
from importlib import resources

import yaml


@functools.cache
def _entries() -> dict[str, dict]:
    text = resources.files(__package__).joinpath("benchmarks.yaml").read_text()
    return {entry["id"]: entry for entry in yaml.safe_load(text)["benchmarks"]}


def benchmarks() -> dict[str, dict]:
    """The benchmark entries of ``benchmarks.yaml`` (schema in the file's header), by id.

    The file is parsed once per process (every params load checks ``gates.benchmark.id`` against
    it); each call returns a fresh copy, so a caller may change what it gets.
    """
    return copy.deepcopy(_entries())


def benchmark(benchmark_id: str) -> dict:
    """The benchmark entry ``benchmark_id``; ``KeyError`` naming the known ids when there is none."""
    known = benchmarks()
    if benchmark_id not in known:
        raise KeyError(f"gates.benchmark.id: unknown benchmark {benchmark_id!r}; known: {', '.join(sorted(known))}")
    return known[benchmark_id]
