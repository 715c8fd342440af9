"""``medimg predict`` with a 3D model on real volumes: DICOM series folders, NIfTI files and ``.npz`` volumes.

The model is the VesselMNIST3D network of ``params/vessel3d.yaml`` (MONAI ResNet, 28^3), random
weights with its BatchNorm statistics taken from real training volumes (:func:`volume_model`),
exported with the flow's own metadata. Inputs are the shared DICOM series (a 20-slice CT without
SeriesInstanceUID, a five-series MR study, a tilted head CT), MSD hippocampus NIfTI files, and
VesselMNIST3D test volumes written into an ``.npz``; broken inputs (a CT series with a slice
removed, files of the wrong kind) are made in tmp_path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pydicom
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from datapaths import CT_SERIES, CT_SMALL, CT_TILTED, HIPPOCAMPUS, MR_STUDY
from medimg import preprocess, volume_contract
from medimg.artifacts import META_CLASS_NAMES, META_PREPROCESSING, META_THRESHOLD
from medimg.cli import app
from medimg.config import deep_merge, load_params, parse_params
from medimg.data.deid import pseudonym
from medimg.data.medmnist import locate
from medimg.data.nifti import read_nifti
from medimg.data.series import read_series_folder
from medimg.data.volumes import Volume
from medimg.export.onnx_export import export
from medimg.predict import DIMENSION_REASONS, Prediction, predict_files, render
from medimg.predict_volumes import predict_volumes, series_name
from medimg.scoring import ModelMetadataError, OnnxModel
from medimg.training.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SECRET = "medimg-tests-predict-3d-secret-key"
HEX16 = r"[0-9a-f]{16}"


def _text(result) -> str:
    return " ".join(result.output.split())


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with every BatchNorm's running mean and variance those of ``x`` (one pass)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one batch gives exactly its statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def vessel_volumes(data_dir: Path, folder: Path, split: str = "train", size: int = 28) -> np.ndarray:
    """The real VesselMNIST3D volumes of ``split``, uint8 ``[N, size, size, size]``."""
    archive = locate("vesselmnist3d", data_dir, folder, download=False, size=size)
    return archive.load(volumes=True)[split][0]


def volume_model(data_dir: Path, folder: Path, overrides: dict | None = None, threshold: float = 0.5) -> Path:
    """``folder/model.onnx``: the network of ``params/vessel3d.yaml`` (with ``overrides``), random weights seeded,
    BatchNorm statistics of 32 real training volumes, exported with the flow's metadata and ``threshold``."""
    from medimg.steps.export import metadata

    resnet = {"model": {"architecture": "resnet3d", "width": 16}}  # MONAI's ResNet, whatever the params file trains
    params = load_params(ROOT / "params" / "vessel3d.yaml", deep_merge(resnet, overrides or {}))
    torch.manual_seed(0)
    model = build_model(params.model, params.preprocess.channels, len(params.task.class_names))
    x = preprocess.apply(vessel_volumes(data_dir, folder)[:32], params.preprocess)
    model = calibrated(model, x)
    return export(model, x, folder / "model.onnx", params.export.opset, metadata(params, "run-0", "data-0", threshold))


def with_threshold(path: Path, threshold: float, dest: Path) -> Path:
    """A copy of the ONNX file at ``dest`` whose ``medimg.threshold`` is ``threshold`` (the graph unchanged)."""
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == META_THRESHOLD:
            prop.value = json.dumps(threshold)
    onnx.save_model(proto, str(dest))
    return dest


def series_uids(folder: Path) -> set[str]:
    """The SeriesInstanceUIDs of the DICOM files under ``folder``, read with pydicom."""
    uids = set()
    for path in folder.rglob("*"):
        if path.is_file():
            uid = pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID")
            if uid:
                uids.add(str(uid))
    return uids


def writable_copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def nifti_of(volume: Volume, dest: Path) -> Path:
    """``volume`` written as a float32 NIfTI file with its own array order and its affine (LPS -> RAS+)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    nib.save(nib.Nifti1Image(volume.voxels, affine), str(dest))
    return dest


def predict_cli(model: Path, inputs: list, out: Path, *extra: str):
    result = CliRunner().invoke(
        app, ["predict", str(model), *map(str, inputs), "--format", "json", "--out", str(out), *extra]
    )
    rows = json.loads(out.read_text()) if out.is_file() else None
    return result, rows


@pytest.fixture(scope="module")
def mr_model(data_dir, tmp_path_factory) -> Path:
    """The VesselMNIST3D model (task.modalities [MR])."""
    return volume_model(data_dir, tmp_path_factory.mktemp("vessel3d"))


@pytest.fixture
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


def test_predict_on_series_nifti_npz_and_bad_inputs(mr_model, data_dir, secret, tmp_path):
    gapped = writable_copy(CT_SERIES, tmp_path / "gapped")
    removed = sorted(gapped.iterdir())[10]
    removed.unlink()  # one slice missing from the middle of the 20-slice CT
    test_volumes = vessel_volumes(data_dir, tmp_path / "dl", "test")
    npz = tmp_path / "volumes.npz"
    np.savez(npz, test_images=test_volumes[:4], test_labels=np.zeros((4, 1)), one=test_volumes[10])
    niftis = sorted(HIPPOCAMPUS.glob("*.nii.gz"))[:2]
    png = tmp_path / "slice.png"
    shutil.copy(sorted((data_dir / "chest_xray/test/NORMAL").glob("*.jpeg"))[0], tmp_path / "chest.jpeg")
    Image.fromarray(test_volumes[0, 14]).save(png)
    inputs = [
        MR_STUDY,
        gapped,
        *niftis,
        npz,
        png,
        tmp_path / "chest.jpeg",
        CT_SMALL,
        CT_SERIES,
        tmp_path / "nothing.nii",
    ]
    result, rows = predict_cli(mr_model, inputs, tmp_path / "rows.json")
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "NCDHW float32" in text

    # the MR study: five series, each named by the keyed pseudonym of its SeriesInstanceUID, in volume order
    study = [r for r in rows if r["file"] == str(MR_STUDY)]
    uids = series_uids(MR_STUDY)
    assert len(study) == len(uids) == 5 and all(r["error"] is None for r in study)
    assert {r["volume"] for r in study} == {pseudonym(uid, secret, "series") for uid in uids}
    found = read_series_folder(MR_STUDY)
    assert [r["volume"] for r in study] == [series_name(v.series_uid, (), MR_STUDY, secret) for v in found.volumes]
    serialised = json.dumps(rows) + result.output
    assert not any(uid in serialised for uid in uids), "a SeriesInstanceUID reached the output"
    assert "1.3.12.2.1107.5.1.4" not in serialised  # the CT file names hold UIDs: they do not reach the output
    # the CT with a slice removed is refused with its reason, named by its files (it has no SeriesInstanceUID)
    (gap_row,) = [r for r in rows if r["file"] == str(gapped)]
    assert gap_row["error"] == "missing_slices" and gap_row["probability"] is None
    assert gap_row["volume"] == series_name(None, sorted(gapped.iterdir()), gapped, secret)
    assert gap_row["volume"].startswith("seriesfiles-")
    # the CT is not for this MR model; 2D images get the dimension reason; a missing path its own
    by_file = {r["file"]: r for r in rows if r["file"] != str(MR_STUDY) and r["file"] != str(npz)}
    assert by_file[str(CT_SERIES)]["error"] == "modality_mismatch"
    assert by_file[str(png)]["error"] == by_file[str(tmp_path / "chest.jpeg")]["error"] == "image_for_3d_model"
    assert by_file[str(CT_SMALL)]["error"] == "image_for_3d_model"  # one single-frame slice, not a series
    assert by_file[str(tmp_path / "nothing.nii")]["error"] == "not_found"
    assert DIMENSION_REASONS["image_for_3d_model"] in text

    # the npz: every 3- and 4-dimensional array, in key order; the labels [N, 1] left out
    npz_rows = [r for r in rows if r["file"] == str(npz)]
    assert [r["volume"] for r in npz_rows] == [f"test_images[{i}]" for i in range(4)] + ["one"]
    model = OnnxModel(mr_model)
    expected = model.class_probabilities(
        volume_contract.apply(np.stack([*test_volumes[:4], test_volumes[10]]), model.config).numpy()
    )
    got = np.array([[r["p_vessel"], r["p_aneurysm"]] for r in npz_rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # NIfTI: read, prepared by the model's contract, scored
    for path in niftis:
        (row,) = [r for r in rows if r["file"] == str(path)]
        stored = volume_contract.prepare_volume(read_nifti(path), model.config)
        p = model.abnormal_probability(volume_contract.apply(stored, model.config).numpy())[0]
        assert row["volume"] is None and abs(row["abnormal_probability"] - p) < 1e-9
    scored = [r for r in rows if r["error"] is None]
    assert len(scored) == 5 + 5 + 2
    for r in scored:
        assert abs(r["p_vessel"] + r["p_aneurysm"] - 1) < 1e-9 and r["abnormal"] == (r["abnormal_probability"] >= 0.5)
        assert r["predicted_class"] == ("aneurysm" if r["abnormal"] else "vessel")
    assert f"{len(scored)} predicted, {len(rows) - len(scored)} not usable" in text


def test_a_ct_series_and_its_nifti_give_the_same_prediction(mr_model, data_dir, secret, tmp_path):
    """--allow-modality CT scores the CT series; the NIfTI written from it, told --modality CT, gets the same
    probability (the same HU window, RAS orientation from another array order); without --modality the NIfTI
    volume is of unknown modality and the percentile rule applies instead."""
    volume = read_series_folder(CT_SERIES).volumes[0]
    nifti = nifti_of(volume, tmp_path / "ct.nii")
    assert volume.axcodes == ("S", "P", "L") and read_nifti(nifti).axcodes == ("S", "A", "R")
    result, rows = predict_cli(mr_model, [CT_SERIES, CT_TILTED], tmp_path / "series.json", "--allow-modality", "CT")
    assert result.exit_code == 0, result.output
    series_row, tilted_row = rows
    assert series_row["error"] is None and series_row["volume"].startswith("seriesfiles-")
    assert tilted_row["error"] is None and tilted_row["volume"].startswith("series-")  # corrected for its tilt
    result, (ct_told, *_) = predict_cli(mr_model, [nifti], tmp_path / "ct.json", "--modality", "ct", "--any-modality")
    assert result.exit_code == 0, result.output
    assert abs(ct_told["abnormal_probability"] - series_row["abnormal_probability"]) < 1e-6
    result, (unknown, *_) = predict_cli(mr_model, [nifti], tmp_path / "unknown.json")
    assert result.exit_code == 0, result.output
    config = OnnxModel(mr_model).config
    window = volume_contract.prepare_volume(read_nifti(nifti, "CT"), config)
    percentiles = volume_contract.prepare_volume(read_nifti(nifti), config)
    assert np.abs(window.astype(int) - percentiles).max() > 50  # two intensity rules, two inputs
    assert unknown["abnormal_probability"] != ct_told["abnormal_probability"]
    # the model is for MR: told CT without an override, the NIfTI is refused
    result, (refused, *_) = predict_cli(mr_model, [nifti], tmp_path / "refused.json", "--modality", "CT")
    assert result.exit_code == 1 and refused["error"] == "modality_mismatch"


def test_volume_checks_npz_edge_cases(mr_model, data_dir, tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(20, 30, 30)).astype(np.float32)
    with_nan = noisy.copy()
    with_nan[3, 4, 5] = np.nan
    np.savez(
        tmp_path / "mixed.npz",
        float_volume=noisy,
        nan_volume=with_nan,
        constant=np.full((28, 28, 28), 7, dtype=np.uint8),
        flat_image=np.zeros((28, 28), dtype=np.uint8),
    )
    np.savez(tmp_path / "labels.npz", labels=np.arange(5))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    rows = predict_volumes(
        OnnxModel(mr_model), [tmp_path / "mixed.npz", tmp_path / "labels.npz", tmp_path / "broken.npz"]
    )
    assert [(r.volume, r.error) for r in rows] == [
        ("float_volume", None),  # float [20, 30, 30]: percentiles, stretched to 28^3
        ("nan_volume", "non_finite"),
        ("constant", "blank"),  # std 0 < the recorded min_pixel_std 2
        (None, "no_volumes"),
        (None, "unreadable"),
    ]
    config = OnnxModel(mr_model).config
    stored = volume_contract.prepare_array(noisy, config)
    p = OnnxModel(mr_model).abnormal_probability(volume_contract.apply(stored, config).numpy())[0]
    assert abs(rows[0].probability - p) < 1e-9


def test_a_dicom_input_needs_the_pseudonym_secret(mr_model, monkeypatch, tmp_path):
    monkeypatch.delenv("MEDIMG_DEID_SECRET", raising=False)
    result, _ = predict_cli(mr_model, [MR_STUDY], tmp_path / "rows.json")
    assert result.exit_code == 2 and "MEDIMG_DEID_SECRET" in _text(result)
    assert not (tmp_path / "rows.json").exists()
    nifti = sorted(HIPPOCAMPUS.glob("*.nii.gz"))[0]
    result, rows = predict_cli(mr_model, [nifti], tmp_path / "rows.json")  # NIfTI names no series: no secret needed
    assert result.exit_code == 0 and rows[0]["error"] is None
    with pytest.raises(ValueError, match="secret"):
        predict_volumes(OnnxModel(mr_model), [MR_STUDY])


def test_series_names_are_keyed_pseudonyms(tmp_path):
    key, other = b"k" * 32, b"o" * 32
    uid = "1.2.826.0.1.3680043.2.1125.1"
    assert series_name(uid, (), tmp_path, key) == pseudonym(uid, key, "series")
    assert series_name(uid, (), tmp_path, key) != series_name(uid, (), tmp_path, other)
    files = [tmp_path / "a" / "1", tmp_path / "a" / "2"]
    by_files = series_name(None, files, tmp_path, key)
    assert by_files == series_name(None, files[::-1], tmp_path, key) == pseudonym("a/1\na/2", key, "seriesfiles")
    assert by_files != series_name(None, files[:1], tmp_path, key)


@pytest.fixture(scope="module")
def image_model(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A small 2D CNN (random weights) with the flow's metadata, and a real 28x28 PNG for it."""
    from medimg.steps.export import metadata

    folder = tmp_path_factory.mktemp("image_model")
    params = parse_params({"model": {"architecture": "simple_cnn", "width": 8}})
    torch.manual_seed(0)
    images, _ = locate("pneumoniamnist", data_dir, folder, download=False).load()["test"]
    x = preprocess.apply(images[:8], params.preprocess)
    model = calibrated(build_model(params.model, 1, 2), x)
    Image.fromarray(images[0]).save(folder / "chest.png")
    return export(model, x, folder / "model.onnx", 18, metadata(params, "run-0", "data-0", 0.5)), folder / "chest.png"


def test_a_volume_given_to_a_2d_model_and_an_image_to_a_3d_model_are_refused(image_model, mr_model, data_dir, tmp_path):
    model_2d, png = image_model
    nifti = sorted(HIPPOCAMPUS.glob("*.nii.gz"))[0]
    np.savez(tmp_path / "v.npz", volume=np.zeros((28, 28, 28), dtype=np.uint8))
    result, rows = predict_cli(model_2d, [nifti, tmp_path / "v.npz", png], tmp_path / "rows.json")
    assert result.exit_code == 0, result.output
    assert [r["error"] for r in rows] == ["volume_for_2d_model", "volume_for_2d_model", None]
    assert "volume" not in rows[0], "a 2D model's rows keep the 2D columns"
    assert DIMENSION_REASONS["volume_for_2d_model"] in _text(result)
    result, rows = predict_cli(mr_model, [png], tmp_path / "rows3d.json")
    assert result.exit_code == 1 and rows[0]["error"] == "image_for_3d_model"
    assert "2D image" in _text(result) and "NIfTI" in _text(result)
    with pytest.raises(ValueError, match="3D model"):
        predict_files(OnnxModel(mr_model), [png])
    with pytest.raises(ValueError, match="2D model"):
        predict_volumes(OnnxModel(model_2d), [nifti])


def test_onnx_model_knows_its_dimensions_and_refuses_a_contract_that_does_not_fit(image_model, mr_model, tmp_path):
    model = OnnxModel(mr_model)
    assert model.dims == 3 and model.input_layout == "NCDHW float32" and model.config.size == 28
    assert OnnxModel(image_model[0]).dims == 2 and OnnxModel(image_model[0]).input_layout == "NCHW float32"
    proto = onnx.load(str(image_model[0]))  # a 2D graph ([N, 1, 28, 28]) labelled with a 3D contract
    for prop in proto.metadata_props:
        if prop.key == META_PREPROCESSING:
            prop.value = json.dumps(volume_contract.contract(load_params(ROOT / "params" / "vessel3d.yaml").preprocess))
    onnx.save_model(proto, str(tmp_path / "mislabelled.onnx"))
    with pytest.raises(ModelMetadataError, match="rank 4"):
        OnnxModel(tmp_path / "mislabelled.onnx")
    assert json.loads(model.metadata[META_CLASS_NAMES]) == ["vessel", "aneurysm"]


def test_render_adds_the_volume_column_for_3d_rows():
    rows = [
        Prediction("s", 0.25, "vessel", class_probabilities={"vessel": 0.75, "aneurysm": 0.25}, abnormal=False,
                   volume="series-0123456789abcdef"),
        Prediction("f.nii", None, None, "not_3d"),
    ]  # fmt: skip
    lines = render(rows, "csv").splitlines()
    assert lines[0].endswith(",abnormal,volume") and lines[1].endswith(",false,series-0123456789abcdef")
    assert lines[2] == "f.nii,,,not_3d,,,,,,"
    assert render(rows[1:], "csv", ["vessel", "aneurysm"], volumes=True).splitlines()[0].endswith(",volume")
    assert "volume" not in render(rows[1:], "csv", ["vessel", "aneurysm"]).splitlines()[0]
