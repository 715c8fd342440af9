"""``medimg.workspace.activate``: the environment a flow starts in (no servers: Prefect reads it in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

from medimg.workspace import EPHEMERAL_STARTUP_SECONDS

PROBE = """
import sys
from pathlib import Path
from medimg.workspace import Workspace, activate
activate(Workspace(Path(sys.argv[1])))
from prefect.settings import get_current_settings
print(get_current_settings().server.ephemeral.startup_timeout_seconds)
"""


def _startup_timeout(tmp_path, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "ws")],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_the_ephemeral_prefect_api_gets_time_to_start_unless_the_user_says_otherwise(tmp_path):
    assert EPHEMERAL_STARTUP_SECONDS > 20  # Prefect's own default, too short for a first start on 2 busy cores
    assert _startup_timeout(tmp_path) == EPHEMERAL_STARTUP_SECONDS
    assert _startup_timeout(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="45") == 45
