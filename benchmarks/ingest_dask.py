"""Ingest decoding throughput: the local process pool against a local Dask cluster (``data.dask``), files/s.

The folder (default: ``brain_tumor_mri`` under $MEDIMG_DATA_DIR, 1181 JPEGs of mostly 512 px; ``--params
params/kermany64.yaml --root chest_xray`` for the 5840 Kermany JPEGs) is ingested by
:func:`medimg.data.ingest_folders.ingest_files` with the decode cache off (every file decoded every time):

* ``pool``: ``data.workers`` processes of the local pool (forkserver);
* ``dask``: a ``distributed.LocalCluster`` of as many single-thread worker processes, ``data.dask.address`` its
  scheduler, ``min_files`` 1, chunks of ``--chunk-files``. The cluster is started once, before the timed runs
  (its start-up is printed apart); its workers import medimg on their first chunk, inside the first timed run.

Both must give the same dataset (checked: the manifests are equal). Each contender runs ``--trials`` times,
interleaved; the fastest trial is reported (other programs on a shared machine only slow a run down).
``--limit N`` ingests the first N files (symlinked into a temporary folder, class folders kept).

Usage: python benchmarks/ingest_dask.py [--limit 500] [--workers 2] [--chunk-files 200] [--trials 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # medimg is imported in main(), after the arguments are read
    from medimg.config import Params
    from medimg.data.ingest_result import IngestResult

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDIMG_DATA_DIR", ROOT.parent / "shared" / "data"))
SECRET = b"benchmark-secret-not-for-real-data-0123456789"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def source_folder(root: Path, limit: int | None, into: Path) -> Path:
    """``root`` itself, or its first ``limit`` images (sorted paths) symlinked under ``into``."""
    if limit is None:
        return root
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    for path in files:
        target = into / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    return into


def run(params: Params, folder: Path, out: Path, address: str | None, chunk_files: int) -> tuple[float, IngestResult]:
    """(seconds, result) of one ingest of ``folder`` into ``out``, through the pool or the Dask cluster."""
    from medimg.config import parse_params
    from medimg.data.ingest_folders import ingest_files

    raw = params.model_dump(mode="json")
    raw["data"]["dask"] = {"address": address, "min_files": 1, "chunk_files": chunk_files}
    p = parse_params(raw)
    started = time.perf_counter()
    result = ingest_files(p.data.source, p.data, p.task.class_names, p.preprocess, out, SECRET, folder)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params" / "brain_mri.yaml"))
    parser.add_argument("--root", default="brain_tumor_mri", help="the folder; relative: under $MEDIMG_DATA_DIR")
    parser.add_argument("--limit", type=int, default=None, help="the first N images only")
    parser.add_argument("--workers", type=int, default=2, help="pool processes = Dask worker processes")
    parser.add_argument("--chunk-files", type=int, default=200)
    parser.add_argument("--trials", type=int, default=1)
    args = parser.parse_args()

    from distributed import LocalCluster

    from medimg import preprocess
    from medimg.config import load_params
    from medimg.data import manifest

    root = Path(args.root) if Path(args.root).is_absolute() else DATA / args.root
    params = load_params(
        args.params,
        {
            "data": {"root": str(root), "workers": args.workers, "cache": False, "max_bad_fraction": 1.0},
            "validation": {"expected_split_sizes": None},
        },
    )
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    with tempfile.TemporaryDirectory(prefix="medimg-ingest-dask-") as tmp:
        folder = source_folder(root, args.limit, Path(tmp) / "src")
        started = time.perf_counter()
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=30,
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        )
        startup = time.perf_counter() - started
        best: dict[str, float] = {}
        frames = {}
        n_files = 0
        with cluster:
            for trial in range(args.trials):
                for name, address in (("pool", None), ("dask", cluster.scheduler_address)):
                    out = Path(tmp) / f"{name}-{trial}"
                    seconds, result = run(params, folder, out, address, args.chunk_files)
                    n_files = result.n_files
                    best[name] = min(best.get(name, float("inf")), seconds)
                    frames[name] = manifest.read(out)
                    print(
                        json.dumps({"contender": name, "trial": trial, "files": n_files, "seconds": round(seconds, 2)})
                    )
        assert frames["pool"].equals(frames["dask"]), "the Dask cluster's dataset differs from the pool's"
    summary = {
        "root": str(root),
        "files": n_files,
        "contract": preprocess.contract_hash(params.preprocess),
        "size": params.preprocess.size,
        "workers": args.workers,
        "chunk_files": args.chunk_files,
        "cpus": os.cpu_count(),
        "dask_cluster_startup_s": round(startup, 2),
        **{f"{name}_files_per_s": round(n_files / seconds, 1) for name, seconds in best.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
