"""MLflow Model Registry I/O: register ONNX models, read and move aliases, read lineage tags.

Aliases, not stages: ``champion`` is the version deployment pipelines pull, ``challenger`` a
registered candidate that did not pass its gates. ``champion`` moves only through
:mod:`medimg.promotion` (the flow's register step, ``medimg promote``, ``medimg rollback``), and
the flow moves it only when every gate passed.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import mlflow
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# The names are spelled in medimg.artifacts; registry readers (promotion, pull, lineage, status) address them here.
from medimg.artifacts import (  # noqa: F401
    AUDIT_TAG_PREFIX,
    MODEL_ARTIFACT,
    ONNX_FILE,
    TAG_CODE_HASH,
    TAG_DATA_VERSION,
    TAG_FLOW_RUN,
    TAG_GATE,
    TAG_GATE_FAILED,
    TAG_GIT_COMMIT,
    TAG_ONNX_SHA256,
    TAG_PARAMS_HASH,
    TAG_PARITY,
    TAG_PREVIOUS_CHAMPION,
    TAG_PROMOTED_AT,
    TAG_PROMOTION_FORCED,
    TAG_PROMOTION_REASON,
    TAG_ROLLBACK_REASON,
    TAG_ROLLED_BACK_AT,
    TAG_VALIDATION,
)

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version as medimg uses it: name, version, run id, tags, aliases, source URI, creation time
    (ms).
    """

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
    """An MLflow client for the current tracking URI."""
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
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []),
        source=mv.source,
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
    assert version is not None  # parse_ref gives a version whenever it gives no alias
    try:
        return get_version(name, version)
    except MlflowException as err:
        raise VersionNotFound(f"{ref!r}: model {name!r} has no version {version} ({err.message})") from None


def version_by_alias(model_name: str, alias: str) -> VersionInfo | None:
    """The version that holds ``alias`` of ``model_name``, or None (no such alias or model)."""
    try:
        return _info(client().get_model_version_by_alias(model_name, alias))
    except MlflowException:
        return None


def get_version(model_name: str, version: str) -> VersionInfo:
    """Version ``version`` of ``model_name``; raises ``MlflowException`` when it does not exist."""
    return _info(client().get_model_version(model_name, str(version)))


def versions(model_name: str) -> list[VersionInfo]:
    """Every registered version of ``model_name``, newest first; [] when the model does not exist."""
    try:
        found = client().search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return []
    return sorted((_info(mv) for mv in found), key=lambda v: int(v.version), reverse=True)


def run_params(run_id: str) -> dict[str, str]:
    """The params MLflow run ``run_id`` logged (flat ``section.key`` strings, see ``Params.flat``)."""
    return dict(client().get_run(run_id).data.params)


def log_onnx(run_id: str, onnx_path: Path) -> str:
    """Log the ONNX file as an MLflow model (artifact folder ``model``) of run ``run_id``; returns the model URI.

    ``mlflow.onnx.log_model`` logs into the active run, so run ``run_id`` is made active for the
    call; leaving the ``mlflow.start_run`` block marks it FINISHED, as any ``start_run`` does (the
    flow sets its final status afterwards).
    """
    proto = onnx.load(str(onnx_path))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx_model=proto, name=MODEL_ARTIFACT, save_as_external_data=False)
    return info.model_uri


def version_of_run(model_name: str, run_id: str) -> VersionInfo | None:
    """The version of ``model_name`` registered from MLflow run ``run_id``, if there is one."""
    found = client().search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return _info(max(found, key=lambda mv: int(mv.version))) if found else None


def register(model_uri: str, model_name: str, tags: Mapping[str, object]) -> VersionInfo:
    """Register ``model_uri`` as a new version of ``model_name`` with ``tags`` (values as str) and return it."""
    mv = mlflow.register_model(model_uri, model_name, tags={k: str(v) for k, v in tags.items()})
    return get_version(model_name, mv.version)


def set_tags(model_name: str, version: str, tags: Mapping[str, object]) -> None:
    """Set each of ``tags`` (values as str) on version ``version`` of ``model_name``."""
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(model_name, str(version), key, str(value))


def set_description(model_name: str, version: str, description: str) -> None:
    """Set the description of version ``version`` of ``model_name`` (Markdown; the registry UI renders it).

    MLflow stores at most 5000 characters there (``model_versions.description``,
    :data:`medimg.model_card.DESCRIPTION_LIMIT`); PostgreSQL and MySQL stores refuse more.
    """
    client().update_model_version(model_name, str(version), description=description)


def set_alias(model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``model_name`` at ``version`` (moving it from any other version)."""
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
    """Set a tag on the registered model itself (not on a version); the value is written as str."""
    client().set_registered_model_tag(model_name, key, str(value))


def delete_alias(model_name: str, alias: str) -> None:
    """Remove ``alias`` from ``model_name``."""
    client().delete_registered_model_alias(model_name, alias)


def download_run_artifact(run_id: str, artifact_path: str, dest: Path) -> Path:
    """One artifact of an MLflow run, downloaded into ``dest``."""
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest))
    return Path(local)
