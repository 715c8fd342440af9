"""Step 5: the promotion gates, every rule's inputs and verdict in one JSON gate report."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medimg import artifacts, preprocess, registry, tracking
from medimg.artifacts import META_CLASS_NAMES, META_INPUT_NAME, META_PREPROCESSING
from medimg.config import Params, PreprocessConfig, TaskConfig
from medimg.contracts import EvaluationSummary, GateDecision
from medimg.data import manifest
from medimg.evaluation import gates
from medimg.evaluation.bootstrap import paired_auc_difference
from medimg.evaluation.multiclass_bootstrap import paired_macro_auc_difference
from medimg.evaluation.task_metrics import headline_metrics
from medimg.export.onnx_export import INPUT_NAME, onnx_logits, session
from medimg.reference import benchmark
from medimg.scoring import cached_version_model, cached_version_onnx
from medimg.segmentation import gates as segmentation_gates
from medimg.segmentation.evaluation import paired_mean_dice_difference
from medimg.segmentation.inference import to_tensor
from medimg.segmentation.metrics import case_dice
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


def classification_rules(
    params: Params, ws: Workspace, evaluated: EvaluationSummary, bench: dict, champion: registry.VersionInfo | None
) -> list[gates.GateResult]:
    """The rules of a binary or multiclass task (:func:`run`), the champion scored on the same test images."""
    cfg, task = params.gates, params.task
    metrics, ci = evaluated.test, evaluated.test_ci95
    results = [
        benchmark_rule(task, metrics, ci, bench, cfg.benchmark.margin),
        gates.minimum_metrics(metrics, {task.auc_metric: cfg.min_auc, "accuracy": cfg.min_accuracy}),
    ]
    if cfg.min_class_sensitivity:
        results.append(gates.class_sensitivity(class_sensitivities(task, metrics), cfg.min_class_sensitivity))

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
    return results


def run(params: Params, ws: Workspace, run_id: str, evaluated: EvaluationSummary) -> GateDecision:
    """The promotion rules over the candidate's test metrics, and against the champion when there is one.

    Rules: non-inferiority to the benchmark ``gates.benchmark`` (a reader study or a published
    model, on the metrics it reports), minimum AUC (the task's: binary AUC or macro AUC) and
    accuracy, each class's minimum sensitivity (``gates.min_class_sensitivity``, when set), and a
    paired bootstrap of the AUC difference to the champion on the same test images
    (``gates.champion_auc_margin``). Fails closed: a champion that cannot be scored fails
    the champion rule, it does not skip it. A segmentation task has its own rules
    (:func:`segmentation_rules`: per-structure Dice against the benchmark and the floors, mean Dice against
    the champion). Writes ``runs/<run_id>/gate_report.json`` and logs it and the verdict tags to MLflow
    run ``run_id``.
    """
    cfg, task = params.gates, params.task
    metrics = evaluated.test
    bench = benchmark(cfg.benchmark.id)
    champion = registry.version_by_alias(params.registry.model_name, registry.CHAMPION)
    if task.kind == "segmentation":
        results = segmentation_rules(params, ws, evaluated, bench, champion)
    else:
        results = classification_rules(params, ws, evaluated, bench, champion)

    decision = gates.decide(results)
    report = {
        **decision,
        "benchmark": bench,
        "champion_version": champion.version if champion else None,
        "threshold": evaluated.threshold,
        "task_kind": task.kind,
        "test_metrics": dict(metrics)
        if task.kind == "segmentation"
        else {k: metrics[k] for k in (*headline_metrics(task.kind), "n")},
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


# --------------------------------------------------------------------------- segmentation


def onnx_case_dice(
    path: Path, images: np.ndarray, masks: np.ndarray, class_names: Sequence[str], batch_size: int = 4
) -> np.ndarray:
    """Each case's Dice averaged over the structures ``[N]`` of the segmentation ONNX model at ``path`` (logits
    ``[N, K, D, H, W]``, each voxel its arg-max label) on stored uint8 volumes ``images`` ``[N, D, H, W]`` against
    their label ``masks``.

    The input is normalised by the model's own contract (ONNX metadata: ``x / 255``, mean, std, channels).
    ``ValueError`` when the model's metadata lacks the contract or class names, its classes differ from
    ``class_names``, or it takes another ``D, H, W`` than the volumes have (the two cannot be compared).
    """
    sess = session(path)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    try:
        names = [str(c) for c in json.loads(meta[META_CLASS_NAMES])]
        contract = json.loads(meta[META_PREPROCESSING])
        config = PreprocessConfig(
            dims=3,
            channels=contract["channels"],
            mean=contract["mean"],
            std=contract["std"],
            volume={"pad_multiple": 1},
        )
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path.name}: not a medimg model, metadata incomplete ({err})") from None
    if names != list(class_names):
        raise ValueError(f"the champion's classes {names} differ from the candidate's {list(class_names)}")
    grid = sess.get_inputs()[0].shape[2:]
    if all(isinstance(n, int) for n in grid) and tuple(grid) != tuple(images.shape[1:]):
        raise ValueError(
            f"the champion takes volumes of {tuple(grid)} voxels but the test cases are stored at "
            f"{tuple(images.shape[1:])} (preprocess.volume.shape changed)"
        )
    x = to_tensor(images, config).numpy()
    labels = onnx_logits(sess, x, batch_size, meta.get(META_INPUT_NAME, INPUT_NAME)).argmax(1)
    return case_dice(labels, masks, class_names[1:]).mean(axis=1)


def champion_case_dice(ws: Workspace, champion: registry.VersionInfo, ids: list[str], task: TaskConfig) -> np.ndarray:
    """The champion's per-case mean Dice ``[N]`` on the candidate's test cases ``ids``, in ``ids`` order
    (:func:`onnx_case_dice` on its registered ONNX file, downloaded once into the workspace's champion cache)."""
    path = cached_version_onnx(champion, ws.champion_cache)
    frame = manifest.read(ws.data)
    test = load_split(ws.data, frame[frame["id"].isin(ids)], "test")
    if test.masks is None:
        raise ValueError("the test cases have no stored masks (manifest mask_path): re-ingest")
    position = {case: i for i, case in enumerate(test.ids)}
    missing = [case for case in ids if case not in position]
    if missing:
        raise ValueError(f"{len(missing)} of the candidate's test cases are not in the test split, e.g. {missing[0]}")
    return onnx_case_dice(path, test.images, test.masks, task.class_names)[[position[case] for case in ids]]


def segmentation_rules(
    params: Params, ws: Workspace, evaluated: EvaluationSummary, bench: dict, champion: registry.VersionInfo | None
) -> list[gates.GateResult]:
    """The rules of a segmentation task (:mod:`medimg.segmentation.gates`): the benchmark's per-structure Dice by
    the lower CI bounds (``gates.benchmark``), the Dice floors (``gates.min_dice``), and the paired bootstrap over
    the same test cases of mean Dice, candidate minus champion (``gates.champion_auc_margin``). Fails closed: a
    champion that cannot be scored fails the champion rule."""
    cfg, task = params.gates, params.task
    results = segmentation_gates.rules(
        evaluated.test, evaluated.test_ci95, task.structures, bench, cfg.benchmark.margin, cfg.min_dice
    )
    delta = None
    if champion is not None:
        try:
            predictions = pd.read_csv(evaluated.predictions, dtype={"id": str})
            champ = champion_case_dice(ws, champion, predictions["id"].tolist(), task)
            delta = paired_mean_dice_difference(
                predictions["mean_dice"].to_numpy(np.float64), champ, cfg.bootstrap_samples, params.train.seed
            )
        except Exception as err:  # fail closed: a champion we cannot score is never silently replaced
            log.error("could not score champion v%s on the test cases: %s", champion.version, err)
            failed = gates.GateResult(
                "champion_noninferiority",
                False,
                f"champion v{champion.version} could not be scored: {err}",
                {"champion_version": champion.version, "metric": segmentation_gates.CHAMPION_METRIC},
            )
            return [*results, failed]
    results.append(
        segmentation_gates.champion_rule(delta, cfg.champion_auc_margin, champion.version if champion else None)
    )
    return results
