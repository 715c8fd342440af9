"""The segmentation training loop: the classification loop's rules (:mod:`medimg.training.loop`) for a 3D U-Net.

Whole stored volumes (``preprocess.volume.shape``, a multiple of the U-Net's 16) in batches of
``train.batch_size``; the optimiser and schedule of ``train.*`` (:func:`medimg.training.loop._optimizer`,
``_scheduler``); image and mask augmented together (:mod:`medimg.segmentation.augmentation`); AMP on
CUDA. The loss is MONAI's :class:`~monai.losses.DiceCELoss` (softmax over the K labels, one-hot target):
cross-entropy over every label, background included, plus the soft Dice of the structures only
(``include_background=False``, as nnU-Net's Dice term): the background is about 98 % of each stored
volume, so its Dice is near 1 from the start and would only dilute the structures' gradient, while the
cross-entropy term already scores it. The best epoch is the one with the highest validation mean Dice
over the structures (:func:`validation_dice`); ``train.class_weighting`` and ``label_smoothing`` are not
used. Seeded: the same params, data and torch build give the same weights on the CPU; ``last.pt`` after
every epoch holds the model, optimiser, scheduler and RNG state, so ``resume=True`` after a kill ends
with the same weights as an uninterrupted run. One process (``train.distributed`` is not used).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from rich.progress import Progress
from torch import nn

from medimg.config import Params
from medimg.segmentation.augmentation import augment_pair
from medimg.segmentation.inference import to_tensor
from medimg.training import checkpoint
from medimg.training.data import SplitArrays
from medimg.training.loop import (
    EpochCallback,
    TrainResult,
    _LoopState,
    _optimizer,
    _scheduler,
    finished,
    pick_device,
    set_determinism,
)
from medimg.training.models import build_model


def segmentation_loss() -> nn.Module:
    """Dice + cross-entropy (weights 1 and 1) of logits ``[N, K, D, H, W]`` against labels ``[N, 1, D, H, W]``
    (module docstring: softmax, one-hot target, Dice without the background); mean over cases and voxels."""
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)


def validation_dice(predicted: torch.Tensor, reference: torch.Tensor, num_classes: int) -> np.ndarray:
    """Dice per case and structure, float64 ``[N, K - 1]`` (labels 1..K-1), of label maps ``[N, D, H, W]``.

    MONAI's :func:`~monai.metrics.compute_dice` (what :class:`~monai.metrics.DiceMetric` computes) with
    ``ignore_empty=False``: a structure absent from both is 1, absent from one only 0 (the empty-mask
    convention of the segmentation design).
    """
    scores = compute_dice(
        predicted[:, None], reference[:, None], include_background=False, ignore_empty=False, num_classes=num_classes
    )
    return scores.double().cpu().numpy()


@torch.no_grad()
def _validate(
    model: nn.Module, x: torch.Tensor, masks: torch.Tensor, loss_fn: nn.Module, batch_size: int, amp: bool
) -> tuple[float, np.ndarray]:
    """Mean loss over the cases and Dice ``[N, K - 1]`` of the arg-max labels, ``batch_size`` cases at a time."""
    model.eval()
    device = next(model.parameters()).device
    total, dice = 0.0, []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = masks[start : start + batch_size].to(device, dtype=torch.long)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(xb)
        logits = logits.float()
        total += loss_fn(logits, yb[:, None]).item() * len(xb)
        dice.append(validation_dice(logits.argmax(1), yb, logits.shape[1]))
    return total / len(x), np.concatenate(dice)


def train_segmentation(
    params: Params,
    train_split: SplitArrays,
    val_split: SplitArrays,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the configured U-Net on ``train_split`` (``images`` and ``masks`` uint8 ``[N, D, H, W]``), validating
    on ``val_split`` after every epoch.

    Keeps the weights of the epoch with the best validation mean Dice (``TrainResult.best_val_auc``); stops
    after ``train.epochs``, ``train.max_steps`` or early-stopping patience. ``on_epoch`` gets each epoch's row
    (epoch, train_loss, val_loss, val_auc = validation mean Dice, lr). With ``checkpoint_dir``, ``last.pt`` is
    written after every epoch and ``resume`` continues from it. ``ValueError`` when a split has no masks or the
    masks' shape differs from the images'.
    """
    for name, split in (("train", train_split), ("val", val_split)):
        if split.masks is None or split.masks.shape != split.images.shape:
            got = None if split.masks is None else split.masks.shape
            raise ValueError(
                f"{name} split: segmentation needs masks of the images' shape {split.images.shape}, got {got}"
            )
    cfg = params.train
    set_determinism(cfg.seed, cfg.num_threads)
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    amp = cuda and cfg.amp
    memory_format = torch.channels_last_3d if cuda and cfg.channels_last else torch.contiguous_format
    x_train = to_tensor(train_split.images, params.preprocess)
    y_train = torch.as_tensor(train_split.masks)
    x_val = to_tensor(val_split.images, params.preprocess)
    y_val = torch.as_tensor(val_split.masks)
    n_classes = len(params.task.class_names)

    model = build_model(params.model, params.preprocess.channels, n_classes)
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # stubs lack memory_format
    optimizer = _optimizer(cfg, model.parameters())
    steps_per_epoch = max(1, len(x_train) // cfg.batch_size)
    scheduler = _scheduler(cfg, optimizer, cfg.epochs * steps_per_epoch)
    loss_fn = segmentation_loss()
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

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
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        bar = progress.add_task("training", total=cfg.epochs * steps_per_epoch, completed=state["steps"])
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=order_gen)
            total_loss = torch.zeros((), dtype=torch.float64, device=device)
            batches = 0
            for start in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size):
                index = order[start : start + cfg.batch_size]
                xb, yb = x_train[index], y_train[index]
                if cfg.augment.enabled:
                    xb, yb = augment_pair(xb, yb, aug_gen, cfg.augment)
                xb = xb.to(device, non_blocking=True, memory_format=memory_format)
                yb = yb.to(device, dtype=torch.long, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    logits = model(xb)
                loss = loss_fn(logits.float(), yb[:, None])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total_loss += loss.detach()
                batches += 1
                seen += len(index)
                state["steps"] += 1
                progress.advance(bar)
                if cfg.max_steps and state["steps"] >= cfg.max_steps:
                    break
            val_loss, dice = _validate(model, x_val, y_val, loss_fn, cfg.batch_size, amp)
            val_dice = float(dice.mean(axis=0).mean())
            row = {
                "epoch": epoch,
                "train_loss": total_loss.item() / max(batches, 1),
                "val_loss": val_loss,
                "val_auc": val_dice,
                "lr": scheduler.get_last_lr()[0],
            }
            state["history"].append(row)
            if val_dice > state["best_auc"]:
                best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                state["best_auc"], state["best_epoch"], state["best_weights"] = val_dice, epoch, best
                state["since_best"] = 0
            else:
                state["since_best"] += 1
            state["epoch"] = epoch
            if on_epoch:
                on_epoch(row)
            if last is not None:
                checkpoint.save(last, parts, state)
            if cfg.max_steps and state["steps"] >= cfg.max_steps:
                break
            if cfg.early_stopping_patience and state["since_best"] >= cfg.early_stopping_patience:
                stopped_early = True
                break
    return finished(model, state, started, seen, device, stopped_early)
