"""CPU inference throughput: ONNX Runtime against PyTorch eager, same model, same real images.

Why: deployment pipelines run the exported ONNX file, so exporting must not cost speed; the
issue's target is ONNX Runtime at least 1.5x PyTorch eager at batch 32 for the default model.

What is measured: the default model of ``params.yaml`` (``--architecture``/``--width`` override it),
weights from ``--checkpoint`` or random initialisation (throughput does not depend on the weight
values; the JSON says which was used), exported with medimg's own exporter (dynamic batch axis,
opset from params). Inputs are real PneumoniaMNIST test images, preprocessed by ``medimg.preprocess``
and cut into batches beforehand, so only the forward pass is timed. Both engines get the same
number of CPU threads (``--threads``, default 2: torch intra-op threads and ONNX Runtime
``intra_op_num_threads``; one inter-op thread each). Per engine and batch size: warm-up
iterations, then ``--rounds`` timed rounds of ``--seconds`` each (at least ``--min-iters``
iterations) with ``time.perf_counter``, the two engines' rounds alternating so that a change in the
machine's load hits both alike; the median round's images/s is reported, and the 1-minute load
average before and after (a shared machine makes every figure noisy: compare ratios, not absolutes).

Output: a Rich table on stderr and one JSON document on stdout.

    .venv/bin/python benchmarks/inference.py                  # default model, random init
    .venv/bin/python benchmarks/inference.py --width 64       # a larger variant
    .venv/bin/python benchmarks/inference.py --checkpoint .medimg/runs/<run_id>/best.pt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medimg import preprocess  # noqa: E402
from medimg.config import load_params  # noqa: E402
from medimg.data.medmnist import locate  # noqa: E402
from medimg.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export  # noqa: E402
from medimg.training.models import build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--checkpoint", default=None, help="state_dict (best.pt) of the model; default: random init")
    ap.add_argument("--architecture", default=None, help="override model.architecture")
    ap.add_argument("--width", type=int, default=None, help="override model.width (e.g. 64 for a larger variant)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up iterations per engine and batch size")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum duration of one timed round")
    ap.add_argument("--min-iters", type=int, default=10, help="minimum iterations of one timed round")
    ap.add_argument("--images", type=int, default=624, help="real test images to cycle through")
    return ap.parse_args(argv)


def real_images(params, n: int) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = params.data.resolved_data_dir() or (ROOT.parent / "shared" / "data")
        archive = locate(params.data.medmnist_flag, data_dir, Path(tmp), download=False)
        images, _ = archive.load()["test"]
    return preprocess.apply(images[:n], params.preprocess)


def batches(x: torch.Tensor, size: int, count: int = 64) -> list[torch.Tensor]:
    """``count`` consecutive batches cycling over the images, materialised before timing."""
    out = []
    for i in range(count):
        index = (torch.arange(size) + i * size) % len(x)
        out.append(x[index].contiguous())
    return out


def _round(run_batch, inputs: list, batch_size: int, seconds: float, min_iters: int) -> float:
    """One timed round: images/s over at least ``min_iters`` iterations and ``seconds`` seconds."""
    iters, start = 0, time.perf_counter()
    while True:
        run_batch(inputs[iters % len(inputs)])
        iters += 1
        elapsed = time.perf_counter() - start
        if iters >= min_iters and elapsed >= seconds:
            return iters * batch_size / elapsed


def time_pair(
    engines: dict, inputs: dict, batch_size: int, warmup: int, rounds: int, seconds: float, min_iters: int
) -> dict:
    """Warm up every engine, then alternate their timed rounds, so a change in machine load hits both alike."""
    for name, run_batch in engines.items():
        for i in range(warmup):
            run_batch(inputs[name][i % len(inputs[name])])
    per_round: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, run_batch in engines.items():
            per_round[name].append(_round(run_batch, inputs[name], batch_size, seconds, min_iters))
    out = {}
    for name, values in per_round.items():
        median = statistics.median(values)
        out[name] = {
            "images_per_s": median,
            "rounds_images_per_s": [round(v, 1) for v in values],
            "latency_ms": 1000 * batch_size / median,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import onnxruntime as ort

    overrides: dict = {"model": {}}
    if args.architecture:
        overrides["model"]["architecture"] = args.architecture
    if args.width:
        overrides["model"]["width"] = args.width
    params = load_params(args.params, overrides)
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)

    x = real_images(params, args.images)
    torch.manual_seed(0)
    model = build_model(params.model, params.preprocess.channels, len(params.task.class_names))
    weights = "random init (seed 0)"
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True, map_location="cpu"))
        weights = f"checkpoint {args.checkpoint}"
    model = model.eval()
    n_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export(model, x[:8], Path(tmp) / "model.onnx", params.export.opset, {"medimg.benchmark": "true"})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        onnx_bytes = onnx_path.stat().st_size

    def torch_run(xb: torch.Tensor):
        with torch.inference_mode():
            return model(xb)

    def ort_run(xb: np.ndarray):
        return sess.run([OUTPUT_NAME], {INPUT_NAME: xb})[0]

    with torch.inference_mode():
        reference = model(x[:64]).numpy()
    max_diff = float(np.max(np.abs(reference - ort_run(x[:64].numpy()))))

    load_before = os.getloadavg()
    results = []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        tb = batches(x, size)
        nb = [b.numpy() for b in tb]
        timed = time_pair(
            {"pytorch": torch_run, "onnxruntime": ort_run},
            {"pytorch": tb, "onnxruntime": nb},
            size,
            args.warmup,
            args.rounds,
            args.seconds,
            args.min_iters,
        )
        pt, ox = timed["pytorch"], timed["onnxruntime"]
        paired = [o / p for o, p in zip(ox["rounds_images_per_s"], pt["rounds_images_per_s"], strict=True)]
        results.append(
            {
                "batch_size": size,
                "pytorch": pt,
                "onnxruntime": ox,
                "ratio_ort_over_pytorch": ox["images_per_s"] / pt["images_per_s"],
                "ratio_median_of_paired_rounds": statistics.median(paired),
            }
        )

    report = {
        "model": {
            "architecture": params.model.architecture,
            "width": params.model.width,
            "parameters": n_params,
            "weights": weights,
            "input": [params.preprocess.channels, params.preprocess.size, params.preprocess.size],
            "onnx_bytes": onnx_bytes,
            "opset": params.export.opset,
        },
        "images": f"PneumoniaMNIST test split, first {len(x)} images, medimg.preprocess",
        "threads": args.threads,
        "max_abs_logit_diff": max_diff,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "protocol": {
            "warmup": args.warmup,
            "rounds": args.rounds,
            "seconds_per_round": args.seconds,
            "statistic": "median round",
        },
        "results": results,
    }
    render(report)
    print(json.dumps(report, indent=1))
    return report


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = report["model"]
    table = Table(
        title=f"CPU inference, {m['architecture']} width {m['width']} ({m['parameters']:,} params, {m['weights']}), "
        f"{report['threads']} threads"
    )
    for col in (
        "batch",
        "PyTorch eager img/s",
        "ONNX Runtime img/s",
        "ORT / PyTorch",
        "PyTorch ms/batch",
        "ORT ms/batch",
    ):
        table.add_column(col, justify="right")
    for r in report["results"]:
        table.add_row(
            str(r["batch_size"]),
            f"{r['pytorch']['images_per_s']:,.0f}",
            f"{r['onnxruntime']['images_per_s']:,.0f}",
            f"{r['ratio_ort_over_pytorch']:.2f}x (paired {r['ratio_median_of_paired_rounds']:.2f}x)",
            f"{r['pytorch']['latency_ms']:.3f}",
            f"{r['onnxruntime']['latency_ms']:.3f}",
        )
    Console(stderr=True).print(table)


if __name__ == "__main__":
    main()
