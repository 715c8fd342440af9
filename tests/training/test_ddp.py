"""DistributedDataParallel with torchrun: 2 gloo processes on the CPU match 1 process within tolerance."""

from __future__ import annotations

import pytest

from medimg.config import DataConfig, parse_params
from medimg.data import manifest
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.training import ddp
from medimg.training.data import load_split
from medimg.training.loop import train

pytestmark = pytest.mark.integration


def test_two_gloo_processes_match_one(data_dir, tmp_path):
    folder = tmp_path / "dataset"
    ingest_medmnist(
        locate("pneumoniamnist", data_dir, tmp_path / "dl", download=False),
        DataConfig(),
        ("normal", "pneumonia"),
        folder,
    )
    frame = manifest.read(folder)
    keep = frame.groupby("split").head(1000)
    manifest.write(keep, folder)
    exclude: list[str] = []
    raw = {
        "train": {
            "epochs": 3,
            "batch_size": 64,
            "num_threads": 1,
            "distributed": {"enabled": True, "nproc_per_node": 2},
        },
        "model": {"width": 8},
    }
    params = parse_params(raw)

    single = train(params, load_split(folder, keep, "train"), load_split(folder, keep, "val"))
    result = ddp.launch(params.model_dump(mode="json"), folder, exclude, tmp_path / "ddp", None, nproc=2)

    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["steps"] == single.steps, "both must take the same number of global steps"
    assert single.best_val_auc > 0.9 and result["best_val_auc"] > 0.9
    assert abs(result["best_val_auc"] - single.best_val_auc) < 0.02
    final_single = single.history[-1]["val_auc"]
    final_ddp = result["history"][-1]["val_auc"]
    assert abs(final_ddp - final_single) < 0.03
    assert (tmp_path / "ddp" / "best.pt").is_file()
