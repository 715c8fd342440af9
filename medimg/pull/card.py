"""The model card of a pulled model: the run's card, plus what only a pull knows.

Takes a :class:`~medimg.model_record.ModelRecord` (the version as the registry records it) and
the verified ONNX file (its own metadata holds the preprocessing contract, the classes and the
threshold); promises a JSON-native dict (:func:`build_card`, written as ``model_card.json``) and a
Markdown rendering of exactly that dict (:func:`card_markdown`, template ``model_card.md.j2``,
written as ``model_card.md``).

The run's part is the card the register step built from the run (:mod:`medimg.model_card`) and
logged as ``model_card/model_card.json``; for a version registered before that, it is built now by
the same function from the run's logged params, its ``metrics.json`` (or its ``test_*`` metrics)
and gate report. A pull adds the verified sha256, the alias pulled by, the aliases and promotion
as they are now, the ONNX input and output names, and the tracking URI without credentials.

A version whose MLflow run cannot be read, or that has no run, gets no card
(:class:`~medimg.pull.errors.PullError`): a card without its lineage would mislead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from medimg import artifacts, model_card, registry
from medimg.audit import now_iso
from medimg.config import MOVED_TO_TASK, Params
from medimg.export.onnx_export import read_metadata
from medimg.model_record import ModelRecord
from medimg.pull.errors import PullError

log = logging.getLogger(__name__)

CARD_JSON = model_card.CARD_JSON
CARD_MD = model_card.CARD_MD


def card_markdown(card: Mapping) -> str:
    """The human-readable card; every number comes from ``card`` (the JSON card)."""
    return model_card.card_markdown(card)


def public_uri(uri: str) -> str:
    """The tracking URI without any user:password part."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def _decode_meta(meta: dict[str, str]) -> dict:
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def params_from_run(flat: Mapping[str, str]) -> Params:
    """The :class:`~medimg.config.Params` a run logged as flat ``section.key`` strings (``Params.flat``).

    Values are JSON where they were not strings. A run from before the ``task`` section has
    ``data.class_names``/``modalities``/``body_part``: they move to ``task``, and its positive class
    (then always index 1) becomes ``task.abnormal``. Raises ``ValueError`` (pydantic's
    ``ValidationError``) when the params do not validate.
    """
    nested: dict = {}
    for key, raw in flat.items():
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    data, task = nested.get("data", {}), nested.setdefault("task", {})
    for key in MOVED_TO_TASK & set(data):
        task.setdefault(key, data.pop(key))
    if "abnormal" not in task and len(task.get("class_names") or ()) == 2:
        task["abnormal"] = [task["class_names"][1]]
    return Params.model_validate(nested)


def _evaluation_from_run(record: ModelRecord) -> dict:
    """``metrics.json`` as recorded, or the same layout from the run's ``test_*`` metrics when it was not."""
    if record.evaluation is not None:
        return record.evaluation.document
    test = {name: m.value for name, m in record.test_metrics.items()}
    ci95 = {name: [m.ci95_low, m.ci95_high] for name, m in record.test_metrics.items() if m.ci95 is not None}
    return {"test": test, "test_ci95": ci95, "threshold": test.get("threshold"), "n_test": test.get("n")}


def run_card(record: ModelRecord, meta: Mapping) -> dict:
    """The run's part of the card: the one the register step logged, else rebuilt from the run's records.

    Raises :class:`PullError` when there is no run to build it from or its params do not validate.
    """
    if record.card is not None:
        return dict(record.card)
    if record.run is None:
        raise PullError(f"model {record.name} v{record.version}: no MLflow run and no model card; nothing describes it")
    try:
        params = params_from_run(record.run.params)
        return model_card.run_card(
            params,
            meta.get(artifacts.META_PREPROCESSING),
            _evaluation_from_run(record),
            record.gate.document if record.gate else None,
            record.data_version or meta.get(artifacts.META_DATA_VERSION),
            (record.validation.document.get("warts") if record.validation else None),
        )
    except ValueError as err:
        detail = str(err).splitlines()[0] if isinstance(err, ValidationError) else str(err)
        raise PullError(
            f"model {record.name} v{record.version}: no card can be built from its run ({detail})"
        ) from None


def build_card(record: ModelRecord, onnx_path: Path, alias: str | None) -> dict:
    """The model card as a dict: the run's card (task, data, metrics with CIs, gate, use) and the pull's facts.

    ``onnx_path`` is the file already verified against ``record.onnx_sha256``; ``alias`` the alias
    the caller pulled by (``None`` when by version number). Raises :class:`PullError` when the
    version names an MLflow run that cannot be read, or when the card names other classes than
    the file's metadata.
    """
    if record.run_id and record.run is None:
        raise PullError(f"model {record.name} v{record.version}: its {record.run_error}; no card without its lineage")
    if record.run is not None and record.gate is None:
        log.warning("model %s v%s: no gate report artifact", record.name, record.version)
    meta = _decode_meta(read_metadata(onnx_path))
    card = run_card(record, meta)
    onnx_classes = meta.get(artifacts.META_CLASS_NAMES)
    if onnx_classes is not None and list(onnx_classes) != card["task"]["class_names"]:
        raise PullError(
            f"model {record.name} v{record.version}: its card names classes {card['task']['class_names']}, its "
            f"ONNX metadata {onnx_classes}"
        )
    return {
        **card,
        "model_name": record.name,
        "version": record.version,
        "pulled_alias": alias,
        "aliases_at_pull": sorted(record.aliases),
        "pulled_at": now_iso(),
        "tracking_uri": public_uri(registry.client().tracking_uri),
        "onnx_file": registry.ONNX_FILE,
        "sha256": record.onnx_sha256,
        "sha256_verified_against": registry.TAG_ONNX_SHA256,
        "mlflow_run_id": record.run_id,
        "data_version": record.data_version or meta.get(artifacts.META_DATA_VERSION),
        "git_commit": record.git_commit or meta.get(artifacts.META_GIT_COMMIT),
        "params_hash": record.params_hash,
        "flow_run_id": record.flow_run_id,
        "validation_passed": record.validation_passed is True,
        "onnx_parity_max_abs_diff": record.onnx_parity_max_abs_diff,
        "input_name": meta.get(artifacts.META_INPUT_NAME),
        "input_layout": meta.get(artifacts.META_INPUT_LAYOUT),
        "output": meta.get(artifacts.META_OUTPUT),
        "preprocessing": meta.get(artifacts.META_PREPROCESSING, card.get("preprocessing")),
        "architecture": meta.get(artifacts.META_ARCHITECTURE),
        "gate": {
            "passed": record.gate_passed is True,
            "failed_rules": list(record.gate_failed_rules),
            "report": record.gate.document if record.gate else None,
        },
        "promotion": {
            "promoted_at": record.promotion.promoted_at,
            "reason": record.promotion.reason,
            "previous_champion": record.promotion.previous_champion,
            "forced": record.promotion.forced,
        },
    }
