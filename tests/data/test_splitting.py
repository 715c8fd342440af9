"""split_by_patient on the real Kermany patients: group purity, proportions, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datapaths import DATA_DIR
from medimg.data.sources import kermany_patient_key
from medimg.data.splitting import _fold_counts, split_by_patient


@pytest.fixture(scope="module")
def kermany() -> pd.DataFrame:
    """All 5840 Kermany images as (patient, label), ignoring the official split."""
    paths = sorted((DATA_DIR / "chest_xray").glob("*/*/*.jpeg"))
    frame = pd.DataFrame(
        {
            "patient": [kermany_patient_key(p.name) for p in paths],
            "label": [p.parent.name.lower() for p in paths],
            "file": [p.name for p in paths],
        },
        index=pd.RangeIndex(1000, 1000 + len(paths)),  # a non-default index must be kept
    )
    assert len(frame) == 5840
    return frame


def _patients_per_split(frame: pd.DataFrame, split: pd.Series) -> pd.Series:
    return frame.assign(split=split).groupby("patient")["split"].nunique()


def test_no_patient_in_two_splits(kermany):
    split = split_by_patient(kermany, seed=7)
    assert split.index.equals(kermany.index) and split.name == "split"
    assert set(split) == {"train", "val", "test"}
    assert (_patients_per_split(kermany, split) == 1).all()
    # the 170 ids the official split shares between train and test are now on one side each
    assert kermany.groupby("patient").size().max() > 1


def test_sizes_and_label_mix_follow_the_fractions(kermany):
    split = split_by_patient(kermany, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    share = split.value_counts(normalize=True)
    assert abs(share["train"] - 0.8) < 0.02
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    overall = (kermany["label"] == "pneumonia").mean()
    for name in ("train", "val", "test"):
        prevalence = (kermany.loc[split == name, "label"] == "pneumonia").mean()
        assert abs(prevalence - overall) < 0.03, name


def test_seeded_determinism_and_row_order_independence(kermany):
    first = split_by_patient(kermany, seed=11)
    pd.testing.assert_series_equal(first, split_by_patient(kermany, seed=11))
    assert (first != split_by_patient(kermany, seed=12)).any()
    shuffled = kermany.sample(frac=1.0, random_state=0)
    again = split_by_patient(shuffled, seed=11)
    pd.testing.assert_series_equal(again.loc[kermany.index], first)


def test_other_fractions_and_zero_fractions(kermany):
    split = split_by_patient(kermany, {"train": 0.7, "val": 0.0, "test": 0.3}, seed=1)
    assert set(split) == {"train", "test"}
    assert abs((split == "test").mean() - 0.3) < 0.03
    assert (_patients_per_split(kermany, split) == 1).all()
    assert _fold_counts({"train": 0.7, "val": 0.15, "test": 0.15}) == {"train": 14, "val": 3, "test": 3}
    assert _fold_counts({"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 8, "val": 1, "test": 1}
    assert sum(_fold_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()) == 3


def test_invalid_input():
    frame = pd.DataFrame({"patient": [f"p{i}" for i in range(20)], "label": [i % 2 for i in range(20)]})
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_patient(frame, {"train": 0.8, "test": 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        split_by_patient(frame, {"train": 1.2, "test": -0.2})
    with pytest.raises(ValueError, match="column"):
        split_by_patient(frame.rename(columns={"label": "y"}))
    with pytest.raises(ValueError, match="at least 10 patients"):
        split_by_patient(frame.iloc[:8])
    with_nan = frame.copy()
    with_nan.loc[3, "patient"] = np.nan
    with pytest.raises(ValueError, match="missing"):
        split_by_patient(with_nan)


def test_small_frame_with_repeated_patients():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 40, size=300)
    frame = pd.DataFrame({"patient": patients, "label": patients % 3})  # label constant per patient
    split = split_by_patient(frame, seed=5)
    assert (_patients_per_split(frame, split) == 1).all()
    assert set(split) == {"train", "val", "test"}
