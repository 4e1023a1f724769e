"""Logins, sessions, roles and CSRF for the console (docs/console.md).

A session is an opaque random cookie (``console_session``: HttpOnly, SameSite=Strict,
path /console, Secure when served over TLS); the database keeps only its SHA-256 in
``console_sessions`` with the user, when it began, when it expires and its CSRF token.
It expires after ``idle_ms`` without a request (each request moves ``expires_ms``
forward, at most once a minute) and in any case ``absolute_ms`` after the login. Logout,
a password change, ``user disable`` and ``user reset`` delete it.

Page modules use these FastAPI dependencies:

- ``require_user``: any logged-in user (a ``User``: name, role); a visitor without a
  live session is sent to the login page (with a line saying the session expired when
  it did);
- ``require_role("admin")``, ``require_role("admin", "finance")``: the same, and a
  role outside the list gets 403;
- ``check_csrf`` on every POST that changes something: the form field ``csrf`` must
  equal the session's token, and the user must be an admin; either refusal is 403 with
  nothing changed. ``check_csrf_roles("admin", "finance")`` lets finance make a change
  too (never the inspector, who is read-only). ``check_own_csrf`` has no role rule, for
  what every user may do to their own account (log out, change the password).

app.py refuses to start when a POST route depends on neither, so no form can be added
without the check.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import delete, insert, select, update
from starlette.concurrency import run_in_threadpool

from county.console import audit
from county.console.users import ONE_TIME
from county.db.schema import console_sessions, users

SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"  # the login form's CSRF token (no session yet)
COOKIE_PATH = "/console"
PASSWORD_PATH = "/console/password"
# A session's expiry is moved forward only when it would gain more than this, so a
# user clicking around writes to the database about once a minute, not on every page.
TOUCH_STEP_MS = 60_000

READ_ONLY_ROLES = ("inspector",)


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def read_only(self) -> bool:
        return self.role in READ_ONLY_ROLES


@dataclass(frozen=True)
class Session:
    token_hash: bytes
    user: User
    csrf: str
    created_ms: int
    expires_ms: int
    one_time: bool  # the user holds a one-time password: only /console/password is open


class LoginRequired(Exception):
    """No live session: answered with the login page (app.py). ``why`` is "expired"
    when the request carried a session that has expired, else "required"."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Forbidden(Exception):
    """403 with the text of ``key``; nothing was changed."""

    def __init__(self, key: str = "error.forbidden") -> None:
        super().__init__(key)
        self.key = key


class MustChangePassword(Exception):
    """The user logged in with a one-time password: sent to /console/password."""


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _config(request: Request) -> Any:
    return request.app.state.config


def current_session(request: Request) -> Session | None:
    """The request's live session, or None (looked up once per request). An expired one
    is deleted and ``request.state.session_expired`` set."""
    if hasattr(request.state, "session"):
        return request.state.session  # type: ignore[no-any-return]
    request.state.session = None
    request.state.session_expired = False
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 200:
        return None
    config = _config(request)
    now = config.now_ms()
    digest = token_hash(token)
    with request.app.state.db.read() as conn:
        row = conn.execute(
            select(
                console_sessions.c.user_name,
                console_sessions.c.created_ms,
                console_sessions.c.expires_ms,
                console_sessions.c.csrf,
                users.c.role,
                users.c.password_hash,
                users.c.disabled_ms,
            )
            .join(users, users.c.name == console_sessions.c.user_name)
            .where(console_sessions.c.token_hash == digest)
        ).first()
    if row is None:
        return None
    # The absolute limit is checked against this process's rule too, so a shorter
    # --session-hours after a restart ends older sessions at once.
    ended = now >= row.expires_ms or now >= row.created_ms + config.absolute_ms
    if row.disabled_ms is not None or ended:
        request.state.session_expired = row.disabled_ms is None
        with request.app.state.db.write() as conn:
            conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == digest))
        return None
    expires = min(now + config.idle_ms, row.created_ms + config.absolute_ms)
    if expires - row.expires_ms > TOUCH_STEP_MS:
        with request.app.state.db.write() as conn:
            conn.execute(
                update(console_sessions)
                .where(console_sessions.c.token_hash == digest)
                .values(expires_ms=expires)
            )
    else:
        expires = row.expires_ms
    session = Session(
        digest,
        User(row.user_name, row.role),
        row.csrf,
        row.created_ms,
        expires,
        row.password_hash.startswith(ONE_TIME),
    )
    request.state.session = session
    return session


def _live(request: Request) -> Session:
    session = current_session(request)
    if session is None:
        raise LoginRequired("expired" if request.state.session_expired else "required")
    return session


def require_user(request: Request) -> User:
    """Any logged-in user (dependency)."""
    session = _live(request)
    if session.one_time and request.url.path != PASSWORD_PATH:
        raise MustChangePassword()
    return session.user


def require_role(*roles: str) -> Callable[[Request], User]:
    """A logged-in user with one of ``roles`` (dependency factory); else 403."""

    def dependency(request: Request) -> User:
        user = require_user(request)
        if user.role not in roles:
            raise Forbidden()
        return user

    dependency.__name__ = f"require_role_{'_'.join(roles)}"
    return dependency


async def _form_csrf(request: Request) -> str:
    try:
        form = await request.form()
    except Exception:  # not a form, or a malformed one: no token
        return ""
    value = form.get("csrf")
    return value if isinstance(value, str) else ""


def _same(a: str, b: str) -> bool:
    return bool(a) and hmac.compare_digest(a.encode(), b.encode())


async def check_own_csrf(request: Request) -> User:
    """A POST by a logged-in user on their own account: the form's ``csrf`` must be the
    session's (dependency); else 403."""
    session = await run_in_threadpool(_live, request)
    if not _same(await _form_csrf(request), session.csrf):
        raise Forbidden("error.csrf")
    return session.user


CHANGE_ROLES = ("admin",)


async def _check_change(request: Request, roles: tuple[str, ...]) -> User:
    user = await check_own_csrf(request)
    if request.state.session.one_time:
        raise MustChangePassword()
    if user.read_only or user.role not in roles:
        raise Forbidden()
    return user


async def check_csrf(request: Request) -> User:
    """A POST that changes something: the session's CSRF token, and the admin role
    (dependency); else 403 and nothing changed. An inspector is always refused; finance
    too, unless a page allows it with ``check_csrf_roles("admin", "finance")``."""
    return await _check_change(request, CHANGE_ROLES)


def check_csrf_roles(*roles: str) -> Callable[[Request], Any]:
    """``check_csrf`` for a change these roles may make (never the inspector)."""
    allowed = tuple(r for r in roles if r not in READ_ONLY_ROLES)

    async def dependency(request: Request) -> User:
        return await _check_change(request, allowed)

    dependency.__name__ = f"check_csrf_{'_'.join(allowed)}"
    dependency.console_csrf = True  # type: ignore[attr-defined]
    return dependency


CSRF_DEPENDENCIES = (check_csrf, check_own_csrf)


def is_csrf_check(call: Any) -> bool:
    """Whether a dependency is one of the CSRF checks (app.py's start-up rule)."""
    return call in CSRF_DEPENDENCIES or bool(getattr(call, "console_csrf", False))


async def check_login_csrf(request: Request) -> None:
    """The login form's token: the form field must equal the ``console_login`` cookie set
    with the form (a page elsewhere cannot log a browser in as someone else)."""
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not _same(await _form_csrf(request), cookie):
        raise Forbidden("error.csrf")


# ---- logging in ----


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    token: str = ""
    why: str = ""  # "wrong", "locked", "disabled"
    retry_after_ms: int = 0


def throttled(conn: Any, config: Any, name: str, now: int) -> int:
    """Milliseconds until ``name`` may try again, or 0: ``login_failures`` failed logins
    within ``login_window_ms`` with no successful one after them lock the name until
    ``login_window_ms`` after the ``login_failures``-th most recent of them."""
    failures = audit.failures_since(conn, name, now - config.login_window_ms)
    if len(failures) < config.login_failures:
        return 0
    return max(0, int(failures[config.login_failures - 1] + config.login_window_ms - now))


def log_in(request: Request, name: str, password: str, client: str) -> LoginResult:
    """Check ``name`` and ``password``; on success open a session and return its token.
    Every outcome is in the audit log."""
    from county.console.users import get_user, verify_password

    config = _config(request)
    db = request.app.state.db
    name = name.strip()[:64]
    now = config.now_ms()
    with db.read() as conn:
        wait_ms = throttled(conn, config, name, now)
        row = get_user(conn, name) if not wait_ms else None
    if wait_ms:
        with db.write() as conn:
            audit.record(
                conn, user=name, action="login.refused", target=client,
                detail="too many failed logins", at_ms=now,
            )  # fmt: skip
        return LoginResult(False, why="locked", retry_after_ms=wait_ms)
    if not verify_password(row, password):
        with db.write() as conn:
            audit.record(conn, user=name, action="login.failed", target=client, at_ms=now)
        return LoginResult(False, why="wrong")
    assert row is not None
    if row.disabled:
        with db.write() as conn:
            audit.record(
                conn, user=name, action="login.refused", target=client,
                detail="user disabled", at_ms=now,
            )  # fmt: skip
        return LoginResult(False, why="disabled")
    token = new_token()
    with db.write() as conn:
        # Housekeeping: sessions that expired without a logout.
        conn.execute(delete(console_sessions).where(console_sessions.c.expires_ms <= now))
        conn.execute(
            insert(console_sessions).values(
                token_hash=token_hash(token),
                user_name=row.name,
                created_ms=now,
                expires_ms=min(now + config.idle_ms, now + config.absolute_ms),
                csrf=new_token(),
            )
        )
        audit.record(
            conn, user=row.name, action="login", target=client,
            detail="one-time password" if row.one_time else "", at_ms=now,
        )  # fmt: skip
    return LoginResult(True, token=token)


def log_out(request: Request, session: Session) -> None:
    config = _config(request)
    with request.app.state.db.write() as conn:
        conn.execute(
            delete(console_sessions).where(console_sessions.c.token_hash == session.token_hash)
        )
        audit.record(conn, user=session.user.name, action="logout", at_ms=config.now_ms())


def secure(request: Request) -> bool:
    """Whether cookies get the Secure flag: served over TLS, or told TLS is in front."""
    return bool(request.url.scheme == "https" or _config(request).secure_cookies)


def set_session_cookie(request: Request, response: Any, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def clear_session_cookie(request: Request, response: Any) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure(request)
    )
