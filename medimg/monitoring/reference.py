"""Each model version's references for monitoring, read from the registry and the workspace.

* Scores: the version's p_abnormal on its own test split, the ``probability`` column of the test predictions
  its training run logged (``evaluation/test_predictions.csv``, :mod:`medimg.steps.evaluate`), as the drift
  step reads the champion's (:mod:`medimg.steps.drift`).
* Intensities: ``pixel_mean`` and ``pixel_std`` (0-255, of the stored images) of the training split in the
  manifest of the version's data version (its ``medimg.data_version`` tag), kept beside the data version's
  ``.dvc`` file in ``data/versions/`` (:func:`medimg.data.versioning.version_manifest`).

A reference that cannot be read is ``None`` with the reason in :attr:`~medimg.monitoring.windows.Reference.source`
(a version registered elsewhere, a workspace without that data version): that feature is then not judged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medimg import artifacts, registry
from medimg.data import versioning
from medimg.monitoring.windows import Reference
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def reference(ws: Workspace, model_name: str, version: str, scratch: Path) -> Reference:
    """The references of ``model_name`` v``version`` (module docstring); downloads go under ``scratch``."""
    try:
        info = registry.get_version(model_name, version)
    except Exception as err:  # MlflowException or transport: the version is not in this registry
        log.warning("monitor: %s v%s not readable from the registry (%s)", model_name, version, err)
        return Reference(None, None, None, f"v{version} not in the registry")
    notes = []
    scores = None
    if info.run_id:
        try:
            local = registry.download_run_artifact(info.run_id, artifacts.TEST_PREDICTIONS, scratch / f"v{version}")
            scores = pd.read_csv(local)["probability"].to_numpy(dtype=np.float64)
            notes.append(f"scores: {len(scores)} test-split predictions of run {info.run_id[:8]}")
        except Exception as err:  # no stored predictions (an old or foreign run): score drift not judged
            log.warning("monitor: v%s has no stored test predictions (%s)", version, err)
            notes.append("scores: none stored")
    data_version = info.tags.get(artifacts.TAG_DATA_VERSION)
    manifest_path = versioning.version_manifest(ws, data_version) if data_version else None
    means = stds = None
    if manifest_path is not None:
        frame = pd.read_parquet(manifest_path, columns=["split", "pixel_mean", "pixel_std"])
        train = frame[frame["split"] == "train"]
        means = train["pixel_mean"].to_numpy(dtype=np.float64)
        stds = train["pixel_std"].to_numpy(dtype=np.float64)
        notes.append(f"intensities: {len(train)} training images of data version {data_version}")
    else:
        notes.append(f"intensities: manifest of data version {data_version} not in this workspace")
    return Reference(scores, means, stds, "; ".join(notes))
