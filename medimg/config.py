"""Typed configuration: ``params.yaml`` parsed once into frozen pydantic objects.

Every tunable of the platform lives in ``params.yaml``. Unknown keys and wrong values are
rejected when the file is loaded, with the dotted key path and what was expected, so a typo
fails the run before any work is done instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from medimg.reference import benchmarks

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


#: The outcomes of the Kermany file-name rule (:func:`medimg.data.kermany.kermany_outcome`), in order.
KERMANY_OUTCOMES = ("normal", "bacteria", "virus")


class ImageFolderConfig(_Strict):
    """A folder of PNG/JPEG files (see :mod:`medimg.data.image_folder`) and where its labels come from.

    ``labels``: ``folders`` (the class folder, the Kaggle layout), ``csv`` (a labels CSV at
    ``labels_csv``, keyed by the file's path relative to the root or its file name; any folder
    tree) or ``kermany_filename`` (the Kermany rule: NORMAL folder -> normal, ``_bacteria_`` /
    ``_virus_`` in a PNEUMONIA file's name -> bacterial / viral, mapped onto task.class_names by
    ``kermany_classes``). ``ValueError`` naming the key for settings the rule cannot use.
    """

    labels: Literal["folders", "csv", "kermany_filename"] = Field(
        default="folders",
        description="folders: the class folder; csv: a labels CSV (labels_csv); kermany_filename: NORMAL folder, "
        "_bacteria_ / _virus_ in the file name",
    )
    class_folders: dict[str, str] | None = Field(
        default=None,
        description="labels folders: class folder name -> class name; null: folder names matched to class_names "
        "ignoring case",
    )
    patient_id: Literal["kermany", "file"] = Field(
        default="kermany", description="kermany: the patient id in Kermany file names; file: one patient per file"
    )
    labels_csv: str | None = Field(
        default=None, description="labels csv: the CSV with the labels; relative paths are under the source root"
    )
    key_column: str = Field(
        default="key", description="labels csv: the file's path relative to the root (posix), or its file name"
    )
    label_column: str = Field(default="label", description="labels csv: class name (any case) or class index")
    split_column: str | None = Field(
        default=None, description="labels csv: optional train/val/test column (else split folders, else data.split)"
    )
    kermany_classes: dict[str, str] = Field(
        default={"normal": "normal", "bacteria": "bacterial", "virus": "viral"},
        description="labels kermany_filename: rule outcome (normal, bacteria, virus) -> a task.class_names name",
    )

    @model_validator(mode="after")
    def _rule_settings(self) -> ImageFolderConfig:
        if set(self.kermany_classes) != set(KERMANY_OUTCOMES):
            raise ValueError(
                f"data.image_folder.kermany_classes must map exactly {list(KERMANY_OUTCOMES)} to class names, "
                f"got {sorted(self.kermany_classes)}"
            )
        if self.labels == "csv" and not self.labels_csv:
            raise ValueError(
                "data.image_folder.labels is csv but data.image_folder.labels_csv is not set: name the labels CSV "
                "(relative to data.root)"
            )
        if self.labels != "folders" and self.class_folders:
            raise ValueError(
                f"data.image_folder.class_folders applies to labels: folders only (data.image_folder.labels is "
                f"{self.labels}): set it to null"
            )
        return self


class DicomFolderConfig(_Strict):
    """A folder tree of DICOM files (``*.dcm``, ``*.dicom`` or no suffix) with labels from a CSV."""

    labels_csv: str | None = Field(
        default="labels.csv", description="CSV with the labels; relative paths are under the source root"
    )
    label_key: Literal["file", "sop_instance_uid", "folder"] = Field(
        default="file",
        description="what the CSV's key column holds: a file path (relative to the root), "
        "the SOPInstanceUID, or a folder (relative to the root; labels every file below it)",
    )
    key_column: str = "key"
    label_column: str = Field(default="label", description="class name (any case) or class index")
    split_column: str | None = Field(default=None, description="optional column with train/val/test")
    allow_burned_in: bool = Field(default=False, description="keep images flagged BurnedInAnnotation=YES")


class VolumeFolderConfig(_Strict):
    """Volumes from files (``data.volumes``): ``nifti_folder`` (NIfTI files) or ``dicom_series`` (DICOM series
    under folders), labelled by a CSV.

    The key column names, relative to the source root, a NIfTI file (``nifti_folder``) or the folder
    holding a series' files (``dicom_series``; every series found under it gets the row's label).
    """

    labels_csv: str = Field(default="labels.csv", description="CSV with the labels; relative paths are under the root")
    key_column: str = "key"
    label_column: str = Field(default="label", description="class name (any case) or class index")
    split_column: str | None = Field(default=None, description="optional column with train/val/test")
    min_slices: int = Field(default=8, ge=2, description="a series or volume with fewer slices is refused")
    gantry_tilt: Literal["correct", "refuse"] = Field(
        default="correct", description="correct: shear each slice onto one grid (as dcm2niix); refuse: gantry_tilt"
    )
    irregular_spacing: Literal["resample", "refuse"] = Field(
        default="resample", description="resample: equal steps along the normal (linear); refuse: irregular_spacing"
    )
    allow_burned_in: bool = Field(default=False, description="keep series flagged BurnedInAnnotation=YES")


class SegmentationSourceConfig(_Strict):
    """Image/mask pairs for segmentation (``data.source: nifti_pairs``, ``data.segmentation``): the Medical
    Segmentation Decathlon layout (``imagesTr/<case>.nii.gz`` with ``labelsTr/<case>.nii.gz``) or a CSV of pairs."""

    layout: Literal["msd", "csv"] = Field(default="msd", description="msd: imagesTr/ + labelsTr/; csv: pairs_csv")
    images_dir: str = Field(default="imagesTr", description="msd: the images' folder under data.root")
    masks_dir: str = Field(default="labelsTr", description="msd: the masks' folder under data.root (same names)")
    pairs_csv: str | None = Field(default=None, description="csv: the pairs CSV, relative to data.root")
    image_column: str = "image"
    mask_column: str = "mask"
    split_column: str | None = Field(default=None, description="optional train/val/test column of the pairs CSV")
    geometry_tolerance_mm: float = Field(
        default=1e-3, gt=0, description="largest difference of image and mask affines (mm) for a pair to match"
    )


class SplitConfig(_Strict):
    """Patient-level splitting where the source gives no (complete) split."""

    fractions: dict[str, float] = Field(
        default={"train": 0.8, "val": 0.1, "test": 0.1}, description="for sources with no split folders"
    )
    val_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="share of train patients moved to val when a split layout has no val"
    )
    seed: int = 42
    stratify: bool = Field(
        default=False,
        description="images without a split are split by class-stratified random assignment "
        "(medimg.data.splitting.stratified_split) instead of by patient; needs one patient per file",
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        unknown = set(self.fractions) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"data.split.fractions: unknown split(s) {sorted(unknown)}; use train/val/test")
        if any(v < 0 for v in self.fractions.values()) or abs(sum(self.fractions.values()) - 1) > 1e-6:
            raise ValueError("data.split.fractions must be >= 0 and sum to 1")
        return self


class DeidConfig(_Strict):
    """De-identification options (``data.deid``); the pseudonym key itself comes from MEDIMG_DEID_SECRET."""

    demo: bool = Field(
        default=False,
        description="allow the public demo pseudonym key when MEDIMG_DEID_SECRET is unset (public data only)",
    )


#: A DICOM Modality code (PS3.3 C.7.3.1.1.1 defined terms: CR, DX, CT, MR, ...).
ModalityCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2,4}$")]


MOVED_TO_TASK = frozenset({"class_names", "modalities", "body_part"})
"""Keys of ``data`` that moved to ``task``: a params file still using them gets an error saying where they went."""


class TaskConfig(_Strict):
    """What the model is for (``task``): the kind, the classes, which are abnormal, the modality and body part.

    Every stage reads it: the loss and the output layer (``len(class_names)`` logits), the metrics
    (binary: sensitivity and specificity of the abnormal class; multiclass: arg-max metrics per
    class, plus the "any abnormality vs normal" operating point), the gates, the ONNX metadata, the
    model card. ``ValueError`` (naming the key) for a combination that cannot work: a binary task
    without exactly two classes and one abnormal class, a multiclass task with fewer than three
    classes, an abnormal class that is not a class, or no normal class left.
    """

    kind: Literal["binary", "multiclass", "segmentation"] = "binary"
    class_names: tuple[str, ...] = Field(
        default=("normal", "pneumonia"),
        description="index = the label; binary: any order, the abnormal one named; segmentation: the mask's label "
        "values, 0 = background",
    )
    abnormal: tuple[str, ...] = Field(
        default=("pneumonia",),
        description="the abnormal classes: binary, the positive class; multiclass, the classes pooled for the "
        "'any abnormality vs normal' operating point",
    )
    modalities: tuple[ModalityCode, ...] | None = Field(
        default=None,
        description="DICOM Modality codes the model is for (ONNX medimg.modalities; predict refuses DICOM of "
        "another modality); null: those in the training manifest",
    )
    body_part: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9_ ]{1,16}$",
        description="DICOM Body Part Examined the model is for (ONNX medimg.body_part); null: not recorded",
    )
    description: str | None = Field(
        default=None, description="one line on what the model is for (the model card's intended use)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        names = self.class_names
        if len(set(names)) != len(names) or any(not re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names):
            raise ValueError(
                f"task.class_names must be distinct names of letters, digits, _ and - (they name metrics), "
                f"got {list(names)}"
            )
        unknown = [c for c in self.abnormal if c not in names]
        if unknown:
            raise ValueError(f"task.abnormal names {unknown}, which are not in task.class_names {list(names)}")
        if len(set(self.abnormal)) != len(self.abnormal) or not self.abnormal:
            raise ValueError("task.abnormal must name at least one class, each once")
        if len(self.abnormal) == len(names):
            raise ValueError("task.abnormal names every class: at least one class must be normal (not abnormal)")
        if self.kind == "binary" and (len(names) != 2 or len(self.abnormal) != 1):
            raise ValueError(
                f"task.kind binary needs exactly two task.class_names and one task.abnormal class, got "
                f"{list(names)} and {list(self.abnormal)} (use kind multiclass for more)"
            )
        if self.kind == "multiclass" and len(names) < 3:
            raise ValueError(f"task.kind multiclass needs at least three task.class_names, got {list(names)}")
        if self.kind == "segmentation" and tuple(self.abnormal) != tuple(names[1:]):
            raise ValueError(
                f"task.kind segmentation: task.class_names are the mask's labels (index 0 = background) and "
                f"task.abnormal must list the structures, class_names[1:] = {list(names[1:])}; "
                f"got {list(self.abnormal)}"
            )
        if self.modalities == ():
            raise ValueError(
                "task.modalities is empty: list the modalities the model is for, or null for the training data's"
            )
        return self

    @property
    def abnormal_indices(self) -> tuple[int, ...]:
        """Label indices of the abnormal classes, ascending."""
        return tuple(sorted(self.class_names.index(c) for c in self.abnormal))

    @property
    def positive_index(self) -> int:
        """Binary tasks: the label index of the abnormal (positive) class. ``ValueError`` for multiclass."""
        if self.kind != "binary":
            raise ValueError("positive_index: a multiclass task has no single positive class")
        return self.abnormal_indices[0]

    @property
    def auc_metric(self) -> str:
        """The name of the task's headline metric: ``roc_auc`` (binary), ``macro_roc_auc`` (multiclass) or
        ``mean_dice`` (segmentation, the mean over the structures)."""
        return {"binary": "roc_auc", "multiclass": "macro_roc_auc"}.get(self.kind, "mean_dice")

    @property
    def structures(self) -> tuple[str, ...]:
        """Segmentation: the labelled structures (``class_names[1:]``, label values 1..K-1)."""
        return tuple(self.class_names[1:])


class DaskIngestConfig(_Strict):
    """Ingest decoding on a Dask cluster (``data.dask``; :mod:`medimg.data.decode_dask`).

    ``address`` null decodes in the local pool of ``data.workers`` processes (always). With a scheduler's
    address, a folder of at least ``min_files`` files is decoded on that cluster in chunks of ``chunk_files``
    (one Dask task each); a smaller one still in the local pool. The workers write the decoded images to the
    workspace's decode cache, so they need it at the same path: the same host or a shared file system.
    """

    address: str | None = Field(
        default=None,
        pattern=r"^[a-z]+://\S+$",
        description="a Dask scheduler (tcp://host:8786); null: the local pool of data.workers processes",
    )
    min_files: int = Field(
        default=2000, ge=1, description="folders with fewer files (to hash or decode) stay in the local pool"
    )
    chunk_files: int = Field(default=200, ge=1, description="files per Dask task")


class DataConfig(_Strict):
    """Where the images come from (``data``): source kind, folders, classes, splits, decoding limits."""

    source: Literal["medmnist", "image_folder", "dicom_folder", "nifti_folder", "dicom_series", "nifti_pairs"] = (
        "medmnist"
    )
    medmnist_flag: str = Field(
        default="pneumoniamnist",
        pattern=r"^[a-z0-9]+$",
        description="a MedMNIST flag (medmnist INFO; 3D flags with preprocess.dims 3); checked against "
        "task.class_names at start "
        "(medimg.data.medmnist.check_flag)",
    )
    medmnist_size: Literal[28, 64, 128, 224] = Field(
        default=28, description="MedMNIST archive size: 28 (<flag>.npz) or MedMNIST+ 64/128/224 (<flag>_<size>.npz)"
    )
    data_dir: str | None = Field(default=None, description=f"folder holding the archive; default: ${DATA_DIR_ENV}")
    download: bool = Field(default=True, description="download with the medmnist package if absent")
    root: str | None = Field(
        default=None, description="image_folder/dicom_folder source folder; relative paths are under data_dir"
    )
    inbox: str | None = Field(
        default=None, description="folder of new files ingested incrementally with the source; relative: under data_dir"
    )
    modality: str = Field(
        default="DX",
        pattern=r"^[A-Z0-9]{2,4}$",
        description="declared modality of files that cannot say (PNG, JPEG, NPZ)",
    )
    image_folder: ImageFolderConfig = ImageFolderConfig()
    dicom: DicomFolderConfig = DicomFolderConfig()
    volumes: VolumeFolderConfig = VolumeFolderConfig()
    segmentation: SegmentationSourceConfig = SegmentationSourceConfig()
    split: SplitConfig = SplitConfig()
    deid: DeidConfig = DeidConfig()
    min_side: int = Field(default=16, ge=1, description="files with a smaller side are quarantined (too_small)")
    max_bad_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="the ingest fails when a larger share of the images is quarantined "
        "(skipped non-images do not count)",
    )
    workers: int | None = Field(default=2, ge=1, description="decoding processes; null: one per CPU")
    cache: bool = Field(default=True, description="reuse decoded images by sha256 of the file (incremental ingest)")
    dask: DaskIngestConfig = DaskIngestConfig()  # outside the run fingerprint: where decoding runs, not its result

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: object) -> object:
        if isinstance(raw, dict):
            moved = sorted(MOVED_TO_TASK & set(raw))
            if moved:
                raise ValueError("moved to the task section: " + ", ".join(f"data.{k} is now task.{k}" for k in moved))
        return raw

    @model_validator(mode="after")
    def _stratify_needs_file_patients(self) -> DataConfig:
        if not self.split.stratify or self.source == "medmnist":
            return self
        if self.source == "dicom_folder" or self.image_folder.patient_id != "file":
            where = "data.source dicom_folder" if self.source == "dicom_folder" else "data.image_folder.patient_id"
            raise ValueError(
                f"data.split.stratify splits images, not patients, so it needs data.source image_folder with "
                f"data.image_folder.patient_id: file (a source without patient ids); {where} has patient ids"
            )
        return self

    def resolved_data_dir(self) -> Path | None:
        """``data_dir``, else $MEDIMG_DATA_DIR, as an absolute path; None when neither is set."""
        raw = self.data_dir or os.environ.get(DATA_DIR_ENV)
        return Path(raw).expanduser().resolve() if raw else None

    def resolve_path(self, raw: str | None) -> Path | None:
        """``root``/``inbox`` as an absolute path: absolute as given, relative under data_dir (else the cwd)."""
        if raw is None:
            return None
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (self.resolved_data_dir() or Path.cwd()) / path
        return path.resolve()


class ValidationConfig(_Strict):
    """The data validation suite's thresholds and wart policies (``validation``)."""

    duplicates_within_split: WartPolicy = WartPolicy.WARN
    duplicates_across_splits: WartPolicy = WartPolicy.WARN
    expected_split_sizes: dict[str, int] | None = Field(
        default=None, description="exact image count per split; null skips the check"
    )
    min_pixel_std: float = Field(default=2.0, ge=0, description="below this an image is blank")
    min_class_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    patient_overlap: WartPolicy = Field(
        default=WartPolicy.WARN, description="a patient (pseudonym) with images in two splits: fail | warn | drop"
    )
    near_duplicates_across_splits: WartPolicy = Field(
        default=WartPolicy.WARN,
        description="an image and a near-duplicate of it (perceptual hash) in two splits: fail | warn | drop "
        "(drop removes the later split's image of each pair)",
    )
    near_duplicate_distance: int = Field(
        default=36,
        ge=0,
        le=256,
        description="largest Hamming distance between the 256-bit pHashes of two stored images that are "
        "near-duplicates (medimg.validation.near_duplicates; the default is measured in params.yaml)",
    )
    allowed_modalities: tuple[str, ...] = ("CR", "DX", "CT", "MR")
    bit_depth_range: tuple[int, int] = Field(default=(8, 16), description="bits stored of the source files")
    original_side_range: tuple[int, int] = Field(
        default=(16, 16384), description="rows and columns of the source files"
    )
    volume_near_duplicate_distance: int = Field(
        default=120,
        ge=0,
        le=768,
        description="volumes (preprocess.dims 3): largest Hamming distance between the 768-bit hashes (pHash of "
        "the three mean-intensity projections) of two stored volumes that are near-duplicates "
        "(medimg.validation.near_duplicates; the default is measured in params.yaml)",
    )
    volume_spacing_range_mm: tuple[float, float] = Field(
        default=(0.1, 10.0),
        description="volumes: the source's voxel spacing (spacing_z/y/x, mm) where known; unknown (NaN) passes",
    )

    empty_masks: Literal["warn", "fail"] = Field(
        default="warn",
        description="segmentation: a case whose mask labels no structure (label 0): warn (reported, the run goes "
        "on) | fail",
    )
    foreground_fraction_range: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="segmentation: share of the stored grid's voxels that a mask labels (any structure), for every "
        "mask that labels any (empty masks: validation.empty_masks)",
    )

    @model_validator(mode="after")
    def _spacing_range_ordered(self) -> ValidationConfig:
        lo, hi = self.volume_spacing_range_mm
        if not 0 <= lo <= hi:
            raise ValueError("validation.volume_spacing_range_mm: expected [low, high] mm with 0 <= low <= high")
        lo, hi = self.foreground_fraction_range
        if not 0 <= lo <= hi <= 1:
            raise ValueError("validation.foreground_fraction_range: expected [low, high] with 0 <= low <= high <= 1")
        return self


class VolumeContractConfig(_Strict):
    """The 3D half of the contract (``preprocess.volume``, used when ``preprocess.dims`` is 3; see
    :mod:`medimg.volume_contract`)."""

    orientation: Literal["RAS", "source"] = Field(
        default="RAS",
        description="RAS: array axes reoriented to (S, A, R) by flips/transposes (nibabel canonical); "
        "source: kept as read",
    )
    spacing: tuple[float, float, float] | None = Field(
        default=None, description="(z, y, x) mm to resample to before sizing; null: keep the source spacing"
    )
    interpolation: Literal["trilinear", "nearest", "area"] = Field(
        default="trilinear", description="resampling and resizing of the voxels (torch F.interpolate)"
    )
    shape: tuple[int, int, int] | None = Field(
        default=None,
        description="segmentation: the stored (z, y, x) voxels of every training case, centred zero-padding or "
        "cropping on the source grid (no resampling); multiples of pad_multiple",
    )
    pad_multiple: int = Field(
        default=16, ge=1, le=128, description="segmentation: a volume to predict is zero-padded to multiples of this"
    )

    @model_validator(mode="after")
    def _positive(self) -> VolumeContractConfig:
        if self.spacing is not None and min(self.spacing) <= 0:
            raise ValueError("preprocess.volume.spacing: every value must be > 0 mm")
        if self.shape is not None and any(n < 1 or n % self.pad_multiple for n in self.shape):
            raise ValueError(
                f"preprocess.volume.shape {list(self.shape)}: every value must be a positive multiple of "
                f"preprocess.volume.pad_multiple ({self.pad_multiple})"
            )
        return self


class PreprocessConfig(_Strict):
    """The preprocessing contract (see :mod:`medimg.preprocess`): applied once at ingest, recorded in ONNX."""

    dims: Literal[2, 3] = Field(
        default=2, description="2: images (size x size); 3: volumes (size^3, preprocess.volume, medimg.volume_contract)"
    )
    size: int = Field(default=28, ge=8, le=1024)
    resize: Literal["stretch", "pad", "crop"] = Field(
        default="stretch", description="stretch (aspect not kept) | pad to square (black) | centre crop to square"
    )
    interpolation: Literal["bilinear", "bicubic", "area"] = "bilinear"
    antialias: bool = Field(default=False, description="antialiased bilinear/bicubic (area always is)")
    intensity: Literal["auto", "minmax", "percentile"] = Field(
        default="auto",
        description="grey uint8 mapping: auto (medimg.preprocess rules) | per-image min-max | percentiles",
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] | None = Field(
        default=None, description="(level, width) HU for CT; null: the file's VOI, else 40/400"
    )
    denoise: Literal["none", "median3"] = "none"
    clahe: bool = False
    clahe_clip_limit: float = Field(default=0.01, gt=0, le=1)
    jpeg_dct_scaling: bool = Field(
        default=False, description="decode large JPEGs at 1/2, 1/4 or 1/8 scale (>= 2x size) before resizing"
    )
    jpeg2000_reduce: bool = Field(
        default=False,
        description="decode JPEG 2000 DICOM at its coarsest wavelet resolution level keeping >= 2x size "
        "before resizing",
    )
    channels: Literal[1, 3] = 1
    mean: float = Field(default=0.5, description="normalisation after scaling to [0, 1]")
    std: float = Field(default=0.5, gt=0)
    volume: VolumeContractConfig = VolumeContractConfig()

    @model_validator(mode="after")
    def _ranges(self) -> PreprocessConfig:
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("preprocess.percentiles must satisfy 0 <= low < high <= 100")
        if self.ct_window is not None and not self.ct_window[1] > 0:
            raise ValueError("preprocess.ct_window: width must be > 0")
        if self.dims == 3:
            two_d = [
                key
                for key, value in (
                    ("denoise", self.denoise != "none"),
                    ("clahe", self.clahe),
                    ("jpeg_dct_scaling", self.jpeg_dct_scaling),
                    ("jpeg2000_reduce", self.jpeg2000_reduce),
                    ("antialias", self.antialias),
                    ("interpolation", self.interpolation != "bilinear"),
                )
                if value
            ]
            if two_d:
                raise ValueError(
                    f"preprocess.{two_d[0]} is a 2D setting; with preprocess.dims 3 leave {', '.join(two_d)} at the "
                    "default and use preprocess.volume (interpolation, spacing, orientation)"
                )
            if self.size > 256:
                raise ValueError("preprocess.size: at most 256 with preprocess.dims 3 (size^3 voxels per volume)")
        return self


# --------------------------------------------------------------------------- ensembles

#: Test-time flips of ``model.ensemble.tta_flips``: the input axis each one reverses (images ``[N, C, H, W]``,
#: volumes ``[N, C, D, H, W]``).
FLIP_AXES = {"horizontal": -1, "vertical": -2, "depth": -3}


class EnsembleConfig(_Strict):
    """An ensemble and test-time augmentation exported as one ONNX graph (``model.ensemble``,
    :mod:`medimg.tuning.ensemble`).

    ``members`` networks of ``model`` are trained with seeds ``train.seed``, ``train.seed + 1``, ...; the graph
    averages their softmax probabilities over the identity view and one view per flip in ``tta_flips``, and gives
    ``log(mean probability)`` as its logits, so ``softmax`` of the output is the mean probability. One member and
    no flips (the default) is a plain model. ``ValueError`` for a flip named twice.
    """

    members: int = Field(default=1, ge=1, le=32, description="networks trained with seeds train.seed + 0, 1, ...")
    tta_flips: tuple[Literal["horizontal", "vertical", "depth"], ...] = Field(
        default=(),
        description="test-time views besides the image itself: horizontal (last axis), vertical, depth (volumes)",
    )

    @model_validator(mode="after")
    def _distinct(self) -> EnsembleConfig:
        if len(set(self.tta_flips)) != len(self.tta_flips):
            raise ValueError(f"model.ensemble.tta_flips names a flip twice: {list(self.tta_flips)}")
        return self

    @property
    def enabled(self) -> bool:
        """True when the exported graph is more than one network on one view."""
        return self.members > 1 or bool(self.tta_flips)


class ModelConfig(_Strict):
    """Network architecture, width, dropout and fine-tuning mode (``model``)."""

    architecture: Literal[
        "compact_resnet", "simple_cnn", "resnet18", "resnet50", "densenet121", "resnet3d", "simple_cnn3d", "unet3d"
    ] = "compact_resnet"
    width: int = Field(default=48, ge=4, le=512, description="base width of the compact models")
    dropout: float = Field(default=0.2, ge=0, lt=1)
    pretrained_weights: str | None = Field(
        default=None, description="local file with torchvision weights for resnet*/densenet121 (never downloaded)"
    )
    finetune: Literal["full", "head", "staged"] = Field(
        default="full", description="train everything, only the new head, or the head first then everything"
    )
    staged_head_epochs: int = Field(default=1, ge=0, description="epochs of head-only training when staged")
    ensemble: EnsembleConfig = Field(
        default=EnsembleConfig(), description="members and test-time flips exported as one graph"
    )


class AugmentConfig(_Strict):
    """Training-time augmentation (``train.augment``); ``ValueError`` when scale_min > scale_max."""

    enabled: bool = True
    rotate_deg: float = Field(default=10.0, ge=0, le=180)
    translate: float = Field(default=0.08, ge=0, le=0.5, description="fraction of the image size")
    scale_min: float = Field(default=0.9, gt=0)
    scale_max: float = Field(default=1.1, gt=0)
    hflip: bool = True
    brightness: float = Field(default=0.0, ge=0, le=1, description="max additive change, in normalised units")
    contrast: float = Field(default=0.0, ge=0, le=1, description="max relative change of contrast")

    @model_validator(mode="after")
    def _scale_order(self) -> AugmentConfig:
        if self.scale_min > self.scale_max:
            raise ValueError("train.augment.scale_min must not exceed scale_max")
        return self


class DistributedConfig(_Strict):
    """DistributedDataParallel training under torchrun (``train.distributed``)."""

    enabled: bool = Field(default=False, description="train with DistributedDataParallel under torchrun")
    nproc_per_node: int = Field(default=2, ge=1)
    backend: Literal["auto", "gloo", "nccl"] = Field(default="auto", description="auto: nccl on CUDA, else gloo")


class TrainConfig(_Strict):
    """Optimiser, schedule, epochs, batch size and early stopping (``train``)."""

    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=128, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=3e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(default=0.2, ge=0, lt=1, description="one-cycle warm-up share")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    class_weighting: Literal["none", "balanced"] = Field(
        default="balanced", description="weight the loss by inverse class frequency"
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="stop after this many epochs without a better validation AUC"
    )
    seed: int = 42
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when present")
    amp: bool = Field(default=True, description="mixed precision on CUDA (ignored on the CPU)")
    channels_last: bool = Field(default=True, description="channels_last memory format on CUDA")
    distributed: DistributedConfig = DistributedConfig()


class BenchmarkGateConfig(_Strict):
    """The radiologist benchmark the candidate must not be inferior to, and the margin (``gates.benchmark``)."""

    id: str = Field(description="id of an entry in medimg/reference/benchmarks.yaml")
    margin: float = Field(default=0.0, ge=0, le=1, description="non-inferiority margin")


class GateConfig(_Strict):
    """Threshold choice and promotion rules (``gates``): benchmark, minimum AUC/accuracy, champion margin; for
    segmentation (:mod:`medimg.segmentation.gates`) the Dice floors, and the champion margin on mean Dice."""

    benchmark: BenchmarkGateConfig = BenchmarkGateConfig(id="self2012_radiologists_ed", margin=0.10)
    threshold: Literal["youden", "target_sensitivity", "max_accuracy", "fixed"] = "target_sensitivity"
    target_sensitivity: float = Field(default=0.90, gt=0, le=1)
    fixed_threshold: float = Field(default=0.5, gt=0, lt=1)
    champion_auc_margin: float = Field(
        default=0.01, ge=0, le=1, description="non-inferiority margin to the champion: AUC; segmentation: mean Dice"
    )
    bootstrap_samples: int = Field(default=1000, ge=100)
    min_auc: float = Field(default=0.95, ge=0, le=1)
    min_accuracy: float = Field(default=0.85, ge=0, le=1)
    min_class_sensitivity: dict[str, float] | None = Field(
        default=None,
        description="class name -> the least sensitivity (recall) of that class on the test split (arg-max "
        "decision for multiclass, the threshold for binary); null: no per-class rule",
    )
    min_dice: dict[str, Annotated[float, Field(ge=0, le=1)]] | Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None,
        description="segmentation: the least test Dice of each structure (mean over cases): one number for every "
        "structure, or structure name -> floor; null: no Dice floor (task.kind segmentation only)",
    )


class ExportConfig(_Strict):
    """ONNX export (``export``): opset, and the PyTorch/ONNX Runtime parity tolerance on how many images."""

    opset: int = Field(default=18, ge=13)
    parity_atol: float = Field(default=1e-4, gt=0)
    parity_images: int = Field(default=256, ge=1)


class RegistryConfig(_Strict):
    """MLflow registered model name and experiment (``registry``)."""

    model_name: str = Field(default="pneumonia-classifier", min_length=1)
    experiment: str = Field(default="medimg-retrain", min_length=1)


class WorkspaceConfig(_Strict):
    """Workspace folder and MLflow tracking URI (``workspace``)."""

    path: str = ".medimg"
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default: SQLite inside the workspace"
    )


class DriftConfig(_Strict):
    """Compare each new data version with the champion's training data before retraining."""

    enabled: bool = True
    psi_threshold: float = Field(
        default=0.2, gt=0, description="population stability index above which drift is flagged"
    )
    pvalue_threshold: float = Field(
        default=0.01, gt=0, lt=1, description="two-sample KS test p-value below which drift is flagged"
    )
    sample_size: int = Field(default=1000, ge=50, description="images per side scored by the champion")
    retrain_on: Literal["any_change", "drift"] = Field(
        default="any_change", description="any_change: every new data version retrains; drift: only a drifted one does"
    )


class ScheduleConfig(_Strict):
    """Cron schedule, deployment and inbox polling of the served flows (``schedule``)."""

    cron: str = Field(default="0 2 * * 1", min_length=9, description="cron expression of the scheduled retrain")
    timezone: str = "UTC"
    deployment_name: str = Field(default="retrain-scheduled", min_length=1)
    work_pool: str | None = Field(default=None, description="null: flow.serve in this process; else a work pool name")
    collision_strategy: Literal["cancel_new", "enqueue"] = Field(
        default="cancel_new", description="what a run that would overlap a running one does"
    )
    inbox_poll_seconds: int = Field(default=60, ge=1, description="how often the inbox watcher looks for new files")


class OrchestrationConfig(_Strict):
    """Prefect retries, timeouts, skip-if-up-to-date and notifications (``orchestration``)."""

    task_retries: int = Field(default=2, ge=0, description="retries of steps that talk to servers or storage")
    retry_delay_seconds: list[float] = Field(default=[5.0, 30.0], min_length=1, description="backoff between retries")
    train_timeout_seconds: float | None = Field(default=None, gt=0, description="fail training that runs longer")
    io_timeout_seconds: float = Field(default=900.0, gt=0, description="timeout of ingest, export and register")
    skip_if_up_to_date: bool = Field(
        default=True, description="a run whose data, params and code match the last completed run trains nothing"
    )
    notify_webhook_url: str | None = Field(
        default=None, description="POSTed a JSON message when a run fails or is gated"
    )
    notify_block: str | None = Field(
        default=None, description="name of a saved Prefect notification block to use instead"
    )


class ServeConfig(_Strict):
    """``medimg serve``: the inference service and its DICOM node (``serve``).

    The PACS is Orthanc's HTTP base URL; its credentials come from the environment
    (``MEDIMG_ORTHANC_USERNAME``, ``MEDIMG_ORTHANC_PASSWORD``), never from a params file.
    """

    host: str = Field(default="127.0.0.1", min_length=1, description="address the HTTP service binds")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")
    alias: str = Field(default="champion", min_length=1, description="registry alias the service follows")
    poll_seconds: float = Field(default=5.0, gt=0, description="how often the alias is checked for a new version")
    pacs_url: str | None = Field(
        default=None, description="Orthanc HTTP base; null: MEDIMG_ORTHANC_URL; neither: no DICOM node"
    )
    pacs_poll_seconds: float = Field(default=0.5, gt=0, description="how often Orthanc's change feed is read")
    pacs_timeout_seconds: float = Field(default=10.0, gt=0, description="timeout of one request to the PACS")
    pacs_max_backoff_seconds: float = Field(
        default=30.0, gt=0, description="longest wait between retries while the PACS does not answer"
    )
    max_body_mb: float = Field(default=64.0, gt=0, description="largest request body accepted")


class ReviewConfig(_Strict):
    """The review pages of ``medimg serve`` under ``/review`` (``review``): sessions and the login limit."""

    session_minutes: float = Field(default=480.0, gt=0, description="a session ends this long after the login")
    idle_minutes: float = Field(default=60.0, gt=0, description="a session unused this long ends")
    secure_cookie: bool = Field(
        default=False, description="mark the session cookie Secure: true behind the TLS reverse proxy"
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="failed logins per user name, and per client address, before 429"
    )
    login_window_seconds: float = Field(default=300.0, gt=0, description="the window failed logins are counted in")
    worklist_limit: int = Field(default=200, ge=1, description="most cases one worklist page lists (newest first)")


class MonitorConfig(_Strict):
    """Live monitoring of the prediction log (``monitor``; ``medimg monitor``, flows/monitor.py)."""

    window_size: int = Field(default=200, ge=10, description="prediction log entries per window (oldest first)")
    min_window_size: int = Field(
        default=50, ge=10, description="a window with fewer answered predictions is shown but not judged"
    )
    max_windows: int = Field(default=30, ge=1, description="the latest windows kept in a report")
    psi_threshold: float = Field(default=0.2, gt=0, description="PSI above which score or input drift is flagged")
    pvalue_threshold: float = Field(
        default=0.01, gt=0, lt=1, description="two-sample KS p-value below which drift is flagged"
    )
    max_refusal_rate: float = Field(
        default=0.2, ge=0, le=1, description="a window refusing a larger share of its inputs raises an event"
    )
    min_sensitivity: float | None = Field(
        default=None, ge=0, le=1, description="event when the upper 95% bound of realised sensitivity is below"
    )
    min_specificity: float | None = Field(
        default=None, ge=0, le=1, description="event when the upper 95% bound of realised specificity is below"
    )
    min_reviews: int = Field(default=10, ge=1, description="reviewed cases of a class needed before judging")
    cron: str = Field(default="0 * * * *", min_length=9, description="cron expression of the scheduled monitor")
    deployment_name: str = Field(default="monitor-scheduled", min_length=1)

    @model_validator(mode="after")
    def _sizes_agree(self) -> MonitorConfig:
        if self.min_window_size > self.window_size:
            raise ValueError(
                f"monitor.min_window_size ({self.min_window_size}) is larger than monitor.window_size "
                f"({self.window_size})"
            )
        return self


# --------------------------------------------------------------------------- tune

#: The params sections a study may tune: the data version (and so the contract) is fixed for a study.
TUNABLE_SECTIONS = ("model", "train")


class SearchDimension(_Strict):
    """One entry of a search space (``tune.space.<task kind>``): a dotted params key and how Optuna suggests it.

    ``float`` and ``int``: ``low`` and ``high`` (inclusive), ``log`` for a log-uniform draw (``low > 0``),
    ``step`` for a grid; ``categorical``: ``choices``. ``ValueError`` for a kind given the other kind's fields,
    ``low > high``, a log range not above 0, or an ``int`` bound that is not a whole number.
    """

    key: str = Field(pattern=r"^[a-z_]+(\.[a-z0-9_]+)+$", description="dotted params key, e.g. train.lr")
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0, description="float/int: suggest multiples of it from low")
    choices: tuple[bool | int | float | str, ...] | None = Field(default=None, description="categorical: the values")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> SearchDimension:
        where = f"tune.space entry {self.key}"
        if self.kind == "categorical":
            if not self.choices or len(self.choices) < 2:
                raise ValueError(f"{where}: categorical needs at least two choices")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError(f"{where}: categorical takes choices, not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"{where}: {self.kind} takes low and high, not choices")
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{where}: {self.kind} needs low <= high, got low {self.low} high {self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError(f"{where}: log needs low > 0 and no step")
        if self.kind == "int" and any(v is not None and float(v) != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError(f"{where}: int needs whole-number low, high and step")
        return self

    def values_to_check(self) -> tuple[bool | int | float | str, ...]:
        """The values the params key must accept: the bounds, or every choice."""
        if self.kind == "categorical":
            return tuple(self.choices or ())
        cast = int if self.kind == "int" else float
        return tuple(cast(v) for v in (self.low, self.high) if v is not None)


_CLASSIFIER_SPACE = (
    SearchDimension(key="train.lr", kind="float", low=3e-4, high=1e-2, log=True),
    SearchDimension(key="train.weight_decay", kind="float", low=1e-6, high=1e-2, log=True),
    SearchDimension(key="model.dropout", kind="float", low=0.0, high=0.5),
)
_SEGMENTATION_SPACE = (
    SearchDimension(key="train.lr", kind="float", low=3e-4, high=1e-2, log=True),
    SearchDimension(key="train.weight_decay", kind="float", low=1e-6, high=1e-2, log=True),
)


class SearchSpaceConfig(_Strict):
    """The search space of each task kind (``tune.space``); a study uses the one of ``task.kind``."""

    binary: tuple[SearchDimension, ...] = _CLASSIFIER_SPACE
    multiclass: tuple[SearchDimension, ...] = _CLASSIFIER_SPACE
    segmentation: tuple[SearchDimension, ...] = _SEGMENTATION_SPACE

    def for_task(self, kind: str) -> tuple[SearchDimension, ...]:
        """The entries for ``task.kind`` ``kind``."""
        return tuple(getattr(self, kind))


class PrunerConfig(_Strict):
    """Stopping unpromising trials early on the per-epoch validation metric (``tune.pruner``)."""

    kind: Literal["median", "none"] = Field(
        default="median", description="median: stop a trial whose metric is worse than the median of earlier ones"
    )
    startup_trials: int = Field(default=3, ge=0, description="trials that finish before any is pruned")
    warmup_epochs: int = Field(default=2, ge=0, description="epochs of each trial before it may be pruned")


class TuneConfig(_Strict):
    """``medimg tune``: an Optuna study over ``space`` (:mod:`medimg.tuning`, :mod:`flows.tune`) (``tune``).

    ``metric``: ``val_auc`` is the task's validation metric that picks the best epoch (binary ROC AUC,
    multiclass macro ROC AUC, segmentation mean Dice); ``val_loss`` the validation log-loss. A trial's value is the
    metric at its best epoch. ``direction`` null follows the metric; one that contradicts it is refused.
    """

    trials: int = Field(default=20, ge=1, description="trials per `medimg tune` (a study continues across calls)")
    metric: Literal["val_auc", "val_loss"] = Field(
        default="val_auc", description="val_auc: AUC / macro AUC / mean Dice by task; val_loss: log-loss"
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="null: maximize val_auc, minimize val_loss"
    )
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(default=42, description="the sampler's seed")
    pruner: PrunerConfig = PrunerConfig()
    storage: str | None = Field(
        default=None, description="null: sqlite <workspace>/tuning/optuna.db; or an SQLAlchemy URL (postgresql://...)"
    )
    study_name: str | None = Field(
        default=None, description="null: from the experiment, data version, params and space (continued when equal)"
    )
    workers: int | None = Field(
        default=2, ge=1, description="without --dask: processes of the local Dask cluster; null: one per CPU"
    )
    parallel: int | None = Field(default=None, ge=1, description="trials at once; null: the cluster's worker threads")
    space: SearchSpaceConfig = SearchSpaceConfig()

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> TuneConfig:
        if self.direction is not None and self.direction != self.objective_direction:
            raise ValueError(
                f"tune.direction {self.direction} contradicts tune.metric {self.metric} "
                f"(which is to {self.objective_direction}): set it to null"
            )
        return self

    @property
    def objective_direction(self) -> Literal["maximize", "minimize"]:
        """maximize for ``val_auc``, minimize for ``val_loss``."""
        return "maximize" if self.metric == "val_auc" else "minimize"


def _params_field(key: str):
    """The pydantic field of a dotted ``Params`` key (``train.lr``); ``ValueError`` naming the key when a part is
    unknown, the key names a section, or the section cannot be tuned (:data:`TUNABLE_SECTIONS`)."""
    parts = key.split(".")
    if parts[0] not in TUNABLE_SECTIONS:
        raise ValueError(f"{key}: only keys of {', '.join(TUNABLE_SECTIONS)} can be tuned (the data is fixed)")
    model: type[BaseModel] = Params
    field = None
    for depth, part in enumerate(parts):
        if field is not None:
            inner = field.annotation
            if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
                raise ValueError(f"{key}: unknown key ({'.'.join(parts[:depth])} is not a section)")
            model = inner
        field = model.model_fields.get(part)
        if field is None:
            raise ValueError(f"{key}: unknown key (no {part!r} in {'.'.join(parts[:depth]) or 'params'})")
    assert field is not None
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        raise ValueError(f"{key}: a section, not a value")
    return field


def _tune_space_agrees(tune: TuneConfig) -> None:
    """``ValueError`` naming the entry when a search-space key is unknown, not tunable, named twice, or refuses a
    bound or choice (checked against the key's own type and limits)."""
    for kind in ("binary", "multiclass", "segmentation"):
        seen: set[str] = set()
        for index, entry in enumerate(tune.space.for_task(kind)):
            where = f"tune.space.{kind}[{index}].key"
            if entry.key in seen:
                raise ValueError(f"{where}: {entry.key} is named twice")
            seen.add(entry.key)
            try:
                field = _params_field(entry.key)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            annotation: Any = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            adapter: TypeAdapter = TypeAdapter(annotation)
            for value in entry.values_to_check():
                try:
                    adapter.validate_python(value)
                except ValidationError as err:
                    reason = err.errors()[0]["msg"]
                    raise ValueError(f"{where}: {entry.key} does not accept {value!r} ({reason})") from None


class Params(_Strict):
    """Every setting of a run (``params.yaml``), validated and frozen; :meth:`fingerprint` keys runs on it."""

    workspace: WorkspaceConfig = WorkspaceConfig()
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gates: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()
    registry: RegistryConfig = RegistryConfig()
    drift: DriftConfig = DriftConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    serve: ServeConfig = ServeConfig()
    review: ReviewConfig = ReviewConfig()
    monitor: MonitorConfig = MonitorConfig()
    tune: TuneConfig = TuneConfig()  # outside the run fingerprint

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        known = benchmarks()
        if self.gates.benchmark.id not in known:
            raise ValueError(
                f"gates.benchmark.id: unknown benchmark {self.gates.benchmark.id!r}; known: {', '.join(sorted(known))} "
                "(medimg/reference/benchmarks.yaml)"
            )
        floors = self.gates.min_class_sensitivity or {}
        unknown = sorted(set(floors) - set(self.task.class_names))
        if unknown:
            raise ValueError(
                f"gates.min_class_sensitivity names {unknown}, which are not in task.class_names "
                f"{list(self.task.class_names)}"
            )
        bad = {k: v for k, v in floors.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"gates.min_class_sensitivity values must lie in [0, 1], got {bad}")
        _segmentation_gates_agree(self.task, self.gates, known[self.gates.benchmark.id])
        _image_folder_labels_agree(self.data, self.task)
        _dimensions_agree(self.data, self.preprocess, self.model)
        _segmentation_agrees(self.task, self.data, self.preprocess, self.model)
        _tune_space_agrees(self.tune)
        _ensemble_agrees(self.task, self.preprocess, self.model, self.train)
        modalities = self.task.modalities
        if modalities is not None and self.data.modality not in modalities:
            raise ValueError(
                f"task.modalities {list(modalities)} must include data.modality {self.data.modality!r}, "
                "the modality declared for the files that cannot say theirs"
            )
        return self

    def fingerprint(self) -> str:
        """A stable hash of every value that shapes a retrain's result, used to tag runs and models.

        It is the params part of the run key, so it holds what makes the data, the model, its gate
        verdict and its registration, and leaves out the sections that only say where, when and
        whether to run: ``workspace`` (a moved or cloned workspace keeps its run keys),
        ``schedule`` and ``orchestration`` (cron, retries, timeouts, notifications), ``serve``, ``review``
        and ``monitor`` (how the registered model is served, reviewed and watched), ``tune`` (how a study
        searches; its best trial's values reach the fingerprint as ``model``/``train`` values), ``data.dask``
        (where the ingest decodes: the same images either way), and ``drift``.
        ``model.ensemble`` is left out while it is the default (one network, no flips), so a plain model keeps
        the hash it had before ensembles existed.
        Drift settings decide whether a new data version is trained at all, never what a training
        makes of it; and a run that trained nothing (no drift) is never taken as up to date, so
        changing them still lets the next run train.
        """
        left_out: dict[str, Any] = {
            section: True
            for section in ("workspace", "schedule", "orchestration", "drift", "serve", "review", "monitor", "tune")
        }
        shaping = self.model_dump(mode="json", exclude={**left_out, "data": {"dask": True}})
        if not self.model.ensemble.enabled:  # a plain model's hash is unchanged
            del shaping["model"]["ensemble"]
        blob = json.dumps(shaping, sort_keys=True).encode()
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


#: Source kinds and architectures per ``preprocess.dims``.
VOLUME_SOURCES = ("nifti_folder", "dicom_series", "nifti_pairs")
IMAGE_SOURCES = ("image_folder", "dicom_folder")
VOLUME_ARCHITECTURES = ("resnet3d", "simple_cnn3d", "unet3d")
SEGMENTATION_ARCHITECTURES = ("unet3d",)


def _segmentation_agrees(task: TaskConfig, data: DataConfig, contract: PreprocessConfig, model: ModelConfig) -> None:
    """``ValueError`` naming the keys when a segmentation task lacks its source, contract or network, or another
    task kind names them."""
    segmenting = task.kind == "segmentation"
    if segmenting != (data.source == "nifti_pairs"):
        raise ValueError(
            "task.kind segmentation needs data.source nifti_pairs (image/mask pairs)"
            if segmenting
            else f"data.source nifti_pairs gives image/mask pairs: set task.kind segmentation (not {task.kind})"
        )
    if segmenting != (model.architecture in SEGMENTATION_ARCHITECTURES):
        raise ValueError(
            f"model.architecture {model.architecture!r} does not fit task.kind {task.kind}: "
            + ("use unet3d" if segmenting else "unet3d is for segmentation")
        )
    if segmenting:
        if contract.dims != 3 or contract.volume.shape is None:
            raise ValueError("task.kind segmentation needs preprocess.dims 3 and preprocess.volume.shape (z, y, x)")
        if contract.volume.spacing is not None:
            raise ValueError(
                "preprocess.volume.spacing must be null for segmentation: masks stay on the source voxel grid"
            )


def _ensemble_agrees(task: TaskConfig, contract: PreprocessConfig, model: ModelConfig, train: TrainConfig) -> None:
    """``ValueError`` naming the keys when ``model.ensemble`` cannot be built: it is for classifiers
    trained in one process, and a ``depth`` flip needs volumes."""
    ensemble = model.ensemble
    if not ensemble.enabled:
        return
    if task.kind == "segmentation":
        raise ValueError("model.ensemble is for classification (task.kind binary or multiclass), not segmentation")
    if train.distributed.enabled and ensemble.members > 1:
        raise ValueError("model.ensemble.members > 1 trains the members one after another: set train.distributed off")
    if "depth" in ensemble.tta_flips and contract.dims != 3:
        raise ValueError("model.ensemble.tta_flips: depth is for volumes (preprocess.dims 3)")


def _segmentation_gates_agree(task: TaskConfig, gates: GateConfig, bench: dict) -> None:
    """``ValueError`` naming the keys when ``gates.min_dice`` or the benchmark's operating point does not fit the
    task: Dice floors and the ``segmentation`` operating point are for segmentation, which has no other."""
    segmenting = task.kind == "segmentation"
    if segmenting != (bench.get("operating_point") == "segmentation"):
        raise ValueError(
            f"gates.benchmark.id {bench['id']!r} states figures at operating point {bench.get('operating_point')!r}, "
            f"which does not fit task.kind {task.kind}: "
            + ("name a segmentation benchmark (e.g. msd_hippocampus_nnunet)" if segmenting else "name a classifier's")
        )
    if gates.min_dice is None:
        return
    if not segmenting:
        raise ValueError(f"gates.min_dice is for task.kind segmentation (this task is {task.kind}): set it to null")
    if isinstance(gates.min_dice, dict):
        unknown = sorted(set(gates.min_dice) - set(task.structures))
        if unknown:
            raise ValueError(
                f"gates.min_dice names {unknown}, which are not structures (task.class_names[1:] = "
                f"{list(task.structures)})"
            )


def _dimensions_agree(data: DataConfig, contract: PreprocessConfig, model: ModelConfig) -> None:
    """``ValueError`` naming the keys when the source, the contract's ``dims`` and the architecture disagree."""
    volumetric = contract.dims == 3
    if volumetric and data.source in IMAGE_SOURCES:
        raise ValueError(
            f"data.source {data.source!r} gives 2D images but preprocess.dims is 3: use nifti_folder, dicom_series "
            "or a 3D MedMNIST flag"
        )
    if not volumetric and data.source in VOLUME_SOURCES:
        raise ValueError(f"data.source {data.source!r} gives volumes: set preprocess.dims: 3")
    if volumetric != (model.architecture in VOLUME_ARCHITECTURES):
        wanted = ", ".join(VOLUME_ARCHITECTURES) if volumetric else "a 2D one (compact_resnet, simple_cnn, ...)"
        raise ValueError(
            f"model.architecture {model.architecture!r} does not fit preprocess.dims {contract.dims}: use {wanted}"
        )


def _image_folder_labels_agree(data: DataConfig, task: TaskConfig) -> None:
    """``ValueError`` naming the keys when an image folder's label rule cannot give ``task.class_names``.

    ``labels: kermany_filename``: every ``kermany_classes`` value must be a class, and every class
    must be the value of some outcome (a class no file can get would leave it empty).
    """
    if data.source != "image_folder" or data.image_folder.labels != "kermany_filename":
        return
    mapping = data.image_folder.kermany_classes
    names = list(task.class_names)
    unknown = sorted({v for v in mapping.values() if v not in names})
    if unknown:
        raise ValueError(
            f"data.image_folder.kermany_classes maps to {unknown}, which are not in task.class_names {names}"
        )
    unused = [c for c in names if c not in mapping.values()]
    if unused:
        raise ValueError(
            f"task.class_names {unused} get no image from the Kermany file-name rule: no outcome of "
            f"data.image_folder.kermany_classes {mapping} maps to them"
        )


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
    """:class:`Params` from a parsed YAML mapping (None means all defaults).

    Raises :class:`ConfigError` naming ``source`` and every invalid field when ``raw`` is not a
    mapping or does not validate.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


BASE_KEY = "base"


def read_params_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A params file as a plain dict, with the file its ``base`` key names merged beneath it.

    ``base`` is a path relative to the file; the file's own keys win, section by section, so a
    variant (``params/kermany64.yaml``) holds only what differs and never goes stale against
    ``params.yaml``. Not validated here: :func:`load_params` validates the merged whole.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: '{BASE_KEY}' chain loops back to this file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path to another params file, got {base!r}")
    return deep_merge(read_params_file(path.parent / base, (*_chain, path.resolve())), raw)


def load_params(path: str | Path | None = None, overrides: dict | None = None) -> Params:
    """Load ``params.yaml`` (or ``$MEDIMG_PARAMS``) and its ``base``, apply nested ``overrides``, validate once."""
    path = Path(path or os.environ.get(PARAMS_ENV, "params.yaml"))
    raw = read_params_file(path)
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_params(raw, str(path))


def deep_merge(base: dict, update: dict) -> dict:
    """A new dict: ``base`` with ``update`` laid over it, nested dicts merged key by key; the inputs are not changed."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def member_seeds(params: Params) -> tuple[int, ...]:
    """The training seed of each ``model.ensemble`` member: ``train.seed``, ``train.seed + 1``, ..."""
    return tuple(params.train.seed + i for i in range(params.model.ensemble.members))
