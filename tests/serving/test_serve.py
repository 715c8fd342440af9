"""``medimg serve`` end to end on the two-version registry the retraining flow made (``registry_fixtures``).

Nothing is mocked: MLflow on SQLite, the ONNX files from its artifact store, ONNX Runtime, uvicorn on a
free 127.0.0.1 port (in a thread, so a test can call ``follower.refresh()`` instead of waiting for the
poll, and as a real ``medimg serve`` subprocess), the official ``tritonclient.http`` client, real chest
X-ray JPEGs and DICOM files from the shared data. Equality is against ``medimg predict``
(:func:`medimg.predict.predict_files`) with the same verified version.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
import uvicorn
from mlflow import MlflowClient
from tritonclient.utils import InferenceServerException

from datapaths import CHEST, CR_CHEST, CT_SMALL
from medimg import preprocess, promotion, registry
from medimg.predict import predict_files, registry_model, to_rows
from medimg.scoring import OnnxModel
from medimg.serving.app import SHA256_HEADER, VERSION_HEADER
from medimg.serving.prediction_log import PredictionLog
from medimg.serving.server import Service, build_service
from medimg.users import UserStore
from progress import wait_while_progressing
from registry_fixtures import MODEL

PASSWORD = "correct horse battery"
SECRET = "serve-test-secret-0123456789abcdef"


def auth(password: str = PASSWORD) -> dict[str, str]:
    """A new headers dict per call: tritonclient writes its own headers into the dict it is given."""
    return {"Authorization": "Basic " + base64.b64encode(f"svc:{password}".encode()).decode()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_user(ws) -> None:
    """User ``svc`` (role service, :data:`PASSWORD`) in ``ws``'s user store."""
    store = UserStore(ws.users_file)
    if store.get("svc") is None:
        store.add("svc", "service", PASSWORD)


@contextlib.contextmanager
def serving(reg) -> Iterator[Service]:
    """The service of ``reg``'s workspace on a free port, uvicorn in a thread; the follower is NOT started (call
    ``service.follower.refresh()``)."""
    ensure_user(reg.ws)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_DEID_SECRET", SECRET)
        service = build_service(reg.params, reg.ws, port=free_port())
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=service.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_while_progressing(lambda: server.started or not thread.is_alive(), "uvicorn starts", stall=120)
        assert server.started, "uvicorn did not start"
        yield service
    finally:
        server.should_exit = True
        thread.join(60)
        service.follower.stop()


def client(service: Service) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=f"127.0.0.1:{service.port}")


def chest_jpegs(per_class: int = 16) -> list[Path]:
    return [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((CHEST / "test" / cls).iterdir())[:per_class]]


def model_input(model: OnnxModel, files: list[Path]) -> np.ndarray:
    """The preprocessed tensor ``[N, C, H, W]`` a client sends: the steps medimg predict takes for each file."""
    grey = [preprocess.prepare(preprocess.decode_file(f, model.config), model.config) for f in files]
    return np.concatenate([preprocess.apply(g, model.config).numpy() for g in grey])


def infer(tc: httpclient.InferenceServerClient, x: np.ndarray, binary: bool, headers: dict[str, str] | None = None):
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = (
        None
        if binary  # none named: tritonclient asks every output as binary data
        else [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("logits", "probabilities", "p_abnormal")]
    )
    return tc.infer(MODEL, [tensor], outputs=outputs, headers=auth() if headers is None else headers)


@pytest.fixture(scope="module")
def served(registry_ws, tmp_path_factory):
    """The module's service on the champion (v1), and v1 as medimg predict loads it."""
    with serving(registry_ws) as service:
        assert service.follower.refresh().outcome == "loaded"
        path, record = registry_model(MODEL, "champion", tmp_path_factory.mktemp("predict-model"))
        yield service, OnnxModel(path), record


@pytest.mark.integration
def test_tritonclient_gets_metadata_and_the_numbers_of_medimg_predict(served):
    service, model, record = served
    tc = client(service)
    assert tc.is_server_live() and tc.is_server_ready()  # health checks need no login
    assert tc.is_model_ready(MODEL, headers=auth())
    server = tc.get_server_metadata(headers=auth())
    assert server["name"] == "medimg" and "binary_tensor_data" in server["extensions"]
    assert (server["model_version"], server["onnx_sha256"]) == ("1", record.onnx_sha256)
    meta = tc.get_model_metadata(MODEL, headers=auth())
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["onnx_sha256"] == record.onnx_sha256
    assert meta["inputs"] == [{"name": model.input_name, "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]}["probabilities"] == "FP64"

    files = chest_jpegs()
    expected = predict_files(model, files)
    assert len(expected) == 32 and all(p.error is None for p in expected)
    x = model_input(model, files)
    logits = model.session.run(None, {model.input_name: x})[0]
    for binary in (True, False):
        for batch in (1, 32):
            result = infer(tc, x[:batch], binary)
            answer = result.get_response()
            assert answer["model_name"] == MODEL and answer["model_version"] == "1"
            assert answer["parameters"]["onnx_sha256"] == record.onnx_sha256
            rows = expected[:batch]
            np.testing.assert_allclose(result.as_numpy("p_abnormal"), [p.probability for p in rows], rtol=0, atol=1e-6)
            np.testing.assert_allclose(
                result.as_numpy("probabilities"),
                [[p.class_probabilities[c] for c in model.class_names] for p in rows],
                rtol=0,
                atol=1e-6,
            )
            np.testing.assert_allclose(result.as_numpy("logits"), logits[:batch], rtol=0, atol=1e-6)
            if binary:
                assert list(result.as_numpy("abnormal")) == [p.abnormal for p in rows]

    for headers in ({}, auth("wrong password")):
        with pytest.raises(InferenceServerException) as refused:
            infer(tc, x[:1], True, headers)
        assert refused.value.status() == "401"
    with pytest.raises(InferenceServerException) as unknown:
        tc.get_model_metadata("no-such-model", headers=auth())
    assert unknown.value.status() == "404"


@pytest.mark.integration
def test_the_file_endpoint_answers_what_medimg_predict_answers(served, registry_ws):
    service, model, record = served
    files = [*chest_jpegs(1), CR_CHEST, CT_SMALL]
    expected = to_rows(predict_files(model, files), model.class_names)
    url = f"http://127.0.0.1:{service.port}/medimg/v1/models/{MODEL}/predict"
    log = PredictionLog(registry_ws.ws.prediction_log)
    before = len(list(log.read()))
    for path, row in zip(files, expected, strict=True):
        answer = requests.post(url, data=path.read_bytes(), auth=("svc", PASSWORD), timeout=120)
        assert answer.status_code == (422 if row["error"] else 200), (path.name, answer.text)
        assert answer.headers[VERSION_HEADER] == "1" and answer.headers[SHA256_HEADER] == record.onnx_sha256
        got = answer.json()
        assert (got["model_version"], got["onnx_sha256"]) == ("1", record.onnx_sha256) and "file" not in got
        for key, value in row.items():
            if key != "file":
                assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
    assert requests.post(url, data=b"x", timeout=30).status_code == 401

    entries = list(log.read())[before:]
    assert [e.source for e in entries] == ["http_file"] * 4  # two JPEGs, a CR and a CT
    assert [e.refusal_reason for e in entries] == [r["error"] for r in expected]
    assert all(e.model_version == "1" and e.onnx_sha256 == record.onnx_sha256 for e in entries)
    assert [e.study is not None and e.study.startswith("study-") for e in entries] == [False, False, True, True]
    text = log.path.read_text()
    from pydicom import dcmread  # here: the files' real identifiers, to show none reached the log

    for path in (CR_CHEST, CT_SMALL):
        ds = dcmread(path, stop_before_pixels=True)
        for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert value not in text


@pytest.mark.integration
def test_a_promotion_swaps_the_model_between_requests(fresh_registry, tmp_path):
    v2_path, v2 = registry_model(MODEL, "2", tmp_path / "v2")
    v2_model = OnnxModel(v2_path)
    x = model_input(v2_model, chest_jpegs(1)[:1])
    with serving(fresh_registry) as service:
        tc = client(service)
        assert not tc.is_server_ready(), "ready before a verified model is loaded"
        with pytest.raises(InferenceServerException) as early:
            infer(tc, x, True)
        assert early.value.status() == "503"
        assert service.follower.refresh().outcome == "loaded"
        assert tc.is_server_ready()

        stop = threading.Event()
        seen: list[list[tuple[str, str, float]]] = [[], []]
        errors: list[BaseException] = []

        def loop(out: list[tuple[str, str, float]]) -> None:
            own = client(service)
            while not stop.is_set():
                try:
                    result = infer(own, x, True)
                    answer = result.get_response()
                    out.append(
                        (answer["model_version"], answer["parameters"]["onnx_sha256"], result.as_numpy("p_abnormal")[0])
                    )
                except BaseException as err:  # any failed request fails the test below
                    errors.append(err)

        threads = [threading.Thread(target=loop, args=(out,), daemon=True) for out in seen]
        for t in threads:
            t.start()
        try:

            def count() -> int:
                return sum(map(len, seen))

            wait_while_progressing(lambda: count() >= 10 or errors, "requests before the promotion", stall=120)
            promotion.promote(fresh_registry.params, fresh_registry.ws, "2", "serve test: swap under load", force=True)
            assert service.follower.refresh().outcome == "swapped"
            after = count()
            wait_while_progressing(lambda: count() >= after + 10 or errors, "requests after the swap", stall=120)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        assert errors == []
        for out in seen:
            versions = [v for v, _, _ in out]
            assert versions == sorted(versions) and versions[-1] == "2", "one swap, from v1 to v2, per client"
            assert {v: s for v, s, _ in out}["2"] == v2.onnx_sha256
            assert out[-1][2] == pytest.approx(v2_model.probabilities(x)[0], abs=1e-6)
        status = requests.get(f"http://127.0.0.1:{service.port}/medimg/v1/status", auth=("svc", PASSWORD), timeout=30)
        assert status.json()["model_version"] == "2" and status.headers[VERSION_HEADER] == "2"
        metrics = requests.get(f"http://127.0.0.1:{service.port}/metrics", auth=("svc", PASSWORD), timeout=30).text
        assert "medimg_serve_model_swaps_total 1.0" in metrics and 'version="2"' in metrics


@pytest.mark.integration
def test_a_tampered_model_is_not_loaded_and_the_old_one_keeps_answering(fresh_registry):
    store = urlsplit(MlflowClient().get_model_version_download_uri(MODEL, "2")).path
    stored = Path(store) / "model.onnx"
    assert fresh_registry.ws.root in stored.parents
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    with serving(fresh_registry) as service:
        assert service.follower.refresh().outcome == "loaded"
        promotion.promote(fresh_registry.params, fresh_registry.ws, "2", "serve test: tampered", force=True)
        refreshed = service.follower.refresh()
        assert (refreshed.outcome, refreshed.version, refreshed.failure) == ("failed", "2", "integrity")
        tc = client(service)
        assert tc.is_server_ready()
        assert tc.get_model_metadata(MODEL, headers=auth())["versions"] == ["1"]
        answer = infer(tc, np.zeros((1, 1, 28, 28), np.float32), True).get_response()
        assert answer["model_version"] == "1"
        assert not (fresh_registry.ws.serve / "models" / "2").exists()
        assert not list((fresh_registry.ws.serve / "models").glob(".partial-*"))
        metrics = requests.get(f"http://127.0.0.1:{service.port}/metrics", auth=("svc", PASSWORD), timeout=30).text
        assert 'medimg_serve_model_load_failures_total{reason="integrity"} 1.0' in metrics
        assert registry.version_by_alias(MODEL, "champion").version == "2"  # the registry moved; the service did not


@pytest.mark.integration
def test_medimg_serve_runs_as_a_command(registry_ws, tmp_path):
    port = free_port()
    ensure_user(registry_ws.ws)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medimg.cli",
                "serve",
                "--params",
                str(registry_ws.params_file),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MEDIMG_DEID_SECRET": SECRET},
        )
    try:
        tc = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")

        def ready() -> bool:
            with contextlib.suppress(Exception):
                return tc.is_server_ready()
            return False

        wait_while_progressing(ready, "medimg serve loads the champion", procs=[proc], logs=[log])
        assert tc.get_model_metadata(MODEL, headers=auth())["versions"] == ["1"]
        with pytest.raises(InferenceServerException) as refused:
            tc.get_model_metadata(MODEL)
        assert refused.value.status() == "401"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(120)
    assert code == 0, log.read_text()[-3000:]
    assert "serving pneumonia-classifier v1" in " ".join(log.read_text().split())
