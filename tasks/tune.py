"""The tune flow's Prefect tasks: one trial per task run, executed by the flow's Dask task runner on a worker.

A trial is never cached or retried by Prefect: a trial that fails is recorded as failed in the study (the sampler
learns from it) and the study goes on. The trial code is imported inside the task, on the worker (torch, Optuna).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from medimg.config import Params
from medimg.tuning.results import StudyRef, TrialOutcome, TrialSpec


@task(name="trial", task_run_name="trial-{spec.number}", cache_policy=NO_CACHE, retries=0)
def run_trial(params: Params, ref: StudyRef, spec: TrialSpec) -> TrialOutcome:
    """Train one trial on this worker (:func:`medimg.tuning.objective.run_trial`)."""
    from medimg.tuning import objective  # here: on the worker

    return objective.run_trial(params, ref, spec)
