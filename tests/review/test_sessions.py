"""The session store and the login limit on their own: lifetimes, hashed ids, purge, CSRF, the windows."""

from __future__ import annotations

import sqlite3

from medimg.review.login_limit import LoginLimiter
from medimg.review.sessions import SessionStore
from review_site import Clock


def test_sessions_end_by_age_or_idleness_and_are_purged(tmp_path):
    clock = Clock()
    store = SessionStore(tmp_path / "s.sqlite", session_s=100, idle_s=30, clock=clock)
    sid, session = store.create("rad")
    assert store.get(sid) == session
    clock.now += 29
    assert store.get(sid).last_seen == clock.now  # used: the idle clock restarts
    clock.now += 29
    assert store.get(sid) is not None
    clock.now += 30
    assert store.get(sid) is None and store.get(sid) is None  # idle: ended and deleted
    old, _ = store.create("rad")
    for _ in range(3):
        clock.now += 25
        assert store.get(old) is not None
    clock.now += 25
    assert store.get(old) is None  # 100 s after the login, however busy
    left, _ = store.create("rad")
    kept, _ = store.create("rad2")
    clock.now += 20
    store.get(kept)
    clock.now += 15
    assert store.purge() == 1 and store.get(kept) is not None and store.get(left) is None
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert [r[0] for r in db.execute("SELECT user FROM sessions")] == ["rad2"]
    assert store.delete_user("rad2") == 1 and store.get(kept) is None


def test_csrf_tokens_are_per_session(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite", 100, 100)
    _, one = store.create("a")
    _, two = store.create("a")
    assert one.csrf != two.csrf and len(one.csrf) >= 43
    assert SessionStore.csrf_ok(one, one.csrf)
    assert (
        not SessionStore.csrf_ok(one, two.csrf)
        and not SessionStore.csrf_ok(one, "")
        and not SessionStore.csrf_ok(one, None)
    )


def test_the_login_limit_counts_within_its_window(tmp_path):
    clock = Clock()
    limiter = LoginLimiter(3, 60, clock)
    for _ in range(3):
        assert not limiter.blocked("rad", "10.0.0.1")
        limiter.failed("rad", "10.0.0.1")
        clock.now += 10
    assert limiter.blocked("rad", "10.0.0.9") and limiter.blocked("boss", "10.0.0.1")
    assert not limiter.blocked("boss", "10.0.0.9")
    clock.now += 31  # the first failure is 61 s old
    assert not limiter.blocked("rad", "10.0.0.9")
    limiter.failed("rad", "10.0.0.2")
    assert limiter.blocked("rad", "10.0.0.9")
    limiter.succeeded("rad")  # forgets the name's failures, not the addresses'
    assert not limiter.blocked("rad", "10.0.0.9")
    limiter.failed("boss", "10.0.0.1")  # 10.0.0.1's failures: 10 s, 20 s and now
    assert limiter.blocked("anyone", "10.0.0.1")
