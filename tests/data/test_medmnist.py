"""Finding and verifying the official PneumoniaMNIST archive."""

from __future__ import annotations

import shutil

import pytest

from medimg.data.medmnist import DataSourceError, locate


def test_finds_and_verifies_the_official_archive(data_dir, tmp_path):
    archive = locate("pneumoniamnist", data_dir, tmp_path, download=False)
    assert archive.md5 == "28209eda62fecd6e6a2d98b1501bb15f"
    arrays = archive.load()
    assert {k: len(v[1]) for k, v in arrays.items()} == {"train": 4708, "val": 524, "test": 624}
    assert arrays["train"][0].shape[1:] == (28, 28)


def test_also_looks_directly_in_the_data_dir(data_dir, tmp_path):
    shutil.copy(data_dir / "pneumoniamnist" / "pneumoniamnist.npz", tmp_path / "pneumoniamnist.npz")
    assert locate("pneumoniamnist", tmp_path, tmp_path / "dl", download=False).path == tmp_path / "pneumoniamnist.npz"


def test_wrong_md5_is_refused_with_the_file_named(data_dir, tmp_path):
    copy = tmp_path / "pneumoniamnist.npz"
    data = bytearray((data_dir / "pneumoniamnist" / "pneumoniamnist.npz").read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match=r"pneumoniamnist\.npz: MD5 .* does not match"):
        locate("pneumoniamnist", tmp_path, tmp_path / "dl", download=False)


def test_missing_archive_lists_every_place_looked(tmp_path):
    with pytest.raises(DataSourceError) as err:
        locate("pneumoniamnist", tmp_path / "empty", tmp_path / "dl", download=False)
    assert str(tmp_path / "empty" / "pneumoniamnist" / "pneumoniamnist.npz") in str(err.value)
    assert "MEDIMG_DATA_DIR" in str(err.value)
