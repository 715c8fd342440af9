"""Shared fixtures: the real data, an activated temporary workspace, quiet telemetry, one Prefect test server.

The registry fixtures (``registry_ws``, ``fresh_registry``, ``registry_template``), the lineage
fixtures (``lineage_ws``, ``fresh_lineage_ws``) and the Orthanc fixtures (``orthanc``, ``private_orthanc``) are
plugins: every test module can request them by name.
"""

from __future__ import annotations

import os

import pytest

from datapaths import DATA_DIR, PNEUMONIAMNIST
from medimg.workspace import TELEMETRY_OFF

# One torch/OpenMP thread for this process and every process it starts (they inherit the environment),
# set before anything imports torch (nothing above does): the tests share the machine with other work, and
# processes each spinning two OpenMP threads on two busy cores run several times slower than with one each.
# Values exported by the caller win.
for _key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_key, "1")

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)

# This conftest sits in testpaths' folder (tests/, put on sys.path by ``pythonpath`` in pyproject.toml),
# so it is an initial conftest and may name plugins; the test modules live in subfolders below it.
pytest_plugins = ["registry_fixtures", "lineage_fixtures", "orthanc_fixtures"]


@pytest.fixture(scope="session")
def data_dir():
    if not PNEUMONIAMNIST.is_file():
        pytest.fail(f"real data not found at {DATA_DIR}: set MEDIMG_DATA_DIR to the shared data folder")
    return DATA_DIR


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server (SQLite, subprocess) for the whole session, started on first use.

    Flows called in this process run against it. Each workspace keeps its own task cache (the flow's
    result storage lives in the workspace), so tests sharing the server do not share cached steps."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
