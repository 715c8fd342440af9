"""The model card built from a run's records (``medimg.model_card``) and read back at pull (``medimg.pull.card``).

No servers: the card is a pure function of the run's params, ``metrics.json``, gate report, data version and
validation warts (``card_cases``: a real binary PneumoniaMNIST run's numbers and a hand-written 4-class brain MRI
run in the layout of ``task_design.md``). The registry description is checked against a real MLflow in
``tests/steps/test_register_card.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from card_cases import (
    BINARY_GATE,
    BINARY_METRICS,
    BRAIN_CLASSES,
    BRAIN_GATE,
    BRAIN_METRICS,
    BRAIN_PARAMS,
    BRAIN_WARTS,
    params_with,
)
from medimg import model_card, preprocess
from medimg.pull.card import params_from_run

PACKAGE = Path(model_card.__file__).parent
PNEUMONIA_WARTS = {"hashes_across_splits": 8, "images_across_splits": 18, "patients_across_splits": 0}


def _card(overrides: dict, metrics: dict, gate: dict, warts: dict | None = None) -> dict:
    params = params_with(overrides)
    return model_card.run_card(params, preprocess.contract(params.preprocess), metrics, gate, "d" * 32, warts)


def test_a_binary_card_names_its_data_set_classes_and_figures():
    card = _card({}, BINARY_METRICS, BINARY_GATE, PNEUMONIA_WARTS)
    task, data = card["task"], card["data"]
    assert task["kind"] == "binary" and task["class_names"] == ["normal", "pneumonia"]
    assert task["positive_class"] == "pneumonia" and task["modalities"] == ["CR", "DX"]
    assert data["dataset"] == "PneumoniaMNIST (MedMNIST v2, flag pneumoniamnist)" and data["split_kind"] == "official"
    # the older metrics.json has no matrix or class counts: both follow from tp/fp/tn/fn (rows = true class)
    assert card["confusion_matrix"]["counts"] == [[217, 17], [18, 372]]
    assert data["class_counts"] == {"test": {"normal": 234, "pneumonia": 390}} and data["split_counts"] == {"test": 624}
    auc = card["metrics"]["roc_auc"]
    assert (auc["value"], auc["ci95_low"], auc["ci95_high"]) == (
        0.9821389436774052,
        *BINARY_METRICS["test_ci95"]["roc_auc"],
    )
    assert card["metrics"]["tp"] == {"value": 372, "ci95_low": None, "ci95_high": None}
    assert card["threshold"] == BINARY_METRICS["threshold"] and "sensitivity 0.90" in card["threshold_rule"]
    assert card["gate"] == {"passed": True, "failed_rules": [], "report": BINARY_GATE}

    md = model_card.card_markdown(card)
    for needle in (
        "on PneumoniaMNIST (MedMNIST v2, flag pneumoniamnist)",
        "| roc_auc | 0.9821 (0.9722-0.9909) |",
        "| sensitivity | 0.9538 (0.9333-0.9718) |",
        "| tp | 372 |",
        "| normal | 217 | 17 |",
        "| pneumonia | 18 | 372 |",
        "decision threshold | 0.8613",
        "Not a certified medical device",
        "8 byte-identical images shared across splits (18 files)",
        "official test split",
        "Inputs are reduced to 28x28 px",
        "**PASSED**",
    ):
        assert needle in md, needle
    assert "multiclass" not in md and "abnormal_" not in md


def test_a_multiclass_card_names_its_data_set_classes_and_per_class_figures():
    card = _card(BRAIN_PARAMS, BRAIN_METRICS, BRAIN_GATE, BRAIN_WARTS)
    task, data = card["task"], card["data"]
    assert task["kind"] == "multiclass" and task["class_names"] == list(BRAIN_CLASSES)
    assert task["abnormal_classes"] == ["glioma", "meningioma", "pituitary"] and task["positive_class"] is None
    assert data["dataset"] == "image folder 'brain_tumor_mri'" and data["folder"] == "brain_tumor_mri"
    assert data["split_kind"] == "by_image" and data["split_counts"] == {"train": 826, "val": 177, "test": 178}
    assert card["confusion_matrix"]["counts"] == BRAIN_METRICS["confusion_matrix"]
    assert card["metric_groups"]["overall"][:3] == ["accuracy", "balanced_accuracy", "macro_roc_auc"]
    assert "abnormal_sensitivity" in card["metric_groups"]["operating_point"]
    assert (
        card["metrics"]["sensitivity_pituitary"]["ci95_low"] == 0.88 and card["metrics"]["n_pituitary"]["value"] == 26
    )
    assert card["gate"]["passed"] is False and card["gate"]["failed_rules"] == ["minimum_metrics"]

    md = model_card.card_markdown(card)
    for needle in (
        "multiclass classifier of glioma, meningioma, notumor, pituitary on image folder 'brain_tumor_mri'",
        "| macro_roc_auc | 0.9934 (0.9868-0.9979) |",
        "| kappa | 0.9236 (0.8715-0.9621) |",
        "| pituitary | 26 | 0.9954 (0.9857-1.0000) | 0.9615 (0.8800-1.0000) | 0.9868 (0.9667-1.0000) |",
        "| abnormal_sensitivity | 0.9829 (0.9580-1.0000) |",
        "| glioma | 41 | 3 | 0 | 1 |",  # confusion matrix row
        "| pituitary | 119 | 26 | 26 |",  # images per split and class
        "MRI (MR), body part BRAIN",
        "brain tumour type on T1 contrast-enhanced",
        "**FAILED: minimum_metrics**",
    ):
        assert needle in md, needle
    limits = " ".join(card["limitations"])
    assert "without patient ids, images of one patient and near-duplicate images can fall in both" in limits
    assert "'pituitary' 26 (sensitivity CI 0.88-1.00)" in limits and "'notumor' 61" in limits
    assert "64x64 px" in limits and "Not a diagnosis" in limits and "2 byte-identical images" in limits
    assert "5 near-duplicate image pairs across splits (10 images, pHash distance <= 36)" in limits
    # nothing of the default pneumonia task leaks into another task's card
    for word in ("pneumonia", "624", "28x28", "chest", "official"):
        assert word not in md.lower(), word


def test_a_kermany_folder_split_by_patient_says_so():
    params = {
        "task": {
            "kind": "multiclass",
            "class_names": ["normal", "bacteria", "virus"],
            "abnormal": ["bacteria", "virus"],
        },
        "data": {"source": "image_folder", "root": "/srv/hospital-a/exports/chest_xray"},
    }
    metrics = {
        "task_kind": "multiclass",
        "class_names": ["normal", "bacteria", "virus"],
        "threshold": 0.5,
        "threshold_rule": "youden",
        "test": {"accuracy": 0.8},
        "test_ci95": {"accuracy": [0.77, 0.83]},
        "class_counts": {"test": {"normal": 234, "bacteria": 242, "virus": 148}},
    }
    card = _card(params, metrics, None)
    assert card["data"]["split_kind"] == "by_patient" and "Kermany file names" in card["data"]["split_rule"]
    assert card["data"]["dataset"] == "image folder 'chest_xray'"
    assert "/srv/hospital-a" not in json.dumps(card), "only the source folder's own name reaches the card"
    assert "Youden" in card["threshold_rule"]
    assert not [item for item in card["limitations"] if "fewer than" in item], "every class has >= 100 test images"
    assert card["confusion_matrix"]["counts"] is None and "Not recorded." in model_card.card_markdown(card)


def test_an_undefined_metric_is_na_never_zero():
    metrics = copy.deepcopy(BRAIN_METRICS)
    metrics["test"]["ppv_pituitary"] = None  # never predicted: NaN in the evaluate step, null in metrics.json
    metrics["test_ci95"]["ppv_pituitary"] = [None, None]
    card = _card(BRAIN_PARAMS, metrics, BRAIN_GATE)
    assert card["metrics"]["ppv_pituitary"] == {"value": None, "ci95_low": None, "ci95_high": None}
    row = next(
        line for line in model_card.card_markdown(card).splitlines() if line.startswith("| pituitary | 26 | 0.99")
    )
    assert row.split(" | ")[5] == "n/a"


def test_the_markdown_comes_from_the_json_card_alone():
    card = _card(BRAIN_PARAMS, BRAIN_METRICS, BRAIN_GATE, BRAIN_WARTS)
    for compact in (False, True):  # the JSON is written with sorted keys: dict order must not matter
        as_written = json.loads(json.dumps(card, sort_keys=True))
        assert model_card.card_markdown(as_written, compact) == model_card.card_markdown(card, compact)
    changed = copy.deepcopy(card)
    changed["metrics"]["macro_roc_auc"]["value"] = 0.5
    assert "| macro_roc_auc | 0.5000 (0.9868-0.9979) |" in model_card.card_markdown(changed)


def test_metrics_of_another_task_are_refused():
    with pytest.raises(ValueError, match="not the same run"):
        _card({}, BRAIN_METRICS, BRAIN_GATE)


def test_the_registry_description_fits_mlflow_and_keeps_the_figures():
    registration = {  # what the register step adds (medimg.steps.register)
        "model_name": "brain-tumour-classifier",
        "version": "12",
        "registered_as": "challenger",
        "mlflow_run_id": "f" * 32,
        "sha256": "a" * 64,
        "git_commit": "c" * 40 + "-dirty",
        "params_hash": "p" * 16,
        "architecture": "compact_resnet",
        "onnx_parity_max_abs_diff": 1.2e-06,
    }
    brain = _card(BRAIN_PARAMS, BRAIN_METRICS, BRAIN_GATE, BRAIN_WARTS) | registration
    assert len(model_card.card_markdown(brain)) > model_card.DESCRIPTION_LIMIT  # so the compact form is used
    text = model_card.registry_description(brain)
    assert len(text) <= model_card.DESCRIPTION_LIMIT and text == model_card.card_markdown(brain, compact=True)
    for needle in (
        "image folder 'brain_tumor_mri'",
        "| macro_roc_auc | 0.993 (0.987-0.998) |",
        "| pituitary | 0.995 (0.986-1.000) | 0.962 (0.880-1.000) | 0.987 |",
        "| abnormal_sensitivity | 0.983 (0.958-1.000) |",
        "| gate | FAILED: minimum_metrics |",
    ):
        assert needle in text, needle
    cut = model_card.registry_description(brain, limit=1500)
    assert len(cut) <= 1500 and cut.endswith("or medimg pull)_\n") and cut.startswith(text[:1000])


def test_no_data_set_is_written_into_the_card_code():
    for path in (PACKAGE / "model_card.py", PACKAGE / "pull" / "card.py", PACKAGE / "templates" / "model_card.md.j2"):
        text = path.read_text().lower()
        for needle in ("pneumonia", "624", "guangzhou", "paediatric", "pediatric", "28x28", "chest"):
            assert needle not in text, f"{path.name} mentions {needle!r}"


@pytest.mark.parametrize("overrides", [{}, BRAIN_PARAMS], ids=["binary", "multiclass"])
def test_params_come_back_from_the_run_params(overrides):
    params = params_with(overrides)
    assert params_from_run(params.flat()) == params


def test_a_run_from_before_the_task_section_gets_its_task_back():
    flat = {k: v for k, v in params_with().flat().items() if not k.startswith("task.")}
    flat |= {
        "data.class_names": '["normal", "pneumonia"]',
        "data.modalities": '["CR", "DX"]',
        "data.body_part": "CHEST",
    }
    task = params_from_run(flat).task
    assert (task.kind, task.class_names, task.abnormal, task.body_part) == (
        "binary",
        ("normal", "pneumonia"),
        ("pneumonia",),
        "CHEST",
    )


def test_a_binary_task_whose_abnormal_class_is_index_0_gets_its_matrix_the_right_way_round():
    from medimg.config import TaskConfig

    task = TaskConfig(class_names=("malignant", "benign_or_normal"), abnormal=("malignant",))
    # rows = true class in class_names order: malignant (the positive class) first
    assert model_card.confusion_counts(task, {"tp": 30, "fn": 12, "fp": 9, "tn": 105}) == [[30, 12], [9, 105]]
    assert model_card.confusion_counts(task, {"tp": 30, "fn": None, "fp": 9, "tn": 105}) is None


def test_an_ensemble_with_a_fixed_threshold_says_what_the_network_is_and_that_no_data_chose_the_threshold():
    overrides = {
        "model": {"ensemble": {"members": 3, "tta_flips": ["horizontal"]}},
        "train": {"seed": 7},
        "gates": {"threshold": "fixed", "fixed_threshold": 0.5},
    }
    metrics = {**copy.deepcopy(BINARY_METRICS), "threshold": 0.5, "threshold_rule": "fixed"}
    card = _card(overrides, metrics, BINARY_GATE)
    assert card["model"] == (
        "compact_resnet (width 48), trained from scratch; ensemble of 3 networks (seeds 7-9); test-time views: "
        "the input and its horizontal flip(s); the softmax probabilities are averaged"
    )
    md = model_card.card_markdown(card)
    assert "| decision threshold | 0.5000 (fixed at 0.5 (gates.fixed_threshold), not chosen on data) |" in md
    assert f"| model | {card['model']} |" in md
    (rule,) = [item for item in card["limitations"] if item.startswith("The threshold on")]
    assert "(fixed at 0.5 (gates.fixed_threshold), not chosen on data)" in rule and "validation" not in rule

    chosen = _card({}, BINARY_METRICS, BINARY_GATE)  # target_sensitivity: chosen on validation, one plain network
    assert chosen["model"] == "compact_resnet (width 48), trained from scratch"
    assert "sensitivity 0.90, on the validation split) |" in model_card.card_markdown(chosen)
    assert (
        model_card.model_text(params_with({"model": {"architecture": "resnet18"}})) == "resnet18, trained from scratch"
    )
