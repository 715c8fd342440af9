"""The DICOM node with 3D models against a real Orthanc: a series in by C-STORE, one result per series back.

A volume classification model (the VesselMNIST3D network of ``params/vessel3d.yaml``, MR) gets an SR that references
every slice; a segmentation model (a small MONAI U-Net with the hippocampus contract of ``params/hippocampus.yaml``,
MR) gets a DICOM SEG. Both models have random weights: the point is the path (series gathered on ``StableSeries``,
scored by ``medimg predict``'s 3D functions, the result stored into the study, its own result refused when it comes
back), and the result is compared with what ``medimg predict`` gives on the same files. The input is the shared MR
study's hippocampus crop series (40 slices of 50 x 34), sent with fresh UIDs. Orthanc is the ``orthanc`` fixture's
(:mod:`orthanc_fixtures`); the models are local files handed out by a fixed holder.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from datapaths import MR_STUDY
from medimg.config import ServeConfig, load_params
from medimg.data.deid import pseudonym
from medimg.export.onnx_export import export
from medimg.predict_segmentation import predict_segmentation
from medimg.predict_volumes import predict_volumes
from medimg.provenance import file_sha256
from medimg.scoring import OnnxModel
from medimg.segmentation.contract import network_input
from medimg.segmentation.dicom_seg import Algorithm
from medimg.serving.dicom_node import node_from_settings
from medimg.serving.loaded_model import LoadedModel
from medimg.serving.prediction_log import PredictionLog
from medimg.training.models import build_model
from orthanc_fixtures import SECRET, c_store, entries, fresh, node_for, srs_in_study, started, wait_for_entries

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CROP_SERIES = MR_STUDY / "11_HCropVolume"


class FixedHolder:
    """Always the same local model, named ``name`` version ``local``."""

    def __init__(self, path: Path, name: str) -> None:
        self.loaded = LoadedModel(name, "local", file_sha256(path), OnnxModel(path), None)

    def current(self) -> LoadedModel:
        return self.loaded


@pytest.fixture(scope="module")
def volume_classifier(tmp_path_factory) -> Path:
    from medimg.steps.export import metadata

    params = load_params(ROOT / "params/vessel3d.yaml", {"model": {"architecture": "resnet3d", "width": 16}})
    torch.manual_seed(0)
    model = build_model(params.model, params.preprocess.channels, len(params.task.class_names)).eval()
    x = torch.rand(2, params.preprocess.channels, 28, 28, 28)
    folder = tmp_path_factory.mktemp("vessel3d")
    return export(model, x, folder / "model.onnx", params.export.opset, metadata(params, "run-0", "data-0", 0.5))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    from monai.networks.nets import UNet

    from medimg.steps.export import segmentation_metadata

    params = load_params(ROOT / "params/hippocampus.yaml")
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 2))
    stored = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 48), dtype=np.uint8)
    example = torch.from_numpy(network_input(stored, params.preprocess))
    meta = segmentation_metadata(params, "run-0", "data-0", ["MR"])
    path = tmp_path_factory.mktemp("seg") / "model.onnx"
    return export(net.eval(), example, path, params.export.opset, meta, params.preprocess.volume.pad_multiple)


def sent_series(orthanc, folder: Path) -> list[Dataset]:
    """The crop series with fresh UIDs, C-STOREd, and written into ``folder`` (for medimg predict)."""
    token = uuid.uuid4().hex
    slices = [fresh(path, token) for path in sorted(CROP_SERIES.iterdir())]
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1 and len(slices) == 40
    folder.mkdir()
    for index, ds in enumerate(slices):
        ds.save_as(folder / f"{index:02d}.dcm")
    c_store(orthanc, slices)
    return slices


def test_a_series_gets_one_sr_naming_every_slice(orthanc, volume_classifier, tmp_path):
    holder = FixedHolder(volume_classifier, "vessel3d-test")
    log = PredictionLog(tmp_path / "ws/serve/predictions.jsonl")
    # the node as medimg serve builds it: credentials from the environment, timings from params' serve section
    node = node_from_settings(
        ServeConfig(pacs_poll_seconds=0.2), orthanc.url, holder, log, tmp_path / "ws/serve", SECRET
    )
    try:
        started(node)
        slices = sent_series(orthanc, tmp_path / "series")
        ours = pseudonym(slices[0].StudyInstanceUID, SECRET, "study")
        # the SR's series is stable too
        found = wait_for_entries(log, 2, "the series' SR and the SR coming back", ours)
    finally:
        node.stop(timeout=60)
    series = pseudonym(slices[0].SeriesInstanceUID, SECRET, "series")
    (entry,) = [e for e in found if e.series == series]
    (expected,) = predict_volumes(holder.loaded.model, [tmp_path / "series"], secret=SECRET)
    assert entry.refusal_reason is None and entry.result_sop_class == "SR" and entry.instance is None
    assert entry.p_abnormal == pytest.approx(expected.probability, abs=1e-6) and entry.predicted_class == expected.label
    (sr,) = srs_in_study(orthanc.client(), slices[0].StudyInstanceUID)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (group,) = report.content.get_image_measurement_groups()
    assert {s.referenced_sop_instance_uid for s in group.source_images} == {ds.SOPInstanceUID for ds in slices}
    assert sr.ManufacturerModelName == "vessel3d-test" and sr.SoftwareVersions == "local"
    (own,) = [e for e in found if e is not entry]
    assert own.refusal_reason == "own_result" and own.series == pseudonym(sr.SeriesInstanceUID, SECRET, "series")


def test_a_series_gets_a_dicom_seg_from_a_segmentation_model(orthanc, segmenter, tmp_path):
    holder = FixedHolder(segmenter, "hippocampus-test")
    node, log = node_for(orthanc, tmp_path / "ws", holder)
    try:
        started(node)
        slices = sent_series(orthanc, tmp_path / "series")
        ours = pseudonym(slices[0].StudyInstanceUID, SECRET, "study")
        found = wait_for_entries(log, 2, "the series' SEG and the SEG coming back", ours)
    finally:
        node.stop(timeout=60)
    series = pseudonym(slices[0].SeriesInstanceUID, SECRET, "series")
    (entry,) = [e for e in found if e.series == series]
    assert entry.refusal_reason is None and entry.result_sop_class == "SEG" and entry.class_probabilities is None
    client = orthanc.client()
    study = slices[0].StudyInstanceUID
    (meta,) = [
        Dataset.from_json(i) for i in client.dicomweb.search_for_instances(study, search_filters={"Modality": "SEG"})
    ]
    seg = client.dicomweb.retrieve_instance(study, meta.SeriesInstanceUID, meta.SOPInstanceUID)
    assert seg.Manufacturer == "medimg" and seg.SeriesDescription.startswith("medimg AI result")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("hippocampus-test", "local")
    assert algorithm.AlgorithmParameters == f"onnx_sha256={holder.loaded.onnx_sha256}"
    # the mask is the one medimg predict writes for the same files
    out = tmp_path / "predicted"
    (result,) = predict_segmentation(
        holder.loaded.model,
        [tmp_path / "series"],
        out,
        Algorithm("hippocampus-test", "local", holder.loaded.onnx_sha256),
        secret=SECRET,
    )
    local = pydicom.dcmread(out / result.dicom_seg)
    assert int(seg.NumberOfFrames) == int(local.NumberOfFrames) == 40 * 2
    np.testing.assert_array_equal(
        hd.seg.Segmentation.from_dataset(seg).get_volume().array,
        hd.seg.Segmentation.from_dataset(local).get_volume().array,
    )
    (own,) = [e for e in found if e is not entry]
    assert own.refusal_reason == "own_result" and entries(log, ours) == found
