"""Reference figures from the literature, shipped as data files."""

from __future__ import annotations

from importlib import resources

import yaml


def radiologist_benchmarks() -> dict[str, dict]:
    """The published reader benchmarks of ``radiologist_benchmarks.yaml``, by id."""
    text = resources.files(__package__).joinpath("radiologist_benchmarks.yaml").read_text()
    return {entry["id"]: entry for entry in yaml.safe_load(text)["benchmarks"]}


def benchmark(benchmark_id: str) -> dict:
    """The benchmark entry ``benchmark_id``; ``KeyError`` naming the known ids when there is none."""
    known = radiologist_benchmarks()
    if benchmark_id not in known:
        raise KeyError(f"gates.benchmark.id: unknown benchmark {benchmark_id!r}; known: {', '.join(sorted(known))}")
    return known[benchmark_id]
