"""The run key sees uncommitted code: every edit of the source retrains, committed or not.

The retrain flow runs for real (``medimg run`` in a subprocess: Prefect on the session's test
server, MLflow on SQLite, DVC, Great Expectations, ONNX) from a *copy* of the package source
(``medimg/``, ``tasks/``, ``flows/``) in tmp_path, put first on ``PYTHONPATH`` and committed to a
git repository of its own. The test edits that copy, never the checkout it runs from: it needs
source files it may change without committing, and the real checkout is shared with other work.
A subprocess per run also gives each run a fresh interpreter, as each ``medimg run`` has, so the
per-process caches of :func:`medimg.provenance.code_hash` and ``git_commit`` are read anew.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from medimg.provenance import CODE_PACKAGES, code_hash
from medimg.workspace import Workspace
from progress import run_logged
from registry_fixtures import FAST, ROOT, write_params

GIT = ["git", "-c", "user.name=medimg test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
LOOP = Path("medimg") / "training" / "loop.py"


def copy_source(dest: Path) -> Path:
    """The package source copied to ``dest`` and committed there (a clean checkout of its own)."""
    for package in CODE_PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "copy"], cwd=dest, check=True)
    return dest


def medimg_run(src: Path, params_file: Path, env: dict) -> subprocess.CompletedProcess:
    """``medimg run`` in ``src``; waits while its output grows (``progress.run_logged``), not a fixed time."""
    log = params_file.parent / f"run-{next(_RUNS)}.log"
    return run_logged(
        [sys.executable, "-m", "medimg.cli", "run", "--params", str(params_file)], log, split=True, cwd=src, env=env
    )


_RUNS = itertools.count(1)


def _edit(src: Path, line: str) -> None:
    path = src / LOOP
    path.write_text(path.read_text() + line + "\n")


@pytest.mark.integration
def test_each_uncommitted_edit_of_the_training_code_retrains(tmp_path, data_dir, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    src = copy_source(tmp_path / "src")
    ws = Workspace.at(tmp_path / "ws")
    params_file = write_params(tmp_path, ws.root, overrides={**FAST, "train": {**FAST["train"], "num_threads": 1}})
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "MEDIMG_DATA_DIR": str(data_dir),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "MLFLOW_TRACKING_URI": ws.default_tracking_uri(),
        "MEDIMG_WORKSPACE": str(ws.root),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    client = MlflowClient(tracking_uri=ws.default_tracking_uri())

    def trained_runs() -> list:
        experiment = client.get_experiment_by_name("medimg-retrain")
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        return [r for r in runs if r.data.tags.get("medimg.outcome") in ("promoted", "not_promoted")]

    hashes = []
    for n in (1, 2):
        _edit(src, f"# uncommitted edit {n}")
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True, check=True
        ).stdout
        assert LOOP.as_posix() in dirty, "the edit must be uncommitted"
        hashes.append(code_hash.__wrapped__(src))  # uncached: this process already hashed the folder
        done = medimg_run(src, params_file, env)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        said = done.stdout + done.stderr
        assert "retrain: Completed" in said or "retrain: NotPromoted" in said, said[-4000:]
        assert "UpToDate" not in said, f"edit {n} was taken for the code of the last run:\n{said[-2000:]}"

    first, second = trained_runs()
    assert hashes[0] != hashes[1]
    assert [first.data.tags["medimg.code_hash"], second.data.tags["medimg.code_hash"]] == hashes
    # both ran from the same commit with uncommitted changes: the name git gives them is the same
    assert first.data.tags["medimg.git_commit"] == second.data.tags["medimg.git_commit"]
    assert first.data.tags["medimg.git_commit"].endswith("-dirty")
    assert first.data.tags["medimg.run_key"] != second.data.tags["medimg.run_key"]
    # the second run trained itself (its own epoch metrics), no cached training result from the first
    assert len(client.get_metric_history(second.info.run_id, "val_auc")) == 1
    versions = client.search_model_versions("name='pneumonia-classifier'")
    assert sorted(v.tags.get("medimg.code_hash") for v in versions) == sorted(hashes)

    again = medimg_run(src, params_file, env)  # nothing edited: the same code hash in a new process
    assert again.returncode == 0 and "UpToDate" in again.stderr, (again.stdout + again.stderr)[-4000:]
    assert len(trained_runs()) == 2


def test_code_hash_is_the_content_of_the_source(tmp_path):
    a = copy_source(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns(".git"))
    assert code_hash(a) == code_hash(b), "same source, another folder and no git: the same hash"
    (b / "medimg" / "__pycache__").mkdir(exist_ok=True)
    (b / "medimg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0compiled")
    (b / "medimg" / "notes.txt").write_text("not source")
    assert code_hash(a) == code_hash.__wrapped__(b), "bytecode and non-source files are not code"
    for changed in (Path("flows") / "retrain.py", Path("medimg") / "reference" / "benchmarks.yaml"):
        c = tmp_path / f"c-{changed.name}"
        shutil.copytree(a, c, ignore=shutil.ignore_patterns(".git"))
        (c / changed).write_bytes((c / changed).read_bytes() + b"\n")
        assert code_hash(c) != code_hash(a), f"an edit of {changed} is new code"
    d = tmp_path / "d"
    shutil.copytree(a, d, ignore=shutil.ignore_patterns(".git"))
    (d / "tasks" / "extra.py").write_text("")
    assert code_hash(d) != code_hash(a), "an added module is new code"
    assert code_hash() == code_hash(ROOT) and len(code_hash()) == 16
