"""Near-duplicate images: the same picture after resizing, re-encoding, a small crop or a brightness change.

Byte-identical inputs are found by their sha256 (:mod:`medimg.validation.warts`); this module finds
the rest by a perceptual hash of the stored images, the contract's ``size`` x ``size`` grey PNGs
that training reads, so every source kind is compared the same way and a picture stored twice
from a PNG and a JPEG matches at distance 0.

The hash is pHash (Zauner, "Implementation and benchmarking of perceptual image hash functions",
2010; the rule of https://www.hackerfactor.com/blog/index.php?/archives/432-Looks-Like-It.html)
as :func:`imagehash.phash` computes it with ``hash_size=16``: the image resized to 64 x 64
(Lanczos), its 2D DCT-II, and one bit per coefficient of the lowest 16 x 16 frequencies, set when
the coefficient is above their median: 256 bits, about half of them set. Two images are near-
duplicates when the Hamming distance of their hashes is at most ``max_distance`` (params
``validation.near_duplicate_distance``; the default and its measurement are in ``params.yaml``).
Pairs whose source bytes are identical (same ``sha256``) are left out: they are duplicates already.
Near the default threshold the pairs that are not one picture are mostly neighbouring slices of
one MRI series (same patient); unrelated pictures start a few bits above it (see ``params.yaml``).
A crop of 2% per side is mostly missed (29% of brain MRI copies found), a flip or a rotation always.

Volumes (``volumes/<split>/<id>.npy``, uint8 ``[S, S, S]``) are hashed by the same pHash applied to
their three mean-intensity projections along the stored axes 0, 1 and 2 (each projection scaled
min..max to 0..255, :func:`volume_views`): 3 x 256 = 768 bits, compared by the Hamming distance of
the whole (the sum over the three views), at most ``validation.volume_near_duplicate_distance``.
Projections rather than the three central slices: a thin shape (a vessel segment) can miss the
central slice, and the projections see every voxel. Measured on VesselMNIST3D and AdrenalMNIST3D
(28^3; the figures are in ``params.yaml``): a volume and the 64^3 archive's copy of it resampled to
28^3 are within the default distance in 99.1% (vessel) and 99.9% (adrenal) of cases, and each of the
9 pairs the default flags (all in VesselMNIST3D) is one vessel segment stored twice (voxel IoU 0.78
to 0.87 of the binary shapes). A copy shifted by one voxel is missed (distances near 300), as a 2%
crop is for images.

Pairs are found with vectorised XOR and popcount over the hashes as ``uint64`` words, one block of
rows against every later row at a time: O(n^2) word operations in numpy, no Python loop per pair
(5856 PneumoniaMNIST images: about 17 million pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from medimg.data.manifest import SPLITS

#: pHash side: the hash has HASH_SIZE x HASH_SIZE bits.
HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
#: A hash as uint64 words.
HASH_WORDS = HASH_BITS // 64
#: What the report says was compared.
HASH_NAME = f"pHash {HASH_BITS}-bit (imagehash.phash, hash_size={HASH_SIZE}) of the stored images"
#: Views hashed per volume (the mean-intensity projections along axes 0, 1, 2).
VOLUME_VIEWS = 3
VOLUME_HASH_WORDS = VOLUME_VIEWS * HASH_WORDS
#: What the report says was compared, for volumes.
VOLUME_HASH_NAME = (
    f"pHash {VOLUME_VIEWS * HASH_BITS}-bit (imagehash.phash, hash_size={HASH_SIZE}, of each of the "
    f"{VOLUME_VIEWS} mean-intensity projections along the stored axes, scaled min..max) of the stored volumes"
)
#: Rows of the distance block computed at once: BLOCK x n x 8 bytes per word (12 MB at n = 6000).
BLOCK = 256


@dataclass(frozen=True)
class NearDuplicatePair:
    """Two manifest rows whose stored images are near-duplicates, with different source bytes.

    ``a`` is the row of the earlier split (train, val, test order), then the smaller id; ``distance`` the
    Hamming distance of their pHashes in bits (0..:data:`HASH_BITS`).
    """

    id_a: str
    split_a: str
    id_b: str
    split_b: str
    distance: int

    @property
    def across_splits(self) -> bool:
        """True when the two images are in different splits (leakage)."""
        return self.split_a != self.split_b

    def to_json(self) -> dict:
        """The pair as a JSON-ready dict (pseudonymous ids, splits, distance)."""
        return {
            "id_a": self.id_a,
            "split_a": self.split_a,
            "id_b": self.id_b,
            "split_b": self.split_b,
            "distance": self.distance,
        }


@dataclass(frozen=True)
class NearDuplicates:
    """The near-duplicate pairs of a manifest at one distance threshold, sorted (across splits first)."""

    max_distance: int
    n_images: int
    pairs: tuple[NearDuplicatePair, ...]
    hash_name: str = HASH_NAME

    @property
    def across_splits(self) -> list[NearDuplicatePair]:
        """The pairs whose images are in two splits."""
        return [p for p in self.pairs if p.across_splits]

    @property
    def within_split(self) -> list[NearDuplicatePair]:
        """The pairs whose images are in one split."""
        return [p for p in self.pairs if not p.across_splits]

    def summary(self) -> dict:
        """Counts as a JSON-ready dict (no ids): pairs across splits (total, by split pair, images involved) and
        within each split."""
        by_splits: dict[str, int] = {}
        for pair in self.across_splits:
            key = f"{pair.split_a}|{pair.split_b}"
            by_splits[key] = by_splits.get(key, 0) + 1
        across = self.across_splits
        return {
            "near_duplicates_checked": True,
            "near_duplicate_hash": self.hash_name,
            "near_duplicate_distance": self.max_distance,
            "near_duplicate_pairs_across_splits": len(across),
            "near_duplicate_pairs_across_splits_by_splits": dict(sorted(by_splits.items())),
            "images_in_near_duplicate_pairs_across_splits": len({i for p in across for i in (p.id_a, p.id_b)}),
            "near_duplicate_pairs_within_split": {
                split: sum(1 for p in self.within_split if p.split_a == split) for split in SPLITS
            },
        }


def not_checked_summary() -> dict:
    """The summary when no stored images were given (a manifest validated on its own)."""
    return {"near_duplicates_checked": False}


def phash_words(image) -> np.ndarray:
    """The pHash of one image (a PIL image or a 2D uint8 array) as :data:`HASH_WORDS` uint64 words, shape ``[4]``."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    bits = imagehash.phash(picture, hash_size=HASH_SIZE).hash.ravel()
    return np.packbits(bits).view(">u8").astype(np.uint64)


def volume_views(volume: np.ndarray) -> list[np.ndarray]:
    """The three 2D views of a volume ``[D, H, W]`` that its hash is made of: the mean along axis 0, 1 and 2
    (``[H, W]``, ``[D, W]``, ``[D, H]``), each scaled min..max to uint8 0..255 (a constant view: all 0).

    Raises ``ValueError`` unless ``volume`` has three axes of at least one voxel each.
    """
    voxels = np.asarray(volume)
    if voxels.ndim != 3 or 0 in voxels.shape:
        raise ValueError(f"expected a [D, H, W] volume, got shape {voxels.shape}")
    views = []
    for axis in range(3):
        mean = voxels.mean(axis=axis, dtype=np.float64)
        lo, hi = float(mean.min()), float(mean.max())
        scaled = (mean - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(mean)
        views.append(np.round(scaled).astype(np.uint8))
    return views


def phash_volume_words(volume: np.ndarray) -> np.ndarray:
    """The hash of one volume ``[D, H, W]`` (:func:`volume_views`, each :func:`phash_words`), shape
    ``[VOLUME_HASH_WORDS]`` (12) uint64; ``ValueError`` as :func:`volume_views`."""
    return np.concatenate([phash_words(view) for view in volume_views(volume)])


def hash_stored_images(data_dir: Path, paths: Sequence[str]) -> np.ndarray:
    """The pHashes of the stored images ``paths`` (relative to the dataset folder ``data_dir``), ``[n, 4]`` uint64.

    Raises ``FileNotFoundError`` naming the first missing image (the dataset is not the one its
    manifest describes).
    """
    out = np.empty((len(paths), HASH_WORDS), dtype=np.uint64)
    for row, relative in enumerate(paths):
        path = Path(data_dir) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path}: stored image of the manifest missing; re-ingest the dataset")
        with Image.open(path) as picture:
            out[row] = phash_words(picture)
    return out


def _popcount(words: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words)
    return np.unpackbits(words.view(np.uint8), axis=-1).reshape(*words.shape, 64).sum(-1)


def close_pairs(hashes: np.ndarray, max_distance: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of rows of ``hashes`` (``[n, words]`` uint64) at Hamming distance <= ``max_distance``.

    Returns ``(i, j, distance)``, three int64 arrays of one length, sorted by ``i`` then ``j``.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = hashes[start:stop]
        later = hashes[start:]
        distance = np.zeros((stop - start, n - start), dtype=np.uint16)
        for word in range(hashes.shape[1]):
            distance += _popcount(rows[:, word, None] ^ later[None, :, word])
        close = distance <= max_distance
        close &= np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]  # j > i
        i, j = np.nonzero(close)
        found_i.append(i + start)
        found_j.append(j + start)
        found_d.append(distance[i, j])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    first, second, distances = (np.concatenate(parts).astype(np.int64) for parts in (found_i, found_j, found_d))
    return first, second, distances


def find_near_duplicates(manifest: pd.DataFrame, data_dir: Path, max_distance: int) -> NearDuplicates:
    """The :class:`NearDuplicates` of a manifest (columns id, split, sha256, path) whose stored images are under
    ``data_dir``: pairs at pHash distance <= ``max_distance`` with different ``sha256``.
    """
    hashes = hash_stored_images(data_dir, manifest["path"].tolist())
    return pairs_of(manifest, hashes, max_distance)


def pairs_of(
    manifest: pd.DataFrame,
    hashes: np.ndarray,
    max_distance: int,
    hash_name: str = HASH_NAME,
    comparable: np.ndarray | None = None,
) -> NearDuplicates:
    """:func:`find_near_duplicates` given the rows' hashes (``[n, words]`` uint64, in manifest order).

    ``comparable`` (bool ``[n]``, None: all) leaves the other rows out of every pair (a stored volume
    that cannot be hashed); ``hash_name`` is what the summary says was compared.
    """
    i, j, distance = close_pairs(hashes, max_distance)
    if comparable is not None:
        usable = comparable[i] & comparable[j]
        i, j, distance = i[usable], j[usable], distance[usable]
    ids = manifest["id"].to_numpy()
    splits = manifest["split"].to_numpy()
    sha = manifest["sha256"].to_numpy()
    keep = sha[i] != sha[j]
    pairs = []
    for a, b, d in zip(i[keep], j[keep], distance[keep], strict=True):
        first, second = sorted((a, b), key=lambda r: (_split_rank(splits[r]), ids[r]))
        pairs.append(NearDuplicatePair(str(ids[first]), splits[first], str(ids[second]), splits[second], int(d)))
    pairs.sort(key=lambda p: (not p.across_splits, _split_rank(p.split_a), _split_rank(p.split_b), p.id_a, p.id_b))
    return NearDuplicates(max_distance=max_distance, n_images=len(manifest), pairs=tuple(pairs), hash_name=hash_name)


def rows_to_drop(found: NearDuplicates) -> list[str]:
    """Ids whose removal leaves no near-duplicate pair across splits: the later split's image of each pair.

    The held-out side goes (val of a train|val pair, test of train|test and val|test): an
    evaluation image that is a copy of one the model trained on (or was tuned on) measures memory,
    not generalisation, and keeping the training side keeps the training data whole. (Byte-identical
    copies keep the held-out side instead, :func:`medimg.validation.warts.rows_to_drop`, so that an
    official test split stays comparable with published results; near-duplicates there are far
    fewer and a held-out image that the model has in effect seen is the worse error.)
    """
    return sorted({p.id_b for p in found.across_splits})


def partners_in_other_splits(found: NearDuplicates | None, ids: pd.Series) -> pd.Series:
    """For each id in ``ids``: how many near-duplicates it has in another split among ``ids`` (int64, index of
    ``ids``); all 0 when ``found`` is None."""
    counts = dict.fromkeys(ids, 0)
    for pair in found.across_splits if found is not None else []:
        if pair.id_a in counts and pair.id_b in counts:
            counts[pair.id_a] += 1
            counts[pair.id_b] += 1
    return ids.map(counts).astype("int64")


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)
