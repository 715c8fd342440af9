"""Patient-level train/val/test splitting.

Images of one patient are strongly correlated (same anatomy, same scanner, often the same
visit); if they land on both sides of a split, the test score measures recognition of patients
rather than of disease. :func:`split_by_patient` therefore assigns whole patients to splits,
and within that constraint keeps each split's label mix close to the whole's. A source without
patient ids (one patient per file) may instead be split image by image, class-stratified and
seeded (:func:`stratified_split`, ``data.split.stratify``), a rule a plain script can reproduce.
:func:`assign_splits` is the ingest's policy over manifest rows: keep the source's splits, split
the rest by patient, and place inbox patients by a keyed hash so that adding files moves nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from math import fsum

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medimg.config import SplitConfig
from medimg.data.manifest import SPLITS

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
_MAX_FOLDS = 100


def split_by_patient(
    records: pd.DataFrame,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
) -> pd.Series:
    """Split name per row of ``records`` (columns ``patient`` and ``label``), index aligned.

    Promises:

    * no patient appears in two splits;
    * the same patients, labels, fractions and seed give the same assignment, whatever the row
      order (groups are handled in sorted order, never in order of appearance);
    * split sizes follow ``fractions`` (which must be non-negative and sum to 1; a split with
      fraction 0 is never assigned) as closely as whole patients allow, and labels are
      stratified as far as the groups allow.

    How: the fractions are written as k_i / n with the smallest n <= 100 that fits (0.8/0.1/0.1
    -> 8/1/1 of n = 10), :class:`sklearn.model_selection.StratifiedGroupKFold` (shuffled with
    ``seed``) cuts the patients into n stratified folds, and split i gets k_i of them. Raises
    ``ValueError`` when there are fewer patients than folds, or on missing patients/labels.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    counts = _fold_counts(fractions)
    n_folds = sum(counts.values())
    missing = {"patient", "label"} - set(records.columns)
    if missing:
        raise ValueError(f"records lacks column(s) {sorted(missing)}; needs 'patient' and 'label'")
    if records.empty:
        return pd.Series([], index=records.index, dtype=object, name="split")
    if records["patient"].isna().any() or records["label"].isna().any():
        raise ValueError("records has missing patient or label values; every row needs both")
    patients = records["patient"].astype(str).to_numpy()
    n_patients = len(np.unique(patients))
    if n_patients < n_folds:
        raise ValueError(
            f"{n_patients} patients cannot be split into {fractions}: that needs at least "
            f"{n_folds} patients ({n_folds} folds)"
        )
    # Canonical order, so the result cannot depend on how the rows were ordered.
    order = np.lexsort((records["label"].astype(str).to_numpy(), patients))
    labels = pd.factorize(records["label"].astype(str).to_numpy()[order], sort=True)[0]
    groups = patients[order]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(order), dtype=np.int64)
    for fold, (_, test_idx) in enumerate(splitter.split(np.zeros(len(order)), labels, groups)):
        fold_of[test_idx] = fold
    names = np.empty(n_folds, dtype=object)
    start = 0
    for name, k in counts.items():
        names[start : start + k] = name
        start += k
    out = np.empty(len(order), dtype=object)
    out[order] = names[fold_of]
    return pd.Series(out, index=records.index, dtype=object, name="split")


def stratified_split(
    keys: Sequence[str], labels: Sequence[int], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """key -> split name (train/val/test): class-stratified, seeded random assignment of single images.

    The rule (``data.split.stratify``; the plain-script floor benchmark in ``benchmarks/`` imports
    this function to get the same split), exactly:

    1. sort the ``keys`` (each image's file path relative to the source root, posix, e.g.
       ``glioma/Te-gl_0010.jpg``) and put ``labels`` in the same order;
    2. ``rest, test = sklearn.model_selection.train_test_split(keys, stratify=labels,
       test_size=fractions["test"], random_state=seed)``;
    3. ``train, val = train_test_split(rest, stratify=labels of rest, test_size=val / (train + val),
       random_state=seed)``, with ``train``, ``val`` the fractions.

    A split whose fraction is 0 (or missing) gets no image and its step is left out. The input
    order does not matter (step 1); the same keys, labels, fractions and seed always give the same
    result (scikit-learn's ``StratifiedShuffleSplit`` under a fixed ``random_state``). Splits images,
    not patients: use it only where each image is its own patient.

    ``ValueError`` for keys and labels of different lengths, repeated keys, fractions outside
    train/val/test, negative or not summing to 1, and (from scikit-learn) too few images of a class
    for a split (each class needs at least 2, and each split at least one image per class).
    """
    if len(keys) != len(labels):
        raise ValueError(f"stratified_split: {len(keys)} keys but {len(labels)} labels")
    if len(set(keys)) != len(keys):
        raise ValueError("stratified_split: the keys must be distinct (one per image)")
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"stratified_split: unknown split(s) {sorted(unknown)}; use train/val/test")
    share = {name: float(fractions.get(name, 0.0)) for name in SPLITS}
    if any(v < 0 for v in share.values()) or abs(fsum(share.values()) - 1.0) > 1e-6:
        raise ValueError(f"stratified_split: fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    rest = [keys[i] for i in order]
    rest_labels = [int(labels[i]) for i in order]
    out: dict[str, str] = {}
    if share["test"] > 0 and rest:
        rest, test, rest_labels, _ = train_test_split(
            rest, rest_labels, stratify=rest_labels, test_size=share["test"], random_state=seed
        )
        out.update(dict.fromkeys(test, "test"))
    if share["val"] > 0 and rest:
        train, val = train_test_split(
            rest, stratify=rest_labels, test_size=share["val"] / (share["train"] + share["val"]), random_state=seed
        )
        out.update(dict.fromkeys(val, "val"))
        rest = train
    out.update(dict.fromkeys(rest, "train"))
    return out


def _fold_counts(fractions: dict[str, float]) -> dict[str, int]:
    """{split: k} with sum(k) = n and k / n = fraction, for the smallest such n <= 100."""
    if not fractions:
        raise ValueError("fractions is empty")
    for name, value in fractions.items():
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
            raise ValueError(f"fraction of {name!r} must be a number >= 0, got {value!r}")
    if abs(fsum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fsum(fractions.values())} for {fractions}")
    for n in range(2, _MAX_FOLDS + 1):
        counts = {name: round(value * n) for name, value in fractions.items()}
        if sum(counts.values()) == n and all(abs(value * n - counts[name]) < 1e-6 for name, value in fractions.items()):
            return {name: k for name, k in counts.items() if k > 0}
    # Irregular fractions: n = 100 with largest-remainder rounding.
    exact = {name: Fraction(value).limit_denominator(10**6) * _MAX_FOLDS for name, value in fractions.items()}
    counts = {name: int(q) for name, q in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: _MAX_FOLDS - sum(counts.values())]:
        counts[name] += 1
    return {name: k for name, k in counts.items() if k > 0}


def assign_splits(rows: list[dict], config: SplitConfig) -> None:
    """Fill ``split`` and ``path`` (``images/<split>/<id>.png``) of every manifest row, in place.

    Each row needs ``id``, ``patient_id``, ``label``, ``split`` (None when the source gave none),
    ``_origin`` ("source" or "inbox"), ``_explicit_split`` (the source gave the split) and, with
    ``config.stratify``, ``_key`` (its path relative to its folder). Rules,
    in order: a split layout without ``val`` gets one carved from ``train`` by patient
    (``config.val_fraction``); source rows without a split join their patient's split when the
    patient is already placed, else are split by patient, stratified and seeded
    (:func:`split_group`), or with ``config.stratify`` image by image (:func:`stratified_split` of
    their ``_key``; :func:`split_group` when a class is too small for it, with a warning); inbox
    rows without a split join their patient's split, and a new
    patient is placed by :func:`hash_split` of its pseudonym, so adding files never moves
    existing ones. Deterministic for the same rows and config.
    """
    base = [r for r in rows if r["_origin"] == "source"]
    inbox = [r for r in rows if r["_origin"] == "inbox"]
    explicit = [r for r in base if r["_explicit_split"]]
    seed = config.seed
    # a split layout without val: carve val out of train, by patient
    present = {r["split"] for r in explicit}
    if explicit and "val" not in present and "train" in present and config.val_fraction > 0:
        train = [r for r in explicit if r["split"] == "train"]
        vf = config.val_fraction
        split_group(train, {"train": 1 - vf, "val": vf}, seed)
    # base rows without a split: by patient (a patient already placed keeps its split)
    known = patient_splits(explicit)
    rest = [r for r in base if not r["_explicit_split"]]
    fresh = []
    for row in rest:
        if row["patient_id"] in known:
            row["split"] = known[row["patient_id"]]
        else:
            fresh.append(row)
    if fresh and config.stratify:
        _split_images(fresh, config)
    elif fresh:
        split_group(fresh, config.fractions, seed)
    # inbox rows: a known patient keeps its split, a new one is placed by its pseudonym
    known = patient_splits(base)
    for row in inbox:
        if row["_explicit_split"]:
            continue
        row["split"] = known.get(row["patient_id"]) or hash_split(row["patient_id"], config.fractions)
    for row in rows:
        row["path"] = f"images/{row['split']}/{row['id']}.png"


def split_group(rows: list[dict], fractions: dict[str, float], seed: int) -> None:
    """Set ``split`` of ``rows`` (with ``patient_id`` and ``label``) in place: :func:`split_by_patient`,
    stratified and seeded; with too few patients or images for its folds, :func:`hash_split` of each
    patient instead (still whole patients, with a warning).

    ``fractions`` were validated with the params, so a ``ValueError`` of :func:`split_by_patient`
    (or of scikit-learn's fold maker under it) means too few patients or images per class.
    """
    frame = pd.DataFrame({"patient": [r["patient_id"] for r in rows], "label": [r["label"] for r in rows]})
    try:
        splits = split_by_patient(frame, fractions, seed=seed).tolist()
    except ValueError as err:
        log.warning(
            "%d images of %d patients are too few for stratified folds (%s): split by patient pseudonym hash",
            len(frame),
            frame["patient"].nunique(),
            err,
        )
        splits = [hash_split(p, fractions) for p in frame["patient"]]
    for row, split in zip(rows, splits, strict=True):
        row["split"] = split


def _split_images(rows: list[dict], config: SplitConfig) -> None:
    """Set ``split`` of ``rows`` in place by :func:`stratified_split` of their ``_key`` and ``label``;
    :func:`split_group` (by patient, here by file) when a class is too small for it."""
    try:
        splits = stratified_split([r["_key"] for r in rows], [r["label"] for r in rows], config.fractions, config.seed)
    except ValueError as err:
        log.warning(
            "data.split.stratify: %d images are too few for a stratified split (%s): split by patient instead",
            len(rows),
            err,
        )
        split_group(rows, config.fractions, config.seed)
        return
    for row in rows:
        row["split"] = splits[row["_key"]]


def patient_splits(rows: list[dict]) -> dict[str, str]:
    """``patient_id`` -> the split holding most of its rows (ties: train, then val, then test).

    Rows whose ``split`` is None are not counted; a patient with no placed row is absent.
    """
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        if row["split"] is not None:
            counts[row["patient_id"]][row["split"]] += 1
    rank = {s: i for i, s in enumerate(SPLITS)}
    return {p: sorted(c.items(), key=lambda kv: (-kv[1], rank.get(kv[0], 9)))[0][0] for p, c in counts.items()}


def hash_split(patient: str, fractions: dict[str, float]) -> str:
    """The split of ``patient`` (a keyed pseudonym) by a uniform hash: the first 8 bytes of its
    SHA-256 as u in [0, 1) falls into the cumulative ``fractions`` in train, val, test order.

    Stable: the same patient always gets the same split. Splits with fraction <= 0 are never
    chosen; u beyond the sum of the fractions gets the last positive split ("train" when none).
    """
    digest = hashlib.sha256(patient.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    chosen = None
    for split in SPLITS:
        share = fractions.get(split, 0.0)
        if share <= 0:
            continue
        chosen = split
        edge += share
        if u < edge:
            return split
    return chosen or "train"
