"""Quarantine: entries from real bad files, the CSV, the fraction and the threshold."""

from __future__ import annotations

import csv

import pytest

from datapaths import DATA_DIR
from medimg.data.dicom import decode_dicom
from medimg.data.images import BadImage, decode_raster
from medimg.data.quarantine import Quarantine, QuarantineThresholdError


@pytest.fixture()
def quarantine(tmp_path) -> Quarantine:
    """Three real failures: the truncated MR, an empty file and a cut JPEG."""
    q = Quarantine()
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes((DATA_DIR / "chest_xray" / "test" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes()[:3000])
    for decode, path in (
        (decode_dicom, DATA_DIR / "dicom" / "mr" / "MR_truncated.dcm"),
        (decode_raster, empty),
        (decode_raster, cut),
    ):
        with pytest.raises(BadImage) as info:
            decode(path)
        q.add_bad_image(info.value)
    return q


def test_entries_and_counts(quarantine):
    assert len(quarantine) == 3
    assert [e.reason for e in quarantine.entries] == ["truncated", "empty", "truncated"]
    assert quarantine.counts_by_reason() == {"truncated": 2, "empty": 1}
    assert quarantine.entries[0].message.startswith("MR_truncated.dcm: truncated")
    quarantine.add("/x/manual.png", "too_small", "manual.png: too_small")
    assert list(quarantine.counts_by_reason()) == ["truncated", "empty", "too_small"]
    with pytest.raises(ValueError):
        quarantine.add("/x/y.png", "")


def test_write_csv(quarantine, tmp_path):
    target = quarantine.write_csv(tmp_path / "reports" / "quarantine.csv")
    with open(target, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["reason"] for r in rows] == ["truncated", "empty", "truncated"]
    assert rows[0]["path"] == str(DATA_DIR / "dicom" / "mr" / "MR_truncated.dcm")
    assert rows[1]["message"] == "empty.png: empty (the file has zero bytes)"
    empty = Quarantine().write_csv(tmp_path / "none.csv")
    assert empty.read_text().splitlines() == ["path,reason,message,file,pseudonym,library_message"]


def test_the_workspace_report_finds_the_file_and_the_pseudonymous_copy_names_none(tmp_path):
    """The owner's report gives the file's place and the library's text; the copy that may leave the
    workspace (MLflow) has the pseudonym and the reason code only."""
    q = Quarantine()
    q.add(
        "file-0123456789abcdef",
        "truncated",
        "file-0123456789abcdef: truncated (cut)",
        file="source/DOE^JANE/IM000001",
        pseudonym="file-0123456789abcdef",
        library_message="cannot read DOE^JANE: end of file",
    )
    q.add(
        "train/NORMAL/x.jpeg",
        "empty",
        "train/NORMAL/x.jpeg: empty",
        file="source/train/NORMAL/x.jpeg",
        pseudonym="file-fedcba9876543210",
    )
    with open(q.write_csv(tmp_path / "quarantine.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"], r["pseudonym"], r["reason"], r["library_message"]) for r in rows] == [
        ("source/DOE^JANE/IM000001", "file-0123456789abcdef", "truncated", "cannot read DOE^JANE: end of file"),
        ("source/train/NORMAL/x.jpeg", "file-fedcba9876543210", "empty", ""),
    ]
    public = q.write_pseudonymous_csv(tmp_path / "pseudonymous" / "quarantine.csv").read_text()
    assert public.splitlines() == ["pseudonym,reason", "file-0123456789abcdef,truncated", "file-fedcba9876543210,empty"]
    assert Quarantine().write_pseudonymous_csv(tmp_path / "none.csv").read_text().splitlines() == ["pseudonym,reason"]


def test_fraction_and_threshold(quarantine):
    assert quarantine.bad_fraction(100) == pytest.approx(0.03)
    assert Quarantine().bad_fraction(0) == 0.0
    with pytest.raises(ValueError, match="n_total"):
        quarantine.bad_fraction(2)
    quarantine.check_threshold(100, 0.03)  # at the limit: allowed
    quarantine.check_threshold(1000, 0.01)
    with pytest.raises(QuarantineThresholdError) as info:
        quarantine.check_threshold(100, 0.02)
    message = str(info.value)
    assert "3 of 100" in message and "3.0%" in message and "2.0%" in message
    assert "truncated: 2" in message and "empty: 1" in message
    with pytest.raises(ValueError):
        quarantine.check_threshold(100, 1.5)
