"""One MedMNIST 3D training run the platform's way: ingest, medimg's loop, threshold from validation, test figures.

The search behind ``params/vessel3d.yaml`` and ``params/adrenal3d.yaml`` (issue 13, Quality). For a
params file plus ``--set section.key=value`` overrides (the ``medimg`` CLI's syntax) it

1. ingests the official archive (``data.medmnist_flag`` at ``data.medmnist_size``, MD5 checked) with
   :func:`medimg.data.ingest_medmnist.ingest_medmnist` into ``--cache`` (one folder per archive and
   contract hash, reused by later runs) and reads the splits with :func:`medimg.training.data.load_split`;
2. trains with :func:`medimg.training.loop.train` (best epoch by validation AUC); with ``model.ensemble`` set,
   one network per seed of :func:`medimg.config.member_seeds`, scored as the exported graph is
   (:class:`medimg.tuning.ensemble.EnsembleModel`: mean probability over members and ``tta_flips`` views);
3. picks the threshold on the validation split with the evaluate step's own
   :func:`medimg.steps.evaluate.choose_threshold` (``gates.threshold``: youden, target_sensitivity,
   max_accuracy, fixed);
4. prints one JSON line (and appends it to ``--out`` when given): validation AUC, test AUC and
   accuracy at the validation threshold and at arg-max, each with a stratified bootstrap 95% CI
   (:func:`medimg.evaluation.task_metrics.task_ci`, ``--bootstrap`` replicates); as a diagnostic,
   the test accuracy at the validation threshold of highest accuracy (``gates.threshold: max_accuracy``,
   :func:`medimg.evaluation.threshold.max_accuracy_threshold`); training seconds,
   optimiser steps and seconds per step (training time less the per-epoch validation passes), the
   process's CPU seconds and the 1-minute load average before and after training (the machine is
   shared: a load above the thread count means the wall time includes waiting for the CPU).

Select settings on ``val_auc`` only; the test figures are reported for the selected setting.
Usage (2 threads, as measured for the issue):
  OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 MEDIMG_DATA_DIR=../shared/data python benchmarks/volumes_quality.py \
      --params params/vessel3d.yaml --set train.epochs=40 --set model.width=16 --out /tmp/vessel3d.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from medimg import preprocess
from medimg.cli import parse_overrides
from medimg.config import Params, load_params, member_seeds
from medimg.data import manifest
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.evaluation.bootstrap import bootstrap_ci
from medimg.evaluation.task_metrics import is_abnormal, task_ci, task_metrics
from medimg.evaluation.threshold import max_accuracy_threshold
from medimg.probabilities import abnormal_probability
from medimg.steps.evaluate import choose_threshold
from medimg.training.data import SplitArrays, load_split
from medimg.training.loop import predict_proba, report_epochs, train, validation_auc
from medimg.tuning.ensemble import EnsembleModel, member_params

log = logging.getLogger("volumes_quality")


def dataset(params: Params, cache: Path) -> dict[str, SplitArrays]:
    """The official train/val/test splits of the params' MedMNIST 3D archive, ingested once into ``cache``."""
    flag, size = params.data.medmnist_flag, params.data.medmnist_size
    folder = cache / f"{flag}_{size}_{preprocess.contract_hash(params.preprocess)}"
    try:
        frame = manifest.read(folder)
    except FileNotFoundError:
        archive = locate(flag, params.data.resolved_data_dir(), cache / "downloads", download=False, size=size)
        ingest_medmnist(archive, params.data, params.task.class_names, folder, params.preprocess)
        frame = manifest.read(folder)
    return {split: load_split(folder, frame, split) for split in ("train", "val", "test")}


def _r(value: float) -> float:
    return round(float(value), 4)


def measure(params: Params, splits: dict[str, SplitArrays], n_boot: int) -> dict:
    """Train, then the validation and test figures of the best epoch (see the module docstring)."""
    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    results = [
        train(
            member_params(params, seed),
            splits["train"],
            splits["val"],
            on_epoch=report_epochs(None, params.train.epochs),
        )
        for seed in member_seeds(params)
    ]
    cpu_seconds = time.process_time() - cpu_before
    model = EnsembleModel([r.model for r in results], params.model.ensemble.tta_flips).eval()
    task = params.task
    started = time.perf_counter()
    p_val = predict_proba(model, preprocess.apply(splits["val"].images, params.preprocess))
    # the loop validates one member on one view per epoch
    val_predict_seconds = (time.perf_counter() - started) / (len(results) * (1 + len(params.model.ensemble.tta_flips)))
    p_test = predict_proba(model, preprocess.apply(splits["test"].images, params.preprocess))
    y_val, y_test = splits["val"].labels, splits["test"].labels
    yv_abnormal, pv_abnormal = (
        is_abnormal(y_val, task.abnormal_indices),
        abnormal_probability(p_val, task.abnormal_indices),
    )
    threshold = choose_threshold(params, yv_abnormal, pv_abnormal)
    acc_threshold = max_accuracy_threshold(yv_abnormal, pv_abnormal)
    at_threshold = task_metrics(task, y_test, p_test, threshold)
    ci = task_ci(task, y_test, p_test, threshold, n_boot=n_boot, seed=0)
    argmax_acc = float((p_test.argmax(1) == y_test).mean())
    # binary arg-max == class 1 when p1 >= 0.5 (a tie at exactly 0.5 is vanishingly rare in float64)
    argmax_ci = bootstrap_ci(y_test, p_test[:, 1], 0.5, n_boot=n_boot, seed=0)["accuracy"]
    epochs_run = sum(len(r.history) for r in results)
    train_seconds = sum(r.seconds for r in results)
    steps = sum(r.steps for r in results)
    step_seconds = max(train_seconds - epochs_run * val_predict_seconds, 0.0) / max(steps, 1)
    return {
        "members": len(results),
        "tta_flips": list(params.model.ensemble.tta_flips),
        "best_epoch": [r.best_epoch for r in results],
        "epochs_run": epochs_run,
        "member_val_auc": [_r(r.best_val_auc) for r in results],
        "val_auc": _r(validation_auc(y_val, p_val)),
        "threshold": _r(threshold),
        "test_auc": _r(at_threshold["roc_auc"]),
        "test_auc_ci": [_r(v) for v in ci["roc_auc"]],
        "test_acc": _r(at_threshold["accuracy"]),
        "test_acc_ci": [_r(v) for v in ci["accuracy"]],
        "test_sensitivity": _r(at_threshold["sensitivity"]),
        "test_specificity": _r(at_threshold["specificity"]),
        "test_acc_argmax": _r(argmax_acc),
        "test_acc_argmax_ci": [_r(v) for v in argmax_ci],
        "val_max_acc_threshold": _r(acc_threshold),
        "test_acc_at_val_max_acc_threshold": _r(task_metrics(task, y_test, p_test, acc_threshold)["accuracy"]),
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "seconds_per_step": round(step_seconds, 3),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True, help="params file, e.g. params/vessel3d.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value (YAML value)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/medimg-volumes-quality"), help="ingested datasets")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the CIs")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params(args.params, parse_overrides(args.sets))
    splits = dataset(params, args.cache)
    line = json.dumps({"params": str(args.params), "set": args.sets, **measure(params, splits, args.bootstrap)})
    print(line, flush=True)
    if args.out:
        with args.out.open("a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
