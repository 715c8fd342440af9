"""Drift check: the new data version against the champion's training data and outputs.

Two features: image intensity (per-image mean, from the manifests of both data versions) and
the champion's output (its positive-class probability on its own test split, from its MLflow
run, against the same ONNX model on a sample of the new data's held-out (val and test) splits).
The verdict and every number go to the MLflow run; ``drift.retrain_on`` decides whether a new
version without drift retrains. ``drifted`` is None ("not checked") when there is nothing to
compare: no champion, or the champion's own data version (changed params or code retrain it);
only a comparison made can say "no drift".
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from medimg import artifacts, preprocess, registry
from medimg.config import Params
from medimg.contracts import DriftCheck, DriftFeature
from medimg.data import manifest, versioning
from medimg.drift import compare
from medimg.scoring import cached_version_model
from medimg.training.data import load_split
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def _champion_outputs(
    params: Params, ws: Workspace, champion: registry.VersionInfo, frame: pd.DataFrame
) -> DriftFeature | None:
    if champion.run_id is None:
        log.warning("champion v%s has no MLflow run: output drift not checked", champion.version)
        return None
    if params.task.kind == "segmentation":  # a voxel mask has no one probability per case; intensity drift only
        log.info("segmentation champion: output drift not checked (intensity drift only)")
        return None
    try:
        local = registry.download_run_artifact(champion.run_id, artifacts.TEST_PREDICTIONS, ws.runs / "drift-ref")
    except Exception as err:  # an old or foreign champion without predictions: intensity drift only
        log.warning("champion v%s has no stored test predictions (%s): output drift not checked", champion.version, err)
        return None
    reference = pd.read_csv(local)["probability"].to_numpy()
    model = cached_version_model(champion, ws.champion_cache)
    # Like with like: the reference is the champion on held-out images, so the new data is scored on
    # its held-out splits too; on its own training images the champion is overconfident, and that
    # alone read as output drift (PSI 0.11, KS p 0.002) on an unchanged data set.
    held_out = frame[frame["split"] != "train"]
    frame = held_out if len(held_out) else frame
    sample = frame.sample(n=min(params.drift.sample_size, len(frame)), random_state=params.train.seed)
    images = np.concatenate([load_split(ws.data, sample, split).images for split in sample["split"].unique()])
    current = model.probabilities(preprocess.apply(images, model.config).numpy())
    return DriftFeature(
        **compare("champion_output", reference, current, params.drift.psi_threshold, params.drift.pvalue_threshold)
    )


def run(params: Params, ws: Workspace, data_version: str) -> DriftCheck:
    """Data version ``data_version`` (the workspace's dataset) against the champion's (module docstring).

    Reads the champion's data-version manifest from the workspace (``data/versions``) and its
    stored test predictions from its MLflow run; a feature whose reference is missing is left
    out with a warning. Nothing is written.
    """
    champion = registry.version_by_alias(params.registry.model_name, registry.CHAMPION)
    if champion is None:
        return DriftCheck(checked=False, drifted=None, reason="no champion yet: nothing to compare with")
    reference_version = champion.tags.get(artifacts.TAG_DATA_VERSION)
    if reference_version == data_version:
        return DriftCheck(
            checked=False,
            drifted=None,
            reason="same data version as the champion's: nothing to compare",
            reference_version=reference_version,
            champion_version=champion.version,
        )
    frame = manifest.read(ws.data)
    ref_manifest = versioning.version_manifest(ws, reference_version) if reference_version else None
    features = []
    if ref_manifest is not None:
        reference = pd.read_parquet(ref_manifest)
        features.append(
            DriftFeature(
                **compare(
                    "pixel_mean",
                    reference["pixel_mean"].to_numpy(),
                    frame["pixel_mean"].to_numpy(),
                    params.drift.psi_threshold,
                    params.drift.pvalue_threshold,
                )
            )
        )
    else:
        log.warning(
            "manifest of the champion's data version %s is not in this workspace: intensity drift not checked",
            reference_version,
        )
    outputs = _champion_outputs(params, ws, champion, frame)
    if outputs:
        features.append(outputs)
    drifted = any(f.drifted for f in features) if features else None
    summary = ", ".join(f"{f.feature} PSI {f.psi:.3f} KS p {f.ks_pvalue:.3g}" for f in features) or "nothing comparable"
    log.info(
        "drift against champion v%s (data %s): %s -> %s",
        champion.version,
        reference_version,
        summary,
        "DRIFT" if drifted else "no drift" if drifted is False else "unknown",
    )
    return DriftCheck(
        checked=bool(features),
        drifted=drifted,
        reason=summary,
        reference_version=reference_version,
        champion_version=champion.version,
        features=tuple(features),
    )
