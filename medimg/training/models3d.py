"""3D networks for volumes (``preprocess.dims: 3``): ``[N, C, D, H, W]`` -> ``[N, num_classes]`` logits.

``resnet3d``: MONAI's :class:`monai.networks.nets.ResNet` with basic blocks, made compact for
28^3-64^3 inputs the way :class:`~medimg.training.models.CompactResNet` is for small images: a
3x3x3 stride-1 stem without max pooling (the 7x7x7 stride-2 stem and pool of the video ResNets
(Hara et al. 2018, https://arxiv.org/abs/1711.09577) would leave a 28^3 input 7^3 before the first
block), one basic block per stage at widths ``w, 2w, 4w, 8w`` (strides 1, 2, 2, 2), then global
average pooling, dropout and a linear head named ``head``. ``simple_cnn3d``: three conv-BN-ReLU-
maxpool blocks (the plain baseline of the issue's "plain 3D CNN script"). ``unet3d`` (segmentation):
MONAI's :class:`monai.networks.nets.UNet` (Kerfoot et al. 2018, https://doi.org/10.1007/978-3-030-12029-0_40),
``[N, C, D, H, W]`` -> ``[N, num_classes, D, H, W]`` logits per voxel (:func:`unet3d`).
"""

from __future__ import annotations

import torch
from torch import nn

from medimg.config import ModelConfig


class CompactResNet3D(nn.Module):
    """MONAI ResNet (basic blocks, layers 1-1-1-1) with a small-input stem and a dropout head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        from monai.networks.nets import ResNet  # here: MONAI takes seconds to import; only 3D runs need it

        backbone = ResNet(
            block="basic",
            layers=[1, 1, 1, 1],
            block_inplanes=[width, 2 * width, 4 * width, 8 * width],
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=3,
            conv1_t_stride=1,
            no_max_pool=True,
            shortcut_type="B",
            feed_forward=False,
        )
        self.features = backbone
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for volumes ``[N, C, D, H, W]``."""
        return self.head(self.features(x))


class SimpleCNN3D(nn.Module):
    """Three 3D conv blocks (conv 3^3, BN, ReLU, max-pool 2): the plain baseline."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv3d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for volumes ``[N, C, D, H, W]``."""
        return self.head(self.features(x))


#: The U-Net's four stride-2 poolings: every spatial size must be a multiple of this.
UNET_MULTIPLE = 16
#: Residual units per U-Net level (MONAI ``num_res_units``): one keeps a CPU epoch on the hippocampus affordable.
UNET_RES_UNITS = 1


def unet3d(in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.0) -> nn.Module:
    """MONAI's residual 3D U-Net: channels ``w, 2w, 4w, 8w, 16w``, strides 2 (four poolings), one residual unit
    per level, instance normalisation, PReLU.

    Input ``[N, in_channels, D, H, W]`` float32 with each of D, H, W a multiple of :data:`UNET_MULTIPLE` (16;
    another size fails in the decoder's concatenation); output ``[N, num_classes, D, H, W]`` logits (softmax
    over axis 1 gives the label probabilities). Exportable to ONNX (opset 18) with dynamic batch and spatial axes.
    """
    from monai.networks.nets import UNet  # here: MONAI takes seconds to import; only 3D runs need it

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=[width * 2**level for level in range(5)],
        strides=[2, 2, 2, 2],
        num_res_units=UNET_RES_UNITS,
        norm="instance",
        dropout=dropout,
    )


def build_model_3d(config: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """A new 3D network for ``config.architecture`` (``resnet3d``, ``simple_cnn3d`` or the segmentation ``unet3d``)."""
    if config.architecture == "resnet3d":
        return CompactResNet3D(in_channels, num_classes, width=config.width, dropout=config.dropout)
    if config.architecture == "simple_cnn3d":
        return SimpleCNN3D(in_channels, num_classes, width=config.width, dropout=config.dropout)
    if config.architecture == "unet3d":
        return unet3d(in_channels, num_classes, width=config.width, dropout=config.dropout)
    raise ValueError(f"{config.architecture!r} is not a 3D architecture")
