"""The console's web plumbing: its state, the page templates, login/logout and the guard every request passes.

The guard (`console_guard`) is one middleware on the door's endpoint app:
- `/metrics` and `/healthz` pass untouched (the endpoint's own routes, counts only);
- every other page needs a session: a cookie (HttpOnly, SameSite=Strict, Secure under TLS)
  holding a random token the console keeps in memory, made by logging in with the local admin
  password (device/console/auth.py; none set: nobody can log in);
- every POST must come from this origin (the Origin header, when the browser sends one) and
  carry the session's CSRF token (form field `csrf` or header `X-CSRF-Token`);
- every response says: no caching, no framing, scripts and styles from here only (CSP).
Login attempts are slowed per address and overall (LoginLimiter), and the password check runs
off the event loop (scrypt is deliberately slow and memory-hard).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from blindgate.device.agent import Agent
from blindgate.device.faces import FaceAnalyzer
from blindgate.device.people import People
from blindgate.shared.config import DeviceConfig

from .auth import AdminPassword, ConsoleAuthError, LoginLimiter, Session, Sessions, csrf_ok
from .capture import CameraEnrollment
from .live import LiveView

HERE = Path(__file__).resolve().parent
MAX_FLASH_SESSIONS = 16
log = logging.getLogger("blindgate.device.console")
SESSION_COOKIE = "blindgate_session"
LOGIN_COOKIE = "blindgate_login"  # the login form's CSRF token (double submit: the form and this cookie agree)
UNGUARDED = ("/metrics", "/healthz")
PUBLIC = ("/login",)
LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
CSP = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Console:
    """Everything the console's pages share; one per agent."""

    agent: Agent
    config: DeviceConfig
    people: People
    live: LiveView
    sessions: Sessions
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    capture: CameraEnrollment | None = None
    templates: jinja2.Environment = field(default_factory=lambda: page_templates())
    flashes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    photo_analyzer: FaceAnalyzer | None = None  # for uploaded photos, made on first use (people_routes.py)
    photo_lock: threading.Lock = field(default_factory=threading.Lock)
    _password: tuple[float, AdminPassword | None] | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tls(self) -> bool:
        return bool(self.config.console.tls_cert)

    def password(self) -> AdminPassword | None:
        """The admin password as stored now (re-read when the file changes: `console-password` needs no restart)."""
        path = Path(self.config.state_dir) / "console_password.json"
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._password
        if cached is None or cached[0] != stamp:
            try:
                loaded = AdminPassword.load(self.config.state_dir)
            except ConsoleAuthError as exc:  # nobody logs in until it is set again; said once per change
                log.error("console: %s", exc)
                loaded = None
            cached = self._password = (stamp, loaded)
        return cached[1]

    def session_of(self, request: web.Request) -> Session | None:
        password = self.password()
        if password is None:
            return None
        return self.sessions.get(request.cookies.get(SESSION_COOKIE), password.fingerprint)

    def flash(self, request: web.Request, text: str, kind: str = "ok") -> None:
        """A message for the session's next page (after a POST's redirect)."""
        session = self.session_of(request)
        if session is not None:
            with self._guard:
                if len(self.flashes) > 4 * MAX_FLASH_SESSIONS:  # sessions that ended before reading theirs
                    self.flashes.clear()
                self.flashes.setdefault(session.token, []).append((kind, text))

    def take_flashes(self, session: Session | None) -> list[tuple[str, str]]:
        if session is None:
            return []
        with self._guard:
            return self.flashes.pop(session.token, [])

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        session = self.session_of(request)
        page = self.templates.get_template(template).render(
            door=self.config.device_id,
            site=self.config.site,
            csrf=session.csrf if session is not None else "",
            logged_in=session is not None,
            flashes=self.take_flashes(session),
            **context,
        )
        return web.Response(text=page, content_type="text/html", status=status)

    def audit(self, request: web.Request, action: str, **details: Any) -> None:
        """Every change made at the console goes into the door's audit log, with the address it came from."""
        self.agent.audit.write(kind="console", action=action, address=request.remote, **details)


CONSOLE = web.AppKey("console", Console)


def page_templates() -> jinja2.Environment:
    """The pages, autoescaped: names and reasons are user input and must never become markup."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["when"] = local_time
    return env


def local_time(value: object) -> str:
    """A time the cloud or the log gives (epoch seconds or ISO 8601) as local "YYYY-MM-DD HH:MM"; as given otherwise."""
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(float(value))
        else:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone()
    except (ValueError, OverflowError, OSError):
        return str(value or "?")
    return moment.strftime("%Y-%m-%d %H:%M")


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


# -- the guard -------------------------------------------------------------------------------------


def same_origin(request: web.Request) -> bool:
    """A POST from a page of this console (or a client that sends no Origin, e.g. curl, which has no cookies to abuse)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


@web.middleware
async def console_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in UNGUARDED:
        return await handler(request)
    console = console_of(request)
    if request.path.startswith("/static/"):
        return _secured(await handler(request), console, cache=True)
    if request.match_info.http_exception is not None:  # no such page (e.g. /favicon.ico): 404, never the login form
        return _secured(await handler(request), console)
    if request.method == "POST" and not same_origin(request):
        return _secured(web.Response(status=403, text="refused: this request did not come from the console's own pages"), console)
    session = console.session_of(request)
    if request.path not in PUBLIC:
        if session is None:
            if request.method == "GET" and not request.path.endswith((".json", ".jpg", ".csv")):
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
            return _secured(web.json_response({"error": "log in first"}, status=401), console)
        if request.method == "POST":
            submitted = request.headers.get("X-CSRF-Token") or (await request.post()).get("csrf")
            if not csrf_ok(session, submitted if isinstance(submitted, str) else None):
                return _secured(web.Response(status=403, text="refused: missing or wrong CSRF token; reload the page"), console)
    return _secured(await handler(request), console)


def _secured(response: web.StreamResponse, console: Console, cache: bool = False) -> web.StreamResponse:
    if not response.prepared:
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        headers.setdefault("Cache-Control", "private, max-age=300" if cache else "no-store")
        if console.tls:
            headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


# -- login / logout --------------------------------------------------------------------------------


def _local_target(target: str | None) -> str:
    """Where to go after logging in: a path of this console only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_page(request: web.Request) -> web.Response:
    console = console_of(request)
    if console.session_of(request) is not None:
        raise web.HTTPSeeOther("/")
    return _login_form(request, console, "", request.query.get("next"))


def _login_form(request: web.Request, console: Console, error: str, target: str | None, status: int = 200) -> web.Response:
    # One token per browser while its cookie lasts: a second tab (or a stray request) does not void the first form.
    token = request.cookies.get(LOGIN_COOKIE) or ""
    if not LOGIN_TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(24)
    no_password = console.password() is None
    response = console.render(
        request,
        "login.html",
        status=status,
        title="Log in",
        login_token=token,
        next=_local_target(target),
        error=error,
        no_password=no_password,
    )
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=console.tls, path="/login", max_age=900)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    form = await request.post()
    address = request.remote or "?"
    target = _text(form.get("next"))
    if not _same_token(request.cookies.get(LOGIN_COOKIE), _text(form.get("login_token"))):
        return _login_form(request, console, "The login form expired: try again.", target, status=403)
    wait = console.limiter.wait_s(address)
    if wait > 0:
        return _login_form(request, console, f"Too many failed attempts: wait {wait:.0f} s.", target, status=429)
    password = console.password()
    if password is None:
        return _login_form(request, console, "No admin password is set.", target, status=403)
    guess = _text(form.get("password")) or ""
    ok = await asyncio.get_running_loop().run_in_executor(None, password.verify, guess)
    if not ok:
        console.limiter.failed(address)
        console.audit(request, "login_failed")
        return _login_form(request, console, "Wrong password.", target, status=401)
    console.limiter.succeeded(address)
    session = console.sessions.create(password.fingerprint)
    console.audit(request, "login")
    response = web.HTTPSeeOther(_local_target(target))
    response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="Strict", secure=console.tls, path="/")
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    session = console.session_of(request)
    if session is not None:
        console.sessions.drop(session.token)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def _same_token(cookie: str | None, submitted: str | None) -> bool:
    """The login form's token matches its cookie (both present, compared in constant time)."""
    return bool(cookie) and bool(submitted) and hmac.compare_digest(str(cookie).encode(), str(submitted).encode())


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def add_auth_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static/", HERE / "static", append_version=False)


__all__ = [
    "CONSOLE",
    "Console",
    "ConsoleAuthError",
    "add_auth_routes",
    "console_guard",
    "console_of",
    "same_origin",
]
