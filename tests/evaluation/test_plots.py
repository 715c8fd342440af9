"""Evaluation figures: each call writes a real, non-trivial PNG and leaves no figure open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from medimg.evaluation.plots import (
    calibration_png,
    confusion_matrix_png,
    pr_curve_png,
    roc_curve_png,
    training_curves_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
rng = np.random.default_rng(0)
Y = (np.arange(200) < 120).astype(int)
P = np.clip(rng.normal(0.35 + 0.3 * Y, 0.2), 0, 1)


def _assert_png(path: Path, expected: Path) -> None:
    assert path == expected
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000


def test_all_plots_write_pngs(tmp_path: Path) -> None:
    open_before = plt.get_fignums()
    history = [
        {"epoch": e, "train_loss": 0.7 / e, "val_loss": 0.75 / e + 0.01 * e, "val_auc": 0.8 + 0.02 * e}
        for e in range(1, 6)
    ]
    calls = {
        "roc.png": lambda p: roc_curve_png(Y, P, p, "ROC"),
        "pr.png": lambda p: pr_curve_png(Y, P, p, "PR"),
        "calibration.png": lambda p: calibration_png(Y, P, p, "Calibration"),
        "cm.png": lambda p: confusion_matrix_png(90, 20, 60, 30, ("normal", "pneumonia"), p, "CM"),
        "sub/training.png": lambda p: training_curves_png(history, p),
    }
    for name, call in calls.items():
        target = tmp_path / name
        _assert_png(call(target), target)
    assert plt.get_fignums() == open_before


def test_plots_accept_str_paths_and_zero_rows(tmp_path: Path) -> None:
    target = tmp_path / "cm_zero.png"
    out = confusion_matrix_png(0, 0, 5, 0, ["normal", "pneumonia"], str(target), "no positives")
    _assert_png(out, target)


def test_curves_need_both_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one class"):
        roc_curve_png(np.zeros(5, dtype=int), np.linspace(0, 1, 5), tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="empty"):
        training_curves_png([], tmp_path / "y.png")
