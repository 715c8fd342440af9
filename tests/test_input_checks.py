"""Predict refuses what ingest validation would refuse, and what the model is not for.

Real files only: the DICOM samples (xray/ is CR chest, ct/ CT, mr/ MR), the float-pixel-data-nan
field case, and a real chest radiograph made uniform in tmp_path. The models are real ONNX
exports of a small CNN with the metadata the flow writes (:func:`medimg.steps.export.metadata`);
``small_old`` has the metadata of a model exported before the input checks were recorded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from datapaths import CHEST, CR_CHEST, CR_CHEST_J2K, CT_SMALL, FIELD_CASES, MR_SMALL
from medimg import preprocess
from medimg.artifacts import META_BODY_PART, META_INPUT_CHECKS, META_MODALITIES, META_PREPROCESSING
from medimg.cli import app
from medimg.config import ConfigError, load_params, parse_params
from medimg.data.medmnist import locate
from medimg.export.onnx_export import export, read_metadata
from medimg.input_checks import REASONS, InputRules, check_input
from medimg.predict import predict_files
from medimg.scoring import OnnxModel
from medimg.steps.export import metadata, model_modalities
from medimg.training.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CR, CR_J2K, CT, MR = CR_CHEST, CR_CHEST_J2K, CT_SMALL, MR_SMALL
NAN = FIELD_CASES / "float-pixel-data-nan" / "float_with_nan.dcm"
NO_NAN = FIELD_CASES / "float-pixel-data-nan" / "reference_float_no_nan.dcm"


def uniform_dicom(dest: Path) -> Path:
    """The real CR chest radiograph with every pixel set to its mean grey value: a blank image."""
    ds = pydicom.dcmread(CR)
    pixels = ds.pixel_array
    ds.set_pixel_data(np.full_like(pixels, int(pixels.mean())), "MONOCHROME2", 8)
    ds.save_as(dest)
    return dest


def uniform_png(dest: Path) -> Path:
    """A real chest X-ray (a Kermany JPEG) made uniform and saved as PNG, which cannot say its modality."""
    grey = np.asarray(Image.open(min((CHEST / "test" / "NORMAL").glob("*.jpeg"))).convert("L"))
    Image.fromarray(np.full_like(grey, int(grey.mean()))).save(dest)
    return dest


def _export(folder: Path, params, meta: dict, data_dir: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(params.model, 1, 2).eval()
    images, _ = locate("pneumoniamnist", data_dir, folder, download=False).load()["test"]
    x = preprocess.apply(images[:8], params.preprocess)
    return export(model, x, folder / "model.onnx", 18, meta)


SMALL = {"model": {"architecture": "simple_cnn", "width": 8}}


@pytest.fixture(scope="module")
def chest_model(data_dir, tmp_path_factory) -> Path:
    """The shipped params (task.modalities [CR, DX], body part CHEST) with the flow's own metadata."""
    params = load_params(ROOT / "params.yaml", SMALL)
    meta = metadata(params, "run-0", "data-0", 0.5, ["DX"] * 3)
    return _export(tmp_path_factory.mktemp("chest"), params, meta, data_dir)


@pytest.fixture(scope="module")
def small_old(data_dir, tmp_path_factory) -> Path:
    """A model with only the metadata older exports had: no input checks, no modalities."""
    params = parse_params(SMALL)
    meta = {
        META_PREPROCESSING: preprocess.contract(params.preprocess),
        "medimg.threshold": 0.5,
        "medimg.class_names": list(params.task.class_names),
    }
    return _export(tmp_path_factory.mktemp("old"), params, meta, data_dir)


def _by_name(predictions) -> dict[str, object]:
    return {Path(p.file).name: p for p in predictions}


def test_the_metadata_records_the_validation_limits_and_the_modalities(chest_model):
    meta = read_metadata(chest_model)
    shipped = load_params(ROOT / "params.yaml")
    assert json.loads(meta[META_INPUT_CHECKS]) == {
        "min_pixel_std": shipped.validation.min_pixel_std,
        "bit_depth_range": list(shipped.validation.bit_depth_range),
        "original_side_range": list(shipped.validation.original_side_range),
    }
    assert json.loads(meta[META_MODALITIES]) == ["CR", "DX"] and meta[META_BODY_PART] == "CHEST"
    rules = OnnxModel(chest_model).input_rules
    assert rules == InputRules.from_validation(shipped.validation, ["CR", "DX"])
    assert "modality CR, DX" in rules.describe() and "bits stored 8-16" in rules.describe()


def test_without_task_modalities_the_model_is_for_the_modalities_it_was_trained_on():
    params = parse_params({"task": {"modalities": None, "body_part": None}})
    assert model_modalities(params, ["DX", "CR", "DX", None]) == ["CR", "DX"]
    meta = metadata(params, "run-0", "data-0", 0.5, ["dx"])
    assert meta[META_MODALITIES] == ["DX"] and META_BODY_PART not in meta
    assert model_modalities(parse_params({"task": {"modalities": ["DX", "CR"]}}), ["MR"]) == ["CR", "DX"]
    assert META_MODALITIES not in metadata(params, "run-0", "data-0", 0.5, [None]), "none known: none checked"


def test_task_modalities_and_body_part_are_validated_with_the_key():
    with pytest.raises(ConfigError, match=r"task\.modalities\.0: String should match pattern"):
        parse_params({"task": {"modalities": ["chest x-ray"]}})
    with pytest.raises(ConfigError, match=r"task\.modalities \['CT'\] must include data\.modality 'DX'"):
        parse_params({"task": {"modalities": ["CT"]}})
    with pytest.raises(ConfigError, match=r"task\.modalities is empty"):
        parse_params({"task": {"modalities": []}})
    with pytest.raises(ConfigError, match=r"task\.body_part: String should match pattern"):
        parse_params({"task": {"body_part": "chest"}})
    with pytest.raises(ConfigError, match=r"data\.modalities is now task\.modalities"):
        parse_params({"data": {"modalities": ["CR"]}})
    assert parse_params({"task": {"modalities": ["CR", "DX"], "body_part": "CHEST"}}).task.modalities == ("CR", "DX")


def test_adding_modalities_and_body_part_does_not_change_what_is_trained():
    """The new fields describe the model; no training, data or preprocess value depends on them."""
    shipped = load_params(ROOT / "params.yaml")
    without = load_params(ROOT / "params.yaml", {"task": {"modalities": None, "body_part": None}})
    for section in ("preprocess", "model", "train", "validation", "gates", "export"):
        assert getattr(shipped, section) == getattr(without, section)
    assert shipped.data == without.data and shipped.task.class_names == without.task.class_names


def test_float_pixel_data_with_nan_is_non_finite_at_predict(chest_model, small_old):
    """The field case: today scored 0.95 pneumonia; refused with non_finite, by any model, old ones too."""
    for path in (chest_model, small_old):
        (row,) = predict_files(OnnxModel(path), [NAN])
        assert row.error == "non_finite" and row.probability is None and row.label is None, row
    (row,) = predict_files(OnnxModel(chest_model), [NAN], any_modality=True)
    assert row.error == "non_finite"


def test_nan_in_decoded_pixels_is_caught_before_grey_uint8_would_blacken_them():
    """The rule itself, on real decoded pixels: NaN/inf found, and grey_uint8 shows why it must be found first."""
    reference = preprocess.decode_file(NO_NAN, parse_params({}).preprocess)
    assert np.isfinite(reference.pixels).all() and check_input(reference, InputRules()) is None
    for bad_value in (np.nan, np.inf, -np.inf):
        pixels = np.array(reference.pixels)
        pixels[100:102, 50:52] = bad_value
        image = dataclasses.replace(reference, pixels=pixels)
        problem = check_input(image, InputRules())
        assert problem.reason == "non_finite" and "4 of 65536" in problem.detail
    nan_image = dataclasses.replace(
        reference, pixels=np.where(np.arange(256) == 3, np.nan, reference.pixels).astype(np.float32)
    )
    assert check_input(nan_image, InputRules()).reason == "non_finite"
    with pytest.raises(ValueError, match="NaN or infinite"):  # the grey mapping refuses rather than blacken it
        preprocess.grey_uint8(nan_image)


def test_a_real_image_made_uniform_is_blank(chest_model, small_old, tmp_path):
    files = [uniform_dicom(tmp_path / "uniform.dcm"), uniform_png(tmp_path / "uniform.png"), CR]
    rows = _by_name(predict_files(OnnxModel(chest_model), files))
    assert rows["uniform.dcm"].error == "blank" and rows["uniform.dcm"].probability is None
    assert rows["uniform.png"].error == "blank" and rows["uniform.png"].probability is None
    assert rows[CR.name].error is None and 0 <= rows[CR.name].probability <= 1
    # a model that records no limits (exported before they were): not checked, as documented
    old = _by_name(predict_files(OnnxModel(small_old), files))
    assert old["uniform.dcm"].error is None and old["uniform.dcm"].probability is not None


def test_ingest_validation_measures_blank_on_the_same_stored_image(tmp_path):
    """check_input's blank rule is the suite's pixel_std rule: std of the contract-size uint8 image."""
    params = parse_params({})
    decoded = preprocess.decode_file(uniform_dicom(tmp_path / "u.dcm"), params.preprocess)
    stored = preprocess.prepare(decoded, params.preprocess)
    rules = InputRules.from_validation(params.validation)
    assert float(stored.std()) < params.validation.min_pixel_std
    assert check_input(decoded, rules) is None, "without the stored image the blank rule is not applied"
    assert check_input(decoded, rules, stored).reason == "blank"
    real = preprocess.decode_file(CR, params.preprocess)
    assert check_input(real, rules, preprocess.prepare(real, params.preprocess)) is None


def test_dicom_of_another_modality_is_refused_unless_the_caller_allows_it(chest_model):
    jpeg = min((CHEST / "test" / "NORMAL").glob("*.jpeg"))
    files = [CR, CR_J2K, CT, MR, jpeg]
    model = OnnxModel(chest_model)
    rows = _by_name(predict_files(model, files))
    for name in (CR.name, CR_J2K.name, jpeg.name):  # CR is what the model is for; a JPEG cannot say
        assert rows[name].error is None and 0 <= rows[name].probability <= 1, rows[name]
    for name in (CT.name, MR.name):
        assert rows[name].error == "modality_mismatch" and rows[name].probability is None, rows[name]

    allowed = _by_name(predict_files(model, files, allow_modalities=("ct",)))
    assert allowed[CT.name].error is None and allowed[CT.name].probability is not None
    assert allowed[MR.name].error == "modality_mismatch"
    anything = _by_name(predict_files(model, files, any_modality=True))
    assert all(row.error is None for row in anything.values()), anything
    assert anything[CR.name].probability == rows[CR.name].probability


def test_bit_depth_and_size_limits_come_from_the_model(data_dir, tmp_path):
    """A model trained under narrower validation limits refuses what falls outside them."""
    params = load_params(
        ROOT / "params.yaml", {**SMALL, "validation": {"bit_depth_range": [8, 12], "original_side_range": [16, 1024]}}
    )
    model = OnnxModel(_export(tmp_path, params, metadata(params, "run-0", "data-0", 0.5, ["CR"]), data_dir))
    rows = _by_name(predict_files(model, [CR, CR_J2K, NO_NAN], any_modality=True))
    assert rows[CR.name].error is None  # 8 bits, 1024 x 1024: inside
    assert rows[CR_J2K.name].error == "bit_depth_out_of_range"  # 15 bits stored (1955 x 1841 too: bits first)
    assert rows[NO_NAN.name].error == "bit_depth_out_of_range"  # 32-bit float pixel data
    wide_bits = load_params(ROOT / "params.yaml", {**SMALL, "validation": {"original_side_range": [16, 1024]}})
    model = OnnxModel(_export(tmp_path / "b", wide_bits, metadata(wide_bits, "r", "d", 0.5), data_dir))
    rows = _by_name(predict_files(model, [CR, CR_J2K]))
    assert rows[CR.name].error is None and rows[CR_J2K.name].error == "size_out_of_range"


def test_cli_says_which_checks_apply_and_takes_the_modality_override(chest_model, small_old):
    result = CliRunner().invoke(app, ["predict", str(chest_model), str(CT), str(MR), str(NAN), "--format", "json"])
    assert result.exit_code == 1, result.output  # nothing usable
    assert "input checks: non-finite pixels; modality CR, DX; bits stored 8-16" in " ".join(result.output.split())
    rows = json.loads(result.stdout)
    assert [r["error"] for r in rows] == ["modality_mismatch", "modality_mismatch", "non_finite"]
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(chest_model),
            str(CT),
            str(MR),
            "--allow-modality",
            "CT",
            "--allow-modality",
            "MR",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0 and "2 predicted, 0 not usable" in " ".join(result.output.split()), result.output
    result = CliRunner().invoke(app, ["predict", str(small_old), str(CT)])
    assert result.exit_code == 0 and "records no validation limits" in " ".join(result.output.split())


def test_every_reason_is_documented():
    assert set(REASONS) == {"non_finite", "blank", "bit_depth_out_of_range", "size_out_of_range", "modality_mismatch"}


def test_a_model_with_malformed_input_checks_is_refused(small_old, tmp_path):
    import onnx

    from medimg.scoring import ModelMetadataError

    proto = onnx.load(str(small_old))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_MODALITIES, '"CR"'
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelMetadataError, match="input checks"):
        OnnxModel(tmp_path / "bad.onnx")
