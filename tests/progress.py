"""Waits that follow progress, not a wall-clock guess: integration tests on a busy machine.

A run that trains three epochs takes 45 s on an idle 2-core machine and several times that while
other trainings share it. A fixed timeout either fails such a run for being slow or lets a hung one
sit for as long as the slowest healthy run. These helpers wait while the watched thing moves (a log
grows, a state changes) and give up only when it has stalled for ``stall`` seconds, or after a
generous overall ``cap`` (a guard against a run that makes endless progress, not a speed test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STALL_S = 300.0  # no new output and no state change for this long: stuck, whatever the load
CAP_S = 3600.0  # overall guard


class Stalled(AssertionError):
    """The watched thing made no progress for ``stall`` seconds (or ran past ``cap``)."""


def _kill(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: its children too
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()


def _tails(logs: Sequence[Path]) -> str:
    return "\n---\n".join(p.read_text(errors="replace")[-2500:] for p in logs if p.exists())


def wait_while_progressing(
    done: Callable[[], Any],
    what: str,
    *,
    progress: Callable[[], Any] = lambda: None,
    procs: Sequence[subprocess.Popen] = (),
    logs: Sequence[Path] = (),
    stall: float = STALL_S,
    cap: float = CAP_S,
    every: float = 0.5,
) -> Any:
    """Poll ``done()`` until it returns something truthy, and return that.

    Progress is any change of ``progress()`` or of the size of a file in ``logs``; each change restarts
    the ``stall`` clock. On a stall (or past ``cap``) the processes in ``procs`` are killed and
    :class:`Stalled` names ``what`` with the logs' tails."""
    started = last_move = time.monotonic()
    seen = (progress(), [p.stat().st_size if p.exists() else -1 for p in logs])
    while True:
        value = done()
        if value:
            return value
        now = time.monotonic()
        current = (progress(), [p.stat().st_size if p.exists() else -1 for p in logs])
        if current != seen:
            seen, last_move = current, now
        if now - last_move > stall or now - started > cap:
            _kill(procs)
            why = f"no progress for {stall:g} s" if now - last_move > stall else f"still running after {cap:g} s"
            raise Stalled(f"{what}: {why}\n{_tails(logs)}")
        time.sleep(every)


def run_logged(
    cmd: Sequence[str], log: Path, *, split: bool = False, stall: float = STALL_S, cap: float = CAP_S, **popen: Any
) -> subprocess.CompletedProcess:
    """``subprocess.run`` with its output in ``log``, ended only when that output stalls (or past ``cap``).

    ``split``: stderr goes to ``log`` with the suffix ``.err`` (both count as progress) and comes back as
    ``stderr``; otherwise it is merged into ``log`` and ``stderr`` is ``""``. ``stdout`` is the log's
    text. Raises :class:`Stalled` on a stall, after killing the process group."""
    err_log = log.with_name(log.name + ".err") if split else None
    # a Python child writing to a file buffers its stdout in blocks: unbuffered, its log shows each step
    popen["env"] = {**(popen.get("env") or os.environ), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out, open(err_log or os.devnull, "w") as err:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=err if split else subprocess.STDOUT, start_new_session=True, **popen
        )
        try:
            wait_while_progressing(
                lambda: proc.poll() is not None,
                " ".join(map(str, cmd))[:200],
                procs=[proc],
                logs=[log, err_log] if err_log else [log],
                stall=stall,
                cap=cap,
            )
        finally:
            _kill([proc])
    return subprocess.CompletedProcess(
        list(cmd),
        proc.returncode,
        log.read_text(errors="replace"),
        err_log.read_text(errors="replace") if err_log else "",
    )
