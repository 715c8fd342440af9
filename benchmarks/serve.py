"""``medimg serve`` end to end: PACS round-trip latency and HTTP v2 throughput against bare ONNX Runtime.

Why: issue 15's two measures. A radiology site cares how long after an image reaches the PACS the AI
result is there to open; a deployment pipeline cares what the HTTP layer costs over the model itself.

What runs (all real, all on 127.0.0.1): Orthanc from ``scripts/services.sh`` (its ``env`` must be
exported: ``MEDIMG_ORTHANC_*``); for each model a fresh workspace whose champion is made by the real
retraining flow (``medimg run``; a few optimiser steps and relaxed gates: the model's quality does not
matter to latency, its size does); then ``medimg serve`` as a subprocess following that registry and
Orthanc's change feed with the shipped ``serve`` settings (``--set serve.pacs_poll_seconds=...`` to
change them).

* **Latency**: ``--images`` (default 50) copies of the shared chest radiograph
  (``dicom/xray/1.2.276...850819.dcm``, real pixels), each with new Study/Series/SOP Instance UIDs, are
  sent one at a time by C-STORE (pynetdicom, one association each); the clock runs from the start of
  the C-STORE to the moment a QIDO-RS search of that study (polled every 20 ms) finds the SR. p50,
  p95 and max in milliseconds. Models: the default (``params.yaml``, 28 px) and a 224 px variant of it
  (``preprocess.size: 224``).
* **Throughput**: the official ``tritonclient.http`` client sends real preprocessed PneumoniaMNIST test
  images to ``/v2/models/{name}/infer`` (binary tensor extension, one client thread) at batch 1 and 32
  for ``--seconds``; the same verified ONNX file is run by a bare ONNX Runtime loop in this process on
  the same batches (same session options as the service: :class:`medimg.scoring.OnnxModel`). The
  overhead ratio is bare images/s over served images/s. Client, server and bare loop share the machine's
  cores: compare ratios, not absolutes.

The models start from ``--base`` (default ``params.yaml``) with ``--flow-set`` overrides. At 224 px the shipped
``train.batch_size`` of 128 made the training step grow to about 15 GB, and the kernel's OOM killer stopped it
while the test suite shared the machine (with PneumoniaMNIST and with BreastMNIST alike); the 224 px figures in
the README come from BreastMNIST (780 images) at 224 px with batch 16, allowed to take CR/DX images so that the
chest radiograph gets its SR: latency depends on the input size and the network, not on the labels.

Output: one JSON document on stdout (and progress on stderr).

    eval "$(scripts/services.sh env)"        # after scripts/services.sh start orthanc
    .venv/bin/python benchmarks/serve.py [--images 50] [--seconds 20] [--sizes 28 224]
    .venv/bin/python benchmarks/serve.py --sizes 224 --base params/breastmnist.yaml \
        --flow-set "task.modalities=[US, CR, DX]" --flow-set task.body_part=null
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import requests
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medimg import preprocess  # noqa: E402
from medimg.cli import parse_overrides  # noqa: E402
from medimg.config import deep_merge, read_params_file  # noqa: E402
from medimg.data.medmnist import locate  # noqa: E402
from medimg.pacs.orthanc import OrthancClient  # noqa: E402
from medimg.scoring import OnnxModel  # noqa: E402

SOURCE = "dicom/xray/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAST = {
    "train": {"epochs": 1, "max_steps": 10, "num_threads": 2},
    # one network, as measured in the README: a base's ensemble (params/breastmnist.yaml: 3 members, 2 views)
    # would run every member on every view per request
    "model": {"ensemble": {"members": 1, "tta_flips": []}},
    # relaxed gates (as tests/registry_fixtures.py): a cheap model must become the champion to be served
    "gates": {
        "bootstrap_samples": 200,
        "min_auc": 0.0,
        "min_accuracy": 0.0,
        "benchmark": {"margin": 1.0},
    },
    "export": {"parity_images": 32},
}
USER, PASSWORD = "bench", secrets.token_urlsafe(16)


def say(*parts: object) -> None:
    print("[serve-bench]", *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def data_dir() -> Path:
    found = os.environ.get("MEDIMG_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(found)


def orthanc_env() -> dict[str, str]:
    names = ("MEDIMG_ORTHANC_URL", "MEDIMG_ORTHANC_DICOM", "MEDIMG_ORTHANC_USERNAME", "MEDIMG_ORTHANC_PASSWORD")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        sys.exit(
            f'{", ".join(missing)} not set: scripts/services.sh start orthanc && eval "$(scripts/services.sh env)"'
        )
    return {n: os.environ[n] for n in names}


def medimg(*args: str, env: dict[str, str], stdin: str | None = None) -> None:
    # its output to stderr: stdout is this script's JSON
    subprocess.run(
        [sys.executable, "-m", "medimg.cli", *args],
        env=env,
        input=stdin,
        text=True,
        check=True,
        cwd=ROOT,
        stdout=sys.stderr,
    )


def make_champion(root: Path, size: int, base: Path, flow_sets: list[str], env: dict[str, str]) -> Path:
    """A workspace under ``root`` whose champion the real flow trained at ``size`` px from ``base`` with
    ``flow_sets`` (``section.key=value``) merged in; returns its params file."""
    params = deep_merge(read_params_file(base), FAST)
    params = deep_merge(params, parse_overrides(flow_sets))
    params["workspace"]["path"] = str(root / "ws")
    params["preprocess"]["size"] = size
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    say(f"training a {size} px champion of {base.name} with the real flow (a few steps) in {root}")
    medimg("run", "--params", str(params_file), env=env)
    medimg("users", "add", USER, "--role", "service", "--params", str(params_file), env=env, stdin=PASSWORD + "\n")
    return params_file


@contextlib.contextmanager
def serving(params_file: Path, overrides: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """``medimg serve`` on a free port until the model and the DICOM path are ready; yields its base URL."""
    port = free_port()
    sets = [a for item in overrides for a in ("--set", item)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medimg.cli", "serve", "--params", str(params_file), "--port", str(port), *sets],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                sys.exit(f"medimg serve exited {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                status = requests.get(f"{base}/medimg/v1/status", auth=(USER, PASSWORD), timeout=5)
                if status.ok and status.json().get("ready") and status.json().get("dicom_ready"):
                    break
            if time.monotonic() > deadline:
                sys.exit(f"medimg serve not ready in 300 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)


def fresh_copy(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(orthanc: dict[str, str], images: int) -> dict:
    """C-STORE -> SR retrievable by QIDO-RS, one image at a time (module docstring)."""
    aet, address = orthanc["MEDIMG_ORTHANC_DICOM"].split("@")
    host, port = address.rsplit(":", 1)
    client = OrthancClient(
        orthanc["MEDIMG_ORTHANC_URL"], orthanc["MEDIMG_ORTHANC_USERNAME"], orthanc["MEDIMG_ORTHANC_PASSWORD"]
    )
    source = data_dir() / SOURCE
    ae = AE(ae_title="MEDIMG-BENCH")
    template = pydicom.dcmread(source)
    ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    times_ms: list[float] = []
    for i in range(images):
        ds = fresh_copy(source)
        started = time.perf_counter()
        assoc = ae.associate(host, int(port), ae_title=aet)
        if not assoc.is_established:
            sys.exit("no association with Orthanc's DICOM port")
        status = assoc.send_c_store(ds)
        assoc.release()
        if not status or status.Status != 0:
            sys.exit(f"C-STORE failed: {status}")
        deadline = started + 120
        while True:
            found = client.dicomweb.search_for_instances(
                study_instance_uid=ds.StudyInstanceUID, search_filters={"Modality": "SR"}
            )
            if found:
                break
            if time.perf_counter() > deadline:
                sys.exit(f"no SR for image {i} after 120 s")
            time.sleep(0.02)
        times_ms.append((time.perf_counter() - started) * 1000)
        if (i + 1) % 10 == 0:
            say(f"  {i + 1}/{images} images, last {times_ms[-1]:.0f} ms")
    return {
        "images": images,
        "p50_ms": round(percentile(times_ms, 50), 1),
        "p95_ms": round(percentile(times_ms, 95), 1),
        "max_ms": round(max(times_ms), 1),
        "mean_ms": round(statistics.fmean(times_ms), 1),
    }


def test_batches(model: OnnxModel, batch: int, count: int) -> list[np.ndarray]:
    """``count`` batches of real PneumoniaMNIST test images through the model's own contract."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = locate("pneumoniamnist", data_dir(), Path(tmp), download=False)
        images = archive.load()["test"][0]
    x = preprocess.apply(images[: batch * min(count, 4)], model.config).numpy().astype(np.float32)
    groups = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
    return [groups[i % len(groups)] for i in range(count)]


def rate(run, batches: list[np.ndarray], seconds: float) -> float:
    """Images per second of ``run(batch)`` over ``seconds`` (after 3 warm-up calls)."""
    for b in batches[:3]:
        run(b)
    done = 0
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        b = batches[i % len(batches)]
        run(b)
        done += len(b)
        i += 1
    return done / (time.perf_counter() - started)


def throughput(base: str, onnx_path: Path, model_name: str, seconds: float) -> dict:
    """tritonclient HTTP v2 against a bare ONNX Runtime loop on the same file and batches."""
    import base64

    import tritonclient.http as httpclient

    model = OnnxModel(onnx_path)
    client = httpclient.InferenceServerClient(url=base.removeprefix("http://"), network_timeout=120)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    out = {}
    for batch in (1, 32):
        batches = test_batches(model, batch, 16)

        def served(x: np.ndarray) -> None:
            inp = httpclient.InferInput(model.input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
            # a new dict per call: tritonclient writes its own header into the dict it is given
            client.infer(model_name, [inp], outputs=outputs, headers={"Authorization": f"Basic {token}"})

        def bare(x: np.ndarray) -> None:
            model.class_probabilities(x)

        served_rate = rate(served, batches, seconds)
        bare_rate = rate(bare, batches, seconds)
        out[f"batch_{batch}"] = {
            "served_images_per_s": round(served_rate, 1),
            "bare_onnxruntime_images_per_s": round(bare_rate, 1),
            "overhead_ratio": round(bare_rate / served_rate, 2),
        }
        say(f"  batch {batch}: served {served_rate:.0f}/s, bare {bare_rate:.0f}/s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="params override for medimg serve")
    parser.add_argument("--base", type=Path, default=ROOT / "params.yaml", help="params file the models start from")
    parser.add_argument(
        "--flow-set", dest="flow_sets", action="append", default=[], help="params override for the models' training"
    )
    args = parser.parse_args()
    orthanc = orthanc_env()
    env = {**os.environ, "MEDIMG_DATA_DIR": str(data_dir()), "MEDIMG_DEID_SECRET": secrets.token_hex(16)}
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": os.getloadavg()[0],
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="medimg-serve-bench-") as tmp:
        for size in args.sizes:
            root = Path(tmp) / f"size{size}"
            root.mkdir()
            params_file = make_champion(root, size, args.base.resolve(), args.flow_sets, env)
            with serving(params_file, args.sets, env, root / "serve.log") as base:
                status = requests.get(f"{base}/medimg/v1/status", auth=(USER, PASSWORD), timeout=10).json()
                say(f"{size} px: serving v{status.get('model_version')}; latency over {args.images} images")
                entry: dict = {"model_version": status.get("model_version"), "latency": latency(orthanc, args.images)}
                say(f"{size} px latency: {json.dumps(entry['latency'])}")
                model_dir = root / "ws" / "serve" / "models" / str(status.get("model_version"))
                onnx_path = next(model_dir.rglob("model.onnx"))
                say(f"{size} px: throughput, {args.seconds:.0f} s per engine and batch size")
                name = yaml.safe_load(params_file.read_text())["registry"]["model_name"]
                entry["throughput"] = throughput(base, onnx_path, name, args.seconds)
                say(f"{size} px throughput: {json.dumps(entry['throughput'])}")
            report["models"][f"{size}px"] = entry
    report["load_after"] = os.getloadavg()[0]
    report["serve_settings"] = args.sets or "as shipped in params.yaml (serve.pacs_poll_seconds 0.5)"
    report["models_from"] = {"base": str(args.base), "overrides": args.flow_sets}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
