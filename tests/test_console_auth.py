"""The console's logins, sessions, CSRF, roles and audit log over real HTTP (issue 16).

A real console server on 127.0.0.1 (tests/consolekit.py) over a SQLite county; the
browser tests are in test_console_browser.py.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from consolekit import (  # noqa: F401
    PASSWORDS,
    Console,
    console_fixture,
    console_template,
    no_change,
)

from county.console.auth import LOGIN_COOKIE, SESSION_COOKIE


def login_form(s: requests.Session, url: str) -> str:
    """GET the login page; return its form's CSRF token (the cookie is now in ``s``)."""
    r = s.get(url + "/console/login")
    assert r.status_code == 200
    m = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert m, r.text
    return m.group(1)


def log_in(console: Console, name: str, password: str, **extra: Any) -> requests.Response:
    s = requests.Session()
    token = login_form(s, console.url)
    r = s.post(
        console.url + "/console/login",
        data={"csrf": token, "name": name, "password": password, **extra},
        allow_redirects=False,
    )
    r.session = s  # type: ignore[attr-defined]
    return r


def test_each_role_logs_in_and_sees_home(console: Console) -> None:
    for role in ("admin", "finance", "inspector"):
        r = log_in(console, role, PASSWORDS[role])
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/console"
        cookie = r.headers["set-cookie"]
        assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        home = r.session.get(console.url + "/console")  # type: ignore[attr-defined]
        assert home.status_code == 200
        assert f'data-role="{role}"' in home.text
    assert [x["user"] for x in console.audit_rows("login")] == ["inspector", "finance", "admin"]


def test_wrong_password_one_line_no_hint(console: Console) -> None:
    wrong = log_in(console, "admin", "not-the-password")
    unknown = log_in(console, "nobody", "not-the-password")
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert "用户名或密码错误" in r.text
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert {x["user"] for x in console.audit_rows("login.failed")} == {"admin", "nobody"}


def test_login_without_its_csrf_is_403(console: Console) -> None:
    s = requests.Session()
    login_form(s, console.url)
    for data in (
        {"name": "admin", "password": PASSWORDS["admin"]},
        {"name": "admin", "password": PASSWORDS["admin"], "csrf": "forged"},
    ):
        r = s.post(console.url + "/console/login", data=data, allow_redirects=False)
        assert r.status_code == 403
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert LOGIN_COOKIE in s.cookies
    assert console.audit_rows("login") == []
