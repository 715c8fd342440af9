"""Step 3: train on the validated data, per-epoch metrics to MLflow, best checkpoint saved.

One process by default, or ``torchrun`` workers (``train.distributed.enabled``); either way the
step returns the same summary, and the parent process never decodes images the workers decode.
"""

from __future__ import annotations

import logging

import torch

from medimg import tracking
from medimg.config import Params
from medimg.contracts import TrainingData, TrainSummary
from medimg.data import manifest
from medimg.training import ddp
from medimg.training.data import load_split, split_rows
from medimg.training.loop import report_epochs, train
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def run(params: Params, ws: Workspace, run_id: str, data: TrainingData) -> TrainSummary:
    """Train ``params.model`` on the train split of the workspace's dataset without ``data.dropped_ids``.

    Chooses the epoch by validation AUC (``task.kind: segmentation``: by validation mean Dice, with
    :func:`medimg.segmentation.training.train_segmentation`, always in one process); writes
    ``runs/<run_id>/best.pt`` (that epoch's ``state_dict``) and ``runs/<run_id>/checkpoints/last.pt``
    after every epoch, from which a crashed run of the same MLflow run continues; logs per-epoch and
    summary metrics to run ``run_id``. Raises :class:`~medimg.training.ddp.DistributedTrainingError`
    when a ``torchrun`` worker fails.
    """
    frame = manifest.read(ws.data)
    exclude = set(data.dropped_ids)
    out = ws.run_dir(run_id)
    segmenting = params.task.kind == "segmentation"
    if segmenting and params.train.distributed.enabled:
        log.warning("train.distributed is not used for segmentation: training in one process")
    if params.train.distributed.enabled and not segmenting:
        result = ddp.launch(
            params.model_dump(mode="json"),
            ws.data,
            sorted(exclude),
            out / "ddp",
            run_id,
            params.train.distributed.nproc_per_node,
        )
        log.info("DDP (%d x %s, %s)", result["world_size"], result["device"], result["backend"])
        n_train, n_val = len(split_rows(frame, "train", exclude)), len(split_rows(frame, "val", exclude))
    else:
        train_split = load_split(ws.data, frame, "train", exclude)
        val_split = load_split(ws.data, frame, "val", exclude)
        trainer = train
        if segmenting:
            from medimg.segmentation.training import train_segmentation  # here: it imports MONAI (seconds)

            trainer = train_segmentation
        trained = trainer(
            params,
            train_split,
            val_split,
            on_epoch=report_epochs(run_id, params.train.epochs),
            checkpoint_dir=out / "checkpoints",
            resume=True,
        )
        torch.save(trained.model.state_dict(), out / "best.pt")
        result = {
            "checkpoint": str(out / "best.pt"),
            "best_epoch": trained.best_epoch,
            "best_val_auc": trained.best_val_auc,
            "history": trained.history,
            "seconds": trained.seconds,
            "images_per_second": trained.images_per_second,
            "steps": trained.steps,
            "device": trained.device,
            "world_size": 1,
        }
        n_train, n_val = len(train_split.labels), len(val_split.labels)
    return _summary(run_id, result, n_train, n_val)


def _summary(run_id: str, result: dict, n_train: int, n_val: int) -> TrainSummary:
    """The step's summary from a training result (the DDP result file's keys), logged to MLflow."""
    tracking.log_metrics(
        run_id,
        {
            "best_epoch": result["best_epoch"],
            "best_val_auc": result["best_val_auc"],
            "train_seconds": result["seconds"],
            "train_images_per_second": result["images_per_second"],
        },
    )
    log.info(
        "best epoch %d, val AUC %.4f, %.1f s (%.0f images/s)",
        result["best_epoch"],
        result["best_val_auc"],
        result["seconds"],
        result["images_per_second"],
    )
    return TrainSummary(
        checkpoint=result["checkpoint"],
        best_epoch=result["best_epoch"],
        best_val_auc=result["best_val_auc"],
        epochs_run=len(result["history"]),
        steps=result["steps"],
        train_seconds=round(result["seconds"], 2),
        images_per_second=round(result["images_per_second"], 1),
        history=tuple(result["history"]),
        n_train=n_train,
        n_val=n_val,
        device=result["device"],
        world_size=result["world_size"],
    )
