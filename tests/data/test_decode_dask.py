"""Ingest decoding on a real Dask cluster (an in-process ``distributed.LocalCluster``) against the local pool, on
real brain MRI JPEGs and bad files: the same manifest, byte-identical PNGs, the same quarantine; streaming chunks
in input order; errors that name the chunk and no file.

The separate-process cluster of ``scripts/services.sh`` is in tests/data/test_decode_dask_cluster.py."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import LocalCluster
from PIL import Image

from datapaths import DATA_DIR
from medimg.config import parse_params
from medimg.data import manifest
from medimg.data.decode_dask import ClusterDecodeError, DaskCluster, decode_chunks, open_client
from medimg.data.decode_pool import DecodeJob, DecodeOptions
from medimg.data.ingest_folders import ingest_files
from medimg.data.ingest_result import IngestResult
from medimg.data.quarantine import QuarantineEntry

BRAIN = DATA_DIR / "brain_tumor_mri"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
SECRET = b"test-secret-for-medimg-dask-ingest-0123"
PER_CLASS = 15
#: name in glioma/ -> the reason the ingest quarantines it for
BAD = {
    "empty.png": "empty",
    "cut.jpg": "truncated",
    "notes.jpg": "not_an_image",
    "tiny.png": "too_small",
    "anim.png": "unsupported_format",
}


def brain_folder(root: Path) -> Path:
    """``PER_CLASS`` real JPEGs of each class folder of brain_tumor_mri, plus one bad file of each kind in BAD."""
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for src in sorted((BRAIN / cls).iterdir())[:PER_CLASS]:
            shutil.copy(src, root / cls / src.name)
    good = sorted((BRAIN / "glioma").iterdir())[0].read_bytes()
    bad = root / "glioma"
    (bad / "empty.png").write_bytes(b"")
    (bad / "cut.jpg").write_bytes(good[: len(good) // 2])
    (bad / "notes.jpg").write_text("not an image at all\n")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(bad / "tiny.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(bad / "anim.png", format="GIF")
    return root


def params(address: str | None = None, min_files: int = 10):
    return parse_params(
        {
            "task": {"kind": "multiclass", "class_names": list(CLASSES), "abnormal": ["glioma", "meningioma"]},
            "preprocess": {"size": 32, "interpolation": "area"},
            "data": {
                "source": "image_folder",
                "modality": "MR",
                "workers": 2,
                "max_bad_fraction": 0.5,
                "image_folder": {"patient_id": "file"},
                "split": {"stratify": True, "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}},
                "dask": {"address": address, "min_files": min_files, "chunk_files": 8},
            },
            "validation": {"expected_split_sizes": None},
        }
    )


def ingest(out: Path, root: Path, address: str | None = None, cache_root: Path | None = None) -> IngestResult:
    p = params(address)
    return ingest_files(
        "image_folder", p.data, p.task.class_names, p.preprocess, out / "dataset", SECRET, root, cache_root=cache_root
    )


def assert_same_dataset(a: IngestResult, b: IngestResult) -> None:
    """Same manifest, byte-identical stored PNGs, same quarantine (refs, reasons, library messages)."""
    frame_a, frame_b = manifest.read(a.folder), manifest.read(b.folder)
    assert frame_a.equals(frame_b)
    for rel in frame_a["path"]:
        assert (a.folder / rel).read_bytes() == (b.folder / rel).read_bytes(), rel
    assert _entries(a) == _entries(b)
    assert (a.source_md5, a.n_images, a.split_counts) == (b.source_md5, b.n_images, b.split_counts)


def _entries(result: IngestResult) -> list[QuarantineEntry]:
    """The quarantine entries, object addresses in library messages (``<_io.BytesIO object at 0x...>``) masked."""
    return [
        replace(e, library_message=re.sub(r"0x[0-9a-f]+", "0x", e.library_message or ""))
        for e in result.quarantine.entries
    ]


@pytest.fixture(scope="module")
def cluster():
    """A real Dask scheduler and two single-thread workers, in this process (they start in about a second)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        yield local


def test_a_folder_decoded_on_dask_is_the_local_pools_dataset(tmp_path, cluster, caplog):
    root = brain_folder(tmp_path / "brain")
    local = ingest(tmp_path / "local", root, cache_root=tmp_path / "local-cache")
    with caplog.at_level(logging.INFO, logger="medimg"):
        on_dask = ingest(tmp_path / "dask", root, cluster.scheduler_address, cache_root=tmp_path / "dask-cache")
    assert on_dask.n_images == 4 * PER_CLASS and on_dask.n_decoded == local.n_decoded == 4 * PER_CLASS + len(BAD)
    assert {e.file.rsplit("/", 1)[1]: e.reason for e in on_dask.quarantine.entries} == BAD
    assert_same_dataset(local, on_dask)
    # the sha256-keyed caches hold the same PNG for every image
    frame = manifest.read(on_dask.folder)
    for sha in frame["sha256"]:
        (a,), (b,) = (list((tmp_path / c).rglob(f"{sha}.png")) for c in ("local-cache", "dask-cache"))
        assert a.read_bytes() == b.read_bytes()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    n = 4 * PER_CLASS + len(BAD)
    assert f"decoding {n} files on the Dask cluster at {cluster.scheduler_address}" in logged
    assert f"{n} files decoded on the Dask cluster at {cluster.scheduler_address} in 9 chunk(s)" in logged

    # again on the cluster: every file from the cache the workers share, the same dataset
    again = ingest(tmp_path / "dask-again", root, cluster.scheduler_address, cache_root=tmp_path / "dask-cache")
    assert again.n_decoded == 0 and again.n_cached == n
    assert_same_dataset(local, again)


def test_a_small_folder_or_no_address_stays_in_the_local_pool(tmp_path, caplog):
    root = brain_folder(tmp_path / "brain")
    with caplog.at_level(logging.INFO, logger="medimg"):
        p = params("tcp://127.0.0.1:9", min_files=1000)  # nothing listens there: a client would fail
        result = ingest_files("image_folder", p.data, p.task.class_names, p.preprocess, tmp_path / "ds", SECRET, root)
    assert result.n_images == 4 * PER_CLASS
    assert "files in the local pool of 2 process(es) (fewer than data.dask.min_files 1000)" in caplog.text


def test_chunks_stream_in_input_order_and_a_failing_chunk_is_named_without_its_files(tmp_path, cluster):
    files = sorted((BRAIN / "notumor").iterdir())[:16]
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    options = DecodeOptions(
        preprocess=params().preprocess, cache_dir=str(not_a_folder / "cache"), secret=SECRET, use_cache=False
    )
    # chunk 1 only hashes (writes nothing); chunk 2 decodes, and storing its images into the cache fails there
    jobs = [DecodeJob(str(f), f"ref{i}", kind="raster", hash_only=i < 8) for i, f in enumerate(files)]
    chunks = decode_chunks(jobs, options, DaskCluster(cluster.scheduler_address, chunk_files=8))
    first_jobs, first = next(chunks)  # chunk 1 arrives before chunk 2 fails
    assert first.index == 0 and first_jobs == tuple(jobs[:8]) and first.error is None
    assert [m["status"] for m, _ in first.results] == ["hashed"] * 8
    assert first.worker in {str(name) for name in cluster.workers}
    with pytest.raises(
        ClusterDecodeError, match=r"chunk 2 of 2 \(jobs 9-16 of 16\) on the Dask cluster .* raised"
    ) as err:
        next(chunks)
    assert not any(f.name in str(err.value) or str(f.parent) in str(err.value) for f in files)


def test_no_scheduler_is_a_clear_error(tmp_path):
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(ClusterDecodeError, match=r"no Dask scheduler at tcp://127\.0\.0\.1:9 .*data\.dask\.address"),
        open_client("tcp://127.0.0.1:9"),
    ):
        pass


def test_inside_a_dask_task_runner_task_the_client_is_the_runners(prefect_harness):
    """A Prefect task on a worker of the runner's cluster gets prefect-dask's client; elsewhere a plain one. The
    cluster is one single-thread worker: the waiting task gives its slot up to the chunks (no deadlock)."""
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from tasks.dask_client import dask_client, on_the_runner_cluster

    one = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    address = one.scheduler_address
    jobs = [
        DecodeJob(str(f), f"ref{i}", hash_only=True) for i, f in enumerate(sorted((BRAIN / "notumor").iterdir())[:4])
    ]

    @task
    def hash_on_the_cluster(cache_dir: str) -> tuple[bool, list[str]]:
        options = DecodeOptions(preprocess=params().preprocess, cache_dir=cache_dir, use_cache=False)
        chunks = decode_chunks(jobs, options, DaskCluster(address, chunk_files=2, connect=dask_client))
        return on_the_runner_cluster(address), [m["status"] for _, chunk in chunks for m, _ in chunk.results]

    @flow(task_runner=DaskTaskRunner(address=address))
    def decode_in_a_task(cache_dir: str) -> tuple[bool, list[str]]:
        return hash_on_the_cluster.submit(cache_dir).result()

    with one:
        assert decode_in_a_task("unused") == (True, ["hashed"] * 4)
        assert not on_the_runner_cluster(address)  # not in a task: dask_client opens a client of its own
        with dask_client(address) as client:
            assert client.scheduler.address == address


@pytest.mark.integration
def test_on_the_services_cluster_chunks_run_in_its_worker_processes_with_the_same_result(tmp_path):
    """The scheduler and two workers of `scripts/services.sh start dask` (separate processes, this checkout on
    their PYTHONPATH): the chunks run in both worker processes, and the dataset is the local pool's."""
    import os

    from distributed import Client

    address = os.environ.get("MEDIMG_TEST_DASK_ADDRESS")
    if not address:
        pytest.fail(
            "MEDIMG_TEST_DASK_ADDRESS not set: start the cluster with "
            '`scripts/services.sh start dask && eval "$(scripts/services.sh env)"` (or run `make test`)'
        )
    with Client(address, timeout=30) as client:
        pids = client.run(os.getpid)  # worker address -> pid
    assert len(pids) >= 2 and os.getpid() not in pids.values()
    root = brain_folder(tmp_path / "brain")
    local = ingest(tmp_path / "local", root, cache_root=tmp_path / "local-cache")
    on_dask = ingest(tmp_path / "dask", root, address, cache_root=tmp_path / "dask-cache")
    assert on_dask.n_decoded == 4 * PER_CLASS + len(BAD)
    assert_same_dataset(local, on_dask)

    files = sorted(p for p in root.rglob("*") if p.is_file())
    jobs = [DecodeJob(str(f), f"ref{i}") for i, f in enumerate(files)]
    options = DecodeOptions(preprocess=params().preprocess, cache_dir=str(tmp_path / "probe"), secret=SECRET)
    (tmp_path / "probe").mkdir()
    ran = [(chunk.worker, chunk.pid) for _, chunk in decode_chunks(jobs, options, DaskCluster(address, chunk_files=8))]
    assert len(ran) == 9 and {pid for _, pid in ran} <= set(pids.values())
    assert len({pid for _, pid in ran}) >= 2, ran  # both worker processes took chunks
