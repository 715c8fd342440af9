"""Grad-CAM heatmaps: which pixels drove a class's logit (the positive class's, or each image's predicted class).

``grad_cam`` works on any model of the zoo: it hooks the last ``Conv2d`` (or a layer given by
name), weights its activations by the spatially averaged gradients of the chosen class's logit
(one class for the batch, or one per image, e.g. each image's predicted class),
keeps the positive part, upsamples to the input size and scales each map to [0, 1]. Prediction
can call it on a single preprocessed image. The review figure is drawn by
:func:`medimg.evaluation.plots.gradcam_grid_png`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def last_conv(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` of ``model`` in module order (Grad-CAM's default layer); ``ValueError`` when it has
    none.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_class: int | Sequence[int] | np.ndarray = 1,
    layer: nn.Module | None = None,
) -> np.ndarray:
    """Heatmaps ``[N, H, W]`` in [0, 1] for preprocessed inputs ``[N, C, H, W]`` (Selvaraju et al. 2017).

    ``target_class``: the class index whose logit is explained, for every image, or one index per
    image (length N; e.g. each image's predicted class). ``ValueError`` when the sequence's
    length is not N or an index is not one of the model's classes. Images are explained
    independently (the model runs in eval mode), so a per-image target gives each image the map
    it would get alone.
    """
    targets = torch.as_tensor(np.asarray(target_class, dtype=np.int64))
    if targets.ndim > 1 or (targets.ndim == 1 and len(targets) != len(x)):
        raise ValueError(
            f"grad_cam: target_class needs one class per image ({len(x)}), got shape {tuple(targets.shape)}"
        )
    layer = layer or last_conv(model)
    store: dict[str, torch.Tensor] = {}

    def keep_grad(
        _m: nn.Module, _gi: tuple[torch.Tensor, ...] | torch.Tensor, go: tuple[torch.Tensor, ...] | torch.Tensor
    ) -> None:
        store["grad"] = go[0] if isinstance(go, tuple) else go

    handles = [
        layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out)),
        layer.register_full_backward_hook(keep_grad),
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            inputs = x.detach().clone().requires_grad_(True)
            logits = model(inputs)
            n_classes = logits.shape[1]
            if bool(((targets < 0) | (targets >= n_classes)).any()):
                raise ValueError(f"grad_cam: target_class {targets.tolist()} outside the model's {n_classes} classes")
            chosen = targets.expand(len(x)) if targets.ndim == 0 else targets
            model.zero_grad(set_to_none=True)
            logits.gather(1, chosen[:, None]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    weights = store["grad"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * store["act"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp(min=1e-12)[:, None, None]
    return (cam / peak).detach().numpy()


def pick_examples(labels: np.ndarray, probs: np.ndarray, threshold: float, per_kind: int = 2) -> dict[str, list[int]]:
    """Indices of the most confident true/false positives/negatives, for a review grid."""
    pred = probs >= threshold
    kinds = {
        "TP": np.flatnonzero(pred & (labels == 1)),
        "FP": np.flatnonzero(pred & (labels == 0)),
        "TN": np.flatnonzero(~pred & (labels == 0)),
        "FN": np.flatnonzero(~pred & (labels == 1)),
    }
    out = {}
    for kind, idx in kinds.items():
        confidence = np.abs(probs[idx] - threshold)
        out[kind] = idx[np.argsort(-confidence)][:per_kind].tolist()
    return out
