"""The service's user store: names, roles and argon2 password hashes, in the workspace's ``users.json``.

Every endpoint of ``medimg serve`` except the health checks needs a login (HTTP Basic now; issue 16
adds web sessions on the same store). Passwords are never stored: each user has an argon2id hash
made by :class:`argon2.PasswordHasher` (argon2-cffi's defaults, RFC 9106 low-memory profile), and
:meth:`UserStore.verify` checks a password against it. Roles: ``admin``, ``radiologist``,
``service`` (a pipeline or another program); any role may run inference.

The file (:attr:`medimg.workspace.Workspace.users_file`) is JSON
``{"format": 1, "users": [{"name", "role", "password_hash", "created"}]}``, mode 0600. Writes are
atomic (a temporary file in the same folder, flushed to disk, then renamed over it) and changes are
serialised by an exclusive ``flock`` on ``<file>.lock``, so two ``medimg users add`` never lose each
other's user and a reader never sees half a file.

Checking a password costs about 0.1 s of CPU and 64 MiB by design; a service that checks every
request uses :class:`CachedVerifier`, which remembers a successful check in memory (a keyed digest
of the password, never the password) for as long as the user's stored hash is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from medimg.file_lock import locked

Role = Literal["admin", "radiologist", "service"]
ROLES: tuple[str, ...] = get_args(Role)
FORMAT = 1
#: A user name: 1-64 letters, digits and ``. _ @ -``, starting with a letter or digit (no ``:``, which
#: HTTP Basic uses as the separator, no spaces).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_PASSWORD_BYTES = 1024

_hasher = PasswordHasher()


class UserError(ValueError):
    """A user store change that cannot be made: unknown role, bad or duplicate name, empty password, unknown user."""


@dataclass(frozen=True)
class User:
    """One user: ``name``, ``role`` (one of :data:`ROLES`), ``password_hash`` (argon2 encoded string),
    ``created`` (ISO 8601 UTC)."""

    name: str
    role: Role
    password_hash: str
    created: str


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"user name {name!r}: use 1-64 letters, digits and . _ @ -, starting with a letter or digit "
            "(no ':' or spaces)"
        )
    return name


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return role  # type: ignore[return-value]  # checked against ROLES just above


def _check_password(password: str) -> str:
    if not password:
        raise UserError("empty password: give the new user a password (on standard input)")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise UserError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    return password


class UserStore:
    """The users of one workspace, in the JSON file at ``path`` (see the module docstring).

    Reads see the file as it is now (no cache): a user added or removed from the CLI counts at the
    next request. ``ValueError`` when the file exists but is not a user store.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ reading

    def users(self) -> list[User]:
        """Every user, in the order they were added; empty when the file does not exist."""
        return list(self._read().values())

    def get(self, name: str) -> User | None:
        """The user called ``name``, or ``None``."""
        return self._read().get(name)

    def _read(self) -> dict[str, User]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            document = json.loads(raw)
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
            users = [User(**entry) for entry in document["users"]]
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{self.path}: not a medimg user store ({err})") from None
        return {u.name: u for u in users}

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is ``name``'s password, else ``None`` (unknown user, wrong password).

        An unknown name costs the same argon2 work as a wrong password, so timing does not tell
        which names exist. Pure check: nothing is written.
        """
        user = self.get(name)
        if user is None:
            with contextlib.suppress(VerificationError, InvalidHashError):
                _hasher.verify(_dummy_hash(), password)
            return None
        return user if password_matches(user.password_hash, password) else None

    # ------------------------------------------------------------------ changing

    def add(self, name: str, role: str, password: str) -> User:
        """Add a user with an argon2 hash of ``password``; :class:`UserError` for a bad name, an unknown role,
        an empty password or a name already taken."""
        _check_name(name)
        checked_role = _check_role(role)
        _check_password(password)
        hashed = _hasher.hash(password)  # before the lock: 0.1 s of work others need not wait for
        with self._locked():
            users = self._read()
            if name in users:
                raise UserError(f"user {name!r} already exists (role {users[name].role}); remove it first")
            user = User(name, checked_role, hashed, datetime.now(UTC).isoformat(timespec="seconds"))
            users[name] = user
            self._write(users)
        return user

    def remove(self, name: str) -> User:
        """Remove ``name`` and return it; :class:`UserError` when there is no such user."""
        with self._locked():
            users = self._read()
            if name not in users:
                raise UserError(f"no user {name!r}" + (f"; users: {', '.join(users)}" if users else ""))
            user = users.pop(name)
            self._write(users)
        return user

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path)

    def _write(self, users: dict[str, User]) -> None:
        document = {
            "format": FORMAT,
            "users": [
                {"name": u.name, "role": u.role, "password_hash": u.password_hash, "created": u.created}
                for u in users.values()
            ],
        }
        data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def password_matches(password_hash: str, password: str) -> bool:
    """True when ``password`` hashes to ``password_hash`` (argon2 encoded); False for a mismatch or a broken hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, made on first use (not at import: it costs 0.1 s)."""
    return _hasher.hash(secrets.token_hex(16))


class CachedVerifier:
    """:meth:`UserStore.verify` with an in-memory memory of successful checks, for a service that checks every request.

    A success is remembered as (user name, the stored hash, HMAC-SHA256 of the password under a key
    made at random for this object); it counts only while the store still holds that user with that
    hash, so removing a user or changing their password takes effect at the next request. Failures
    are not remembered (each costs a full argon2 check). Thread-safe.
    """

    def __init__(self, store: UserStore) -> None:
        self.store = store
        self._key = secrets.token_bytes(32)
        self._known: dict[str, tuple[str, bytes]] = {}
        self._lock = threading.Lock()

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is ``name``'s password, else ``None``."""
        user = self.store.get(name)
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        if user is not None:
            with self._lock:
                known = self._known.get(name)
            if known is not None and known[0] == user.password_hash and hmac.compare_digest(known[1], digest):
                return user
        verified = self.store.verify(name, password)
        with self._lock:
            if verified is not None:
                self._known[name] = (verified.password_hash, digest)
            else:
                self._known.pop(name, None)
        return verified
