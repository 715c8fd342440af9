"""The review pages under attack and bad input: each gets the right HTTP status and changes nothing.

The real app of ``medimg serve`` with the review pages mounted, real argon2 users, real SQLite sessions;
cases from real PneumoniaMNIST test images. No model or registry is needed by what is tested here (the
Grad-CAM page without weights says so: MLflow points at an empty store in the test's folder).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from medimg.review.reviews import ReviewLog
from review_site import CSRF_FIELD, PASSWORDS, Site, add_case, make_site, make_users, real_images


@pytest.fixture(scope="module")
def users_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.json"
    make_users(path)
    return path


@pytest.fixture
def site(tmp_path, users_file, monkeypatch) -> Site:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # an empty registry
    return make_site(tmp_path, users_file)


def _state(site: Site) -> tuple:
    """Everything a request could change: the review log, the inbox, the audit log, the cases."""
    inbox = sorted(str(p.relative_to(site.inbox)) for p in site.inbox.rglob("*")) if site.inbox.exists() else []
    return (
        site.ws.reviews_log.read_bytes() if site.ws.reviews_log.exists() else None,
        inbox,
        site.ws.audit_log.read_bytes() if site.ws.audit_log.exists() else None,
        sorted(c.case_id for c in site.cases.all()),
    )


def _metric(site: Site, outcome: str) -> float:
    return site.metrics.registry.get_sample_value("medimg_review_logins_total", {"outcome": outcome}) or 0.0


# ----------------------------------------------------------------------------- no page without a session


def test_no_page_and_no_api_answers_without_a_login(site):
    """Every route of the app, the mounted review pages included: GET pages redirect to the login page, POSTs
    are 401, the API is 401 (HTTP Basic); only the health checks and the login form answer."""
    case = add_case(site.cases, real_images(1)[0])
    values = {"case_id": case.case_id, "name": "pneumonia-classifier", "version": "1"}
    client = site.client()
    seen = 0
    open_routes = {("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/review/login")}
    for top in site.app.routes:
        routes = [(f"/review{r.path}", r) for r in top.routes] if isinstance(top, Mount) else [(top.path, top)]
        for path, route in routes:
            if not isinstance(route, Route):
                continue
            url = path.format(**values) if "{" in path and "plots" not in path else path.replace("{name}", "a.png")
            for method in sorted(route.methods or ()):
                if method == "HEAD" or (method, path) in open_routes:
                    continue
                seen += 1
                answer = client.request(method, url)
                if path.startswith("/review/"):
                    if method == "GET":
                        assert answer.status_code == 303, (method, url, answer.status_code)
                        assert answer.headers["location"].startswith("/review/login?next="), url
                    elif path == "/review/login":
                        assert answer.status_code == 403, (method, url)  # no login form token
                    else:
                        assert answer.status_code == 401, (method, url, answer.status_code)
                else:
                    assert answer.status_code == 401, (method, url, answer.status_code)
    assert seen >= 20
    assert client.get("/review/login").status_code == 200
    assert client.get("/v2/health/live").status_code == 200


def test_a_service_login_cannot_use_the_pages(site):
    client = site.client()
    token = CSRF_FIELD.search(client.get("/review/login").text).group(1)
    answer = client.post("/review/login", data={"username": "svc", "password": PASSWORDS["svc"], "csrf": token})
    assert answer.status_code == 403
    assert "medimg_session" not in answer.cookies


# ----------------------------------------------------------------------------- login, cookies, rate limit


def test_login_sets_a_strict_httponly_expiring_cookie_and_stores_only_its_hash(site):
    client = site.client()
    site.login(client, "rad")
    cookie = client.cookies.get("medimg_session")
    assert cookie and len(cookie) >= 43
    form = client.get("/review/login")
    token = CSRF_FIELD.search(form.text).group(1)
    answer = site.client().post(
        "/review/login",
        data={"username": "rad", "password": PASSWORDS["rad"], "csrf": token},
        cookies={"medimg_login_csrf": token},
    )
    header = answer.headers["set-cookie"].lower()
    assert "medimg_session=" in header and "httponly" in header and "samesite=strict" in header
    assert "path=/review" in header and f"max-age={int(site.params.review.session_minutes * 60)}" in header
    assert "secure" not in header.replace("samesite", "")  # review.secure_cookie false by default
    with sqlite3.connect(site.ws.sessions_db) as db:
        stored = [row[0] for row in db.execute("SELECT id_sha256 FROM sessions")]
    assert len(stored) == 2 and cookie not in stored and all(len(s) == 64 for s in stored)
    assert site.ws.sessions_db.stat().st_mode & 0o077 == 0


def test_secure_cookie_when_behind_tls(tmp_path, users_file):
    site = make_site(tmp_path, users_file, {"review": {"secure_cookie": True}})
    client = TestClient(site.app, base_url="https://testserver", follow_redirects=False)  # the proxy's TLS
    token = CSRF_FIELD.search(client.get("/review/login").text).group(1)
    answer = client.post("/review/login", data={"username": "rad", "password": PASSWORDS["rad"], "csrf": token})
    assert answer.status_code == 303 and "; secure" in answer.headers["set-cookie"].lower()


def test_wrong_password_is_401_and_opens_no_session(site):
    client = site.client()
    token = CSRF_FIELD.search(client.get("/review/login").text).group(1)
    answer = client.post("/review/login", data={"username": "rad", "password": "wrong", "csrf": token})
    assert answer.status_code == 401 and "wrong user name or password" in answer.text
    assert "medimg_session" not in client.cookies
    assert client.get("/review/worklist").status_code == 303
    assert _metric(site, "wrong_password") == 1


def test_login_without_the_forms_token_is_403(site):
    client = site.client()
    client.get("/review/login")
    for data in ({}, {"csrf": "forged"}):
        answer = client.post("/review/login", data={"username": "rad", "password": PASSWORDS["rad"], **data})
        assert answer.status_code == 403
        assert "medimg_session" not in client.cookies
    assert _metric(site, "csrf_refused") == 2


def test_failed_logins_are_rate_limited_per_name_and_per_address(site):
    attacker = site.client("10.0.0.1")
    limit = site.params.review.login_max_failures
    token = CSRF_FIELD.search(attacker.get("/review/login").text).group(1)
    for _ in range(limit):
        answer = attacker.post("/review/login", data={"username": "rad", "password": "guess", "csrf": token})
        assert answer.status_code == 401
        token = CSRF_FIELD.search(answer.text).group(1)
    # the right password no longer helps: refused before it is checked, from this address or another
    answer = attacker.post("/review/login", data={"username": "rad", "password": PASSWORDS["rad"], "csrf": token})
    assert answer.status_code == 429 and "medimg_session" not in attacker.cookies
    token = CSRF_FIELD.search(answer.text).group(1)  # each answer of the form carries a new token
    elsewhere = site.client("10.0.0.2")
    token2 = CSRF_FIELD.search(elsewhere.get("/review/login").text).group(1)
    answer = elsewhere.post("/review/login", data={"username": "rad", "password": PASSWORDS["rad"], "csrf": token2})
    assert answer.status_code == 429
    # the attacking address is limited for other names too; another user elsewhere is not
    answer = attacker.post("/review/login", data={"username": "boss", "password": PASSWORDS["boss"], "csrf": token})
    assert answer.status_code == 429
    site.login(elsewhere, "rad2")
    assert _metric(site, "rate_limited") == 3 and _metric(site, "wrong_password") == limit
    # after the window the name may log in again
    site.clock.now += site.params.review.login_window_seconds
    site.login(site.client("10.0.0.3"), "rad")


def test_open_redirects_are_refused(site):
    client = site.client()
    token = CSRF_FIELD.search(client.get("/review/login").text).group(1)
    answer = client.post(
        "/review/login",
        data={"username": "rad", "password": PASSWORDS["rad"], "csrf": token, "next": "//evil.example/x"},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/review/worklist"


# ----------------------------------------------------------------------------- sessions


def test_an_idle_or_old_session_has_ended_and_changes_nothing(site):
    case = add_case(site.cases, real_images(1)[0])
    client = site.client()
    csrf = site.login(client, "rad")
    before = _state(site)
    site.clock.now += site.params.review.idle_minutes * 60
    assert client.get("/review/worklist").status_code == 303
    answer = client.post(f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": "normal"})
    assert answer.status_code == 401 and _state(site) == before

    csrf = site.login(client, "rad")  # absolute lifetime: used every few minutes, it still ends
    step = site.params.review.idle_minutes * 60 / 2
    for _ in range(int(site.params.review.session_minutes * 60 / step) - 1):
        site.clock.now += step
        assert client.get("/review/worklist").status_code == 200
    site.clock.now += step
    assert client.get("/review/worklist").status_code == 303
    answer = client.post(f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": "normal"})
    assert answer.status_code == 401 and _state(site) == before


def test_logout_ends_the_session(site):
    client = site.client()
    csrf = site.login(client, "rad")
    cookie = client.cookies.get("medimg_session")
    assert client.post("/review/logout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/review/worklist").status_code == 200
    assert client.post("/review/logout", data={"csrf": csrf}).status_code == 303
    replay = site.client()
    replay.cookies.set("medimg_session", cookie, path="/review")
    assert replay.get("/review/worklist").status_code == 303


def test_a_removed_user_loses_their_session(site):
    client = site.client()
    site.login(client, "rad2")
    site.users.remove("rad2")
    assert client.get("/review/worklist").status_code == 303


# ----------------------------------------------------------------------------- forms


def test_missing_or_forged_csrf_is_403_and_changes_nothing(site):
    case = add_case(site.cases, real_images(1)[0])
    client = site.client()
    site.login(client, "rad")
    other = site.client()
    their_csrf = site.login(other, "rad2")  # a real token, of another session
    before = _state(site)
    for form in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": their_csrf}):
        answer = client.post(f"/review/cases/{case.case_id}/review", data={**form, "label": "normal"})
        assert answer.status_code == 403, form
    for path in ("/review/admin/promote", "/review/admin/rollback"):
        assert client.post(path, data={"version": "2", "reason": "x"}).status_code == 403
    assert _state(site) == before


def test_a_radiologist_cannot_promote_or_roll_back(site):
    client = site.client()
    csrf = site.login(client, "rad")
    before = _state(site)
    answer = client.post("/review/admin/promote", data={"csrf": csrf, "version": "2", "reason": "looks better"})
    assert answer.status_code == 403 and "only an admin" in answer.text
    answer = client.post("/review/admin/rollback", data={"csrf": csrf, "reason": "looks worse"})
    assert answer.status_code == 403
    assert client.get("/review/admin").status_code == 403
    assert _state(site) == before


def test_an_unknown_or_malformed_case_id_is_404_and_changes_nothing(site):
    add_case(site.cases, real_images(1)[0])
    client = site.client()
    csrf = site.login(client, "rad")
    before = _state(site)
    for case_id in ("AAAAAAAAAAAAAAAA", "..%2F..%2Fusers", "x" * 40):
        assert client.get(f"/review/cases/{case_id}").status_code == 404
        assert client.get(f"/review/cases/{case_id}/image.png").status_code == 404
        assert client.get(f"/review/cases/{case_id}/gradcam.png").status_code == 404
        answer = client.post(f"/review/cases/{case_id}/review", data={"csrf": csrf, "label": "normal"})
        assert answer.status_code == 404
    assert _state(site) == before


def test_a_label_outside_the_models_classes_is_422(site):
    case = add_case(site.cases, real_images(1)[0])
    client = site.client()
    csrf = site.login(client, "rad")
    before = _state(site)
    for label in ("", "cat", "PNEUMONIA"):
        answer = client.post(f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": label})
        assert answer.status_code == 422, label
    answer = client.post(
        f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": "normal", "comment": "x" * 2001}
    )
    assert answer.status_code == 422
    assert _state(site) == before


def test_html_in_a_comment_is_shown_as_text(site):
    case = add_case(site.cases, real_images(1)[0])
    client = site.client()
    csrf = site.login(client, "rad")
    comment = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'
    answer = client.post(
        f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": "normal", "comment": comment}
    )
    assert answer.status_code == 303
    page = client.get(f"/review/cases/{case.case_id}").text
    assert "<script>alert" not in page and "<img src=x" not in page
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; &#34;quotes&#34;"
    assert escaped in page
    assert ReviewLog(site.ws.reviews_log).read()[0].comment == comment  # kept as typed, escaped on output


def test_a_second_review_by_the_same_reader_is_409_and_changes_nothing(site):
    case = add_case(site.cases, real_images(1)[0])
    client = site.client()
    csrf = site.login(client, "rad")
    first = client.post(f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": "normal"})
    assert first.status_code == 303
    before = _state(site)
    again = client.post(f"/review/cases/{case.case_id}/review", data={"csrf": csrf, "label": "pneumonia"})
    assert again.status_code == 409 and _state(site) == before
    # another reader may review it; the training example stays the first reader's
    other = site.client()
    csrf2 = site.login(other, "rad2")
    second = other.post(f"/review/cases/{case.case_id}/review", data={"csrf": csrf2, "label": "pneumonia"})
    assert second.status_code == 303
    stored = ReviewLog(site.ws.reviews_log).read()
    assert [(r.reader, r.reader_said, r.feedback) for r in stored] == [
        ("rad", "normal", "written"),
        ("rad2", "pneumonia", "case_already_in_inbox"),
    ]
    assert sorted(p.name for p in site.inbox.rglob("*")) == sorted(
        ["normal", f"review-{case.case_id}.png", f"review-{case.case_id}.provenance.json"]
    )


def test_every_page_answer_forbids_framing_and_caching(site):
    client = site.client()
    for answer in (client.get("/review/login"), client.get("/review/worklist")):
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
