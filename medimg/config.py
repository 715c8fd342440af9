"""Typed configuration: ``params.yaml`` parsed once into frozen pydantic objects.

Every tunable of the platform lives in ``params.yaml``. Unknown keys and wrong values are
rejected when the file is loaded, with the dotted key path and what was expected, so a typo
fails the run before any work is done instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import Enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DATA_DIR_ENV = "MEDIMG_DATA_DIR"
PARAMS_ENV = "MEDIMG_PARAMS"


class ConfigError(ValueError):
    """A configuration file that cannot be used, with a message naming the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WartPolicy(str, Enum):
    """What to do with a known data wart (duplicate images, leakage across splits)."""

    FAIL = "fail"  # the validation fails and the run stops before training
    WARN = "warn"  # reported in the validation result; the run goes on
    DROP = "drop"  # the offending rows are removed (and listed) before validation


class DataConfig(_Strict):
    source: Literal["medmnist"] = "medmnist"
    medmnist_flag: Literal["pneumoniamnist"] = "pneumoniamnist"
    data_dir: str | None = Field(
        default=None, description=f"folder holding the archive; default: ${DATA_DIR_ENV}"
    )
    download: bool = Field(default=True, description="download with the medmnist package if absent")
    class_names: tuple[str, ...] = ("normal", "pneumonia")

    def resolved_data_dir(self) -> Path | None:
        raw = self.data_dir or os.environ.get(DATA_DIR_ENV)
        return Path(raw).expanduser().resolve() if raw else None


class ValidationConfig(_Strict):
    duplicates_within_split: WartPolicy = WartPolicy.WARN
    duplicates_across_splits: WartPolicy = WartPolicy.WARN
    expected_split_sizes: dict[str, int] | None = Field(
        default=None, description="exact image count per split; null skips the check"
    )
    min_pixel_std: float = Field(default=2.0, ge=0, description="below this an image is blank")
    min_class_fraction: float = Field(default=0.05, gt=0, lt=0.5)


class PreprocessConfig(_Strict):
    size: int = Field(default=28, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    mean: float = Field(default=0.5, description="normalisation after scaling to [0, 1]")
    std: float = Field(default=0.5, gt=0)


class ModelConfig(_Strict):
    architecture: Literal["compact_resnet", "simple_cnn"] = "compact_resnet"
    width: int = Field(default=32, ge=4, le=512)
    dropout: float = Field(default=0.2, ge=0, lt=1)


class TrainConfig(_Strict):
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: bool = True
    class_weighting: Literal["none", "balanced"] = Field(
        default="balanced", description="weight the loss by inverse class frequency"
    )
    seed: int = 42
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps")


class BenchmarkGateConfig(_Strict):
    id: str = Field(description="id of an entry in medimg/reference/radiologist_benchmarks.yaml")
    margin: float = Field(default=0.0, ge=0, le=1, description="non-inferiority margin")


class GateConfig(_Strict):
    benchmark: BenchmarkGateConfig = BenchmarkGateConfig(id="self2012_radiologists_ed", margin=0.10)
    threshold: Literal["youden", "target_sensitivity", "fixed"] = "target_sensitivity"
    target_sensitivity: float = Field(default=0.90, gt=0, le=1)
    fixed_threshold: float = Field(default=0.5, gt=0, lt=1)
    champion_auc_margin: float = Field(default=0.01, ge=0, le=1)
    bootstrap_samples: int = Field(default=1000, ge=100)
    min_auc: float = Field(default=0.95, ge=0, le=1)
    min_accuracy: float = Field(default=0.85, ge=0, le=1)


class ExportConfig(_Strict):
    opset: int = Field(default=18, ge=13)
    parity_atol: float = Field(default=1e-4, gt=0)
    parity_images: int = Field(default=256, ge=1)


class RegistryConfig(_Strict):
    model_name: str = Field(default="pneumonia-classifier", min_length=1)
    experiment: str = Field(default="medimg-retrain", min_length=1)


class WorkspaceConfig(_Strict):
    path: str = ".medimg"
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default: SQLite inside the workspace"
    )


class Params(_Strict):
    workspace: WorkspaceConfig = WorkspaceConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gates: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()
    registry: RegistryConfig = RegistryConfig()

    @model_validator(mode="after")
    def _classes_binary(self) -> Params:
        if len(self.data.class_names) != 2:
            raise ValueError("data.class_names: exactly two classes are supported (negative, positive)")
        return self

    def fingerprint(self) -> str:
        """A stable hash of every value, used to tag runs and models."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def flat(self) -> dict[str, str]:
        """Dotted key -> value, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
            else:
                out[prefix] = json.dumps(value) if not isinstance(value, str) else value

        walk("", self.model_dump(mode="json"))
        return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = item.get("input")
            lines.append(f"  {key}: {item['msg']} (got {got!r})")
    return "\n".join(lines)


def parse_params(raw: object, source: str = "params") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_params(path: str | Path | None = None, overrides: dict | None = None) -> Params:
    """Load ``params.yaml`` (or ``$MEDIMG_PARAMS``), apply nested ``overrides``, validate once."""
    path = Path(path or os.environ.get(PARAMS_ENV, "params.yaml"))
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if overrides:
        raw = deep_merge(raw if isinstance(raw, dict) else {}, overrides)
    return parse_params(raw, str(path))


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
