"""Ingest throughput and peak memory: medimg's ingest against a plain single-process Pillow loop.

Workloads (real files from $MEDIMG_DATA_DIR, default ../shared/data):

* ``fullres``: the 30 full-resolution Kermany JPEGs of ``chest_xray_fullres`` (up to ~2500 px),
  the list repeated to get enough images for a stable figure (files are symlinked under new
  names, and the decode cache is off, so every image is decoded every time);
* ``dicom``: the 10 good DICOM samples (CR, CT, MR; JPEG baseline, JPEG 2000, RLE, raw), repeated.

Contenders, each in a fresh process (so peak memory is its own):

* ``baseline``: a plain loop in one process: open, decode, grey, resize to 64 x 64 with Pillow
  (DICOM: ``pydicom`` ``pixel_array``, min-max to uint8, Pillow resize), nothing written;
* ``pipeline``: :func:`medimg.data.ingest_folders.ingest_files`, the ingest step minus DVC: scan and
  SHA-256 of every file, decoding and the kermany64 contract (64 px, area) in a process pool,
  de-identification, quarantine checks, splitting by patient, PNGs and the Parquet manifest
  written. ``w1``/``w2``: one or two decoding processes; ``reduced``: the contract's reduced-
  resolution decoding on (``jpeg_dct_scaling``: JPEG DCT-domain scaling, as in the kermany64
  params; ``jpeg2000_reduce``: JPEG 2000 decoded at a coarser wavelet level), ``full``: both off
  (the default params), every image decoded at full resolution.

Reported per run: images/s (wall clock, pool start-up included, imports excluded), peak RSS of
the whole process tree (the benchmark process and all its children, sampled every 20 ms), and
the CPU seconds of the tree, and the ratio to the baseline at the same size. Each configuration
runs ``--trials`` times, interleaved with the others; the fastest trial is reported (other
programs on a shared machine only ever slow a run down) with the highest peak memory of all. Two sizes per
workload show whether memory grows with the number of images. The machine's free parallelism
(a busy loop in two processes against one, before and after) is printed too: on a shared machine
the parallel figures are only as good as the second core is free.

Usage: python benchmarks/ingest_throughput.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDIMG_DATA_DIR", ROOT.parent / "shared" / "data"))
GOOD_DICOM = [
    "xray/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "xray/Fake_MONOHR1.dcm",
    "xray/RG1_J2KI.dcm",
    "ct/CT_small.dcm",
    "ct/693_UNCI.dcm",
    "ct/693_J2KI.dcm",
    "mr/MR_small.dcm",
    "mr/MR_small_RLE.dcm",
    "mr/MR_small_jp2klossless.dcm",
    "mr/MR2_J2KI.dcm",
]


def _fullres_folder(tmp: Path, repeat: int) -> list[Path]:
    """<tmp>/src/{NORMAL,PNEUMONIA}/<stem>-<k>.jpeg: symlinks to the 30 originals, ``repeat`` times.

    The appended image number keeps Kermany's patient rule working (``IM-0115-0001-7`` is still
    patient ``IM-0115``), so the copies group by patient as real repeat images do.
    """
    out = []
    sep = {"NORMAL": "-", "PNEUMONIA": "_"}
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp / "src" / cls).mkdir(parents=True)
        for src in sorted((DATA / "chest_xray_fullres" / cls).iterdir()):
            for k in range(repeat):
                link = tmp / "src" / cls / f"{src.stem}{sep[cls]}{k}{src.suffix}"
                link.symlink_to(src)
                out.append(link)
    return out


def _dicom_folder(tmp: Path, repeat: int) -> list[Path]:
    out = []
    for rel in GOOD_DICOM:
        folder = tmp / "src" / rel.split("/")[0]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(repeat):
            link = folder / f"r{k:03d}-{Path(rel).name}"
            link.symlink_to(DATA / "dicom" / rel)
            out.append(link)
    (tmp / "src" / "labels.csv").write_text("key,label\nxray,pneumonia\nct,normal\nmr,normal\n")
    return out


def _baseline(files: list[Path], dicom: bool) -> None:
    import numpy as np
    from PIL import Image

    if dicom:
        import pydicom

        for path in files:
            arr = pydicom.dcmread(path).pixel_array.astype(np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            grey = ((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
            np.asarray(Image.fromarray(grey).resize((64, 64), Image.BILINEAR))
        return
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("L").resize((64, 64), Image.BILINEAR))


def run_one(config: dict) -> dict:
    """One measurement in this process (called by the parent in a fresh interpreter)."""
    from medimg.config import parse_params
    from medimg.data.deid import DEMO_SECRET
    from medimg.data.ingest_folders import ingest_files

    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as name:
        tmp = Path(name)
        dicom = config["workload"] == "dicom"
        files = (_dicom_folder if dicom else _fullres_folder)(tmp, config["repeat"])
        import numpy  # noqa: F401  (imports are not part of the timing)
        import PIL.Image  # noqa: F401
        import pydicom  # noqa: F401

        started = time.perf_counter()
        if config["contender"] == "baseline":
            _baseline(files, dicom)
            n = len(files)
        else:
            params = parse_params(
                {
                    "preprocess": {
                        "size": 64,
                        "interpolation": "area",
                        "jpeg_dct_scaling": config["reduced"],
                        "jpeg2000_reduce": config["reduced"],
                    },
                    "data": {
                        "source": "dicom_folder" if dicom else "image_folder",
                        "workers": config["workers"],
                        "cache": False,
                        "dicom": {"label_key": "folder"},
                    },
                }
            )
            result = ingest_files(
                params.data.source,
                params.data,
                params.task.class_names,
                params.preprocess,
                tmp / "dataset",
                DEMO_SECRET,
                tmp / "src",
            )
            n = result.n_images
            assert n == len(files), (n, len(files), result.quarantine.counts_by_reason())
        seconds = time.perf_counter() - started
    return {"n_images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}


def measure(config: dict) -> dict:
    """Run one config in a fresh interpreter, sampling the peak RSS of its whole process tree."""
    import psutil

    child = subprocess.Popen(
        [sys.executable, __file__, "--one", json.dumps(config)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    peak = 0
    cpu: dict[int, float] = {}  # pid -> user + system seconds, last seen
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        proc = psutil.Process(child.pid)
        while not done.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                        times = p.cpu_times()
                        cpu[p.pid] = times.user + times.system
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"benchmark run failed: {config}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**config, **result, "peak_tree_rss_mb": round(peak / 2**20, 1), "tree_cpu_s": round(sum(cpu.values()), 2)}


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def parallel_headroom() -> float:
    """Speed-up of two busy processes over one doing the same work: ~2 on 2 free cores, ~1 when
    other programs keep one core busy. Printed with the results, since no figure of a parallel
    ingest on a shared machine means much without it."""
    import multiprocessing

    n = 4_000_000
    started = time.perf_counter()
    _burn(n), _burn(n)
    serial = time.perf_counter() - started
    with multiprocessing.get_context("fork").Pool(2) as pool:
        started = time.perf_counter()
        pool.map(_burn, [n, n])
        parallel = time.perf_counter() - started
    return round(serial / parallel, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    parser.add_argument(
        "--trials",
        type=int,
        default=2,
        help="runs per configuration, interleaved; the fastest is kept (other programs share the CPUs)",
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    sizes = {"fullres": (2, 4), "dicom": (2, 4)} if args.quick else {"fullres": (10, 40), "dicom": (8, 24)}
    plan = []
    for workload, (small, large) in sizes.items():
        for repeat in (small, large):
            plan.append(
                {"workload": workload, "repeat": repeat, "contender": "baseline", "workers": 1, "reduced": False}
            )
            plan.append(
                {"workload": workload, "repeat": repeat, "contender": "pipeline", "workers": 2, "reduced": True}
            )
        plan.append({"workload": workload, "repeat": large, "contender": "pipeline", "workers": 1, "reduced": True})
        plan.append({"workload": workload, "repeat": large, "contender": "pipeline", "workers": 2, "reduced": False})
    headroom = [parallel_headroom()]
    runs: dict[int, list[dict]] = {i: [] for i in range(len(plan))}
    for _ in range(args.trials):
        for i, config in enumerate(plan):
            runs[i].append(measure(config))
    results = []
    for i in range(len(plan)):
        best = max(runs[i], key=lambda r: r["images_per_s"])
        best["peak_tree_rss_mb"] = max(r["peak_tree_rss_mb"] for r in runs[i])  # the worst trial's memory
        best["trials_images_per_s"] = [r["images_per_s"] for r in runs[i]]
        results.append(best)
    headroom.append(parallel_headroom())
    base = {(r["workload"], r["repeat"]): r["images_per_s"] for r in results if r["contender"] == "baseline"}
    print(
        f"{'workload':9} {'images':>6} {'contender':22} {'images/s':>9} {'x baseline':>10} {'peak tree RSS MB':>17} "
        f"{'CPU s':>7} {'images/CPU s':>12}"
    )
    for r in results:
        label = (
            r["contender"]
            if r["contender"] == "baseline"
            else f"pipeline w{r['workers']} {'reduced' if r['reduced'] else 'full'}"
        )
        ratio = r["images_per_s"] / base[(r["workload"], r["repeat"])]
        r["x_baseline"] = round(ratio, 2)
        per_cpu = r["n_images"] / r["tree_cpu_s"] if r["tree_cpu_s"] else float("nan")
        print(
            f"{r['workload']:9} {r['n_images']:>6} {label:22} {r['images_per_s']:>9.1f} {ratio:>10.2f} "
            f"{r['peak_tree_rss_mb']:>17.1f} {r['tree_cpu_s']:>7.1f} {per_cpu:>12.1f}"
        )
    print(
        f"cpus available: {len(os.sched_getaffinity(0))}; 2-process speed-up of a busy loop before/after: "
        f"{headroom}; load average at the end: {os.getloadavg()}"
    )
    if args.out:
        args.out.write_text(json.dumps({"headroom": headroom, "results": results}, indent=1))


if __name__ == "__main__":
    main()
