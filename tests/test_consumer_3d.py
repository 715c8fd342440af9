"""``examples/consumer_3d.py``, with only onnxruntime, numpy and nibabel, reproduces ``medimg predict`` on real NIfTI
volumes from a 3D model's metadata alone.

The consumer runs in a separate Python process and reports whether medimg or torch got imported
(they must not). Its inputs: NIfTI files written here from the shared 20-slice CT series and from
the first series of the MR study (float32, in the series' own array order, axes S-P-L, so the
orientation rule matters), and three MSD hippocampus files as shipped. For three contracts (the
default of ``params/vessel3d.yaml``; a target spacing with the pad policy and area resampling; the
crop policy with nearest resampling, the min-max rule and the source orientation) its probabilities
must match ``medimg predict`` within 1e-5 and its decisions be identical, with a threshold that
splits the inputs so that agreeing on them shows something. Told ``--modality CT``, both window the
CT in HU and, with the RAS orientation, give the prediction ``medimg predict`` gives on the DICOM
series itself (with ``source`` the series keeps its S-P-L array and predicts otherwise).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from datapaths import CT_SERIES, HIPPOCAMPUS, MR_STUDY
from medimg.data.series import read_series_folder
from medimg.predict_volumes import predict_volumes
from medimg.scoring import OnnxModel
from progress import run_logged
from test_predict_3d import SECRET, nifti_of, predict_cli, volume_model, with_threshold

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = ROOT / "examples" / "consumer_3d.py"
FOR_MR_AND_CT = {"task": {"modalities": ["MR", "CT"]}}
CONTRACTS = {
    "default": {},
    "spacing-pad-area": {
        "preprocess": {"resize": "pad", "volume": {"spacing": [3.0, 3.0, 3.0], "interpolation": "area"}}
    },
    "crop-nearest-minmax-source": {
        "preprocess": {
            "resize": "crop",
            "intensity": "minmax",
            "volume": {"orientation": "source", "interpolation": "nearest"},
        }
    },
}


@pytest.fixture(scope="module")
def niftis(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("niftis")
    ct = read_series_folder(CT_SERIES).volumes[0]
    mr = read_series_folder(MR_STUDY).volumes[0]
    assert ct.shape == (20, 512, 512) and ct.modality == "CT" and mr.modality == "MR"
    return [
        nifti_of(ct, folder / "ct_abdomen.nii"),
        nifti_of(mr, folder / "mr_brain.nii.gz"),
        *sorted(HIPPOCAMPUS.glob("*.nii.gz"))[:3],
    ]


def run_consumer(model: Path, files: list[Path], tmp_path: Path, *extra: str) -> list[dict]:
    """The consumer's rows; fails the test if it errs or imported medimg or torch."""
    done = run_logged(
        [sys.executable, str(CONSUMER), str(model), *map(str, files), *extra],
        tmp_path / "consumer.log",
        split=True,
        cwd=tmp_path,
    )  # waited on while it writes output, not a fixed time
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["leaked_modules"] == [], "the consumer must not need medimg or torch"
    return answer["rows"]


def splitting_threshold(p: np.ndarray) -> float:
    """The middle of the widest gap between neighbouring sorted probabilities: decisions differ, and no
    probability lies near the threshold."""
    ordered = np.sort(p)
    gap = int(np.argmax(np.diff(ordered)))
    assert ordered[gap + 1] - ordered[gap] > 1e-4, ordered
    return float((ordered[gap] + ordered[gap + 1]) / 2)


def assert_same(theirs: list[dict], ours: list[dict]) -> float:
    """Same files, classes' probabilities within 1e-5, identical decisions; returns the max |difference|."""
    assert [r["file"] for r in theirs] == [r["file"] for r in ours] and all(r["error"] is None for r in ours)
    classes = list(theirs[0]["probabilities"])
    their_probs = np.array([[r["probabilities"][c] for c in classes] for r in theirs])
    diff = np.abs(their_probs - np.array([[r[f"p_{c}"] for c in classes] for r in ours]))
    assert diff.max() < 1e-5, f"max |class probability difference| {diff.max():.2e}"
    p_diff = np.abs(np.array([r["abnormal_probability"] for r in theirs]) - [r["abnormal_probability"] for r in ours])
    assert p_diff.max() < 1e-5
    assert [r["predicted_class"] for r in theirs] == [r["predicted_class"] for r in ours]
    assert [r["abnormal"] for r in theirs] == [r["abnormal"] for r in ours]
    return float(max(diff.max(), p_diff.max()))


@pytest.mark.parametrize("contract", list(CONTRACTS))
def test_a_consumer_without_medimg_reproduces_predict_on_nifti(contract, niftis, data_dir, tmp_path, monkeypatch):
    overrides = {**FOR_MR_AND_CT, **CONTRACTS[contract]}
    exported = volume_model(data_dir, tmp_path, overrides)
    p = np.array([r.probability for r in predict_volumes(OnnxModel(exported), niftis)])
    model = with_threshold(exported, splitting_threshold(p), tmp_path / "split.onnx")

    theirs = run_consumer(model, niftis, tmp_path)
    result, ours = predict_cli(model, niftis, tmp_path / "predict.json")
    assert result.exit_code == 0, result.output
    worst = assert_same(theirs, ours)
    assert len({r["abnormal"] for r in theirs}) == 2, "the decisions differ, so agreeing on them shows something"

    # told the modality, both window the CT in HU, and (RAS: the same array) the DICOM series gives the same
    config = OnnxModel(model).config
    ct = niftis[:1]
    theirs_ct = run_consumer(model, ct, tmp_path, "--modality", "CT")
    result, ours_ct = predict_cli(model, ct, tmp_path / "ct.json", "--modality", "CT")
    assert result.exit_code == 0, result.output
    worst = max(worst, assert_same(theirs_ct, ours_ct))
    if config.intensity == "auto":  # the HU window, not the percentiles: another input
        assert abs(theirs_ct[0]["abnormal_probability"] - theirs[0]["abnormal_probability"]) > 1e-6
    monkeypatch.setenv("MEDIMG_DEID_SECRET", SECRET)
    result, (series,) = predict_cli(model, [CT_SERIES], tmp_path / "series.json")
    assert result.exit_code == 0, result.output
    same = abs(series["abnormal_probability"] - theirs_ct[0]["abnormal_probability"]) < 1e-5
    # orientation source: the series is kept S-P-L as read, the NIfTI file is read canonically S-A-R
    assert same is (config.volume.orientation == "RAS")
    print(f"consumer_3d vs medimg predict ({contract}), {len(niftis) + 1} volumes: max |dp| = {worst:.2e}")
