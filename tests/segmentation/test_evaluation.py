"""The summary over cases, its bootstrap CIs, the paired champion comparison and the overlay montage, on real
MSD hippocampus cases with predictions of known error (the reference masks shifted by 0-2 voxels, some cases
with nothing predicted)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medimg.segmentation import evaluation
from medimg.segmentation.metrics import case_table
from seg_eval_cases import STRUCTURES, hippocampus_cases, shifted

N_CASES = 40


@pytest.fixture(scope="module")
def cases():
    return hippocampus_cases(N_CASES)


@pytest.fixture(scope="module")
def table(cases) -> pd.DataFrame:
    """Case i predicted as its reference shifted i % 3 voxels along y; cases 5 and 17 predicted empty."""
    predicted = shifted(cases.masks, [i % 3 for i in range(N_CASES)])
    predicted[[5, 17]] = 0
    return case_table(cases.ids, predicted, cases.masks, cases.spacings, STRUCTURES)


def test_summary_names_and_conventions(table: pd.DataFrame) -> None:
    summary = evaluation.summary(table, STRUCTURES)
    assert set(summary) == {
        *(f"{figure}_{s}" for s in STRUCTURES for figure in ("dice", "hd95", "volume_error_ml", "hd95_undefined")),
        "mean_dice",
        "mean_hd95",
        "n",
    }
    assert summary["n"] == N_CASES
    for s in STRUCTURES:
        # the two empty predictions: Dice 0 counted in the mean, HD95 undefined, counted and left out of its mean
        assert summary[f"hd95_undefined_{s}"] == 2
        assert summary[f"dice_{s}"] == pytest.approx(table[f"dice_{s}"].mean())
        defined = table[f"hd95_{s}"].drop(index=[5, 17])
        assert summary[f"hd95_{s}"] == pytest.approx(defined.mean())
        assert 0 < summary[f"hd95_{s}"] < 1  # shifts of 0 or 1 voxel (1 mm) and 2 voxels (at most 2 mm)
        assert summary[f"volume_error_ml_{s}"] == pytest.approx(table[f"volume_error_ml_{s}"].mean())
    assert summary["mean_dice"] == pytest.approx(table["mean_dice"].mean())
    assert summary["mean_hd95"] == pytest.approx(np.mean([summary[f"hd95_{s}"] for s in STRUCTURES]))


def test_intervals_contain_the_estimate_and_narrow_with_more_cases(table: pd.DataFrame) -> None:
    full = evaluation.bootstrap_ci(table, STRUCTURES, n_boot=1000, seed=7)
    few = evaluation.bootstrap_ci(table.iloc[:10], STRUCTURES, n_boot=1000, seed=7)
    estimate = evaluation.summary(table, STRUCTURES)
    assert set(full) == {
        *(f"{f}_{s}" for s in STRUCTURES for f in ("dice", "hd95", "volume_error_ml")),
        "mean_dice",
        "mean_hd95",
    }
    for name, (low, high) in full.items():
        assert low <= estimate[name] <= high, (name, low, estimate[name], high)
        assert high - low > 0, name
    for name in ("mean_dice", "dice_anterior", "dice_posterior", "mean_hd95"):
        assert full[name][1] - full[name][0] < few[name][1] - few[name][0], name
    # the same table and seed give the same intervals; another seed others
    assert evaluation.bootstrap_ci(table, STRUCTURES, n_boot=1000, seed=7) == full
    assert evaluation.bootstrap_ci(table, STRUCTURES, n_boot=1000, seed=8) != full


def test_an_hd95_undefined_in_every_case_has_no_interval(cases) -> None:
    predicted = np.zeros_like(cases.masks[:6])
    table = case_table(cases.ids[:6], predicted, cases.masks[:6], cases.spacings[:6], STRUCTURES)
    summary = evaluation.summary(table, STRUCTURES)
    ci = evaluation.bootstrap_ci(table, STRUCTURES, n_boot=200, seed=0)
    assert summary["dice_anterior"] == 0.0 and summary["hd95_undefined_anterior"] == 6
    assert math.isnan(summary["hd95_anterior"]) and math.isnan(summary["mean_hd95"])
    assert all(math.isnan(v) for v in ci["hd95_anterior"]) and all(math.isnan(v) for v in ci["mean_hd95"])
    assert ci["dice_anterior"] == (0.0, 0.0)


def test_paired_difference_of_mean_dice(table: pd.DataFrame) -> None:
    candidate = table["mean_dice"].to_numpy()
    same = evaluation.paired_mean_dice_difference(candidate, candidate, n_boot=500, seed=1)
    assert same == {"delta": 0.0, "lower": 0.0, "upper": 0.0, "n_boot": 500}
    worse = candidate - 0.05  # a champion 0.05 behind on every case
    ahead = evaluation.paired_mean_dice_difference(candidate, worse, n_boot=500, seed=1)
    assert ahead["delta"] == pytest.approx(0.05) and ahead["lower"] == pytest.approx(0.05)
    # a champion better on half the cases: the interval straddles the observed difference
    rng = np.random.default_rng(0)
    champion = np.clip(candidate + rng.normal(0, 0.05, size=candidate.size), 0, 1)
    mixed = evaluation.paired_mean_dice_difference(candidate, champion, n_boot=2000, seed=1)
    assert mixed["lower"] < mixed["delta"] < mixed["upper"]
    assert mixed["delta"] == pytest.approx((candidate - champion).mean())
    with pytest.raises(ValueError, match="same cases"):
        evaluation.paired_mean_dice_difference(candidate, candidate[:-1])


def test_best_median_worst(table: pd.DataFrame) -> None:
    ranked = evaluation.ranked_cases(table)
    dice = table["mean_dice"].to_numpy()
    assert dice[ranked["best"]] == dice.max() == 1.0  # an unshifted case
    assert dice[ranked["worst"]] == dice.min() == 0.0  # an empty prediction
    assert table["id"].iloc[ranked["worst"]] == table["id"].iloc[[5, 17]].min()
    assert dice[ranked["median"]] == np.sort(dice)[::-1][(len(dice) - 1) // 2]


def test_overlay_montage_png(cases, table: pd.DataFrame, tmp_path) -> None:
    predicted = shifted(cases.masks, [i % 3 for i in range(N_CASES)])
    predicted[[5, 17]] = 0
    ranked = evaluation.ranked_cases(table)
    index = [ranked[k] for k in ("best", "median", "worst")]
    titles = [evaluation.case_title(k, table.iloc[ranked[k]], STRUCTURES) for k in ("best", "median", "worst")]
    assert titles[0].startswith(f"best: {table['id'].iloc[ranked['best']]}, mean Dice 1.000 (anterior 1.000")
    path = evaluation.overlay_montage_png(
        cases.images[index], cases.masks[index], predicted[index], titles, STRUCTURES, tmp_path / "f" / "overlay.png"
    )
    assert path.is_file()
    with Image.open(path) as png:
        # 5 slices x 1.5 in wide, 3 rows x (1.5 + 0.4) in + 0.35 in legend high, at 110 dpi
        assert png.size == (round(7.5 * 110), round((3 * 1.9 + 0.35) * 110))
        pixels = np.asarray(png.convert("RGB")).astype(int)
    # the structure colours are drawn (anterior yellow, posterior cyan)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 180) & (pixels[..., 2] < 80)
    cyan = (pixels[..., 0] < 80) & (pixels[..., 1] > 160) & (pixels[..., 2] > 200)
    assert yellow.sum() > 100 and cyan.sum() > 100
    with pytest.raises(ValueError, match="titles"):
        evaluation.overlay_montage_png(
            cases.images[index], cases.masks[index], predicted[index], titles[:2], STRUCTURES, tmp_path / "x.png"
        )


def test_bad_tables_are_refused(table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no cases"):
        evaluation.summary(table.iloc[:0], STRUCTURES)
    with pytest.raises(ValueError, match="dice_hippo"):
        evaluation.bootstrap_ci(table, ("hippo",))
