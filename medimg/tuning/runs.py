"""MLflow I/O of a study: one parent run per call of ``medimg tune``, one nested child run per trial.

The runs live in their own experiment, ``<registry.experiment>-tune``, so the retrain experiment's run keys, status
and audits see only retrains. A child run carries the parent's id in MLflow's ``mlflow.parentRunId`` tag (the UI
nests it), every param of the trial, its per-epoch metrics (step = epoch) and its state.
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from medimg import tracking
from medimg.config import Params
from medimg.registry import ensure_experiment
from medimg.tuning.results import StudyRef, TrialOutcome, TrialSpec
from medimg.workspace import Workspace

TAG_STUDY = "medimg.study"
TAG_STORAGE = "medimg.study_storage"  # redacted: no password
TAG_TRIAL_NUMBER = "medimg.trial_number"
TAG_TRIAL_STATE = "medimg.trial_state"  # complete | pruned | failed
TAG_WORKER = "medimg.dask_worker"  # <worker address> pid <pid>
TAG_BEST_TRIAL = "medimg.best_trial"
TAG_BEST_PARAMS_FILE = "medimg.best_params_file"
#: Children of one parent run: the MLflow filter that finds them.
CHILDREN_FILTER = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{{parent}}'"


def experiment_name(params: Params) -> str:
    """``<registry.experiment>-tune``."""
    return f"{params.registry.experiment}-tune"


def experiment_id(params: Params, ws: Workspace) -> str:
    """The study experiment's id, created when missing (artifacts in the workspace with a local store)."""
    local = tracking_uri().startswith(("sqlite:", "file:"))
    return ensure_experiment(experiment_name(params), ws.mlflow_artifacts if local else None)


def use_tracking(uri: str) -> None:
    """Point this process's MLflow client at ``uri`` (a worker, at the flow's tracking store)."""
    mlflow.set_tracking_uri(uri)


def tracking_uri() -> str:
    """The MLflow tracking URI this process uses (handed to the workers)."""
    return mlflow.get_tracking_uri()


def start_parent(params: Params, ws: Workspace, study_name: str, tags: dict[str, str]) -> tuple[str, str]:
    """A new parent run named for the study, with every param (``tune.*`` included) and ``tags``: (experiment id,
    run id)."""
    experiment = experiment_id(params, ws)
    client = MlflowClient()
    run = client.create_run(experiment, tags={**tags, TAG_STUDY: study_name}, run_name=f"study {study_name}")
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.flat().items()])
    return experiment, run.info.run_id


def start_child(ref: StudyRef, spec: TrialSpec, params: Params, worker: str) -> str:
    """The trial's child run under ``ref.parent_run_id``, with the trial's params and the ``worker`` running it
    (Dask worker address and pid); its id."""
    client = MlflowClient()
    tags = {
        MLFLOW_PARENT_RUN_ID: ref.parent_run_id,
        MLFLOW_RUN_NAME: f"trial {spec.number}",
        TAG_STUDY: ref.study_name,
        TAG_TRIAL_NUMBER: str(spec.number),
        TAG_WORKER: worker,
        "medimg.data_version": ref.data_version,
    }
    run = client.create_run(ref.experiment_id, tags=tags, run_name=f"trial {spec.number}")
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.flat().items()])
    return run.info.run_id


def finish_child(run_id: str, outcome: TrialOutcome) -> None:
    """Record the trial's state, value and epochs on its child run and end it (FAILED for a failed trial)."""
    tags = [RunTag(TAG_TRIAL_STATE, outcome.state)]
    if outcome.reason:
        tags.append(RunTag("medimg.reason", outcome.reason[:500]))
    MlflowClient().log_batch(run_id, tags=tags)
    metrics = {"trial_seconds": outcome.seconds, "epochs_run": outcome.epochs_run}
    if outcome.value is not None:
        metrics["objective"] = outcome.value
    tracking.log_metrics(run_id, metrics)
    tracking.finish(run_id, "FAILED" if outcome.state == "failed" else "FINISHED")


def children(parent_run_id: str) -> list:
    """The child runs of ``parent_run_id`` (any experiment), oldest first."""
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=CHILDREN_FILTER.format(parent=parent_run_id),
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
