"""The same model, data and epochs as the retrain flow, without the platform.

Reads the archive with numpy and calls medimg's training loop directly: no Prefect, MLflow, DVC,
Great Expectations, ONNX or registry. Its wall time is the denominator of the pipeline-overhead
ratio (benchmarks/overhead.py). Prints one JSON line. ``fit_and_score`` is also what
benchmarks/quality.py measures.
Usage: python benchmarks/bare_train.py [params.yaml]
"""

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

started = time.perf_counter()

import numpy as np  # noqa: E402

from medimg import preprocess  # noqa: E402
from medimg.config import Params, load_params  # noqa: E402
from medimg.data.medmnist import locate  # noqa: E402
from medimg.evaluation.metrics import binary_metrics  # noqa: E402
from medimg.steps.evaluate import choose_threshold  # noqa: E402
from medimg.training.data import SplitArrays  # noqa: E402
from medimg.training.loop import TrainResult, predict_proba, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Scored:
    archive: Path  # the MedMNIST archive read
    result: TrainResult
    y_test: np.ndarray
    p_test: np.ndarray
    threshold: float  # chosen on the validation split, as the flow does
    metrics: dict  # test metrics at that threshold


def fit_and_score(params: Params) -> Scored:
    """Load the archive, train on train/val, pick the threshold on val, score the test split."""
    archive = locate(
        params.data.medmnist_flag, params.data.resolved_data_dir(), ROOT / ".medimg" / "downloads", download=False
    )
    splits = {s: SplitArrays([f"{s}-{i}" for i in range(len(y))], x, y) for s, (x, y) in archive.load().items()}
    result = train(params, splits["train"], splits["val"])
    p_val = predict_proba(result.model, preprocess.apply(splits["val"].images, params.preprocess))[:, 1]
    p_test = predict_proba(result.model, preprocess.apply(splits["test"].images, params.preprocess))[:, 1]
    threshold = choose_threshold(params, splits["val"].labels, p_val)
    return Scored(
        archive.path,
        result,
        splits["test"].labels,
        p_test,
        threshold,
        binary_metrics(splits["test"].labels, p_test, threshold),
    )


if __name__ == "__main__":
    scored = fit_and_score(load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml"))
    print(
        json.dumps(
            {
                "script": "bare",
                "test_auc": round(scored.metrics["roc_auc"], 4),
                "test_acc": round(scored.metrics["accuracy"], 4),
                "train_seconds": round(scored.result.seconds, 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
