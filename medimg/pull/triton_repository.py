"""``medimg pull --layout triton``: a verified model written into a Triton / KServe model repository.

Layout (Triton's model repository, which KServe's Triton runtime reads as well)::

    REPO/<model>/config.pbtxt              (medimg.pull.triton_config: names the served version)
    REPO/<model>/<version>/model.onnx      (the registered file, sha256-verified)
    REPO/<model>/<version>/model_card.json (and model_card.md: Triton ignores other files)

Promises, like the default layout's: the alias is resolved once; the file is verified against the
version's ``medimg.onnx_sha256`` tag before anything in ``REPO`` changes (:class:`IntegrityError`
otherwise, and ``REPO`` is untouched); the version folder is complete before it appears (written
beside it and renamed in), and ``config.pbtxt`` is replaced in one rename after it, so a server
polling the repository never sees a configuration naming a missing or half-written version. Older
version folders stay (a rollback only rewrites the configuration); a version folder that exists with
a different file (altered on disk) is replaced by the verified one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from medimg import registry
from medimg.config import Params
from medimg.provenance import file_sha256
from medimg.pull import swap
from medimg.pull.card import CARD_JSON, CARD_MD, build_card, card_markdown
from medimg.pull.errors import PullError
from medimg.pull.fetch import fetch_verified_onnx
from medimg.pull.triton_config import TensorSpec, config_pbtxt, tensor_spec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class TritonPullResult:
    """A model written into a Triton repository: where, which version, its sha256 and the config text."""

    repo: Path
    model_dir: Path  # REPO/<model>
    version_dir: Path  # REPO/<model>/<version>
    model_name: str
    version: str
    sha256: str
    config: str


def graph_specs(onnx_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The ONNX graph's inputs and outputs as Triton tensor specs (read by ONNX Runtime on the CPU)."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = tuple(tensor_spec(a.name, a.type, list(a.shape)) for a in sess.get_inputs())
    outputs = tuple(tensor_spec(a.name, a.type, list(a.shape)) for a in sess.get_outputs())
    return inputs, outputs


def _replace_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    swap.write_synced(tmp, text)
    os.replace(tmp, path)
    swap.fsync_dir(path.parent)


def pull_triton(
    params: Params,
    *,
    repo: str | Path,
    alias: str | None = None,
    version: str | int | None = None,
    max_batch_size: int = 32,
) -> TritonPullResult:
    """Write the version that ``alias`` (default champion) or ``version`` names into the Triton repository ``repo``.

    Raises :class:`PullError` when nothing can be resolved or ``repo`` is not a directory,
    :class:`IntegrityError` when the downloaded file fails its sha256 check (``repo`` untouched).
    """
    from medimg.pull import resolve_version  # the package's one alias lookup

    repo = Path(os.path.abspath(Path(repo).expanduser()))
    if repo.exists() and not repo.is_dir():
        raise PullError(f"{repo} is not a directory: a Triton model repository is a folder")
    repo.mkdir(parents=True, exist_ok=True)
    name = params.registry.model_name
    record = resolve_version(name, alias, version)
    try:
        number = int(record.version)
    except ValueError:
        raise PullError(f"version {record.version!r} is not a number; Triton version folders are numbers") from None
    partial = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=repo))
    try:
        staged = partial / str(number)
        staged.mkdir()
        onnx_path = fetch_verified_onnx(record.name, record.version, record.onnx_sha256, staged)
        sha256 = record.onnx_sha256
        assert sha256  # fetch_verified_onnx raised IntegrityError without the tag
        card = build_card(record, onnx_path, alias if version is None else None)
        swap.write_synced(staged / CARD_JSON, json.dumps(card, indent=1, sort_keys=True, default=str))
        swap.write_synced(staged / CARD_MD, card_markdown(card))
        inputs, outputs = graph_specs(onnx_path)
        text = config_pbtxt(name, number, inputs, outputs, sha256, max_batch_size=max_batch_size)
        for path in staged.iterdir():
            os.chmod(path, 0o644)
        staged.chmod(0o755)
        model_dir = repo / name
        model_dir.mkdir(exist_ok=True)
        target = model_dir / str(number)
        existing = target / registry.ONNX_FILE
        if existing.is_file() and file_sha256(existing) == sha256:
            log.info("%s v%s is already in %s with the verified file", name, number, model_dir)
        else:
            if target.exists():  # altered or incomplete: move it out of the repository's view first
                log.warning("replacing %s: its model.onnx is not the registered file", target)
                os.rename(target, partial / "replaced")
            os.rename(staged, target)
            swap.fsync_dir(model_dir)
        _replace_text(model_dir / CONFIG_FILE, text)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("pulled %s v%s (sha256 %s) into the Triton repository %s", name, number, sha256, repo)
    return TritonPullResult(repo, model_dir, target, name, record.version, sha256, text)
