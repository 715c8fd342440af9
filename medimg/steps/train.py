"""Step 3: train on the validated data, per-epoch metrics to MLflow, best checkpoint saved.

One process by default, or ``torchrun`` workers (``train.distributed.enabled``); either way the
step returns the same summary, and the parent process never decodes images the workers decode.
"""

from __future__ import annotations

import logging

import torch

from medimg import preprocess, tracking
from medimg.config import Params, member_seeds
from medimg.contracts import MemberSummary, TrainingData, TrainSummary
from medimg.data import manifest
from medimg.provenance import file_sha256
from medimg.training import ddp
from medimg.training.data import load_split, split_rows
from medimg.training.loop import predict_proba, report_epochs, train, validation_auc
from medimg.tuning.ensemble import EnsembleModel, member_params
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
    if params.model.ensemble.members > 1:  # validated as classification in one process
        return _train_members(params, ws, run_id, frame, exclude)
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


# --------------------------------------------------------------------------- ensemble members


def _train_members(params: Params, ws: Workspace, run_id: str, frame, exclude: set[str]) -> TrainSummary:
    """``model.ensemble.members`` networks, one after another, member ``i`` with seed ``train.seed + i``.

    Each writes ``runs/<run_id>/members/<i>/best.pt`` and its own epoch checkpoints (a crashed run resumes the
    member it was training; finished members are restored from theirs), and logs its epochs as ``member<i>_*``
    metrics. The summary's ``best_val_auc`` is the ensemble's: the validation AUC of the members' mean
    probabilities over the configured flips (:class:`medimg.tuning.ensemble.EnsembleModel`).
    """
    train_split = load_split(ws.data, frame, "train", exclude)
    val_split = load_split(ws.data, frame, "val", exclude)
    out = ws.run_dir(run_id) / "members"
    members, results = [], []
    for index, seed in enumerate(member_seeds(params)):
        folder = out / str(index)
        folder.mkdir(parents=True, exist_ok=True)

        def on_epoch(row: dict, index: int = index) -> None:
            log.info("member %d epoch %d: val_auc %.4f", index, row["epoch"], row["val_auc"])
            tracking.log_metrics(
                run_id, {f"member{index}_{k}": v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
            )

        trained = train(
            member_params(params, seed),
            train_split,
            val_split,
            on_epoch,
            checkpoint_dir=folder / "checkpoints",
            resume=True,
        )
        torch.save(trained.model.state_dict(), folder / "best.pt")
        results.append(trained)
        members.append(
            MemberSummary(
                index=index,
                seed=seed,
                checkpoint=folder / "best.pt",
                checkpoint_sha256=file_sha256(folder / "best.pt"),
                best_epoch=trained.best_epoch,
                best_val_auc=trained.best_val_auc,
            )
        )
    ensemble = EnsembleModel([r.model for r in results], params.model.ensemble.tta_flips).eval()
    x_val = preprocess.apply(val_split.images, params.preprocess)
    ensemble_auc = validation_auc(val_split.labels, predict_proba(ensemble, x_val))
    tracking.log_metrics(run_id, {f"member{m.index}_best_val_auc": m.best_val_auc for m in members})
    first = results[0]
    result = {
        "checkpoint": str(members[0].checkpoint),
        "best_epoch": first.best_epoch,
        "best_val_auc": ensemble_auc,
        "history": first.history,
        "seconds": sum(r.seconds for r in results),
        "images_per_second": sum(r.images_per_second for r in results) / len(results),
        "steps": sum(r.steps for r in results),
        "device": first.device,
        "world_size": 1,
    }
    summary = _summary(run_id, result, len(train_split.labels), len(val_split.labels))
    return summary.model_copy(update={"members": tuple(members)})


# --------------------------------------------------------------------------- end of ensemble members


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
