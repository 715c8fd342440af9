"""The MedMNIST source: check the flag against the task, find, verify (MD5) or download an official archive.

Any 2D MedMNIST v2 flag with one grey channel and one label per image is a source
(``data.medmnist_flag``); what each flag is (its labels, channels, MD5, official split sizes)
comes from the installed ``medmnist`` package's ``INFO``, never from a copy here.
:func:`check_flag` compares it with the task before anything is read (3D flags, RGB flags,
multi-label ChestMNIST and a class count other than ``len(task.class_names)`` are refused).

The archive is looked for in ``<data_dir>/<flag>/`` and then ``<data_dir>/``; only when it is in
neither place is it downloaded with the ``medmnist`` package, into the workspace. A file whose MD5
differs from the official one is refused: a silently different test set would make every
comparison with published figures meaningless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medimg.config import ConfigError
from medimg.data.manifest import SPLITS


class DataSourceError(RuntimeError):
    """The data cannot be found or is not what it claims to be."""


class MedMNISTFlagError(ConfigError, DataSourceError):
    """``data.medmnist_flag`` names a flag medimg cannot ingest for the task (:func:`check_flag`).

    Both a :class:`~medimg.config.ConfigError` (the params are wrong: reported as a configuration
    error at start) and a :class:`DataSourceError` (what ``medimg ingest`` reports in one line).
    """


@dataclass(frozen=True)
class MedMNISTArchive:
    """One MedMNIST ``.npz`` archive: its ``flag`` (e.g. pneumoniamnist), path and MD5."""

    flag: str
    path: Path
    md5: str

    def load(self, volumes: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """split -> (images uint8 [N,H,W], or with ``volumes`` [N,D,H,W]; labels int64 [N])."""
        ndim, what = (4, "[N,D,H,W]") if volumes else (3, "[N,H,W]")
        try:
            with np.load(self.path) as npz:
                out = {}
                for split in SPLITS:
                    images = np.asarray(npz[f"{split}_images"], dtype=np.uint8)
                    labels = np.asarray(npz[f"{split}_labels"]).reshape(-1).astype(np.int64)
                    if images.ndim != ndim or len(images) != len(labels):
                        raise DataSourceError(
                            f"{self.path}: {split}_images has shape {images.shape}, "
                            f"expected {what} with N={len(labels)} grey {'volumes' if volumes else 'images'}"
                        )
                    out[split] = (images, labels)
                return out
        except (KeyError, ValueError, OSError) as err:
            raise DataSourceError(f"{self.path}: not a readable MedMNIST archive ({err})") from None


def official_info(flag: str) -> dict:
    """The medmnist package's metadata of ``flag`` (url, MD5, labels...); :class:`DataSourceError` for an unknown
    flag.
    """
    from medmnist.info import INFO  # here: the medmnist package takes 2 s to import; only for its metadata

    if flag not in INFO:
        raise DataSourceError(f"unknown MedMNIST flag {flag!r}")
    return INFO[flag]


@dataclass(frozen=True)
class MedMNISTFlag:
    """What the medmnist package's ``INFO`` says of one flag (the 28 px archive).

    ``labels``: the official label meanings, index = label (BreastMNIST: ``("malignant",
    "normal, benign")``); ``task``: INFO's task (``binary-class``, ``multi-class``,
    ``ordinal-regression``, ``multi-label, binary-class``); ``split_sizes``: images per official
    split; ``volumetric``: a 3D flag (its dataset class is a ``medmnist.dataset.MedMNIST3D``).
    """

    flag: str
    labels: tuple[str, ...]
    n_channels: int
    md5: str
    task: str
    volumetric: bool
    split_sizes: dict[str, int] = field(default_factory=dict)


def flag_info(flag: str) -> MedMNISTFlag:
    """:class:`MedMNISTFlag` of ``flag`` from the installed medmnist package; :class:`DataSourceError` for an
    unknown flag (naming the 2D flags)."""
    import medmnist  # here: the package imports torch (seconds); only for its metadata and dataset classes
    from medmnist.dataset import MedMNIST3D

    if flag not in medmnist.INFO:
        raise DataSourceError(
            f"unknown MedMNIST flag {flag!r} (data.medmnist_flag); 2D flags of medmnist {medmnist.__version__}: "
            f"{', '.join(flags_2d())}"
        )
    info = medmnist.INFO[flag]
    labels = tuple(name for _, name in sorted(info["label"].items(), key=lambda kv: int(kv[0])))
    return MedMNISTFlag(
        flag=flag,
        labels=labels,
        n_channels=int(info["n_channels"]),
        md5=info["MD5"],
        task=info["task"],
        volumetric=issubclass(getattr(medmnist, info["python_class"]), MedMNIST3D),
        split_sizes={k: int(v) for k, v in info.get("n_samples", {}).items()},
    )


def flags_2d() -> list[str]:
    """The installed medmnist package's 2D flags, sorted (the 3D ones are ``MedMNIST3D`` datasets)."""
    import medmnist  # here: as in flag_info
    from medmnist.dataset import MedMNIST3D

    return sorted(
        f for f, i in medmnist.INFO.items() if not issubclass(getattr(medmnist, i["python_class"]), MedMNIST3D)
    )


def check_flag(flag: str, class_names: Sequence[str], channels: int = 1, dims: int = 2) -> MedMNISTFlag:
    """The flag's :class:`MedMNISTFlag` when medimg can ingest it for ``class_names``; call it at start.

    ``flag``: ``data.medmnist_flag``; ``class_names``: ``task.class_names``; ``channels``:
    ``preprocess.channels``. Reads no archive (INFO only), so a wrong combination fails before
    any download or decode. Raises :class:`MedMNISTFlagError` (a ``ConfigError``) naming the keys for: an
    unknown flag; a 3D flag (volumes are a later issue); an RGB flag (``n_channels`` 3: medimg's
    contract images are grey, and ``preprocess.channels: 3`` only repeats the grey plane, so
    colour would be lost); a multi-label flag (ChestMNIST: one label per image is needed); and a
    number of labels other than ``len(class_names)``. ``dims`` (``preprocess.dims``): a 3D flag needs 3,
    a 2D flag 2.
    """
    try:
        info = flag_info(flag)
    except DataSourceError as err:
        raise MedMNISTFlagError(str(err)) from None
    if info.volumetric and dims != 3:
        raise MedMNISTFlagError(
            f"data.medmnist_flag {flag!r} is a 3D MedMNIST flag: set preprocess.dims: 3 (and a 3D model.architecture) "
            f"to train on volumes; 2D flags: {', '.join(flags_2d())}"
        )
    if dims == 3 and not info.volumetric:
        raise MedMNISTFlagError(
            f"data.medmnist_flag {flag!r} is a 2D MedMNIST flag but preprocess.dims is 3: use a 3D flag "
            "(e.g. vesselmnist3d, adrenalmnist3d)"
        )
    if info.n_channels != 1:
        raise MedMNISTFlagError(
            f"data.medmnist_flag {flag!r} holds RGB images ({info.n_channels} channels): not supported yet. medimg's "
            f"contract images are grey, and preprocess.channels (now {channels}) 3 only repeats the grey plane, "
            "so the colour would be lost; use a grey flag"
        )
    if info.task.startswith("multi-label"):
        raise MedMNISTFlagError(
            f"data.medmnist_flag {flag!r} is multi-label ({info.task}): medimg needs one label per image"
        )
    if len(info.labels) != len(class_names):
        meanings = ", ".join(f"{i} {name}" for i, name in enumerate(info.labels))
        raise MedMNISTFlagError(
            f"data.medmnist_flag {flag!r} has {len(info.labels)} classes ({meanings}) but task.class_names has "
            f"{len(class_names)} ({', '.join(class_names)}): name one class per label, in label order"
        )
    return info


def file_md5(path: Path) -> str:
    """Hex MD5 of the file at ``path``, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def archive_name(flag: str, size: int = 28) -> str:
    """The official file name of ``flag`` at ``size`` (MedMNIST+): ``<flag>.npz`` at 28, else ``<flag>_<size>.npz``."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def official_md5(flag: str, size: int = 28) -> str:
    """The official MD5 of the archive of ``flag`` at ``size`` (INFO ``MD5`` or ``MD5_<size>``)."""
    info = official_info(flag)
    key = "MD5" if size == 28 else f"MD5_{size}"
    if key not in info:
        raise DataSourceError(f"MedMNIST flag {flag!r} has no official archive at size {size} (data.medmnist_size)")
    return info[key]


def candidate_paths(flag: str, data_dir: Path | None, size: int = 28) -> list[Path]:
    """Where the archive of ``flag`` may lie under ``data_dir`` (``<flag>/<name>``, then ``<name>``, with
    :func:`archive_name`); [] without a data_dir.
    """
    if data_dir is None:
        return []
    name = archive_name(flag, size)
    return [data_dir / flag / name, data_dir / name]


def locate(flag: str, data_dir: Path | None, download_dir: Path, download: bool, size: int = 28) -> MedMNISTArchive:
    """Find the official archive (``size``: 28 or a MedMNIST+ size), verify its MD5, or download it; raise with
    every place looked."""
    expected = official_md5(flag, size)
    name = archive_name(flag, size)
    looked = candidate_paths(flag, data_dir, size)
    for path in looked:
        if path.is_file():
            return _verified(flag, path, expected)
    cached = download_dir / name
    if cached.is_file():
        return _verified(flag, cached, expected)
    looked.append(cached)
    if not download:
        raise DataSourceError(
            f"{name} not found; looked in: {', '.join(map(str, looked))}. "
            "Set MEDIMG_DATA_DIR (or data.data_dir in params.yaml) to the folder holding it."
        )
    return _download(flag, download_dir, expected, looked, size)


def _verified(flag: str, path: Path, expected: str) -> MedMNISTArchive:
    actual = file_md5(path)
    if actual != expected:
        raise DataSourceError(
            f"{path}: MD5 {actual} does not match the official {flag} archive (expected {expected}, the medmnist "
            "package's INFO); refusing a file that is not the published data set"
        )
    return MedMNISTArchive(flag=flag, path=path, md5=actual)


def _download(flag: str, download_dir: Path, expected: str, looked: list[Path], size: int = 28) -> MedMNISTArchive:
    import medmnist  # here: as in official_info, only when an archive must be downloaded

    download_dir.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, official_info(flag)["python_class"])
    try:
        cls(split="train", download=True, root=str(download_dir), size=size)
    except Exception as err:  # medmnist wraps network errors in a bare RuntimeError
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(
            f"{archive_name(flag, size)} not found (looked in: {', '.join(map(str, looked))}) and the download "
            f"failed: {first_line}. Set MEDIMG_DATA_DIR to a folder holding the archive."
        ) from None
    return _verified(flag, download_dir / archive_name(flag, size), expected)
