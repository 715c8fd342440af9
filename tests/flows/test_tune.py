"""``medimg tune`` on a real Dask cluster, and an ensemble through the normal flow (issue 17).

The servers are the integration suite's (``scripts/services.sh start``): PostgreSQL (MLflow's store and, in its
``optuna`` database, the study), ``mlflow server``, ``prefect server``, and a Dask scheduler with two workers,
each a process of its own, named by ``MEDIMG_TEST_DASK_ADDRESS``. Without them these tests fail and say how to
start them. The CLI runs in subprocesses (Prefect and MLflow read their settings on import).

What is promised:
- three trials run as Prefect task runs on the cluster's workers (both of them), each an MLflow child run of the
  study's parent run with its params, per-epoch validation AUC and state; the study (per-epoch values included)
  lives in PostgreSQL; the history and importance plots are artifacts of the parent run;
- the best trial becomes a params file (``base:`` the original) that the retrain flow trains, gates and registers;
- an ensemble (two members, a horizontal flip) is exported as one ONNX graph naming its members, gated, promoted
  and served by ``medimg predict``, whose probabilities are the mean of the members' over both views.

Cheap params: a width-8 network, 3 epochs of 2 optimiser steps (batch 2048), relaxed gates (the point is the
orchestration). Waits follow progress (``tests/progress.py``), never a fixed timeout.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datapaths import DATA_DIR
from medimg.config import deep_merge, load_params, read_params_file
from progress import CAP_S, run_logged

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
pytestmark = pytest.mark.integration

RELAXED_GATES = {
    "min_auc": 0.0,
    "min_accuracy": 0.0,
    "benchmark": {"margin": 1.0},
    "champion_auc_margin": 1.0,
    "bootstrap_samples": 200,
}
TINY = {
    "model": {"width": 8},
    "train": {"epochs": 3, "batch_size": 2048, "num_threads": 1},
    "export": {"parity_images": 64},
    "gates": RELAXED_GATES,
}
TRIALS = 3


@dataclass(frozen=True)
class Cluster:
    mlflow: str
    prefect: str
    dask: str
    optuna_db: str
    worker_pids: frozenset[int]


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    names = (
        "MEDIMG_TEST_MLFLOW_URI",
        "MEDIMG_TEST_PREFECT_API_URL",
        "MEDIMG_TEST_DASK_ADDRESS",
        "MEDIMG_TEST_OPTUNA_DB_URI",
    )
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: start the real servers and the Dask cluster with "
            '`scripts/services.sh start && eval "$(scripts/services.sh env)"` (or run `make test`)'
        )
    import urllib.request

    from distributed import Client

    for name, url in (
        ("mlflow server", f"{os.environ['MEDIMG_TEST_MLFLOW_URI']}/health"),
        ("prefect server", f"{os.environ['MEDIMG_TEST_PREFECT_API_URL']}/health"),
    ):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
        except (OSError, AssertionError) as err:
            pytest.fail(f"{name} does not answer on {url} ({err}); is `scripts/services.sh start` running?")
    address = os.environ["MEDIMG_TEST_DASK_ADDRESS"]
    try:
        with Client(address, timeout=30) as client:
            pids = client.run(os.getpid)  # worker address -> pid, asked of each worker process
    except OSError as err:
        pytest.fail(f"no Dask scheduler at {address} ({err}); is `scripts/services.sh start` running?")
    assert len(pids) >= 2, f"the Dask cluster at {address} has {len(pids)} worker(s); scripts/services.sh starts 2"
    assert len(set(pids.values())) == len(pids) and os.getpid() not in pids.values()  # processes of their own
    return Cluster(
        os.environ["MEDIMG_TEST_MLFLOW_URI"],
        os.environ["MEDIMG_TEST_PREFECT_API_URL"],
        address,
        os.environ["MEDIMG_TEST_OPTUNA_DB_URI"],
        frozenset(pids.values()),
    )


def _env(cluster: Cluster) -> dict[str, str]:
    """This process's environment without Prefect/MLflow/medimg state, pointed at the real servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MEDIMG_"))}
    env.update(
        PREFECT_API_URL=cluster.prefect,
        MLFLOW_TRACKING_URI=cluster.mlflow,
        MEDIMG_DATA_DIR=str(DATA_DIR),
        COLUMNS="200",
    )
    return env


def _medimg(cluster: Cluster, log: Path, *args: str):
    return run_logged([PYTHON, "-m", "medimg.cli", *args], log, cwd=ROOT, env=_env(cluster))


def _mlflow(cluster: Cluster):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cluster.mlflow, registry_uri=cluster.mlflow)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, cluster, data_dir):
    """``medimg tune --trials 3 --dask <scheduler>`` with the study in PostgreSQL, then the best trial retrained."""
    tmp = tmp_path_factory.mktemp("tune")
    uid = uuid.uuid4().hex[:8]
    raw = deep_merge(
        read_params_file(ROOT / "params.yaml"),
        {
            **TINY,
            "workspace": {"path": str(tmp / "ws"), "tracking_uri": cluster.mlflow},
            "registry": {"model_name": f"t17-{uid}", "experiment": f"t17-{uid}"},
            "tune": {
                "storage": cluster.optuna_db,
                "study_name": f"t17-{uid}",
                "pruner": {"startup_trials": 1, "warmup_epochs": 1},
            },
        },
    )
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    proc = _medimg(
        cluster, tmp / "tune.log", "tune", "--params", str(params_file), "--trials", str(TRIALS), "--dask", cluster.dask
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    client = _mlflow(cluster)
    experiment = client.get_experiment_by_name(f"t17-{uid}-tune")
    assert experiment is not None, "no study experiment on the MLflow server"
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`medimg.study` = 't17-{uid}'")
    return {
        "tmp": tmp,
        "uid": uid,
        "raw": raw,
        "params_file": params_file,
        "log": proc.stdout,
        "seconds": time.perf_counter() - started,
        "experiment": experiment,
        "runs": runs,
    }


def _parent(tuned):
    parents = [r for r in tuned["runs"] if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_id for r in tuned["runs"]]
    return parents[0]


def _children(cluster, tuned) -> list:
    parent = _parent(tuned)
    return _mlflow(cluster).search_runs(
        [tuned["experiment"].experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def test_every_trial_ran_on_the_dask_workers_as_a_child_run(cluster, tuned):
    assert "trials this call" in tuned["log"] and f"{TRIALS} on 2 Dask worker(s)" in tuned["log"], tuned["log"][-3000:]
    children = _children(cluster, tuned)
    assert len(children) == TRIALS
    client = _mlflow(cluster)
    workers = set()
    for run in children:
        tags = run.data.tags
        assert run.info.status == "FINISHED", (run.info.run_name, tags.get("medimg.reason"))
        assert tags["medimg.trial_state"] in ("complete", "pruned")
        assert float(run.data.params["train.lr"]) > 0 and run.data.params["model.width"] == "8"
        history = client.get_metric_history(run.info.run_id, "val_auc")
        assert [m.step for m in history] == list(range(1, int(run.data.metrics["epochs_run"]) + 1))
        address, _, pid = tags["medimg.dask_worker"].partition(" pid ")
        assert address.startswith("tcp://127.0.0.1:") and int(pid) in cluster.worker_pids
        workers.add(int(pid))
    assert len(workers) == 2, f"the three trials ran on {len(workers)} worker process(es): {workers}"
    assert sorted(int(r.data.tags["medimg.trial_number"]) for r in children) == list(range(TRIALS))


def test_the_study_with_its_per_epoch_values_lives_in_postgresql(cluster, tuned):
    import optuna

    study = optuna.load_study(study_name=f"t17-{tuned['uid']}", storage=cluster.optuna_db)
    trials = study.get_trials()
    assert len(trials) == TRIALS and not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for trial in trials:
        assert trial.intermediate_values and min(trial.intermediate_values) == 1
        assert set(trial.params) == {"train.lr", "train.weight_decay", "model.dropout"}
    parent = _parent(tuned)
    assert int(parent.data.tags["medimg.best_trial"]) == study.best_trial.number
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert "password" not in parent.data.tags["medimg.study_storage"]
    assert cluster.optuna_db.split("@")[0].split(":")[-1] not in parent.data.tags["medimg.study_storage"]
    artifacts = {a.path for a in _mlflow(cluster).list_artifacts(parent.info.run_id, "tuning")}
    assert {
        "tuning/optimization_history.png",
        "tuning/param_importances.png",
        "tuning/intermediate_values.png",
        "tuning/trials.csv",
        "tuning/best_params.yaml",
    } <= artifacts, artifacts


def test_prefect_recorded_each_trial_as_a_task_run_of_the_tune_flow(cluster, tuned):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    flow_run_id = uuid.UUID(_parent(tuned).data.tags["medimg.flow_run_id"])

    def read() -> dict[str, str]:
        with temporary_settings(updates={PREFECT_API_URL: cluster.prefect}), get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {r.name: r.state.name for r in runs if r.state is not None and r.name.startswith("trial-")}

    # the server writes task runs from an event stream in batches: wait while the record changes
    started = last_move = time.monotonic()
    states, last = read(), None
    while len(states) < TRIALS or set(states.values()) != {"Completed"}:
        if states != last:
            last, last_move = states, time.monotonic()
        assert time.monotonic() - last_move < 120 and time.monotonic() - started < CAP_S, states
        time.sleep(2)
        states = read()
    assert sorted(states) == [f"trial-{n}" for n in range(TRIALS)]


def test_the_best_trial_went_through_the_retrain_flow_and_its_gates(cluster, tuned):
    import optuna

    parent = _parent(tuned)
    best_file = Path(parent.data.tags["medimg.best_params_file"])
    assert best_file.is_file()
    text = yaml.safe_load(best_file.read_text())
    assert text["base"] == str(tuned["params_file"].resolve())
    study = optuna.load_study(study_name=f"t17-{tuned['uid']}", storage=cluster.optuna_db)
    assert text["train"]["lr"] == study.best_params["train.lr"]
    assert text["model"]["dropout"] == study.best_params["model.dropout"]
    best = load_params(best_file)
    assert best.model.width == 8 and best.train.lr == study.best_params["train.lr"]

    assert parent.data.tags["medimg.retrain_state"] == "Completed", parent.data.tags.get("medimg.retrain_message")
    client = _mlflow(cluster)
    retrain_run = client.get_run(parent.data.tags["medimg.retrain_run_id"])
    assert float(retrain_run.data.params["train.lr"]) == study.best_params["train.lr"]
    assert (
        retrain_run.data.tags["medimg.gate_passed"] == "True" and retrain_run.data.tags["medimg.outcome"] == "promoted"
    )
    report = json.loads(
        Path(
            client.download_artifacts(retrain_run.info.run_id, "gates/gate_report.json", str(tuned["tmp"]))
        ).read_text()
    )
    assert report["passed"] and {r["name"] for r in report["rules"]} >= {"minimum_metrics", "champion_noninferiority"}
    model = tuned["raw"]["registry"]["model_name"]
    version = client.get_model_version_by_alias(model, "champion")
    assert version.run_id == retrain_run.info.run_id and version.version == parent.data.tags["medimg.model_version"]
    # the same seed, data and params: the retrain's best epoch reached the trial's value again
    assert retrain_run.data.metrics["best_val_auc"] == pytest.approx(study.best_value, abs=1e-9)


def test_an_ensemble_is_exported_gated_promoted_and_predicted(cluster, tuned):
    from medimg.export.onnx_export import read_metadata
    from medimg.probabilities import softmax
    from medimg.training.models import load_model

    tmp = tuned["tmp"]
    raw = deep_merge(tuned["raw"], {"model": {"ensemble": {"members": 2, "tta_flips": ["horizontal"]}}})
    params_file = tmp / "ensemble.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = _medimg(cluster, tmp / "ensemble.log", "run", "--params", str(params_file))
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "retrain: Completed" in proc.stdout and "-> champion" in proc.stdout, proc.stdout[-3000:]

    client = _mlflow(cluster)
    model = raw["registry"]["model_name"]
    champion = client.get_model_version_by_alias(model, "champion")
    run = client.get_run(champion.run_id)
    assert run.data.tags["medimg.gate_passed"] == "True" and run.data.params["model.ensemble.members"] == "2"
    import mlflow

    location = client.get_model_version_download_uri(model, champion.version).rstrip("/")
    onnx_file = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/model.onnx", dst_path=str(tmp / "dl"), tracking_uri=cluster.mlflow
        )
    )
    meta = read_metadata(onnx_file)
    described = json.loads(meta["medimg.ensemble"])
    assert [m["seed"] for m in described["members"]] == [42, 43] and described["tta_flips"] == ["horizontal"]
    assert {m["mlflow_run_id"] for m in described["members"]} == {champion.run_id}
    assert meta["medimg.mlflow_run_id"] == champion.run_id and "log(mean probability)" in meta["medimg.output"]

    from medimg.data import manifest
    from medimg.workspace import Workspace

    ws = Workspace.at(raw["workspace"]["path"])
    frame = manifest.read(ws.data)
    files = [ws.data / p for p in frame[frame["split"] == "test"].sort_values("id").head(8)["path"]]
    out = tmp / "predictions.json"
    predicted = _medimg(
        cluster,
        tmp / "predict.log",
        "predict",
        "champion",
        *map(str, files),
        "--format",
        "json",
        "--out",
        str(out),
        "--params",
        str(params_file),
    )
    assert predicted.returncode == 0, predicted.stdout[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 8 and all(r.get("error") in (None, "") for r in rows)

    # the served probability is the mean of the members' over both views, computed here from their checkpoints
    from PIL import Image

    from medimg import preprocess

    params = load_params(params_file)
    images = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    x = preprocess.apply(images, params.preprocess)
    members = [
        load_model(params.model, 1, 2, ws.runs / champion.run_id / "members" / str(i) / "best.pt") for i in (0, 1)
    ]
    with torch.no_grad():
        mean = np.mean([softmax(m(v).numpy()) for m in members for v in (x, torch.flip(x, dims=(-1,)))], axis=0)
    served = np.array([[r["p_normal"], r["p_pneumonia"]] for r in rows])
    assert np.abs(served - mean).max() < 1e-5
