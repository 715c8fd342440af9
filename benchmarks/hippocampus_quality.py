"""Quality of the 3D U-Net on MSD Task04 hippocampus: validation and test Dice per structure with CIs over cases.

Prepares all 240 MSD cases (``imagesTr``/``labelsTr``) through the segmentation contract
(:func:`medimg.segmentation.geometry.training_pair` on :func:`medimg.data.nifti.read_nifti` volumes),
splits them by case the way the ingest does (:func:`medimg.data.splitting.split_by_patient`, each case
its own patient, label = the largest label present, ``data.split.fractions``/``seed``: 168/24/48 cases
for 0.7/0.1/0.2 and seed 42), trains with :func:`medimg.segmentation.training.train_segmentation`
(the best epoch by validation mean Dice), then scores the arg-max labels taken back to each case's own
(oriented) voxels against its mask: Dice per case and structure, mean over cases with a percentile
bootstrap 95 % CI over cases (``gates.bootstrap_samples`` resamples). Reports training wall seconds,
the process's CPU seconds and the load average (the CPU may be shared) as one JSON object on stdout.

Usage (2 cores, as the issue's budget):
OMP_NUM_THREADS=2 python benchmarks/hippocampus_quality.py [params/hippocampus.yaml] [--set section.key=value ...]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medimg.cli import parse_overrides
from medimg.config import Params, load_params
from medimg.data.nifti import read_nifti
from medimg.data.splitting import split_by_patient
from medimg.segmentation.geometry import training_pair, unfit
from medimg.segmentation.inference import predict_probabilities
from medimg.segmentation.training import train_segmentation, validation_dice
from medimg.training.data import SplitArrays

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEDIMG_DATA_DIR", ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class Case:
    """One prepared case: stored image and mask (``preprocess.volume.shape``), offset, oriented source mask."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    offset: tuple[int, int, int]
    source_mask: np.ndarray


def prepare_cases(root: Path, params: Params) -> list[Case]:
    """Every image of ``root/imagesTr`` with its ``root/labelsTr`` mask on the stored grid, sorted by case id."""
    cases = []
    for image_path in sorted((root / "imagesTr").glob("*.nii.gz")):
        volume = read_nifti(image_path, params.data.modality)
        mask = np.rint(read_nifti(root / "labelsTr" / image_path.name).voxels).astype(np.uint8)
        image, stored_mask, offset = training_pair(volume, mask, params.preprocess)
        source = unfit(stored_mask, offset, volume.shape)  # the contract orientation (RAS, as read) is the source's
        if not np.array_equal(source, mask):
            raise ValueError(f"{image_path.name}: the stored grid crops the mask; enlarge preprocess.volume.shape")
        cases.append(Case(image_path.name.removesuffix(".nii.gz"), image, stored_mask, offset, mask))
    return cases


def split_cases(cases: list[Case], params: Params) -> dict[str, list[Case]]:
    """Cases by split: by case, stratified by the largest label present, ``data.split.fractions`` and ``seed``."""
    records = pd.DataFrame({"patient": [c.id for c in cases], "label": [int(c.mask.max()) for c in cases]})
    names = split_by_patient(records, params.data.split.fractions, seed=params.data.split.seed)
    return {s: [c for c, n in zip(cases, names, strict=True) if n == s] for s in ("train", "val", "test")}


def arrays(cases: list[Case]) -> SplitArrays:
    """The cases as a :class:`SplitArrays` (label = largest label present)."""
    return SplitArrays(
        ids=[c.id for c in cases],
        images=np.stack([c.image for c in cases]),
        labels=np.array([int(c.mask.max()) for c in cases], dtype=np.int64),
        masks=np.stack([c.mask for c in cases]),
    )


def case_dice(model: torch.nn.Module, cases: list[Case], params: Params) -> np.ndarray:
    """Dice ``[N, K - 1]`` of the model's arg-max labels, taken back to each case's own voxels, against its mask."""
    probs = predict_probabilities(model, np.stack([c.image for c in cases]), params.preprocess)
    labels = probs.argmax(1).astype(np.uint8)
    k = probs.shape[1]
    return np.concatenate(
        [
            validation_dice(
                torch.as_tensor(unfit(lab, c.offset, c.source_mask.shape)[None]).long(),
                torch.as_tensor(c.source_mask[None]).long(),
                k,
            )
            for lab, c in zip(labels, cases, strict=True)
        ]
    )


def summary(dice: np.ndarray, structures: list[str], n_boot: int, seed: int) -> dict:
    """Mean Dice per structure and their mean, each with a percentile bootstrap 95 % CI over cases."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(dice), size=(n_boot, len(dice)))
    boot = dice[idx].mean(axis=1)  # [n_boot, K - 1]
    out: dict = {"n": len(dice)}
    columns = {f"dice_{s}": (dice[:, j], boot[:, j]) for j, s in enumerate(structures)}
    columns["mean_dice"] = (dice.mean(axis=1), boot.mean(axis=1))
    for name, (values, resampled) in columns.items():
        lo, hi = np.percentile(resampled, [2.5, 97.5])
        out[name] = round(float(values.mean()), 4)
        out[f"{name}_ci95"] = [round(float(lo), 4), round(float(hi), 4)]
    return out


def main(argv: list[str]) -> None:
    """Prepare, split, train, score; one JSON report on stdout, epochs on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sets = [a.removeprefix("--set=") for a in argv if "=" in a]
    files = [a for a in argv if a != "--set" and "=" not in a]
    params = load_params(files[0] if files else ROOT / "params" / "hippocampus.yaml", parse_overrides(sets))
    splits = split_cases(prepare_cases(DATA_DIR / params.data.root, params), params)
    load_before = os.getloadavg()
    cpu_before = time.process_time()

    def on_epoch(row: dict) -> None:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), file=sys.stderr)

    result = train_segmentation(params, arrays(splits["train"]), arrays(splits["val"]), on_epoch=on_epoch)
    cpu_seconds = time.process_time() - cpu_before
    structures = list(params.task.structures)
    n_boot, seed = params.gates.bootstrap_samples, params.train.seed
    report = {
        "cases": {s: len(c) for s, c in splits.items()},
        "model": params.model.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json", exclude={"distributed"}),
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(result.seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_mean_dice_stored_grid": round(result.best_val_auc, 4),
        "val": summary(case_dice(result.model, splits["val"], params), structures, n_boot, seed),
        "test": summary(case_dice(result.model, splits["test"], params), structures, n_boot, seed),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
