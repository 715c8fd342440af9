"""Where the real data sets are: $MEDIMG_DATA_DIR, else ../shared/data beside the checkout, and
copies of parts of them for tests that need a source folder of their own.

Tests never skip when the data is missing: a missing folder fails loudly, in the fixture below.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DATA_DIR = Path(os.environ.get("MEDIMG_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
PNEUMONIAMNIST = DATA_DIR / "pneumoniamnist" / "pneumoniamnist.npz"
CHEST = DATA_DIR / "chest_xray"
DICOM = DATA_DIR / "dicom"
#: The shared DICOM samples several test modules use: a CR chest (JPEG baseline), a CR chest in lossy
#: JPEG 2000, a small CT slice and a small MR slice.
CR_CHEST = DICOM / "xray" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
CR_CHEST_J2K = DICOM / "xray" / "RG1_J2KI.dcm"
CT_SMALL = DICOM / "ct" / "CT_small.dcm"
MR_SMALL = DICOM / "mr" / "MR_small.dcm"
#: Real inputs medimg once got wrong, one folder per kind of fault (see its README.md).
FIELD_CASES = DATA_DIR.parent / "field-cases"
#: Real DICOM series (see shared/data/README.md): a 20-slice JPEG 2000 CT without file extensions, a
#: GE head CT with gantry tilt and uneven gaps, a five-series MR study in one folder.
DICOM_SERIES = DATA_DIR / "dicom_series"
CT_SERIES = DICOM_SERIES / "ct_abdomen_j2k_20"
CT_TILTED = DICOM_SERIES / "ct_head_gantry_tilt_28"
MR_STUDY = DICOM_SERIES / "mr_brain_study_5series"
#: The MSD hippocampus NIfTI volumes (about 35x50x35 at 1 mm).
HIPPOCAMPUS = DATA_DIR / "msd_hippocampus" / "imagesTr"
#: labels.csv of a copied DICOM folder, keyed by the sample folders (``label_key: folder``).
DICOM_FOLDER_LABELS = "key,label\nxray,pneumonia\nct,normal\nmr,normal\n"


def copy_chest_subset(root: Path, per_class: int = 10, skip: int = 0) -> list[Path]:
    """The first ``per_class`` files (after ``skip``) of each train/test class folder of chest_xray,
    copied to ``root/<split>/<class>/``; returns the copies."""
    copied = []
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            target = root / split / cls
            target.mkdir(parents=True, exist_ok=True)
            for src in sorted((CHEST / split / cls).iterdir())[skip : skip + per_class]:
                copied.append(Path(shutil.copy(src, target / src.name)))
    return copied


def copy_dicom_samples(
    root: Path, folders: tuple[str, ...] | None = None, labels: str | None = DICOM_FOLDER_LABELS
) -> Path:
    """The DICOM samples (``folders`` of them, None: all) copied to ``root``, writable (the shared
    data is read-only), with ``labels`` written to ``root/labels.csv`` unless None."""
    for folder in (None,) if folders is None else folders:
        shutil.copytree(DICOM if folder is None else DICOM / folder, root if folder is None else root / folder)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if labels is not None:
        (root / "labels.csv").write_text(labels)
    return root
