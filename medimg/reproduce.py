"""Reproduce a registered model version: same data version, same params, retrain, compare metrics.

Why: lineage records are claims; retraining from them is the test of those claims. ``reproduce``
restores the exact data version the version was trained on with DVC, rebuilds the run's params
from MLflow (checking that they hash to the run's ``medimg.params_hash`` tag), re-validates the
restored data, retrains and re-evaluates in a new MLflow run tagged ``medimg.reproduces=<version>``,
and reports the new metrics beside the original ones.

Promises:

* Nothing is registered and no alias moves: the reproduction is an MLflow run only.
* The workspace's data is put back to the version that was checked out before, so a later
  ``medimg run`` sees what it would have seen without the reproduction.
* Params are rebuilt exactly or not at all: the rebuilt params must flatten back to the very
  strings MLflow stored, else ``ReproduceError``. Only ``workspace.*`` is replaced (by the
  current workspace), since it says where to run, not what to compute. ``params_hash_matches``
  compares the rebuilt params' fingerprint with the run's ``medimg.params_hash`` tag (the
  fingerprint leaves ``workspace`` out, so a moved workspace still matches).
* Training is seeded (``medimg.training.loop``): on the CPU with the same torch build, data and
  params the reproduced metrics equal the originals; ``identical`` says whether they did, and
  ``auc_within_original_ci`` whether the new AUC at least lies in the original 95% CI.

The caller points MLflow at the workspace first (``medimg.workspace.activate``), as the CLI does.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from medimg import artifacts, model_record, registry, tracking
from medimg.artifacts import (
    TAG_CODE_HASH,
    TAG_DATA_VERSION,
    TAG_GIT_COMMIT,
    TAG_PARAMS_HASH,
    TAG_REPRODUCES,
    TAG_REPRODUCES_MODEL,
    TAG_REPRODUCES_RUN,
    TAG_REPRODUCTION_IDENTICAL,
    TAG_REPRODUCTION_WITHIN_CI,
)
from medimg.config import ConfigError, Params, parse_params
from medimg.contracts import TrainingData
from medimg.data import manifest, versioning
from medimg.evaluation.task_metrics import MULTICLASS_HEADLINE
from medimg.provenance import code_hash, git_commit
from medimg.steps import evaluate, train, validate
from medimg.workspace import Workspace

log = logging.getLogger(__name__)

BINARY_COMPARED = ("roc_auc", "accuracy", "sensitivity", "specificity", "pr_auc", "f1", "brier")
MULTICLASS_COMPARED = (*MULTICLASS_HEADLINE, "brier", "ece")


def compared_metrics(task_kind: str) -> tuple[str, ...]:
    """The test metrics a reproduction is compared on, for ``task_kind`` (binary | multiclass), the AUC first."""
    return BINARY_COMPARED if task_kind == "binary" else MULTICLASS_COMPARED


class ReproduceError(RuntimeError):
    """The version cannot be reproduced faithfully (unknown data version, params that do not rebuild)."""


def _members(annotation: object) -> list:
    if get_origin(annotation) in (Union, UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _is_text(model: type[BaseModel], parts: list[str]) -> bool:
    """Whether the param at this dotted path is a string (stored by MLflow as is, not JSON-encoded)."""
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    members = _members(field.annotation)
    if len(parts) > 1:
        nested = [t for t in members if isinstance(t, type) and issubclass(t, BaseModel)]
        return _is_text(nested[0], parts[1:]) if nested else False  # below a dict field: JSON values
    for t in members:
        if t is str or (isinstance(t, type) and issubclass(t, Enum) and issubclass(t, str)):
            return True
        if get_origin(t) is Literal and all(isinstance(a, str) for a in get_args(t)):
            return True
    return False


def _nest(flat: dict[str, object]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def params_from_run(flat: dict[str, str]) -> Params:
    """Rebuild typed params from MLflow's flat ``section.key`` strings (see ``Params.flat``).

    String params were stored as is and everything else JSON-encoded, so the schema decides which
    values to decode (``"null"`` is None either way). The result must flatten back to ``flat``
    exactly, else ``ReproduceError``: a run is reproduced with its own params or not at all.
    """
    decoded: dict[str, object] = {}
    for key, raw in flat.items():
        if _is_text(Params, key.split(".")) and raw != "null":
            decoded[key] = raw
        else:
            try:
                decoded[key] = json.loads(raw)
            except ValueError:
                decoded[key] = raw
    try:
        params = parse_params(_nest(decoded), "MLflow run params")
    except ConfigError as err:
        raise ReproduceError(f"the run's params do not fit the current params schema: {err}") from None
    rebuilt = params.flat()
    differing = sorted(k for k in set(flat) | set(rebuilt) if flat.get(k) != rebuilt.get(k))
    if differing:
        raise ReproduceError(
            "the run's params do not rebuild exactly (recorded vs rebuilt): "
            + "; ".join(f"{k}: {flat.get(k)!r} vs {rebuilt.get(k)!r}" for k in differing)
        )
    return params


def _prediction_diff(original_run: str, new_predictions: Path) -> float | None:
    """Largest |p_original - p_reproduced| over the test images, matched by id; None if the artifact is gone."""
    with tempfile.TemporaryDirectory(prefix="medimg-repro-") as tmp:
        try:
            path = registry.download_run_artifact(original_run, artifacts.TEST_PREDICTIONS, Path(tmp))
        except (MlflowException, OSError):
            return None
        old = pd.read_csv(path, dtype={"id": str}).set_index("id")["probability"]
    new = pd.read_csv(new_predictions, dtype={"id": str}).set_index("id")["probability"]
    if set(old.index) != set(new.index):
        return None
    return float(np.max(np.abs(old.sort_index().to_numpy() - new.sort_index().to_numpy())))


def reproduce(current: Params, ws: Workspace, version: str) -> dict:
    """Retrain model version ``version`` (a number, ``NAME@VERSION`` or ``NAME@ALIAS``) from its recorded inputs.

    ``current`` (the caller's params) supplies only the registry model name and where to run
    (``workspace.*``); what is computed comes from the original run. Returns the comparison (see
    the module docstring). Raises :class:`medimg.registry.VersionNotFound` for an unknown version.
    """
    started = time.perf_counter()
    mv = model_record.resolve(str(version), current.registry.model_name)
    if not mv.run_id:
        raise ReproduceError(f"model {mv.name} v{mv.version} has no MLflow run to reproduce")
    original = mv.run
    if original is None:
        raise ReproduceError(f"model {mv.name} v{mv.version}: its {mv.run_error}")
    data_version = mv.data_version or original.tags.get(TAG_DATA_VERSION)
    if not data_version:
        raise ReproduceError(f"model {mv.name} v{mv.version} has no data version tag")

    recorded = params_from_run(original.params)
    params_hash = recorded.fingerprint()
    recorded_hash = original.tags.get(TAG_PARAMS_HASH)
    params = parse_params(
        {
            **recorded.model_dump(mode="json"),
            "workspace": {**current.workspace.model_dump(mode="json"), "path": str(ws.root)},
        }
    )

    previous_data = versioning.current_version(ws)
    run_id = None
    try:
        versioning.checkout(ws, data_version)
        restored = versioning.current_version(ws)
        if restored != data_version:
            raise ReproduceError(f"DVC restored data version {restored}, not {data_version}")
        frame = manifest.read(ws.data)
        outcome = validate.check(params, frame)
        if not outcome.passed:
            raise ReproduceError(f"data version {data_version} fails validation now: {outcome.failed_critical}")
        data = TrainingData(data_version=data_version, dropped_ids=tuple(outcome.dropped_ids))

        run_id = tracking.start_run(
            params,
            ws,
            {
                TAG_REPRODUCES: mv.version,
                TAG_REPRODUCES_RUN: mv.run_id,
                TAG_REPRODUCES_MODEL: mv.name,
                TAG_DATA_VERSION: data_version,
                TAG_GIT_COMMIT: git_commit(),
                TAG_CODE_HASH: code_hash(),
                TAG_PARAMS_HASH: params_hash,
            },
        )
        log.info(
            "reproducing %s v%s (run %s) on data version %s in MLflow run %s",
            mv.name,
            mv.version,
            mv.run_id,
            data_version,
            run_id,
        )
        trained = train.run(params, ws, run_id, data)
        evaluated = evaluate.run(params, ws, run_id, data, trained)
    except BaseException:
        if run_id:
            tracking.finish(run_id, "FAILED")
        raise
    finally:
        if previous_data and previous_data != data_version and (ws.data_versions / f"{previous_data}.dvc").is_file():
            versioning.checkout(ws, previous_data)

    metrics: dict[str, dict[str, Any]] = {}  # JSON report rows: original/reproduced value, CI and difference
    for name in compared_metrics(params.task.kind):
        value = evaluated.test.get(name)
        if value is None:
            continue
        orig = mv.test_metrics.get(name)
        new = float(value)
        ci95 = evaluated.test_ci95.get(name)
        metrics[name] = {
            "original": orig.value if orig else None,
            "original_ci95": list(orig.ci95) if orig and orig.ci95 else None,
            "reproduced": new,
            "reproduced_ci95": list(ci95) if ci95 is not None else None,
            "diff": None if orig is None else new - orig.value,
        }
    auc = metrics[params.task.auc_metric]
    ci = auc["original_ci95"]
    within = bool(ci and ci[0] <= auc["reproduced"] <= ci[1])
    pred_diff = _prediction_diff(mv.run_id, evaluated.predictions)
    original_threshold = original.metrics.get("test_threshold")
    result = {
        "model_name": mv.name,
        "version": mv.version,
        "original_run_id": mv.run_id,
        "run_id": run_id,
        "data_version": data_version,
        "data_restored_from_dvc": True,
        "workspace_data_version_after": versioning.current_version(ws),
        "params_hash": params_hash,
        "params_hash_recorded": recorded_hash,
        "params_hash_matches": params_hash == recorded_hash,
        "git_commit_original": mv.tags.get(TAG_GIT_COMMIT),
        "git_commit_now": git_commit(),
        "code_hash_original": mv.tags.get(TAG_CODE_HASH),
        "code_hash_now": code_hash(),
        "dropped_ids": len(data.dropped_ids),
        "epochs_run": trained.epochs_run,
        "threshold": {"original": original_threshold, "reproduced": evaluated.threshold},
        "metrics": metrics,
        "auc_abs_diff": abs(auc["diff"]) if auc["diff"] is not None else None,
        "auc_within_original_ci": within,
        "predictions_max_abs_diff": pred_diff,
        "identical": bool(all(m["diff"] == 0 for m in metrics.values()) and pred_diff == 0.0),
        "seconds": round(time.perf_counter() - started, 1),
    }
    tracking.log_json(run_id, result, artifacts.REPRODUCTION_REPORT)
    tracking.set_tags(run_id, {TAG_REPRODUCTION_WITHIN_CI: within, TAG_REPRODUCTION_IDENTICAL: result["identical"]})
    tracking.finish(run_id)
    return result


def render_text(result: dict) -> str:
    """The comparison as plain text for the terminal."""
    lines = [
        f"Reproduction of {result['model_name']} v{result['version']} (run {result['original_run_id']})"
        f" -> MLflow run {result['run_id']}",
        f"  data version {result['data_version']} restored with DVC; params hash {result['params_hash']}"
        + (
            f" (matches the recorded {result['params_hash_recorded']})"
            if result["params_hash_matches"]
            else f" (differs from the recorded {result['params_hash_recorded']}: the params or their hashing changed"
            " after the run)"
        ),
        (
            f"  code then {result['git_commit_original']}, now {result['git_commit_now']}"
            f" (source hash then {result.get('code_hash_original')}, now {result.get('code_hash_now')})"
        ),
        f"  threshold original {result['threshold']['original']}, reproduced {result['threshold']['reproduced']}",
        f"  {'metric':<12} {'original':>9} {'95% CI':>17}   {'reproduced':>10} {'diff':>10}",
    ]
    for name, m in result["metrics"].items():
        ci = m["original_ci95"]
        ci_text = f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "n/a"
        orig = f"{m['original']:.4f}" if m["original"] is not None else "n/a"
        diff = f"{m['diff']:+.2e}" if m["diff"] is not None else "n/a"
        lines.append(f"  {name:<12} {orig:>9} {ci_text:>17}   {m['reproduced']:>10.4f} {diff:>10}")
    lines.append(
        f"  AUC within the original 95% CI: {result['auc_within_original_ci']}; identical: {result['identical']}"
        f" (max |probability diff| {result['predictions_max_abs_diff']})"
    )
    return "\n".join(lines) + "\n"
