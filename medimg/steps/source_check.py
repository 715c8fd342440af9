"""The ingest step, skipped when the source is exactly as it was at the last ingest.

A scheduled retrain on unchanged data must cost seconds ("up to date"), not a re-decode and
re-write of every image only to arrive at the same DVC data version. Before ingesting, a
fingerprint of everything the ingest reads is taken:

- the ``data`` and ``preprocess`` params and the data folder they resolve to,
- the source files' names, sizes and modification times (the MedMNIST archive and every place
  it is looked for, or every file under the source folder and the inbox, the labels CSV included,
  as :func:`medimg.data.sources.tree` lists them: symbolic links followed, nothing hidden; a segmentation
  pairs CSV may only name files under the source folder, so they are all in it),
- the de-identification key (a truncated keyed hash, never the key) for folder sources,
- the source text of the code that turns files into the dataset (``medimg/data``,
  ``medimg/preprocess.py``, the 3D contract ``medimg/volume_contract.py`` and the segmentation grid
  ``medimg/segmentation/geometry.py``, ``medimg/steps/ingest.py``),
- the workspace's dataset: the current DVC data version and the manifest file's size and mtime.

When both equal the fingerprints saved with the last successful ingest (the source's taken
before it read anything, the dataset's after it wrote), that ingest's summary is
returned with ``skipped: True`` and nothing is read or written; anything else runs the real
ingest (:func:`medimg.steps.ingest.run`, handed in by the caller) and saves the new fingerprint.
Stat calls only: a folder of 100,000 files costs a directory walk, not a read of each file.
How this check fits with the other ways a run is skipped or reused: :mod:`flows.retrain`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from medimg.config import Params
from medimg.contracts import IngestSummary
from medimg.data import versioning
from medimg.data.deid import SECRET_ENV
from medimg.data.manifest import MANIFEST_FILE
from medimg.data.medmnist import candidate_paths
from medimg.data.sources import file_stat, tree
from medimg.workspace import Workspace

log = logging.getLogger(__name__)

STATE_FILE = "ingest-source.json"
PACKAGE = Path(__file__).resolve().parents[1]
INGEST_CODE = ("data", "preprocess.py", "volume_contract.py", "segmentation/geometry.py", "steps/ingest.py")


def _code_hash() -> str:
    digest = hashlib.sha256()
    for item in INGEST_CODE:
        target = PACKAGE / item
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            digest.update(path.relative_to(PACKAGE).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _key_hash(params: Params) -> str | None:
    raw = os.environ.get(SECRET_ENV, "")
    if not raw:
        return "demo" if params.data.deid.demo else None
    return hashlib.blake2b(raw.encode(), digest_size=8, person=b"medimg-srccheck").hexdigest()


def _hash(parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def dataset_fingerprint(ws: Workspace) -> str:
    """The dataset in the workspace: its DVC data version and its manifest file."""
    return _hash([versioning.current_version(ws), file_stat(ws.data / MANIFEST_FILE)])


def source_fingerprint(params: Params, ws: Workspace) -> str:
    """What the ingest reads: params, source files (names, sizes, mtimes), key and code."""
    data = params.data
    parts: dict = {
        "data": data.model_dump(mode="json", exclude={"workers", "dask"}),
        "class_names": list(params.task.class_names),  # labels are indices into them
        "preprocess": params.preprocess.model_dump(mode="json"),
        "data_dir": str(data.resolved_data_dir()),
        "code": _code_hash(),
    }
    if data.source == "medmnist":
        places = [
            *candidate_paths(data.medmnist_flag, data.resolved_data_dir()),
            ws.root / "downloads" / f"{data.medmnist_flag}.npz",
        ]
        parts["source"] = {str(p): file_stat(p) for p in places}
    else:
        root, inbox = data.resolve_path(data.root), data.resolve_path(data.inbox)
        parts["source"] = {"root": str(root), "files": tree(root), "inbox": str(inbox), "inbox_files": tree(inbox)}
        labels_csv = (
            (data.segmentation.pairs_csv if data.segmentation.layout == "csv" else None)
            if data.source == "nifti_pairs"
            else data.dicom.labels_csv
            if data.source == "dicom_folder"
            else data.volumes.labels_csv
            if data.source in ("nifti_folder", "dicom_series")
            else data.image_folder.labels_csv
            if data.image_folder.labels == "csv"
            else None
        )
        if root is not None and labels_csv:  # a CSV outside the root is not in its file tree
            labels = root / labels_csv
            parts["labels_csv"] = [str(labels), file_stat(labels)]
        parts["deid_key"] = _key_hash(params)
    return _hash(parts)


def _saved(state_file: Path, source: str, ws: Workspace) -> IngestSummary | None:
    """The summary saved with the last ingest when its fingerprints are ``source`` and today's dataset's."""
    try:
        saved = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if not (
        isinstance(saved, dict)
        and saved.get("source") == source
        and saved.get("dataset") == dataset_fingerprint(ws)
        and saved.get("summary")
    ):
        return None
    try:
        return IngestSummary.model_validate(saved["summary"])
    except ValidationError:  # written by a medimg with another summary: ingest again rather than guess
        return None


def run(params: Params, ws: Workspace, ingest: Callable[[Params, Workspace], IngestSummary]) -> IngestSummary:
    """The last ingest's summary (``skipped`` True) when nothing it read has changed, else ``ingest(params, ws)``'s.

    ``ingest`` is the real ingest (:func:`medimg.steps.ingest.run`); its errors pass through, and
    then no fingerprint is saved, so the next run ingests again.
    """
    state_file = ws.reports / STATE_FILE
    # Taken before the ingest reads anything: a file that lands meanwhile makes the next run ingest again.
    source = source_fingerprint(params, ws)
    previous = _saved(state_file, source, ws) if state_file.is_file() else None
    if previous is not None:
        log.info(
            "source unchanged since the ingest of data version %s (same files, params, code and dataset): "
            "ingest skipped",
            previous.data_version,
        )
        return previous.model_copy(update={"new_version": False, "skipped": True})
    summary = ingest(params, ws)
    ws.reports.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {"source": source, "dataset": dataset_fingerprint(ws), "summary": summary.model_dump(mode="json")}, indent=1
        )
    )
    os.replace(tmp, state_file)
    return summary.model_copy(update={"skipped": False})
