"""The same model, data and epochs as the retrain flow, without the platform.

Reads the archive with numpy and calls medimg's training loop directly: no Prefect, MLflow, DVC,
Great Expectations, ONNX or registry. Its wall time is the denominator of the pipeline-overhead
ratio (benchmarks/overhead.py). Prints one JSON line.
Usage: python benchmarks/bare_train.py [params.yaml]
"""

import json
import sys
import time
from pathlib import Path

started = time.perf_counter()

from medimg import preprocess  # noqa: E402
from medimg.config import load_params  # noqa: E402
from medimg.data.medmnist import locate  # noqa: E402
from medimg.evaluation.metrics import binary_metrics  # noqa: E402
from medimg.steps.evaluate import choose_threshold  # noqa: E402
from medimg.training.data import SplitArrays  # noqa: E402
from medimg.training.loop import predict_proba, train  # noqa: E402

params = load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
archive = locate(params.data.medmnist_flag, params.data.resolved_data_dir(), download_dir=Path(".medimg/downloads"),
                 download=False)
arrays = archive.load()
splits = {s: SplitArrays([f"{s}-{i}" for i in range(len(y))], x, y) for s, (x, y) in arrays.items()}
result = train(params, splits["train"], splits["val"])
p_val = predict_proba(result.model, preprocess.apply(splits["val"].images, params.preprocess))
p_test = predict_proba(result.model, preprocess.apply(splits["test"].images, params.preprocess))
metrics = binary_metrics(splits["test"].labels, p_test, choose_threshold(params, splits["val"].labels, p_val))
print(json.dumps({"script": "bare", "test_auc": round(metrics["roc_auc"], 4), "test_acc": round(metrics["accuracy"], 4),
                  "train_seconds": round(result.seconds, 1), "seconds": round(time.perf_counter() - started, 1)}))
