"""The resumable training checkpoint (``last.pt``) shared by the classification and segmentation loops.

One file per run, rewritten after every epoch through a temporary file and an atomic rename, so a
killed run finds either the previous epoch's checkpoint or this one, never half of one. It holds
everything an exact resume needs: the model, optimiser, scheduler and gradient scaler states, the
two random generators (batch order, augmentation), torch's global RNG state and the loop's own
progress (``state``: epoch, best metric and weights, history, steps, epochs since the best).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Resumable:
    """What a loop restores from or saves to ``last.pt``; ``scaler`` None for a loop without AMP scaling state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch.optim.lr_scheduler scheduler
    order_generator: torch.Generator
    aug_generator: torch.Generator
    scaler: torch.amp.GradScaler | None = None


def save(path: Path, parts: Resumable, state: Any) -> None:
    """Write ``parts`` and the loop's ``state`` to ``path`` (via ``path.tmp``, then an atomic rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "order_generator": parts.order_generator.get_state(),
        "aug_generator": parts.aug_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "state": state,
    }
    if parts.scaler is not None:
        payload["scaler"] = parts.scaler.state_dict()
    torch.save(payload, tmp)
    tmp.replace(path)


def restore(path: Path, parts: Resumable, device: torch.device) -> Any:
    """Load ``path`` into ``parts`` (in place) and torch's RNG; returns the loop's saved ``state``."""
    saved = torch.load(path, weights_only=False, map_location=device)
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if parts.scaler is not None and "scaler" in saved:
        parts.scaler.load_state_dict(saved["scaler"])
    parts.order_generator.set_state(saved["order_generator"])
    parts.aug_generator.set_state(saved["aug_generator"])
    torch.set_rng_state(saved["torch_rng"])
    return saved["state"]
