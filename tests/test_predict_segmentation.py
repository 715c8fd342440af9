"""Segmentation export and ``medimg predict`` on real MR: hippocampus NIfTI files and a DICOM series.

The network is a small MONAI ``UNet`` built here, in the test (``unet3d`` of ``build_model`` is another
branch's work): the same I/O contract, ``[N, 1, D, H, W]`` -> logits ``[N, 3, D, H, W]`` for any D, H, W
multiple of 16. It is trained for a few dozen steps on 20 real MSD hippocampus cases stored the way the
contract of ``params/hippocampus.yaml`` stores them (:func:`medimg.segmentation.geometry.training_pair`),
so its masks are not empty, then exported with the export step's code (dynamic batch and spatial
axes, :func:`medimg.steps.export.segmentation_metadata`). The inputs: held-out hippocampus cases (one
also rewritten in another orientation), and the hippocampus crop series of the shared MR study, whose
DICOM SEG is read back with highdicom and pydicom.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import onnx
import pydicom
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from datapaths import CT_TILTED, HIPPOCAMPUS, MR_STUDY
from medimg.artifacts import META_ABNORMAL_CLASSES, META_MODEL_NAME, META_TASK_KIND, META_THRESHOLD
from medimg.cli import app
from medimg.config import ModelConfig, load_params
from medimg.data.nifti import read_nifti
from medimg.data.series import read_series_folder
from medimg.export.onnx_export import export
from medimg.export.segmentation_parity import MIN_VOXEL_AGREEMENT, check_segmentation_parity
from medimg.predict import predict_files
from medimg.predict_segmentation import algorithm_for, columns, predict_segmentation
from medimg.predict_volumes import predict_volumes, series_name
from medimg.provenance import file_sha256
from medimg.scoring import OnnxModel
from medimg.segmentation.contract import network_input
from medimg.segmentation.dicom_seg import (
    Algorithm,
    SegNotWritten,
    segmentation,
    source_slices,
)
from medimg.segmentation.geometry import training_pair
from medimg.steps.export import metadata, segmentation_metadata, segmentation_parity_inputs
from medimg.training.models import build_model

ROOT = Path(__file__).resolve().parents[1]
LABELS = HIPPOCAMPUS.parent / "labelsTr"
#: The shared MR study's derived hippocampus crop: 40 single-frame slices of 50 x 34 at 1 mm, axial.
CROP_SERIES = MR_STUDY / "11_HCropVolume"
SECRET = "medimg-tests-predict-segmentation-secret"
TRAIN_CASES = 20
HELD_OUT = 4


def _text(result) -> str:
    return " ".join(result.output.split())


def _cases() -> list[Path]:
    return sorted(HIPPOCAMPUS.glob("*.nii.gz"))


def _mask_of(path: Path) -> np.ndarray:
    """The label file of an image, read as the design says (canonical RAS, rint -> uint8)."""
    return np.rint(read_nifti(LABELS / path.name).voxels).astype(np.uint8)


def stored(params, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and masks ``[N, 48, 64, 48]`` of ``files`` as ingest stores them."""
    pairs = [training_pair(read_nifti(f), _mask_of(f), params.preprocess) for f in files]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params" / "hippocampus.yaml")


@pytest.fixture(scope="module")
def network(params) -> torch.nn.Module:
    """A small 3D U-Net trained for 60 steps on 20 real cases (cross-entropy, background down-weighted)."""
    from monai.networks.nets import UNet

    images, masks = stored(params, _cases()[:TRAIN_CASES])
    x = torch.from_numpy(network_input(images, params.preprocess))
    y = torch.from_numpy(masks).long()
    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    weight = torch.tensor([0.2, 1.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = torch.randint(0, len(x), (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch], weight=weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def held_out(params) -> tuple[np.ndarray, np.ndarray]:
    return stored(params, _cases()[TRAIN_CASES : TRAIN_CASES + HELD_OUT])


@pytest.fixture(scope="module")
def seg_model(network, params, held_out, tmp_path_factory) -> Path:
    """The network exported by the export step's code: dynamic batch and spatial axes, segmentation metadata."""
    example = torch.from_numpy(network_input(held_out[0][:2], params.preprocess))
    meta = segmentation_metadata(params, "run-0123", "data-0", ["MR"])
    path = tmp_path_factory.mktemp("seg") / "model.onnx"
    return export(network, example, path, params.export.opset, meta, params.preprocess.volume.pad_multiple)


@pytest.fixture
def secret(monkeypatch) -> bytes:
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    return SECRET.encode()


def predict_cli(model: Path, inputs: list, out: Path, *extra: str):
    return CliRunner().invoke(app, ["predict", str(model), *map(str, inputs), "--out", str(out), *extra])


def read_table(out: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "volumes.csv").read_text())))


# --------------------------------------------------------------------------- export


def test_the_export_has_dynamic_batch_and_spatial_axes_and_says_what_it_is(seg_model, params):
    graph = onnx.load(str(seg_model)).graph
    (image,), (logits,) = graph.input, graph.output
    in_dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    assert in_dims[1] == 1 and out_dims[1] == 3
    assert all(isinstance(d, str) for d in in_dims[:1] + in_dims[2:]), in_dims  # symbolic: batch, D, H, W
    assert all("16" in d for d in in_dims[2:]), "spatial axes are multiples of pad_multiple"
    assert in_dims[2:] == out_dims[2:]

    model = OnnxModel(seg_model)
    assert model.is_segmentation and model.task_kind == "segmentation" and model.dims == 3
    assert model.class_names == ["background", "anterior", "posterior"]
    assert model.abnormal_classes == ["anterior", "posterior"]
    assert META_THRESHOLD not in model.metadata and np.isnan(model.threshold)
    assert model.metadata[META_TASK_KIND] == "segmentation"
    assert json.loads(model.metadata[META_ABNORMAL_CLASSES]) == ["anterior", "posterior"]
    assert model.metadata[META_MODEL_NAME] == "hippocampus-segmentation"
    contract = model.contract
    assert contract["task"] == "segmentation" and contract["orientation"] == "RAS"
    assert contract["shape"] == contract["stored_shape"] == [48, 64, 48] and contract["pad_multiple"] == 16
    assert contract["spacing"] is None and contract["resampling"].startswith("none")
    assert model.config.volume.shape == (48, 64, 48) and model.config.volume.pad_multiple == 16
    assert model.config.intensity == "percentile"
    assert "[N, 3, D, H, W]" in model.metadata["medimg.output"] and "arg-max" in model.metadata["medimg.output"]


def test_parity_is_voxel_agreement_of_the_masks_on_real_cases_at_two_grids(network, seg_model, params, held_out):
    inputs = segmentation_parity_inputs(held_out[0], params.preprocess)
    assert len(inputs) == HELD_OUT + 1 and inputs[-1].shape[2:] == (64, 80, 64)
    report = check_segmentation_parity(network, seg_model, inputs, params.export.parity_atol)
    assert report.passed, report.to_json()
    assert report.voxel_agreement >= MIN_VOXEL_AGREEMENT
    assert report.shapes == ((48, 64, 48), (64, 80, 64))
    assert report.n_images == HELD_OUT + 1
    assert report.max_abs_diff <= params.export.parity_atol * report.logit_scale and report.logit_scale > 1
    print(
        f"parity: voxel agreement {report.voxel_agreement:.6f}, max |logit diff| {report.max_abs_diff:.2e}, "
        f"max |logit| {report.logit_scale:.3g}"
    )

    other = copy.deepcopy(network)  # the file against a network it is not: the check fails
    with torch.no_grad():
        other.model[0].conv.weight.mul_(-1.0)
    assert not check_segmentation_parity(other, seg_model, inputs[:1], params.export.parity_atol).passed

    model = OnnxModel(seg_model)
    x = network_input(held_out[0], params.preprocess)
    probs = model.voxel_probabilities(x)
    assert probs.shape == (HELD_OUT, 3, 48, 64, 48) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(probs - expected).max() < 1e-4
    masks = model.segment(x)
    assert masks.dtype == np.uint8 and (masks == probs.argmax(axis=1)).mean() >= MIN_VOXEL_AGREEMENT
    scores = [dice(masks[:, :] == k, held_out[1] == k) for k in (1, 2)]
    assert min(scores) > 0.4, f"the trained network finds the structures on held-out cases: Dice {scores}"


# --------------------------------------------------------------------------- predict: NIfTI


def test_predict_on_nifti_writes_masks_on_the_inputs_own_grid_with_their_volumes(seg_model, tmp_path):
    cases = _cases()[TRAIN_CASES : TRAIN_CASES + 2]
    np.savez(tmp_path / "v.npz", volume=np.zeros((32, 32, 32), dtype=np.uint8))
    out = tmp_path / "out"
    result = predict_cli(seg_model, [*cases, tmp_path / "v.npz", tmp_path / "missing.nii.gz"], out)
    assert result.exit_code == 0, result.output
    rows = read_table(out)
    assert [r["error"] for r in rows] == ["", "", "no_geometry", "not_found"]
    assert list(rows[0]) == list(columns(["anterior", "posterior"]))
    for case, row in zip(cases, rows, strict=False):
        stem = case.name[: -len(".nii.gz")]
        assert row["mask"] == f"{stem}.mask.nii.gz" and row["overlay"] == f"{stem}.overlay.png"
        source, mask = nib.load(case), nib.load(out / row["mask"])
        assert np.array_equal(mask.affine, source.affine), "the mask has the input's affine"
        assert mask.shape == source.shape and mask.get_data_dtype() == np.uint8
        for key in ("qform_code", "sform_code", "pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "qoffset_x"):
            assert np.array_equal(mask.header[key], source.header[key]), key
        labels = np.asarray(mask.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2} and np.count_nonzero(labels) > 0
        reference = np.rint(nib.load(LABELS / case.name).get_fdata()).astype(np.uint8)  # the file's own order
        scores = [dice(labels == k, reference == k) for k in (1, 2)]
        assert min(scores) > 0.4, f"{case.name}: the mask lies on the labelled voxels: Dice {scores}"
        voxel_ml = float(np.prod(mask.header.get_zooms()[:3])) / 1000.0
        assert float(row["voxel_volume_ml"]) == pytest.approx(voxel_ml)
        for k, name in ((1, "anterior"), (2, "posterior")):
            count = int(np.count_nonzero(labels == k))
            assert int(row[f"voxels_{name}"]) == count
            assert float(row[f"volume_ml_{name}"]) == pytest.approx(count * voxel_ml, rel=1e-12)
        with Image.open(out / row["overlay"]) as png:
            assert png.format == "PNG" and png.mode == "RGB" and png.width > png.height >= 128
        assert row["dicom_seg"] == "" and row["dicom_seg_skipped"] == ""
    assert "2 segmented, 2 not usable" in _text(result)


def test_a_reoriented_nifti_gets_its_own_affine_and_the_same_mask_in_the_world(seg_model, tmp_path):
    case = _cases()[TRAIN_CASES]
    source = nib.load(case)
    turned = source.as_reoriented(np.array([[1, -1], [0, -1], [2, -1]]))  # axes swapped and flipped (PLI)
    nib.save(turned, tmp_path / "turned.nii.gz")
    assert nib.aff2axcodes(turned.affine) != nib.aff2axcodes(source.affine)
    out = tmp_path / "out"
    result = predict_cli(seg_model, [case, tmp_path / "turned.nii.gz"], out)
    assert result.exit_code == 0, result.output
    original, rotated = nib.load(out / f"{case.name[:-7]}.mask.nii.gz"), nib.load(out / "turned.mask.nii.gz")
    assert np.array_equal(rotated.affine, nib.load(tmp_path / "turned.nii.gz").affine)
    assert rotated.shape == turned.shape != source.shape
    a, b = nib.as_closest_canonical(original), nib.as_closest_canonical(rotated)
    assert np.allclose(a.affine, b.affine)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), "same voxels in the world, same labels"


# --------------------------------------------------------------------------- predict: DICOM series -> DICOM SEG


def test_predict_on_a_dicom_series_writes_a_dicom_seg_that_highdicom_and_pydicom_read_back(seg_model, secret, tmp_path):
    out = tmp_path / "out"
    result = predict_cli(seg_model, [CROP_SERIES], out)
    assert result.exit_code == 0, result.output
    (row,) = read_table(out)
    found = read_series_folder(CROP_SERIES)
    (outcome,) = found.outcomes
    volume = outcome.volume
    name = series_name(volume.series_uid, outcome.files, CROP_SERIES, secret)
    assert row["error"] == "" and row["volume"] == name
    assert row["mask"] == f"{name}.mask.nii.gz" and row["dicom_seg"] == f"{name}.seg.dcm"
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in outcome.files]
    source_series = {str(h.SeriesInstanceUID) for h in headers}
    source_study = {str(h.StudyInstanceUID) for h in headers}
    source_instances = {str(h.SOPInstanceUID) for h in headers}
    assert len(source_series) == len(source_study) == 1 and len(source_instances) == 40

    mask = nib.load(out / row["mask"])  # on the series' own grid, in NIfTI's RAS+ world
    labels_zyx = np.asarray(mask.dataobj).transpose(2, 1, 0)
    assert labels_zyx.shape == volume.shape == (40, 50, 34)
    assert np.allclose(mask.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine[:, [2, 1, 0, 3]])

    path = out / row["dicom_seg"]
    seg = hd.seg.segread(path)
    raw = pydicom.dcmread(path)
    for ds in (seg, raw):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
        assert ds.SegmentationType == "BINARY"
        assert int(ds.NumberOfFrames) == 40 * 2, "every source slice for each of the two segments"
        assert [str(r.SeriesInstanceUID) for r in ds.ReferencedSeriesSequence] == sorted(source_series)
        referenced = {
            str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert referenced == source_instances
        assert str(ds.StudyInstanceUID) in source_study, "the SEG goes back into the source's study"
        assert str(ds.SeriesInstanceUID) not in source_series
        assert [s.SegmentLabel for s in ds.SegmentSequence] == ["anterior", "posterior"]
        for segment in ds.SegmentSequence:
            assert segment.SegmentAlgorithmType == "AUTOMATIC"
            (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
            assert algorithm.AlgorithmName == "hippocampus-segmentation"
            assert algorithm.AlgorithmVersion == "unregistered run run-0123"
            assert f"onnx_sha256={file_sha256(seg_model)}" in str(algorithm.AlgorithmParameters)
    ordered = [str(h.SOPInstanceUID) for h in source_slices(outcome.files, volume)]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered, combine_segments=True)
    assert np.array_equal(pixels, labels_zyx), "the SEG's frames are the NIfTI mask, slice for slice"
    assert int(row["voxels_anterior"]) == int(np.count_nonzero(labels_zyx == 1))

    # nothing identifying reaches the table or the console; the SEG itself carries the study (it goes back there)
    text = (out / "volumes.csv").read_text() + result.output
    for value in (*source_series, *source_study, str(headers[0].get("PatientID", "")) or "\0"):
        assert value not in text


def test_a_seg_is_not_written_for_a_corrected_series_and_empty_masks_keep_every_frame():
    (outcome,) = read_series_folder(CT_TILTED).outcomes  # corrected for its gantry tilt by default
    assert outcome.volume is not None and outcome.volume.corrections
    with pytest.raises(SegNotWritten) as refused:
        source_slices(outcome.files, outcome.volume)
    assert refused.value.reason == "corrected_source"

    (crop,) = read_series_folder(CROP_SERIES).outcomes
    sources = source_slices(crop.files, crop.volume)
    empty = np.zeros(crop.volume.shape, dtype=np.uint8)
    seg = segmentation(empty, sources, ["background", "anterior", "posterior"], Algorithm("m", "1", "ab" * 32))
    assert int(seg.NumberOfFrames) == 40 * 2
    with pytest.raises(ValueError, match="not a label"):
        segmentation(empty + 3, sources, ["background", "anterior", "posterior"], Algorithm("m", "1", "ab" * 32))


# --------------------------------------------------------------------------- the wrong model for the path


def test_the_wrong_kind_of_model_gets_a_clear_error(seg_model, params, tmp_path):
    vessel = load_params(ROOT / "params" / "vessel3d.yaml")
    classifier3d = build_model(ModelConfig(architecture="simple_cnn3d", width=4), 1, 2).eval()
    path3d = export(
        classifier3d, torch.zeros(2, 1, 28, 28, 28), tmp_path / "c3d.onnx", 18, metadata(vessel, "r", "d", 0.5)
    )
    default = load_params(ROOT / "params.yaml")
    classifier2d = build_model(ModelConfig(architecture="simple_cnn", width=4), 1, 2).eval()
    path2d = export(
        classifier2d, torch.zeros(2, 1, 28, 28), tmp_path / "c2d.onnx", 18, metadata(default, "r", "d", 0.5)
    )
    case = _cases()[TRAIN_CASES]
    with pytest.raises(ValueError, match="3D binary model, not a segmentation model"):
        predict_segmentation(OnnxModel(path3d), [case], tmp_path / "o3")
    with pytest.raises(ValueError, match="2D binary model, not a segmentation model"):
        predict_segmentation(OnnxModel(path2d), [case], tmp_path / "o2")
    model = OnnxModel(seg_model)
    with pytest.raises(ValueError, match="segmentation model: segment volumes with predict_segmentation"):
        predict_volumes(model, [case])
    with pytest.raises(ValueError, match="segmentation model: segment volumes with predict_segmentation"):
        predict_files(model, [case])
    with pytest.raises(ValueError, match="segmentation model"):
        model.class_probabilities(np.zeros((1, 1, 48, 64, 48), dtype=np.float32))
    with pytest.raises(ValueError, match="is for segmentation models"):
        OnnxModel(path3d).voxel_probabilities(np.zeros((1, 1, 28, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="not segmentation"):
        segmentation_metadata(vessel, "r", "d")

    (tmp_path / "a-file.csv").write_text("x")
    result = predict_cli(seg_model, [case], tmp_path / "a-file.csv")
    assert result.exit_code == 2 and "--out FOLDER" in _text(result) and "not a file" in _text(result)
    result = CliRunner().invoke(app, ["predict", str(seg_model), str(case)])
    assert result.exit_code == 2 and "--out FOLDER" in _text(result)


def test_the_algorithm_comes_from_the_metadata_for_a_file(seg_model):
    algorithm = algorithm_for(OnnxModel(seg_model))
    assert algorithm == Algorithm("hippocampus-segmentation", "unregistered run run-0123", file_sha256(seg_model))
