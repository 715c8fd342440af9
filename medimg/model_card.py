"""The model card of a run: what the model is for, what it was trained and tested on, how good it is.

Built from the run's own records, never from text written for one data set: the typed params (the
``task`` section: kind, classes, abnormal classes, modalities, body part, description; the ``data``
section: the source and so the data set and its split rule; ``gates``: the threshold rule), the
preprocessing contract, the evaluate step's ``metrics.json`` (threshold, test metrics with their
bootstrap 95% CIs, confusion matrix, images per split and class; see ``task_design.md``), the gate
report, the data version and the validation warts. :func:`run_card` is pure: the same inputs give
the same dict.

The JSON card is the one source of the Markdown (:func:`card_markdown`, template
``model_card.md.j2``): the register step writes it as the registered version's description in
MLflow (:func:`registry_description`, which fits MLflow's column) and as run artifacts; ``medimg
pull`` adds what only a pull knows (:mod:`medimg.pull.card`).

Privacy: a card holds class names, counts, metrics, the source's *folder name* and config values;
never a file name, a patient pseudonym or a DICOM tag value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from medimg import artifacts, rendering
from medimg.config import DataConfig, GateConfig, Params, TaskConfig, member_seeds
from medimg.data.manifest import SPLITS
from medimg.evaluation.metrics import COUNT_NAMES, METRIC_NAMES

CARD_VERSION = 2
MARKDOWN_TEMPLATE = "model_card.md.j2"
#: The file names of the card, in the run (``artifacts.MODEL_CARD``, ``MODEL_CARD_MD``) and in a pulled release.
CARD_JSON = artifacts.filename(artifacts.MODEL_CARD)
CARD_MD = artifacts.filename(artifacts.MODEL_CARD_MD)

#: The longest model-version description MLflow stores: ``model_versions.description`` is
#: ``String(5000)`` (mlflow/store/model_registry/dbmodels/models.py); PostgreSQL and MySQL refuse more.
DESCRIPTION_LIMIT = 5000

#: A class with fewer test images than this gets a limitation: at n = 100 a sensitivity of 0.90 has a
#: 95% interval about 0.12 wide (Wilson), too wide to tell apart models a few points apart.
FEW_TEST_IMAGES = 100

#: Metrics of a multiclass task (names as the evaluate step logs them, ``task_design.md``).
MULTICLASS_OVERALL = ("accuracy", "balanced_accuracy", "macro_roc_auc", "macro_f1", "kappa", "brier", "ece", "n")
PER_CLASS = ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "f1")
#: The "any abnormality vs normal" operating point of a multiclass task: binary metric names, prefixed.
ABNORMAL_PREFIX = "abnormal_"
OPERATING_POINT = tuple(ABNORMAL_PREFIX + m for m in (*METRIC_NAMES, *COUNT_NAMES[:4]))
BINARY_METRICS = (*METRIC_NAMES, *COUNT_NAMES, "prevalence", "threshold")
#: A segmentation task's overall metrics and the per-structure ones (``<metric>_<structure>``).
SEGMENTATION_OVERALL = ("mean_dice", "mean_hd95", "n")
PER_STRUCTURE = ("dice", "hd95", "volume_error_ml")
#: What the compact Markdown (the registry's description) leaves out of the operating point, and the per-class
#: metrics whose CIs it keeps.
#: (Its precision and NPV follow from the tp/fp/tn/fn line the compact form prints instead.)
COMPACT_HIDDEN = frozenset(
    ABNORMAL_PREFIX + m for m in ("accuracy", "precision", "npv", "f1", "pr_auc", "brier", "ece", *COUNT_NAMES[:4])
)
COMPACT_CLASS_CIS = ("roc_auc", "sensitivity")
#: Count metrics, shown as integers.
COUNT_METRICS = frozenset({*COUNT_NAMES, *(ABNORMAL_PREFIX + c for c in COUNT_NAMES)})  # and n_<class>: is_count

#: DICOM Modality defined terms (PS3.3 C.7.3.1.1.1) in words; other codes are shown as they are.
MODALITY_NAMES = {
    "CR": "computed radiography",
    "DX": "digital radiography",
    "MG": "mammography",
    "CT": "CT",
    "MR": "MRI",
    "US": "ultrasound",
    "PT": "PET",
    "NM": "nuclear medicine",
    "XA": "X-ray angiography",
    "OT": "other",
}


@dataclass(frozen=True)
class SplitRule:
    """How the data set's images were put into train/val/test: ``kind`` (official | source | by_patient |
    by_image), one phrase saying so (``text``) and one sentence on what it means for the test figures."""

    kind: str
    text: str
    consequence: str


def is_count(name: str) -> bool:
    """Whether metric ``name`` is a count of images (``tp``, ``n``, ``n_<class>``, ``abnormal_fn``...)."""
    return name in COUNT_METRICS or name.startswith("n_")


def dataset_name(data: DataConfig) -> tuple[str, str | None]:
    """(the data set's name, the first sentence of its own description or None) from the ``data`` section.

    MedMNIST: the name and description in the ``medmnist`` package's ``INFO`` for ``data.medmnist_flag``
    (``<python_class> (MedMNIST v2, flag <flag>)``); a folder source: the source folder's name (its last path
    part only, never the full path).
    """
    if data.source == "medmnist":
        from medimg.data.medmnist import DataSourceError, official_info  # here: medmnist takes 2 s to import

        try:
            info = official_info(data.medmnist_flag)
        except DataSourceError:
            return f"MedMNIST {data.medmnist_flag}", None
        first = (info.get("description") or "").split(". ")[0].strip().rstrip(".")
        return f"{info['python_class']} (MedMNIST v2, flag {data.medmnist_flag})", (first + ".") if first else None
    kind = {
        "dicom_folder": "DICOM folder",
        "dicom_series": "DICOM series folder",
        "nifti_folder": "NIfTI folder",
        "nifti_pairs": "NIfTI image/mask pairs",
    }.get(data.source, "image folder")
    folder = PurePath(data.root).name if data.root else "(no root set)"
    return f"{kind} '{folder}'", None


def split_rule(data: DataConfig) -> SplitRule:
    """The split rule the ingest applies for the ``data`` section (:mod:`medimg.data.splitting`).

    MedMNIST: the archive's official split. Folders: the source's split (split folders, the labels
    CSV's split column) where it has one, else whole patients by a seeded stratified group split; an
    image folder with ``patient_id: file`` has no patient ids, so that split is by image.
    """
    fractions = "/".join(f"{data.split.fractions.get(s, 0):g}" for s in SPLITS)
    seeded = f"{fractions}, seed {data.split.seed}, stratified by class"
    folders = "split folders if the source has them, else"
    if data.source == "medmnist":
        return SplitRule(
            "official",
            "the official train/val/test split of the archive",
            "Test figures are on the official test split, comparable with published results on it.",
        )
    if data.source == "nifti_pairs":
        if data.segmentation.split_column:
            return SplitRule(
                "source",
                f"the pairs CSV's '{data.segmentation.split_column}' column",
                "The split is the pairs CSV's: whether a patient has cases in two splits depends on it.",
            )
        return SplitRule(
            "by_case",
            f"by case ({fractions}, seed {data.split.seed}; each image/mask pair its own patient)",
            "The split is by case: cases of one patient, if the data set holds several, can fall in two splits.",
        )
    if data.source in ("dicom_series", "nifti_folder"):
        if data.volumes.split_column:
            return SplitRule(
                "source",
                f"the labels CSV's '{data.volumes.split_column}' column (volumes without one: by patient, {seeded})",
                "The split is the labels CSV's: whether a patient has volumes in two splits depends on it.",
            )
        who = "the pseudonymised DICOM PatientID" if data.source == "dicom_series" else "one patient per NIfTI file"
        return SplitRule(
            "by_patient",
            f"by patient ({who}; {seeded})",
            "The split is by patient: no patient has volumes in two splits"
            + (" (NIfTI files carry no patient id: two files of one patient count as two)." if who[0] == "o" else "."),
        )
    if data.source == "dicom_folder" and data.dicom.split_column:
        return SplitRule(
            "source",
            f"the labels CSV's '{data.dicom.split_column}' column",
            "The split is the labels CSV's: whether a patient has images in two splits depends on it.",
        )
    folder = data.image_folder
    if data.source == "image_folder" and folder.labels == "csv" and folder.split_column:
        return SplitRule(
            "source",
            f"the labels CSV's '{folder.split_column}' column",
            "The split is the labels CSV's: whether a patient has images in two splits depends on it.",
        )
    if data.source == "dicom_folder":
        return SplitRule(
            "by_patient",
            f"by patient (the pseudonymised DICOM PatientID; {seeded})",
            "The split is by patient: no patient has images in two splits.",
        )
    if data.image_folder.patient_id == "file":
        return SplitRule(
            "by_image",
            f"{folders} by image (no patient ids; {seeded})",
            "Where the images were split by image, without patient ids, images of one patient and near-duplicate "
            "images can fall in both the training and the test split, which can inflate the test figures.",
        )
    return SplitRule(
        "by_patient",
        f"{folders} by patient (the patient id in Kermany file names; {seeded})",
        "Where the ingest split the images, no patient has images in two splits; split folders are kept as given.",
    )


def threshold_rule(rule: str | None, gates: GateConfig) -> str:
    """``gates.threshold`` as a phrase with its number and where it came from (the rules
    ``medimg.steps.evaluate.choose_threshold`` applies on the validation split, or a fixed value)."""
    if rule == "fixed":
        return f"fixed at {gates.fixed_threshold:g} (gates.fixed_threshold), not chosen on data"
    if rule == "argmax":  # segmentation: each voxel's most probable label
        return "none: arg-max"
    chosen = {
        "target_sensitivity": f"the highest threshold reaching sensitivity {gates.target_sensitivity:.2f}",
        "youden": "maximal Youden's J (sensitivity + specificity - 1)",
        "max_accuracy": "maximal accuracy",
    }.get(str(rule), str(rule))
    return f"{chosen}, on the validation split"


#: Architectures whose ``model.width`` sets their size (the torchvision ones have a fixed width).
WIDTH_ARCHITECTURES = frozenset({"compact_resnet", "simple_cnn", "resnet3d", "simple_cnn3d", "unet3d"})


def model_text(params: Params) -> str:
    """The network as a phrase: architecture, width, initialisation and, with ``model.ensemble``, the members'
    seeds (:func:`medimg.config.member_seeds`) and the test-time views."""
    model = params.model
    text = model.architecture + (f" (width {model.width})" if model.architecture in WIDTH_ARCHITECTURES else "")
    text += ", from pretrained weights (a local file)" if model.pretrained_weights else ", trained from scratch"
    ensemble = model.ensemble
    if ensemble.members > 1:
        seeds = member_seeds(params)
        text += f"; ensemble of {len(seeds)} networks (seeds {seeds[0]}-{seeds[-1]})"
    if ensemble.tta_flips:
        text += f"; test-time views: the input and its {', '.join(ensemble.tta_flips)} flip(s)"
    if ensemble.enabled:
        text += "; the softmax probabilities are averaged"
    return text


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def metric_estimates(test: Mapping[str, Any], ci95: Mapping[str, Sequence[Any] | None]) -> dict[str, dict]:
    """``{name: {"value", "ci95_low", "ci95_high"}}`` from ``metrics.json``'s ``test`` and ``test_ci95``.

    Counts keep integer values; an undefined metric (NaN, written as null) is ``None``; a metric
    without an interval has ``None`` bounds.
    """
    out = {}
    for name in sorted(test):
        value = test[name]
        bounds = [*(ci95.get(name) or ()), None, None]
        out[name] = {
            "value": int(value) if is_count(name) and _finite(value) is not None else _finite(value),
            "ci95_low": _finite(bounds[0]),
            "ci95_high": _finite(bounds[1]),
        }
    return out


def confusion_counts(task: TaskConfig, test: Mapping[str, Any]) -> list[list[int]] | None:
    """A binary task's confusion matrix (rows true class, columns decided class, ``task.class_names`` order)
    from its ``tp``/``fp``/``tn``/``fn``; None when a count is missing (the evaluate step writes the matrix
    itself from ``task_design.md`` on)."""
    if task.kind != "binary" or any(_finite(test.get(k)) is None for k in ("tp", "fp", "tn", "fn")):
        return None
    pos = task.positive_index
    matrix = [[0, 0], [0, 0]]
    matrix[pos][pos], matrix[pos][1 - pos] = int(test["tp"]), int(test["fn"])
    matrix[1 - pos][pos], matrix[1 - pos][1 - pos] = int(test["fp"]), int(test["tn"])
    return matrix


def _check_task(task: TaskConfig, evaluation: Mapping[str, Any]) -> None:
    kind = evaluation.get("task_kind")
    names = evaluation.get("class_names")
    if (kind is not None and kind != task.kind) or (names is not None and list(names) != list(task.class_names)):
        raise ValueError(
            f"metrics.json is for a {kind} task with classes {names}, the params for a {task.kind} task with "
            f"classes {list(task.class_names)}: not the same run"
        )


def _modality_text(task: TaskConfig) -> str:
    if not task.modalities:
        return "the training data's modality"
    return ", ".join(f"{MODALITY_NAMES.get(m, m)} ({m})" for m in task.modalities)


def intended_use(task: TaskConfig, unit: str = "image") -> str:
    """What the model is for, from ``task``: its description, modalities, body part and what it outputs.

    ``unit``: what one input is, ``image`` or ``volume`` (:func:`input_unit`).
    """
    what = task.description or "no task.description recorded"
    part = f", body part {task.body_part}" if task.body_part else ""
    names = ", ".join(task.class_names)
    if task.kind == "segmentation":
        labels = ", ".join(f"{i} {name}" for i, name in enumerate(task.class_names))
        output = (
            f"a label mask on the input {unit}'s own voxel grid (labels {labels}) and each structure's volume in mL"
        )
    elif task.kind == "binary":
        positive = task.class_names[task.positive_index]
        output = (
            f"the probability that {_a(unit)} shows '{positive}' (classes: {names}), flagged at the recorded threshold"
        )
    else:
        output = (
            f"a probability for each of {len(task.class_names)} classes ({names}), the most probable class, and an "
            f"'any abnormality' flag ({', '.join(task.abnormal)}) at the recorded threshold"
        )
    return (
        f"Research and engineering use: {what}. {unit.capitalize()}s: {_modality_text(task)}{part}. Output: {output}, "
        "for decision support under the supervision of a qualified clinician. Not a certified medical device; not "
        "for autonomous diagnosis."
    )


def input_unit(preprocessing: Mapping[str, Any] | None) -> str:
    """``volume`` for a 3D contract (``dims`` 3, :mod:`medimg.volume_contract`), else ``image``."""
    return "volume" if (preprocessing or {}).get("dims") == 3 else "image"


def _a(unit: str) -> str:
    return f"an {unit}" if unit[0] in "aeiou" else f"a {unit}"


def _ci_text(metric: Mapping[str, Any] | None) -> str:
    if not metric or metric["ci95_low"] is None or metric["ci95_high"] is None:
        return "no CI"
    return f"CI {metric['ci95_low']:.2f}-{metric['ci95_high']:.2f}"


def _near_duplicates(warts: Mapping[str, Any]) -> list[str]:
    """The near-duplicate pairs across splits the validation found (``medimg.validation.near_duplicates``
    summary keys), as text; empty when it found none or did not look."""
    pairs = warts.get("near_duplicate_pairs_across_splits")
    if not isinstance(pairs, int) or isinstance(pairs, bool) or pairs <= 0:
        return []
    images = warts.get("images_in_near_duplicate_pairs_across_splits", "?")
    distance = warts.get("near_duplicate_distance")
    within = f", pHash distance <= {distance}" if distance is not None else ""
    return [f"{pairs} near-duplicate image pairs across splits ({images} images{within})"]


def limitations(card: Mapping[str, Any], warts: Mapping[str, Any] | None, threshold_text: str) -> list[str]:
    """The card's limitations, each from a fact of the run (the card's task, data and metrics sections).

    Data set and images per split; what the split rule means (by image with no patient ids:
    near-duplicates may inflate test figures) and the validation warts across splits; classes with few test images;
    the input size; the scope; the threshold's rule; the CIs' scope; not a diagnosis.
    """
    task, data, metrics = card["task"], card["data"], card["metrics"]
    unit = data.get("unit", "image")
    counts = data["split_counts"]
    sizes = ", ".join(f"{s} {counts[s]}" for s in SPLITS if s in counts) or "split sizes not recorded"
    out = [
        f"Trained and tested on {data['dataset']} only ({sizes} {unit}s): performance at other sites, scanners, "
        "protocols or populations is unmeasured."
    ]
    out.append(data["split_consequence"])
    warts = warts or {}
    found = []
    if warts.get("hashes_across_splits"):
        found.append(
            f"{warts['hashes_across_splits']} byte-identical images shared across splits "
            f"({warts.get('images_across_splits', '?')} files)"
        )
    if warts.get("patients_across_splits"):
        found.append(f"{warts['patients_across_splits']} patients with images in more than one split")
    found += _near_duplicates(warts)
    if found:
        out.append(f"Validation found {'; '.join(found)}: these can flatter the test figures.")
    test_counts = data["class_counts"].get("test", {}) if task["kind"] != "segmentation" else {}
    few = []
    for name in task["class_names"]:
        n = test_counts.get(name)
        if n is not None and n < FEW_TEST_IMAGES:
            if task["kind"] != "binary":
                key = f"sensitivity_{name}"
            else:
                key = "sensitivity" if name == task["positive_class"] else "specificity"
            few.append(f"'{name}' {n} ({key.split('_')[0]} {_ci_text(metrics.get(key))})")
    if few:
        out.append(
            f"Classes with fewer than {FEW_TEST_IMAGES} test {unit}s have uncertain figures (wide CIs): "
            + "; ".join(few)
            + "."
        )
    contract = card["preprocessing"] or {}
    if contract.get("task") == "segmentation":
        grid = "x".join(str(n) for n in contract.get("shape") or ())
        out.append(
            f"Inputs keep their own voxel grid (no resampling; the mask lies on the input's voxels); training cases "
            f"were centred in a {grid} voxel grid: a volume much larger than that (e.g. a whole head rather than a "
            "crop around the structures) is out of scope."
        )
        n_test = counts.get("test")
        few_cases = [s for s in task["abnormal_classes"] if (data["class_counts"].get("test") or {}).get(s, 0) < 30]
        if few_cases or (n_test is not None and n_test < 30):
            out.append(f"Few test cases ({n_test}): per-structure figures have wide CIs.")
    elif contract.get("size") and unit == "volume":
        spacing = contract.get("spacing")
        resampled = f"resampled to {'x'.join(f'{s:g}' for s in spacing)} mm, then " if spacing else ""
        how = ", ".join(
            str(contract.get(key, default))
            for key, default in (("resize_policy", "stretch"), ("interpolation", "trilinear"))
        )
        out.append(
            f"Inputs are {resampled}reduced to {contract['size']}^3 voxels ({how}, orientation "
            f"{contract.get('orientation', 'as read')}): "
            "fine detail of full-resolution volumes is lost, and a volume at another orientation or field of view "
            "than the training data is out of scope."
        )
    elif contract.get("size"):
        alias = "" if contract.get("antialias") else "; without antialiasing, large images alias"
        out.append(
            f"Inputs are reduced to {contract['size']}x{contract['size']} px ({contract.get('resize', 'resized')}): "
            f"fine detail of full-resolution images is lost{alias}."
        )
    body = f" of the {task['body_part'].lower()}" if task["body_part"] else ""
    modalities = "/".join(task["modalities"]) if task["modalities"] else "training-modality"
    out.append(
        f"Only {modalities} {unit}s{body} are in scope: the model scores any {unit} it is given, and scores of other "
        "modalities, body parts or views are meaningless."
    )
    if task["kind"] == "segmentation":
        out.append(
            "Each voxel's label is the most probable one (arg-max); Dice, HD95 and volume error describe agreement "
            "with the reference masks of this data set, whose annotation protocol the model learnt."
        )
    elif task["kind"] == "binary":
        on, argmax = f"the probability of '{task['positive_class']}'", ""
    else:
        on = f"the summed probability of the abnormal classes ({', '.join(task['abnormal_classes'])})"
        argmax = " The class shown is the most probable one; the threshold does not change it."
    if task["kind"] != "segmentation":
        out.append(
            f"The threshold on {on} ({threshold_text}) gives other sensitivity and "
            f"specificity at other prevalences or sites.{argmax}"
        )
    n_test = counts.get("test")
    boot = card.get("bootstrap_samples")
    out.append(
        f"95% CIs: percentile bootstrap ({boot or '?'} resamples) over the {n_test if n_test is not None else '?'} "
        f"test {unit}s; they cover sampling error only, not a change of site or population."
    )
    out.append(
        "Not a diagnosis: every output needs a qualified reader's review; a negative output does not rule disease out."
    )
    return out


def run_card(
    params: Params,
    preprocessing: Mapping[str, Any] | None,
    evaluation: Mapping[str, Any],
    gate_report: Mapping[str, Any] | None,
    data_version: str | None,
    warts: Mapping[str, Any] | None = None,
) -> dict:
    """The card of a run, JSON-native: task, data, preprocessing, threshold, metrics with CIs, gate, use.

    ``params``: the run's params (its ``task``, ``data`` and ``gates`` sections are read);
    ``preprocessing``: the contract (:func:`medimg.preprocess.contract`, the ONNX ``medimg.preprocessing``);
    ``evaluation``: ``metrics.json`` as the evaluate step writes it (``threshold``, ``threshold_rule``,
    ``test``, ``test_ci95``, and since multi-class tasks ``task_kind``, ``class_names``,
    ``confusion_matrix``, ``class_counts``, ``n_test``, ``bootstrap_samples``; the older binary
    layout without them is read too); ``gate_report``: ``gates/gate_report.json``; ``warts``: the
    validation report's ``warts`` counts. Raises ``ValueError`` when ``evaluation`` names another
    task kind or other classes than ``params.task``.
    """
    task = params.task
    _check_task(task, evaluation)
    test = evaluation.get("test") or {}
    metrics = metric_estimates(test, evaluation.get("test_ci95") or {})
    matrix = evaluation.get("confusion_matrix") or confusion_counts(task, test)
    names = list(task.class_names)
    class_counts = {
        split: {name: int(n) for name, n in per_class.items()}
        for split, per_class in (evaluation.get("class_counts") or {}).items()
    }
    if "test" not in class_counts and matrix:
        class_counts["test"] = {name: int(sum(row)) for name, row in zip(names, matrix, strict=True)}
    split_counts = {split: sum(per_class.values()) for split, per_class in class_counts.items()}
    if evaluation.get("split_counts"):  # segmentation: cases per split (class_counts count cases per structure)
        split_counts = {str(s): int(n) for s, n in evaluation["split_counts"].items()}
    if "test" not in split_counts and evaluation.get("n_test") is not None:
        split_counts["test"] = int(evaluation["n_test"])
    dataset, about = dataset_name(params.data)
    folder = PurePath(params.data.root).name if params.data.root and params.data.source != "medmnist" else None
    rule = split_rule(params.data)
    threshold_text = threshold_rule(evaluation.get("threshold_rule"), params.gates)
    if task.kind == "segmentation":
        groups = {
            "overall": [m for m in SEGMENTATION_OVERALL if m in metrics],
            "per_class": list(PER_STRUCTURE),
            "operating_point": [],
        }
    elif task.kind == "binary":
        groups = {"overall": [m for m in BINARY_METRICS if m in metrics], "per_class": [], "operating_point": []}
    else:
        groups = {
            "overall": [m for m in MULTICLASS_OVERALL if m in metrics],
            "per_class": list(PER_CLASS),
            "operating_point": [m for m in OPERATING_POINT if m in metrics],
        }
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "task": {
            "kind": task.kind,
            "class_names": names,
            "abnormal_classes": list(task.abnormal),
            "positive_class": names[task.positive_index] if task.kind == "binary" else None,
            "modalities": list(task.modalities) if task.modalities else None,
            "body_part": task.body_part,
            "description": task.description,
        },
        "data": {
            "source": params.data.source,
            "dataset": dataset,
            "dataset_about": about,
            "medmnist_flag": params.data.medmnist_flag if params.data.source == "medmnist" else None,
            "folder": folder,
            "split_kind": rule.kind,
            "split_rule": rule.text,
            "split_consequence": rule.consequence,
            "class_counts": class_counts,
            "split_counts": split_counts,
            "unit": input_unit(preprocessing),
        },
        "data_version": data_version,
        "preprocessing": dict(preprocessing) if preprocessing is not None else None,
        "threshold": _finite(evaluation.get("threshold")),
        "threshold_rule": threshold_text,
        "model": model_text(params),
        "decision": {
            "binary": "threshold on the abnormal-class probability",
            "multiclass": "most probable class (arg-max); 'any abnormality' flag at the threshold",
        }.get(task.kind, "each voxel's most probable label (arg-max)"),
        "metrics": metrics,
        "metric_groups": groups,
        "confusion_matrix": {
            "rows": "true class",
            "columns": "decided class (threshold)" if task.kind == "binary" else "decided class (arg-max)",
            "labels": names,
            "counts": [[int(v) for v in row] for row in matrix] if matrix else None,
        },
        "bootstrap_samples": evaluation.get("bootstrap_samples"),
        "gate": {
            "passed": bool((gate_report or {}).get("passed")),
            "failed_rules": list((gate_report or {}).get("failed") or []),
            "report": dict(gate_report) if gate_report is not None else None,
        },
        "intended_use": intended_use(task, input_unit(preprocessing)),
    }
    card["limitations"] = limitations(card, warts, threshold_text)
    return card


def card_markdown(card: Mapping[str, Any], compact: bool = False) -> str:
    """The card in Markdown; every value comes from ``card``. ``compact``: 3 decimals, per-class CIs of AUC and
    sensitivity only, the operating point's headline (:data:`COMPACT_HIDDEN` left out), no confusion matrix or
    gate rules (the header states the verdict) or preprocessing contract (the limitations give its size)."""
    return rendering.render(
        MARKDOWN_TEMPLATE,
        card=card,
        compact=compact,
        is_count=is_count,
        compact_hidden=COMPACT_HIDDEN,
        compact_class_cis=COMPACT_CLASS_CIS,
        full_card=artifacts.MODEL_CARD_MD,
        splits=SPLITS,  # in this order, whatever the order of the card's dicts (JSON is written with sorted keys)
    )


def registry_description(card: Mapping[str, Any], limit: int = DESCRIPTION_LIMIT) -> str:
    """The card's Markdown for the registered version's description: in full when it fits ``limit``
    characters, else compact, else compact and cut at the last line that fits, with a note where the full
    card is (the run's ``model_card/`` artifacts, and ``medimg pull``)."""
    for text in (card_markdown(card), card_markdown(card, compact=True)):
        if len(text) <= limit:
            return text
    note = f"\n\n_(cut to fit the registry; full card: the run's artifact {artifacts.MODEL_CARD_MD}, or medimg pull)_\n"
    cut = text[: limit - len(note)]
    return cut[: cut.rfind("\n")] + note
