"""The user store of ``medimg serve`` (:mod:`medimg.users`) and the ``medimg users`` commands, on real files."""

from __future__ import annotations

import json
import stat
import threading

import pytest
from typer.testing import CliRunner

from medimg.cli import app
from medimg.users import CachedVerifier, UserError, UserStore, password_matches


@pytest.fixture
def store(tmp_path):
    return UserStore(tmp_path / "ws" / "users.json")


def test_add_verify_remove(store):
    alice = store.add("alice", "radiologist", "correct horse")
    assert alice.role == "radiologist" and alice.password_hash.startswith("$argon2id$")
    assert "correct horse" not in store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify("alice", "correct horse") == alice
    assert store.verify("alice", "correct horsE") is None
    assert store.verify("nobody", "correct horse") is None
    assert [u.name for u in store.users()] == ["alice"]
    assert store.remove("alice") == alice
    assert store.verify("alice", "correct horse") is None and store.users() == []


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("bob", "king", "pw", "unknown role 'king'"),
        ("bob", "admin", "", "empty password"),
        ("bob:x", "admin", "pw", "no ':'"),
        ("", "admin", "pw", "user name"),
    ],
)
def test_bad_additions_are_refused_with_the_reason(store, name, role, password, message):
    with pytest.raises(UserError, match=message):
        store.add(name, role, password)
    assert not store.path.exists()


def test_duplicate_and_unknown_users(store):
    store.add("svc", "service", "pw1")
    with pytest.raises(UserError, match="already exists"):
        store.add("svc", "admin", "pw2")
    assert store.verify("svc", "pw1") is not None and store.get("svc").role == "service"
    with pytest.raises(UserError, match="no user 'ghost'"):
        store.remove("ghost")


def test_concurrent_additions_keep_every_user(store):
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            store.add(f"user{i}", "service", f"pw{i}")
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(u.name for u in store.users()) == [f"user{i}" for i in range(6)]
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_file_that_is_not_a_store_is_an_error(store):
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({"format": 99, "users": []}))
    with pytest.raises(ValueError, match="not a medimg user store"):
        store.users()


def test_broken_hash_never_matches():
    assert password_matches("not-a-hash", "pw") is False


def test_cached_verifier_follows_the_store(store):
    verifier = CachedVerifier(store)
    store.add("alice", "admin", "pw")
    assert verifier.verify("alice", "pw") is not None
    assert verifier.verify("alice", "pw") is not None  # remembered
    assert verifier.verify("alice", "wrong") is None
    store.remove("alice")
    assert verifier.verify("alice", "pw") is None  # removal counts at once
    store.add("alice", "admin", "new")
    assert verifier.verify("alice", "pw") is None and verifier.verify("alice", "new") is not None


def _params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(f"workspace:\n  path: {tmp_path / 'ws'}\n")
    return path


def test_users_cli(tmp_path):
    params = str(_params(tmp_path))
    runner = CliRunner()
    added = runner.invoke(app, ["users", "add", "alice", "--role", "admin", "--params", params], input="s3cret pw\n")
    assert added.exit_code == 0, added.output
    store = UserStore(tmp_path / "ws" / "users.json")
    assert store.verify("alice", "s3cret pw") is not None  # the line ending is not part of the password
    again = runner.invoke(app, ["users", "add", "alice", "--role", "admin", "--params", params], input="x\n")
    assert again.exit_code == 1 and "already exists" in again.output
    role = runner.invoke(app, ["users", "add", "bob", "--role", "king", "--params", params], input="x\n")
    assert role.exit_code == 1 and "unknown role" in role.output
    empty = runner.invoke(app, ["users", "add", "bob", "--role", "service", "--params", params], input="\n")
    assert empty.exit_code == 1 and "empty password" in empty.output
    listed = runner.invoke(app, ["users", "list", "--params", params])
    assert listed.exit_code == 0 and "alice" in listed.output and "argon2" not in listed.output
    removed = runner.invoke(app, ["users", "remove", "alice", "--params", params])
    assert removed.exit_code == 0 and store.users() == []
    missing = runner.invoke(app, ["users", "remove", "alice", "--params", params])
    assert missing.exit_code == 1 and "no user 'alice'" in missing.output
