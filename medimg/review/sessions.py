"""Server-side sessions of the review pages, in a SQLite file in the workspace (``serve/sessions.sqlite``).

A session is made at a successful login: its id is ``secrets.token_urlsafe(32)`` (256 random bits), sent
to the browser once in the ``medimg_session`` cookie and stored only as its SHA-256, so a copy of the
database opens no session. Each session has a CSRF token (another 256 random bits) that every form of
the pages carries and every POST must give back (:meth:`SessionStore.csrf_ok`).

A session ends ``session_s`` seconds after its login (absolute), ``idle_s`` seconds after its last use
(idle), or at logout; an ended session is deleted when it is next looked up, and :meth:`SessionStore.purge`
drops every ended one. Times are seconds since the epoch from ``clock`` (``time.time``; a test passes its
own). The file is created mode 0600. Every call opens its own connection, so threads share a store.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Random bytes of a session id and of a CSRF token (``secrets.token_urlsafe``: 43 characters).
TOKEN_BYTES = 32
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_sha256 TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Session:
    """One live session: ``user`` (the login name; its role is read from the user store at each request),
    ``csrf`` (the token its forms carry), ``created`` and ``last_seen`` (seconds since the epoch)."""

    user: str
    csrf: str
    created: float
    last_seen: float


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class SessionStore:
    """Sessions at ``path`` that end ``session_s`` seconds after login or ``idle_s`` seconds after last use."""

    def __init__(self, path: Path, session_s: float, idle_s: float, clock: Callable[[], float] = time.time) -> None:
        if session_s <= 0 or idle_s <= 0:
            raise ValueError(f"session lifetimes must be positive, got {session_s} s and {idle_s} s")
        self.path = Path(path)
        self.session_s = float(session_s)
        self.idle_s = float(idle_s)
        self.clock = clock
        self._ready = False

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # 0600 before SQLite opens it
        conn = sqlite3.connect(self.path, timeout=10.0)
        try:
            if not self._ready:
                conn.execute(_SCHEMA)
                self._ready = True
            with conn:  # one transaction, committed on success
                yield conn
        finally:
            conn.close()

    def create(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: (the session id for the cookie, the session). The id is not stored."""
        session_id = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        session = Session(user, secrets.token_urlsafe(TOKEN_BYTES), now, now)
        with self._db() as db:
            db.execute(
                "INSERT INTO sessions (id_sha256, user, csrf, created, last_seen) VALUES (?, ?, ?, ?, ?)",
                (_digest(session_id), user, session.csrf, now, now),
            )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its ``last_seen`` moved to now; ``None`` for no id, an unknown one,
        or an ended one (which is deleted)."""
        if not session_id:
            return None
        key = _digest(session_id)
        now = self.clock()
        with self._db() as db:
            row = db.execute(
                "SELECT user, csrf, created, last_seen FROM sessions WHERE id_sha256 = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            user, csrf, created, last_seen = row
            if now - created >= self.session_s or now - last_seen >= self.idle_s:
                db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (key,))
                return None
            db.execute("UPDATE sessions SET last_seen = ? WHERE id_sha256 = ?", (now, key))
        return Session(user, csrf, created, now)

    def delete(self, session_id: str | None) -> None:
        """End the session with this id (logout); nothing happens for an unknown one."""
        if session_id:
            with self._db() as db:
                db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_digest(session_id),))

    def delete_user(self, user: str) -> int:
        """End every session of ``user``; how many there were."""
        with self._db() as db:
            return db.execute("DELETE FROM sessions WHERE user = ?", (user,)).rowcount

    def purge(self) -> int:
        """Delete every ended session; how many."""
        now = self.clock()
        with self._db() as db:
            return db.execute(
                "DELETE FROM sessions WHERE ? - created >= ? OR ? - last_seen >= ?",
                (now, self.session_s, now, self.idle_s),
            ).rowcount

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """True when ``token`` is the session's CSRF token (compared in constant time)."""
        return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
