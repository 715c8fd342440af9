"""Step 1: source -> versioned dataset (images, manifest) in the workspace."""

from __future__ import annotations

import logging

from medimg.config import Params
from medimg.data import versioning
from medimg.data.ingest import ingest_medmnist
from medimg.data.medmnist import locate
from medimg.workspace import Workspace

log = logging.getLogger(__name__)


def run(params: Params, ws: Workspace) -> dict:
    archive = locate(
        params.data.medmnist_flag,
        params.data.resolved_data_dir(),
        download_dir=ws.root / "downloads",
        download=params.data.download,
    )
    log.info("source %s (md5 %s verified)", archive.path, archive.md5)
    result = ingest_medmnist(archive, params.data, ws.data)
    version = versioning.commit_and_push(ws)
    log.info(
        "data version %s (%s): %d images %s", version.id, "new" if version.is_new else "unchanged",
        result.n_images, result.split_counts,
    )
    return {
        "data_version": version.id,
        "new_version": version.is_new,
        "n_images": result.n_images,
        "split_counts": result.split_counts,
        "source": result.source,
        "source_md5": result.source_md5,
        "dvc_file": str(version.dvc_file),
        "fetch_commands": versioning.fetch_commands(ws, version.id),
    }
