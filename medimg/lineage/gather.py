"""Gather the lineage of a registered model version into a typed :class:`LineageReport`.

Follows the chain

    model version -> MLflow run (status, params, metrics with 95% CIs) -> git commit
    -> DVC data version (md5, the kept ``.dvc`` file, and the shell commands that fetch exactly
    that data) -> data validation result -> gate report -> ONNX sha256 -> promotion history
    -> the radiologists' reviews whose examples the data version holds

reading each link from where it is stored: the version, its run, gate and validation report and
promotion history through :mod:`medimg.model_record` (one read), the run's ingest report, ROC
figure and parity report from its artifacts, the kept ``.dvc`` file and this checkout's git, the
stored ONNX file (downloaded and hashed) and its own metadata. Whether the records agree is judged
by :mod:`medimg.lineage.checks`.

Promises: only reads (nothing changes in the registry, the run or the workspace); a missing link
is reported as missing, never filled in. The caller points MLflow at the workspace first
(``medimg.workspace.activate``), as the CLI does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medimg import artifacts, audit, model_record, registry
from medimg.config import Params
from medimg.data import versioning
from medimg.evaluation.metrics import METRIC_NAMES
from medimg.evaluation.task_metrics import MULTICLASS_HEADLINE
from medimg.lineage.checks import lineage_checks
from medimg.lineage.report import (
    CodeSection,
    DataSection,
    Figure,
    Finding,
    GateSection,
    LineageReport,
    MetricSummary,
    ModelSection,
    OnnxSection,
    PromotionSection,
    ReviewedExample,
    ReviewsSection,
    RuleVerdict,
    RunSection,
    ValidationSection,
)
from medimg.model_record import ModelRecord, iso
from medimg.provenance import PROJECT_ROOT, file_sha256
from medimg.review.reviews import ReviewLog
from medimg.workspace import Workspace

KEY_METRICS = tuple(dict.fromkeys(("roc_auc", "pr_auc", *METRIC_NAMES, *MULTICLASS_HEADLINE, "abnormal_roc_auc")))
"""The test metrics a lineage report shows, those of the model's task that it logged."""
ONNX_LINEAGE_KEYS = (
    artifacts.META_DATA_VERSION,
    artifacts.META_GIT_COMMIT,
    artifacts.META_CODE_HASH,
    artifacts.META_MLFLOW_RUN_ID,
    artifacts.META_THRESHOLD,
    artifacts.META_CLASS_NAMES,
    artifacts.META_PARAMS_HASH,
    artifacts.META_PREPROCESSING_HASH,
)


def _download(run_id: str, artifact_path: str, dest: Path) -> Path | None:
    try:
        return registry.download_run_artifact(run_id, artifact_path, dest)
    except (MlflowException, OSError):
        return None


def _read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _model(record: ModelRecord) -> ModelSection:
    return ModelSection(
        name=record.name,
        version=record.version,
        aliases=record.aliases,
        is_champion=record.is_champion,
        source=record.source,
        tags=record.tags,
        registered_at=iso(record.created_at),
    )


def _run(record: ModelRecord) -> RunSection:
    run = record.run
    if run is None:
        return RunSection(id=record.run_id, found=False, status=None)
    threshold = record.test_metrics.get("threshold")
    n_test = record.test_metrics.get("n")
    return RunSection(
        id=run.id,
        found=True,
        status=run.status,
        name=run.name,
        experiment_id=run.experiment_id,
        start=iso(run.start),
        end=iso(run.end),
        user=run.user,
        artifact_uri=run.artifact_uri,
        params=run.params,
        tags={k: v for k, v in run.tags.items() if k.startswith(artifacts.TAG_PREFIX)},
        flow_run_id=run.tags.get(registry.TAG_FLOW_RUN),
        flow_run_name=run.tags.get(artifacts.TAG_FLOW_RUN_NAME),
        metrics={
            name: MetricSummary(value=m.value, ci95=m.ci95)
            for name in KEY_METRICS
            if (m := record.test_metrics.get(name)) is not None
        },
        threshold=threshold.value if threshold else None,
        n_test=int(n_test.value) if n_test else None,
    )


def _code(commit: str | None) -> CodeSection:
    """The commit, whether it was dirty, and whether this checkout knows it (with its subject line)."""
    if not commit or commit == "unknown":
        return CodeSection(commit=commit, sha=None, dirty=None, in_checkout=False, checkout_command=None)
    sha = commit.removesuffix("-dirty")
    known: dict[str, Any] = {
        "commit": commit,
        "sha": sha,
        "dirty": commit.endswith("-dirty"),
        "in_checkout": False,
        "checkout_command": f"git checkout {sha}",
    }
    try:
        shown = subprocess.run(
            ["git", "show", "--no-patch", "--format=%s%n%cI", sha],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return CodeSection(**known)
    if shown.returncode == 0:
        lines = shown.stdout.strip().splitlines()
        known.update(
            in_checkout=True, subject=lines[0] if lines else None, committed_at=lines[1] if len(lines) > 1 else None
        )
    return CodeSection(**known)


def _data(ws: Workspace, data_version: str | None, run_data_version: str | None, ingest: dict | None) -> DataSection:
    ingest = ingest or {}
    found: dict = {
        "md5": None,
        "nfiles": None,
        "size": None,
        "dvc_file": None,
        "dvc_file_exists": False,
        "fetch_commands": (),
    }
    if data_version:
        kept = ws.data_versions / f"{data_version}.dvc"
        found.update(
            dvc_file=str(kept.relative_to(ws.root)), fetch_commands=tuple(versioning.fetch_commands(ws, data_version))
        )
        if kept.is_file():
            entry = versioning.read_dvc_file(kept)
            found.update(dvc_file_exists=True, md5=entry.get("md5"), nfiles=entry.get("nfiles"), size=entry.get("size"))
    return DataSection(
        version=data_version,
        run_tag=run_data_version,
        source=ingest.get("source"),
        source_md5=ingest.get("source_md5"),
        split_counts=ingest.get("split_counts"),
        n_images=ingest.get("n_images"),
        **found,
    )


def _finding(item: dict) -> Finding:
    return Finding(**{k: item.get(k) for k in ("expectation", "column", "description", "severity", "unexpected_count")})


def _validation(record: ModelRecord) -> ValidationSection:
    run_tag = record.run.tags.get(registry.TAG_VALIDATION) if record.run else None
    found = record.validation
    if found is None:
        return ValidationSection(artifact=None, found=False, passed=None, run_tag=run_tag)
    report = found.document
    warts = report.get("warts") or {}
    return ValidationSection(
        artifact=found.artifact,
        found=True,
        passed=found.passed,
        run_tag=run_tag,
        data_version=found.data_version,
        n_warnings=len(report.get("warnings") or []),
        warnings=tuple(_finding(w) for w in report.get("warnings") or []),
        failed_critical=tuple(_finding(f) for f in report.get("failed_critical") or []),
        n_dropped=len(report.get("dropped_ids") or []),
        warts={k: v for k, v in warts.items() if k not in ("within_split", "across_splits")},
        statistics=report.get("statistics"),
    )


def _gate(record: ModelRecord) -> GateSection:
    tag = record.tags.get(registry.TAG_GATE)
    report = record.gate
    if report is None:
        return GateSection(
            artifact=artifacts.GATE_REPORT, found=False, passed=None, decision="UNKNOWN", registry_tag=tag
        )
    return GateSection(
        artifact=report.artifact,
        found=True,
        passed=report.passed,
        decision="PASSED" if report.passed else "FAILED",
        registry_tag=tag,
        failed=report.failed,
        rules=tuple(RuleVerdict(name=r.name, passed=r.passed, reason=r.reason) for r in report.rules),
        threshold=report.threshold,
        champion_version=report.champion_version,
        benchmark=report.benchmark_id,
    )


def _onnx(record: ModelRecord, tmp: Path) -> OnnxSection:
    """The sha256 tag, the stored file's actual hash, and the lineage keys in its own metadata."""
    from medimg.export.onnx_export import read_metadata  # here: it loads torch (1 s); only to read a stored file

    parity = _read_json(_download(record.run_id, artifacts.PARITY_REPORT, tmp)) if record.run_id else None
    known: dict = {
        "sha256": record.onnx_sha256,
        "stored_sha256": None,
        "size_bytes": None,
        "parity_max_abs_diff": record.onnx_parity_max_abs_diff,
        "metadata": {},
        "parity": parity,
    }
    try:
        path = registry.download_onnx(record.name, record.version, tmp / "onnx")
    except (MlflowException, OSError) as err:
        return OnnxSection(**known, error=f"stored ONNX file could not be read: {err}")
    known.update(stored_sha256=file_sha256(path), size_bytes=path.stat().st_size)
    try:
        meta = read_metadata(path)
    except Exception as err:  # a tampered or truncated file is a finding of the report, not a crash
        return OnnxSection(**known, error=f"stored ONNX file is not a readable ONNX model: {type(err).__name__}: {err}")
    known["metadata"] = {k: meta[k] for k in ONNX_LINEAGE_KEYS if k in meta}
    return OnnxSection(**known)


def _promotion(ws: Workspace, record: ModelRecord) -> PromotionSection:
    """This version's audit events, the model's whole alias history and its current aliases.

    The history is the workspace's ``audit.jsonl`` merged with the copy that promotion mirrors into
    the registered model's tags (:mod:`medimg.model_record`), so a lineage read from another
    workspace (a shared registry) still sees every promotion; an event in both is listed once."""
    return PromotionSection(
        audit_log=str(ws.audit_log),
        events=record.version_events,
        alias_history=record.promotion_history,
        current_aliases=record.model_aliases,
        registered_model_tags=record.model_tags,
    )


def _reviews(ws: Workspace, data_version: str | None) -> ReviewsSection:
    """The reviews (workspace's ``serve/reviews.jsonl``) whose training example's SHA-256 is in the manifest of
    ``data_version`` (kept beside its ``.dvc`` file): the reviews the model's training data holds."""
    found = versioning.version_manifest(ws, data_version) if data_version else None
    if found is None:
        return ReviewsSection(reviews_log=str(ws.reviews_log), found=False, n_images=None, reviews=())
    hashes = set(pd.read_parquet(found, columns=["sha256"])["sha256"])
    held = [r for r in ReviewLog(ws.reviews_log).read() if r.example_sha256 and r.example_sha256 in hashes]
    return ReviewsSection(
        reviews_log=str(ws.reviews_log),
        found=True,
        n_images=len(hashes),
        reviews=tuple(
            ReviewedExample(
                case_id=r.case_id,
                reader_pseudonym=r.reader_pseudonym,
                reviewed_at=r.time,
                model_version=r.model_version,
                model_said=r.model_said,
                reader_said=r.reader_said,
                agrees=r.agrees,
                example=r.example,
                sha256=str(r.example_sha256),
            )
            for r in held
        ),
    )


def _roc_figure(run_id: str, tmp: Path) -> dict[str, Figure]:
    roc = _download(run_id, artifacts.ROC_CURVE, tmp)
    if roc is None or not roc.is_file():
        return {}
    blob = roc.read_bytes()
    return {
        "roc_curve": Figure(
            artifact=artifacts.ROC_CURVE,
            sha256=hashlib.sha256(blob).hexdigest(),
            png_base64=base64.b64encode(blob).decode("ascii"),
        )
    }


def lineage(params: Params, ws: Workspace, ref: str) -> LineageReport:
    """The lineage report of the model version ``ref`` (``NAME@ALIAS``, ``NAME@VERSION`` or ``VERSION``).

    Raises :class:`medimg.registry.VersionNotFound` when ``ref`` names no registered version. Read-only.
    """
    record = model_record.resolve(ref, params.registry.model_name, ws.audit_log)
    with tempfile.TemporaryDirectory(prefix="medimg-lineage-") as scratch:
        tmp = Path(scratch)
        ingest = _read_json(_download(record.run.id, artifacts.INGEST_REPORT, tmp)) if record.run else None
        figures = _roc_figure(record.run.id, tmp) if record.run else {}
        onnx = _onnx(record, tmp)
    run = _run(record)
    model, code = _model(record), _code(record.git_commit)
    data = _data(ws, record.data_version, run.tags.get(registry.TAG_DATA_VERSION), ingest)
    validation, gate, promotion = _validation(record), _gate(record), _promotion(ws, record)
    checks = lineage_checks(
        model=model, run=run, code=code, data=data, validation=validation, gate=gate, onnx=onnx, promotion=promotion
    )
    return LineageReport(
        ref=ref,
        generated_at=audit.now_iso(),
        tracking_uri=MlflowClient().tracking_uri,
        workspace=str(ws.root),
        figures=figures,
        checks=checks,
        all_checks_ok=all(c.ok for c in checks),
        model=model,
        run=run,
        code=code,
        data=data,
        validation=validation,
        gate=gate,
        onnx=onnx,
        promotion=promotion,
        reviews=_reviews(ws, record.data_version),
    )
