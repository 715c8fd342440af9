"""Evaluation figures: each call writes a real, non-trivial PNG and leaves no figure open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from medimg.evaluation.plots import (
    calibration_png,
    class_roc_curves_png,
    confusion_matrix_png,
    normalized_confusion_matrix_png,
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


# --- multi-class figures ---------------------------------------------------------------------

CLASSES = ("glioma", "meningioma", "pituitary", "no_tumor")
Y4 = np.arange(120) % 4
_LOGITS = rng.normal(size=(120, 4))
_LOGITS[np.arange(120), Y4] += 1.5
P4 = np.exp(_LOGITS) / np.exp(_LOGITS).sum(axis=1, keepdims=True)


def _assert_image(path: Path) -> None:
    _assert_png(path, path)
    with Image.open(path) as image:
        image.verify()  # a complete, decodable PNG
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 300


def test_multiclass_plots_write_valid_pngs(tmp_path: Path) -> None:
    open_before = plt.get_fignums()
    counts = np.array([[25, 3, 2, 0], [4, 20, 5, 1], [0, 2, 28, 0], [1, 1, 0, 28]])
    _assert_image(class_roc_curves_png(Y4, P4, CLASSES, tmp_path / "roc4.png", "ROC per class"))
    _assert_image(normalized_confusion_matrix_png(counts, CLASSES, tmp_path / "sub" / "cm4.png", "CM"))
    assert plt.get_fignums() == open_before


def test_multiclass_plots_with_an_absent_class(tmp_path: Path) -> None:
    # no_tumor absent from y_true: no curve for it (a note says so); its confusion row is empty.
    present = Y4 != 3
    _assert_image(class_roc_curves_png(Y4[present], P4[present], CLASSES, tmp_path / "roc3.png", "t"))
    counts = np.array([[25, 3, 2, 0], [4, 20, 5, 1], [0, 2, 28, 0], [0, 0, 0, 0]])
    _assert_image(normalized_confusion_matrix_png(counts, CLASSES, str(tmp_path / "cm3.png"), "t"))


def test_multiclass_plots_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one class"):
        class_roc_curves_png(np.zeros(4, dtype=int), P4[:4], CLASSES, tmp_path / "a.png", "t")
    with pytest.raises(ValueError, match="one column per class"):
        class_roc_curves_png(Y4, P4[:, :3], CLASSES, tmp_path / "b.png", "t")
    with pytest.raises(ValueError, match="sum to 1"):
        class_roc_curves_png(Y4, P4 * 0.9, CLASSES, tmp_path / "c.png", "t")
    with pytest.raises(ValueError, match="4 x 4"):
        normalized_confusion_matrix_png(np.ones((3, 3), dtype=int), CLASSES, tmp_path / "d.png", "t")
    with pytest.raises(ValueError, match="non-negative"):
        normalized_confusion_matrix_png(-np.eye(4, dtype=int), CLASSES, tmp_path / "e.png", "t")
    with pytest.raises(ValueError, match="whole numbers"):
        normalized_confusion_matrix_png(np.full((4, 4), 0.5), CLASSES, tmp_path / "f.png", "t")
    with pytest.raises(ValueError, match="class"):
        normalized_confusion_matrix_png(np.eye(4, dtype=int), ("a", "b", "c", "a"), tmp_path / "g.png", "t")
    assert not any(tmp_path.iterdir()), "a rejected input writes no file"
