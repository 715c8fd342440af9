"""A real registry with two model versions, shared by the promotion, pull, predict and consumer tests.

The template workspace is built **once per test session** by the real retraining flow (Prefect
test harness, MLflow on SQLite, DVC, Great Expectations, ONNX export), then every module (and
every test that changes the registry) works on its own clone, so tests can promote, roll back and
tamper without seeing each other's changes.

* v1: ten optimiser steps with *relaxed gates* (min AUC/accuracy 0, benchmark margin 1) so that a cheap
  model passes them and the flow promotes it to ``champion`` through ``medimg.promotion``.
* v2: three optimiser steps with the shipped gates: it fails them (AUC far below 0.95) and is
  registered as ``challenger`` with ``medimg.gate_passed == "False"``.

The fixtures are registered as a plugin by ``tests/conftest.py``: request ``registry_ws`` or
``fresh_registry`` by name (``registry_template`` is the session's read-only template).

A clone is a copy of the workspace's registry part (``CLONED``) whose MLflow database has the template's absolute
paths (artifact locations) rewritten to the clone's, so the clone's artifact store, not the
template's, is what MLflow reads; tampering with a clone's artifacts cannot leak into another test.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from medimg.config import Params, deep_merge, load_params, read_params_file
from medimg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
MODEL = "pneumonia-classifier"

# Small and fast: the point is a real registry, not a good model.
FAST = {
    "train": {"epochs": 1, "max_steps": 10, "num_threads": 1},
    "gates": {"bootstrap_samples": 200},
    "export": {"parity_images": 64},
}
RELAXED_GATES = {
    "gates": {"min_auc": 0.0, "min_accuracy": 0.0, "benchmark": {"id": "self2012_radiologists_ed", "margin": 1.0}}
}
WEAK = {"train": {"max_steps": 3}}


@dataclass(frozen=True)
class RegistryWorkspace:
    ws: Workspace
    params_file: Path
    params: Params
    tracking_uri: str
    dataset: Path  # the template's ingested data set (real PneumoniaMNIST PNGs + manifest); read only


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        out = deep_merge(out, part)
    return out


def write_params(root: Path, ws_root: Path, base: Path = ROOT / "params.yaml", overrides: dict | None = None) -> Path:
    """``root/params.yaml``: ``base`` (with its own ``base`` merged) with ``overrides`` merged in and the
    workspace at ``ws_root``."""
    params = deep_merge(read_params_file(base), overrides or {})
    params["workspace"]["path"] = str(ws_root)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _activated(ws: Workspace, tracking_uri: str | None = None) -> pytest.MonkeyPatch:
    """Point MLflow (and medimg) at ``ws`` in this process; ``undo()`` the returned MonkeyPatch to restore."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", tracking_uri or ws.default_tracking_uri())
    mp.setenv("MEDIMG_WORKSPACE", str(ws.root))
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return mp


def _build_template(root: Path, data_dir: Path) -> RegistryWorkspace:
    """Two real flow runs in a new workspace (the caller holds the Prefect test harness)."""
    ws = Workspace.at(root / "ws")
    params_file = write_params(root, ws.root)
    mp = _activated(ws)
    mp.setenv("MEDIMG_DATA_DIR", str(data_dir))
    try:
        from flows.retrain import retrain

        first = retrain(params_path=str(params_file), overrides=_merge(FAST, RELAXED_GATES), return_state=True)
        assert first.is_completed() and first.result().model.alias == "champion", first.message
        second = retrain(params_path=str(params_file), overrides=_merge(FAST, WEAK), return_state=True)
        assert second.name == "NotPromoted" and second.result().model.version == "2", second.message
    finally:
        mp.undo()
    return RegistryWorkspace(ws, params_file, load_params(params_file), ws.default_tracking_uri(), ws.data)


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory, data_dir, prefect_harness) -> RegistryWorkspace:
    """The session's template registry, built on first use; read it, clone it to change it."""
    return _build_template(tmp_path_factory.mktemp("registry-template"), data_dir)


def relocate_mlflow_db(db: Path, old_root: str, new_root: str) -> int:
    """Rewrite ``old_root`` to ``new_root`` in every text value of the MLflow SQLite database."""
    changed = 0
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for _, column, ctype, *_ in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                if ctype.upper().startswith(("VARCHAR", "TEXT", "CHAR")) or ctype == "":
                    cur = conn.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE "{column}" LIKE ?',
                        (old_root, new_root, f"%{old_root}%"),
                    )
                    changed += cur.rowcount
    return changed


#: What a clone copies: the registry and its audit trail. The data set, DVC cache and remote and
#: the per-run scratch folders (thousands of small files) stay in the template; read them there.
CLONED = ("mlflow.db", "mlartifacts", "audit.jsonl")


def clone(source: RegistryWorkspace, dest: Path) -> RegistryWorkspace:
    """A private copy of ``source``'s registry (MLflow store, artifacts, audit log) at ``dest``."""
    ws = Workspace.at(dest / "ws")
    ws.root.mkdir(parents=True)
    for name in CLONED:
        src = source.ws.root / name
        if src.is_dir():
            shutil.copytree(src, ws.root / name, symlinks=True)
        else:
            shutil.copy2(src, ws.root / name)
    assert relocate_mlflow_db(ws.mlflow_db, str(source.ws.root), str(ws.root)) > 0
    params_file = write_params(dest, ws.root)
    return RegistryWorkspace(ws, params_file, load_params(params_file), ws.default_tracking_uri(), source.dataset)


@pytest.fixture(scope="module")
def registry_ws(tmp_path_factory, registry_template):
    """A module's own clone of the two-version registry, with MLflow pointed at it."""
    reg = clone(registry_template, tmp_path_factory.mktemp("registry"))
    mp = _activated(reg.ws, reg.tracking_uri)
    yield reg
    mp.undo()


@pytest.fixture
def fresh_registry(tmp_path_factory, registry_template):
    """A clone for one test that changes aliases or artifacts."""
    reg = clone(registry_template, tmp_path_factory.mktemp("registry-fresh"))
    mp = _activated(reg.ws, reg.tracking_uri)
    yield reg
    mp.undo()
