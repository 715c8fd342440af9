"""Whether the independent records of a model version agree: pure checks over the gathered sections.

Each check names the two or three records it compares and quotes what each says, so a failed
check tells an auditor where to look. ``ok`` is ``True``, ``False``, or ``None`` when unknown.
"""

from __future__ import annotations

from medimg import artifacts
from medimg.lineage.report import (
    Check,
    CodeSection,
    DataSection,
    GateSection,
    ModelSection,
    OnnxSection,
    PromotionSection,
    RunSection,
    ValidationSection,
)

DATA_VERSION_KEY = artifacts.META_DATA_VERSION
GIT_COMMIT_KEY = artifacts.META_GIT_COMMIT
RUN_ID_KEY = artifacts.META_MLFLOW_RUN_ID


def lineage_checks(
    model: ModelSection,
    run: RunSection,
    code: CodeSection,
    data: DataSection,
    validation: ValidationSection,
    gate: GateSection,
    onnx: OnnxSection,
    promotion: PromotionSection,
) -> tuple[Check, ...]:
    """The checks, in a fixed order; ``champion_promotion_audited`` only for the champion."""
    meta = onnx.metadata
    dv = data.version
    run_commit = run.tags.get(GIT_COMMIT_KEY)
    checks = [
        Check(name="run_finished", ok=run.status == "FINISHED", detail=f"MLflow run status {run.status}"),
        Check(
            name="data_version_consistent",
            ok=bool(dv) and dv == data.run_tag and dv == meta.get(DATA_VERSION_KEY),
            detail=f"version tag {dv}, run tag {data.run_tag}, ONNX metadata {meta.get(DATA_VERSION_KEY)}",
        ),
        Check(
            name="data_version_restorable",
            ok=data.dvc_file_exists and (data.md5 or "").removesuffix(".dir") == dv,
            detail=f"{data.dvc_file}: {'present, md5 ' + str(data.md5) if data.dvc_file_exists else 'missing'}",
        ),
        Check(
            name="validation_passed",
            ok=validation.passed is True and str(validation.run_tag) == "True",
            detail=f"validation artifact passed={validation.passed}, run tag {validation.run_tag}",
        ),
        Check(
            name="gate_report_matches_tag",
            ok=gate.found and str(gate.passed) == str(gate.registry_tag),
            detail=f"gate report passed={gate.passed}, version tag {gate.registry_tag}",
        ),
        Check(
            name="onnx_sha256_verified",
            ok=onnx.sha256_verified,
            detail=f"tag {onnx.sha256}, stored file {onnx.stored_sha256}",
        ),
        Check(
            name="onnx_from_this_run",
            ok=meta.get(RUN_ID_KEY) == run.id,
            detail=f"ONNX metadata run {meta.get(RUN_ID_KEY)}, version's run {run.id}",
        ),
        # Differs when a commit landed while the flow ran (the run is tagged at its start, the export and
        # the version later): then the code that produced the model is ambiguous, and the report says so.
        Check(
            name="git_commit_consistent",
            ok=bool(code.commit) and code.commit == run_commit == meta.get(GIT_COMMIT_KEY),
            detail=f"version tag {code.commit}, run tag {run_commit}, ONNX metadata {meta.get(GIT_COMMIT_KEY)}",
        ),
    ]
    if model.is_champion:
        promoted = any(e.action in ("promote", "rollback") and e.version == model.version for e in promotion.events)
        checks.append(
            Check(
                name="champion_promotion_audited",
                ok=promoted,
                detail="an audit-log event put this version on champion"
                if promoted
                else "champion alias set with no audit-log event for this version",
            )
        )
    return tuple(checks)
