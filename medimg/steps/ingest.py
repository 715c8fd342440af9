"""Step 1: source -> versioned dataset (contract images, manifest) in the workspace.

The source kind comes from ``data.source``: ``medmnist`` (the official archive), ``image_folder``
(PNG/JPEG in the Kaggle layout), ``dicom_folder`` (DICOM with a labels CSV), or the volume sources
``nifti_folder`` and ``dicom_series`` (NIfTI files or DICOM series with a labels CSV,
:mod:`medimg.data.ingest_volumes`; ``preprocess.dims: 3``), and the segmentation source ``nifti_pairs``
(NIfTI images with label masks, :mod:`medimg.data.ingest_pairs`). Folder sources
need the de-identification secret (``MEDIMG_DEID_SECRET``); with ``data.deid.demo`` the public
demo key is used instead when the variable is unset, and a warning says so on every ingest.

Outputs besides the dataset: ``reports/quarantine.csv`` and ``reports/skipped.csv`` (and copies
named after the data version), ``reports/pseudonymous/quarantine-<version>.csv``,
``reports/ingest-latest.json`` (this step's summary) and ``pipeline/data-version.json`` (the data
version and its counts only: the ``dvc.yaml`` stage output; ``pipeline/`` because the workspace's
DVC project ignores ``reports/``).

The quarantine and skip lists name each file by its place in the source folder (and quote the
decoding library's messages) so that the folder's owner can find it: they stay in the workspace.
What leaves it (the summary, which is logged to MLflow, and the MLflow quarantine artifact: the
``pseudonymous`` copy) holds counts, reason codes and pseudonyms only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from medimg import preprocess
from medimg.config import Params
from medimg.contracts import IngestSummary
from medimg.data import skips, versioning
from medimg.data.decode_dask import ClientFactory
from medimg.data.deid import SECRET_ENV, secret_from_env
from medimg.data.ingest_folders import ingest_files
from medimg.data.ingest_medmnist import ingest_medmnist
from medimg.data.ingest_pairs import SOURCE_KIND as PAIRS_SOURCE_KIND
from medimg.data.ingest_pairs import ingest_pairs
from medimg.data.ingest_result import IngestResult
from medimg.data.ingest_volumes import VOLUME_SOURCE_KINDS, ingest_volumes
from medimg.data.medmnist import DataSourceError, check_flag, locate
from medimg.workspace import Workspace

log = logging.getLogger(__name__)

QUARANTINE_CSV = "quarantine.csv"
SKIPPED_CSV = "skipped.csv"
#: Under ``reports/``: the copies of the lists that may leave the workspace (pseudonyms and reason codes).
PSEUDONYMOUS_DIR = "pseudonymous"
SUMMARY_FILE = "ingest-latest.json"
#: What the data is (not how this run got there): changes exactly when the data version does.
#: The ``dvc.yaml`` ingest stage's output and the validate stage's dependency.
VERSION_FILE = "data-version.json"


def deid_secret(params: Params) -> bytes:
    """The pseudonymisation key; raises ``MissingSecretError`` unless it is set or demo mode allows the demo key."""
    secret = secret_from_env(demo=params.data.deid.demo)
    if not os.environ.get(SECRET_ENV):
        log.warning(
            "%s is not set: using the PUBLIC demo de-identification key (data.deid.demo). Pseudonyms made "
            "with it protect nothing; use it for public demo data only",
            SECRET_ENV,
        )
    return secret


def run(
    params: Params,
    ws: Workspace,
    progress: Callable[[int, int], None] | None = None,
    dask_client: ClientFactory | None = None,
) -> IngestSummary:
    """Ingest ``data.source`` (and ``data.inbox``) into the workspace's dataset and version it with DVC.

    ``progress(done, total)`` is called as files are decoded (folder sources). ``dask_client`` opens the client
    of the Dask cluster that decodes an image or DICOM folder when ``data.dask`` says so (default:
    :func:`medimg.data.decode_dask.open_client`). Every file ends up
    in the dataset, in the quarantine report with its reason, or skipped with a reason. Raises
    :class:`~medimg.data.medmnist.DataSourceError` for a missing or misnamed source,
    :class:`~medimg.data.deid.MissingSecretError` without a de-identification key,
    :class:`~medimg.data.sources.SourceLayoutError` for a folder in no known layout and
    :class:`~medimg.data.quarantine.QuarantineThresholdError` when more than
    ``data.max_bad_fraction`` of the files are unusable (nothing is versioned then), and
    :class:`~medimg.config.ConfigError` (before anything is read) for a MedMNIST flag the task
    cannot use (:func:`~medimg.data.medmnist.check_flag`), and
    :class:`~medimg.data.decode_dask.ClusterDecodeError` when decoding on the Dask cluster fails.
    """
    kind = params.data.source
    if kind == "medmnist":
        flag = check_flag(
            params.data.medmnist_flag, params.task.class_names, params.preprocess.channels, params.preprocess.dims
        )
        log.info(
            "%s labels: %s",
            flag.flag,
            ", ".join(
                f"{i} {meaning!r} -> {name}"
                for i, (meaning, name) in enumerate(zip(flag.labels, params.task.class_names, strict=True))
            ),
        )
    ws.ensure()
    quarantine_csv = ws.reports / QUARANTINE_CSV
    skipped_csv = ws.reports / SKIPPED_CSV
    if kind == "medmnist":
        archive = locate(
            params.data.medmnist_flag,
            params.data.resolved_data_dir(),
            download_dir=ws.root / "downloads",
            download=params.data.download,
            size=params.data.medmnist_size,
        )
        log.info("source %s (md5 %s verified)", archive.path, archive.md5)
        result = ingest_medmnist(archive, params.data, params.task.class_names, ws.data, params.preprocess)
        quarantine_csv = result.quarantine.write_csv(quarantine_csv)
        skips.write_csv(result.skipped, skipped_csv)
    else:
        root = params.data.resolve_path(params.data.root)
        if root is None:
            raise DataSourceError(f"data.source is {kind} but data.root is not set: name the folder to ingest")
        if not root.is_dir():
            raise DataSourceError(
                f"{root}: source folder not found (data.root; a relative root is looked up under "
                f"data.data_dir or $MEDIMG_DATA_DIR, else the current folder)"
            )
        inbox = params.data.resolve_path(params.data.inbox)
        secret = deid_secret(params)
        log.info(
            "source %s (%s)%s; contract %s",
            root,
            kind,
            f", inbox {inbox}" if inbox else "",
            preprocess.contract_hash(params.preprocess),
        )
        if kind == PAIRS_SOURCE_KIND:
            result = ingest_pairs(
                params.data,
                params.task.class_names,
                params.preprocess,
                ws.data,
                secret,
                root,
                inbox,
                quarantine_csv=quarantine_csv,
                skipped_csv=skipped_csv,
                progress=progress,
            )
        elif kind in VOLUME_SOURCE_KINDS:
            result = ingest_volumes(
                kind,
                params.data,
                params.task.class_names,
                params.preprocess,
                ws.data,
                secret,
                root,
                inbox,
                quarantine_csv=quarantine_csv,
                skipped_csv=skipped_csv,
                progress=progress,
            )
        else:
            result = ingest_files(
                kind,
                params.data,
                params.task.class_names,
                params.preprocess,
                ws.data,
                secret,
                root,
                inbox,
                cache_root=ws.decode_cache,
                quarantine_csv=quarantine_csv,
                progress=progress,
                skipped_csv=skipped_csv,
                dask_client=dask_client,
            )
    version = versioning.commit_and_push(ws)
    kept_csv = ws.reports / f"quarantine-{version.id}.csv"
    shutil.copyfile(quarantine_csv, kept_csv)
    kept_skipped = ws.reports / f"skipped-{version.id}.csv"
    shutil.copyfile(skipped_csv, kept_skipped)
    pseudonymous = result.quarantine.write_pseudonymous_csv(ws.reports / PSEUDONYMOUS_DIR / kept_csv.name)
    log.info(
        "data version %s (%s): %d images %s",
        version.id,
        "new" if version.is_new else "unchanged",
        result.n_images,
        result.split_counts,
    )
    summary = _summary(result, version, ws, kept_csv, kept_skipped, pseudonymous)
    summary_json = summary.model_dump(mode="json", exclude={"skipped"})
    (ws.reports / SUMMARY_FILE).write_text(json.dumps(summary_json, indent=1))
    stable = {
        k: summary_json[k]
        for k in (
            "data_version",
            "n_images",
            "split_counts",
            "n_quarantined",
            "quarantine_by_reason",
            "contract_hash",
            "source_kind",
        )
    }
    ws.pipeline.mkdir(parents=True, exist_ok=True)
    (ws.pipeline / VERSION_FILE).write_text(json.dumps(stable, indent=1, sort_keys=True) + "\n")
    return summary


def _summary(
    result: IngestResult,
    version: versioning.DataVersion,
    ws: Workspace,
    quarantine_csv: Path,
    skipped_csv: Path,
    pseudonymous_csv: Path,
) -> IngestSummary:
    return IngestSummary(
        data_version=version.id,
        new_version=version.is_new,
        n_images=result.n_images,
        split_counts=result.split_counts,
        source=result.source,
        source_md5=result.source_md5,
        source_kind=result.source_kind,
        n_files=result.n_files,
        n_decoded=result.n_decoded,
        n_cached=result.n_cached,
        n_quarantined=len(result.quarantine),
        quarantine_by_reason=result.quarantine.counts_by_reason(),
        quarantine_csv=quarantine_csv,
        quarantine_pseudonymous_csv=pseudonymous_csv,
        n_skipped_files=len(result.skipped),
        skipped_files_by_reason=skips.counts_by_reason(result.skipped),
        skipped_files_csv=skipped_csv,
        contract_hash=result.contract_hash,
        dvc_file=version.dvc_file,
        fetch_commands=tuple(versioning.fetch_commands(ws, version.id)),
    )
