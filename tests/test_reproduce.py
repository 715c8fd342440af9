"""``reproduce``: restore a version's data with DVC, rebuild its params from MLflow, retrain, compare.

The workspace is this module's whole clone (``lineage_fixtures``) of the ``registry_fixtures``
template (the real flow; v1 the champion, ten optimiser steps with relaxed gates). Before reproducing, the dataset
folder *and*
DVC's cache are deleted, so the data can only come back from the DVC remote. Training is seeded
and runs on the CPU here, so the reproduced model is the same model: the test asserts identical
metrics and predictions, which is what was measured (not merely "within the CI").
"""

from __future__ import annotations

import shutil

import mlflow
import pytest

from medimg import registry
from medimg.config import load_params
from medimg.data import versioning
from medimg.reproduce import TAG_REPRODUCES, ReproduceError, params_from_run, render_text, reproduce
from registry_fixtures import MODEL

pytestmark = pytest.mark.integration


def test_params_rebuild_exactly_or_not_at_all(lineage_ws):
    mv = registry.get_version(MODEL, "1")
    flat = dict(mlflow.MlflowClient().get_run(mv.run_id).data.params)
    rebuilt = params_from_run(flat)
    assert rebuilt.flat() == flat
    # The clone rewrote the template's paths in the MLflow database, workspace.path included; with the
    # template's path put back, the rebuilt params hash to the very tag the flow wrote.
    original_root = str(lineage_ws.template_root)
    assert flat["workspace.path"] == str(lineage_ws.ws.root)
    assert params_from_run({**flat, "workspace.path": original_root}).fingerprint() == mv.tags[registry.TAG_PARAMS_HASH]
    with pytest.raises(ReproduceError, match=r"train\.seed"):
        params_from_run({k: v for k, v in flat.items() if k != "train.seed"})
    with pytest.raises(ReproduceError, match=r"train\.epochs"):
        params_from_run({**flat, "train.epochs": "many"})


def test_reproduce_champion_restores_data_and_matches_metrics(lineage_ws):
    ws = lineage_ws.ws
    champion = registry.version_by_alias(MODEL, registry.CHAMPION)
    versions_before = {v.version for v in mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")}
    data_version = champion.tags[registry.TAG_DATA_VERSION]
    shutil.rmtree(ws.data)
    shutil.rmtree(ws.root / ".dvc" / "cache")

    result = reproduce(load_params(lineage_ws.params_file), ws, "champion")

    assert result["version"] == "1" and result["original_run_id"] == champion.run_id
    assert result["data_version"] == data_version and result["workspace_data_version_after"] == data_version
    assert (ws.data / "manifest.parquet").is_file() and versioning.current_version(ws) == data_version
    assert result["params_hash_recorded"] == champion.tags[registry.TAG_PARAMS_HASH]
    # the fingerprint leaves workspace out: the clone's rewritten workspace path still matches
    assert result["params_hash_matches"] is True and result["params_hash"] == result["params_hash_recorded"]
    assert result["epochs_run"] == 1

    auc = result["metrics"]["roc_auc"]
    assert auc["original"] == pytest.approx(mlflow.MlflowClient().get_run(champion.run_id).data.metrics["test_roc_auc"])
    assert result["auc_within_original_ci"]
    # Measured: the seeded CPU retrain gives the very same model, to the last bit.
    assert result["auc_abs_diff"] == 0.0 and all(m["diff"] == 0.0 for m in result["metrics"].values())
    assert result["predictions_max_abs_diff"] == 0.0 and result["identical"]
    assert result["threshold"]["reproduced"] == result["threshold"]["original"]

    new_run = mlflow.MlflowClient().get_run(result["run_id"])
    assert new_run.info.status == "FINISHED" and new_run.data.tags[TAG_REPRODUCES] == "1"
    assert new_run.data.tags["medimg.reproduces_run_id"] == champion.run_id
    assert new_run.data.metrics["test_roc_auc"] == auc["reproduced"]
    assert "reproduction/comparison.json" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"], "reproduction")
    }

    # No registration, no alias move.
    assert {v.version for v in mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")} == versions_before
    assert registry.version_by_alias(MODEL, registry.CHAMPION).version == "1"
    text = render_text(result)
    assert "roc_auc" in text and "AUC within the original 95% CI: True" in text


def test_reproduce_refuses_an_unknown_version(lineage_ws):
    with pytest.raises(registry.VersionNotFound):
        reproduce(load_params(lineage_ws.params_file), lineage_ws.ws, "42")
    assert load_params(lineage_ws.params_file).registry.model_name == MODEL
