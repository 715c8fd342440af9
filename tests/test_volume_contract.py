"""The 3D preprocessing contract (medimg.volume_contract): resampling as documented, orientation, intensity, sizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medimg import preprocess, volume_contract
from medimg.config import PreprocessConfig
from medimg.data.series import read_series_folder
from medimg.data.volumes import Volume
from tests.datapaths import CT_SERIES


def _config(**kw) -> PreprocessConfig:
    return PreprocessConfig(dims=3, **kw)


@pytest.fixture(scope="module")
def ct_volume() -> Volume:
    (volume,) = read_series_folder(CT_SERIES).volumes
    return volume


@pytest.mark.parametrize("shape", [(20, 33, 17), (7, 5, 40)])
def test_trilinear_is_pytorchs_trilinear(shape):
    rng = np.random.default_rng(0)
    v = rng.random((11, 23, 31), dtype=np.float32)
    ours = volume_contract.resample(v, shape, "trilinear")
    theirs = F.interpolate(torch.from_numpy(v)[None, None], size=shape, mode="trilinear", align_corners=False)
    assert np.abs(ours - theirs[0, 0].numpy()).max() < 1e-5


def test_nearest_is_pytorchs_nearest_and_area_averages_whole_blocks():
    rng = np.random.default_rng(1)
    v = rng.random((12, 18, 24), dtype=np.float32)
    nearest = F.interpolate(torch.from_numpy(v)[None, None], size=(5, 7, 9), mode="nearest")[0, 0].numpy()
    assert np.array_equal(volume_contract.resample(v, (5, 7, 9), "nearest"), nearest)
    area = F.avg_pool3d(torch.from_numpy(v)[None, None], kernel_size=(2, 3, 4))[0, 0].numpy()
    assert np.abs(volume_contract.resample(v, (6, 6, 6), "area") - area).max() < 1e-6


def test_real_ct_goes_to_a_ras_cube_windowed_in_hu(ct_volume):
    assert ct_volume.shape == (20, 512, 512) and ct_volume.modality == "CT"
    config = _config(size=32)
    cube = volume_contract.prepare_volume(ct_volume, config)
    assert cube.shape == (32, 32, 32) and cube.dtype == np.uint8
    # the default CT window 40/400 HU: air (-1000 HU) is 0, dense bone (> 240 HU) is 255
    assert cube.min() == 0 and cube.max() == 255
    assert 0.05 < (cube == 0).mean() < 0.9
    # orientation RAS: axis 0 runs inferior -> superior, like nibabel's canonical k axis
    source = volume_contract.prepare_volume(ct_volume, _config(size=32, volume={"orientation": "source"}))
    codes = "".join(ct_volume.axcodes)
    assert codes[0] in "SI"
    expected = source[::-1] if codes[0] == "I" else source
    if codes[1] == "P":
        expected = expected[:, ::-1]
    if codes[2] == "L":
        expected = expected[:, :, ::-1]
    assert np.array_equal(cube, expected)


def test_a_target_spacing_resamples_before_sizing(ct_volume):
    # 20 slices at 2 mm = 40 mm; rows/columns 512 at about 0.7 mm: at 4 mm isotropic the stack is 10 deep,
    # and with pad the cube's depth holds 10 of its voxels' worth of tissue, the rest black
    config = _config(size=32, resize="pad", volume={"spacing": (4.0, 4.0, 4.0)})
    cube = volume_contract.prepare_volume(ct_volume, config)
    assert cube.shape == (32, 32, 32)
    filled = np.flatnonzero(cube.reshape(32, -1).max(axis=1) > 0)
    in_plane = round(512 * ct_volume.spacing[1] / 4.0)
    expected_depth = 32 * 10 / in_plane
    assert abs(len(filled) - expected_depth) <= 2


def test_mr_uses_percentiles_and_a_uint8_volume_is_kept():
    rng = np.random.default_rng(2)
    voxels = rng.normal(300, 50, (16, 16, 16)).astype(np.float32)
    voxels[0, 0, 0] = 1e6  # one outlier does not set the scale
    unit = volume_contract.intensity_unit(voxels, "MR", _config(size=16))
    assert unit.min() == 0 and unit.max() == 1 and 0.4 < np.median(unit) < 0.6
    stored = rng.integers(0, 256, (28, 28, 28), dtype=np.uint8)
    assert np.array_equal(volume_contract.prepare_array(stored, _config(size=28)), stored)
    assert volume_contract.prepare_array(stored, _config(size=16)).shape == (16, 16, 16)


def test_apply_gives_ncdhw_and_refuses_what_was_not_prepared():
    config = _config(size=8, channels=3)
    x = preprocess.apply(np.full((2, 8, 8, 8), 255, dtype=np.uint8), config)
    assert tuple(x.shape) == (2, 3, 8, 8, 8) and torch.allclose(x, torch.ones_like(x))
    with pytest.raises(ValueError, match="prepare them with prepare_volume"):
        preprocess.apply(np.zeros((2, 8, 8, 9), dtype=np.uint8), config)
    with pytest.raises(ValueError, match="uint8"):
        preprocess.apply(np.zeros((2, 8, 8, 8), dtype=np.float32), config)


def test_the_contract_round_trips_through_its_metadata():
    config = _config(size=64, resize="pad", ct_window=(50, 350), volume={"spacing": (1.5, 1.0, 1.0)})
    meta = preprocess.contract(config)
    assert meta["dims"] == 3 and meta["layout"] == "NCDHW float32" and meta["shape"] == [64, 64, 64]
    assert preprocess.config_from_contract(meta) == config
    assert preprocess.contract_hash(config) != preprocess.contract_hash(_config(size=64))


def test_2d_settings_are_refused_for_volumes():
    with pytest.raises(ValueError, match=r"preprocess\.clahe is a 2D setting"):
        PreprocessConfig(dims=3, clahe=True)
