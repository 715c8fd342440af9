"""The drift step against a real champion: intensities and the champion's own outputs on a new data version.

The champion is v1 of the session's template registry (a real flow run on PneumoniaMNIST). Each
test makes a "new data version" from the template's real images: the training and test splits,
either as they are or darkened, with the champion's data-version manifest beside them, and runs
the step as the flow would. Unchanged images must read as no drift on both features; darkened
ones must shift both the intensities and what the champion outputs on them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg import registry
from medimg.contracts import DriftCheck, DriftFeature
from medimg.data import manifest, versioning
from medimg.steps import drift
from medimg.workspace import Workspace

pytestmark = pytest.mark.integration  # the shared registry is built by two real flow runs


def _new_version(template, root: Path, transform: Callable[[np.ndarray], np.ndarray]) -> tuple[Workspace, str]:
    """A workspace holding the template's train and test images through ``transform`` (the test images
    written, since only held-out images are scored); its manifest's intensities are those of the
    transformed images. Returns it and the champion's data version."""
    champion = registry.version_by_alias(template.params.registry.model_name, registry.CHAMPION)
    reference_version = champion.tags[registry.TAG_DATA_VERSION]
    ws = Workspace.at(root / "ws")
    ws.data_versions.mkdir(parents=True)
    shutil.copy(versioning.version_manifest(template.ws, reference_version), ws.data_versions)

    frame = manifest.read(template.dataset)
    frame = frame[frame["split"].isin(["train", "test"])].copy()
    means = []
    for rel, split in zip(frame["path"], frame["split"], strict=True):
        with Image.open(template.dataset / rel) as image:
            pixels = transform(np.asarray(image))
        if split != "train":  # the step scores held-out images only; train rows count through their means
            (ws.data / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(ws.data / rel)
        means.append(float(pixels.mean()))
    frame["pixel_mean"] = means
    frame.to_parquet(ws.data / manifest.MANIFEST_FILE)
    return ws, reference_version


def _features(result: DriftCheck) -> dict[str, DriftFeature]:
    return {f.feature: f for f in result.features}


def test_unchanged_images_under_a_new_version_read_as_no_drift(registry_ws, registry_template, tmp_path):
    ws, reference_version = _new_version(registry_template, tmp_path, lambda pixels: pixels)
    result = drift.run(registry_ws.params, ws, "a-new-version-id")

    assert result.checked is True and result.drifted is False, result
    assert result.reference_version == reference_version and result.champion_version == "1"
    features = _features(result)
    assert set(features) == {"pixel_mean", "champion_output"}
    # the held-out images are the champion's own test images: its outputs on them are its reference
    output = features["champion_output"]
    assert output.n_current == output.n_reference and output.psi < 0.01 and output.ks_pvalue > 0.5, output
    assert features["pixel_mean"].psi < 0.1, features["pixel_mean"]


def test_darkened_images_shift_intensity_and_the_champions_outputs(registry_ws, registry_template, tmp_path):
    ws, _ = _new_version(registry_template, tmp_path, lambda pixels: (pixels * 0.5).astype(np.uint8))
    result = drift.run(registry_ws.params, ws, "a-darker-version-id")

    assert result.checked is True and result.drifted is True, result
    features = _features(result)
    assert features["pixel_mean"].drifted and features["pixel_mean"].psi > 0.2, features["pixel_mean"]
    output = features["champion_output"]
    assert output.drifted and output.ks_pvalue < 0.01, output
    assert "champion_output PSI" in result.reason
