"""The MedMNIST source: find, verify (MD5) or download an official archive.

The archive is looked for in ``<data_dir>/<flag>/`` and then ``<data_dir>/``; only when it is in
neither place is it downloaded with the ``medmnist`` package, into the workspace. A file whose MD5
differs from the official one is refused: a silently different test set would make every
comparison with published figures meaningless.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medimg.data.manifest import SPLITS


class DataSourceError(RuntimeError):
    """The data cannot be found or is not what it claims to be."""


@dataclass(frozen=True)
class MedMNISTArchive:
    """One MedMNIST ``.npz`` archive: its ``flag`` (e.g. pneumoniamnist), path and MD5."""

    flag: str
    path: Path
    md5: str

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """split -> (images uint8 [N,H,W], labels int64 [N])."""
        try:
            with np.load(self.path) as npz:
                out = {}
                for split in SPLITS:
                    images = np.asarray(npz[f"{split}_images"], dtype=np.uint8)
                    labels = np.asarray(npz[f"{split}_labels"]).reshape(-1).astype(np.int64)
                    if images.ndim != 3 or len(images) != len(labels):
                        raise DataSourceError(
                            f"{self.path}: {split}_images has shape {images.shape}, "
                            f"expected [N,H,W] with N={len(labels)} grey images"
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


def file_md5(path: Path) -> str:
    """Hex MD5 of the file at ``path``, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def candidate_paths(flag: str, data_dir: Path | None) -> list[Path]:
    """Where the archive of ``flag`` may lie under ``data_dir`` (``<flag>/<flag>.npz``, then ``<flag>.npz``); []
    without a data_dir.
    """
    if data_dir is None:
        return []
    return [data_dir / flag / f"{flag}.npz", data_dir / f"{flag}.npz"]


def locate(flag: str, data_dir: Path | None, download_dir: Path, download: bool) -> MedMNISTArchive:
    """Find the official archive, verify its MD5, or download it; raise with every place looked."""
    expected = official_info(flag)["MD5"]
    looked = candidate_paths(flag, data_dir)
    for path in looked:
        if path.is_file():
            return _verified(flag, path, expected)
    cached = download_dir / f"{flag}.npz"
    if cached.is_file():
        return _verified(flag, cached, expected)
    looked.append(cached)
    if not download:
        raise DataSourceError(
            f"{flag}.npz not found; looked in: {', '.join(map(str, looked))}. "
            "Set MEDIMG_DATA_DIR (or data.data_dir in params.yaml) to the folder holding it."
        )
    return _download(flag, download_dir, expected, looked)


def _verified(flag: str, path: Path, expected: str) -> MedMNISTArchive:
    actual = file_md5(path)
    if actual != expected:
        raise DataSourceError(
            f"{path}: MD5 {actual} does not match the official {flag} archive ({expected}); "
            "refusing a file that is not the published data set"
        )
    return MedMNISTArchive(flag=flag, path=path, md5=actual)


def _download(flag: str, download_dir: Path, expected: str, looked: list[Path]) -> MedMNISTArchive:
    import medmnist  # here: as in official_info, only when an archive must be downloaded

    download_dir.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, official_info(flag)["python_class"])
    try:
        cls(split="train", download=True, root=str(download_dir))
    except Exception as err:  # medmnist wraps network errors in a bare RuntimeError
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(
            f"{flag}.npz not found (looked in: {', '.join(map(str, looked))}) and the download "
            f"failed: {first_line}. Set MEDIMG_DATA_DIR to a folder holding the archive."
        ) from None
    return _verified(flag, download_dir / f"{flag}.npz", expected)
