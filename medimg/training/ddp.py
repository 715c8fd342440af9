"""Distributed data-parallel training launched with ``torchrun``.

``launch`` writes a job file and runs ``torchrun --standalone --nproc_per_node N -m
medimg.training.ddp JOB``; each worker joins the process group (NCCL on CUDA, gloo otherwise),
loads the same splits and runs medimg's training loop, which shards every global batch across
ranks inside DistributedDataParallel. Rank 0 logs per-epoch metrics to the MLflow run and writes
the best weights and a result file, which ``launch`` returns to the caller. The same flow step
calls it when ``train.distributed.enabled`` is set, so single- and multi-process training share
everything but the launcher.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from medimg.config import parse_params
from medimg.data import manifest
from medimg.training.data import load_split
from medimg.training.loop import report_epochs, train

log = logging.getLogger(__name__)


class DistributedTrainingError(RuntimeError):
    """torchrun or one of its workers failed."""


def launch(
    params_dict: dict, data_folder: Path, exclude: list[str], out_dir: Path, run_id: str | None, nproc: int
) -> dict:
    """Train with DistributedDataParallel on ``nproc`` processes (torchrun) and return the job's result dict.

    The job (params, data folder, excluded ids, run id) is written to ``out_dir``/ddp_job.json; rank 0
    writes ``out_dir``/ddp_result.json. Raises :class:`DistributedTrainingError` with the end of
    torchrun's stderr when it fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    job = out_dir / "ddp_job.json"
    job.write_text(
        json.dumps(
            {
                "params": params_dict,
                "data_folder": str(data_folder),
                "exclude": exclude,
                "out_dir": str(out_dir),
                "run_id": run_id,
            }
        )
    )
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "medimg.training.ddp",
        str(job),
    ]
    log.info("launching DDP training: %s", " ".join(cmd))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise DistributedTrainingError(f"torchrun exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads((out_dir / "ddp_result.json").read_text())


def main(job_file: str) -> None:
    """One torchrun worker: read the job file, join the process group, train its shard; rank 0 writes the result."""
    job = json.loads(Path(job_file).read_text())
    params = parse_params(job["params"])
    backend = params.train.distributed.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    try:
        rank = dist.get_rank()
        folder = Path(job["data_folder"])
        frame = manifest.read(folder)
        exclude = set(job["exclude"])
        train_split = load_split(folder, frame, "train", exclude)
        val_split = load_split(folder, frame, "val", exclude)
        out = Path(job["out_dir"])
        result = train(
            params,
            train_split,
            val_split,
            on_epoch=report_epochs(job["run_id"], params.train.epochs),
            checkpoint_dir=out / "checkpoints",
            resume=True,
        )
        if rank == 0:
            torch.save(result.model.state_dict(), out / "best.pt")
            (out / "ddp_result.json").write_text(
                json.dumps(
                    {
                        "checkpoint": str(out / "best.pt"),
                        "best_epoch": result.best_epoch,
                        "best_val_auc": result.best_val_auc,
                        "history": result.history,
                        "seconds": result.seconds,
                        "images_per_second": result.images_per_second,
                        "steps": result.steps,
                        "device": result.device,
                        "world_size": dist.get_world_size(),
                        "backend": backend,
                    }
                )
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
