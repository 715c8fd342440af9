"""A *whole-workspace* clone of the session's registry template, for the lineage and reproduce tests.

``registry_fixtures`` builds the template once per session with the real flow (v1 champion after
relaxed gates, v2 challenger) and its clones copy only the registry. Lineage and reproduction also
need the DVC side of the workspace (``.dvc``, the kept ``data/versions/*.dvc`` files, the local
remote, the dataset), so this clone copies everything but Prefect's home, rewrites the template's
absolute paths in the MLflow database and in DVC's remote URL, and points MLflow at the copy.
Tests may then delete the clone's data or DVC cache, or tamper with its artifacts, freely.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from medimg.config import Params, load_params
from medimg.workspace import Workspace
from registry_fixtures import RegistryWorkspace, _activated, relocate_mlflow_db, write_params


@dataclass(frozen=True)
class FullClone:
    ws: Workspace
    params_file: Path
    params: Params
    template_root: Path


def full_clone(source: RegistryWorkspace, dest: Path) -> FullClone:
    """Everything of ``source``'s workspace but Prefect's home, at ``dest``, its absolute paths rewritten."""
    ws = Workspace.at(dest / "ws")
    shutil.copytree(source.ws.root, ws.root, symlinks=True, ignore=shutil.ignore_patterns("prefect"))
    assert relocate_mlflow_db(ws.mlflow_db, str(source.ws.root), str(ws.root)) > 0
    dvc_config = ws.root / ".dvc" / "config"
    dvc_config.write_text(dvc_config.read_text().replace(str(source.ws.root), str(ws.root)))
    assert str(ws.dvc_remote) in dvc_config.read_text()
    params_file = write_params(dest, ws.root)
    return FullClone(ws, params_file, load_params(params_file), source.ws.root)


@pytest.fixture(scope="module")
def lineage_ws(tmp_path_factory, registry_template):
    """This module's own full clone of the template, with MLflow pointed at it."""
    clone = full_clone(registry_template, tmp_path_factory.mktemp("lineage"))
    mp = _activated(clone.ws)
    yield clone
    mp.undo()


@pytest.fixture
def fresh_lineage_ws(tmp_path_factory, registry_template):
    """A full clone for one test that tampers with artifacts."""
    clone = full_clone(registry_template, tmp_path_factory.mktemp("lineage-fresh"))
    mp = _activated(clone.ws)
    yield clone
    mp.undo()
