"""The lineage report as typed, frozen data: one section per link of the chain, and the checks.

Built by :mod:`medimg.lineage.gather`, judged by :mod:`medimg.lineage.checks`, shown by
:mod:`medimg.lineage.render`. A link that could not be read is marked (``found=False``, ``None``
values), never filled in. Times are ISO 8601 UTC strings to the second.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from medimg.model_record import AuditEvent


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSection(_Frozen):
    """The registered version: name, version, aliases, source URI, tags, registration time."""

    name: str
    version: str
    aliases: tuple[str, ...]
    is_champion: bool
    source: str
    tags: dict[str, str]  # every version tag, sorted by key
    registered_at: str | None


class MetricSummary(_Frozen):
    """A test metric (fraction, probability or count; see :class:`medimg.model_record.MetricEstimate`)."""

    value: float
    ci95: tuple[float, float] | None  # 95% percentile-bootstrap interval


class RunSection(_Frozen):
    """The MLflow run that trained the version: ids, times, params, ``medimg.*`` tags, key test metrics."""

    id: str | None
    found: bool  # False: no run id, or the run cannot be read
    status: str | None
    name: str | None = None
    experiment_id: str | None = None
    start: str | None = None
    end: str | None = None
    user: str | None = None
    artifact_uri: str | None = None
    params: dict[str, str] = {}
    tags: dict[str, str] = {}  # the run's ``medimg.*`` tags
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    metrics: dict[str, MetricSummary] = {}  # the test metrics in :data:`medimg.lineage.gather.KEY_METRICS`
    threshold: float | None = None  # decision threshold (probability)
    n_test: int | None = None  # images in the test split


class CodeSection(_Frozen):
    """The git commit the run was trained from, whether it was dirty, and whether this checkout knows it."""

    commit: str | None  # as tagged: sha, ``-dirty`` appended when the tree had changes
    sha: str | None
    dirty: bool | None
    in_checkout: bool  # whether this checkout's git knows the commit
    subject: str | None = None
    committed_at: str | None = None
    checkout_command: str | None


class DataSection(_Frozen):
    """The DVC data version: md5, ``.dvc`` file, size, source fingerprint, split counts, fetch commands."""

    version: str | None  # the version's data-version tag (DVC md5 without ``.dir``)
    run_tag: str | None  # the run's data-version tag
    md5: str | None  # from the kept ``.dvc`` file
    dvc_file: str | None  # relative to the workspace
    dvc_file_exists: bool
    nfiles: int | None
    size: int | None  # bytes
    fetch_commands: tuple[str, ...]  # shell commands that restore exactly this data
    source: str | None
    source_md5: str | None
    split_counts: dict[str, int] | None
    n_images: int | None


class Finding(_Frozen):
    """One expectation that did not hold (a warning or a critical failure)."""

    expectation: str | None = None
    column: str | None = None
    description: str | None = None
    severity: str | None = None
    unexpected_count: int | None = None


class ValidationSection(_Frozen):
    """The data validation report of the run: passed, warnings, critical failures, warts, dropped rows."""

    artifact: str | None
    found: bool
    passed: bool | None
    run_tag: str | None  # the run's ``medimg.validation_passed`` tag, as stored
    data_version: str | None = None
    n_warnings: int | None = None
    warnings: tuple[Finding, ...] = ()
    failed_critical: tuple[Finding, ...] = ()
    n_dropped: int | None = None  # rows dropped by the duplicate policy
    warts: dict = {}
    statistics: dict | None = None


class RuleVerdict(_Frozen):
    """One gate rule's outcome: its name, whether it passed, and why."""

    name: str
    passed: bool
    reason: str


class GateSection(_Frozen):
    """The gate report: decision (PASSED, FAILED or UNKNOWN), the rules' verdicts, threshold, champion compared."""

    artifact: str
    found: bool
    passed: bool | None
    decision: str  # PASSED, FAILED or UNKNOWN
    registry_tag: str | None  # the version's ``medimg.gate_passed`` tag, as stored
    failed: tuple[str, ...] = ()
    rules: tuple[RuleVerdict, ...] = ()
    threshold: float | None = None
    champion_version: str | None = None
    benchmark: str | None = None


class OnnxSection(_Frozen):
    """The stored ONNX file: tagged and actual SHA-256, size, export parity, lineage metadata; ``error`` if
    unreadable.
    """

    sha256: str | None  # the version's tag
    stored_sha256: str | None  # the stored file's actual hash
    size_bytes: int | None
    parity_max_abs_diff: float | None  # max |ONNX - PyTorch| logit difference at export
    parity: dict | None  # the parity report artifact
    metadata: dict[str, str]  # the lineage keys in the file's own metadata
    error: str | None = None

    @property
    def sha256_verified(self) -> bool:
        """True when the version's sha256 tag is set and equals the stored file's hash."""
        return bool(self.sha256) and self.sha256 == self.stored_sha256


class PromotionSection(_Frozen):
    """The audit trail: events that moved an alias to or from the version, every alias event, current aliases."""

    audit_log: str | None
    events: tuple[AuditEvent, ...]  # events that moved an alias to or from this version
    alias_history: tuple[AuditEvent, ...]  # every event of the model, oldest first
    current_aliases: dict[str, str]
    registered_model_tags: dict[str, str]


class ReviewedExample(_Frozen):
    """A radiologist's review whose training example is in the version's data (:mod:`medimg.review.reviews`):
    the case, the reader's pseudonym (never the name), when, the model that was reviewed and what it and the
    reader said, and the example's inbox path and SHA-256 (the manifest's ``sha256`` of that image)."""

    case_id: str
    reader_pseudonym: str | None
    reviewed_at: str
    model_version: str
    model_said: str
    reader_said: str
    agrees: bool
    example: str | None
    sha256: str


class ReviewsSection(_Frozen):
    """The reviews the version's training data holds: examples the review pages put in the inbox whose SHA-256
    is in the data version's manifest (``found`` False when the manifest is not in this workspace)."""

    reviews_log: str
    found: bool
    n_images: int | None  # images in the data version's manifest
    reviews: tuple[ReviewedExample, ...]


class Check(_Frozen):
    """One lineage check: ``ok`` True/False, or None when it does not apply; ``detail`` says why."""

    name: str
    ok: bool | None
    detail: str


class Figure(_Frozen):
    """A figure artifact of the run: its path, SHA-256, and the PNG as base64 (for the HTML report)."""

    artifact: str
    sha256: str
    png_base64: str


class LineageReport(_Frozen):
    """Everything known about one model version, section by section, with the lineage checks and their verdict."""

    ref: str
    generated_at: str
    tracking_uri: str
    workspace: str
    model: ModelSection
    run: RunSection
    code: CodeSection
    data: DataSection
    validation: ValidationSection
    gate: GateSection
    onnx: OnnxSection
    promotion: PromotionSection
    reviews: ReviewsSection
    figures: dict[str, Figure]
    checks: tuple[Check, ...]
    all_checks_ok: bool
