"""The console application and its own listener (``canteen-county console``).

``create_console_app(ConsoleConfig(...))`` builds the FastAPI application: the routers
of the page modules in pages.PAGES, the package's static files at /console/static, the
language middleware (?lang=zh|en, remembered in a cookie), security headers, and the
answers to refusals (login page, 403, 404, 400, 503) as pages, never a 500 for a bad
request. ``ConsoleServer`` serves it with uvicorn on a socket of its own, plain HTTP on
127.0.0.1 by default or HTTPS with ``--tls-cert/--tls-key``; it never serves the
terminals' API and the terminals' server never serves it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from county.console import i18n
from county.console.auth import (
    PASSWORD_PATH,
    Forbidden,
    LoginRequired,
    MustChangePassword,
    check_login_csrf,
    is_csrf_check,
)
from county.console.pages import PAGES
from county.console.render import render
from county.db import Database, DatabaseUnavailable
from county.localtime import county_zone

STATIC = Path(__file__).parent / "static"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ConsoleConfig:
    """What the console needs: its database and the county's data directory, the clock
    (a callable, so tests move time), and the rules of sessions and logins."""

    data: Path | None = None
    database_url: str | None = None  # else DATA/county.sqlite
    db: Database | None = None  # an open database to use (the app does not close it)
    now_ms: Callable[[], int] = wall_clock_ms
    idle_ms: int = 30 * 60_000  # a session ends after 30 minutes without a request
    absolute_ms: int = 12 * 3_600_000  # and 12 hours after the login in any case
    login_failures: int = 5  # this many failed logins for a name within
    login_window_ms: int = 15 * 60_000  # this window lock the name for the window
    secure_cookies: bool = False  # Secure cookies even over plain HTTP (TLS in front)
    zone: dt.tzinfo = field(default_factory=county_zone)
    max_body_bytes: int = 64 * 2**20  # a larger request body is refused with 413


def _depends_on(dependant: Dependant, wanted: Callable[[Any], bool]) -> bool:
    """Whether ``dependant`` or one of its dependencies calls something ``wanted``."""
    return any(wanted(d.call) or _depends_on(d, wanted) for d in dependant.dependencies)


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)  # an included router
        if inner is not None:
            yield from _api_routes(inner.routes)


def check_routes(app: FastAPI) -> None:
    """Refuse an application where a route that changes things (POST, PUT, PATCH,
    DELETE) lacks a CSRF check (auth.py)."""

    def wanted(call: Any) -> bool:
        return is_csrf_check(call) or call is check_login_csrf

    for route in _api_routes(app.routes):
        unsafe = (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}
        if unsafe and not _depends_on(route.dependant, wanted):
            raise RuntimeError(f"console route {sorted(unsafe)} {route.path} has no CSRF check")


def open_database(config: ConsoleConfig) -> tuple[Database, bool]:
    """The config's database (and whether the app opened it), ready for this version."""
    from county.db.engine import database_url
    from county.db.migrations import prepare

    if config.db is not None:
        return config.db, False
    db = Database(database_url(config.database_url, config.data))
    try:
        prepare(db)
    except BaseException:
        db.close()
        raise
    return db, True


def create_console_app(config: ConsoleConfig) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    db, owned = open_database(config)
    app.state.config = config
    app.state.db = db
    app.state.engine = db.engine
    app.state.owns_db = owned

    for name in PAGES:
        module = importlib.import_module(f"county.console.pages.{name}")
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="static")
    check_routes(app)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/console", status_code=303)

    _handlers(app)

    @app.middleware("http")
    async def language_and_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        query = request.query_params.get("lang")
        cookie = request.cookies.get(i18n.LANG_COOKIE)
        request.state.lang = i18n.choose(query, cookie)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            response: Response = render(
                request, "error.html", message_key="error.too_large", status_code=413
            )
        elif length is None and request.method in ("POST", "PUT", "PATCH"):
            # A body without a length (chunked) could be of any size; browsers send one.
            response = render(
                request, "error.html", message_key="error.length_required", status_code=411
            )
        else:
            response = await call_next(request)
        if query in i18n.LANGUAGES and query != cookie:
            response.set_cookie(
                i18n.LANG_COOKIE, str(query), max_age=365 * 86400, path="/", samesite="lax"
            )
        headers = response.headers
        if request.url.path.startswith("/console/static/"):
            headers.setdefault("Cache-Control", "public, max-age=3600")
        else:
            headers.setdefault("Cache-Control", "no-store")
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        if request.url.scheme == "https":
            headers["Strict-Transport-Security"] = "max-age=31536000"
        headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        return response

    return app


def _user_or_none(request: Request) -> Any:
    session = getattr(request.state, "session", None)
    return None if session is None else session.user


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.method == "GET":
            target = request.url.path
            if request.url.query:
                target += "?" + request.url.query
        else:
            # A form sent with an expired session: back to the page it was on (login
            # checks it is a console page), never to the POST's own URL.
            referer = urlsplit(request.headers.get("referer", ""))
            same = referer.netloc == request.url.netloc
            target = (referer.path + ("?" + referer.query if referer.query else "")) if same else ""
        url = f"/console/login?why={exc.why}&next={quote(target, safe='')}"
        return RedirectResponse(url, status_code=303)

    @app.exception_handler(MustChangePassword)
    async def must_change(request: Request, exc: MustChangePassword) -> Response:
        return RedirectResponse(PASSWORD_PATH, status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return render(
            request, "error.html", user=_user_or_none(request), message_key=exc.key,
            status_code=403,
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        key = {404: "error.not_found", 413: "error.too_large"}.get(exc.status_code)
        if key is None:
            key = "error.bad_request"
        return render(
            request, "error.html", user=_user_or_none(request), message_key=key,
            why=str(exc.detail), status_code=exc.status_code,
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "?"
            parts.append(f"{where}: {err.get('msg', '')}")
        return render(
            request, "error.html", user=_user_or_none(request), message_key="error.bad_request",
            why="; ".join(parts), status_code=400,
        )  # fmt: skip

    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(request: Request, exc: DatabaseUnavailable) -> Response:
        return render(
            request, "error.html", user=_user_or_none(request),
            message_key="error.unavailable", status_code=503,
        )  # fmt: skip


class ConsoleServer:
    """uvicorn serving the console on a socket it binds itself (port 0: any free port)."""

    def __init__(
        self,
        config: ConsoleConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.app = create_console_app(config)
        self.tls = tls_cert is not None
        self.uvicorn_config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(self.uvicorn_config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        # Listening from here: the URL printed before uvicorn starts already connects
        # (connections wait in the backlog until it accepts them).
        self.sock.listen(2048)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self._close_db()

    def start(self, timeout: float = 10.0) -> ConsoleServer:
        """Serve in a background thread; return once it accepts connections."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
            name="county-console",
        )  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
        self._close_db()

    def _close_db(self) -> None:
        if self.app.state.owns_db:
            self.app.state.db.close()
