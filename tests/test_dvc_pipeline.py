"""``dvc repro`` of the shipped dvc.yaml reproduces ingest and validate without Prefect.

The test copies dvc.yaml, params/kermany64.yaml and the code it depends on into a temporary DVC
project, points ``data_dir`` at a small real Kermany subset, and runs the real ``dvc`` and
``medimg`` commands: the first repro ingests and validates, a second one does nothing, and a new
source image re-runs both and makes a new data version.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datapaths import DATA_DIR
from progress import run_logged

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env.pop("MEDIMG_DEID_SECRET", None)
    log = project.parent / f"dvc-{next(_CALLS)}.log"  # waited on while its output grows, not a fixed time
    return run_logged([str(BIN / "dvc"), *args], log, split=True, cwd=project, env=env)


_CALLS = itertools.count(1)


def test_dvc_repro_runs_ingest_and_validate_and_only_when_inputs_change(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (data / "chest_xray" / split / cls).mkdir(parents=True)
            for src in sorted((DATA_DIR / "chest_xray" / split / cls).iterdir())[:15]:
                shutil.copy(src, data / "chest_xray" / split / cls / src.name)
    project = tmp_path / "project"
    project.mkdir()
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    pipeline["vars"] = [{"data_dir": str(data)}]
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (project / "params").mkdir()
    shutil.copy(ROOT / "params" / "kermany64.yaml", project / "params" / "kermany64.yaml")
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "medimg", project / "medimg", ignore=ignore)
    assert _dvc(project, "init", "--no-scm", "-q").returncode == 0

    first = _dvc(project, "repro", "validate@kermany64")
    assert first.returncode == 0, first.stdout + first.stderr
    ws = project / ".medimg-kermany64"
    version = json.loads((ws / "pipeline" / "data-version.json").read_text())
    assert version["n_images"] == 60 and version["source_kind"] == "image_folder"
    assert (ws / "data" / "versions" / f"{version['data_version']}.dvc").is_file()
    report = json.loads((ws / "pipeline" / "validation-latest.json").read_text())
    assert report["passed"] and report["data_version"] == version["data_version"]
    assert (ws / "pipeline" / "validation-latest.html").is_file() and (project / "dvc.lock").is_file()

    again = _dvc(project, "repro", "validate@kermany64")
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout

    new_image = sorted((DATA_DIR / "chest_xray" / "train" / "NORMAL").iterdir())[50]
    shutil.copy(new_image, data / "chest_xray" / "train" / "NORMAL" / new_image.name)
    status = _dvc(project, "status", "ingest@kermany64")
    assert "changed deps" in status.stdout
    third = _dvc(project, "repro", "validate@kermany64")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "Running stage 'ingest@kermany64'" in third.stdout and "Running stage 'validate@kermany64'" in third.stdout
    newer = json.loads((ws / "pipeline" / "data-version.json").read_text())
    assert newer["n_images"] == 61 and newer["data_version"] != version["data_version"]
    assert len(list((ws / "data" / "versions").glob("*.dvc"))) == 2
