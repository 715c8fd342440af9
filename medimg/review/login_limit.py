"""Failed-login limit of the review pages: per user name and per client address, in a sliding window.

A login is refused (HTTP 429, the password not even checked) while the name it names, or the address it
comes from, has ``max_failures`` failed logins within the last ``window_s`` seconds. A successful login
clears the count of its user name (not of its address: one address guessing many names stays limited).
Counts live in memory (one process serves the pages) and are pruned as they age; at most
:data:`MAX_KEYS` names and addresses are tracked, the oldest dropped first, so a flood of made-up names
cannot fill the memory. Behind a reverse proxy every client has the proxy's address: the per-name limit
still holds, the per-address one then limits the proxy as a whole.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: Most user names plus addresses whose failures are remembered.
MAX_KEYS = 10_000


class LoginLimiter:
    """Counts failed logins by user name and by client address (module docstring)."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window_s <= 0:
            raise ValueError(f"a login limit needs max_failures >= 1 and window_s > 0, got {max_failures}, {window_s}")
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def blocked(self, name: str, address: str) -> bool:
        """True while ``name`` or ``address`` has ``max_failures`` failures within the window."""
        now = self.clock()
        with self._lock:
            return any(
                len(self._recent(key, now)) >= self.max_failures for key in (("name", name), ("address", address))
            )

    def failed(self, name: str, address: str) -> None:
        """Count one failed login of ``name`` from ``address``."""
        now = self.clock()
        with self._lock:
            for key in (("name", name), ("address", address)):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
                self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """A successful login of ``name``: its failures are forgotten."""
        with self._lock:
            self._failures.pop(("name", name), None)
