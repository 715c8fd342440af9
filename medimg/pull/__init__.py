"""``medimg pull``: a verified, self-describing model for deployment pipelines.

``pull`` resolves the alias (default ``champion``) to a version number **once** and reads
everything else (file, tags, run metrics, gate report) by that number, through one
:class:`~medimg.model_record.ModelRecord`, so a promotion that happens while a pull runs yields
the old model or the new one, never parts of both.

The jobs, one module each:

* :mod:`medimg.pull.fetch`: download the ONNX file and check it against the version's
  ``medimg.onnx_sha256`` tag (a mismatch or a missing tag is :class:`IntegrityError`);
* :mod:`medimg.pull.card`: the model card, JSON and Markdown, from the record and the file's metadata;
* :mod:`medimg.pull.swap`: the release folder, sealed and swapped atomically under ``--out``.

What a pull writes, and why a reader never sees a torn or tampered set::

    PARENT/DIR -> .DIR.releases/<model>-v<N>-<sha256[:12]>-<random>/
    PARENT/.DIR.releases/<model>-v<N>-.../model.onnx
                                        /model_card.md
                                        /model_card.json

Everything is written into a ``.partial-*`` folder first; on any error (an :class:`IntegrityError`
included) it is deleted and ``DIR`` is not touched: it still points at the previous complete
release, or does not exist. A reader that opens several files should resolve ``DIR`` once
(``os.path.realpath``, as :func:`read_pulled` does) and read them from the resolved folder; a reader
opening ``DIR/model.onnx`` alone is always safe. Concurrent pulls into the same ``DIR`` each build
their own release folder; the last link swap wins. ``DIR`` may not be an existing non-empty real
directory (it cannot be swapped atomically): pull refuses it with :class:`PullError`.

The MLflow client follows ``MLFLOW_TRACKING_URI``, so the same code pulls from the embedded
SQLite registry of a workspace or from a remote tracking server (``http://host:5000``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medimg import model_record, registry
from medimg.config import Params
from medimg.model_record import ModelRecord
from medimg.pull import swap
from medimg.pull.card import CARD_JSON, CARD_MD, build_card, card_markdown
from medimg.pull.errors import IntegrityError, PullError
from medimg.pull.fetch import fetch_verified_onnx
from medimg.pull.swap import releases_dir

__all__ = [
    "IntegrityError",
    "PullError",
    "PullResult",
    "fetch_verified_onnx",
    "pull",
    "read_pulled",
    "releases_dir",
    "resolve_version",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullResult:
    """A finished pull: the ``out_dir`` link, the release folder it points at, the version, its sha256 and card."""

    out_dir: Path  # the symlink the caller named
    release_dir: Path  # the folder it points at now (this pull's files)
    model_name: str
    version: str
    sha256: str
    card: dict

    @property
    def onnx(self) -> Path:
        """The pulled ONNX file inside the release folder."""
        return self.release_dir / registry.ONNX_FILE


def resolve_version(model_name: str, alias: str | None = None, version: str | int | None = None) -> ModelRecord:
    """The record of the version to pull: ``version`` when given, else the one ``alias`` (default champion) names."""
    if version is not None and alias is not None:
        raise PullError("give either an alias or a version, not both")
    ref = str(version) if version is not None else (alias or registry.CHAMPION)
    try:
        return model_record.resolve(f"{model_name}@{ref}", model_name)
    except registry.VersionNotFound as err:
        raise PullError(str(err)) from None


def pull(
    params: Params,
    *,
    out_dir: str | Path,
    alias: str | None = None,
    version: str | int | None = None,
    keep_previous: int = 2,
) -> PullResult:
    """Pull one verified model into ``out_dir`` (see the module docstring for the layout and promises)."""
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    swap.check_out_dir(out_dir)
    name = params.registry.model_name
    record = resolve_version(name, alias, version)  # the one and only alias lookup
    partial = swap.new_partial(out_dir)
    try:
        onnx_path = fetch_verified_onnx(record.name, record.version, record.onnx_sha256, partial)
        sha256 = record.onnx_sha256
        assert sha256  # fetch_verified_onnx raised IntegrityError if the tag was missing
        card = build_card(record, onnx_path, alias if version is None else None)
        swap.write_synced(partial / CARD_JSON, json.dumps(card, indent=1, sort_keys=True, default=str))
        swap.write_synced(partial / CARD_MD, card_markdown(card))
        release = swap.seal(partial, f"{name}-v{record.version}-{sha256[:12]}-{swap.partial_id(partial)}")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    swap.swap_link(out_dir, release)
    try:
        swap.prune(out_dir, keep_previous)
    except OSError as err:  # pruning is housekeeping: never fail a good pull over it
        log.warning("could not prune old releases in %s: %s", releases_dir(out_dir), err)
    log.info("pulled %s v%s (sha256 %s) into %s -> %s", name, record.version, sha256, out_dir, release.name)
    return PullResult(
        out_dir=out_dir, release_dir=release, model_name=name, version=record.version, sha256=sha256, card=card
    )


def read_pulled(out_dir: str | Path) -> tuple[Path, dict]:
    """(release folder, card) of a pulled model, resolving the link once so the pair is consistent."""
    release = Path(os.path.realpath(out_dir))
    return release, json.loads((release / CARD_JSON).read_text())
