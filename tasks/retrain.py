"""The retraining pipeline's Prefect tasks: names, retries, timeouts and caching around ``medimg.steps``.

The run key (data version, params, and the content hash of the source,
:func:`medimg.provenance.code_hash`, so an uncommitted edit is new code) decides whether a run is
new (see :mod:`flows.retrain`). Each task takes and returns the step contracts of :mod:`medimg.contracts`. The
validate, train,
evaluate and export tasks persist their results (pickled, in ``<workspace>/prefect/results``)
under a key naming the step and the MLflow run: a crashed run that is reopened gets its finished
steps back instead of running them twice (see "When a run is skipped or reused" in
:mod:`flows.retrain`). The step modules are imported inside the tasks: an up-to-date run never
loads torch, ONNX or Great Expectations, so it ends in seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from medimg import artifacts, tracking
from medimg.config import Params
from medimg.contracts import (
    DriftCheck,
    EvaluationSummary,
    ExportSummary,
    GateDecision,
    IngestSummary,
    Registration,
    TrainingData,
    TrainSummary,
    ValidationSummary,
)
from medimg.provenance import code_hash, git_commit
from medimg.workspace import Workspace
from tasks.dask_client import dask_client


def _by_mlflow_run(step: str):
    """The cache key: the step and the MLflow run whose records the step's result points at.

    Not the run key alone: a step's result names files under ``runs/<run id>`` and was logged
    to that MLflow run, so only the same run (reopened after a crash) may reuse it. A new run
    with the same run key (``--force``, or after a failed one) computes its own.
    """

    def key(_context, arguments: dict) -> str:
        return f"medimg-{step}-{arguments['run_id']}"

    return key


def result_storage(ws: Workspace) -> Path:
    """Persisted step results live in the workspace, whatever Prefect home the process started with.

    A ``Path``, which Prefect turns into a local file system itself: an unsaved ``LocalFileSystem``
    block is refused by ``Task.with_options`` ("must be persisted server-side"). One folder per
    workspace, so two workspaces never share a cached result.
    """
    return ws.prefect_results


def cached(step: str, **options):
    """A task whose result is persisted and reused within the same MLflow run."""
    return task(name=step, cache_key_fn=_by_mlflow_run(step), persist_result=True, **options)


def _flow_run_id() -> str:
    return str(flow_run.id or "none")


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_data(params: Params, ws: Workspace) -> IngestSummary:
    """The ingest, or the last one's summary when the source is unchanged (see ``source_check``); a large folder
    is decoded on the Dask cluster of ``data.dask.address`` (client: :func:`tasks.dask_client.dask_client`)."""
    from medimg.steps import ingest, source_check  # here: see the module docstring (no torch, ONNX, GX up front)

    return source_check.run(params, ws, functools.partial(ingest.run, dask_client=dask_client))


@task(name="drift-check", cache_policy=NO_CACHE)
def check_drift(params: Params, ws: Workspace, data_version: str) -> DriftCheck:
    from medimg.steps import drift  # here: see the module docstring

    return drift.run(params, ws, data_version)


@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_run(params: Params, ws: Workspace, run_key: str, ingested: IngestSummary, drift_result: DriftCheck) -> str:
    """A new MLflow run, or the unfinished one with the same run key (a crashed attempt)."""
    previous = tracking.unfinished(params.registry.experiment, run_key)
    if previous is not None:
        run_id = tracking.reopen(previous.info.run_id)
        tracking.set_tags(run_id, {artifacts.TAG_RESUMED_BY: _flow_run_id()})
    else:
        run_id = tracking.start_run(
            params,
            ws,
            {
                artifacts.TAG_FLOW_RUN: _flow_run_id(),
                artifacts.TAG_FLOW_RUN_NAME: str(flow_run.name or "none"),
                artifacts.TAG_GIT_COMMIT: git_commit(),
                artifacts.TAG_CODE_HASH: code_hash(),
                artifacts.TAG_PARAMS_HASH: params.fingerprint(),
                artifacts.TAG_DATA_VERSION: ingested.data_version,
                artifacts.TAG_RUN_KEY: run_key,
            },
        )
    tracking.log_json(run_id, ingested.model_dump(mode="json"), artifacts.INGEST_REPORT)
    # the files set aside at ingest: pseudonyms and reasons only (the workspace's own report names the files)
    if ingested.quarantine_pseudonymous_csv is not None:
        tracking.log_artifact(run_id, ingested.quarantine_pseudonymous_csv, artifacts.QUARANTINE_DIR)
    tracking.log_json(run_id, drift_result.model_dump(mode="json"), artifacts.DRIFT_REPORT)
    for feature in drift_result.features:
        tracking.log_metrics(
            run_id,
            {f"drift_{feature.feature}_psi": feature.psi, f"drift_{feature.feature}_ks_pvalue": feature.ks_pvalue},
        )
    return run_id


@cached("validate")
def validate_data(params: Params, ws: Workspace, run_id: str, data_version: str) -> ValidationSummary:
    from medimg.steps import validate  # here: see the module docstring

    summary = validate.run(params, ws, data_version)
    tracking.log_artifact(run_id, summary.report, artifacts.VALIDATION_DIR)
    tracking.log_artifact(run_id, summary.html_report, artifacts.VALIDATION_DIR)  # the offline HTML beside the JSON
    tracking.set_tags(run_id, {artifacts.TAG_VALIDATION: summary.passed})
    return summary


@cached("train")
def train_model(params: Params, ws: Workspace, run_id: str, data: TrainingData) -> TrainSummary:
    from medimg.steps import train  # here: see the module docstring

    return train.run(params, ws, run_id, data)


@cached("evaluate")
def evaluate_model(
    params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary
) -> EvaluationSummary:
    from medimg.steps import evaluate  # here: see the module docstring

    return evaluate.run(params, ws, run_id, data, trained)


@task(name="gate", cache_policy=NO_CACHE)
def gate_model(params: Params, ws: Workspace, run_id: str, evaluated: EvaluationSummary) -> GateDecision:
    from medimg.steps import gate  # here: see the module docstring

    return gate.run(params, ws, run_id, evaluated)


@cached("export-onnx")
def export_model(
    params: Params, ws: Workspace, run_id: str, data: TrainingData, trained: TrainSummary, evaluated: EvaluationSummary
) -> ExportSummary:
    from medimg.steps import export  # here: see the module docstring

    return export.run(params, ws, run_id, data, trained, evaluated)


@task(name="register", cache_policy=NO_CACHE)
def register_model(
    params: Params,
    ws: Workspace,
    run_id: str,
    validated: ValidationSummary,
    gated: GateDecision,
    exported: ExportSummary,
    evaluated: EvaluationSummary,
) -> Registration:
    from medimg.steps import register  # here: see the module docstring

    return register.run(params, ws, run_id, _flow_run_id(), validated, gated, exported, evaluated)
