"""Grad-CAM heatmaps: which pixels or voxels drove a class's logit (the positive class's, or each item's decided one).

``grad_cam`` works on any model of the zoo, 2D or 3D (picked by the input's ``ndim``: images
``[N, C, H, W]`` or volumes ``[N, C, D, H, W]``): it hooks a layer (:func:`cam_layer`, or one given),
weights its activations by the spatially averaged gradients of the chosen class's logit
(one class for the batch, or one per item, e.g. each item's predicted class),
keeps the positive part, upsamples to the input size (bilinear, or trilinear for volumes) and
scales each map to [0, 1]. Prediction can call it on a single preprocessed image. The review
figures are drawn by :func:`medimg.evaluation.plots.gradcam_grid_png` (images) and
:func:`medimg.evaluation.plots.gradcam_montage_png` (volumes, as slice montages).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def last_conv(model: nn.Module, dims: int = 2) -> nn.Module:
    """The last ``nn.Conv2d`` (``dims`` 2) or ``nn.Conv3d`` (``dims`` 3) of ``model`` in module order; ``ValueError``
    when it has none.
    """
    kind = {2: nn.Conv2d, 3: nn.Conv3d}.get(dims)
    if kind is None:
        raise ValueError(f"last_conv: dims must be 2 or 3, got {dims}")
    convs = [m for m in model.modules() if isinstance(m, kind)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no {kind.__name__} layer for Grad-CAM")
    return convs[-1]


def cam_layer(model: nn.Module, dims: int = 2) -> nn.Module:
    """Grad-CAM's default layer: images, :func:`last_conv`; volumes, the last residual stage (a module named
    ``layer4``, as in MONAI's and torchvision's ResNets) when the network has one, else the last ``Conv3d``.

    Why ``layer4`` for a 3D ResNet: its last ``Conv3d`` in module order is the 1x1x1 projection of
    the shortcut (``layer4.0.downsample.0``), not the main path; the stage's output (after the
    residual sum) is the feature map the head pools, Selvaraju et al.'s choice for ResNets.
    """
    if dims == 3:
        stages = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "layer4"]
        if stages:
            return stages[-1]
    return last_conv(model, dims)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_class: int | Sequence[int] | np.ndarray = 1,
    layer: nn.Module | None = None,
) -> np.ndarray:
    """Heatmaps ``[N, H, W]`` in [0, 1] for preprocessed images ``[N, C, H, W]``, or ``[N, D, H, W]`` for volumes
    ``[N, C, D, H, W]`` (Selvaraju et al. 2017); ``layer`` defaults to :func:`cam_layer`.

    ``target_class``: the class index whose logit is explained, for every image, or one index per
    image (length N; e.g. each image's predicted class). ``ValueError`` when the sequence's
    length is not N or an index is not one of the model's classes. Images are explained
    independently (the model runs in eval mode), so a per-image target gives each image the map
    it would get alone. ``ValueError`` for an input that is neither 4-D nor 5-D.
    """
    if x.ndim not in (4, 5):
        raise ValueError(
            f"grad_cam: expected images [N, C, H, W] or volumes [N, C, D, H, W], got shape {tuple(x.shape)}"
        )
    spatial = tuple(range(2, x.ndim))
    targets = torch.as_tensor(np.asarray(target_class, dtype=np.int64))
    if targets.ndim > 1 or (targets.ndim == 1 and len(targets) != len(x)):
        raise ValueError(
            f"grad_cam: target_class needs one class per image ({len(x)}), got shape {tuple(targets.shape)}"
        )
    layer = layer or cam_layer(model, x.ndim - 2)
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
    weights = store["grad"].mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * store["act"]).sum(dim=1, keepdim=True))
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp(min=1e-12).view(-1, *([1] * len(spatial)))
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
