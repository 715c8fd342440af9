"""The review pages: a FastAPI sub-application that ``medimg serve`` mounts under ``/review``.

Pages (server-rendered Jinja2 templates in ``medimg/templates/review/``, autoescaped; no JavaScript):

* ``GET /review/login``, ``POST /review/login``: the login form (user store :mod:`medimg.users`), and
  ``POST /review/logout``;
* ``GET /review/worklist?show=to_review|reviewed|disagreements|all&version=N``: the cases;
* ``GET /review/cases/{case_id}``: the image with its Grad-CAM overlay (a checkbox shows or hides it), the
  probabilities, decision, threshold and model; the review form. ``.../image.png``, ``.../gradcam.png``: the
  pictures. ``POST /review/cases/{case_id}/review``: confirm or correct the label, with a comment;
* ``GET /review/admin``, ``POST /review/admin/promote``, ``POST /review/admin/rollback``: the model versions,
  promotion and rollback with a reason through :mod:`medimg.promotion` (admin only);
* ``GET /review/monitoring``, ``GET /review/monitoring/plots/{name}``: the latest monitoring report.

Sessions (:mod:`medimg.review.sessions`): a successful login sets the cookie ``medimg_session`` (HttpOnly,
SameSite=Strict, Path=/review, Secure when ``review.secure_cookie``, Max-Age the session's lifetime). Without
a live session a page (GET) answers 303 to the login page, a POST 401; nothing else answers. Every POST
carries the session's CSRF token in the form field ``csrf``: missing or wrong, 403 and nothing changes. The
login form carries a token of its own, matched against the ``medimg_login_csrf`` cookie set with the form
(a login from another site is refused, 403). Roles: ``radiologist`` and ``admin`` use the pages (a
``service`` login gets 403); only ``admin`` promotes and rolls back (a radiologist gets 403 and nothing
changes). A user removed from the store loses their sessions at the next request.

Failed logins (wrong password or unknown name) are limited per user name and per client address
(:mod:`medimg.review.login_limit`, ``review.login_max_failures`` in ``review.login_window_seconds``: 429
without checking the password) and counted in the service's metrics (``medimg_review_logins_total{outcome}``).

Statuses: 404 for an unknown or malformed case id, 409 for a second review of a case by the same reader and
for a refused promotion or rollback, 422 for a label that is not one of the model's classes, a comment over
:data:`~medimg.review.reviews.MAX_COMMENT_CHARS` characters or an empty reason. Every answer is ``no-store``
with a Content-Security-Policy that loads nothing from elsewhere and forbids framing.

Privacy: pages show pseudonyms, the model's outputs and the pixels, never a DICOM tag value.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry, Counter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medimg import audit, registry
from medimg.config import Params
from medimg.data import deid
from medimg.rendering import render
from medimg.review import feedback, worklist
from medimg.review.cases import Case, CaseStore
from medimg.review.login_limit import LoginLimiter
from medimg.review.overlay import OverlayMaker
from medimg.review.reviews import MAX_COMMENT_CHARS, AlreadyReviewed, Review, ReviewLog, now_iso
from medimg.review.sessions import Session, SessionStore
from medimg.serving.loaded_model import ModelHolder
from medimg.users import User, UserStore
from medimg.workspace import Workspace

log = logging.getLogger(__name__)

PREFIX = "/review"
SESSION_COOKIE = "medimg_session"
LOGIN_CSRF_COOKIE = "medimg_login_csrf"
PAGE_ROLES = ("radiologist", "admin")
#: Headers of every answer of the pages.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
#: What a monitoring plot may be called (files the monitoring run writes, :mod:`medimg.monitoring.run`).
PLOT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class Viewer:
    """The logged-in user of a request: ``name``, ``role``, and the ``session`` (its CSRF token)."""

    name: str
    role: str
    session: Session

    @property
    def is_admin(self) -> bool:
        """True for the ``admin`` role."""
        return self.role == "admin"


class PageError(Exception):
    """An HTML error page with ``status``; ``location`` makes it a 303 redirect instead."""

    def __init__(self, status: int, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.location = location


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [
                    (k.lower().encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k.lower().encode() not in present
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with)


def safe_next(target: str | None) -> str:
    """``target`` when it is a path of the pages (no scheme, no host, no ``//``), else the worklist."""
    default = f"{PREFIX}/worklist"
    if not target or not target.startswith(f"{PREFIX}/") or "//" in target or "\\" in target:
        return default
    return target


def reader_pseudonym(name: str, secret: bytes | None) -> str | None:
    """The reader's keyed pseudonym (:func:`medimg.data.deid.pseudonym`, kind ``reader``); None without a key."""
    return deid.pseudonym(name, secret, "reader") if secret is not None else None


@dataclass(frozen=True)
class _Pages:
    """What the dependencies of the pages read (``app.state.pages``)."""

    sessions: SessionStore
    users: UserStore


def _pages(request: Request) -> _Pages:
    return request.app.state.pages


def _viewer(request: Request) -> Viewer | None:
    pages = _pages(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    session = pages.sessions.get(session_id)
    if session is None:
        return None
    user = pages.users.get(session.user)
    if user is None:  # removed since the login: the session ends
        pages.sessions.delete(session_id)
        return None
    if user.role not in PAGE_ROLES:
        raise PageError(403, f"the role {user.role!r} cannot use the review pages")
    return Viewer(user.name, user.role, session)


def page_viewer(request: Request) -> Viewer:
    """Dependency of the GET pages: the logged-in viewer, or 303 to the login page (:class:`PageError`)."""
    viewer = _viewer(request)
    if viewer is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise PageError(303, "login required", location=f"{PREFIX}/login?next={quote(target, safe='')}")
    return viewer


def post_viewer(request: Request) -> Viewer:
    """Dependency of the POSTs: the logged-in viewer, or 401 (:class:`PageError`)."""
    viewer = _viewer(request)
    if viewer is None:
        raise PageError(401, "login required: your session has ended or you are not logged in")
    return viewer


PageViewer = Annotated[Viewer, Depends(page_viewer)]
PostViewer = Annotated[Viewer, Depends(post_viewer)]
FormText = Annotated[str, Form()]


def check_csrf(viewer: Viewer, token: str) -> None:
    """:class:`PageError` 403 unless ``token`` is the viewer's session's CSRF token."""
    if not SessionStore.csrf_ok(viewer.session, token):
        raise PageError(403, "the form's CSRF token is missing or wrong: nothing was changed")


def need_admin(viewer: Viewer) -> None:
    """:class:`PageError` 403 unless the viewer is an admin."""
    if not viewer.is_admin:
        raise PageError(403, "only an admin can promote or roll back a model: nothing was changed")


def create_review_app(
    params: Params,
    ws: Workspace,
    users: UserStore,
    holder: ModelHolder,
    *,
    secret: bytes | None = None,
    metrics_registry: CollectorRegistry | None = None,
    sessions: SessionStore | None = None,
    limiter: LoginLimiter | None = None,
) -> FastAPI:
    """The review sub-application (module docstring), to mount under :data:`PREFIX`.

    ``params``: ``review.*`` (sessions, login limit, worklist size), ``data.inbox`` (where reviews go;
    none: reviews are kept but feed nothing) and ``registry.model_name``; ``ws``: cases, reviews, sessions,
    the audit log, the monitoring report and the runs' weights; ``users``: the logins; ``holder``: the model
    in service (shown); ``secret``: the pseudonymisation key (reader pseudonyms; without it no example is
    written to the inbox); ``metrics_registry``: where the login counter goes (the service's); ``sessions``,
    ``limiter``: made from ``params`` when not given (tests give their own clocks).
    """
    cfg = params.review
    sessions = sessions or SessionStore(ws.sessions_db, cfg.session_minutes * 60, cfg.idle_minutes * 60)
    limiter = limiter or LoginLimiter(cfg.login_max_failures, cfg.login_window_seconds)
    cases = CaseStore(ws.cases)
    reviews = ReviewLog(ws.reviews_log)
    overlays = OverlayMaker(ws, cases)
    inbox = params.data.resolve_path(params.data.inbox)
    model_name = params.registry.model_name
    logins = Counter(
        "medimg_review_logins",
        "review page logins by outcome (success, wrong_password, rate_limited, csrf_refused)",
        ("outcome",),
        registry=metrics_registry or CollectorRegistry(),
    )
    if inbox is None:
        log.warning("review: data.inbox is not set: reviews are kept but feed no training data")
    elif params.data.source not in ("image_folder", "dicom_folder"):
        log.warning("review: data.source %s does not ingest data.inbox: reviewed images wait there", params.data.source)
    if secret is None:
        log.warning("review: no pseudonymisation key: reviews write no training examples (no reader pseudonym)")

    app = FastAPI(title="medimg review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pages = _Pages(sessions, users)
    app.add_middleware(_SecurityHeaders)

    def page(
        request: Request, template: str, status: int = 200, viewer: Viewer | None = None, **context: Any
    ) -> HTMLResponse:
        html = render(
            f"review/{template}",
            viewer=viewer,
            prefix=PREFIX,
            model_name=model_name,
            serving=holder.current(),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        if exc.location is not None:
            return RedirectResponse(exc.location, status_code=303)
        return page(request, "error.html.j2", exc.status, viewer=None, code=exc.status, message=str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return page(
            request, "error.html.j2", exc.status_code, viewer=None, code=exc.status_code, message=str(exc.detail)
        )

    def case_or_404(case_id: str) -> Case:
        case = cases.get(case_id)
        if case is None:
            raise PageError(404, "no such case")
        return case

    # ------------------------------------------------------------------ login

    def login_form(request: Request, status: int = 200, error: str | None = None, next_: str | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = page(request, "login.html.j2", status, csrf=token, error=error, next=safe_next(next_))
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            max_age=3600,
            path=f"{PREFIX}/login",
            secure=cfg.secure_cookie,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.get("/login")
    def login_page(request: Request, next: str | None = None) -> Response:
        return login_form(request, next_=next)

    @app.post("/login")
    def login(
        request: Request,
        username: FormText = "",
        password: FormText = "",
        csrf: FormText = "",
        next: FormText = "",
    ) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
        if not csrf or not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
            logins.labels(outcome="csrf_refused").inc()
            raise PageError(403, "the login form's token is missing or wrong: reload the login page")
        address = request.client.host if request.client is not None else "unknown"
        if limiter.blocked(username, address):
            logins.labels(outcome="rate_limited").inc()
            log.warning("review: login refused: too many failed logins for this name or address")
            return login_form(request, 429, "too many failed logins: wait a few minutes and try again", next)
        user: User | None = users.verify(username, password) if username and password else None
        if user is None:
            limiter.failed(username, address)
            logins.labels(outcome="wrong_password").inc()
            return login_form(request, 401, "wrong user name or password", next)
        if user.role not in PAGE_ROLES:
            raise PageError(403, f"the role {user.role!r} cannot use the review pages")
        limiter.succeeded(username)
        logins.labels(outcome="success").inc()
        sessions.delete(request.cookies.get(SESSION_COOKIE))  # never keep a session id from before the login
        sessions.purge()  # ended sessions nobody looks up again
        session_id, _ = sessions.create(user.name)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(cfg.session_minutes * 60),
            path=PREFIX,
            secure=cfg.secure_cookie,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
        return response

    @app.post("/logout")
    def logout(request: Request, viewer: PostViewer, csrf: FormText = "") -> Response:
        check_csrf(viewer, csrf)
        sessions.delete(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # ------------------------------------------------------------------ worklist and cases

    @app.get("/")
    def home(viewer: PageViewer) -> Response:
        return RedirectResponse(f"{PREFIX}/worklist", status_code=303)

    @app.get("/worklist")
    def worklist_page(
        request: Request, viewer: PageViewer, show: str = "to_review", version: str | None = None
    ) -> Response:
        if show not in worklist.SHOWS:
            raise PageError(422, f"unknown filter {show!r}; filters: {', '.join(worklist.SHOWS)}")
        every = cases.all()
        listed = worklist.rows(
            every,
            reviews.read(),
            viewer.name,
            cast(worklist.Show, show),  # checked against worklist.SHOWS above
            version or None,
            cfg.worklist_limit,
        )
        return page(
            request,
            "worklist.html.j2",
            viewer=viewer,
            rows=listed,
            show=show,
            shows=worklist.SHOWS,
            version=version or "",
            versions=worklist.versions(every),
            n_cases=len(every),
        )

    @app.get("/cases/{case_id}")
    def case_page(request: Request, case_id: str, viewer: PageViewer, reviewed: int = 0) -> Response:
        case = case_or_404(case_id)
        overlay = overlays.overlay(case)
        its_reviews = reviews.of_case(case_id)
        return page(
            request,
            "case.html.j2",
            viewer=viewer,
            case=case,
            probabilities=list(zip(case.class_names, case.class_probabilities, strict=True)),
            overlay=overlay,
            reviews=its_reviews,
            mine=next((r for r in its_reviews if r.reader == viewer.name), None),
            just_reviewed=bool(reviewed),
            max_comment=MAX_COMMENT_CHARS,
        )

    @app.get("/cases/{case_id}/image.png")
    def case_image(case_id: str, viewer: PageViewer) -> Response:
        data = cases.image(case_id)
        if data is None:
            raise PageError(404, "no such case")
        return Response(data, media_type="image/png")

    @app.get("/cases/{case_id}/gradcam.png")
    def case_overlay(case_id: str, viewer: PageViewer) -> Response:
        overlay = overlays.overlay(case_or_404(case_id))
        if overlay.png is None:
            raise PageError(404, overlay.reason or "no overlay")
        return Response(overlay.png, media_type="image/png")

    @app.post("/cases/{case_id}/review")
    def review_case(
        request: Request,
        case_id: str,
        viewer: PostViewer,
        csrf: FormText = "",
        label: FormText = "",
        comment: FormText = "",
    ) -> Response:
        check_csrf(viewer, csrf)
        case = case_or_404(case_id)
        if label not in case.class_names:
            raise PageError(422, f"the label must be one of the model's classes: {', '.join(case.class_names)}")
        comment = comment.strip()
        if len(comment) > MAX_COMMENT_CHARS:
            raise PageError(422, f"the comment has {len(comment)} characters; at most {MAX_COMMENT_CHARS}")
        review = Review(
            case_id=case.case_id,
            reader=viewer.name,
            reader_pseudonym=reader_pseudonym(viewer.name, secret),
            time=now_iso(),
            model_name=case.model_name,
            model_version=case.model_version,
            onnx_sha256=case.onnx_sha256,
            model_said=case.predicted_class,
            model_abnormal=case.abnormal,
            p_abnormal=case.p_abnormal,
            reader_said=label,
            reader_abnormal=case.is_abnormal_class(label),
            agrees=label == case.predicted_class,
            comment=comment,
        )

        def feed(stored: Review) -> tuple[str, str] | str:
            if inbox is None:
                return "no_inbox"
            if stored.reader_pseudonym is None:
                return "no_pseudonymisation_key"
            image = cases.image(case.case_id)
            if image is None:
                return "image_missing"
            example = feedback.write_example(inbox, case, image, stored)
            return example.rel, example.sha256

        try:
            stored = reviews.add(review, feed)
        except AlreadyReviewed:
            raise PageError(409, "you have already reviewed this case: nothing was changed") from None
        log.info(
            "review: case %s v%s: model %s, reader %s (%s), feedback %s",
            case.case_id,
            case.model_version,
            case.predicted_class,
            label,
            "agrees" if stored.agrees else "disagrees",
            stored.feedback,
        )
        return RedirectResponse(f"{PREFIX}/cases/{case.case_id}?reviewed=1", status_code=303)

    # ------------------------------------------------------------------ admin: promote and roll back

    @app.get("/admin")
    def admin_page(request: Request, viewer: PageViewer, done: str | None = None) -> Response:
        if not viewer.is_admin:
            raise PageError(403, "only an admin can see the model administration page")
        return page(
            request,
            "admin.html.j2",
            viewer=viewer,
            versions=registry.versions(model_name),
            events=list(reversed(audit.read(ws.audit_log)))[:20],
            done=done,
        )

    @app.post("/admin/promote")
    def admin_promote(
        viewer: PostViewer,
        csrf: FormText = "",
        version: FormText = "",
        reason: FormText = "",
        force: FormText = "",
    ) -> Response:
        check_csrf(viewer, csrf)
        need_admin(viewer)
        if not reason.strip() or not version.strip():
            raise PageError(422, "a promotion needs a version and a reason (it goes into the audit log)")
        # here: promotion moves the alias through MLflow, imported only when an admin acts
        from medimg.promotion import PromotionRefused, promote

        try:
            entry = promote(params, ws, version.strip(), reason, force=force == "yes", who=viewer.name)
        except PromotionRefused as err:
            raise PageError(409, f"promotion refused: {err}") from None
        return RedirectResponse(f"{PREFIX}/admin?done=promoted-v{entry['version']}", status_code=303)

    @app.post("/admin/rollback")
    def admin_rollback(viewer: PostViewer, csrf: FormText = "", reason: FormText = "") -> Response:
        check_csrf(viewer, csrf)
        need_admin(viewer)
        if not reason.strip():
            raise PageError(422, "a rollback needs a reason (it goes into the audit log)")
        # here: promotion moves the alias through MLflow, imported only when an admin acts
        from medimg.promotion import PromotionRefused, rollback

        try:
            entry = rollback(params, ws, reason, who=viewer.name)
        except PromotionRefused as err:
            raise PageError(409, f"rollback refused: {err}") from None
        return RedirectResponse(f"{PREFIX}/admin?done=rolled-back-to-v{entry['version']}", status_code=303)

    # ------------------------------------------------------------------ monitoring

    @app.get("/monitoring")
    def monitoring_page(request: Request, viewer: PageViewer) -> Response:
        # here: the report's reader, for this page only
        from medimg.monitoring.report import read_report

        report = read_report(ws.monitoring)
        return page(request, "monitoring.html.j2", viewer=viewer, report=report)

    @app.get("/monitoring/plots/{name}")
    def monitoring_plot(name: str, viewer: PageViewer) -> Response:
        if not name.endswith(".png") or not set(name) <= PLOT_NAME_CHARS or name.startswith("."):
            raise PageError(404, "no such plot")
        path = Path(ws.monitoring) / "plots" / name
        if not path.is_file():
            raise PageError(404, "no such plot")
        return Response(path.read_bytes(), media_type="image/png")

    return app
