"""3D training augmentation of image and label mask together: one random affine per case, intensity on the image.

One grid of sample points per case serves both arrays, so they stay aligned voxel for voxel: the
image is resampled trilinearly (border values outside), the mask by nearest neighbour (background
outside), so it keeps exactly the label values it had. The affine is built in voxel units (a
rotation by ``rotate_deg`` is a rotation of the anatomy also on a non-cubic grid) and then written in
``torch.nn.functional.affine_grid``'s normalised coordinates.

Flips: only along the last stored axis, left-right under the contract's ``RAS`` orientation (axes
S, A, R; :mod:`medimg.segmentation.geometry`). A left hippocampus mirrored is a plausible right one
(the MSD crops hold one hippocampus each, of either side), whereas a head-foot or front-back
mirror is an anatomy the network never meets, so those are not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medimg.config import AugmentConfig

#: The axis of the stored volume ``[D, H, W]`` that is mirrored: W, patient left-right under ``RAS``.
FLIP_AXIS = 2


def random_affines(
    n: int,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    rotate_deg: float,
    translate: float,
    scale: tuple[float, float],
    flip: bool,
) -> torch.Tensor:
    """``[n, 3, 4]`` affines for :func:`torch.nn.functional.affine_grid` (output -> input points, normalised,
    ``align_corners=False``) on volumes of ``shape`` ``(D, H, W)``.

    Per case: rotations about the three axes, each uniform in ``[-rotate_deg, rotate_deg]`` degrees,
    composed in voxel space; isotropic scale uniform in ``scale`` (> 1 enlarges the anatomy);
    translation uniform in ``[-translate, translate]`` of the extent along each axis; with ``flip``,
    a mirror of :data:`FLIP_AXIS` with probability 1/2. The random draws, in that order, come from
    ``generator`` only.
    """
    angles = (torch.rand(n, 3, generator=generator) * 2 - 1) * math.radians(rotate_deg)
    factor = scale[0] + torch.rand(n, generator=generator) * (scale[1] - scale[0])
    shift = (torch.rand(n, 3, generator=generator) * 2 - 1) * translate * 2
    mirror = torch.ones(n, 3)
    if flip:
        mirror[:, 0] = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)  # column 0 = x = W
    c, s = torch.cos(angles), torch.sin(angles)

    def rot(i: int, a: int, b: int) -> torch.Tensor:  # [n, 3, 3]: rotation by angles[:, i] in the plane of axes a, b
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = c[:, i], -s[:, i], s[:, i], c[:, i]
        return m

    # affine_grid's coordinates are (x, y, z) = (W, H, D); half-extents turn voxels into normalised units
    half = torch.tensor([shape[2], shape[1], shape[0]], dtype=torch.float32) / 2
    voxel = rot(0, 0, 1) @ rot(1, 0, 2) @ rot(2, 1, 2) / factor[:, None, None] * mirror[:, None, :]
    linear = voxel * half[None, None, :] / half[None, :, None]  # diag(1/half) @ voxel @ diag(half)
    return torch.cat([linear, shift[:, :, None]], 2)


def augment_pair(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, config: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images float32 ``[N, C, D, H, W]`` and label masks integer ``[N, D, H, W]`` -> the same, moved by
    one random affine per case (:func:`random_affines` with ``train.augment`` rotate_deg, translate, scale_min/max
    and ``hflip`` as the left-right flip), then the image's contrast (gain uniform in ``1 +- contrast`` about its
    mean) and brightness (shift uniform in ``+- brightness``) changed per case. Masks keep their dtype and values.
    """
    n = images.shape[0]
    shape = (images.shape[2], images.shape[3], images.shape[4])
    theta = random_affines(
        n, shape, generator, config.rotate_deg, config.translate, (config.scale_min, config.scale_max), config.hflip
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    labels = F.grid_sample(
        masks[:, None].to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    if config.contrast or config.brightness:
        per_case = (n, 1, 1, 1, 1)
        gain = 1 + (torch.rand(per_case, generator=generator) * 2 - 1) * config.contrast
        offset = (torch.rand(per_case, generator=generator) * 2 - 1) * config.brightness
        mean = moved.mean(dim=(1, 2, 3, 4), keepdim=True)
        moved = (moved - mean) * gain + mean + offset
    return moved, labels[:, 0].round().to(masks.dtype)
