"""Data versions with DVC: the workspace is a DVC project with a local remote.

The data version is DVC's own hash of the dataset folder (the ``md5`` of its ``.dir`` entry).
Each version's ``.dvc`` file is kept under ``data/versions/`` so that any version a model was
trained on can be checked out again with DVC (see ``fetch_commands``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from medimg.workspace import Workspace

REMOTE_NAME = "local"


@dataclass(frozen=True)
class DataVersion:
    """A DVC-tracked dataset folder: the ``.dir`` MD5, its ``.dvc`` file, file count, bytes, and whether it is new."""

    md5: str
    dvc_file: Path
    n_files: int
    size: int
    is_new: bool

    @property
    def id(self) -> str:
        """The data version id: the DVC directory MD5 without ``.dir``."""
        return self.md5.removesuffix(".dir")


#: Workspace folders that are not data: DVC must not walk them (the decode cache alone holds
#: thousands of files) when it hashes the dataset. ``data/versions/`` holds a copy of the dataset's
#: ``.dvc`` file per version, each naming the output ``dataset`` beside it: were DVC to read them as
#: stages, a second kept version would make every later ``dvc add`` fail (OutputDuplicationError).
NOT_DATA = ("prefect/", "mlartifacts/", "runs/", "reports/", "dvc-remote/", "cache/", "data/versions/")


def _ignore_workspace_state(ws: Workspace) -> None:
    """``.dvcignore`` lists every :data:`NOT_DATA` folder (lines added to an older workspace's file)."""
    ignore = ws.root / ".dvcignore"
    present = ignore.read_text().split() if ignore.is_file() else []
    missing = [name for name in NOT_DATA if name not in present]
    if missing:
        with open(ignore, "a") as handle:
            handle.write("".join(f"{name}\n" for name in missing))


def _repo(ws: Workspace):
    from dvc.repo import Repo  # here: reading a data version (the up-to-date check) needs no DVC import

    new = not (ws.root / ".dvc").is_dir()
    if new:
        Repo.init(str(ws.root), no_scm=True)
    _ignore_workspace_state(ws)
    repo = Repo(str(ws.root))
    if new:
        with repo.config.edit() as conf:
            conf["remote"][REMOTE_NAME] = {"url": str(ws.dvc_remote)}
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["analytics"] = False
    return repo


def read_dvc_file(path: Path) -> dict:
    """The first ``outs`` entry (md5, nfiles, size, path) of the ``.dvc`` file at ``path``."""
    out = yaml.safe_load(path.read_text())["outs"][0]
    return out


def commit_and_push(ws: Workspace) -> DataVersion:
    """``dvc add`` the dataset folder and ``dvc push`` it to the workspace remote."""
    ws.dvc_remote.mkdir(parents=True, exist_ok=True)
    repo = _repo(ws)
    dvc_file = ws.data.with_name(ws.data.name + ".dvc")
    previous = read_dvc_file(dvc_file)["md5"] if dvc_file.is_file() else None
    try:
        repo.add(str(ws.data))
        repo.push(targets=[str(dvc_file)], remote=REMOTE_NAME)
    finally:
        repo.close()
    out = read_dvc_file(dvc_file)
    ws.data_versions.mkdir(parents=True, exist_ok=True)
    version_id = out["md5"].removesuffix(".dir")
    kept = ws.data_versions / f"{version_id}.dvc"
    is_new = not kept.is_file() and previous != out["md5"]
    if not kept.is_file():
        shutil.copyfile(dvc_file, kept)
    manifest_copy = ws.data_versions / f"{version_id}.manifest.parquet"
    if not manifest_copy.is_file() and (ws.data / "manifest.parquet").is_file():
        shutil.copyfile(ws.data / "manifest.parquet", manifest_copy)
    return DataVersion(
        md5=out["md5"], dvc_file=kept, n_files=int(out.get("nfiles", 0)), size=int(out.get("size", 0)), is_new=is_new
    )


def current_version(ws: Workspace) -> str | None:
    """The data version the workspace's dataset ``.dvc`` file records, or None when there is none."""
    dvc_file = ws.data.with_name(ws.data.name + ".dvc")
    if not dvc_file.is_file():
        return None
    return read_dvc_file(dvc_file)["md5"].removesuffix(".dir")


def version_manifest(ws: Workspace, version_id: str) -> Path | None:
    """The manifest of a data version, kept beside its .dvc file for drift checks and audits."""
    path = ws.data_versions / f"{version_id}.manifest.parquet"
    return path if path.is_file() else None


def fetch_commands(ws: Workspace, version_id: str) -> list[str]:
    """Shell commands that restore exactly this data version into the workspace."""
    return [
        f"cd {ws.root}",
        f"cp data/versions/{version_id}.dvc data/dataset.dvc",
        "dvc pull data/dataset.dvc",
    ]


def checkout(ws: Workspace, version_id: str) -> None:
    """Restore a data version from the DVC remote into the dataset folder."""
    kept = ws.data_versions / f"{version_id}.dvc"
    if not kept.is_file():
        raise FileNotFoundError(f"{kept}: unknown data version {version_id}")
    shutil.copyfile(kept, ws.data.with_name(ws.data.name + ".dvc"))
    repo = _repo(ws)
    try:
        repo.pull(targets=[str(ws.data.with_name(ws.data.name + ".dvc"))], remote=REMOTE_NAME, force=True)
    finally:
        repo.close()
