"""Download a registered version's ONNX file and prove it is the file the registry names.

Takes a model name, a version number, the sha256 the version is tagged with
(``medimg.onnx_sha256``) and a folder; promises that the returned path holds exactly that file.
Anything else raises :class:`~medimg.pull.errors.IntegrityError` and leaves no file behind.
"""

from __future__ import annotations

from pathlib import Path

from medimg import registry
from medimg.provenance import file_sha256
from medimg.pull.errors import IntegrityError


def fetch_verified_onnx(name: str, version: str, expected_sha256: str | None, dest: Path) -> Path:
    """``dest/model.onnx``, downloaded from the artifact store, its sha256 equal to ``expected_sha256``.

    Raises :class:`IntegrityError` when ``expected_sha256`` is missing (nothing to verify against)
    or differs from the downloaded file's hash; the downloaded file is then deleted.
    """
    if not expected_sha256:
        raise IntegrityError(f"model {name} v{version} has no {registry.TAG_ONNX_SHA256} tag: cannot verify it")
    path = registry.download_onnx(name, version, dest)
    actual = file_sha256(path)
    if actual != expected_sha256:
        path.unlink(missing_ok=True)
        raise IntegrityError(
            f"model {name} v{version}: the downloaded ONNX file has sha256 {actual}, the registry says "
            f"{expected_sha256}; the artifact store copy was altered or corrupted. Nothing was installed."
        )
    return path
