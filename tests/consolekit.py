"""The web console under test (issue 16): a real console server on 127.0.0.1 over a
temporary county, one user per role, and logged-in Chromium pages.

Fixtures live here (not in conftest.py); a test module imports the ones it uses:

    from consolekit import (  # noqa: F401
        console_fixture, console_template_fixture, role_page_fixture)

(fixture functions named ``*_fixture``, registered under the names below):

- ``console``: a ``Console`` (server running, its ``clock`` under the test's control,
  users ``admin``, ``finance`` and ``inspector`` with the passwords in PASSWORDS). SQLite
  by default; parametrise it indirectly with "postgresql" (``ON_EACH_BACKEND``) for a
  fresh PostgreSQL county from tests/pgkit.py.
- ``role_page``: a function ``role_page(role, lang="zh")`` giving a Playwright page at
  1366x768, already logged in as that role (the session cookie is made directly in the
  database, not by typing: tests of the login form type).

``check_page(page)`` asserts what every console page must satisfy: no horizontal scroll
at its viewport, no untranslated key (⟦key⟧), and some text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from argon2 import PasswordHasher
from countykit import T0_MS, County, copy_county, make_county
from sqlalchemy import insert

from county.console import users
from county.console.app import ConsoleConfig, ConsoleServer
from county.console.auth import SESSION_COOKIE, new_token, token_hash
from county.db.schema import console_sessions

# The tests' password hasher: argon2id as in production, at a cost a loaded 2-core machine
# answers in milliseconds (the default takes 0.7 s a hash there; a stored hash names its
# own cost, so verifying works the same).
users.HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

ROLES = ("admin", "finance", "inspector")
PASSWORDS = {role: f"{role}-pass-Xy7q" for role in ROLES}
VIEWPORT = {"width": 1366, "height": 768}
ON_EACH_BACKEND = pytest.mark.parametrize("console", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Clock:
    """The console's clock (ConsoleConfig.now_ms): starts at T0_MS, moves when told."""

    now: int = T0_MS

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@dataclass
class Console:
    county: County
    server: ConsoleServer
    clock: Clock
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def db(self) -> Any:
        return self.server.app.state.db

    @property
    def config(self) -> ConsoleConfig:
        return self.server.app.state.config  # type: ignore[no-any-return]

    def session_token(self, name: str) -> str:
        """A live session of ``name`` made directly in the database; its cookie value."""
        token = new_token()
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(
                insert(console_sessions).values(
                    token_hash=token_hash(token),
                    user_name=name,
                    created_ms=now,
                    expires_ms=now + self.config.idle_ms,
                    csrf=new_token(),
                )
            )
        return token

    def http(self, role: str | None = None) -> requests.Session:
        """A requests session, logged in as ``role`` (by cookie) when given."""
        s = requests.Session()
        if role is not None:
            s.cookies.set(SESSION_COOKIE, self.session_token(role), path="/console")
        return s

    def audit_rows(self, action: str | None = None) -> list[dict[str, Any]]:
        from county.console import audit

        with self.db.read() as conn:
            return audit.page(conn, audit.AuditFilter(action=action), 10_000)


def add_user(db: Any, name: str, role: str, password: str) -> None:
    """A console user with a password of their own (not one-time)."""
    with db.write() as conn:
        users.add_user(conn, name, role, T0_MS)
        users.set_password(conn, name, password)


def start_console(
    root: Path, database_url: str | None = None, template: Path | None = None, **config: Any
) -> Iterator[Console]:
    """A console over a new county in ``root`` (a copy of ``template``, a county data
    directory made before, when given), with the three users."""
    if template is not None:
        copy_county(template, root / "county")
        county = County(root / "county", database_url=database_url)
    else:
        county = make_county(root, database_url=database_url)
    yield from serve_console(county, Clock(), **config)


def serve_console(county: County, clock: Clock, **config: Any) -> Iterator[Console]:
    """A console over ``county`` (its data directory and database) at ``clock``, with the
    three users."""
    cfg = ConsoleConfig(data=county.data, database_url=county.database_url, now_ms=clock, **config)
    server = ConsoleServer(cfg).start()
    try:
        for role in ROLES:
            add_user(server.app.state.db, role, role, PASSWORDS[role])
        yield Console(county, server, clock)
    finally:
        server.stop()


@pytest.fixture(scope="session", name="console_template")
def console_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A county data directory (CA, keys, SQLite database at the migrations' head) made
    once per test process; each console copies it."""
    from county.db import Database
    from county.db.migrations import prepare

    county = make_county(tmp_path_factory.mktemp("console-template"))
    db = Database(f"sqlite:///{county.data / 'county.sqlite'}")
    try:
        prepare(db)
    finally:
        db.close()
    return county.data


@pytest.fixture(name="console")
def console_fixture(
    tmp_path: Path, request: pytest.FixtureRequest, console_template: Path
) -> Iterator[Console]:
    url = None
    if getattr(request, "param", "sqlite") == "postgresql":
        url = str(request.getfixturevalue("pg_county_url"))
    yield from start_console(tmp_path / "console", url, console_template)


@pytest.fixture(name="role_page")
def role_page_fixture(console: Console, browser: Any) -> Callable[..., Any]:
    def make(role: str, lang: str = "zh", path: str = "/console") -> Any:
        context = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
        host = console.server.host
        context.add_cookies(
            [
                {"name": SESSION_COOKIE, "value": console.session_token(role), "domain": host,
                 "path": "/console", "httpOnly": True, "sameSite": "Strict"},
                {"name": "console_lang", "value": lang, "domain": host, "path": "/"},
            ]
        )  # fmt: skip
        page = context.new_page()
        page.goto(console.url + path)
        return page

    return make


def check_page(page: Any) -> None:
    """No horizontal scroll, no untranslated key, some text."""
    width = page.evaluate("document.documentElement.scrollWidth")
    client = page.evaluate("document.documentElement.clientWidth")
    assert width <= client, f"{page.url}: horizontal scroll ({width} > {client})"
    text = page.inner_text("body")
    assert "⟦" not in text, f"{page.url}: untranslated text: {text[text.index('⟦') :][:80]}"
    assert text.strip(), f"{page.url}: empty page"


@contextlib.contextmanager
def no_change(console: Console) -> Iterator[None]:
    """Assert the block leaves the county database's change-bearing tables as they were
    (the audit log aside, which records refusals)."""
    before = _snapshot(console)
    yield
    assert _snapshot(console) == before, "a refused request changed the database"


def _snapshot(console: Console) -> dict[str, list[Any]]:
    from county.db import schema

    out = {}
    with console.db.read() as conn:
        for table in schema.metadata.sorted_tables:
            if table.name in ("audit_log", "console_sessions"):
                continue
            out[table.name] = sorted(map(tuple, conn.execute(table.select())), key=repr)
    return out
