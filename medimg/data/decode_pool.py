"""Parallel, streaming, cached decoding of source files into contract images.

Each file is decoded and preprocessed (:func:`medimg.preprocess.decode_file` and
:func:`~medimg.preprocess.prepare`) in a pool of worker *processes*: decoding is CPU-bound, and
:func:`medimg.data.dicom.decode_dicom` captures warnings with :func:`warnings.catch_warnings`,
which is process-wide state, so threads would interfere. Workers come from a ``forkserver``
(never ``fork``: the parent may be a Prefect flow with threads and locks that a forked child
would inherit in an undefined state). As with ``spawn``, each worker imports the parent's main
module, so a script that ingests with more than one worker needs the usual
``if __name__ == "__main__":`` guard (the ``medimg`` command, pytest and Prefect have it). The same
per-file work can run on a Dask cluster instead (:mod:`medimg.data.decode_dask`, :func:`decode`'s ``cluster``).

Promises:

* **Streaming.** :func:`decode` yields one small metadata dict per file as it is done (in input
  order among the decoded files);
  the image itself goes to a file in the cache folder, never through the parent, so the parent's
  memory does not grow with the number of images and a worker holds one image at a time.
* **Cache.** Results are stored as ``<cache>/<sha256[:2]>/<sha256>.png`` plus a line in an
  index (:class:`DecodeCache`), keyed by the SHA-256 of the source bytes, and valid only for the
  job's ``kind`` (the same bytes read as DICOM and as a raster are two outcomes), in a folder whose name includes
  the contract hash,
  the rejection options, a key id of the de-identification secret and :data:`CACHE_VERSION`. A
  worker reads the file once, hashes its bytes and looks them up first: a file whose bytes were
  seen before under the same contract and secret is not decoded again (incremental ingest);
  otherwise the same bytes are decoded, and a DICOM header is parsed once, for both the pixels
  and the pseudonyms. Hashing happens in the workers, in parallel. Two identical files in one batch may both be
  decoded when they
  are processed at the same moment (same result, written twice). Bad files are cached too, with
  their reason.
* **Not an image.** A DICOM object that is no image (a DICOMDIR, a structured report, ...: the
  SOP Class rule of :mod:`medimg.data.sop_classes`) is not decoded: its status is ``skipped``
  with the reason and the SOP Class name as ``detail``. A ``hash_only`` job (a file set aside
  before decoding, e.g. for want of a label) is checked the same way from its header, so a
  label-less DICOMDIR is a skip, not an unlabelled image.
* **Privacy.** What a worker returns and what the cache holds are sizes, codes and keyed
  pseudonyms (:func:`medimg.data.deid.identity_pseudonyms`), never a DICOM value or a file name,
  with one exception: ``library_message``, the decoding library's own error text (the
  ``BadImage``'s, or that of an unexpected error), which may quote a file name or a header value.
  It is kept for the quarantine report inside the workspace (the cache lives there too) and must
  not go further: logs and what leaves the workspace carry reasons and pseudonyms only. Errors that
  are not :class:`~medimg.data.images.BadImage` become ``decode_error`` with the exception's type
  name as ``detail``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image

from medimg import preprocess
from medimg.config import PreprocessConfig
from medimg.data.deid import pseudonym
from medimg.data.images import BadImage
from medimg.data.sop_classes import non_image_object

if TYPE_CHECKING:  # the cluster calls back into this module: a type only, no import cycle
    from medimg.data.decode_dask import DaskCluster

#: Bump when decoding or the cached fields change, so old cache entries are not reused.
CACHE_VERSION = 4


@dataclass(frozen=True)
class DecodeJob:
    """One file to decode. ``ref`` identifies it to the caller (it is not written anywhere)."""

    path: str
    ref: str
    kind: str | None = None  # "dicom" or "raster"; None: told by the file's DICM marker
    hash_only: bool = False  # only read, hash and check for a non-image DICOM object (a file set aside before decoding)


@dataclass(frozen=True)
class DecodeOptions:
    """How the workers decode: the preprocessing contract, the cache folder, rejection limits, the pseudonym key."""

    preprocess: PreprocessConfig
    cache_dir: str
    min_side: int = 16
    allow_burned_in: bool = False
    secret: bytes | None = None  # needed for DICOM pseudonyms
    use_cache: bool = True  # False: decode every file (the cache folder is still where images go)


def cache_folder(
    cache_root: Path, contract_hash: str, secret: bytes | None, min_side: int = 16, allow_burned_in: bool = False
) -> Path:
    """``<cache_root>/v<version>-<contract hash>-<options>-<key id>``: one folder per way of decoding.

    Everything that changes a file's outcome is in the name: the contract, the rejection
    options (minimum side, burned-in annotation allowed) and the secret (pseudonyms). The key id
    is a pseudonym of a constant under the secret: it tells secrets apart without revealing
    anything about them.
    """
    key = pseudonym("cache", secret, "key").split("-", 1)[1][:8] if secret else "nokey"
    return cache_root / f"v{CACHE_VERSION}-{contract_hash}-m{min_side}{'b' if allow_burned_in else ''}-{key}"


class DecodeCache:
    """One cache folder: ``<sha256[:2]>/<sha256>.png`` images and ``index/*.jsonl`` metadata.

    Each process appends its entries (one JSON line per file: ``sha256``, the decoder ``kind``
    the entry was made with, plus the metadata) to
    its own index file, so writers never share a file and a lookup costs no file system call;
    :meth:`load` reads all index files (the last line for a hash wins). An image is written
    beside its final name and renamed into place before its index line is appended, so an
    indexed image is always complete, and an existing image file is never changed in place (the
    dataset's hard links to it keep their content).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._entries: dict[str, dict] | None = None
        self._index: TextIO | None = None
        self._made: set[Path] = set()

    def image_path(self, sha256: str) -> Path:
        """Where the contract PNG of the source bytes with hex digest ``sha256`` is (or would be) stored."""
        return self.folder / sha256[:2] / f"{sha256}.png"

    def load(self) -> dict[str, dict]:
        """Read every index file: SHA-256 -> entry (``kind`` plus metadata); a line cut short by a crash is ignored."""
        entries: dict[str, dict] = {}
        for path in sorted((self.folder / "index").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    entries[item.pop("sha256")] = item
                except (ValueError, KeyError, AttributeError):
                    continue  # a line cut by a crash: that file is decoded again
        self._entries = entries
        return entries

    def get(self, sha256: str, kind: str | None = None) -> dict | None:
        """The metadata stored for these bytes decoded as ``kind`` (without ``kind``), or None.

        An entry made with another kind (or one from before kinds were stored) is a miss: the
        same bytes read by the other decoder can have another outcome.
        """
        meta = (self._entries if self._entries is not None else self.load()).get(sha256)
        if meta is None or "kind" not in meta or meta["kind"] != kind:
            return None
        if meta.get("status") == "ok" and not self.image_path(sha256).is_file():
            return None
        return {k: v for k, v in meta.items() if k != "kind"}

    def put(self, sha256: str, image: np.ndarray | None, meta: dict, kind: str | None = None) -> None:
        """Store one result of decoding as ``kind``; unexpected errors (``detail`` starting "unexpected") are not
        kept."""
        if meta.get("status") != "ok" and str(meta.get("detail", "")).startswith("unexpected"):
            return
        if image is not None:
            target = self.image_path(sha256)
            if target.parent not in self._made:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(target.parent)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            Image.fromarray(image, mode="L").save(tmp, "PNG")
            os.replace(tmp, target)
        if self._index is None:
            (self.folder / "index").mkdir(parents=True, exist_ok=True)
            self._index = open(self.folder / "index" / f"{os.getpid()}-{os.urandom(4).hex()}.jsonl", "a")  # noqa: SIM115 - kept open for the appends; close() closes it
        entry = {**meta, "kind": kind}
        self._index.write(json.dumps({"sha256": sha256, **entry}, sort_keys=True) + "\n")
        self._index.flush()
        if self._entries is not None:
            self._entries[sha256] = entry

    def close(self) -> None:
        """Close this process's index file, if it opened one; safe to call twice."""
        if self._index is not None:
            self._index.close()
            self._index = None


# --------------------------------------------------------------------------- worker side

_OPTIONS: DecodeOptions | None = None


_CACHE: DecodeCache | None = None


def _init(options: DecodeOptions) -> None:
    global _OPTIONS, _CACHE
    _OPTIONS = options
    _CACHE = DecodeCache(options.cache_dir)
    if options.use_cache:
        _CACHE.load()
    warnings.simplefilter("ignore")  # library warnings can quote header values; nothing to say here


def process(job: DecodeJob) -> tuple[DecodeJob, dict, bool]:
    """Read and hash, look up, or decode, preprocess and cache one file (its bytes are read once).

    Returns the job, its metadata (``sha256`` always set; see the module docstring) and whether
    it came from the cache. ``status`` is ``ok``, ``bad`` (with ``reason``, ``detail`` and
    ``library_message``) or ``skipped`` (a non-image DICOM object: ``reason``, ``detail``). A file
    that cannot be read is ``bad`` with reason ``not_an_image`` and ``sha256`` None. A
    ``hash_only`` job is only read, hashed and checked for a non-image DICOM object: ``status``
    is ``hashed`` or ``skipped``.
    """
    options, cache = _OPTIONS, _CACHE
    if options is None or cache is None:
        raise RuntimeError("decode worker not initialised")
    return process_with(job, options, cache)


def process_with(job: DecodeJob, options: DecodeOptions, cache: DecodeCache) -> tuple[DecodeJob, dict, bool]:
    """:func:`process` with the options and cache given rather than this process's (a Dask worker's chunk,
    :mod:`medimg.data.decode_dask`); warnings are the caller's to catch."""
    try:
        data = Path(job.path).read_bytes()
    except OSError as err:
        return (
            job,
            {
                "status": "bad",
                "reason": "not_an_image",
                "detail": f"unreadable ({type(err).__name__})",
                "library_message": _library_message(str(err)),
                "sha256": None,
            },
            False,
        )
    sha = hashlib.sha256(data).hexdigest()
    if job.hash_only:
        return job, {**(_non_image(data) or {"status": "hashed"}), "sha256": sha}, False
    if options.use_cache:
        cached = cache.get(sha, job.kind)  # bytes decoded before by the same decoder
        if cached is not None:
            return job, {**cached, "sha256": sha}, True
    meta, image = _decode(job, options, data)
    cache.put(sha, image, meta, job.kind)  # unexpected errors are not cached: their cause may pass
    return job, {**meta, "sha256": sha}, False


def _non_image(data: bytes) -> dict | None:
    """``skipped`` metadata for a non-image DICOM object (:func:`medimg.data.sop_classes.non_image_object`), else
    None."""
    found = non_image_object(data)
    return None if found is None else {"status": "skipped", "reason": found.reason, "detail": found.sop_class}


def _decode(job: DecodeJob, options: DecodeOptions, data: bytes) -> tuple[dict, np.ndarray | None]:
    skipped = _non_image(data)
    if skipped is not None:
        return skipped, None
    try:
        decoded = preprocess.decode_file(
            job.path,
            options.preprocess,
            options.min_side,
            options.allow_burned_in,
            kind=job.kind,
            data=data,
            secret=options.secret,
        )
        image = preprocess.prepare(decoded, options.preprocess)
    except BadImage as err:
        return {
            "status": "bad",
            "reason": err.reason,
            "detail": err.detail,
            "library_message": _library_message(getattr(err, "library_message", None)),
        }, None
    except MemoryError:
        raise
    except Exception as err:  # an unexpected failure: its text is for the workspace's report only
        return {
            "status": "bad",
            "reason": "decode_error",
            "detail": f"unexpected {type(err).__name__}",
            "library_message": _library_message(str(err)),
        }, None
    meta = {
        "status": "ok",
        "file_format": decoded.source_kind,
        "original_height": int(decoded.original_height),
        "original_width": int(decoded.original_width),
        "bit_depth": int(decoded.bit_depth),
        "photometric": decoded.photometric,
        "modality": decoded.modality,
        "pixel_mean": float(image.mean()),
        "pixel_std": float(image.std()),
    }
    meta.update(decoded.pseudonyms or {})
    return meta, image


#: Longest library message kept (characters); a longer one is cut, with "...".
MAX_LIBRARY_MESSAGE = 500


def _library_message(text: str | None) -> str | None:
    if not text:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_LIBRARY_MESSAGE else text[: MAX_LIBRARY_MESSAGE - 3] + "..."


# --------------------------------------------------------------------------- parent side


def decode(
    jobs: Iterable[DecodeJob], options: DecodeOptions, workers: int = 2, cluster: DaskCluster | None = None
) -> Iterator[tuple[DecodeJob, dict, bool]]:
    """Yield ``(job, meta, from_cache)`` for every job, in input order.

    ``options.use_cache`` False decodes every job (what a first ingest costs). ``workers`` <= 1
    works in this process. With a ``cluster`` (:class:`medimg.data.decode_dask.DaskCluster`) the jobs
    are decoded on that Dask cluster instead (``workers`` unused): the same :func:`process` per file, the
    same results; raises :class:`medimg.data.decode_dask.ClusterDecodeError` for a chunk that fails there.
    """
    todo = list(jobs)
    if cluster is not None:
        if todo:
            Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
            yield from cluster.decode(todo, options)
        return
    yield from _run(todo, options, workers)


def decode_here(todo: list[DecodeJob], options: DecodeOptions) -> Iterator[tuple[DecodeJob, dict, bool]]:
    """Decode ``todo`` one after another in this process with a cache of its own (warnings caught and dropped)."""
    cache = DecodeCache(options.cache_dir)
    if options.use_cache:
        cache.load()
    try:
        for job in todo:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = process_with(job, options, cache)
            yield result
    finally:
        cache.close()


def _run(todo: list[DecodeJob], options: DecodeOptions, workers: int) -> Iterator[tuple[DecodeJob, dict, bool]]:
    if not todo:
        return
    Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
    workers = min(workers, len(todo))
    if workers <= 1:
        yield from decode_here(todo, options)
        return
    # A worker that dies (a decoder crashing on a hostile file) raises BrokenProcessPool here
    # instead of hanging the ingest, which is why this is not multiprocessing.Pool.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["medimg.data.decode_pool", "medimg.preprocess", "medimg.data.dicom"])
    chunksize = max(1, min(8, len(todo) // (workers * 16)))
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(options,))
    try:
        yield from pool.map(process, todo, chunksize=chunksize)
    finally:  # a consumer that stops early (an error, a threshold) does not wait for the rest
        pool.shutdown(wait=True, cancel_futures=True)
