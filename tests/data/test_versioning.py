"""DVC data versions: same content, same version; changed content, new version; any version restorable."""

from __future__ import annotations

from medimg.config import DataConfig
from medimg.data import manifest, versioning
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.workspace import Workspace


def test_versions_are_content_hashes_and_restorable(data_dir, tmp_path):
    ws = Workspace.at(tmp_path / "ws").ensure()
    archive = locate("pneumoniamnist", data_dir, tmp_path / "dl", download=False)
    ingest_medmnist(archive, DataConfig(), ("normal", "pneumonia"), ws.data)
    first = versioning.commit_and_push(ws)
    assert first.is_new and first.n_files == 4708 + 524 + 624 + 1
    assert any((ws.dvc_remote).rglob("*")), "dvc push left the local remote empty"

    ingest_medmnist(archive, DataConfig(), ("normal", "pneumonia"), ws.data)
    again = versioning.commit_and_push(ws)
    assert again.id == first.id and not again.is_new

    frame = manifest.read(ws.data)
    manifest.write(frame.iloc[:-1], ws.data)
    (ws.data / frame.iloc[-1]["path"]).unlink()
    changed = versioning.commit_and_push(ws)
    assert changed.id != first.id and changed.is_new

    versioning.checkout(ws, first.id)
    assert versioning.current_version(ws) == first.id
    assert len(manifest.read(ws.data)) == len(frame)
    assert (ws.data / frame.iloc[-1]["path"]).is_file()
    assert versioning.fetch_commands(ws, first.id)[-1] == "dvc pull data/dataset.dvc"


def test_a_workspace_keeps_taking_new_versions_and_restores_any_of_them(tmp_path):
    """Three versions in one workspace (the kept .dvc copies under data/versions/ are not stages)."""
    ws = Workspace.at(tmp_path / "ws").ensure()
    ws.data.mkdir(parents=True, exist_ok=True)
    versions = []
    for text in ("first", "second", "third"):
        (ws.data / "notes.txt").write_text(text)
        versions.append(versioning.commit_and_push(ws))
    assert all(v.is_new for v in versions) and len({v.id for v in versions}) == 3
    versioning.checkout(ws, versions[0].id)
    assert versioning.current_version(ws) == versions[0].id and (ws.data / "notes.txt").read_text() == "first"
    (ws.data / "notes.txt").write_text("fourth")
    assert versioning.commit_and_push(ws).is_new
