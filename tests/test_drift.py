"""PSI and KS drift verdicts on real image intensities and on hand-made shifts."""

from __future__ import annotations

import numpy as np
import pytest

from medimg.data.medmnist import locate
from medimg.drift import compare, psi


def test_psi_of_identical_samples_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert psi(a, a) == pytest.approx(0.0, abs=1e-9)
    small, large = psi(a, a + 0.1), psi(a, a + 1.0)
    assert 0 < small < 0.1 < 0.2 < large


def test_constant_reference():
    assert psi(np.ones(10), np.ones(5)) == 0.0
    assert psi(np.ones(10), np.zeros(5)) == float("inf")
    with pytest.raises(ValueError):
        psi(np.array([]), np.ones(3))


def test_real_splits_do_not_drift_but_a_brightened_copy_does(data_dir, tmp_path):
    arrays = locate("pneumoniamnist", data_dir, tmp_path, download=False).load()
    train = arrays["train"][0].reshape(len(arrays["train"][0]), -1).mean(1)
    val = arrays["val"][0].reshape(len(arrays["val"][0]), -1).mean(1)
    same = compare("pixel_mean", train, val, psi_threshold=0.2, p_threshold=0.01)
    assert not same["drifted"] and same["psi"] < 0.1
    brighter = np.clip(arrays["val"][0].astype(np.float64) * 1.3 + 20, 0, 255).reshape(len(val), -1).mean(1)
    shifted = compare("pixel_mean", train, brighter, psi_threshold=0.2, p_threshold=0.01)
    assert shifted["drifted"] and shifted["psi"] > 0.2 and shifted["ks_pvalue"] < 0.01
