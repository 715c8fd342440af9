"""Training on a real PneumoniaMNIST subset: it learns, it is deterministic, and resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medimg.config import parse_params
from medimg.data.medmnist import locate
from medimg.training.data import SplitArrays, augment_batch
from medimg.training.loop import train


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def subset(data_dir, tmp_path_factory):
    arrays = locate("pneumoniamnist", data_dir, tmp_path_factory.mktemp("dl"), download=False).load()

    def take(split, n):
        images, labels = arrays[split]
        return SplitArrays(ids=[f"{split}-{i}" for i in range(n)], images=images[:n], labels=labels[:n])

    return take("train", 768), take("val", 256)


@pytest.fixture(scope="module")
def small(subset):
    """A third of ``subset``: enough batches per epoch (4) for shuffling, augmentation and the schedule
    to matter, which is all that determinism and resume need; learning is shown on ``subset``."""
    (tr, va) = subset
    return (
        SplitArrays(ids=tr.ids[:256], images=tr.images[:256], labels=tr.labels[:256]),
        SplitArrays(ids=va.ids[:96], images=va.images[:96], labels=va.labels[:96]),
    )


PARAMS = parse_params({"train": {"epochs": 3, "batch_size": 64, "num_threads": 1}, "model": {"width": 8}})


@pytest.fixture(scope="module")
def straight_small(small):
    """One uninterrupted run on ``small``: the reference for determinism and for resume."""
    return train(PARAMS, *small)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.dtype.is_floating_point])


def test_learns_better_than_chance_on_real_images(subset):
    result = train(PARAMS, *subset)
    assert result.best_val_auc > 0.85
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.best_epoch in (1, 2, 3)


def test_same_seed_same_weights(small, straight_small):
    again = train(PARAMS, *small)
    assert torch.equal(_weights(again.model), _weights(straight_small.model))
    assert again.history == straight_small.history


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(small, straight_small, tmp_path):
    straight = straight_small
    subset = small

    def die_at_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(PARAMS, *subset, on_epoch=die_at_epoch_2, checkpoint_dir=tmp_path)
    resumed_epochs = []
    resumed = train(
        PARAMS, *subset, on_epoch=lambda row: resumed_epochs.append(row["epoch"]), checkpoint_dir=tmp_path, resume=True
    )
    assert resumed_epochs == [2, 3], "resume must start after the last checkpointed epoch"
    assert torch.allclose(_weights(resumed.model), _weights(straight.model), atol=1e-6)
    assert resumed.best_val_auc == pytest.approx(straight.best_val_auc, abs=1e-9)


def test_max_steps_bounds_a_smoke_run(subset):
    params = parse_params({"train": {"epochs": 5, "batch_size": 64, "max_steps": 3}, "model": {"width": 8}})
    result = train(params, *subset)
    assert result.steps == 3 and len(result.history) == 1


def test_augmentation_keeps_shape_and_changes_pixels(subset):
    x = torch.as_tensor(subset[0].images[:16], dtype=torch.float32).unsqueeze(1) / 255
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    assert np.isfinite(out.numpy()).all()
