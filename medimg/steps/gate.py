"""Step 5: the promotion gates, every rule's inputs and verdict in one JSON gate report."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from medimg import artifacts, preprocess, registry, tracking
from medimg.config import Params, TaskConfig
from medimg.contracts import EvaluationSummary, GateDecision
from medimg.data import manifest
from medimg.evaluation import gates
from medimg.evaluation.bootstrap import paired_auc_difference
from medimg.evaluation.multiclass_bootstrap import paired_macro_auc_difference
from medimg.evaluation.task_metrics import headline_metrics
from medimg.reference import benchmark
from medimg.scoring import cached_version_model
from medimg.training.data import load_split
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def champion_probabilities(
    ws: Workspace, champion: registry.VersionInfo, ids: list[str], task: TaskConfig
) -> np.ndarray:
    """The champion's probabilities on the candidate's test images, in ``ids`` order.

    Binary: its abnormality probability ``[N]``; multiclass: its class probabilities ``[N, K]``.
    ``ValueError`` when the champion was trained for other classes than ``task`` (then the two
    cannot be compared and the champion rule fails closed).
    """
    model = cached_version_model(champion, ws.champion_cache)
    if list(model.class_names) != list(task.class_names):
        raise ValueError(
            f"the champion's classes {list(model.class_names)} differ from the candidate's {list(task.class_names)}"
        )
    frame = manifest.read(ws.data)
    test = load_split(ws.data, frame[frame["id"].isin(ids)], "test")
    order = [{image_id: i for i, image_id in enumerate(test.ids)}[i] for i in ids]
    x = preprocess.apply(test.images, model.config).numpy()
    if task.kind == "binary":
        return model.abnormal_probability(x)[order]
    return model.class_probabilities(x)[order]


def champion_delta(params: Params, predictions: pd.DataFrame, champion_probs: np.ndarray) -> dict[str, float | int]:
    """Candidate minus champion AUC on the same test images, paired bootstrap (binary AUC, else macro AUC)."""
    task, cfg = params.task, params.gates
    labels = predictions["label"].to_numpy()
    if task.kind == "binary":
        y = (labels == task.positive_index).astype(np.int64)
        return paired_auc_difference(
            y,
            predictions["probability"].to_numpy(),
            champion_probs,
            n_boot=cfg.bootstrap_samples,
            seed=params.train.seed,
        )
    candidate = predictions[[f"p_{name}" for name in task.class_names]].to_numpy()
    return paired_macro_auc_difference(
        labels, candidate, champion_probs, n_boot=cfg.bootstrap_samples, seed=params.train.seed
    )


def class_sensitivities(task: TaskConfig, metrics: dict) -> dict[str, float | None]:
    """Each class's test sensitivity (recall): binary, the abnormal class's sensitivity and the other's specificity."""
    if task.kind == "binary":
        positive = task.class_names[task.positive_index]
        negative = task.class_names[1 - task.positive_index]
        return {positive: metrics.get("sensitivity"), negative: metrics.get("specificity")}
    return {name: metrics.get(f"sensitivity_{name}") for name in task.class_names}


def benchmark_rule(task: TaskConfig, metrics: dict, ci: dict, bench: dict, margin: float) -> gates.GateResult:
    """Non-inferiority to the benchmark entry ``bench``, its metric names mapped to the task's keys."""
    keys = {name: gates.benchmark_metric_key(task.kind, bench["operating_point"], name) for name in bench["metrics"]}
    estimates = {name: metrics.get(key) for name, key in keys.items()}
    intervals = {name: tuple(ci.get(key, (None, None))) for name, key in keys.items()}
    return gates.benchmark_noninferiority(estimates, intervals, bench, margin)


def run(params: Params, ws: Workspace, run_id: str, evaluated: EvaluationSummary) -> GateDecision:
    """The promotion rules over the candidate's test metrics, and against the champion when there is one.

    Rules: non-inferiority to the benchmark ``gates.benchmark`` (a reader study or a published
    model, on the metrics it reports), minimum AUC (the task's: binary AUC or macro AUC) and
    accuracy, each class's minimum sensitivity (``gates.min_class_sensitivity``, when set), and a
    paired bootstrap of the AUC difference to the champion on the same test images
    (``gates.champion_auc_margin``). Fails closed: a champion that cannot be scored fails
    the champion rule, it does not skip it. Writes ``runs/<run_id>/gate_report.json`` and logs it
    and the verdict tags to MLflow run ``run_id``.
    """
    cfg, task = params.gates, params.task
    metrics, ci = evaluated.test, evaluated.test_ci95
    bench = benchmark(cfg.benchmark.id)
    results = [
        benchmark_rule(task, metrics, ci, bench, cfg.benchmark.margin),
        gates.minimum_metrics(metrics, {task.auc_metric: cfg.min_auc, "accuracy": cfg.min_accuracy}),
    ]
    if cfg.min_class_sensitivity:
        results.append(gates.class_sensitivity(class_sensitivities(task, metrics), cfg.min_class_sensitivity))

    champion = registry.version_by_alias(params.registry.model_name, registry.CHAMPION)
    delta = None
    if champion is not None:
        predictions = pd.read_csv(evaluated.predictions, dtype={"id": str})
        try:
            champ = champion_probabilities(ws, champion, predictions["id"].tolist(), task)
            delta = champion_delta(params, predictions, champ)
        except Exception as err:  # fail closed: a champion we cannot score is never silently replaced
            log.error("could not score champion v%s on the test split: %s", champion.version, err)
            results.append(
                gates.GateResult(
                    "champion_noninferiority",
                    False,
                    f"champion v{champion.version} could not be scored: {err}",
                    {"champion_version": champion.version},
                )
            )
    if not any(r.name == "champion_noninferiority" for r in results):
        results.append(
            gates.champion_noninferiority(
                delta,
                cfg.champion_auc_margin,
                champion.version if champion else None,
                metric="ROC AUC" if task.kind == "binary" else "macro ROC AUC",
            )
        )

    decision = gates.decide(results)
    report = {
        **decision,
        "benchmark": bench,
        "champion_version": champion.version if champion else None,
        "threshold": evaluated.threshold,
        "task_kind": task.kind,
        "test_metrics": {k: metrics[k] for k in (*headline_metrics(task.kind), "n")},
    }
    path = ws.run_dir(run_id) / artifacts.filename(artifacts.GATE_REPORT)
    path.write_text(json.dumps(gates.to_jsonable(report), indent=1))
    tracking.log_artifact(run_id, path, artifacts.folder(artifacts.GATE_REPORT))
    tracking.set_tags(
        run_id,
        {artifacts.TAG_GATE: decision["passed"], artifacts.TAG_GATE_FAILED: ",".join(decision["failed"]) or "none"},
    )
    for rule in results:
        (log.info if rule.passed else log.warning)(
            "gate %s: %s: %s", rule.name, "PASS" if rule.passed else "FAIL", rule.reason
        )
    return GateDecision(
        passed=decision["passed"],
        failed=tuple(decision["failed"]),
        rules=tuple(decision["rules"]),
        champion_version=champion.version if champion else None,
        report=path,
    )
