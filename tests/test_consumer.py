"""A consumer with only onnxruntime, numpy and Pillow reproduces medimg's predictions from the file alone.

The consumer below runs in a separate Python process and never imports medimg or torch (it
checks ``sys.modules`` at the end). Everything it does comes from the model's metadata: input
name, threshold, class names, task kind, abnormal classes, and the preprocessing contract (grey
uint8 rules, bilinear resize with half-pixel centres, scaling, normalisation, channels). Its
probabilities must match ``medimg.predict`` within 1e-5 on real PNG and JPEG files, and its
decisions (predicted class, abnormality flag) must be the same: for the binary pneumonia champion
and for a 4-class brain tumour MRI model.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medimg.cli import app
from medimg.predict import predict_files
from medimg.pull import pull
from medimg.scoring import OnnxModel
from progress import run_logged
from test_predict import BRAIN_CLASSES, brain_mri_model, chest_jpegs, sixteen_bit_png

CONSUMER = textwrap.dedent('''
    """Score PNG/JPEG files with a medimg ONNX model using only onnxruntime, numpy and Pillow."""
    import json
    import sys

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    model_path, files = sys.argv[1], sys.argv[2:]
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    contract = json.loads(meta["medimg.preprocessing"])
    threshold = float(meta["medimg.threshold"])  # on p_abnormal
    classes = json.loads(meta["medimg.class_names"])
    input_name = meta["medimg.input_name"]
    # models exported before the task was recorded: binary, the abnormal class at index 1
    kind = meta.get("medimg.task_kind", "binary")
    abnormal = [classes.index(c) for c in json.loads(meta.get("medimg.abnormal_classes", json.dumps(classes[1:2])))]
    assert "grey_uint8" in contract and contract["layout"] == "NCHW float32"

    def grey_uint8(path):
        # contract["grey_uint8"]["png_jpeg"]: grey as stored, colour -> BT.601 luminance in float64,
        # uint8 = clip(rint(v * 255 / (2**bit_depth - 1)), 0, 255)
        image = Image.open(path)
        image.load()
        if image.mode in ("L", "LA"):
            values, depth = np.asarray(image.getchannel(0), dtype=np.float64), 8
        elif image.mode.startswith("I;16") or image.mode == "I":
            values, depth = np.asarray(image, dtype=np.float64), 16
        else:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
            values, depth = rgb @ np.array([0.299, 0.587, 0.114]), 8
        return np.clip(np.rint(values * 255.0 / (2.0 ** depth - 1.0)), 0, 255).astype(np.uint8)

    # this consumer implements the default contract; anything else must fail loudly, not mispredict
    assert contract["version"] >= 2 and contract["channels"] in (1, 3), contract
    assert contract.get("resize_policy", "stretch") == "stretch"
    assert contract.get("interpolation", "bilinear") == "bilinear"
    assert not contract.get("antialias") and contract.get("intensity", "auto") == "auto"
    assert "float32" in contract["resize_sampling"] and "width first" in contract["resize_sampling"]
    assert contract.get("denoise", "none") == "none"
    assert not contract.get("clahe") and not contract.get("jpeg_dct_scaling")
    f32 = np.float32

    def axis(n_in, n_out):
        # contract["resize_sampling"]: half-pixel centres in float32, s = (d + 0.5) * (in / out) - 0.5,
        # clamped at 0; neighbours floor(s) and min(floor(s) + 1, in - 1), weights 1 - t and t
        s = f32(n_in) / f32(n_out) * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
        s = np.maximum(s, f32(0.0))
        i0 = s.astype(np.int64)
        t = s - i0.astype(f32)
        return i0, np.minimum(i0 + 1, n_in - 1), f32(1.0) - t, t

    def contract_size(grey):
        # bilinear on x / 255 in float32, along the width first, then the height;
        # back to uint8 = clip(rint(y * 255))
        size = contract["size"]
        if grey.shape == (size, size):
            return grey
        r0, r1, rw0, rw1 = axis(grey.shape[0], size)
        c0, c1, cw0, cw1 = axis(grey.shape[1], size)
        x = grey.astype(f32) / f32(255.0)
        top = x[r0][:, c0] * cw0 + x[r0][:, c1] * cw1
        bottom = x[r1][:, c0] * cw0 + x[r1][:, c1] * cw1
        y = top * rw0[:, None] + bottom * rw1[:, None]
        return np.clip(np.rint(y * f32(255.0)), 0, 255).astype(np.uint8)

    def tensor(path):
        x = contract_size(grey_uint8(path)).astype(f32) / f32(255.0)
        x = (x - f32(contract["mean"])) / f32(contract["std"])
        return np.repeat(x[None, None], contract["channels"], axis=1).astype(f32)

    batch = np.concatenate([tensor(f) for f in files])
    logits = session.run(None, {input_name: batch})[0].astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)  # each class's probability, in class_names order
    p_abnormal = probs[:, abnormal].sum(axis=1)
    if kind == "binary":  # the class by the threshold on p_abnormal
        normal = classes[1 - abnormal[0]]
        decided = [classes[abnormal[0]] if p >= threshold else normal for p in p_abnormal]
    else:  # multiclass: arg-max
        decided = [classes[i] for i in probs.argmax(axis=1)]
    rows = [
        {
            "file": f,
            "probabilities": dict(zip(classes, map(float, row))),
            "abnormal_probability": float(p),
            "predicted_class": c,
            "abnormal": bool(p >= threshold),
        }
        for f, row, p, c in zip(files, probs, p_abnormal, decided)
    ]
    leaked = sorted(m for m in ("medimg", "torch") if m in sys.modules)
    print(json.dumps({"rows": rows, "leaked_modules": leaked}))
''')


@pytest.mark.integration
def test_a_consumer_without_medimg_reproduces_the_predictions(registry_ws, data_dir, tmp_path):
    model_path = pull(registry_ws.params, out_dir=tmp_path / "model").onnx
    files = [
        *sorted((data_dir / "chest_xray_fullres").rglob("*.jpeg"))[::3],  # grey and RGB, up to ~2900 px
        *chest_jpegs(data_dir, 4),  # 224x224 RGB
        *sorted((registry_ws.dataset / "images" / "test").glob("*.png"))[:6],  # 28x28 grey PNG
        sixteen_bit_png(data_dir, tmp_path / "chest16.png"),
    ]
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".jpeg" for p in files)
    theirs = run_consumer(model_path, files, tmp_path)
    ours = predict_files(OnnxModel(model_path), files)
    assert [r["file"] for r in theirs] == [p.file for p in ours]
    assert all(p.error is None for p in ours)
    diff = np.abs(np.array([r["abnormal_probability"] for r in theirs]) - np.array([p.probability for p in ours]))
    assert diff.max() < 1e-5, f"max |probability difference| {diff.max():.2e}"
    assert [r["predicted_class"] for r in theirs] == [p.label for p in ours]
    assert [r["abnormal"] for r in theirs] == [p.abnormal for p in ours]
    print(f"consumer vs medimg on {len(files)} files: max |dp| = {diff.max():.2e}")


def run_consumer(model_path: Path, files: list[Path], tmp_path: Path) -> list[dict]:
    """The consumer's rows for ``files``; fails the test if it errs or needed medimg or torch."""
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    done = run_logged(
        [sys.executable, str(script), str(model_path), *map(str, files)],
        tmp_path / "consumer.log",
        split=True,
        cwd=tmp_path,
    )  # waited on while it writes output, not a fixed time
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["leaked_modules"] == [], "the consumer must not need medimg or torch"
    return answer["rows"]


def test_a_consumer_without_medimg_reproduces_predict_for_a_multiclass_model(data_dir, tmp_path):
    """4-class brain tumour MRI (:func:`test_predict.brain_mri_model`, trained here in about 1 s on real JPEGs):
    every class's probability, the arg-max class and the abnormality flag."""
    model_path, files = brain_mri_model(data_dir, tmp_path / "model")
    theirs = run_consumer(model_path, files, tmp_path)
    out = tmp_path / "predict.csv"
    result = CliRunner().invoke(app, ["predict", str(model_path), *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(out, keep_default_na=False)
    assert [r["file"] for r in theirs] == ours["file"].tolist() and (ours["error"] == "").all()
    classes = list(theirs[0]["probabilities"])
    assert classes == list(BRAIN_CLASSES)
    their_probs = np.array([[r["probabilities"][c] for c in classes] for r in theirs])
    diff = np.abs(their_probs - ours[[f"p_{c}" for c in classes]].to_numpy())
    assert diff.max() < 1e-5, f"max |class probability difference| {diff.max():.2e}"
    p_diff = np.abs(np.array([r["abnormal_probability"] for r in theirs]) - ours["abnormal_probability"].to_numpy())
    assert p_diff.max() < 1e-5
    assert [r["predicted_class"] for r in theirs] == ours["predicted_class"].tolist()
    assert [r["abnormal"] for r in theirs] == ours["abnormal"].tolist()
    # the decisions are not all alike, so agreement shows something
    assert len({r["predicted_class"] for r in theirs}) >= 2 and len({r["abnormal"] for r in theirs}) == 2
    print(f"consumer vs medimg predict, 4-class model, {len(files)} files: max |dp| = {diff.max():.2e}")
