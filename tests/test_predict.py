"""``medimg predict`` on the real DICOM, PNG and JPEG samples, bad files included.

The model is the champion of the shared registry (``registry_fixtures``), pulled and verified.
PNG inputs are the real PneumoniaMNIST test images the flow ingested, and a 16-bit PNG written
here from a real chest X-ray; everything else is read straight from the shared data folder.
Broken files (a truncated JPEG, a text file named .png, an empty .dcm) are made in tmp_path.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from datapaths import FIELD_CASES
from medimg import preprocess, registry
from medimg.artifacts import META_PREPROCESSING
from medimg.cli import app
from medimg.config import parse_params
from medimg.data.dicom import decode_dicom
from medimg.data.images import decode_raster
from medimg.data.medmnist import locate
from medimg.export.onnx_export import export, onnx_logits, read_metadata, session
from medimg.predict import collect_files, load_grey_uint8, predict_files, prepare_input, render, score_prepared
from medimg.probabilities import softmax
from medimg.provenance import file_sha256
from medimg.pull import pull
from medimg.scoring import OnnxModel, cached_version_model
from medimg.training.models import build_model
from registry_fixtures import MODEL

FULLRES_GREY = "chest_xray_fullres/NORMAL/IM-0117-0001.jpeg"


def _text(result) -> str:
    return " ".join(result.output.split())


def chest_jpegs(data_dir: Path, n: int = 3) -> list[Path]:
    """The first ``n`` test JPEGs of each class of the 224x224 Kermany set (RGB files)."""
    return [
        p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((data_dir / "chest_xray/test" / cls).glob("*.jpeg"))[:n]
    ]


def sixteen_bit_png(data_dir: Path, dest: Path) -> Path:
    """A 16-bit PNG made from a real chest X-ray: its 8-bit values times 257 (full 16-bit range)."""
    grey = np.asarray(Image.open(data_dir / FULLRES_GREY).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey.astype(np.uint16)).save(dest)
    return dest


def broken_files(data_dir: Path, folder: Path) -> dict[str, str]:
    """File -> the reason medimg must give for it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = (data_dir / FULLRES_GREY).read_bytes()
    (folder / "cut.jpeg").write_bytes(source[: len(source) * 6 // 10])
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    (folder / "empty.dcm").write_bytes(b"")
    return {
        str(folder / "cut.jpeg"): "truncated",
        str(folder / "notes.png"): "not_an_image",
        str(folder / "empty.dcm"): "empty",
        str(data_dir / "dicom/mr/MR_truncated.dcm"): "truncated",
    }


@pytest.fixture(scope="module")
def champion_onnx(registry_ws, tmp_path_factory) -> Path:
    return pull(registry_ws.params, out_dir=tmp_path_factory.mktemp("pulled") / "model").onnx


@pytest.mark.integration
def test_predict_cli_on_real_dicom_png_jpeg_with_bad_files(registry_ws, champion_onnx, data_dir, tmp_path):
    bad = broken_files(data_dir, tmp_path / "bad")
    pngs = sorted((registry_ws.dataset / "images" / "test").glob("*.png"))[:8]
    inputs = [
        data_dir / "dicom" / "xray",
        data_dir / "dicom" / "ct",
        data_dir / "dicom" / "mr",
        data_dir / "chest_xray_fullres",
        *chest_jpegs(data_dir),
        *pngs,
        sixteen_bit_png(data_dir, tmp_path / "chest16.png"),
        tmp_path / "bad",
    ]
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "champion",
            *map(str, inputs),
            "--format",
            "json",
            "--out",
            str(out),
            "--params",
            str(registry_ws.params_file),
        ],
    )
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert (
        "ONNX Runtime provider: CPUExecutionProvider" in text or "ONNX Runtime provider: CUDAExecutionProvider" in text
    )
    assert f"{MODEL} v1 (sha256 verified)" in text

    rows = json.loads(out.read_text())
    expected_files = [str(p) for p in collect_files(inputs)]
    assert [r["file"] for r in rows] == expected_files, "one row per file, in input order"
    n_dicom = sum(1 for f in expected_files if f.endswith(".dcm"))
    assert len(rows) == 11 + 30 + 6 + 8 + 1 + 3 and n_dicom == 11 + 1
    by_file = {r["file"]: r for r in rows}
    for file, reason in bad.items():
        assert by_file[file]["error"] == reason and by_file[file]["probability"] is None, by_file[file]
    # the champion is a chest radiograph model (task.modalities CR, DX): the CT and MR samples are refused
    other_modality = {str(p) for p in collect_files([data_dir / "dicom" / "ct", data_dir / "dicom" / "mr"])} - set(bad)
    assert len(other_modality) == 3 + 4
    for file in other_modality:
        assert by_file[file]["error"] == "modality_mismatch" and by_file[file]["probability"] is None, by_file[file]
    model = OnnxModel(champion_onnx)
    good = [r for r in rows if r["file"] not in bad and r["file"] not in other_modality]
    assert len(good) == len(rows) - 4 - 7
    for row in good:
        assert row["error"] is None and 0.0 <= row["probability"] <= 1.0, row
        assert row["label"] == ("pneumonia" if row["probability"] >= model.threshold else "normal")
    assert f"{len(good)} predicted, {4 + 7} not usable" in text


@pytest.mark.integration
def test_png_predictions_reproduce_the_evaluation(registry_ws, champion_onnx, tmp_path):
    """The ingested test PNGs through predict give the probabilities the flow's PyTorch evaluation logged."""
    v1 = registry.get_version(MODEL, "1")
    csv = MlflowClient().download_artifacts(v1.run_id, "evaluation/test_predictions.csv", str(tmp_path))
    evaluated = pd.read_csv(csv, dtype={"id": str}).set_index("id")["probability"]
    ids = evaluated.index[:48].tolist()
    files = [registry_ws.dataset / "images" / "test" / f"{i}.png" for i in ids]
    predictions = predict_files(OnnxModel(champion_onnx), files, batch_size=16)
    got = np.array([p.probability for p in predictions])
    assert np.max(np.abs(got - evaluated.loc[ids].to_numpy())) < 1e-4


@pytest.mark.integration
def test_predict_csv_keeps_going_and_a_16bit_png_equals_its_8bit_source(champion_onnx, data_dir, tmp_path):
    bad = broken_files(data_dir, tmp_path / "bad")
    files = [
        data_dir / FULLRES_GREY,
        sixteen_bit_png(data_dir, tmp_path / "chest16.png"),
        *map(Path, bad),
        tmp_path / "missing.png",
        *chest_jpegs(data_dir, 20),
    ]
    result = CliRunner().invoke(app, ["predict", str(champion_onnx), *map(str, files), "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    assert list(frame.columns) == [
        *("file", "probability", "label", "error"),  # the columns of earlier versions, first and in order
        *("p_normal", "p_pneumonia", "predicted_class", "abnormal_probability", "abnormal"),
    ] and len(frame) == len(files)
    good = frame[frame["error"] == ""]
    assert len(good) == len(files) - len(bad) - 1 and (good["probability"] == good["p_pneumonia"]).all()
    assert (good["probability"] == good["abnormal_probability"]).all() and (
        good["label"] == good["predicted_class"]
    ).all()
    assert (good["abnormal"].astype(str).str.lower() == (good["label"] == "pneumonia").astype(str).str.lower()).all()
    assert frame.loc[0, "probability"] == frame.loc[1, "probability"], "16-bit x257 must map back to the 8-bit values"
    errors = dict(zip(frame["file"], frame["error"], strict=True))
    assert all(errors[f] == reason for f, reason in bad.items())
    assert errors[str(tmp_path / "missing.png")] == "not_found"
    assert f"{len(files)}/{len(files)}" in result.output, "a long batch shows a progress bar"


def test_grey_uint8_mapping_is_the_documented_one(data_dir, tmp_path):
    # 8-bit grey PNG/JPEG: kept exactly
    grey = np.asarray(Image.open(data_dir / FULLRES_GREY).convert("L"))
    assert np.array_equal(load_grey_uint8(data_dir / FULLRES_GREY), grey)
    # 16-bit PNG: scaled by its full range, so x257 maps back exactly
    assert np.array_equal(load_grey_uint8(sixteen_bit_png(data_dir, tmp_path / "c16.png")), grey)
    # RGB JPEG: BT.601 luminance, rounded half to even
    rgb_file = chest_jpegs(data_dir, 1)[0]
    rgb = np.asarray(Image.open(rgb_file), dtype=np.float64)
    assert rgb.ndim == 3
    assert np.array_equal(load_grey_uint8(rgb_file), np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8))
    # CT: windowed onto [0, 1] by decode_dicom, then x 255
    ct = decode_dicom(data_dir / "dicom/ct/CT_small.dcm")
    assert ct.window is not None
    assert np.array_equal(
        load_grey_uint8(data_dir / "dicom/ct/CT_small.dcm"),
        np.rint(ct.pixels.astype(np.float64) * 255).astype(np.uint8),
    )
    # other DICOM: the image's own min..max onto 0..255
    mr = decode_dicom(data_dir / "dicom/mr/MR_small.dcm")
    u = load_grey_uint8(data_dir / "dicom/mr/MR_small.dcm")
    v = mr.pixels.astype(np.float64)
    assert u.min() == 0 and u.max() == 255
    assert np.array_equal(u, np.rint((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8))
    # deterministic, and the same rules are what the ONNX metadata tells a consumer
    assert np.array_equal(u, preprocess.grey_uint8(decode_dicom(data_dir / "dicom/mr/MR_small.dcm")))
    assert decode_raster(data_dir / FULLRES_GREY).bit_depth == 8
    assert "16-bit scaled" in preprocess.contract(parse_params({}).preprocess)["grey_uint8"]["png_jpeg"]


def test_render_formats_round_trip():
    from medimg.predict import Prediction

    rows = [
        Prediction("a.png", 0.25, "normal", class_probabilities={"normal": 0.75, "pneumonia": 0.25}, abnormal=False),
        Prediction("b.dcm", None, None, "truncated"),
    ]
    assert json.loads(render(rows, "json"))[1] == {
        "file": "b.dcm",
        "probability": None,
        "label": None,
        "error": "truncated",
        "p_normal": None,
        "p_pneumonia": None,
        "predicted_class": None,
        "abnormal_probability": None,
        "abnormal": None,
    }
    assert json.loads(render(rows, "json"))[0]["abnormal"] is False
    lines = render(rows, "csv").splitlines()
    assert lines == [
        "file,probability,label,error,p_normal,p_pneumonia,predicted_class,abnormal_probability,abnormal",
        "a.png,0.25,normal,,0.75,0.25,normal,0.25,false",
        "b.dcm,,,truncated,,,,,",
    ]
    # the class columns come from the model when no row has probabilities (every file unusable)
    assert render(rows[1:], "csv", ["glioma", "notumor"]).splitlines()[0].split(",")[4:6] == ["p_glioma", "p_notumor"]
    with pytest.raises(ValueError, match="csv or json"):
        render(rows, "xml")


@pytest.fixture(scope="module")
def small_onnx(data_dir, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """An untrained small CNN exported with the metadata older exports had (contract, threshold, class names: no
    task kind, no abnormal classes), and real test inputs for it."""
    params = parse_params({"model": {"architecture": "simple_cnn", "width": 8}})
    torch.manual_seed(0)
    model = build_model(params.model, 1, 2).eval()
    folder = tmp_path_factory.mktemp("small")
    images, _ = locate("pneumoniamnist", data_dir, folder, download=False).load()["test"]
    x = preprocess.apply(images[:40], params.preprocess)
    meta = {
        META_PREPROCESSING: preprocess.contract(params.preprocess),
        "medimg.threshold": 0.42,
        "medimg.class_names": list(params.task.class_names),
    }
    return export(model, x, folder / "model.onnx", 18, meta), x


def test_onnx_model_reads_its_metadata_from_the_session_and_batches(small_onnx):
    path, x = small_onnx
    model = OnnxModel(path)
    assert model.metadata == read_metadata(path)
    assert model.threshold == 0.42 and model.class_names == ["normal", "pneumonia"] and model.config.size == 28
    whole = softmax(onnx_logits(session(path), x.numpy()))[:, 1]
    np.testing.assert_allclose(model.probabilities(x.numpy(), batch_size=7), whole, rtol=0, atol=1e-6)


def test_a_model_exported_before_the_task_was_recorded_scores_as_before(small_onnx, tmp_path):
    """No medimg.task_kind / medimg.abnormal_classes: binary, abnormal class index 1, label by the threshold."""
    path, x = small_onnx
    model = OnnxModel(path)
    assert model.task_kind == "binary" and model.abnormal_classes == ["pneumonia"] and model.abnormal_indices == (1,)
    assert model.positive_class == "pneumonia"
    logits = onnx_logits(session(path), x.numpy()).astype(np.float64)
    expected = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)  # the old rule, written out
    probs = model.class_probabilities(x.numpy())
    assert probs.shape == (40, 2) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.abnormal_probability(x.numpy()), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(model.probabilities(x.numpy()), model.abnormal_probability(x.numpy()))
    assert model.predicted_classes(probs) == ["pneumonia" if p >= 0.42 else "normal" for p in expected]
    assert model.label(0.42) == "pneumonia" and model.label(0.4199) == "normal"
    for i, image in enumerate(x[:3, 0].numpy()):  # the same images as files, through predict
        Image.fromarray(np.rint((image * 0.5 + 0.5) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    rows = predict_files(model, sorted(tmp_path.glob("*.png")))
    for row, p in zip(rows, expected[:3], strict=True):
        assert abs(row.probability - p) < 1e-6 and row.label == ("pneumonia" if p >= 0.42 else "normal")
        assert row.class_probabilities is not None and row.abnormal is (row.probability >= 0.42)
        assert row.class_probabilities["pneumonia"] == row.probability == row.abnormal_probability


def quick_fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int):
    """``model`` after ``steps`` seeded Adam steps on random batches of ``(x, y)``: outputs that are not uniform."""
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


@pytest.fixture(scope="module")
def breast_onnx(data_dir, tmp_path_factory) -> tuple[Path, list[Path], np.ndarray]:
    """A BreastMNIST-like binary model whose abnormal class is index 0 (class_names [malignant, benign]).

    A small CNN after 40 Adam steps on real BreastMNIST training images (label 0 = malignant), exported
    with the flow's own metadata (:func:`medimg.steps.export.metadata`); the threshold is the median
    of its malignant probability on the 12 test images, written here as PNG files, so both classes occur.
    Returns (model, files, softmax(logits) of the files from PyTorch).
    """
    from medimg.steps.export import metadata

    params = parse_params(
        {
            "task": {"kind": "binary", "class_names": ["malignant", "benign"], "abnormal": ["malignant"]},
            "model": {"architecture": "simple_cnn", "width": 8},
        }
    )
    folder = tmp_path_factory.mktemp("breast")
    arrays = locate("breastmnist", data_dir, folder, download=False).load()
    x = preprocess.apply(arrays["train"][0], params.preprocess)
    y = torch.as_tensor(np.asarray(arrays["train"][1]).reshape(-1)).long()
    torch.manual_seed(0)
    model = quick_fit(build_model(params.model, 1, 2), x, y, steps=40, batch_size=64)
    files = []
    for i, image in enumerate(arrays["test"][0][:12]):
        Image.fromarray(image).save(folder / f"breast{i:02d}.png")
        files.append(folder / f"breast{i:02d}.png")
    test = preprocess.apply(arrays["test"][0][:12], params.preprocess)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(test).double(), dim=1).numpy()
    threshold = float(np.median(probs[:, 0]))
    path = export(model, test, folder / "model.onnx", 18, metadata(params, "run-0", "data-0", threshold))
    return path, files, probs


def test_a_binary_model_whose_abnormal_class_is_index_0(breast_onnx):
    path, files, torch_probs = breast_onnx
    meta = read_metadata(path)
    assert meta["medimg.task_kind"] == "binary" and meta["medimg.positive_class"] == "malignant"
    assert json.loads(meta["medimg.abnormal_classes"]) == ["malignant"]
    assert json.loads(meta["medimg.class_names"]) == ["malignant", "benign"]
    assert "p_abnormal = softmax[:, 0] (malignant" in meta["medimg.output"] and "else benign" in meta["medimg.output"]
    model = OnnxModel(path)
    assert model.abnormal_indices == (0,) and model.positive_class == "malignant"
    rows = predict_files(model, files)
    p_malignant = np.array([r.probability for r in rows])
    np.testing.assert_allclose(p_malignant, torch_probs[:, 0], rtol=0, atol=1e-5)  # softmax[:, 0], not [:, 1]
    np.testing.assert_allclose([r.class_probabilities["benign"] for r in rows], torch_probs[:, 1], atol=1e-5)
    labels = [r.label for r in rows]
    assert labels == ["malignant" if p >= model.threshold else "benign" for p in p_malignant]
    assert {"malignant", "benign"} <= set(labels), "the median threshold splits the images"
    assert [r.abnormal for r in rows] == [label == "malignant" for label in labels]
    assert model.label(1.0) == "malignant" and model.label(0.0) == "benign"


BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def brain_mri_model(data_dir: Path, folder: Path) -> tuple[Path, list[Path]]:
    """A 4-class brain tumour MRI model (abnormal: all but notumor) in ``folder`` and held-out real JPEGs for it.

    The first 16 JPEGs of each class folder of ``brain_tumor_mri``, decoded and preprocessed by
    medimg's own functions at 32 px, train a small CNN for 60 Adam steps (about 1 s; outputs far from
    uniform); it is exported with the flow's metadata (:func:`medimg.steps.export.metadata`) for a
    multiclass task, the threshold being the median p_abnormal on the training images. Returns the
    model and the next 3 JPEGs of each class (not trained on).
    """
    from medimg.steps.export import metadata

    params = parse_params(
        {
            "task": {
                "kind": "multiclass",
                "class_names": list(BRAIN_CLASSES),
                "abnormal": ["glioma", "meningioma", "pituitary"],
            },
            "preprocess": {"size": 32},
            "model": {"architecture": "simple_cnn", "width": 8},
        }
    )
    root = data_dir / "brain_tumor_mri"
    by_class = {c: sorted((root / c).glob("*.jpg")) for c in BRAIN_CLASSES}
    images = [preprocess.prepare_file(f, params.preprocess) for c in BRAIN_CLASSES for f in by_class[c][:16]]
    x = preprocess.apply(np.stack(images), params.preprocess)
    y = torch.arange(4).repeat_interleave(16)
    torch.manual_seed(0)
    model = quick_fit(build_model(params.model, 1, 4), x, y, steps=60, batch_size=32)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x).double(), dim=1).numpy()
    threshold = float(np.median(probs[:, [0, 1, 3]].sum(axis=1)))
    path = export(model, x, folder / "model.onnx", 18, metadata(params, "run-0", "data-0", threshold))
    return path, [f for c in BRAIN_CLASSES for f in by_class[c][16:19]]


@pytest.fixture(scope="module")
def brain_mri_onnx(data_dir, tmp_path_factory) -> tuple[Path, list[Path]]:
    """:func:`brain_mri_model`: the 4-class model and 12 held-out JPEGs."""
    return brain_mri_model(data_dir, tmp_path_factory.mktemp("brain"))


def test_a_multiclass_model_predicts_every_class_the_arg_max_and_the_abnormality_flag(brain_mri_onnx, tmp_path):
    path, files = brain_mri_onnx
    meta = read_metadata(path)
    assert meta["medimg.task_kind"] == "multiclass" and "medimg.positive_class" not in meta
    assert json.loads(meta["medimg.abnormal_classes"]) == ["glioma", "meningioma", "pituitary"]
    assert "predicted class = arg-max" in meta["medimg.output"] and "softmax[:, [0, 1, 3]]" in meta["medimg.output"]
    model = OnnxModel(path)
    assert model.task_kind == "multiclass" and model.positive_class is None and model.abnormal_indices == (0, 1, 3)
    with pytest.raises(ValueError, match="arg-max"):
        model.label(0.5)
    out = tmp_path / "rows.csv"
    result = CliRunner().invoke(app, ["predict", str(path), *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == [
        *("file", "probability", "label", "error"),
        *(f"p_{c}" for c in BRAIN_CLASSES),
        *("predicted_class", "abnormal_probability", "abnormal"),
    ]
    probs = frame[[f"p_{c}" for c in BRAIN_CLASSES]].to_numpy()
    x = np.concatenate([preprocess.apply(load_grey_uint8(f, model.config), model.config).numpy() for f in files])
    np.testing.assert_allclose(probs, model.class_probabilities(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert frame["predicted_class"].tolist() == [BRAIN_CLASSES[i] for i in probs.argmax(axis=1)]
    assert (frame["label"] == frame["predicted_class"]).all()
    p_abnormal = probs[:, [0, 1, 3]].sum(axis=1)
    np.testing.assert_allclose(frame["abnormal_probability"], p_abnormal, rtol=0, atol=1e-12)
    assert (frame["probability"] == frame["abnormal_probability"]).all()
    assert frame["abnormal"].tolist() == (p_abnormal >= model.threshold).tolist()
    assert frame["predicted_class"].nunique() >= 2 and frame["abnormal"].nunique() == 2, "a test that can fail"
    text = _text(result)
    assert "multiclass model: predicted class" in text and "notumor" in text and "glioma (abnormal)" in text


def test_a_registered_version_is_downloaded_once(small_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = tmp_path / "artifacts"
    run = MlflowClient().create_run(registry.ensure_experiment("cache-test", store))
    info = registry.register(
        registry.log_onnx(run.info.run_id, small_onnx[0]),
        "cache-test-model",
        {registry.TAG_ONNX_SHA256: file_sha256(small_onnx[0])},
    )
    first = cached_version_model(info, tmp_path / "cache")
    shutil.rmtree(store)  # the artifact store is gone: a second download would fail
    second = cached_version_model(info, tmp_path / "cache")
    assert first.path == second.path and first.path.read_bytes() == small_onnx[0].read_bytes()
    assert first.path.parent.name == f"v{info.version}-{info.tags[registry.TAG_ONNX_SHA256][:16]}"
    assert not list(first.path.parent.glob(".partial-*"))


def test_a_registered_version_whose_file_does_not_match_its_sha256_is_refused(small_onnx, tmp_path, monkeypatch):
    from medimg.pull import IntegrityError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = MlflowClient().create_run(registry.ensure_experiment("cache-test", tmp_path / "artifacts"))
    info = registry.register(
        registry.log_onnx(run.info.run_id, small_onnx[0]), "cache-test-model", {registry.TAG_ONNX_SHA256: "0" * 64}
    )  # not this file's hash
    with pytest.raises(IntegrityError, match="sha256"):
        cached_version_model(info, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing kept for gate or drift to score


@pytest.fixture(scope="module")
def trained_onnx(data_dir, tmp_path_factory) -> Path:
    """``small_onnx``'s model, exported the same way, after 150 Adam steps on PneumoniaMNIST (about 3 s).

    The untrained one scores nearly every picture alike (turning the field case's chest sideways
    moved its probability by 1e-4), so it could not show that orientation matters; this one can
    (measured: test AUC 0.95; sideways 0.087 against 0.055 upright).
    """
    params = parse_params({"model": {"architecture": "simple_cnn", "width": 8}})
    torch.manual_seed(0)
    model = build_model(params.model, 1, 2)
    folder = tmp_path_factory.mktemp("trained")
    images, labels = locate("pneumoniamnist", data_dir, folder, download=False).load()["train"]
    x = preprocess.apply(images[:2048], params.preprocess)
    y = torch.as_tensor(np.asarray(labels[:2048]).reshape(-1)).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    meta = {
        META_PREPROCESSING: preprocess.contract(params.preprocess),
        "medimg.threshold": 0.5,
        "medimg.class_names": list(params.task.class_names),
    }
    return export(model.eval(), x[:64], folder / "model.onnx", 18, meta)


def test_a_rotated_jpeg_and_its_upright_png_get_the_same_probability(trained_onnx, tmp_path):
    """Field case exif-orientation through predict: the EXIF-rotated JPEG is scored upright."""
    folder = FIELD_CASES / "exif-orientation"
    model = OnnxModel(trained_onnx)
    assert model.config.size == 28
    with Image.open(folder / "IM-9001-0001.jpeg") as pil:  # the stored, sideways samples
        pil.convert("L").save(tmp_path / "sideways.png")
    rotated, upright, sideways = predict_files(
        model, [folder / "IM-9001-0001.jpeg", folder / "reference_upright.png", tmp_path / "sideways.png"]
    )
    assert rotated.error is None and upright.error is None
    assert abs(rotated.probability - upright.probability) <= 1e-6
    assert abs(sideways.probability - upright.probability) > 0.01  # the picture matters to this model


def test_one_input_in_memory_is_scored_like_its_file(small_onnx, data_dir, tmp_path):
    """prepare_input + score_prepared on bytes (the DICOM node's and the HTTP service's way) give predict_files'
    row; a bad input's reason is the same too."""
    path, _ = small_onnx
    model = OnnxModel(path)
    files = [data_dir / "dicom/xray/RG1_J2KI.dcm", data_dir / "dicom/mr/MR_truncated.dcm", data_dir / FULLRES_GREY]
    for file, row in zip(files, predict_files(model, files), strict=True):
        prepared = prepare_input(model, "upload", model.input_rules, data=file.read_bytes())
        one = score_prepared(model, prepared)
        assert (one.error, one.label, one.abnormal) == (row.error, row.label, row.abnormal)
        if row.error is None:
            assert one.probability == pytest.approx(row.probability, abs=1e-7)
            assert (
                prepared.stored is not None and prepared.stored.shape == (28, 28) and prepared.stored.dtype == np.uint8
            )
            assert prepared.tensor is not None and prepared.tensor.shape == (1, 1, 28, 28)
    assert (
        files[1].name.endswith("truncated.dcm")
        and prepare_input(model, files[1], model.input_rules).error == "truncated"
    )
    assert prepare_input(model, tmp_path / "missing.dcm", model.input_rules).error == "not_found"
