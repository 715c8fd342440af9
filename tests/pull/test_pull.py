"""``medimg pull``: verified, complete models for deployment pipelines, from a real registry.

Nothing is mocked: the registry is the real MLflow store the flow wrote (``registry_fixtures``),
tampering edits the real artifact store, the concurrency test runs real threads against the real
SQLite registry, and the remote test starts a real ``mlflow server``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medimg import promotion, registry
from medimg.cli import app
from medimg.provenance import file_sha256
from medimg.pull import IntegrityError, PullError, pull, read_pulled, releases_dir
from medimg.pull.card import public_uri
from progress import wait_while_progressing
from registry_fixtures import MODEL


def _text(result) -> str:
    return " ".join(result.output.split())


def _check_complete(folder: Path, version: str | None = None) -> dict:
    """The folder holds one whole model: card, markdown and an ONNX file whose hash the registry names."""
    card = json.loads((folder / "model_card.json").read_text())
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "model_card.json", "model_card.md"}
    tag = registry.get_version(MODEL, card["version"]).tags[registry.TAG_ONNX_SHA256]
    assert file_sha256(folder / "model.onnx") == card["sha256"] == tag
    assert card["sha256"] in (folder / "model_card.md").read_text()
    if version is not None:
        assert card["version"] == version
    return card


@pytest.mark.integration
def test_pull_writes_a_verified_model_with_its_card(registry_ws, tmp_path):
    out = tmp_path / "deploy" / "model"
    out.parent.mkdir()
    result = CliRunner().invoke(
        app, ["pull", "--alias", "champion", "--out", str(out), "--params", str(registry_ws.params_file)]
    )
    assert result.exit_code == 0, result.output
    assert out.is_symlink() and Path(os.path.realpath(out)).parent == releases_dir(out)
    card = _check_complete(out, "1")
    v1 = registry.get_version(MODEL, "1")
    assert card["pulled_alias"] == "champion" and card["mlflow_run_id"] == v1.run_id
    assert card["data_version"] == v1.tags[registry.TAG_DATA_VERSION] and len(card["data_version"]) == 32
    assert card["gate"]["passed"] is True and card["gate"]["failed_rules"] == []
    rules = {r["name"]: r for r in card["gate"]["report"]["rules"]}
    assert set(rules) == {"benchmark_noninferiority", "minimum_metrics", "champion_noninferiority"}
    run_metrics = MlflowClient().get_run(v1.run_id).data.metrics
    auc = card["metrics"]["roc_auc"]
    assert auc["value"] == run_metrics["test_roc_auc"]
    assert auc["ci95_low"] == run_metrics["test_roc_auc_ci_low"] <= auc["value"] <= auc["ci95_high"]
    assert card["preprocessing"]["size"] == 28 and card["preprocessing"]["grey_uint8"]["png_jpeg"]
    assert 0 < card["threshold"] < 1 and card["task"]["class_names"] == ["normal", "pneumonia"]
    assert card["task"]["positive_class"] == "pneumonia" and card["data"]["dataset"].startswith("PneumoniaMNIST")
    assert "Not a certified medical device" in card["intended_use"] and len(card["limitations"]) >= 3
    assert card["registered_as"] == "champion"  # the run's card, as the register step logged it
    markdown = (out / "model_card.md").read_text()
    for needle in (card["data_version"], "## Intended use", "## Limitations", "roc_auc", "Gate decision", "PASSED"):
        assert needle in markdown
    assert f"| roc_auc | {auc['value']:.4f} ({auc['ci95_low']:.4f}-{auc['ci95_high']:.4f}) |" in markdown

    # the registry shows the same card as the version's description
    description = MlflowClient().get_model_version(MODEL, "1").description
    for needle in ("PneumoniaMNIST", "normal, pneumonia", card["data_version"], "| gate | passed |"):
        assert needle in description, needle
    assert any(f"| roc_auc | {auc['value']:.{digits}f} (" in description for digits in (3, 4))  # compact or in full

    # pulling v2 into the same folder swaps the whole set; the failed gate is stated on its card
    assert pull(registry_ws.params, out_dir=out, version="2").version == "2"
    card2 = _check_complete(out, "2")
    assert card2["gate"]["passed"] is False and "minimum_metrics" in card2["gate"]["failed_rules"]
    assert "FAILED" in (out / "model_card.md").read_text()


@pytest.mark.integration
def test_a_tampered_artifact_is_refused_and_nothing_is_half_written(fresh_registry, tmp_path):
    params = fresh_registry.params
    out = tmp_path / "model"
    good = pull(params, out_dir=out, version="1")
    before = sorted(p.name for p in releases_dir(out).iterdir())

    # tamper with the stored file in the artifact store (this clone's own store)
    store = urlsplit(MlflowClient().get_model_version_download_uri(MODEL, "1")).path
    stored = Path(store) / "model.onnx"
    assert fresh_registry.ws.root in stored.parents
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    result = CliRunner().invoke(
        app, ["pull", "--version", "1", "--out", str(out), "--params", str(fresh_registry.params_file)]
    )
    assert result.exit_code == 3, result.output
    assert "integrity check failed" in _text(result) and "sha256" in _text(result)
    assert Path(os.path.realpath(out)) == good.release_dir, "the link must still point at the last good model"
    _check_complete(out, "1")
    assert sorted(p.name for p in releases_dir(out).iterdir()) == before, "no partial download may remain"

    fresh_out = tmp_path / "never-pulled"
    with pytest.raises(IntegrityError, match="altered or corrupted"):
        pull(params, out_dir=fresh_out, version="1")
    assert not fresh_out.exists() and not fresh_out.is_symlink()
    assert not [p for p in releases_dir(fresh_out).iterdir()], "the failed pull left files behind"

    # a version whose file is intact still pulls
    assert pull(params, out_dir=fresh_out, version="2").version == "2"


@pytest.mark.integration
def test_pull_refuses_a_real_directory_and_unknown_versions(registry_ws, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.onnx").write_bytes(b"someone else's file")
    with pytest.raises(PullError, match="not a link made by medimg pull"):
        pull(registry_ws.params, out_dir=taken)
    assert (taken / "model.onnx").read_bytes() == b"someone else's file"
    with pytest.raises(PullError, match=r"has no version 9\b"):
        pull(registry_ws.params, out_dir=tmp_path / "m", version="9")
    with pytest.raises(PullError, match="has no alias 'staging'"):
        pull(registry_ws.params, out_dir=tmp_path / "m", alias="staging")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pull(registry_ws.params, out_dir=empty).version == "1" and empty.is_symlink()


@pytest.mark.integration
def test_old_releases_are_pruned_but_current_recent_and_running_ones_stay(registry_ws, tmp_path):
    params, out = registry_ws.params, tmp_path / "model"
    first = pull(params, out_dir=out, version="1")
    middle = [pull(params, out_dir=out, version="2") for _ in range(3)]
    hour_ago = time.time() - 3600
    for release in (first.release_dir, *(r.release_dir for r in middle[:-1])):
        os.utime(release, (hour_ago, hour_ago))
    crashed = releases_dir(out) / ".partial-crashed"
    crashed.mkdir()
    os.utime(crashed, (hour_ago - 6 * 3600, hour_ago - 6 * 3600))
    running = releases_dir(out) / ".partial-running"  # another pull downloading right now
    running.mkdir()

    latest = pull(params, out_dir=out, version="1", keep_previous=1)
    remaining = set(releases_dir(out).iterdir())
    assert remaining == {latest.release_dir, middle[-1].release_dir, running}
    _check_complete(out, "1")


@pytest.mark.integration
def test_concurrent_pulls_during_a_promotion_each_get_one_complete_model(fresh_registry, tmp_path):
    """8 pulls into the same folder race a promotion (v1 -> v2); a reader watches the folder throughout.

    Pulls 0-3 start together with the promotion (old or new model); pulls 4-7 start once the
    promotion is committed (they must get the new one). Every pull's release folder, and every
    state the reader observes, must be one complete model whose ONNX hash matches its card.
    """
    params, ws = fresh_registry.params, fresh_registry.ws
    out = tmp_path / "model"
    sha = {v: registry.get_version(MODEL, v).tags[registry.TAG_ONNX_SHA256] for v in ("1", "2")}
    assert sha["1"] != sha["2"]
    start, promoted, stop = threading.Barrier(5), threading.Event(), threading.Event()
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    observed: list[tuple[str, str, str]] = []

    def puller(i: int) -> None:
        try:
            if i < 4:
                start.wait()
            else:
                promoted.wait()
            results[i] = pull(params, out_dir=out, alias="champion", keep_previous=20)
        except BaseException as err:  # reported below
            errors.append(err)

    def promoter() -> None:
        try:
            start.wait()
            promotion.promote(params, ws, "2", "concurrency test: promotion during pulls", force=True)
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            promoted.set()

    def reader() -> None:
        while not stop.is_set():
            if out.is_symlink():
                release, card = read_pulled(out)
                observed.append((card["version"], card["sha256"], file_sha256(release / "model.onnx")))
            time.sleep(0.005)

    threads = [threading.Thread(target=puller, args=(i,)) for i in range(8)] + [threading.Thread(target=promoter)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # a hung thread is ended by pytest-timeout's overall cap (pyproject), not a guess here
    stop.set()
    watcher.join(timeout=30)
    assert not errors, errors
    assert len(results) == 8
    versions = {}
    for i, res in sorted(results.items()):
        card = _check_complete(res.release_dir)
        assert card["version"] == res.version and res.sha256 == sha[res.version]
        versions[i] = res.version
    assert all(versions[i] == "2" for i in range(4, 8)), versions
    assert observed, "the reader never saw the folder"
    assert all(s_card == s_file == sha[v] for v, s_card, s_file in observed), "a reader saw a mixed model"
    _check_complete(out)
    assert registry.version_by_alias(MODEL, registry.CHAMPION).version == "2"
    print(f"pull versions by thread: {versions}; reader observations: {len(observed)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_pull_from_a_remote_tracking_server(registry_ws, tmp_path, monkeypatch):
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the server writes to it until the test ends
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            registry_ws.tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            return False

        # waits while the server's log grows (a busy machine starts it slowly), not a fixed time
        wait_while_progressing(healthy, "mlflow server to answer /health", logs=[tmp_path / "server.log"])
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        out = tmp_path / "model"
        result = CliRunner().invoke(
            app, ["pull", "--version", "2", "--out", str(out), "--params", str(registry_ws.params_file)]
        )
        assert result.exit_code == 0, result.output
        card = _check_complete(out, "2")
        assert card["tracking_uri"] == url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_tracking_uri_credentials_never_reach_the_card():
    assert public_uri("https://alice:s3cret@mlflow.example.org:8443/x") == "https://mlflow.example.org:8443/x"
    assert public_uri("sqlite:////srv/ws/mlflow.db") == "sqlite:////srv/ws/mlflow.db"


@pytest.mark.integration
def test_a_version_whose_run_cannot_be_read_gets_no_card(fresh_registry, tmp_path):
    """A registry that outlived its tracking data (a run purged, another server): a clear error, not a traceback."""
    v1 = registry.get_version(MODEL, "1")
    orphan = MlflowClient().create_model_version(MODEL, v1.source, run_id="0" * 32, tags=v1.tags)  # v1's file, no run
    out = tmp_path / "model"
    with pytest.raises(PullError, match=f"v{orphan.version}: its MLflow run {'0' * 32} cannot be read"):
        pull(fresh_registry.params, out_dir=out, version=orphan.version)
    assert not out.exists() and not list(releases_dir(out).iterdir()), "nothing may be installed without a card"
