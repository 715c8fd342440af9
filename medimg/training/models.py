"""Model zoo: compact CNNs for small grey inputs and torchvision backbones for 224 px.

Every model maps ``[N, C, H, W]`` float tensors to ``[N, num_classes]`` logits, so export,
evaluation and prediction never depend on the architecture. Pretrained torchvision weights are
read from a local file only (nothing is downloaded at run time); a missing file is an error
that names it. ``head_parameters`` tells the fine-tuning policy which parameters form the head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from medimg.config import ModelConfig
from medimg.training.models3d import build_model_3d


class CompactResNet(nn.Module):
    """A three-stage ResNet for 28-64 px inputs (the ImageNet stem would discard most pixels)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages = []
        channels = width
        for index, out_channels in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or channels != out_channels:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
                )
            stages.append(BasicBlock(channels, out_channels, stride=stride, downsample=downsample))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, C, H, W]``."""
        return self.head(self.stages(self.stem(x)))


class SimpleCNN(nn.Module):
    """Three conv blocks: the plain baseline every richer model must beat."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, C, H, W]``."""
        return self.head(self.features(x))


class ModelError(ValueError):
    """The model cannot be built as configured (missing weights file, bad channel count...)."""


def _torchvision(config: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    factory = getattr(torchvision.models, config.architecture)
    model = factory(weights=None)
    if config.pretrained_weights:
        path = Path(config.pretrained_weights).expanduser()
        if not path.is_file():
            raise ModelError(f"model.pretrained_weights: {path} not found (weights are never downloaded)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelError(f"model.pretrained_weights: {path} does not fit {config.architecture}: {err}") from None
    if in_channels != 3:
        raise ModelError(f"{config.architecture} expects 3 input channels: set preprocess.channels: 3")
    if config.architecture.startswith("resnet"):
        model.fc = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(model.fc.in_features, num_classes))
    else:
        model.classifier = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(model.classifier.in_features, num_classes)
        )
    return model


def build_model(config: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """A new network for ``config.architecture`` taking ``in_channels`` and giving ``num_classes`` logits.

    3D architectures (``resnet3d``, ``simple_cnn3d``) come from :mod:`medimg.training.models3d`.
    """
    if config.architecture.endswith("3d"):
        return build_model_3d(config, in_channels, num_classes)
    if config.architecture == "compact_resnet":
        return CompactResNet(in_channels, num_classes, width=config.width, dropout=config.dropout)
    if config.architecture == "simple_cnn":
        return SimpleCNN(in_channels, num_classes, width=config.width, dropout=config.dropout)
    return _torchvision(config, in_channels, num_classes)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the classification head (``head``, ``fc`` or ``classifier``); :class:`ModelError` when there
    is none.
    """
    for name in ("head", "fc", "classifier"):
        if hasattr(model, name):
            return list(getattr(model, name).parameters())
    raise ModelError(f"{type(model).__name__} has no head/fc/classifier")


def set_trainable(model: nn.Module, head_only: bool) -> None:
    """Freeze everything but the head (head-only fine-tuning) or unfreeze everything."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(not head_only or id(p) in head)


def load_model(config: ModelConfig, in_channels: int, num_classes: int, checkpoint: str | Path) -> nn.Module:
    """The network of ``config`` with the state dict of ``checkpoint`` (weights only, on the CPU), in eval mode."""
    model = build_model(config.model_copy(update={"pretrained_weights": None}), in_channels, num_classes)
    model.load_state_dict(torch.load(checkpoint, weights_only=True, map_location="cpu"))
    return model.eval()
