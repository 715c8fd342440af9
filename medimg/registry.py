"""MLflow Model Registry I/O: register ONNX models, read and move aliases, read lineage tags.

Aliases, not stages: ``champion`` is the version deployment pipelines pull, ``challenger`` a
registered candidate that did not pass its gates. ``champion`` moves only through
:mod:`medimg.promotion` (the flow's register step, ``medimg promote``, ``medimg rollback``), and
the flow moves it only when every gate passed.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
ONNX_FILE = "model.onnx"
MODEL_ARTIFACT = "model"

TAG_DATA_VERSION = "medimg.data_version"
TAG_GIT_COMMIT = "medimg.git_commit"
#: Content hash of the package source (:func:`medimg.provenance.code_hash`): the code part of the run key.
TAG_CODE_HASH = "medimg.code_hash"
TAG_PARAMS_HASH = "medimg.params_hash"
TAG_VALIDATION = "medimg.validation_passed"
TAG_GATE = "medimg.gate_passed"
TAG_GATE_FAILED = "medimg.gate_failed_rules"
TAG_ONNX_SHA256 = "medimg.onnx_sha256"
TAG_PARITY = "medimg.onnx_parity_max_abs_diff"
TAG_FLOW_RUN = "medimg.flow_run_id"
TAG_PROMOTED_AT = "medimg.promoted_at"
TAG_PROMOTION_REASON = "medimg.promotion_reason"
TAG_PREVIOUS_CHAMPION = "medimg.previous_champion"
TAG_PROMOTION_FORCED = "medimg.promotion_forced"
TAG_ROLLED_BACK_AT = "medimg.rolled_back_at"
TAG_ROLLBACK_REASON = "medimg.rollback_reason"
#: Registered-model tags ``medimg.audit.000001``, ``...000002``: one JSON audit event each, the same
#: line as in the workspace's ``audit.jsonl``, readable in the MLflow UI beside the model.
AUDIT_TAG_PREFIX = "medimg.audit."


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    aliases: list[str]
    source: str
    created_ms: int | None = None


class VersionNotFound(LookupError):
    """A model reference that is malformed or names no registered version."""


def client() -> MlflowClient:
    return MlflowClient()


def ensure_experiment(name: str, artifact_root: Path | None) -> str:
    """Experiment id; new experiments store artifacts under ``artifact_root`` when given."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_root.joinpath(name).as_uri() if artifact_root else None
    return mlflow.create_experiment(name, artifact_location=location)


def _info(mv) -> VersionInfo:
    return VersionInfo(
        name=mv.name, version=str(mv.version), run_id=mv.run_id, tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []), source=mv.source,
        created_ms=getattr(mv, "creation_timestamp", None),
    )


def parse_ref(ref: str, default_name: str) -> tuple[str, str | None, str | None]:
    """``(model name, version or None, alias or None)`` for ``NAME@ALIAS``, ``NAME@VERSION``, ``VERSION``.

    A bare number (``3``, ``v3`` or ``V3``) is a version of ``default_name``; a bare word is an
    alias of it (``champion``); ``@champion`` likewise. Digits (``3``, ``v3``) always name a
    version, as in MLflow's own ``models:/name/3``; MLflow refuses ``v3`` as an alias but not
    ``3``, and an alias ``3`` cannot be reached this way.
    """
    ref = ref.strip()
    if not ref:
        raise VersionNotFound("empty model reference; expected NAME@ALIAS, NAME@VERSION or VERSION")
    name, _, what = ref.rpartition("@")
    name = name or default_name
    if re.fullmatch(r"[vV]?\d+", what):
        return name, what.lstrip("vV"), None
    if not what:
        raise VersionNotFound(f"{ref!r}: nothing after '@'; expected an alias or a version number")
    return name, None, what


def resolve(ref: str, default_name: str) -> VersionInfo:
    """The registered version ``ref`` names (see :func:`parse_ref`); :class:`VersionNotFound` if none."""
    name, version, alias = parse_ref(ref, default_name)
    if alias is not None:
        found = version_by_alias(name, alias)
        if found is None:
            raise VersionNotFound(f"{ref!r}: model {name!r} has no alias {alias!r}")
        return found
    try:
        return get_version(name, version)
    except MlflowException as err:
        raise VersionNotFound(f"{ref!r}: model {name!r} has no version {version} ({err.message})") from None


def version_by_alias(model_name: str, alias: str) -> VersionInfo | None:
    try:
        return _info(client().get_model_version_by_alias(model_name, alias))
    except MlflowException:
        return None


def get_version(model_name: str, version: str) -> VersionInfo:
    return _info(client().get_model_version(model_name, str(version)))


def log_onnx(onnx_path: Path) -> str:
    """Log the ONNX file as an MLflow model in the active run; returns the model URI."""
    import onnx

    proto = onnx.load(str(onnx_path))
    info = mlflow.onnx.log_model(onnx_model=proto, name=MODEL_ARTIFACT, save_as_external_data=False)
    return info.model_uri


def version_of_run(model_name: str, run_id: str) -> VersionInfo | None:
    """The version of ``model_name`` registered from MLflow run ``run_id``, if there is one."""
    found = client().search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return _info(max(found, key=lambda mv: int(mv.version))) if found else None


def register(model_uri: str, model_name: str, tags: dict[str, str]) -> VersionInfo:
    mv = mlflow.register_model(model_uri, model_name, tags={k: str(v) for k, v in tags.items()})
    return get_version(model_name, mv.version)


def set_tags(model_name: str, version: str, tags: dict[str, str]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(model_name, str(version), key, str(value))


def set_alias(model_name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(model_name, alias, str(version))


def download_onnx(model_name: str, version: str, dest: Path | None = None) -> Path:
    """The version's ONNX file, downloaded from the artifact store."""
    dest = Path(dest or tempfile.mkdtemp(prefix="medimg-model-"))
    location = client().get_model_version_download_uri(model_name, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/{ONNX_FILE}", dst_path=str(dest))
    return Path(local)


def model_tags(model_name: str) -> dict[str, str]:
    """Tags of the registered model itself (not of a version)."""
    return dict(client().get_registered_model(model_name).tags or {})


def set_model_tag(model_name: str, key: str, value: str) -> None:
    client().set_registered_model_tag(model_name, key, str(value))


def delete_alias(model_name: str, alias: str) -> None:
    client().delete_registered_model_alias(model_name, alias)


def download_run_artifact(run_id: str, artifact_path: str, dest: Path) -> Path:
    """One artifact of an MLflow run, downloaded into ``dest``."""
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest))
    return Path(local)
