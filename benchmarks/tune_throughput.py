"""Tuning throughput: trials per hour of `medimg tune` on one and on two Dask workers, and the flow's overhead per
trial against the same trial as a bare script.

1. One ingest into a temporary workspace (so no measured call pays for it).
2. `medimg tune --no-retrain --trials N` on a local Dask cluster of 1 worker, then of 2 workers (or once on the
   cluster at ``--dask ADDRESS``), each a study of its own, random sampling, no pruning (every trial trains its
   full epochs, so the calls are comparable). Trials per hour are over the trials phase (the parent run's
   ``trials_per_hour``: trials / wall time from the first submission to the last result), not the ingest,
   validation and figures around it.
3. The bare script: one process that reads the workspace's dataset and calls the training loop with trial 0's
   values (no Prefect, Dask, Optuna or MLflow): its wall time (imports and data loading included) and its training
   time.

Overhead per trial (1 worker, trials one after another): the trials phase / N minus the bare script's training
time, and minus its whole process (a warm worker imports and loads the data once; a bare script does it for each
trial). Prints one JSON object. Do not run long searches on a shared machine: the defaults are 4 trials of 2
epochs.

Usage: python benchmarks/tune_throughput.py [--trials N] [--dask ADDRESS] [--set section.key=value ...]
       python benchmarks/tune_throughput.py --bare PARAMS_FILE    (the bare trial; prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULTS = {"train": {"epochs": 2}, "tune": {"sampler": "random", "pruner": {"kind": "none"}}}


def bare(params_file: Path) -> None:
    """The trial without the platform: read the dataset, train, print {process_seconds, train_seconds, val_auc}."""
    started = time.perf_counter()
    from medimg.config import load_params
    from medimg.data import manifest
    from medimg.training.data import load_split
    from medimg.training.loop import train
    from medimg.workspace import Workspace

    params = load_params(params_file)
    ws = Workspace.at(params.workspace.path)
    frame = manifest.read(ws.data)
    train_split, val_split = load_split(ws.data, frame, "train"), load_split(ws.data, frame, "val")
    trained = time.perf_counter()
    result = train(params, train_split, val_split)
    done = time.perf_counter()
    report = {
        "process_seconds": round(done - started, 2),
        "train_seconds": round(done - trained, 2),
        "val_auc": round(result.best_val_auc, 6),
    }
    print(json.dumps(report))


def _run(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def _study_figures(tracking_uri: str, experiment: str, study: str) -> dict:
    """Trials per hour of the study's parent run and its trials' own seconds (child runs' ``trial_seconds``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.`medimg.study` = '{study}'", output_format="list"
    )
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    per_hour = parent.data.metrics["trials_per_hour"]
    n = int(parent.data.metrics["trials_this_call"])
    seconds = [r.data.metrics["trial_seconds"] for r in children]
    return {
        "trials": n,
        "workers": int(parent.data.metrics["dask_workers"]),
        "trials_per_hour": round(per_hour, 1),
        "trials_phase_seconds": round(n / per_hour * 3600, 1),
        "mean_trial_seconds_on_worker": round(sum(seconds) / len(seconds), 2),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--dask", default=None, help="a Dask scheduler's address; default: local clusters of 1 and 2")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare(args.bare)
        return

    from medimg.cli import parse_overrides
    from medimg.config import deep_merge, load_params

    with tempfile.TemporaryDirectory(prefix="medimg-tune-bench-") as tmp:
        overrides = deep_merge(
            deep_merge(DEFAULTS, parse_overrides(args.sets)), {"workspace": {"path": str(Path(tmp) / "ws")}}
        )
        params = load_params(ROOT / "params.yaml", overrides)  # a bad --set fails here, before any work
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
        medimg = str(BIN / "medimg")
        ingest_s, _ = _run([medimg, "ingest", "--params", str(params_file)])
        tracking_uri = f"sqlite:///{Path(tmp) / 'ws' / 'mlflow.db'}"
        experiment = f"{params.registry.experiment}-tune"
        calls = (
            [("dask", ["--dask", args.dask])]
            if args.dask
            else [(f"local_{w}", ["--set", f"tune.workers={w}"]) for w in (1, 2)]
        )
        report: dict = {"ingest_seconds": round(ingest_s, 1), "trials": args.trials, "calls": {}}
        for name, extra in calls:
            study = f"bench-{name}"
            command = [medimg, "tune", "--params", str(params_file), "--no-retrain", "--trials", str(args.trials)]
            wall, _ = _run([*command, *extra, "--set", f"tune.study_name={study}"])
            report["calls"][name] = {
                "command_seconds": round(wall, 1),
                **_study_figures(tracking_uri, experiment, study),
            }

        import optuna

        first = calls[0][0]
        storage = f"sqlite:///{Path(tmp) / 'ws' / 'tuning' / 'optuna.db'}"
        trial0 = optuna.load_study(study_name=f"bench-{first}", storage=storage).trials[0]
        from medimg.tuning.space import apply

        bare_file = Path(tmp) / "bare.yaml"  # the trial's own params, as the flow built them
        bare_file.write_text(yaml.safe_dump(apply(params, tuple(trial0.params.items())).model_dump(mode="json")))
        _, out = _run([str(BIN / "python"), str(Path(__file__).resolve()), "--bare", str(bare_file)])
        bare_report = json.loads(out.strip().splitlines()[-1])
        report["bare_trial"] = bare_report
        one = report["calls"][first]
        per_trial = one["trials_phase_seconds"] / one["trials"] * one["workers"]  # one worker's sequential share
        report["flow_seconds_per_trial"] = round(per_trial, 2)
        report["overhead_per_trial_vs_bare_training_s"] = round(per_trial - bare_report["train_seconds"], 2)
        report["overhead_per_trial_vs_bare_process_s"] = round(per_trial - bare_report["process_seconds"], 2)
        flow_value = None if trial0.value is None else round(float(trial0.value), 6)
        report["trial0_val_auc_flow_vs_bare"] = [flow_value, bare_report["val_auc"]]
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
