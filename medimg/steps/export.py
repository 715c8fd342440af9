"""Step 6: ONNX export with metadata, ``onnx.checker`` and parity against PyTorch on real images."""

from __future__ import annotations

import json
import logging

from medimg import artifacts, preprocess, tracking
from medimg.config import Params
from medimg.data import manifest
from medimg.export.onnx_export import (
    INPUT_NAME,
    META_PREPROCESSING,
    OUTPUT_NAME,
    ExportError,
    check_parity,
    export,
)
from medimg.provenance import file_sha256, git_commit
from medimg.steps.train import run_dir
from medimg.training.data import load_split, split_rows
from medimg.training.models import load_model
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def metadata(params: Params, run_id: str, data_version: str, threshold: float) -> dict[str, object]:
    return {
        "medimg.class_names": list(params.data.class_names),
        "medimg.positive_class": params.data.class_names[1],
        "medimg.threshold": threshold,
        "medimg.output": f"{OUTPUT_NAME}: [N, {len(params.data.class_names)}] logits; softmax[:, 1] is the positive-class probability",
        "medimg.input_name": INPUT_NAME,
        "medimg.input_layout": "NCHW float32",
        META_PREPROCESSING: preprocess.contract(params.preprocess),
        "medimg.preprocessing_hash": preprocess.contract_hash(params.preprocess),
        "medimg.data_version": data_version,
        "medimg.git_commit": git_commit(),
        "medimg.mlflow_run_id": run_id,
        "medimg.architecture": params.model.architecture,
        "medimg.params_hash": params.fingerprint(),
    }


def run(params: Params, ws: Workspace, run_id: str, ingested: dict, validated: dict, trained: dict,
        evaluated: dict) -> dict:
    model = load_model(params.model, params.preprocess.channels, len(params.data.class_names), trained["checkpoint"])
    rows = split_rows(manifest.read(ws.data), "test", set(validated.get("dropped_ids") or []))
    test = load_split(ws.data, rows.head(params.export.parity_images), "test")
    x = preprocess.apply(test.images, params.preprocess)
    path = run_dir(ws, run_id) / "model.onnx"
    export(model, x, path, params.export.opset, metadata(params, run_id, ingested["data_version"], evaluated["threshold"]))
    parity = check_parity(model, path, x, params.export.parity_atol)
    sha256 = file_sha256(path)
    tracking.log_json(run_id, parity.to_json(), artifacts.PARITY_REPORT)
    tracking.log_metrics(run_id, {"onnx_parity_max_abs_diff": parity.max_abs_diff})
    log.info("ONNX %s sha256 %s; parity on %d test images: max |logit diff| %.2e, labels identical: %s",
             path.name, sha256, parity.n_images, parity.max_abs_diff, parity.labels_identical)
    if not parity.passed:
        raise ExportError(f"{path}: ONNX parity failed: {json.dumps(parity.to_json())}")
    return {"onnx": str(path), "sha256": sha256, "parity": parity.to_json(), "size_bytes": path.stat().st_size}
