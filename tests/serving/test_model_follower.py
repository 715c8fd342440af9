"""The model follower (:mod:`medimg.serving.model_follower`) on a real MLflow registry (SQLite, in tmp_path).

Fast: a small real model registered several times with right and wrong sha256 tags; the alias is moved
with the registry's own calls. The full registry made by the retraining flow is in ``test_serve.py``.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from medimg import registry
from medimg.provenance import file_sha256
from medimg.serving.metrics import ServeMetrics
from medimg.serving.model_follower import ModelFollower
from progress import wait_while_progressing

MODEL = "follow-test"


@pytest.fixture
def store(small_model, tmp_path, monkeypatch):
    """A registry in tmp_path and a function registering the small model (with a given sha256 tag)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    onnx = small_model[0].path
    experiment = registry.ensure_experiment("follow-test", tmp_path / "artifacts")

    def register(sha256: str | None = None) -> str:
        run = MlflowClient().create_run(experiment)
        uri = registry.log_onnx(run.info.run_id, onnx)
        return registry.register(uri, MODEL, {registry.TAG_ONNX_SHA256: sha256 or file_sha256(onnx)}).version

    return register


def _metric(metrics: ServeMetrics, line: str) -> bool:
    return line in metrics.exposition()[0].decode()


def test_follows_the_alias_and_keeps_the_model_when_a_version_fails_its_check(store, tmp_path):
    metrics = ServeMetrics()
    models = tmp_path / "serve" / "models"
    follower = ModelFollower(MODEL, "champion", models, metrics=metrics)
    assert follower.refresh().outcome == "no_alias" and not follower.ready and follower.current() is None

    v1 = store()
    registry.set_alias(MODEL, "champion", v1)
    first = follower.refresh()
    assert (first.outcome, first.version) == ("loaded", v1) and follower.ready
    loaded = follower.current()
    assert loaded is not None and loaded.version == v1 and loaded.alias == "champion"
    assert (
        loaded.onnx_sha256 == file_sha256(models / v1 / "model.onnx")
        and loaded.model.path == models / v1 / "model.onnx"
    )
    assert follower.refresh().outcome == "unchanged" and follower.current() is loaded

    bad = store("0" * 64)  # its tag does not name its file
    registry.set_alias(MODEL, "champion", bad)
    failed = follower.refresh()
    assert (failed.outcome, failed.version, failed.failure) == ("failed", bad, "integrity")
    assert "sha256" in (failed.detail or "")
    assert follower.current() is loaded, "the verified model stays in service"
    assert not (models / bad).exists() and not list(models.glob(".partial-*"))
    assert _metric(metrics, 'medimg_serve_model_load_failures_total{reason="integrity"} 1.0')
    assert follower.refresh().outcome == "failed"  # tried again at every check
    assert _metric(metrics, 'medimg_serve_model_load_failures_total{reason="integrity"} 2.0')

    v3 = store()
    registry.set_alias(MODEL, "champion", v3)
    swapped = follower.refresh()
    assert (swapped.outcome, swapped.version) == ("swapped", v3) and follower.current().version == v3
    assert _metric(metrics, "medimg_serve_model_swaps_total 1.0")
    assert _metric(
        metrics, f'medimg_serve_model_info{{name="{MODEL}",onnx_sha256="{loaded.onnx_sha256}",version="{v3}"}} 1.0'
    )

    registry.delete_alias(MODEL, "champion")
    assert follower.refresh().outcome == "no_alias" and follower.current().version == v3

    # a new follower on the same folder: a verified file is reused, a corrupted one is downloaded again
    local = models / v3 / "model.onnx"
    registry.set_alias(MODEL, "champion", v3)
    data = bytearray(local.read_bytes())
    data[len(data) // 2] ^= 0xFF
    local.write_bytes(bytes(data))
    again = ModelFollower(MODEL, "champion", models)
    assert again.refresh().outcome == "loaded" and file_sha256(local) == loaded.onnx_sha256

    # a follower whose alias names the failing version never becomes ready
    registry.set_alias(MODEL, "challenger", bad)
    never = ModelFollower(MODEL, "challenger", tmp_path / "other")
    assert never.refresh().failure == "integrity" and not never.ready


def test_the_thread_loads_the_model_and_stops(store, tmp_path):
    registry.set_alias(MODEL, "champion", store())
    follower = ModelFollower(MODEL, "champion", tmp_path / "models", poll_seconds=0.2)
    follower.start()
    try:
        wait_while_progressing(lambda: follower.ready, "the follower thread loads the champion", stall=120)
    finally:
        follower.stop()
    assert follower._thread is None
