"""Train medimg's way on the brain tumour MRI folder with given settings; log val and test figures.

The same code paths as ``medimg run`` on ``params/brain_mri.yaml``, minus the orchestration:
every file goes through :func:`medimg.preprocess.prepare_file` (what ingest stores), the split
is :func:`stratified_split` (70/15/15, seed 42, the floor's split, see
``benchmarks/brain_mri_floor.py``), and :func:`medimg.training.loop.train` trains (AdamW,
one-cycle, class-balanced loss, augmentation, best epoch by validation macro AUC). Settings are
``params.yaml`` with a multiclass task and the overrides given as JSON (the sections
``preprocess``, ``model``, ``train``), so a result transfers 1:1 to a params file. With
``model.ensemble`` set, one network per member seed is trained and the figures are those of the
:class:`medimg.tuning.ensemble.EnsembleModel` the export step would build (mean probability over
members and test-time flips).

Appends one JSON line per run to ``--log``: the overrides, training wall and CPU seconds, best
epoch, val and test macro one-vs-rest ROC AUC and arg-max accuracy. Decoded images are cached
per preprocessing contract under ``--cache``.
Usage, from the repo root:
  MEDIMG_DATA_DIR=/work/shared/data python benchmarks/brain_mri_search.py \
      '{"preprocess": {"size": 96}, "train": {"epochs": 20}}' --tag s96
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medimg import preprocess
from medimg.config import deep_merge, load_params, member_seeds
from medimg.training.data import SplitArrays
from medimg.training.loop import predict_proba, train
from medimg.tuning.ensemble import EnsembleModel, member_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brain_mri_floor import CLASSES, stratified_split

TASK = {
    "kind": "multiclass",
    "class_names": CLASSES,
    "abnormal": ["glioma", "meningioma", "pituitary"],
    "modalities": ["MR"],
    "body_part": "BRAIN",
    "description": "brain tumour type on MRI slices",
}
DEFAULTS = {"data": {"source": "image_folder", "modality": "MR"}, "train": {"num_threads": 2, "device": "cpu"}}


def load_images(folder: Path, keys: list[str], params, cache: Path) -> np.ndarray:
    """uint8 ``[N, size, size]`` of ``keys`` by the params' preprocessing contract, cached by its hash."""
    path = cache / f"brain_mri_{preprocess.contract_hash(params.preprocess)}.npz"
    if path.is_file():
        stored = np.load(path)
        if list(stored["keys"]) == keys:
            return stored["images"]
    images = np.stack([preprocess.prepare_file(folder / key, params.preprocess) for key in keys])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, keys=np.array(keys), images=images)
    return images


def figures(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest ROC AUC and arg-max accuracy."""
    return {
        "macro_auc": round(float(roc_auc_score(labels, probs, multi_class="ovr", average="macro")), 4),
        "acc": round(float((probs.argmax(1) == labels).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON: preprocess/model/train overrides")
    parser.add_argument("--tag", default="")
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=Path("results/brain_mri_runs.jsonl"))
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    args = parser.parse_args()
    folder = args.folder or Path(os.environ.get("MEDIMG_DATA_DIR", "../shared/data")) / "brain_tumor_mri"
    overrides = json.loads(args.overrides)
    params = load_params("params.yaml", deep_merge({"task": TASK, **DEFAULTS}, overrides))

    keys, labels = [], []
    for index, name in enumerate(CLASSES):
        for path in sorted((folder / name).glob("*.jpg")):
            keys.append(path.relative_to(folder).as_posix())
            labels.append(index)
    started = time.perf_counter()
    images = load_images(folder, keys, params, args.cache)
    decode_seconds = time.perf_counter() - started
    split = stratified_split(keys, labels, {"train": 0.70, "val": 0.15, "test": 0.15}, seed=42)
    names = np.array([split[k] for k in keys])
    y = np.array(labels, dtype=np.int64)

    def arrays(name: str) -> SplitArrays:
        chosen = np.flatnonzero(names == name)
        return SplitArrays(ids=[keys[i] for i in chosen], images=images[chosen], labels=y[chosen])

    train_split, val_split, test_split = arrays("train"), arrays("val"), arrays("test")
    history = []
    cpu_started = time.process_time()

    def on_epoch(row: dict) -> None:
        history.append(row)
        print(
            f"epoch {row['epoch']} val_auc {row['val_auc']:.4f} loss {row['train_loss']:.3f} "
            f"{time.process_time() - cpu_started:.0f} cpu s",
            file=sys.stderr,
            flush=True,
        )

    # model.ensemble: one network per member seed, scored as the exported graph is (mean probability
    # over members and test-time flips)
    results = [
        train(member_params(params, seed), train_split, val_split, on_epoch=on_epoch) for seed in member_seeds(params)
    ]
    cpu_seconds = time.process_time() - cpu_started
    model = EnsembleModel([r.model for r in results], params.model.ensemble.tta_flips).eval()
    val = figures(val_split.labels, predict_proba(model, preprocess.apply(val_split.images, params.preprocess)))
    test = figures(test_split.labels, predict_proba(model, preprocess.apply(test_split.images, params.preprocess)))
    row = {
        "tag": args.tag,
        "overrides": overrides,
        "members": len(results),
        "train_seconds": round(sum(r.seconds for r in results), 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "decode_seconds": round(decode_seconds, 1),
        "threads": torch.get_num_threads(),
        "epochs_run": sum(len(r.history) for r in results),
        "best_epoch": [r.best_epoch for r in results],
        "member_val_auc": [round(r.best_val_auc, 4) for r in results],
        "val_macro_auc": val["macro_auc"],
        "val_acc": val["acc"],
        "test_macro_auc": test["macro_auc"],
        "test_acc": test["acc"],
        "val_auc_by_epoch": [round(r["val_auc"], 4) for r in history],
        "train_loss_by_epoch": [round(r["train_loss"], 3) for r in history],
        "load_avg": round(os.getloadavg()[0], 2),
    }
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
