"""Realistic run records for the model-card and status tests: a binary and a multiclass run.

The binary ``metrics.json`` is the evaluate step's (pre multi-class layout) from a real 30-epoch
PneumoniaMNIST run; the multiclass one is hand-written in the layout of ``task_design.md`` for the
4-class brain tumour MRI folder (stratified by image, no patient ids), with numbers that agree with
each other: the confusion matrix's rows are the test counts and its diagonal gives the
sensitivities and accuracy.
"""

from __future__ import annotations

from medimg.config import Params, deep_merge, read_params_file
from registry_fixtures import ROOT

BINARY_METRICS = {
    "threshold": 0.861278772354126,
    "threshold_rule": "target_sensitivity",
    "test": {
        "accuracy": 0.9439102564102564,
        "sensitivity": 0.9538461538461539,
        "specificity": 0.9273504273504274,
        "precision": 0.9562982005141388,
        "npv": 0.9234042553191489,
        "f1": 0.9550706033376123,
        "roc_auc": 0.9821389436774052,
        "pr_auc": 0.9877404357124879,
        "brier": 0.04758712597882122,
        "ece": 0.0442382019380614,
        "tp": 372,
        "fp": 17,
        "tn": 217,
        "fn": 18,
        "n": 624,
        "prevalence": 0.625,
        "threshold": 0.861278772354126,
    },
    "test_ci95": {
        "accuracy": [0.9262820512820513, 0.9615384615384616],
        "sensitivity": [0.9333333333333333, 0.9717948717948718],
        "specificity": [0.8931623931623932, 0.9572649572649573],
        "precision": [0.937651963840399, 0.9740276562815423],
        "npv": [0.8936016986253392, 0.9529964539007092],
        "f1": [0.9408667236487606, 0.96923273657289],
        "roc_auc": [0.9721674337058952, 0.9909062020600483],
        "pr_auc": [0.9799893344117719, 0.9942288761049916],
        "brier": [0.034892621271902596, 0.060623739657909424],
        "ece": [0.03271161223991248, 0.060417994941244405],
    },
    "val": {"accuracy": 0.9274809160305344, "roc_auc": 0.9966866609540133, "n": 524},
    "n_test": 624,
    "subgroups": {},
    "bootstrap_samples": 1000,
}

BINARY_GATE = {
    "passed": True,
    "failed": [],
    "rules": [
        {"name": "benchmark_noninferiority", "passed": True, "reason": "sensitivity 0.954 vs 0.435: passed."},
        {"name": "minimum_metrics", "passed": True, "reason": "roc_auc 0.982 >= 0.950: passed."},
        {"name": "champion_noninferiority", "passed": True, "reason": "first run: passed."},
    ],
    "champion_version": None,
    "threshold": 0.861278772354126,
}

BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
BRAIN_PARAMS = {
    "task": {
        "kind": "multiclass",
        "class_names": list(BRAIN_CLASSES),
        "abnormal": ["glioma", "meningioma", "pituitary"],
        "modalities": ["MR"],
        "body_part": "BRAIN",
        "description": "brain tumour type on T1 contrast-enhanced and other MRI slices",
    },
    "data": {
        "source": "image_folder",
        "root": "brain_tumor_mri",
        "modality": "MR",
        "image_folder": {"patient_id": "file"},
        "split": {"fractions": {"train": 0.7, "val": 0.15, "test": 0.15}, "seed": 7},
    },
    "validation": {"expected_split_sizes": None},
    "preprocess": {"size": 64, "antialias": True},
    "gates": {"min_auc": 0.99, "min_accuracy": 0.93},
    "registry": {"model_name": "brain-tumour-mri"},
}

#: rows = true class, columns = arg-max class (BRAIN_CLASSES order); row sums are the test counts.
BRAIN_CONFUSION = [[41, 3, 0, 1], [2, 42, 1, 1], [0, 1, 60, 0], [0, 1, 0, 25]]


def _per_class(name: str, auc, sens, spec, ppv, npv, f1, n) -> dict:
    return {
        f"roc_auc_{name}": auc,
        f"sensitivity_{name}": sens,
        f"specificity_{name}": spec,
        f"ppv_{name}": ppv,
        f"npv_{name}": npv,
        f"f1_{name}": f1,
        f"n_{name}": n,
    }


BRAIN_METRICS = {
    "task_kind": "multiclass",
    "class_names": list(BRAIN_CLASSES),
    "abnormal_classes": ["glioma", "meningioma", "pituitary"],
    "threshold": 0.4172,
    "threshold_rule": "target_sensitivity",
    "test": {
        "accuracy": 168 / 178,
        "balanced_accuracy": 0.9423,
        "macro_roc_auc": 0.9934,
        "macro_f1": 0.9391,
        "kappa": 0.9236,
        "brier": 0.0871,
        "ece": 0.0312,
        "n": 178,
        **_per_class("glioma", 0.9912, 41 / 45, 0.9850, 0.9535, 0.9703, 0.9318, 45),
        **_per_class("meningioma", 0.9871, 42 / 46, 0.9621, 0.8936, 0.9695, 0.9032, 46),
        **_per_class("notumor", 0.9998, 60 / 61, 0.9915, 0.9836, 0.9915, 0.9836, 61),
        **_per_class("pituitary", 0.9954, 25 / 26, 0.9868, 0.9259, 0.9934, 0.9434, 26),
        "abnormal_accuracy": 173 / 178,
        "abnormal_sensitivity": 115 / 117,
        "abnormal_specificity": 58 / 61,
        "abnormal_precision": 115 / 118,
        "abnormal_npv": 58 / 60,
        "abnormal_f1": 0.9787,
        "abnormal_roc_auc": 0.9989,
        "abnormal_pr_auc": 0.9994,
        "abnormal_brier": 0.0214,
        "abnormal_ece": 0.0188,
        "abnormal_tp": 115,
        "abnormal_fp": 3,
        "abnormal_tn": 58,
        "abnormal_fn": 2,
        "abnormal_n": 178,
    },
    "test_ci95": {
        "accuracy": [0.9045, 0.9719],
        "balanced_accuracy": [0.9021, 0.9733],
        "macro_roc_auc": [0.9868, 0.9979],
        "macro_f1": [0.9002, 0.9698],
        "kappa": [0.8715, 0.9621],
        "brier": [0.0601, 0.1178],
        "ece": [0.0207, 0.0689],
        "roc_auc_glioma": [0.9791, 0.9989],
        "sensitivity_glioma": [0.8222, 0.9778],
        "specificity_glioma": [0.9627, 1.0],
        "ppv_glioma": [0.8780, 1.0],
        "npv_glioma": [0.9407, 0.9923],
        "f1_glioma": [0.8765, 0.9767],
        "roc_auc_meningioma": [0.9712, 0.9972],
        "sensitivity_meningioma": [0.8261, 0.9783],
        "specificity_meningioma": [0.9300, 0.9909],
        "ppv_meningioma": [0.8000, 0.9750],
        "npv_meningioma": [0.9380, 0.9926],
        "f1_meningioma": [0.8421, 0.9565],
        "roc_auc_notumor": [0.9989, 1.0],
        "sensitivity_notumor": [0.9464, 1.0],
        "specificity_notumor": [0.9735, 1.0],
        "ppv_notumor": [0.9483, 1.0],
        "npv_notumor": [0.9730, 1.0],
        "f1_notumor": [0.9580, 1.0],
        "roc_auc_pituitary": [0.9857, 1.0],
        "sensitivity_pituitary": [0.8800, 1.0],
        "specificity_pituitary": [0.9667, 1.0],
        "ppv_pituitary": [0.8148, 1.0],
        "npv_pituitary": [0.9800, 1.0],
        "f1_pituitary": [0.8679, 1.0],
        "abnormal_accuracy": [0.9494, 0.9944],
        "abnormal_sensitivity": [0.9580, 1.0],
        "abnormal_specificity": [0.9016, 1.0],
        "abnormal_precision": [0.9487, 1.0],
        "abnormal_npv": [0.9123, 1.0],
        "abnormal_f1": [0.9609, 0.9936],
        "abnormal_roc_auc": [0.9962, 1.0],
        "abnormal_pr_auc": [0.9980, 1.0],
        "abnormal_brier": [0.0101, 0.0356],
        "abnormal_ece": [0.0098, 0.0451],
    },
    "val": {"accuracy": 0.9379, "macro_roc_auc": 0.9921, "n": 177},
    "confusion_matrix": BRAIN_CONFUSION,
    "class_counts": {
        "train": {"glioma": 210, "meningioma": 214, "notumor": 283, "pituitary": 119},
        "val": {"glioma": 45, "meningioma": 46, "notumor": 60, "pituitary": 26},
        "test": {"glioma": 45, "meningioma": 46, "notumor": 61, "pituitary": 26},
    },
    "n_test": 178,
    "subgroups": {},
    "bootstrap_samples": 1000,
}

BRAIN_GATE = {
    "passed": False,
    "failed": ["minimum_metrics"],
    "rules": [
        {
            "name": "minimum_metrics",
            "passed": False,
            "reason": "accuracy 0.944 < 0.950 (macro_roc_auc 0.993 >= 0.990): failed.",
        },
        {"name": "champion_noninferiority", "passed": True, "reason": "first run: passed."},
    ],
    "champion_version": None,
    "threshold": 0.4172,
}

#: Validation warts of the brain folder (counts only, as the validation report writes them, near-duplicates included).
BRAIN_WARTS = {
    "near_duplicates_checked": True,
    "near_duplicate_hash": "phash256",
    "near_duplicate_distance": 36,
    "near_duplicate_pairs_across_splits": 5,
    "near_duplicate_pairs_across_splits_by_splits": {"train|test": 3, "train|val": 2},
    "images_in_near_duplicate_pairs_across_splits": 10,
    "near_duplicate_pairs_within_split": {"train": 7, "val": 0, "test": 1},
    "duplicate_groups_within_split": {"train": 3, "val": 0, "test": 0},
    "extra_copies_within_split": {"train": 3, "val": 0, "test": 0},
    "hashes_across_splits": 2,
    "images_across_splits": 4,
    "patients_across_splits": 0,
    "images_of_patients_across_splits": 0,
    "patients_across_splits_by_splits": {},
}


def params_with(overrides: dict | None = None) -> Params:
    """The shipped ``params.yaml`` with ``overrides`` merged in (validated)."""
    return Params.model_validate(deep_merge(read_params_file(ROOT / "params.yaml"), overrides or {}))
