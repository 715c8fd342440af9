"""The HTTP app of ``medimg serve`` (:mod:`medimg.serving.app`) in process, on a small real ONNX model.

Fast: a small untrained CNN exported with medimg's metadata and run by ONNX Runtime, a real user store
with argon2 hashes, Starlette's test client. The model holder is a fixed reference (the follower that
fills it from the registry is tested in ``test_model_follower.py`` and ``test_serve.py``).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from datapaths import CT_SMALL
from medimg.config import parse_params
from medimg.predict import predict_files, to_rows
from medimg.serving.app import SHA256_HEADER, VERSION_HEADER, create_app
from medimg.serving.loaded_model import LoadedModel
from medimg.serving.metrics import ServeMetrics
from medimg.serving.prediction_log import PredictionLog
from medimg.serving.v2 import HEADER_LENGTH, decode_response, encode_request
from medimg.users import UserStore

NAME = "pneumonia-classifier"
SHA = "ab" * 32
PASSWORD = "s3cret pw"


class Fixed:
    """A holder with a fixed model (or none)."""

    def __init__(self, loaded: LoadedModel | None) -> None:
        self.loaded = loaded

    def current(self) -> LoadedModel | None:
        return self.loaded


@pytest.fixture
def service(small_model, tmp_path):
    users = UserStore(tmp_path / "users.json")
    users.add("svc", "service", PASSWORD)
    holder = Fixed(LoadedModel(NAME, "7", SHA, small_model[0]))
    metrics = ServeMetrics()
    log = PredictionLog(tmp_path / "serve" / "predictions.jsonl")
    params = parse_params({"serve": {"max_body_mb": 0.5}})
    app = create_app(holder, metrics, log, users, params, secret=b"k" * 32, dicom_ready=lambda: False)
    return TestClient(app), holder, metrics, log, users


def auth(user: str = "svc", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_health_needs_no_login_and_everything_else_does(service):
    client, *_ = service
    for path in ("/v2/health/live", "/v2/health/ready"):
        answer = client.get(path)
        assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == "7"
        assert answer.headers[SHA256_HEADER] == SHA and answer.json()["onnx_sha256"] == SHA
    protected = ["/v2", f"/v2/models/{NAME}", f"/v2/models/{NAME}/ready", "/metrics", "/medimg/v1/status"]
    for path in protected:
        for headers in ({}, auth(password="wrong"), auth(user="nobody")):
            answer = client.get(path, headers=headers)
            assert answer.status_code == 401, path
            assert answer.headers["WWW-Authenticate"].startswith('Basic realm="medimg"')
            assert answer.headers[VERSION_HEADER] == "7" and "error" in answer.json()
        assert client.get(path, headers=auth()).status_code == 200, path
    for path in (f"/v2/models/{NAME}/infer", f"/medimg/v1/models/{NAME}/predict"):
        assert client.post(path, content=b"x").status_code == 401
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_a_removed_user_is_refused_at_the_next_request(service):
    client, _, _, _, users = service
    assert client.get("/v2", headers=auth()).status_code == 200
    users.remove("svc")
    assert client.get("/v2", headers=auth()).status_code == 401


def test_not_ready_before_a_model(service):
    client, holder, *_ = service
    holder.loaded = None
    assert client.get("/v2/health/live").status_code == 200
    answer = client.get("/v2/health/ready")
    assert answer.status_code == 503 and answer.json()["ready"] is False and answer.headers[VERSION_HEADER] == "none"
    assert client.get(f"/v2/models/{NAME}", headers=auth()).status_code == 503
    assert client.get(f"/v2/models/{NAME}/ready", headers=auth()).status_code == 503
    body, _ = encode_request({"image": np.zeros((1, 1, 28, 28), np.float32)}, binary=False)
    assert client.post(f"/v2/models/{NAME}/infer", content=body, headers=auth()).status_code == 503
    status = client.get("/medimg/v1/status", headers=auth()).json()
    assert status["ready"] is False and status["model_version"] is None and status["dicom_ready"] is False


def test_metadata_and_unknown_models(service):
    client, *_ = service
    meta = client.get(f"/v2/models/{NAME}", headers=auth()).json()
    assert meta["name"] == NAME and meta["versions"] == ["7"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities", "p_abnormal", "abnormal"]
    assert meta["parameters"]["threshold"] == 0.42 and meta["onnx_sha256"] == SHA
    assert client.get(f"/v2/models/{NAME}/versions/7", headers=auth()).status_code == 200
    assert client.get(f"/v2/models/{NAME}/versions/6", headers=auth()).status_code == 404
    unknown = client.get("/v2/models/other", headers=auth())
    assert unknown.status_code == 404 and "unknown model 'other'" in unknown.json()["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_inference_equals_the_onnx_model(service, small_model, binary):
    client, _, _, log, _ = service
    model, _, x = small_model
    body, length = encode_request({"image": x[:5]}, binary=binary, request_id="q")
    headers = {**auth(), **({HEADER_LENGTH: str(length)} if length is not None else {})}
    answer = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    got = decode_response(answer.content, int(answer.headers.get(HEADER_LENGTH, len(answer.content))))
    assert got.model_version == "7" and got.parameters["onnx_sha256"] == SHA and got.id == "q"
    probs = model.class_probabilities(x[:5])
    np.testing.assert_array_equal(got.outputs["probabilities"], probs)
    np.testing.assert_array_equal(got.outputs["p_abnormal"], probs[:, 1])
    np.testing.assert_array_equal(got.outputs["abnormal"], probs[:, 1] >= 0.42)
    assert answer.headers[VERSION_HEADER] == "7"
    entries = list(log.read())
    assert len(entries) == 5 and {e.source for e in entries} == {"http_tensor"}
    assert [e.p_abnormal for e in entries] == pytest.approx(list(probs[:, 1]), abs=0)


def test_bad_tensors_get_400_with_the_reason(service, small_model):
    client, *_ = service
    x = small_model[2][:2]
    cases = {
        "shape [2, 1, 27, 28]": {"image": x[:, :, :27]},
        "datatype FP64": {"image": x.astype(np.float64)},
        "one input named 'image'": {"pixels": x},
        "an empty batch": {"image": x[:0]},
    }
    for message, inputs in cases.items():
        body, length = encode_request(inputs, binary=True)
        answer = client.post(
            f"/v2/models/{NAME}/infer", content=body, headers={**auth(), HEADER_LENGTH: str(length or len(body))}
        )
        assert answer.status_code == 400 and message in answer.json()["error"], (message, answer.text)
    garbage = client.post(f"/v2/models/{NAME}/infer", content=b"{", headers=auth())
    assert garbage.status_code == 400 and "not JSON" in garbage.json()["error"]


def test_a_body_over_the_limit_is_413(service):
    client, *_ = service
    answer = client.post(f"/v2/models/{NAME}/infer", content=b"0" * (600 * 1024), headers=auth())
    assert answer.status_code == 413 and "max_body_mb" in answer.json()["error"]
    assert answer.headers[VERSION_HEADER] == "7"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"0" * (64 * 1024)

    assert client.post(f"/v2/models/{NAME}/infer", content=chunks(), headers=auth()).status_code == 413


def test_the_file_endpoint_equals_medimg_predict(service, small_model, tmp_path):
    client, _, metrics, log, _ = service
    model, images, _ = small_model
    png = tmp_path / "case.png"
    Image.fromarray(images[0]).save(png)
    expected = to_rows(predict_files(model, [png, CT_SMALL]), model.class_names)
    answer = client.post(f"/medimg/v1/models/{NAME}/predict", content=png.read_bytes(), headers=auth())
    assert answer.status_code == 200, answer.text
    row = answer.json()
    assert row["model_version"] == "7" and row["onnx_sha256"] == SHA and "file" not in row
    for key, value in expected[0].items():
        if key != "file":
            assert row[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float) else value), key

    # a DICOM: the small model records no modalities or limits, so medimg predict scores the CT slice; so does this
    ct = client.post(f"/medimg/v1/models/{NAME}/predict", content=CT_SMALL.read_bytes(), headers=auth())
    assert ct.status_code == 200 and expected[1]["error"] is None
    assert ct.json()["abnormal_probability"] == pytest.approx(expected[1]["abnormal_probability"], abs=1e-12)

    text = client.post(f"/medimg/v1/models/{NAME}/predict", content=b"hello", headers=auth())
    assert text.status_code == 422 and text.json()["error"] == "not_an_image"
    assert client.post(f"/medimg/v1/models/{NAME}/predict", content=b"", headers=auth()).status_code == 400

    entries = list(log.read())
    assert [e.source for e in entries] == ["http_file"] * 3
    assert entries[0].p_abnormal == pytest.approx(expected[0]["abnormal_probability"], abs=1e-12)
    assert entries[0].input_mean is not None and entries[2].refusal_reason == "not_an_image"
    assert entries[1].study is not None and entries[1].study.startswith("study-")  # pseudonyms only
    raw = log.path.read_text()
    from pydicom import dcmread  # here: the CT's real identifiers, to show none reached the log

    ds = dcmread(CT_SMALL, stop_before_pixels=True)
    for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, str(ds.PatientID)):
        assert value not in raw
    exposition = metrics.exposition()[0].decode()
    assert 'medimg_serve_refusals_total{path="http",reason="not_an_image"} 1.0' in exposition
    assert 'endpoint="/medimg/v1/models/{name}/predict",status="422"' in exposition


def test_status_and_metrics(service):
    client, *_ = service
    status = client.get("/medimg/v1/status", headers=auth()).json()
    assert status["model_name"] == NAME and status["model_version"] == "7" and status["dicom_node"] is True
    client.get("/v2/health/ready")
    page = client.get("/metrics", headers=auth())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    assert 'medimg_serve_requests_total{endpoint="/v2/health/ready",status="200"} 1.0' in page.text
    assert "medimg_serve_request_latency_seconds_bucket" in page.text


def test_observe_dicom_counts_outcomes_and_refusals():
    metrics = ServeMetrics()
    metrics.observe_dicom(None, 0.2)
    metrics.observe_dicom("modality_mismatch", 0.01)
    text = metrics.exposition()[0].decode()
    assert 'medimg_serve_dicom_instances_total{outcome="stored"} 1.0' in text
    assert 'medimg_serve_dicom_instances_total{outcome="refused"} 1.0' in text
    assert 'medimg_serve_refusals_total{path="dicom",reason="modality_mismatch"} 1.0' in text
    assert 'medimg_serve_request_latency_seconds_count{endpoint="dicom",path="dicom"} 2.0' in text
