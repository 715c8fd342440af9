"""The model card of a pulled model: what it is, where it came from, how good it is, how to use it.

Takes a :class:`~medimg.model_record.ModelRecord` (the version as the registry records it) and
the verified ONNX file (its own metadata holds the preprocessing contract, the classes and the
threshold); promises a JSON-native dict (:func:`build_card`, written as ``model_card.json``) and a
Markdown rendering of exactly that dict (:func:`card_markdown`, template ``model_card.md.j2``,
written as ``model_card.md``). A version whose MLflow run cannot be read gets no card
(:class:`~medimg.pull.errors.PullError`): a card without its lineage would mislead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from medimg import artifacts, registry, rendering
from medimg.audit import now_iso
from medimg.export.onnx_export import read_metadata
from medimg.model_record import ModelRecord
from medimg.pull.errors import PullError

log = logging.getLogger(__name__)

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
CARD_VERSION = 1
MARKDOWN_TEMPLATE = "model_card.md.j2"
COUNT_METRICS = {"tp", "fp", "tn", "fn", "n"}

INTENDED_USE = (
    "Research and engineering use: a probability that a frontal paediatric chest radiograph shows "
    "pneumonia (class 'pneumonia' vs 'normal'), for decision support under the supervision of a qualified "
    "clinician, at the recorded decision threshold. Not a certified medical device; not for autonomous "
    "diagnosis."
)
LIMITATIONS = [
    "Trained and tested on PneumoniaMNIST (MedMNIST v2): 28x28 downsampled paediatric (age 1-5) chest "
    "X-rays from one centre (Guangzhou Women and Children's Medical Center). Performance on adults, other "
    "sites, scanners or populations has not been measured.",
    "Inputs are reduced to the contract's size (see preprocessing) with bilinear resizing and no "
    "antialiasing; fine detail of full-resolution images is lost and large images alias.",
    "The model scores any grey image it is given, including CT or MR slices and non-chest radiographs: such "
    "scores are meaningless. Only frontal chest radiographs are in scope.",
    "The decision threshold was chosen on the validation split for a target sensitivity; its sensitivity "
    "and specificity at other prevalences or sites will differ.",
    "The data set holds a few byte-identical images across splits (reported by validation), which can "
    "flatter test metrics slightly.",
    "Metrics' 95% confidence intervals are percentile bootstrap intervals over the 624-image test split.",
]


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


def build_card(record: ModelRecord, onnx_path: Path, alias: str | None) -> dict:
    """The model card as a dict: identity, lineage, metrics with CIs, gate report, contract, use.

    ``onnx_path`` is the file already verified against ``record.onnx_sha256``; ``alias`` the alias
    the caller pulled by (``None`` when by version number). Raises :class:`PullError` when the
    version names an MLflow run that cannot be read.
    """
    if record.run_id and record.run is None:
        raise PullError(f"model {record.name} v{record.version}: its {record.run_error}; no card without its lineage")
    if record.run is not None and record.gate is None:
        log.warning("model %s v%s: no gate report artifact", record.name, record.version)
    meta = _decode_meta(read_metadata(onnx_path))
    params = record.run.params if record.run else {}
    return {
        "card_version": CARD_VERSION,
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
        "class_names": meta.get(artifacts.META_CLASS_NAMES),
        "positive_class": meta.get(artifacts.META_POSITIVE_CLASS),
        "threshold": meta.get(artifacts.META_THRESHOLD),
        "threshold_rule": params.get("gates.threshold"),
        "input_name": meta.get(artifacts.META_INPUT_NAME),
        "input_layout": meta.get(artifacts.META_INPUT_LAYOUT),
        "output": meta.get(artifacts.META_OUTPUT),
        "preprocessing": meta.get(artifacts.META_PREPROCESSING),
        "architecture": meta.get(artifacts.META_ARCHITECTURE),
        "training_data": params.get("data.medmnist_flag"),
        "metrics": {name: m.model_dump() for name, m in record.test_metrics.items()},
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
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }


def card_markdown(card: dict) -> str:
    """The human-readable card; every number comes from ``card`` (the JSON card)."""
    return rendering.render(MARKDOWN_TEMPLATE, card=card, count_metrics=COUNT_METRICS)
