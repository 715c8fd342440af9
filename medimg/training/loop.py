"""The training loop: AdamW with a one-cycle schedule, best checkpoint by validation AUC.

Seeded: the same params, data and torch build give the same weights on the CPU. A checkpoint
with the optimiser, scheduler and RNG state is written after every epoch so that a killed run
can continue where it stopped (``resume_from``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medimg import preprocess
from medimg.config import Params
from medimg.training.data import SplitArrays, augment_batch
from medimg.training.models import build_model

EpochCallback = Callable[[dict], None]


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_val_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    steps: int = 0


def set_determinism(seed: int, num_threads: int | None) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Positive-class probability for already preprocessed inputs."""
    model.eval()
    out = [torch.softmax(model(x[i : i + batch_size]), dim=1)[:, 1] for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")


def train(
    params: Params,
    train_split: SplitArrays,
    val_split: SplitArrays,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    cfg = params.train
    set_determinism(cfg.seed, cfg.num_threads)
    x_train = preprocess.apply(train_split.images, params.preprocess)
    y_train = torch.as_tensor(train_split.labels)
    x_val = preprocess.apply(val_split.images, params.preprocess)
    n_classes = len(params.data.class_names)

    model = build_model(params.model, params.preprocess.channels, n_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(x_train) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
    )
    weights = None
    if cfg.class_weighting == "balanced":
        counts = torch.bincount(y_train, minlength=n_classes).clamp(min=1).to(torch.float32)
        weights = counts.sum() / (n_classes * counts)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)

    generator = torch.Generator().manual_seed(cfg.seed)

    state = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "best_weights": None, "history": [], "steps": 0}
    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if resume and last is not None and last.is_file():
        saved = torch.load(last, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    started = time.perf_counter()
    seen = 0
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss, batches = 0.0, 0
        for start in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            xb, yb = x_train[index], y_train[index]
            if cfg.augment:
                xb = augment_batch(xb, generator)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            total_loss += loss.item()
            batches += 1
            seen += len(index)
            state["steps"] += 1
            if cfg.max_steps and state["steps"] >= cfg.max_steps:
                break
        val_probs = predict_proba(model, x_val)
        val_loss = float(
            nn.functional.binary_cross_entropy(torch.as_tensor(val_probs).clamp(1e-7, 1 - 1e-7),
                                               torch.as_tensor(val_split.labels, dtype=torch.float64))
        )
        val_auc = _auc(val_split.labels, val_probs)
        row = {"epoch": epoch, "train_loss": total_loss / max(batches, 1), "val_loss": val_loss, "val_auc": val_auc,
               "lr": scheduler.get_last_lr()[0]}
        state["history"].append(row)
        if val_auc > state["best_auc"]:
            state.update(best_auc=val_auc, best_epoch=epoch, best_weights=copy.deepcopy(model.state_dict()))
        state["epoch"] = epoch
        if on_epoch:
            on_epoch(row)
        if last is not None:
            last.parent.mkdir(parents=True, exist_ok=True)
            tmp = last.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "state": state}, tmp)
            tmp.replace(last)
        if cfg.max_steps and state["steps"] >= cfg.max_steps:
            break
    seconds = time.perf_counter() - started
    if state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
    model.eval()
    return TrainResult(
        model=model,
        best_epoch=state["best_epoch"],
        best_val_auc=state["best_auc"],
        history=state["history"],
        seconds=seconds,
        images_per_second=seen / seconds if seconds > 0 else 0.0,
        steps=state["steps"],
    )
