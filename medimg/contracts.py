"""The step contracts: what each step of the retraining pipeline hands the next, typed and frozen.

Each :mod:`medimg.steps` module returns one of these models and takes the earlier ones it needs,
never a dict. The Prefect tasks around the steps persist them (the cached steps' results are
pickled into ``<workspace>/prefect/results``, see :mod:`tasks.retrain`), the flow logs their JSON
form (``model_dump(mode="json")``) to MLflow, and the CLI prints them. Paths are absolute paths
inside the workspace unless a field says otherwise; probabilities and metrics are unitless in
[0, 1] unless a field says otherwise; times are seconds.

Frozen (``ConfigDict(frozen=True)``): a step's output is a record of what happened, so nobody
downstream may change it. Dict-valued fields hold data keyed by data (metric names, split names,
quarantine reasons, ...), never the contract's own structure.

Changing a field is changing the interface between steps and the format of persisted results:
a result cached by an older version that no longer validates is recomputed, not reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: A metric map: name (:data:`medimg.evaluation.metrics.METRIC_NAMES`, the counts ``tp``, ``fp``,
#: ``tn``, ``fn``, ``n`` and ``threshold``) -> value; None where the metric is undefined (NaN).
Metrics = dict[str, int | float | None]


class Contract(BaseModel):
    """Base of every step contract: frozen, and no field that the model does not declare."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- ingest


class IngestSummary(Contract):
    """The ingest step's outcome (:mod:`medimg.steps.ingest`): the DVC data version now in the workspace."""

    data_version: str = Field(description="DVC data version id (the dataset's md5): what the run key and tags name")
    new_version: bool = Field(description="True when this ingest made a data version the workspace did not hold")
    n_images: int = Field(description="images in the dataset (all splits)")
    split_counts: dict[str, int] = Field(description="images per split name (train, val, test)")
    source: str = Field(description="the source folder's or archive's name")
    source_md5: str = Field(description="md5 of the MedMNIST archive, or of the source folder's listing")
    source_kind: str = Field(description="data.source: medmnist, image_folder or dicom_folder")
    n_files: int = Field(description="files looked at (source and inbox)")
    n_decoded: int = Field(description="files decoded by this ingest")
    n_cached: int = Field(description="files whose decoding came from the decode cache")
    n_quarantined: int = Field(description="files set aside with a reason (see quarantine_csv)")
    quarantine_by_reason: dict[str, int] = Field(description="quarantined files per reason code")
    quarantine_csv: Path = Field(
        description="reports/quarantine-<data version>.csv: each file's place in the source "
        "folder, pseudonym, reason and the library's message; stays in the workspace"
    )
    quarantine_pseudonymous_csv: Path | None = Field(
        default=None,
        description="reports/pseudonymous/quarantine-<data version>.csv: pseudonym and reason only; "
        "the copy that may leave the workspace (MLflow)",
    )
    n_skipped_files: int = Field(
        default=0,
        description="files that are not images, skipped with a reason "
        "(hidden/system files, DICOMDIR, non-image DICOM, labels CSV)",
    )
    skipped_files_by_reason: dict[str, int] = Field(default_factory=dict, description="skipped files per reason code")
    skipped_files_csv: Path | None = Field(
        default=None,
        description="reports/skipped-<data version>.csv: each skipped file's place in the source and reason",
    )
    contract_hash: str = Field(description="hash of the preprocessing contract the images were made with")
    dvc_file: Path = Field(description="the .dvc file of this data version (data/versions/<id>.dvc)")
    fetch_commands: tuple[str, ...] = Field(description="shell commands that restore this data version")
    skipped: bool = Field(default=False, description="True when the source check reused the last ingest unread")


# --------------------------------------------------------------------------- drift


class DriftFeature(Contract):
    """One feature's drift verdict (:func:`medimg.drift.compare`)."""

    feature: str = Field(description="pixel_mean (per-image mean intensity, 0-255) or champion_output (probability)")
    n_reference: int = Field(description="values in the reference sample")
    n_current: int = Field(description="values in the current sample")
    psi: float = Field(description="population stability index (reference-quantile bins); may be inf")
    ks_statistic: float = Field(description="two-sample Kolmogorov-Smirnov statistic")
    ks_pvalue: float = Field(description="its p-value")
    drifted: bool = Field(description="psi above drift.psi_threshold or p below drift.pvalue_threshold")


class DriftCheck(Contract):
    """The drift step's verdict (:mod:`medimg.steps.drift`); ``drifted`` None means nothing was compared."""

    checked: bool = Field(description="True when at least one feature was compared")
    drifted: bool | None = Field(default=None, description="any feature drifted; None: not checked")
    reason: str = Field(description="one line: the numbers, or why nothing was compared")
    reference_version: str | None = Field(default=None, description="the champion's data version")
    champion_version: str | None = Field(default=None, description="the champion's registered version")
    features: tuple[DriftFeature, ...] = Field(default=(), description="each feature compared")


# --------------------------------------------------------------------------- validate


class TrainingData(Contract):
    """The data a candidate is trained and evaluated on: the workspace's data version minus dropped rows."""

    data_version: str = Field(description="the DVC data version checked out in the workspace")
    dropped_ids: tuple[str, ...] = Field(default=(), description="manifest ids left out (validation policy)")


class ValidationSummary(Contract):
    """The validate step's outcome (:mod:`medimg.steps.validate`)."""

    data_version: str = Field(description="the data version validated")
    passed: bool = Field(description="no critical expectation failed")
    report: Path = Field(description="reports/validation-<data version>.json: outcome, warts, GX result JSON")
    html_report: Path = Field(description="reports/validation-<data version>.html: the same, readable offline")
    n_warnings: int = Field(description="expectations that failed with severity warning")
    failed: tuple[str, ...] = Field(description="one line per failed critical expectation")
    dropped_ids: tuple[str, ...] = Field(description="manifest ids left out of training and evaluation by policy")
    warts: dict[str, Any] = Field(description="the data's warts as counts (duplicates, cross-split hashes, patients)")

    @property
    def training_data(self) -> TrainingData:
        """What train, evaluate and export read: this data version without the dropped rows."""
        return TrainingData(data_version=self.data_version, dropped_ids=self.dropped_ids)


# --------------------------------------------------------------------------- train


class MemberSummary(Contract):
    """One member of an ensemble (``model.ensemble.members`` > 1), trained with its own seed."""

    index: int = Field(description="0-based member index")
    seed: int = Field(description="its train.seed: train.seed + index")
    checkpoint: Path = Field(description="runs/<MLflow run id>/members/<index>/best.pt")
    checkpoint_sha256: str = Field(description="sha256 of that file")
    best_epoch: int = Field(description="1-based epoch with its best validation AUC")
    best_val_auc: float = Field(description="its validation AUC at that epoch")


class TrainSummary(Contract):
    """The train step's outcome (:mod:`medimg.steps.train`).

    An ensemble (``model.ensemble.members`` > 1) lists its ``members``; then ``checkpoint``, ``best_epoch`` and
    ``history`` are the first member's, and ``best_val_auc`` is the ensemble's (mean probabilities, with the
    test-time flips).
    """

    checkpoint: Path = Field(description="runs/<MLflow run id>/best.pt: the best epoch's state_dict (torch.save)")
    best_epoch: int = Field(description="1-based epoch with the best validation AUC")
    best_val_auc: float = Field(description="validation ROC AUC of that epoch")
    epochs_run: int = Field(description="epochs trained (fewer than train.epochs after early stopping or max_steps)")
    steps: int = Field(description="optimiser steps taken")
    train_seconds: float = Field(description="wall time of the training loop, s")
    images_per_second: float = Field(description="training images per second, all ranks together")
    history: tuple[dict[str, int | float], ...] = Field(
        description="one row per epoch: epoch, train_loss, val_loss, val_auc, lr"
    )
    n_train: int = Field(description="training images")
    n_val: int = Field(description="validation images")
    device: str = Field(description="torch device trained on (cpu, cuda, cuda:0, ...)")
    world_size: int = Field(description="training processes (1 unless DDP)")
    members: tuple[MemberSummary, ...] = Field(default=(), description="ensemble members; () otherwise")


# --------------------------------------------------------------------------- evaluate


class EvaluationSummary(Contract):
    """The evaluate step's outcome (:mod:`medimg.steps.evaluate`): the numbers of ``metrics.json`` and its files."""

    task_kind: str = Field(description="task.kind: binary, multiclass or segmentation")
    class_names: tuple[str, ...] = Field(description="task.class_names, index = label")
    abnormal_classes: tuple[str, ...] = Field(
        description="task.abnormal: the classes pooled into p_abnormal (segmentation: the structures)"
    )
    threshold: float | None = Field(
        description="decision threshold on p_abnormal (the abnormal classes' summed probability), from validation; "
        "None for segmentation (each voxel takes its arg-max label)"
    )
    threshold_rule: str = Field(
        description="gates.threshold: youden, target_sensitivity, max_accuracy or fixed; argmax for segmentation"
    )
    test: Metrics = Field(
        description="test-split metrics of the task (medimg.evaluation.task_metrics): binary at the threshold; "
        "multiclass arg-max, plus abnormal_* at the threshold"
    )
    test_ci95: dict[str, tuple[float | None, float | None]] = Field(
        description="bootstrap 95% CI (low, high) per metric name of the test split"
    )
    val: Metrics = Field(description="validation-split metrics at the threshold")
    confusion_matrix: tuple[tuple[int, ...], ...] = Field(
        description="test counts [K, K]: rows the true class, columns the decided class"
    )
    class_counts: dict[str, dict[str, int]] = Field(description="images per split and class, after drops")
    split_counts: dict[str, int] = Field(
        default_factory=dict, description="segmentation: cases per split (class_counts then count cases per structure)"
    )
    n_test: int = Field(description="test images")
    subgroups: dict[str, dict[str, Metrics]] = Field(
        description="test metrics per group column (modality, site, sex) and value, where a column varies"
    )
    bootstrap_samples: int = Field(description="bootstrap resamples behind test_ci95")
    metrics_file: Path = Field(description="runs/<run id>/metrics.json: these numbers as JSON")
    predictions: Path = Field(
        description="runs/<run id>/test_predictions.csv: id, label, probability (p_abnormal), p_<class> per test "
        "image; segmentation: id, label and the case's figures per structure (medimg.segmentation.metrics.case_table)"
    )


# --------------------------------------------------------------------------- gate


class GateRule(Contract):
    """One promotion rule's verdict (:class:`medimg.evaluation.gates.GateResult`)."""

    name: str = Field(description="the rule: benchmark_noninferiority, minimum_metrics, champion_noninferiority")
    passed: bool
    reason: str = Field(description="one sentence with the numbers")
    inputs: dict[str, Any] = Field(default_factory=dict, description="every number the rule used, JSON-native")


class GateDecision(Contract):
    """The gate step's decision (:mod:`medimg.steps.gate`); the full record is the JSON at ``report``."""

    passed: bool = Field(description="every rule passed: the candidate may become champion")
    failed: tuple[str, ...] = Field(description="names of the rules that failed")
    rules: tuple[GateRule, ...] = Field(description="every rule's verdict")
    champion_version: str | None = Field(description="the champion compared against; None on a first run")
    report: Path = Field(description="runs/<run id>/gate_report.json: rules, benchmark, threshold, test metrics")


# --------------------------------------------------------------------------- export


class ParityCheck(Contract):
    """ONNX Runtime against PyTorch on the same real test images (:class:`~medimg.export.onnx_export.ParityReport`)."""

    n_images: int
    max_abs_diff: float = Field(description="largest |logit difference|")
    labels_identical: bool = Field(description="argmax labels equal on every image")
    atol: float = Field(description="export.parity_atol")
    provider: str = Field(description="ONNX Runtime execution provider that ran the check")
    passed: bool
    voxel_agreement: float | None = Field(
        default=None,
        description="segmentation: the lowest share, over the cases, of voxels whose arg-max labels agree; None for "
        "classification",
    )


class ExportSummary(Contract):
    """The export step's outcome (:mod:`medimg.steps.export`)."""

    onnx: Path = Field(description="runs/<run id>/model.onnx: one self-contained file, metadata included")
    sha256: str = Field(description="hex SHA-256 of the file: the registry checks the stored copy against it")
    parity: ParityCheck
    size_bytes: int


# --------------------------------------------------------------------------- register


class Registration(Contract):
    """The register step's outcome (:mod:`medimg.steps.register`)."""

    model_name: str = Field(description="registered model name (registry.model_name)")
    version: str = Field(description="the registered version number, as MLflow spells it")
    alias: Literal["champion", "challenger"] = Field(description="the alias the version now holds")
    promoted: bool = Field(description="True when the version became champion")
    previous_champion: str | None = Field(description="the champion before this run; None when there was none")


# --------------------------------------------------------------------------- the flow


class RetrainSummary(Contract):
    """What a retrain that trained hands back (the flow's result): every step's contract."""

    mlflow_run_id: str
    run_key: str = Field(description="data version, params and code in one key (medimg.tracking.run_key)")
    data_version: str
    ingest: IngestSummary
    drift: DriftCheck
    validation: ValidationSummary
    training: TrainSummary
    evaluation: EvaluationSummary
    gate: GateDecision
    export: ExportSummary
    model: Registration
    step_seconds: dict[str, float] = Field(description="wall time per step name, s")


class RunSkipped(Contract):
    """What a retrain that trained nothing hands back (flow states ``UpToDate`` and ``NoDrift``)."""

    outcome: Literal["up_to_date", "no_drift"]
    reason: str
    data_version: str
    run_key: str
    matching_run_id: str | None = Field(default=None, description="up to date: the completed MLflow run it matches")
    drift: DriftCheck | None = Field(default=None, description="no drift: the check that found none")
