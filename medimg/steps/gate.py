"""Step 5: the promotion gates, every rule's inputs and verdict in one JSON gate report."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from medimg import artifacts, preprocess, registry, tracking
from medimg.config import Params
from medimg.contracts import EvaluationSummary, GateDecision
from medimg.data import manifest
from medimg.evaluation import gates
from medimg.evaluation.bootstrap import paired_auc_difference
from medimg.reference import benchmark
from medimg.scoring import cached_version_model
from medimg.training.data import load_split
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def champion_probabilities(ws: Workspace, champion: registry.VersionInfo, ids: list[str]) -> np.ndarray:
    """The champion's positive-class probabilities on the candidate's test images, in ``ids`` order."""
    model = cached_version_model(champion, ws.champion_cache)
    frame = manifest.read(ws.data)
    test = load_split(ws.data, frame[frame["id"].isin(ids)], "test")
    order = {image_id: i for i, image_id in enumerate(test.ids)}
    probs = model.probabilities(preprocess.apply(test.images, model.config).numpy())
    return probs[[order[i] for i in ids]]


def run(params: Params, ws: Workspace, run_id: str, evaluated: EvaluationSummary) -> GateDecision:
    """The promotion rules over the candidate's test metrics, and against the champion when there is one.

    Rules: non-inferiority to the radiologist benchmark ``gates.benchmark``, minimum AUC and
    accuracy, and a paired bootstrap of the AUC difference to the champion on the same test
    images (``gates.champion_auc_margin``). Fails closed: a champion that cannot be scored fails
    the champion rule, it does not skip it. Writes ``runs/<run_id>/gate_report.json`` and logs it
    and the verdict tags to MLflow run ``run_id``.
    """
    cfg = params.gates
    metrics, ci = evaluated.test, evaluated.test_ci95
    bench = benchmark(cfg.benchmark.id)
    results = [
        gates.benchmark_noninferiority(
            metrics["sensitivity"],
            ci["sensitivity"],
            metrics["specificity"],
            ci["specificity"],
            bench,
            cfg.benchmark.margin,
        ),
        gates.minimum_metrics(metrics, {"roc_auc": cfg.min_auc, "accuracy": cfg.min_accuracy}),
    ]

    champion = registry.version_by_alias(params.registry.model_name, registry.CHAMPION)
    delta = None
    if champion is not None:
        predictions = pd.read_csv(evaluated.predictions, dtype={"id": str})
        try:
            champ = champion_probabilities(ws, champion, predictions["id"].tolist())
            delta = paired_auc_difference(
                predictions["label"].to_numpy(),
                predictions["probability"].to_numpy(),
                champ,
                n_boot=cfg.bootstrap_samples,
                seed=params.train.seed,
            )
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
            gates.champion_noninferiority(delta, cfg.champion_auc_margin, champion.version if champion else None)
        )

    decision = gates.decide(results)
    report = {
        **decision,
        "benchmark": bench,
        "champion_version": champion.version if champion else None,
        "threshold": evaluated.threshold,
        "test_metrics": {k: metrics[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "n")},
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
