"""Patient-level train/val/test splitting.

Images of one patient are strongly correlated (same anatomy, same scanner, often the same
visit); if they land on both sides of a split, the test score measures recognition of patients
rather than of disease. :func:`split_by_patient` therefore assigns whole patients to splits,
and within that constraint keeps each split's label mix close to the whole's.
"""

from __future__ import annotations

from fractions import Fraction
from math import fsum

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

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
