"""Pipeline overhead: wall time of `medimg run` against the bare training script, one after the other.

Both train the same model for the same epochs on the same data with the same seed (the bare
script calls medimg's training loop on arrays read straight from the archive). The flow adds
Prefect's local API, ingest with DVC, Great Expectations, MLflow tracking, evaluation with
bootstrap CIs, ONNX export with parity, and registration. Target: ratio <= 1.3.
Usage: python benchmarks/overhead.py [--set section.key=value ...]   (passed to both)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from medimg.cli import parse_overrides
from medimg.config import deep_merge, load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def main(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="medimg-overhead-") as tmp:
        overrides = deep_merge(parse_overrides(extra), {"workspace": {"path": str(Path(tmp) / "ws")}})
        params = load_params(ROOT / "params.yaml", overrides)  # a bad --set fails here, before any training
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
        bare_s, bare_out = timed(
            [str(BIN / "python"), str(ROOT / "benchmarks" / "bare_train.py"), str(params_file)], ROOT
        )
        flow_s, _ = timed([str(BIN / "medimg"), "run", "--params", str(params_file)], ROOT)
        bare = json.loads(bare_out.strip().splitlines()[-1])
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'ws' / 'mlflow.db'}")
        run = mlflow.search_runs(experiment_names=[params.registry.experiment], output_format="list")[0]
        steps = {
            k.removeprefix("step_seconds_"): round(v, 2)
            for k, v in run.data.metrics.items()
            if k.startswith("step_seconds_")
        }
        report = {
            "bare_seconds": round(bare_s, 1),
            "flow_seconds": round(flow_s, 1),
            "ratio": round(flow_s / bare_s, 3),
            "flow_step_seconds": steps,
            "bare_test_auc": bare["test_auc"],
            "bare_test_acc": bare["test_acc"],
            "flow_test_auc": round(run.data.metrics["test_roc_auc"], 4),
            "flow_test_acc": round(run.data.metrics["test_accuracy"], 4),
        }
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main([a.removeprefix("--set=") for a in sys.argv[1:] if a != "--set"])
