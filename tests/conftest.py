"""Shared fixtures: the real data, an activated temporary workspace, quiet telemetry."""

from __future__ import annotations

import os

import pytest

from datapaths import DATA_DIR, PNEUMONIAMNIST
from medimg.workspace import TELEMETRY_OFF

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def data_dir():
    if not PNEUMONIAMNIST.is_file():
        pytest.fail(f"real data not found at {DATA_DIR}: set MEDIMG_DATA_DIR to the shared data folder")
    return DATA_DIR
