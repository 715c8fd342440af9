"""One registered model version, read once from MLflow into one typed, frozen :class:`ModelRecord`.

Why: ``status``, ``lineage``, ``pull`` (the model card), ``reproduce`` and ``predict`` all need "a
registered version with its metrics, CIs, gate report and promotion history". They read it here,
through one loader, so they cannot disagree on where a field lives or what it means.

What is read, and from where (all by the version *number*, so an alias that moves while a reader
runs yields one version's record, never parts of two):

* the model version (:func:`medimg.registry.resolve`): name, version, its aliases, its tags, source,
  creation time, MLflow run id;
* the version's MLflow run: status, times, params, tags and every metric; the evaluate step logs
  each test metric as ``test_<name>`` with its 95% percentile-bootstrap interval as
  ``test_<name>_ci_low`` / ``test_<name>_ci_high`` (:mod:`medimg.steps.evaluate`,
  :mod:`medimg.evaluation.bootstrap`);
* four of the run's artifacts (:mod:`medimg.artifacts`): the gate report, the data-validation report,
  the evaluate step's ``evaluation/metrics.json`` (the task kind, classes, threshold, metrics with
  CIs, confusion matrix, images per split and class) and the model card the register step logged
  (``model_card/model_card.json``, :mod:`medimg.model_card`);
* the registered model: every alias, its ``medimg.*`` tags, and the promotion audit events mirrored
  there (``medimg.audit.<n>``, :mod:`medimg.promotion`), merged with the workspace's ``audit.jsonl``
  when the caller names it (:mod:`medimg.audit`).

Promises: reading changes nothing. A missing link (no run, an unreadable run, an artifact never
logged) is ``None`` in the record, never filled in from elsewhere; the one exception that raises is
a reference that names no version (:class:`medimg.registry.VersionNotFound`). The caller points
MLflow at the workspace or server first (``medimg.workspace.activate``).
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from medimg import artifacts, audit, registry
from medimg.promotion import events_from_tags

CI_LOW_SUFFIX = "_ci_low"
CI_HIGH_SUFFIX = "_ci_high"
TEST_PREFIX = "test_"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricEstimate(_Frozen):
    """One test-split metric: the point estimate and its 95% percentile-bootstrap interval.

    Units are the metric's own: rates and areas (accuracy, sensitivity, roc_auc, ...) are fractions
    in [0, 1]; ``brier`` and ``ece`` are probabilities; ``tp``/``fp``/``tn``/``fn``/``n`` are image
    counts; ``threshold`` is a probability. The bounds are ``None`` when no interval was logged
    (counts, the threshold) and NaN when the metric was undefined in every bootstrap replicate.
    """

    value: float
    ci95_low: float | None = None
    ci95_high: float | None = None

    @property
    def ci95(self) -> tuple[float, float] | None:
        """``(low, high)``, or ``None`` when either bound was not logged."""
        if self.ci95_low is None or self.ci95_high is None:
            return None
        return self.ci95_low, self.ci95_high


class RunRecord(_Frozen):
    """The MLflow run that produced the version (training, evaluation, gates and export all log into it)."""

    id: str
    name: str | None
    status: str  # MLflow's RunStatus name: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    experiment_id: str
    start: datetime | None  # UTC
    end: datetime | None  # UTC; None while running
    user: str | None
    artifact_uri: str | None
    params: dict[str, str]  # flat ``section.key`` strings (see ``Params.flat``)
    tags: dict[str, str]  # every run tag, MLflow's own included
    metrics: dict[str, float]  # latest value of every metric, by MLflow key (``test_roc_auc``, ``val_f1``, ...)


class GateRule(_Frozen):
    """One gate rule's verdict as the gate report records it (:class:`medimg.evaluation.gates.GateResult`)."""

    name: str
    passed: bool
    reason: str
    inputs: dict = Field(default_factory=dict)


class GateReport(_Frozen):
    """The gate report artifact (``gates/gate_report.json``), parsed; ``document`` is the JSON as written."""

    artifact: str
    passed: bool
    failed: tuple[str, ...]
    rules: tuple[GateRule, ...]
    threshold: float | None  # the decision threshold (probability) the gates judged
    champion_version: str | None  # the champion compared against, if there was one
    benchmark_id: str | None  # the reference benchmark's id (``medimg/reference/*.yaml``)
    document: dict


class ValidationResult(_Frozen):
    """The data-validation report artifact (``validation/*.json``), parsed; ``document`` is the JSON as written."""

    artifact: str
    passed: bool | None
    data_version: str | None
    document: dict


class EvaluationReport(_Frozen):
    """The evaluate step's ``metrics.json`` artifact, parsed; ``document`` is the JSON as written.

    ``task_kind``, ``class_names`` and ``abnormal_classes`` are ``None`` for a run written before
    the evaluate step recorded them (binary runs: see the run's ``task.*`` params).
    """

    artifact: str
    task_kind: str | None  # binary | multiclass
    class_names: tuple[str, ...] | None  # index = label
    abnormal_classes: tuple[str, ...] | None
    threshold: float | None  # on the abnormality probability, chosen on validation
    document: dict


class AuditEvent(BaseModel):
    """One promotion audit event (a line of ``audit.jsonl`` or a ``medimg.audit.<n>`` model tag).

    The named fields are those :mod:`medimg.promotion` writes; any other key is kept as is.
    ``when`` is ISO 8601 UTC to the second.
    """

    model_config = ConfigDict(frozen=True, extra="allow", coerce_numbers_to_str=True)

    when: str | None = None
    who: str | None = None
    action: str | None = None  # promote | rollback
    model: str | None = None
    alias: str | None = None
    version: str | None = None  # the version the alias moved to
    previous: str | None = None  # the version it moved from
    reason: str | None = None
    forced: bool | None = None
    flow_run_id: str | None = None
    mlflow_run_id: str | None = None
    onnx_sha256: str | None = None

    def as_dict(self) -> dict:
        """The event as it was recorded (only the keys it had)."""
        return self.model_dump(exclude_unset=True)


class PromotionTags(_Frozen):
    """What the version's own tags say about its last alias moves (:mod:`medimg.promotion`)."""

    promoted_at: str | None  # ISO 8601 UTC
    reason: str | None
    previous_champion: str | None  # a version number, or "none" for the first champion
    forced: bool  # promoted past failed gates with --force
    rolled_back_at: str | None
    rollback_reason: str | None


class ModelRecord(_Frozen):
    """A registered model version with everything recorded about it; see the module docstring for sources."""

    name: str
    version: str
    aliases: tuple[str, ...]  # this version's aliases (``champion``, ``challenger``)
    tags: dict[str, str]  # every version tag
    source: str  # the model artifact's URI in the artifact store
    created_at: datetime | None  # UTC, when the version was registered
    run_id: str | None
    run: RunRecord | None  # None when there is no run id or the run cannot be read
    run_error: str | None  # why ``run`` is None although ``run_id`` is set
    test_metrics: dict[str, MetricEstimate]  # by metric name without ``test_``, sorted by name
    # lineage keys, from the version's tags (None when untagged; never taken from another record)
    data_version: str | None  # DVC md5 of the dataset folder (without ``.dir``)
    params_hash: str | None  # ``Params.fingerprint()``
    git_commit: str | None  # sha, ``-dirty`` appended when the tree had changes
    code_hash: str | None  # sha256 of the package source at training time (:func:`medimg.provenance.code_hash`)
    onnx_sha256: str | None  # hex sha256 of the registered ``model.onnx``
    onnx_parity_max_abs_diff: float | None  # max |ONNX - PyTorch| logit difference at export
    flow_run_id: str | None  # the Prefect flow run that registered the version
    validation_passed: bool | None  # ``medimg.validation_passed``
    gate_passed: bool | None  # ``medimg.gate_passed``
    gate_failed_rules: tuple[str, ...]  # ``medimg.gate_failed_rules``
    promotion: PromotionTags
    gate: GateReport | None  # the run's gate report artifact
    validation: ValidationResult | None  # the run's data-validation artifact
    evaluation: EvaluationReport | None = None  # the run's metrics.json artifact
    card: dict | None = None  # the model card the register step logged (JSON), if it did
    model_aliases: dict[str, str]  # every alias of the registered model -> version
    model_tags: dict[str, str]  # the registered model's ``medimg.*`` tags
    promotion_history: tuple[AuditEvent, ...]  # every alias move of this model, oldest first
    audit_log: Path | None  # the workspace audit log merged into ``promotion_history``

    @property
    def is_champion(self) -> bool:
        """Whether the version holds the ``champion`` alias."""
        return registry.CHAMPION in self.aliases

    @property
    def version_events(self) -> tuple[AuditEvent, ...]:
        """The audit events that moved an alias to or from this version."""
        return tuple(e for e in self.promotion_history if self.version in (e.version, e.previous))


# ----------------------------------------------------------------------------------------------
# pure: raw MLflow values -> typed fields


def iso(moment: datetime | None) -> str | None:
    """``moment`` as ISO 8601 to the second (``None`` stays ``None``)."""
    return moment.isoformat(timespec="seconds") if moment else None


def _utc(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def metrics_with_ci(run_metrics: dict[str, float]) -> dict[str, MetricEstimate]:
    """``{name: MetricEstimate}`` for every ``test_<name>`` metric, its CI from ``test_<name>_ci_low/high``."""
    out = {}
    for key in sorted(run_metrics):
        if not key.startswith(TEST_PREFIX) or key.endswith((CI_LOW_SUFFIX, CI_HIGH_SUFFIX)):
            continue
        out[key[len(TEST_PREFIX) :]] = MetricEstimate(
            value=run_metrics[key],
            ci95_low=run_metrics.get(f"{key}{CI_LOW_SUFFIX}"),
            ci95_high=run_metrics.get(f"{key}{CI_HIGH_SUFFIX}"),
        )
    return out


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "True"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def gate_report(document: dict, artifact: str = artifacts.GATE_REPORT) -> GateReport:
    """The gate report JSON (as :mod:`medimg.steps.gate` writes it), typed."""
    champion = document.get("champion_version")
    return GateReport(
        artifact=artifact,
        passed=bool(document.get("passed")),
        failed=tuple(document.get("failed") or ()),
        rules=tuple(
            GateRule(
                name=r.get("name"),
                passed=bool(r.get("passed")),
                reason=r.get("reason") or "",
                inputs=r.get("inputs") or {},
            )
            for r in document.get("rules") or ()
        ),
        threshold=document.get("threshold"),
        champion_version=None if champion is None else str(champion),
        benchmark_id=(document.get("benchmark") or {}).get("id"),
        document=document,
    )


def evaluation_report(document: dict, artifact: str = artifacts.EVALUATION_REPORT) -> EvaluationReport:
    """``metrics.json`` (as :mod:`medimg.steps.evaluate` writes it), typed."""
    names, abnormal, threshold = (
        document.get("class_names"),
        document.get("abnormal_classes"),
        document.get("threshold"),
    )
    return EvaluationReport(
        artifact=artifact,
        task_kind=document.get("task_kind"),
        class_names=tuple(names) if names is not None else None,
        abnormal_classes=tuple(abnormal) if abnormal is not None else None,
        threshold=threshold if isinstance(threshold, (int, float)) else None,
        document=document,
    )


def merge_events(workspace_events: list[dict], tag_events: list[dict], model: str) -> tuple[AuditEvent, ...]:
    """The model's events from both records, oldest first; one in both (same when, action, version) once."""
    merged: dict[tuple, dict] = {}
    for event in [*workspace_events, *tag_events]:
        if event.get("model") == model:
            merged.setdefault((event.get("when"), event.get("action"), str(event.get("version"))), event)
    return tuple(AuditEvent(**e) for e in sorted(merged.values(), key=lambda e: str(e.get("when"))))


# ----------------------------------------------------------------------------------------------
# MLflow reads


def _run(run_id: str) -> tuple[RunRecord | None, str | None]:
    try:
        run = registry.client().get_run(run_id)
    except MlflowException as err:
        return None, f"MLflow run {run_id} cannot be read ({err.error_code})"
    info, data = run.info, run.data
    return RunRecord(
        id=info.run_id,
        name=info.run_name,
        status=info.status,
        experiment_id=str(info.experiment_id),
        start=_utc(info.start_time),
        end=_utc(info.end_time),
        user=info.user_id,
        artifact_uri=info.artifact_uri,
        params=dict(sorted(data.params.items())),
        tags=dict(data.tags),
        metrics=dict(data.metrics),
    ), None


def _artifact_json(run_id: str, path: str, scratch: Path) -> dict | None:
    try:
        local = registry.download_run_artifact(run_id, path, scratch)
        document = json.loads(local.read_text(encoding="utf-8"))
    except (MlflowException, OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _validation(run_id: str, scratch: Path) -> ValidationResult | None:
    try:
        listed = registry.client().list_artifacts(run_id, artifacts.VALIDATION_DIR)
    except (MlflowException, OSError):
        return None
    files = [a.path for a in listed if not a.is_dir and a.path.endswith(".json")]
    document = _artifact_json(run_id, files[0], scratch) if files else None
    if document is None:
        return None
    return ValidationResult(
        artifact=files[0], passed=document.get("passed"), data_version=document.get("data_version"), document=document
    )


def _registered_model(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(aliases -> version, ``medimg.*`` tags) of the registered model; empty when it cannot be read."""
    try:
        model = registry.client().get_registered_model(name)
    except MlflowException:
        return {}, {}
    aliases = {alias: str(v) for alias, v in (model.aliases or {}).items()}
    return aliases, {k: v for k, v in (model.tags or {}).items() if k.startswith(artifacts.TAG_PREFIX)}


def from_version(info: registry.VersionInfo, audit_log: Path | None = None) -> ModelRecord:
    """The record of the version ``info`` names (its run, artifacts and the model's history read now)."""
    run, run_error = _run(info.run_id) if info.run_id else (None, None)
    gate = validation = evaluation = card = None
    if run is not None:
        with tempfile.TemporaryDirectory(prefix="medimg-record-") as scratch:
            gate_doc = _artifact_json(run.id, artifacts.GATE_REPORT, Path(scratch) / "gate")
            gate = gate_report(gate_doc) if gate_doc is not None else None
            validation = _validation(run.id, Path(scratch) / "validation")
            evaluation_doc = _artifact_json(run.id, artifacts.EVALUATION_REPORT, Path(scratch) / "evaluation")
            evaluation = evaluation_report(evaluation_doc) if evaluation_doc is not None else None
            card = _artifact_json(run.id, artifacts.MODEL_CARD, Path(scratch) / "card")
    model_aliases, model_tags = _registered_model(info.name)
    workspace_events = audit.read(audit_log) if audit_log is not None else []
    tags = info.tags
    return ModelRecord(
        name=info.name,
        version=info.version,
        aliases=tuple(info.aliases),
        tags=dict(sorted(tags.items())),
        source=info.source,
        created_at=_utc(info.created_ms),
        run_id=info.run_id,
        run=run,
        run_error=run_error,
        test_metrics=metrics_with_ci(run.metrics) if run else {},
        data_version=tags.get(registry.TAG_DATA_VERSION),
        params_hash=tags.get(registry.TAG_PARAMS_HASH),
        git_commit=tags.get(registry.TAG_GIT_COMMIT),
        code_hash=tags.get(registry.TAG_CODE_HASH),
        onnx_sha256=tags.get(registry.TAG_ONNX_SHA256),
        onnx_parity_max_abs_diff=_float(tags.get(registry.TAG_PARITY)),
        flow_run_id=tags.get(registry.TAG_FLOW_RUN),
        validation_passed=_flag(tags.get(registry.TAG_VALIDATION)),
        gate_passed=_flag(tags.get(registry.TAG_GATE)),
        gate_failed_rules=tuple(r for r in (tags.get(registry.TAG_GATE_FAILED) or "").split(",") if r and r != "none"),
        promotion=PromotionTags(
            promoted_at=tags.get(registry.TAG_PROMOTED_AT),
            reason=tags.get(registry.TAG_PROMOTION_REASON),
            previous_champion=tags.get(registry.TAG_PREVIOUS_CHAMPION),
            forced=tags.get(registry.TAG_PROMOTION_FORCED) == "True",
            rolled_back_at=tags.get(registry.TAG_ROLLED_BACK_AT),
            rollback_reason=tags.get(registry.TAG_ROLLBACK_REASON),
        ),
        gate=gate,
        validation=validation,
        evaluation=evaluation,
        card=card,
        model_aliases=model_aliases,
        model_tags=model_tags,
        promotion_history=merge_events(workspace_events, events_from_tags(model_tags), info.name),
        audit_log=audit_log,
    )


def resolve(ref: str, default_name: str, audit_log: Path | None = None) -> ModelRecord:
    """The record of the version ``ref`` names (``NAME@ALIAS``, ``NAME@VERSION``, ``VERSION``, ``ALIAS``).

    Raises :class:`medimg.registry.VersionNotFound` (saying which model lacks which version or
    alias) when ``ref`` names no registered version. ``audit_log``: the workspace's ``audit.jsonl``
    to merge with the registry's copy of the promotion history.
    """
    return from_version(registry.resolve(ref, default_name), audit_log)


def load(name: str, version: str | int, audit_log: Path | None = None) -> ModelRecord:
    """The record of version ``version`` (``3``, ``"3"`` or ``"v3"``) of model ``name``.

    Raises :class:`~medimg.registry.VersionNotFound` when ``version`` is not a version number or
    the model has no such version.
    """
    number = str(version).strip().lstrip("vV")
    if not number.isdigit():
        raise registry.VersionNotFound(f"{version!r} is not a version number")
    return resolve(f"{name}@{number}", name, audit_log)


def by_alias(name: str, alias: str, audit_log: Path | None = None) -> ModelRecord | None:
    """The record of the version ``alias`` names, or ``None`` when the model has no such alias."""
    info = registry.version_by_alias(name, alias)
    return from_version(info, audit_log) if info is not None else None
