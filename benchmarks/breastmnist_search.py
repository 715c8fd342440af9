"""One BreastMNIST training run the platform's way (medimg's loop), settings as JSON over params.

The search behind ``params/breastmnist.yaml``: the official archive (data_dir/breastmnist), the
binary malignant-vs-benign task, ``medimg.training.loop.train`` (best epoch by validation AUC);
prints one JSON line with the validation and test AUC of p(benign or normal) (the AUC is the same
for either class) and the arg-max test accuracy. Pick settings by the validation figure.
Usage:
  OMP_NUM_THREADS=1 MEDIMG_DATA_DIR=../shared/data python benchmarks/breastmnist_search.py '{"train": {"epochs": 60}}'
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medimg import preprocess
from medimg.config import deep_merge, parse_params
from medimg.training.data import SplitArrays
from medimg.training.loop import predict_proba, train

TASK = {
    "task": {"class_names": ["malignant", "benign"], "abnormal": ["malignant"], "modalities": None},
    "data": {"modality": "US"},
}


def main() -> None:
    archive = Path(os.environ.get("MEDIMG_DATA_DIR", "../shared/data")) / "breastmnist" / "breastmnist.npz"
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    params = parse_params(deep_merge(TASK, overrides))
    with np.load(archive) as npz:
        splits = {
            s: SplitArrays(
                [f"{s}-{i}" for i in range(len(npz[f"{s}_labels"]))],
                npz[f"{s}_images"],
                npz[f"{s}_labels"].ravel().astype(np.int64),
            )
            for s in ("train", "val", "test")
        }
    started = time.perf_counter()
    result = train(params, splits["train"], splits["val"])
    p_val = predict_proba(result.model, preprocess.apply(splits["val"].images, params.preprocess))
    p_test = predict_proba(result.model, preprocess.apply(splits["test"].images, params.preprocess))
    y_val, y_test = splits["val"].labels, splits["test"].labels
    print(
        json.dumps(
            {
                "overrides": overrides,
                "seconds": round(time.perf_counter() - started, 1),
                "best_epoch": result.best_epoch,
                "val_auc": round(float(roc_auc_score(y_val, p_val[:, 1])), 4),
                "test_auc": round(float(roc_auc_score(y_test, p_test[:, 1])), 4),
                "test_acc_argmax": round(float((p_test.argmax(1) == y_test).mean()), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
