"""The training loop, in the spirit of torchvision's reference scripts.

AdamW or SGD, one-cycle or cosine schedule, class-balanced loss, batch augmentation, best
checkpoint by validation AUC with optional early stopping, AMP and channels_last on CUDA.
Seeded: the same params, data and torch build give the same weights on the CPU. After every
epoch a checkpoint with optimiser, scheduler and RNG state is written, so a killed run continues
where it stopped (``resume=True``) and ends with the same weights as an uninterrupted one.
Under ``torchrun`` (``torch.distributed`` initialised) each rank trains on its share of every
global batch inside DistributedDataParallel; only rank 0 reports and writes checkpoints.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import Progress
from sklearn.metrics import roc_auc_score
from torch import nn

from medimg import preprocess, tracking
from medimg.config import Params, TrainConfig
from medimg.training import checkpoint
from medimg.training.data import SplitArrays, augment_batch, augment_volume_batch
from medimg.training.models import build_model, set_trainable

EpochCallback = Callable[[dict], None]

log = logging.getLogger(__name__)


def report_epochs(run_id: str | None, epochs: int) -> EpochCallback:
    """An ``on_epoch`` that logs each epoch and sends its metrics to the MLflow run, step = epoch.

    Single-process and DDP training (rank 0) report alike; without a run id it only logs.
    """

    def on_epoch(row: dict) -> None:
        log.info(
            "epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.4f",
            row["epoch"],
            epochs,
            row["train_loss"],
            row["val_loss"],
            row["val_auc"],
        )
        if run_id:
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    return on_epoch


@dataclass
class TrainResult:
    """A finished training: the best-epoch model (on the CPU, eval mode), its epoch and validation AUC, per-epoch
    history, speed.
    """

    model: nn.Module
    best_epoch: int
    best_val_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    steps: int = 0
    device: str = "cpu"
    stopped_early: bool = False


def finished(
    model: nn.Module, state: _LoopState, started: float, seen: int, device: torch.device, stopped_early: bool
) -> TrainResult:
    """The :class:`TrainResult` of a finished loop: the best epoch's weights (``state["best_weights"]``, kept on
    improvement) put back, the model on the CPU in eval mode; wall seconds since ``started``
    (``time.perf_counter``) and ``seen`` training samples per second. Shared by the classification loop and
    :func:`medimg.segmentation.training.train_segmentation` (whose ``best_val_auc`` is its validation mean Dice).
    """
    seconds = time.perf_counter() - started
    if state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model=model,
        best_epoch=state["best_epoch"],
        best_val_auc=state["best_auc"],
        history=state["history"],
        seconds=seconds,
        images_per_second=seen / seconds if seconds > 0 else 0.0,
        steps=state["steps"],
        device=str(device),
        stopped_early=stopped_early,
    )


def set_determinism(seed: int, num_threads: int | None) -> None:
    """Seed torch and numpy with ``seed`` and, when given, fix torch's intra-op thread count."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


def pick_device(choice: str) -> torch.device:
    """The torch device for ``train.device`` (auto, cpu or cuda); under DDP, the rank's GPU.

    Raises ``RuntimeError`` when cuda is requested but not available.
    """
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", dist.get_rank() % torch.cuda.device_count() if dist.is_initialized() else 0)
    return torch.device("cpu")


#: The most input elements (items x channels x pixels or voxels) :func:`predict_proba` puts in one forward pass
#: by default: 512 items at 28 px 2D, 83 at 224 px, 191 volumes at 28^3, 16 at 64^3. A fixed 512 items scored a
#: whole 64^3 test split (382 VesselMNIST3D volumes) in one pass and was OOM-killed at 24 GB.
PREDICT_ELEMENTS = 2**22


def predict_batch_size(x: torch.Tensor, limit: int = 512) -> int:
    """Items per forward pass for inputs ``x`` ``[N, C, *spatial]``: at most ``limit``, and at most
    :data:`PREDICT_ELEMENTS` input elements (at least 1 item)."""
    per_item = max(1, int(np.prod(x.shape[1:])))
    return max(1, min(limit, PREDICT_ELEMENTS // per_item))


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities ``[N, K]`` (softmax of the logits, float64) for preprocessed inputs ``[N, C, H, W]``
    or volumes ``[N, C, D, H, W]``, ``batch_size`` items per forward pass (None: :func:`predict_batch_size`,
    so that memory follows the input size, not the split size)."""
    model.eval()
    device = next(model.parameters()).device
    step = batch_size or predict_batch_size(x)
    out = [torch.softmax(model(x[i : i + step].to(device)).float(), dim=1).cpu() for i in range(0, len(x), step)]
    return torch.cat(out).numpy().astype(np.float64)


def validation_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """The ROC AUC that picks the best epoch: binary, of class 1's probability; K > 2, the macro one-vs-rest AUC.

    ``labels`` ``[N]`` int, ``probs`` ``[N, K]``. nan when a class the AUC needs is absent. For two
    classes this is the same number as before multi-class support (the AUC is symmetric in the classes).
    """
    present = np.unique(labels)
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1])) if len(present) == 2 else float("nan")
    if len(present) != probs.shape[1]:
        return float("nan")
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def validation_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, probabilities clamped to [1e-7, 1 - 1e-7].

    For two classes this equals the binary cross-entropy of class 1's probability reported before.
    """
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1 - 1e-7)
    return float(-np.log(picked).mean())


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.warmup_fraction
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _augment(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Images ``[N, C, H, W]`` (:func:`augment_batch`) or volumes ``[N, C, D, H, W]`` (:func:`augment_volume_batch`,
    ``hflip`` flipping every axis), then the intensity changes."""
    a = cfg.augment
    spatial = augment_volume_batch if x.ndim == 5 else augment_batch
    x = spatial(x, generator, a.rotate_deg, a.translate, (a.scale_min, a.scale_max), a.hflip)
    if a.contrast or a.brightness:
        n = x.shape[0]
        per_item = (n,) + (1,) * (x.ndim - 1)
        gain = 1 + (torch.rand(per_item, generator=generator) * 2 - 1) * a.contrast
        shift = (torch.rand(per_item, generator=generator) * 2 - 1) * a.brightness
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        x = (x - mean) * gain + mean + shift
    return x


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class _LoopState(TypedDict):
    """Progress of one training run, saved in last.pt so a run can resume where it stopped."""

    epoch: int  # last finished epoch (0 before the first)
    best_auc: float  # best validation ROC AUC so far (-1.0 before the first epoch)
    best_epoch: int
    best_weights: dict[str, torch.Tensor] | None  # CPU copy of the best epoch's state_dict
    history: list[dict[str, Any]]  # one row per epoch: epoch, train_loss, val_loss, val_auc, lr
    steps: int  # optimizer steps taken
    since_best: int  # epochs since best_auc last improved (early stopping)


def train(
    params: Params,
    train_split: SplitArrays,
    val_split: SplitArrays,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the configured model on ``train_split``, validating on ``val_split`` after every epoch.

    Keeps the weights of the epoch with the best validation ROC AUC; stops after ``train.epochs``,
    ``train.max_steps`` or early-stopping patience. ``on_epoch`` gets each epoch's row (epoch,
    train_loss, val_loss, val_auc, lr) on rank 0. With ``checkpoint_dir``, ``last.pt`` is written
    after every epoch and ``resume`` continues from it. Deterministic for a seed on the CPU.
    """
    cfg = params.train
    rank, world = _rank_world()
    set_determinism(cfg.seed, cfg.num_threads)
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    volumetric = params.preprocess.dims == 3
    channels_last = torch.channels_last_3d if volumetric else torch.channels_last
    memory_format = channels_last if cuda and cfg.channels_last else torch.contiguous_format
    x_train = preprocess.apply(train_split.images, params.preprocess)
    y_train = torch.as_tensor(train_split.labels)
    x_val = preprocess.apply(val_split.images, params.preprocess)
    n_classes = len(params.task.class_names)

    model = build_model(params.model, params.preprocess.channels, n_classes)
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # stubs lack memory_format
    head_epochs = {"head": cfg.epochs, "staged": params.model.staged_head_epochs}.get(params.model.finetune, 0)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None, find_unused_parameters=head_epochs > 0
        )
    optimizer = _optimizer(cfg, model.parameters())
    global_batch = cfg.batch_size
    local_batch = max(1, global_batch // world)
    steps_per_epoch = max(1, len(x_train) // global_batch)
    scheduler = _scheduler(cfg, optimizer, cfg.epochs * steps_per_epoch)
    weights = None
    if cfg.class_weighting == "balanced":
        counts = torch.bincount(y_train, minlength=n_classes).clamp(min=1).to(torch.float32)
        weights = (counts.sum() / (n_classes * counts)).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.amp)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1 + rank)

    state: _LoopState = {
        "epoch": 0,
        "best_auc": -1.0,
        "best_epoch": 0,
        "best_weights": None,
        "history": [],
        "steps": 0,
        "since_best": 0,
    }
    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    parts = checkpoint.Resumable(model, optimizer, scheduler, order_gen, aug_gen, scaler)
    if resume and last is not None and last.is_file():
        state = checkpoint.restore(last, parts, device)

    started = time.perf_counter()
    seen = 0
    stopped_early = False
    with Progress(transient=True, disable=rank != 0 or not sys.stderr.isatty()) as progress:
        bar = progress.add_task("training", total=cfg.epochs * steps_per_epoch, completed=state["steps"])
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            set_trainable(model, head_only=epoch <= head_epochs)
            net.train()
            order = torch.randperm(len(x_train), generator=order_gen)
            total_loss = torch.zeros((), dtype=torch.float64, device=device)
            batches = 0
            for start in range(0, steps_per_epoch * global_batch, global_batch):
                index = order[start : start + global_batch][rank * local_batch : (rank + 1) * local_batch]
                xb, yb = x_train[index], y_train[index]
                if cfg.augment.enabled:
                    xb = _augment(xb, cfg, aug_gen)
                xb = xb.to(device, non_blocking=True, memory_format=memory_format)
                yb = yb.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=cuda and cfg.amp):
                    loss = loss_fn(net(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total_loss += loss.detach()
                batches += 1
                seen += len(index) * world
                state["steps"] += 1
                progress.advance(bar)
                if cfg.max_steps and state["steps"] >= cfg.max_steps:
                    break
            val_probs = predict_proba(model, x_val)
            val_loss = validation_loss(val_split.labels, val_probs)
            val_auc = validation_auc(val_split.labels, val_probs)
            row = {
                "epoch": epoch,
                "train_loss": total_loss.item() / max(batches, 1),
                "val_loss": val_loss,
                "val_auc": val_auc,
                "lr": scheduler.get_last_lr()[0],
            }
            state["history"].append(row)
            if val_auc > state["best_auc"]:
                best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                state["best_auc"], state["best_epoch"], state["best_weights"] = val_auc, epoch, best
                state["since_best"] = 0
            else:
                state["since_best"] += 1
            state["epoch"] = epoch
            if on_epoch and rank == 0:
                on_epoch(row)
            if last is not None and rank == 0:
                checkpoint.save(last, parts, state)
            if cfg.max_steps and state["steps"] >= cfg.max_steps:
                break
            if cfg.early_stopping_patience and state["since_best"] >= cfg.early_stopping_patience:
                stopped_early = True
                break
    return finished(model, state, started, seen, device, stopped_early)
