"""The hospital loop end to end, in a real browser: Debian's Chromium driven by Playwright (nothing downloaded).

1. A workspace with an ``image_folder`` source (real chest X-ray JPEGs) and an inbox; the real retrain flow
   registers v1 as champion (relaxed gates: this tests the loop, not the model).
2. Orthanc (``scripts/services.sh start orthanc``, its own state folder) and ``medimg serve`` (a subprocess,
   its DICOM node following Orthanc); a CR chest DICOM is stored into Orthanc over its REST API; the node
   scores it, stores the SR and makes a review case.
3. Chromium: log in, open the case from the worklist, hide and show the Grad-CAM overlay, correct the label
   with a comment; the reviewed image is in the inbox with its provenance.
4. The inbox watcher (``flows/watch_inbox.py``) sees it and retrains on a new data version; the new model's
   lineage lists the review, and the browser shows the lineage page.

Screenshots of every step are saved in the test's folder and copied to ``test-artifacts/review-browser/``
(git-ignored) so they survive the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import yaml

from datapaths import CHEST, CR_CHEST
from medimg.config import deep_merge, load_params
from medimg.users import UserStore
from progress import run_logged, wait_while_progressing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ARTIFACTS = ROOT / "test-artifacts" / "review-browser"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a-long-radiologist-password"
RELAXED_GATES = {
    "min_auc": 0.0,
    "min_accuracy": 0.0,
    "benchmark": {"margin": 1.0},
    "champion_auc_margin": 1.0,
    "bootstrap_samples": 200,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy(sources: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for src in sources:
        shutil.copy(src, folder / src.name)


@pytest.fixture
def orthanc(tmp_path):
    """Orthanc alone, from scripts/services.sh, in a state folder of its own; stopped at the end."""
    state = tmp_path / "services"
    env = {**os.environ, "MEDIMG_SERVICES_DIR": str(state), "MEDIMG_VENV": str(Path(PYTHON).parents[1])}
    script = str(ROOT / "scripts" / "services.sh")
    started = run_logged(["bash", script, "start", "orthanc"], tmp_path / "orthanc-start.log", env=env)
    assert started.returncode == 0, started.stdout[-3000:]
    try:
        printed = subprocess.run(["bash", script, "env"], env=env, capture_output=True, text=True, check=True).stdout
        values = dict(
            line.removeprefix("export ").split("=", 1) for line in printed.splitlines() if "MEDIMG_ORTHANC" in line
        )
        yield values
    finally:
        subprocess.run(["bash", script, "stop", "orthanc"], env=env, capture_output=True, check=False)


def _orthanc_get(env: dict[str, str], path: str) -> object:
    request = urllib.request.Request(env["MEDIMG_ORTHANC_URL"] + path)
    token = b64encode(f"{env['MEDIMG_ORTHANC_USERNAME']}:{env['MEDIMG_ORTHANC_PASSWORD']}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _orthanc_upload(env: dict[str, str], data: bytes) -> dict:
    request = urllib.request.Request(env["MEDIMG_ORTHANC_URL"] + "/instances", data=data, method="POST")
    token = b64encode(f"{env['MEDIMG_ORTHANC_USERNAME']}:{env['MEDIMG_ORTHANC_PASSWORD']}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/dicom")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _get_json(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, {}
    except OSError:
        return 0, {}


def _params(tmp_path: Path, port: int) -> tuple[Path, dict]:
    source, inbox = tmp_path / "source", tmp_path / "inbox"
    for split, n in (("train", 15), ("test", 8)):
        for cls in ("NORMAL", "PNEUMONIA"):
            _copy(sorted((CHEST / split / cls).iterdir())[:n], source / split / cls)
    inbox.mkdir()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = {
        "workspace": {"path": str(tmp_path / "ws"), "tracking_uri": None},
        "data": {
            "source": "image_folder",
            "root": str(source),
            "inbox": str(inbox),
            "deid": {"demo": True},
            "split": {"val_fraction": 0.3},
            "workers": 1,
        },
        "validation": {"expected_split_sizes": None},
        "model": {"width": 8},
        "train": {"epochs": 2, "num_threads": 1},
        "gates": RELAXED_GATES,
        "export": {"parity_images": 16},
        "serve": {"port": port, "poll_seconds": 1, "pacs_poll_seconds": 0.2},
    }
    for section, values in sections.items():
        raw[section] = deep_merge(raw.get(section) or {}, values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def _serve_env(orthanc_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MEDIMG_"))}
    env.update(orthanc_env, MEDIMG_DATA_DIR=str(CHEST.parent), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_review_in_the_browser_feeds_the_next_model(tmp_path, orthanc, prefect_harness, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    from flows.retrain import retrain
    from flows.watch_inbox import watch_inbox
    from medimg import registry
    from medimg.lineage import lineage, render_html
    from medimg.review.reviews import ReviewLog
    from medimg.workspace import Workspace

    shots = tmp_path / "screenshots"
    shots.mkdir()
    port = _free_port()
    params_file, raw = _params(tmp_path, port)
    ws = Workspace.at(raw["workspace"]["path"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.default_tracking_uri())
    monkeypatch.delenv("MEDIMG_DEID_SECRET", raising=False)

    # 1. the first model, from the source alone
    first = retrain(params_path=str(params_file), return_state=True)
    assert first.is_completed() and first.result().model.alias == "champion", first.message
    UserStore(ws.users_file).add("rad", "radiologist", PASSWORD)

    # 2. medimg serve with its DICOM node on Orthanc
    serve_log = tmp_path / "serve.log"
    with open(serve_log, "w") as out:  # the child keeps its own copy of the descriptor
        serve = subprocess.Popen(
            [PYTHON, "-m", "medimg.cli", "serve", "--params", str(params_file)],
            cwd=ROOT,
            env=_serve_env(orthanc),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        status = wait_while_progressing(
            lambda: (lambda s: s[1] if s[0] == 200 and s[1].get("dicom_ready") and s[1].get("ready") else None)(
                _get_json(f"{base}/medimg/v1/status", ("rad", PASSWORD))
            ),
            "medimg serve ready with its DICOM node",
            procs=[serve],
            logs=[serve_log],
        )
        assert status["model_version"] == "1" and status["dicom_node"] is True
        stored = _orthanc_upload(orthanc, CR_CHEST.read_bytes())
        study = stored["ParentStudy"]

        def reported() -> bool:
            series = _orthanc_get(orthanc, f"/studies/{study}/series?expand")
            return any(s["MainDicomTags"].get("Modality") == "SR" for s in series) and any(ws.cases.iterdir())

        wait_while_progressing(
            lambda: ws.cases.is_dir() and reported(), "SR stored and case made", procs=[serve], logs=[serve_log]
        )
        (case_dir,) = [p for p in ws.cases.iterdir() if not p.name.startswith(".")]
        case = json.loads((case_dir / "case.json").read_text())

        # 3. the radiologist, in Chromium
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/review/worklist")
            expect(page).to_have_url(f"{base}/review/login?next=%2Freview%2Fworklist")
            page.screenshot(path=shots / "01-login.png")
            page.fill("#username", "rad")
            page.fill("#password", "wrong password")
            page.click("#login")
            expect(page.locator("#login-error")).to_contain_text("wrong user name or password")
            page.fill("#username", "rad")
            page.fill("#password", PASSWORD)
            page.click("#login")
            expect(page).to_have_url(f"{base}/review/worklist")
            cookie = next(c for c in page.context.cookies() if c["name"] == "medimg_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/review"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
            expect(page.locator(".case-link")).to_have_count(1)
            page.screenshot(path=shots / "02-worklist.png", full_page=True)

            page.click(f"text={case['case_id']}")
            expect(page.locator("#decision")).to_contain_text(case["predicted_class"])
            expect(page.locator("#model")).to_contain_text("v1")
            overlay = page.locator("#gradcam")
            expect(overlay).to_be_visible()
            page.wait_for_load_state("load")  # the page's pictures are loaded before its load event
            for picture in ("case-image", "gradcam"):  # both pictures, at the stored image's size
                assert page.evaluate(f"document.getElementById('{picture}').naturalWidth") == case["width"]
            page.screenshot(path=shots / "03-case-with-gradcam.png", full_page=True)
            page.uncheck("#show-gradcam")
            expect(overlay).to_be_hidden()
            page.screenshot(path=shots / "04-case-without-gradcam.png", full_page=True)
            page.check("#show-gradcam")
            expect(overlay).to_be_visible()

            corrected = "normal" if case["predicted_class"] == "pneumonia" else "pneumonia"
            page.check(f"#label-{corrected}")
            page.fill("#comment", "<b>not</b> what the model says")
            page.screenshot(path=shots / "05-correcting.png", full_page=True)
            page.click("#submit-review")
            expect(page.locator("#review-saved")).to_be_visible()
            expect(page.locator("#your-review")).to_contain_text(corrected)
            expect(page.locator("#reviews .comment")).to_have_text("<b>not</b> what the model says")
            expect(page.locator("#reviews")).to_contain_text(f"{corrected}/review-{case['case_id']}.png")  # inbox
            page.screenshot(path=shots / "06-reviewed.png", full_page=True)

            page.goto(f"{base}/review/worklist?show=disagreements")
            expect(page.locator(".case-link")).to_have_count(1)
            page.click("#logout")
            expect(page).to_have_url(f"{base}/review/login")
            page.goto(f"{base}/review/cases/{case['case_id']}")
            expect(page).to_have_url(f"{base}/review/login?next=%2Freview%2Fcases%2F{case['case_id']}")

            # the example in the inbox, with its provenance
            example = tmp_path / "inbox" / corrected / f"review-{case['case_id']}.png"
            assert example.is_file() and example.read_bytes() == (case_dir / "image.png").read_bytes()
            provenance = json.loads(example.with_name(f"review-{case['case_id']}.provenance.json").read_text())
            assert provenance["label"] == corrected and provenance["model_version"] == "1"
            assert provenance["reader_pseudonym"].startswith("reader-") and "rad" not in provenance["reader_pseudonym"]

            browser.close()

        # 4. the inbox watcher retrains on a new data version; the new model's lineage lists the review
        # (outside Playwright's context: its event loop would turn Prefect's State.result() into a coroutine)
        watched = watch_inbox(params_path=str(params_file), return_state=True)
        assert watched.name in ("Completed", "NotPromoted"), watched.message
        newest = registry.versions(raw["registry"]["model_name"])[0]  # the watcher's retrain registered it
        assert newest.version == "2"
        (review,) = ReviewLog(ws.reviews_log).read()
        report = lineage(load_params(params_file), ws, newest.version)
        assert [r.case_id for r in report.reviews.reviews] == [case["case_id"]]
        assert report.reviews.reviews[0].sha256 == review.example_sha256
        assert report.data.version != lineage(load_params(params_file), ws, "1").data.version
        html = tmp_path / "lineage-v2.html"
        html.write_text(render_html(report), encoding="utf-8")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(html.as_uri())
            expect(page.locator("#reviews")).to_contain_text(case["case_id"])
            page.locator("#reviews").screenshot(path=shots / "07-lineage-of-v2-reviews.png")
            page.screenshot(path=shots / "08-lineage-of-v2.png", full_page=True)
            browser.close()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        ARTIFACTS.mkdir(parents=True)
        for path in [*shots.glob("*.png"), serve_log]:
            shutil.copy(path, ARTIFACTS / path.name)
    log_text = serve_log.read_text(errors="replace")
    assert "1.2.276.0.7230010" not in log_text  # the service logs pseudonyms, never a UID
