"""Live monitoring with real images: a prediction log made by ``medimg serve`` scoring real PneumoniaMNIST
images (unchanged, or with their contrast halved and brightness raised, as a miscalibrated detector would send
them) is judged by the monitor flow; the shifted log raises the drift event and its notification (a real
webhook on 127.0.0.1), the unshifted one does not. The review pages show the report.

Real registry (the template's v1 champion, its test predictions and data version manifest), real ONNX
Runtime through the service's file endpoint, real Prefect (test harness).
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from datapaths import PNEUMONIAMNIST
from lineage_fixtures import full_clone
from medimg.cli import app
from medimg.monitoring.report import read_report
from medimg.monitoring.windows import ReviewedCase, rates, split_windows, wilson
from medimg.serving.metrics import ServeMetrics
from medimg.serving.model_follower import ModelFollower
from medimg.serving.prediction_log import LoggedPrediction, PredictionLog
from registry_fixtures import MODEL, _activated, write_params
from review_site import make_site, make_users

pytestmark = pytest.mark.integration
WINDOW = {"window_size": 100, "min_window_size": 50}


class _Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def webhook():
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.json"
    make_users(path)
    return path


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _serve_log(tmp_path, registry_template, users_file, images: np.ndarray):
    """A full clone of the registry; ``images`` posted one by one to the service's file endpoint."""
    clone = full_clone(registry_template, tmp_path / "registry")
    mp = _activated(clone.ws)
    follower = ModelFollower(MODEL, "champion", tmp_path / "models", 3600, ServeMetrics())
    assert follower.refresh().outcome == "loaded"
    site = make_site(tmp_path, users_file, ws_root=clone.ws.root, holder=follower)
    client = site.client()
    auth = ("svc", "svc-password-4")
    for image in images:
        answer = client.post(f"/medimg/v1/models/{MODEL}/predict", content=_png(image), auth=auth)
        assert answer.status_code == 200, answer.text
    return clone, site, mp


def _images(split: str, n: int) -> np.ndarray:
    with np.load(PNEUMONIAMNIST) as archive:
        return archive[f"{split}_images"][:n]


def _shifted(images: np.ndarray) -> np.ndarray:
    """Contrast halved and brightness raised: what a detector with another look-up table sends."""
    return np.clip(np.rint(images.astype(np.float64) * 0.5 + 110), 0, 255).astype(np.uint8)


def _run_flow(clone, webhook: str):
    from flows.monitor import monitor

    params_file = write_params(
        clone.ws.root.parent,
        clone.ws.root,
        overrides={"monitor": WINDOW, "orchestration": {"notify_webhook_url": webhook}},
    )
    return monitor(params_path=str(params_file), return_state=True)


def test_a_log_of_shifted_images_raises_the_drift_event(
    tmp_path, registry_template, users_file, webhook, prefect_harness
):
    clone, site, mp = _serve_log(tmp_path, registry_template, users_file, _shifted(_images("val", 120)))
    try:
        logged = list(PredictionLog(clone.ws.prediction_log).read())
        assert len(logged) == 120 and all(e.input_mean is not None for e in logged)
        _Webhook.received.clear()
        state = _run_flow(clone, webhook)
        assert state.is_completed() and state.name == "Events", state.message
        report = read_report(clone.ws.monitoring)
        current = report.windows[-1]
        assert current.judged and current.n_entries == 100 and current.model_version == "1"
        mean_drift = next(d for d in current.input_drift if d.feature == "input_mean")
        assert mean_drift.drifted and mean_drift.psi > 1 and mean_drift.ks_pvalue < 1e-6
        assert "input_drift" in {e.code for e in report.events}
        assert {h["outcome"] for h in _Webhook.received} >= {"input_drift"}
        assert all(h["model"] == MODEL for h in _Webhook.received)
        # the older, short window (20 entries) is shown but not judged
        assert not report.windows[0].judged and report.windows[0].n_entries == 20 and not report.windows[0].events

        client = site.client()
        site.login(client, "rad")
        page = client.get("/review/monitoring")
        assert page.status_code == 200 and "input_drift" in page.text
        for window in report.windows:
            plot = client.get(f"/review/monitoring/plots/{window.plot}")
            assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        assert client.get("/review/monitoring/plots/overview.png").status_code == 200
        assert client.get("/review/monitoring/plots/..%2Freport.json").status_code == 404
    finally:
        mp.undo()


def test_a_log_of_unshifted_images_raises_no_event(tmp_path, registry_template, users_file, webhook, prefect_harness):
    clone, _, mp = _serve_log(tmp_path, registry_template, users_file, _images("val", 120))
    try:
        _Webhook.received.clear()
        state = _run_flow(clone, webhook)
        assert state.is_completed() and state.name == "NoEvent", state.message
        report = read_report(clone.ws.monitoring)
        current = report.windows[-1]
        assert current.judged and current.score_drift is not None and not current.score_drift.drifted
        assert all(not d.drifted for d in current.input_drift) and len(current.input_drift) == 2
        assert report.events == () and _Webhook.received == []
        # the same run from the command line
        params_file = clone.ws.root.parent / "params.yaml"
        result = CliRunner().invoke(app, ["monitor", "--params", str(params_file)])
        assert result.exit_code == 0 and "NoEvent" in result.output, result.output
        assert read_report(clone.ws.monitoring).generated_at > report.generated_at
    finally:
        mp.undo()


# ----------------------------------------------------------------------------- the pure parts


def test_wilson_intervals_match_the_published_values():
    """Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; and the edges 0/10 and 10/10."""
    rate = wilson(81, 263)
    assert rate.low == pytest.approx(0.2553, abs=5e-5) and rate.high == pytest.approx(0.3662, abs=5e-5)
    assert wilson(0, 10).low == 0.0 and wilson(0, 10).high == pytest.approx(0.2775, abs=5e-5)
    assert wilson(10, 10).high == 1.0 and wilson(0, 0).rate is None


def test_realised_rates_use_the_readers_labels():
    cases = [ReviewedCase("t", True, True)] * 8 + [ReviewedCase("t", False, True)] * 2
    cases += [ReviewedCase("t", False, False)] * 5 + [ReviewedCase("t", True, False)] * 5
    sensitivity, specificity = rates(cases)
    assert (sensitivity.successes, sensitivity.n, specificity.successes, specificity.n) == (8, 10, 5, 10)


def test_windows_are_counted_back_from_the_newest_entry():
    entries = [LoggedPrediction("http_file", MODEL, "1", "x", 1.0, time=f"{i:04d}") for i in range(250)]
    chunks = split_windows(entries, 100, 10)
    assert [len(c) for c in chunks] == [50, 100, 100] and chunks[-1][-1].time == "0249"
    assert [len(c) for c in split_windows(entries, 100, 2)] == [100, 100]
