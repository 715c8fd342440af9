"""Known data warts: byte-identical images within a split, images shared across splits, and
patients (pseudonyms) with images in more than one split.

Pure pandas over the manifest. Finding them is separate from deciding what to do with them: the
policy (fail, warn, drop) comes from params and is applied by the validation step. Rows without
a patient (MedMNIST has none) never count as patient overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from medimg.data.manifest import SPLITS


@dataclass(frozen=True)
class Warts:
    """Data problems that are not errors: byte-identical duplicates within and across splits, patients in two splits."""

    within_split: list[dict]  # one entry per duplicate group: split, sha256, ids
    across_splits: list[dict]  # one entry per shared hash: sha256, splits, ids
    patients_across_splits: list[dict] = field(default_factory=list)  # patient_id, splits, images per split

    def summary(self) -> dict:
        """Counts of each wart, by split or split pair, as a JSON-ready dict (no ids)."""
        pairs: dict[str, int] = {}
        for group in self.patients_across_splits:
            key = "|".join(group["splits"])
            pairs[key] = pairs.get(key, 0) + 1
        return {
            "duplicate_groups_within_split": {
                split: sum(1 for g in self.within_split if g["split"] == split) for split in SPLITS
            },
            "extra_copies_within_split": {
                split: sum(len(g["ids"]) - 1 for g in self.within_split if g["split"] == split) for split in SPLITS
            },
            "hashes_across_splits": len(self.across_splits),
            "images_across_splits": sum(len(g["ids"]) for g in self.across_splits),
            "patients_across_splits": len(self.patients_across_splits),
            "images_of_patients_across_splits": sum(sum(g["images"].values()) for g in self.patients_across_splits),
            "patients_across_splits_by_splits": dict(sorted(pairs.items())),
        }


def find_warts(manifest: pd.DataFrame) -> Warts:
    """The :class:`Warts` of a manifest (columns id, split, sha256 and, when present, patient_id), sorted for stable
    output.
    """
    within = []
    for (split, sha), group in manifest.groupby(["split", "sha256"], sort=True):
        if len(group) > 1:
            within.append({"split": split, "sha256": sha, "ids": sorted(group["id"].tolist())})
    across = []
    for sha, group in manifest.groupby("sha256", sort=True):
        splits = sorted(set(group["split"]), key=_split_rank)
        if len(splits) > 1:
            across.append({"sha256": sha, "splits": splits, "ids": sorted(group["id"].tolist())})
    return Warts(within_split=within, across_splits=across, patients_across_splits=find_patient_overlap(manifest))


def find_patient_overlap(manifest: pd.DataFrame) -> list[dict]:
    """One entry per patient with images in two or more splits: patient_id, splits, images per split."""
    if "patient_id" not in manifest.columns:
        return []
    known = manifest[manifest["patient_id"].notna()]
    out = []
    for patient, group in known.groupby("patient_id", sort=True):
        counts = group["split"].value_counts()
        if len(counts) > 1:
            splits = sorted(counts.index, key=_split_rank)
            out.append({"patient_id": patient, "splits": splits, "images": {s: int(counts[s]) for s in splits}})
    return out


def rows_to_drop(manifest: pd.DataFrame, within: bool, across: bool, patients: bool = False) -> list[str]:
    """Ids whose removal resolves the chosen warts.

    Within a split the first copy (by id) is kept. Across splits the held-out copies are kept
    and the training-side copies are removed, so evaluation splits stay comparable with
    published results on the official split. A patient in several splits keeps the images of
    its latest split (test over val over train) and loses the others, for the same reason.
    """
    drop: set[str] = set()
    if patients and "patient_id" in manifest.columns:
        known = manifest[manifest["patient_id"].notna()]
        ranks = known["split"].map(_split_rank)
        latest = ranks.groupby(known["patient_id"]).transform("max")
        drop |= set(known.loc[ranks < latest, "id"])
    if across:
        ranks = manifest["split"].map(_split_rank)
        latest = ranks.groupby(manifest["sha256"]).transform("max")
        drop |= set(manifest.loc[ranks < latest, "id"])
    if within:
        kept = manifest[~manifest["id"].isin(drop)].sort_values("id")
        drop |= set(kept.loc[kept.duplicated(["split", "sha256"], keep="first"), "id"])
    return sorted(drop)


def add_check_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """Columns that let a row-level expectation see group facts (copies, splits per hash)."""
    out = manifest.copy()
    out["copies_in_split"] = out.groupby(["split", "sha256"])["id"].transform("count").astype("int64")
    out["splits_with_hash"] = out.groupby("sha256")["split"].transform("nunique").astype("int64")
    out["splits_with_patient"] = 1
    if "patient_id" in out.columns and out["patient_id"].notna().any():
        known = out["patient_id"].notna()
        counts = out[known].groupby("patient_id")["split"].transform("nunique")
        out.loc[known, "splits_with_patient"] = counts
    out["splits_with_patient"] = out["splits_with_patient"].astype("int64")
    return out


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per split (train, val, test): n_images, n_positive and positive_fraction (NaN for an empty split)."""
    rows = []
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        n = len(part)
        rows.append(
            {
                "split": split,
                "n_images": n,
                "n_positive": int((part["label"] == 1).sum()),
                "positive_fraction": float((part["label"] == 1).mean()) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)
