"""Model zoo: compact CNNs for small grey inputs, built from torchvision's ResNet blocks.

Every model maps ``[N, C, H, W]`` float tensors to ``[N, num_classes]`` logits, so export,
evaluation and prediction never depend on the architecture.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from medimg.config import ModelConfig


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
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES = {"compact_resnet": CompactResNet, "simple_cnn": SimpleCNN}


def build_model(config: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    return ARCHITECTURES[config.architecture](in_channels, num_classes, width=config.width, dropout=config.dropout)


def load_model(config: ModelConfig, in_channels: int, num_classes: int, checkpoint: str) -> nn.Module:
    model = build_model(config, in_channels, num_classes)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()
