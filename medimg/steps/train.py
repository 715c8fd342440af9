"""Step 3: train on the validated data, per-epoch metrics to MLflow, best checkpoint saved."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medimg import tracking
from medimg.config import Params
from medimg.data import manifest
from medimg.training import ddp
from medimg.training.data import load_split
from medimg.training.loop import train
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def run_dir(ws: Workspace, run_id: str) -> Path:
    path = ws.runs / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(params: Params, ws: Workspace, run_id: str, validated: dict) -> dict:
    frame = manifest.read(ws.data)
    exclude = set(validated.get("dropped_ids") or [])
    train_split = load_split(ws.data, frame, "train", exclude)
    val_split = load_split(ws.data, frame, "val", exclude)
    out = run_dir(ws, run_id)

    def on_epoch(row: dict) -> None:
        log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f", row["epoch"], params.train.epochs,
                 row["train_loss"], row["val_loss"], row["val_auc"])
        tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    if params.train.distributed.enabled:
        return _distributed(params, ws, run_id, sorted(exclude), out, len(train_split.labels), len(val_split.labels))
    result = train(params, train_split, val_split, on_epoch=on_epoch, checkpoint_dir=out / "checkpoints", resume=True)
    checkpoint = out / "best.pt"
    torch.save(result.model.state_dict(), checkpoint)
    summary = {
        "checkpoint": str(checkpoint),
        "best_epoch": result.best_epoch,
        "best_val_auc": result.best_val_auc,
        "epochs_run": len(result.history),
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "history": result.history,
        "n_train": len(train_split.labels),
        "n_val": len(val_split.labels),
        "device": result.device,
        "world_size": 1,
    }
    tracking.log_metrics(run_id, {"best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
                                  "train_seconds": result.seconds, "train_images_per_second": result.images_per_second})
    log.info("best epoch %d, val AUC %.4f, %.1f s (%.0f images/s)", result.best_epoch, result.best_val_auc,
             result.seconds, result.images_per_second)
    return summary


def _distributed(params: Params, ws: Workspace, run_id: str, exclude: list[str], out: Path, n_train: int,
                 n_val: int) -> dict:
    nproc = params.train.distributed.nproc_per_node
    result = ddp.launch(params.model_dump(mode="json"), ws.data, exclude, out / "ddp", run_id, nproc)
    tracking.log_metrics(run_id, {"best_epoch": result["best_epoch"], "best_val_auc": result["best_val_auc"],
                                  "train_seconds": result["seconds"], "train_images_per_second": result["images_per_second"]})
    log.info("DDP (%d x %s, %s): best epoch %d, val AUC %.4f, %.1f s", result["world_size"], result["device"],
             result["backend"], result["best_epoch"], result["best_val_auc"], result["seconds"])
    return {
        "checkpoint": result["checkpoint"],
        "best_epoch": result["best_epoch"],
        "best_val_auc": result["best_val_auc"],
        "epochs_run": len(result["history"]),
        "steps": result["steps"],
        "train_seconds": round(result["seconds"], 2),
        "images_per_second": round(result["images_per_second"], 1),
        "history": result["history"],
        "n_train": n_train,
        "n_val": n_val,
        "device": result["device"],
        "world_size": result["world_size"],
    }
