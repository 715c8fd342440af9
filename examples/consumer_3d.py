"""Score NIfTI volumes with a medimg 3D ONNX model using only onnxruntime, numpy and nibabel.

    python examples/consumer_3d.py model.onnx scan1.nii.gz scan2.nii [--modality CT]

Everything comes from the model's own metadata (``medimg.preprocessing``, the 3D contract of
``medimg/volume_contract.py``; ``medimg.threshold``, ``medimg.class_names``, ``medimg.task_kind``,
``medimg.abnormal_classes``, ``medimg.input_name``), never from medimg, which this script does not
import (nor torch): it shows that a 3D model can be used from its file alone, and the tests check
that it gives ``medimg predict``'s probabilities and decisions. ``--modality`` is the volumes'
DICOM Modality, which NIfTI does not record (``medimg predict --modality``): with ``CT`` the
contract's ``auto`` intensity rule windows Hounsfield units, otherwise it uses percentiles.

Prints one JSON object: ``rows`` (file, each class's probability, abnormal_probability,
predicted_class, abnormal) and ``leaked_modules`` (medimg or torch if something imported them).
"""

from __future__ import annotations

import argparse
import json
import sys

import nibabel as nib
import numpy as np
import onnxruntime as ort

F32 = np.float32


def read_volume(path: str, contract: dict) -> tuple[np.ndarray, tuple[float, float, float]]:
    """float32 voxels with array axes (0, 1, 2) towards (S, A, R), and their spacing in mm.

    contract["orientation_rule"]: nibabel's as_closest_canonical (RAS+ array axes (i, j, k)), the
    array transposed to (k, j, i). A NIfTI file is read this way for ``source`` orientation too
    (medimg reads every NIfTI file canonically), so both give the same array.
    """
    image = nib.load(path)
    if len(image.shape) > 3:
        image = nib.squeeze_image(image)
    canonical = nib.as_closest_canonical(image)
    data = canonical.get_fdata(dtype=np.float32)
    zooms = canonical.header.get_zooms()[:3]
    return np.ascontiguousarray(data.transpose(2, 1, 0)), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def by_range(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """clip((v - lo) / (hi - lo), 0, 1) in float32; 0 everywhere when hi <= lo."""
    if not hi > lo:
        return np.zeros_like(v, dtype=F32)
    return np.clip((v - F32(lo)) / F32(hi - lo), 0.0, 1.0).astype(F32)


def intensity(v: np.ndarray, modality: str | None, contract: dict) -> np.ndarray:
    """contract["intensity_rule"]: voxels onto [0, 1] (NIfTI voxels are float32, never the uint8 case)."""
    rule = contract["intensity"]
    if rule == "auto" and modality == "CT":
        level, width = contract["ct_window"]
        return by_range(v, level - width / 2, level + width / 2)
    if rule == "minmax":
        return by_range(v, float(v.min()), float(v.max()))
    lo, hi = np.percentile(v, contract["percentiles"])  # numpy's default (linear) method
    return by_range(v, float(lo), float(hi))


def resample_axis(v: np.ndarray, axis: int, n_out: int, mode: str) -> np.ndarray:
    """contract["resampling"]: one axis of the separable resampling, in float32."""
    n_in = v.shape[axis]
    moved = np.moveaxis(v, axis, 0)
    if mode == "nearest":  # index min(floor(d * n_in / n_out), n_in - 1)
        index = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
        return np.moveaxis(moved[index], 0, axis)
    if mode == "area":  # the mean over [d * n_in / n_out, (d + 1) * n_in / n_out), weighted by overlap
        edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
        cells = np.arange(n_in, dtype=np.float64)[None, :]
        overlap = np.clip(np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells), 0, None)
        weights = (overlap / overlap.sum(axis=1, keepdims=True)).astype(F32)
        return np.moveaxis(np.tensordot(weights, moved, axes=(1, 0)).astype(F32), 0, axis)
    # trilinear: s = max((d + 0.5) * n_in / n_out - 0.5, 0), between floor(s) and min(floor(s) + 1, n_in - 1)
    s = np.maximum(F32(n_in) / F32(n_out) * (np.arange(n_out, dtype=F32) + F32(0.5)) - F32(0.5), F32(0.0))
    i0 = s.astype(np.int64)
    t = (s - i0.astype(F32)).reshape((-1,) + (1,) * (v.ndim - 1))
    i1 = np.minimum(i0 + 1, n_in - 1)
    return np.moveaxis((moved[i0] * (F32(1.0) - t) + moved[i1] * t).astype(F32), 0, axis)


def resample(v: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """Axes 0, 1, 2 in turn; an axis already at its size is left alone."""
    out = np.asarray(v, dtype=F32)
    for axis, n_out in enumerate(shape):
        if out.shape[axis] != n_out:
            out = resample_axis(out, axis, n_out, mode)
    return out


def cube(v: np.ndarray, policy: str) -> np.ndarray:
    """contract["resize_policy"]: stretch (as is), crop (centred cube of the shortest side, the extra voxel
    dropped at the end) or pad (centred in a zero cube of the longest side, the extra voxel at the end)."""
    if policy == "stretch" or len(set(v.shape)) == 1:
        return v
    if policy == "crop":
        side = min(v.shape)
        return v[tuple(slice((n - side) // 2, (n - side) // 2 + side) for n in v.shape)]
    side = max(v.shape)
    out = np.zeros((side,) * 3, dtype=v.dtype)
    out[tuple(slice((side - n) // 2, (side - n) // 2 + n) for n in v.shape)] = v
    return out


def stored_cube(path: str, modality: str | None, contract: dict) -> np.ndarray:
    """The contract's uint8 [S, S, S] (what medimg stores at ingest): orientation, intensity, spacing, cube,
    resample, quantise."""
    voxels, spacing = read_volume(path, contract)
    unit = intensity(voxels, modality, contract)
    mode = contract["interpolation"]
    if contract["spacing"] is not None:  # round(n * spacing / target) voxels per axis, at least 1
        target = contract["spacing"]
        shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(unit.shape, spacing, target, strict=True))
        unit = resample(unit, shape, mode)
    unit = resample(cube(unit, contract["resize_policy"]), (contract["size"],) * 3, mode)
    return np.clip(np.rint(unit * F32(255.0)), 0, 255).astype(np.uint8)  # round half to even


def tensor(stored: np.ndarray, contract: dict) -> np.ndarray:
    """uint8 [S, S, S] -> float32 [1, C, S, S, S]: x / 255, (x - mean) / std, repeated to the channels."""
    x = stored.astype(F32)[None, None] / F32(255.0)
    x = (x - F32(contract["mean"])) / F32(contract["std"])
    return np.repeat(x, contract["channels"], axis=1).astype(F32)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--modality", default=None, help="the DICOM Modality of the volumes (e.g. CT)")
    args = parser.parse_args(argv)
    modality = args.modality.upper() if args.modality else None

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    contract = json.loads(meta["medimg.preprocessing"])
    threshold = float(meta["medimg.threshold"])  # on p_abnormal
    classes = json.loads(meta["medimg.class_names"])
    input_name = meta["medimg.input_name"]
    kind = meta["medimg.task_kind"]
    abnormal = [classes.index(c) for c in json.loads(meta["medimg.abnormal_classes"])]
    # this consumer implements version 1 of the 3D contract; anything else must fail loudly, not mispredict
    assert contract["dims"] == 3 and contract["version"] == 1, contract
    assert contract["layout"] == meta["medimg.input_layout"] == "NCDHW float32"
    assert contract["orientation"] in ("RAS", "source") and contract["channels"] in (1, 3)
    assert contract["interpolation"] in ("trilinear", "nearest", "area")
    assert contract["intensity"] in ("auto", "minmax", "percentile")
    assert contract["order"] == [
        "orientation", "intensity", "spacing", "resize_policy", "resize", "quantise", "scale", "normalise"
    ]  # fmt: skip

    batch = np.concatenate([tensor(stored_cube(f, modality, contract), contract) for f in args.files])
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
            "probabilities": dict(zip(classes, map(float, row), strict=True)),
            "abnormal_probability": float(p),
            "predicted_class": c,
            "abnormal": bool(p >= threshold),
        }
        for f, row, p, c in zip(args.files, probs, p_abnormal, decided, strict=True)
    ]
    return {"rows": rows, "leaked_modules": sorted(m for m in ("medimg", "torch") if m in sys.modules)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
