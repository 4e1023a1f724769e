"""The console's logins, sessions, CSRF, roles and audit log over real HTTP (issue 16).

A real console server on 127.0.0.1 (tests/consolekit.py) over a SQLite county; the
browser tests are in test_console_browser.py.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from consolekit import (  # noqa: F401
    ON_EACH_BACKEND,
    PASSWORDS,
    Console,
    console_fixture,
    console_template_fixture,
    no_change,
    start_console,
)
from countykit import County, copy_county, provision_terminal
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from county.console import audit
from county.console.app import ConsoleServer
from county.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    User,
    check_csrf,
    check_csrf_roles,
)


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


@ON_EACH_BACKEND
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


# ---- helpers over a logged-in requests session ----


def csrf_of(s: requests.Session, url: str) -> str:
    """The session's CSRF token, from a page's logout form."""
    r = s.get(url + "/console/password")
    m = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert m, r.text
    return m.group(1)


def go(s: requests.Session, url: str, path: str) -> requests.Response:
    return s.get(url + path, allow_redirects=False)


def logged_in(console: Console, role: str) -> requests.Session:
    r = log_in(console, role, PASSWORDS[role])
    assert r.status_code == 303
    return r.session  # type: ignore[attr-defined, no-any-return]


# ---- sessions ----


@ON_EACH_BACKEND
def test_idle_session_expires_to_the_login_page(console: Console) -> None:
    s = logged_in(console, "finance")
    console.clock.advance(console.config.idle_ms - 120_000)
    assert go(s, console.url, "/console").status_code == 200  # moves the expiry on
    console.clock.advance(console.config.idle_ms - 60_000)
    assert go(s, console.url, "/console").status_code == 200  # still within idle of the last
    console.clock.advance(console.config.idle_ms + 1)
    r = go(s, console.url, "/console/audit?user=x")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login?why=expired&next=")
    page = s.get(console.url + r.headers["location"])
    assert page.status_code == 200
    assert "登录已过期，请重新登录" in page.text
    # The expired session is gone; the next request is simply not logged in.
    assert (
        go(s, console.url, "/console").headers["location"].startswith("/console/login?why=required")
    )


def test_absolute_expiry_however_busy(console: Console) -> None:
    s = logged_in(console, "admin")
    step = console.config.idle_ms - 120_000
    end = console.clock.now + console.config.absolute_ms
    while console.clock.now + step < end:
        console.clock.advance(step)
        assert go(s, console.url, "/console").status_code == 200
    console.clock.now = end
    r = go(s, console.url, "/console")
    assert r.status_code == 303 and "why=expired" in r.headers["location"]
    # A shorter rule (a restart with a smaller --session-hours) ends older sessions at once.
    s = logged_in(console, "admin")
    console.clock.advance(20 * 60_000)
    assert go(s, console.url, "/console").status_code == 200
    console.config.absolute_ms = 20 * 60_000
    r = go(s, console.url, "/console")
    assert r.status_code == 303 and "why=expired" in r.headers["location"]


def test_expired_session_post_changes_nothing(console: Console) -> None:
    s = logged_in(console, "admin")
    token = csrf_of(s, console.url)
    console.clock.advance(console.config.absolute_ms)
    with no_change(console):
        r = s.post(
            console.url + "/console/password",
            data={
                "csrf": token,
                "current": PASSWORDS["admin"],
                "new": "a-valid-new-password",
                "repeat": "a-valid-new-password",
            },
            allow_redirects=False,
        )
    assert r.status_code == 303 and "why=expired" in r.headers["location"]
    assert r.headers["location"].endswith("&next=")  # never back to a POST's URL
    assert log_in(console, "admin", PASSWORDS["admin"]).status_code == 303
    # From a page: back to that page after the login.
    s = logged_in(console, "admin")
    console.clock.advance(console.config.absolute_ms)
    r = s.post(
        console.url + "/console/logout",
        data={"csrf": "whatever"},
        headers={"Referer": console.url + "/console/audit?user=a"},
        allow_redirects=False,
    )
    assert r.headers["location"].endswith("&next=%2Fconsole%2Faudit%3Fuser%3Da")


def test_logout_deletes_the_session(console: Console) -> None:
    s = logged_in(console, "inspector")
    old = s.cookies.get(SESSION_COOKIE)
    token = csrf_of(s, console.url)
    r = s.post(console.url + "/console/logout", data={"csrf": token}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login?why=logged_out"
    assert "您已退出登录" in s.get(console.url + r.headers["location"]).text
    replay = requests.get(
        console.url + "/console", cookies={SESSION_COOKIE: old}, allow_redirects=False
    )
    assert replay.status_code == 303 and "why=required" in replay.headers["location"]
    assert [x["user"] for x in console.audit_rows("logout")] == ["inspector"]


def test_a_session_cookie_is_stored_only_as_its_hash(console: Console) -> None:
    from county.db.schema import console_sessions

    s = logged_in(console, "admin")
    token = s.cookies.get(SESSION_COOKIE)
    assert token and len(token) >= 40
    with console.db.read() as conn:
        rows = list(conn.execute(console_sessions.select()))
    assert len(rows) == 1
    assert token.encode() not in rows[0].token_hash and token not in repr(tuple(rows[0]))


def test_garbage_cookies_are_not_logged_in(console: Console) -> None:
    for value in ("", "x", "é" * 10, "A" * 5000):
        r = requests.get(
            console.url + "/console",
            headers={"Cookie": f"{SESSION_COOKIE}={value}"},
            allow_redirects=False,
        )
        assert r.status_code == 303, value


# ---- users from the command line, one-time passwords, password changes ----


def county_cli(console: Console, *args: str) -> tuple[int, str, str]:
    """canteen-county in this process on the console's county; (status, stdout, stderr)."""
    import contextlib
    import io

    from county.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        where = ["--data", str(console.county.data)]
        if console.county.database_url:
            where += ["--database", console.county.database_url]
        code = main([*args, *where])
    return code, out.getvalue(), err.getvalue()


def one_time_password(stdout: str) -> str:
    m = re.search(r"^([a-z2-9]{4}(?:-[a-z2-9]{4}){3})$", stdout, re.M)
    assert m, stdout
    return m.group(1)


def change_password(
    s: requests.Session, url: str, current: str, new: str, repeat: str | None = None
) -> requests.Response:
    return s.post(
        url + "/console/password",
        data={
            "csrf": csrf_of(s, url),
            "current": current,
            "new": new,
            "repeat": new if repeat is None else repeat,
        },
        allow_redirects=False,
    )


@ON_EACH_BACKEND
def test_user_add_one_time_password_must_be_changed_first(console: Console) -> None:
    code, out, _ = county_cli(console, "user", "add", "--role", "finance", "zhang.san")
    assert code == 0
    once = one_time_password(out)
    r = log_in(console, "zhang.san", once)
    assert r.status_code == 303
    s = r.session  # type: ignore[attr-defined]
    # Nothing but the password page until a new password is chosen.
    for path in ("/console", "/console/audit"):
        assert go(s, console.url, path).headers["location"] == "/console/password"
    page = s.get(console.url + "/console/password")
    assert "一次性密码" in page.text
    # Bad new passwords: one line each, nothing changed.
    for new, repeat, text in (
        ("short", None, "太短"),
        ("zhang.san", None, "太短"),
        ("a-good-password-1", "a-good-password-2", "不一致"),
        (once, None, "不能与当前密码相同"),
        ("aaaaaaaaaaaa", None, "过于简单"),
    ):
        bad = change_password(s, console.url, once, new, repeat)
        assert bad.status_code == 400 and text in bad.text, (new, bad.text)
    wrong = change_password(s, console.url, "not-it-at-all", "a-good-password-1")
    assert wrong.status_code == 400 and "当前密码不正确" in wrong.text
    ok = change_password(s, console.url, once, "a-good-password-1")
    assert ok.status_code == 303 and ok.headers["location"] == "/console/login?why=changed"
    # Every session of the user ended; the old password is refused, the new one works.
    assert go(s, console.url, "/console").status_code == 303
    assert log_in(console, "zhang.san", once).status_code == 401
    again = log_in(console, "zhang.san", "a-good-password-1")
    assert go(again.session, console.url, "/console").status_code == 200  # type: ignore[attr-defined]
    actions = [(x["user"], x["action"]) for x in reversed(console.audit_rows())]
    # (the command's row has the wall clock's time, the console's the test clock's)
    assert [u.startswith("cli:") for u, a in actions if a == "user.add"] == [True]
    assert ("zhang.san", "password.failed") in actions
    assert ("zhang.san", "password.change") in actions


def test_user_list_disable_enable_reset(console: Console) -> None:
    import json

    s = logged_in(console, "finance")
    code, out, _ = county_cli(console, "user", "disable", "finance")
    assert code == 0 and "disabled" in out
    assert go(s, console.url, "/console").status_code == 303  # its session ended
    r = log_in(console, "finance", PASSWORDS["finance"])
    assert r.status_code == 401 and "已停用" in r.text
    listed = {
        d["name"]: d
        for d in map(json.loads, county_cli(console, "user", "list")[1].split("\n")[:-1])
    }
    assert listed["finance"]["disabled"] and not listed["admin"]["disabled"]
    assert county_cli(console, "user", "enable", "finance")[0] == 0
    code, out, _ = county_cli(console, "user", "reset", "finance")
    once = one_time_password(out)
    assert log_in(console, "finance", PASSWORDS["finance"]).status_code == 401
    assert log_in(console, "finance", once).status_code == 303
    for args, text in (
        (("user", "disable", "nobody"), "no user 'nobody'"),
        (("user", "reset", "nobody"), "no user 'nobody'"),
        (("user", "add", "--role", "admin", "admin"), "exists already"),
        (("user", "add", "--role", "admin", "two words"), "user name"),
    ):
        with no_change(console):
            code, _, err = county_cli(console, *args)
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err
    actions = [x["action"] for x in reversed(console.audit_rows())]
    for a in ("user.disable", "user.enable", "user.reset"):
        assert a in actions


def test_inspector_changes_own_password(console: Console) -> None:
    s = logged_in(console, "inspector")
    ok = change_password(s, console.url, PASSWORDS["inspector"], "inspector-new-pass")
    assert ok.status_code == 303
    assert log_in(console, "inspector", "inspector-new-pass").status_code == 303


# ---- login throttling ----


@ON_EACH_BACKEND
def test_failed_logins_lock_the_name_for_a_while(console: Console) -> None:
    limit = console.config.login_failures
    for _ in range(limit):
        assert log_in(console, "admin", "wrong-password").status_code == 401
    locked = log_in(console, "admin", PASSWORDS["admin"])
    assert locked.status_code == 429
    assert "登录失败次数过多" in locked.text and "15 分钟" in locked.text
    # Another name is not locked; an unknown name locks the same way (no hint it is unknown).
    assert log_in(console, "finance", PASSWORDS["finance"]).status_code == 303
    for _ in range(limit):
        log_in(console, "ghost", "x")
    assert log_in(console, "ghost", "x").status_code == 429
    console.clock.advance(console.config.login_window_ms - 1)
    assert log_in(console, "admin", PASSWORDS["admin"]).status_code == 429
    console.clock.advance(1)
    assert log_in(console, "admin", PASSWORDS["admin"]).status_code == 303
    # A successful login starts the count again.
    for _ in range(limit - 1):
        log_in(console, "admin", "wrong-password")
    assert log_in(console, "admin", PASSWORDS["admin"]).status_code == 303
    assert len(console.audit_rows("login.refused")) == 3


# ---- CSRF and the read-only role on every form ----


def unsafe_routes(console: Console) -> list[tuple[str, str, str]]:
    """(method, path with its parameters filled in, kind) of every console route that
    changes something; kind is "admin" (check_csrf), "change" (check_csrf_roles),
    "own" (check_own_csrf) or "login"."""
    from county.console.app import _api_routes, _depends_on
    from county.console.auth import check_login_csrf

    out = []
    for route in _api_routes(console.server.app.routes):
        for method in sorted((route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}):
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            if _depends_on(route.dependant, lambda c: c is check_login_csrf):
                kind = "login"
            elif _depends_on(route.dependant, lambda c: c is check_csrf):
                kind = "admin"
            elif _depends_on(route.dependant, lambda c: getattr(c, "console_csrf", False)):
                kind = "change"
            else:
                kind = "own"
            out.append((method, path, kind))
    return out


def test_every_form_without_or_with_a_wrong_csrf_is_403(console: Console) -> None:
    routes = unsafe_routes(console)
    assert ("POST", "/console/logout", "own") in routes
    assert ("POST", "/console/password", "own") in routes
    assert ("POST", "/console/login", "login") in routes
    s = logged_in(console, "admin")
    good = csrf_of(s, console.url)
    with no_change(console):
        for method, path, _kind in routes:
            for data in (
                {},
                {"csrf": ""},
                {"csrf": "wrong"},
                {"csrf": good[:-1]},
                {"csrf": [good, "x"]},
            ):
                r = s.request(method, console.url + path, data=data, allow_redirects=False)
                assert r.status_code == 403, (method, path, data, r.status_code)
                assert "未做任何修改" in r.text
            # A JSON body is no form: no token.
            r = s.request(method, console.url + path, json={"csrf": good}, allow_redirects=False)
            assert r.status_code == 403, (method, path)
    # The session survived every refused logout.
    assert go(s, console.url, "/console").status_code == 200
    assert console.audit_rows("logout") == []
    assert console.audit_rows("password.change") == []


def test_an_inspector_posting_a_change_is_403(console: Console) -> None:
    """Every change route refuses the inspector; the admin-only ones (check_csrf) refuse
    finance too."""
    routes = unsafe_routes(console)
    assert ("POST", "/console/users/add", "admin") in routes
    for role, kinds in (("inspector", ("admin", "change")), ("finance", ("admin",))):
        s = logged_in(console, role)
        token = csrf_of(s, console.url)
        with no_change(console):
            for method, path, kind in routes:
                if kind not in kinds:
                    continue
                r = s.request(
                    method, console.url + path, data={"csrf": token}, allow_redirects=False
                )
                assert r.status_code == 403, (role, method, path)
                assert "您没有权限执行此操作" in r.text


def test_check_csrf_roles(console: Console) -> None:
    """The rules themselves, on routes of their own: check_csrf is the admin's alone;
    check_csrf_roles lets finance in, never the inspector."""
    router = APIRouter()

    @router.post("/console/test-admin")
    def admin_only(request: Request, user: User = Depends(check_csrf)) -> PlainTextResponse:  # noqa: B008
        with request.app.state.db.write() as conn:
            audit.record(conn, user=user.name, action="test.admin", at_ms=console.clock())
        return PlainTextResponse("done")

    @router.post("/console/test-finance")
    def finance_too(
        request: Request,
        user: User = Depends(check_csrf_roles("admin", "finance", "inspector")),  # noqa: B008
    ) -> PlainTextResponse:
        with request.app.state.db.write() as conn:
            audit.record(conn, user=user.name, action="test.finance", at_ms=console.clock())
        return PlainTextResponse("done")

    console.server.app.include_router(router)
    for role in ("inspector", "finance", "admin"):
        s = logged_in(console, role)
        token = csrf_of(s, console.url)
        for path in ("/console/test-admin", "/console/test-finance"):
            r = s.post(console.url + path, data={"csrf": token})
            allowed = role == "admin" or (role == "finance" and path.endswith("finance"))
            assert r.status_code == (200 if allowed else 403), (role, path)
    assert [x["user"] for x in console.audit_rows("test.admin")] == ["admin"]
    assert sorted(x["user"] for x in console.audit_rows("test.finance")) == ["admin", "finance"]
    # The inspector named among the roles is still refused: read-only is not negotiable.


def test_a_post_route_without_csrf_refuses_to_start(console: Console) -> None:
    from county.console.app import check_routes

    app = FastAPI()
    router = APIRouter()

    @router.post("/console/unguarded")
    def unguarded() -> None:
        return None

    app.include_router(router)
    with pytest.raises(RuntimeError, match="/console/unguarded has no CSRF check"):
        check_routes(app)


def test_body_over_the_limit_is_413(console: Console) -> None:
    s = logged_in(console, "admin")
    console.config.max_body_bytes = 1000
    with no_change(console):
        r = s.post(
            console.url + "/console/password",
            data={"csrf": csrf_of(s, console.url), "current": "x" * 2000},
            allow_redirects=False,
        )
    assert r.status_code == 413 and "过大" in r.text
    # A body without a length (chunked) is refused before it is read.
    token = csrf_of(s, console.url)
    chunks = iter([f"csrf={token}&current=x".encode()])
    with no_change(console):
        r = s.post(console.url + "/console/password", data=chunks, allow_redirects=False)
    assert r.status_code == 411


# ---- two listeners: the console never on the terminals' port, nor their API on its ----


def test_console_is_not_on_the_terminal_api_port(
    console: Console, county: County, tmp_path: Path
) -> None:
    """A real `serve` (mTLS) and a real console: a terminal with its client certificate
    asking the county's port for the console gets 404; the console answers none of the
    terminals' API."""
    term = provision_terminal(county, tmp_path / "t1", "T1", "C1")
    ident = term.identity
    cert = (str(ident.cert_file), str(ident.key_file))
    health = requests.get(ident.server + "/v1/health", cert=cert, verify=str(ident.ca_file))
    assert health.status_code == 200  # the certificate is good on its own port
    for method, path in (
        ("GET", "/console"),
        ("GET", "/console/login"),
        ("POST", "/console/login"),
        ("GET", "/console/audit"),
        ("GET", "/console/static/console.css"),
    ):
        r = requests.request(
            method, ident.server + path, cert=cert, verify=str(ident.ca_file), timeout=30
        )
        assert r.status_code == 404, (method, path, r.status_code)
        assert "csrf" not in r.text and "console" not in r.text.lower()
    # Without a client certificate the county's port answers nothing of the console either.
    r = requests.get(county.url + "/console/login", verify=str(ident.ca_file), timeout=30)
    assert r.status_code in (401, 403, 404) and "csrf" not in r.text
    # And the console serves none of the terminals' API.
    s = logged_in(console, "admin")
    for method, path in (
        ("GET", "/v1/health"),
        ("GET", "/v1/ca.pem"),
        ("POST", "/v1/ledger"),
        ("POST", "/v1/provision"),
        ("GET", "/updates/metadata/timestamp.json"),
        ("GET", "/metadata/timestamp.json"),
    ):
        r = s.request(method, console.url + path, allow_redirects=False)
        assert r.status_code == 404, (method, path, r.status_code)


def test_console_over_its_own_tls_marks_cookies_secure(
    tmp_path: Path, console_template: Path
) -> None:
    from county.ca import CAPaths

    gen = start_console(tmp_path, None, console_template)
    c = next(gen)
    try:
        c.server.stop()
        tls = CAPaths(c.county.data)
        server = ConsoleServer(c.config, tls_cert=tls.server_cert, tls_key=tls.server_key).start()
        try:
            s = requests.Session()
            s.trust_env = False  # $REQUESTS_CA_BUNDLE would win over s.verify
            s.verify = str(tls.ca_cert)
            token = login_form(s, server.url)
            r = s.post(
                server.url + "/console/login",
                data={"csrf": token, "name": "admin", "password": PASSWORDS["admin"]},
                allow_redirects=False,
            )
            assert server.url.startswith("https://")
            assert r.status_code == 303
            assert "Secure" in r.headers["set-cookie"]
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            assert s.get(server.url + "/console").status_code == 200
            s.close()
        finally:
            server.stop()
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


# ---- the audit log: the page and the command ----


@ON_EACH_BACKEND
def test_audit_page_admin_only_filters_and_pages(console: Console) -> None:
    from county.console import audit as audit_mod

    day_ms = 86_400_000
    with console.db.write() as conn:
        for i in range(120):
            audit_mod.record(
                conn, user=f"u{i % 3}", action="test.thing" if i % 2 else "test.other",
                target=f"t{i}", detail=f"<b>row {i}</b>",
                at_ms=console.clock() - 1 - i * day_ms // 10,
            )  # fmt: skip
    for role in ("finance", "inspector"):
        r = go(logged_in(console, role), console.url, "/console/audit")
        assert r.status_code == 403
    s = logged_in(console, "admin")
    first = s.get(console.url + "/console/audit")
    assert first.status_code == 200
    rows = re.findall(r"<td>(t\d+)</td>", first.text)
    assert rows[:3] == ["t0", "t1", "t2"] and len(rows) <= 50  # newest first, paged
    assert "&lt;b&gt;row 0&lt;/b&gt;" in first.text  # escaped, never markup
    assert 'rel="next"' in first.text
    second = s.get(console.url + "/console/audit?page=2")
    # Page 1 held the three logins (at the clock's time, newer) and t0..t46.
    assert re.findall(r"<td>(t\d+)</td>", second.text)[0] == "t47"
    only = s.get(console.url + "/console/audit", params={"user": "u1", "action": "test.thing"})
    found = re.findall(r"<td>(t\d+)</td>", only.text)
    assert found and all(int(x[1:]) % 3 == 1 and int(x[1:]) % 2 == 1 for x in found)
    # A day: the test clock's local day holds rows 0..n only.
    day = s.get(console.url + "/console/audit", params={"from": "2026-05-29", "to": "2026-05-29"})
    assert day.status_code == 200
    for bad in ({"from": "2026-13-01"}, {"from": "2026-05-29", "to": "2026-05-01"}):
        r = s.get(console.url + "/console/audit", params=bad)
        assert r.status_code == 400 and "日期无效" in r.text
    for bad in ({"page": "0"}, {"page": "abc"}, {"user": "x" * 65}):
        r = s.get(console.url + "/console/audit", params=bad)
        assert r.status_code == 400, bad


def test_audit_command_prints_json_lines(console: Console) -> None:
    import json

    from county.console import audit as audit_mod
    from county.localtime import midnight_ms, parse_date

    zone = console.config.zone
    may = midnight_ms(parse_date("2026-05-10"), zone)
    with console.db.write() as conn:
        for i, day in enumerate((may, may + 86_400_000, may + 2 * 86_400_000)):
            audit_mod.record(conn, user="admin", action="test.day", target=str(i), at_ms=day + 1)
    code, out, _ = county_cli(console, "audit", "--from", "2026-05-11", "--to", "2026-05-12")
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["target"] for d in docs] == ["1", "2"]
    assert docs[0]["local_time"] == "2026-05-11 00:00:00" and docs[0]["action"] == "test.day"
    # --action ending in a dot is a prefix ("_" and "%" are no wildcards); --user exact.
    with console.db.write() as conn:
        audit_mod.record(conn, user="admin", action="testXday", at_ms=may + 5)
        audit_mod.record(conn, user="finance", action="test.other", at_ms=may + 6)
    prefix = county_cli(console, "audit", "--action", "test.")[1].splitlines()
    assert sorted(json.loads(x)["action"] for x in prefix) == ["test.day"] * 3 + ["test.other"]
    assert county_cli(console, "audit", "--action", "test_")[1] == ""
    mine = county_cli(console, "audit", "--user", "finance", "--action", "test.")[1]
    assert [json.loads(x)["action"] for x in mine.splitlines()] == ["test.other"]
    for args in (("--from", "2026-02-30"), ("--from", "2026-05-12", "--to", "2026-05-11")):
        code, out, err = county_cli(console, "audit", *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err


# ---- bad input: a clear refusal, never a 500 ----


def test_login_goes_back_only_to_console_pages(console: Console) -> None:
    for target, expected in (
        ("/console/audit?user=a", "/console/audit?user=a"),
        ("https://evil.example/console", "/console"),
        ("//evil.example/console", "/console"),
        ("/\\evil.example", "/console"),
        ("/elsewhere", "/console"),
        ("/console/logout", "/console"),
        ("", "/console"),
    ):
        r = log_in(console, "admin", PASSWORDS["admin"], next=target)
        assert r.status_code == 303 and r.headers["location"] == expected, target


def test_malformed_requests_are_4xx(console: Console) -> None:
    s = logged_in(console, "admin")
    good = csrf_of(s, console.url)
    url = console.url
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = [
        ("POST", "/console/password", {"headers": multipart, "data": b"--x\r\ngarbage"}),
        ("POST", "/console/password", {"headers": urlencoded, "data": b"csrf=%ZZ&%%%"}),
        ("POST", "/console/password", {"data": {"csrf": good, "new": "x" * 5000}}),
        ("POST", "/console/login", {"data": {"name": "a" * 500}}),
        ("GET", "/console/audit?page=99999999999999999999", {}),
        ("GET", "/console/audit?from=" + "9" * 11, {}),
        ("GET", "/console/login?next=" + "x" * 5000, {}),
        ("GET", "/console/%ff%fe", {}),
        ("GET", "/console?lang=fr", {}),
        ("PUT", "/console/password", {}),
    ]  # fmt: skip
    with no_change(console):
        for method, path, kw in cases:
            r = s.request(method, url + path, allow_redirects=False, **kw)
            assert r.status_code < 500, (method, path, r.status_code)
    assert s.get(url + "/console?lang=fr").text.count('lang="zh-CN"') == 1  # unknown: Chinese


# ---- the command: canteen-county console ----


@pytest.mark.slow
def test_console_command_serves_and_refuses_bad_options(
    tmp_path: Path, console_template: Path
) -> None:
    """The real command in a child process: it prints its URL, serves the login page,
    logs in a user made by 'user add' (sent to change the password), and stops on SIGTERM;
    bad options are one line and exit 2."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    data = tmp_path / "county"
    copy_county(console_template, data)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "hw-sim")]))
    cmd = [sys.executable, "-m", "county.cli"]
    for args, text in (
        (["--tls-cert", str(data / "server.pem")], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "nope.pem", "--tls-key", "nope.key"], "nope.pem: no such file"),
        (["--port", "70000"], "is not a port"),
        (["--database", "nonsense"], "is not a URL"),
        (["--idle-minutes", "0"], "is not between 1 and 1440"),
        (["--idle-minutes", "600", "--session-hours", "2"], "longer than --session-hours"),
    ):
        bad = subprocess.run(
            [*cmd, "console", "--data", str(data), *args],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert bad.returncode == 2 and text in bad.stderr, bad.stderr
        errors = [x for x in bad.stderr.splitlines() if "error:" in x]
        assert len(errors) == 1 and text in errors[0], bad.stderr
    added = subprocess.run(
        [*cmd, "user", "add", "--data", str(data), "--role", "admin", "li.si"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    once = one_time_password(added.stdout)
    proc = subprocess.Popen(
        [*cmd, "console", "--data", str(data), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"console on (http://127\.0\.0\.1:\d+)/console", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        url = m.group(1)
        s = requests.Session()
        token = login_form(s, url)
        r = s.post(
            url + "/console/login",
            data={"csrf": token, "name": "li.si", "password": once},
            allow_redirects=False,
        )
        assert r.status_code == 303
        assert s.get(url + "/console", allow_redirects=False).headers["location"] == (
            "/console/password"
        )
        assert s.get(url + "/v1/health").status_code == 404
        s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # uvicorn shuts down, then raises the SIGTERM it caught again (as for 'serve'):
    # systemd counts that as a clean stop. No traceback.
    assert proc.returncode == -signal.SIGTERM
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


# ---- the users page ----


def test_users_page_adds_resets_disables_with_audit(console: Console) -> None:
    for role in ("finance", "inspector"):
        assert go(logged_in(console, role), console.url, "/console/users").status_code == 403
    s = logged_in(console, "admin")
    page = s.get(console.url + "/console/users")
    assert page.status_code == 200 and 'data-user="inspector"' in page.text
    token = csrf_of(s, console.url)

    def post(path: str, **data: str) -> requests.Response:
        return s.post(console.url + path, data={"csrf": token, **data}, allow_redirects=False)

    added = post("/console/users/add", name="zhao.liu", role="inspector")
    assert added.status_code == 200
    once = re.search(r'id="one-time-password">([^<]+)<', added.text)
    assert once, added.text
    assert log_in(console, "zhao.liu", once.group(1)).status_code == 303
    with no_change(console):
        for path, data, text in (
            ("/console/users/add", {"name": "zhao.liu", "role": "admin"}, "exists already"),
            ("/console/users/add", {"name": "a b", "role": "admin"}, "user name"),
            ("/console/users/add", {"name": "x", "role": "root"}, "role"),
            ("/console/users/admin/disable", {}, "不能停用自己的账号"),
            ("/console/users/nobody/reset", {}, "no user"),
        ):
            r = post(path, **data)
            assert r.status_code == 400 and text in r.text, (path, r.text)
        assert post("/console/users/finance/delete").status_code == 404
    fin = logged_in(console, "finance")
    assert post("/console/users/finance/disable").status_code == 200
    assert go(fin, console.url, "/console").status_code == 303  # its session ended
    assert log_in(console, "finance", PASSWORDS["finance"]).status_code == 401
    assert post("/console/users/finance/enable").status_code == 200
    reset = post("/console/users/finance/reset")
    new = re.search(r'id="one-time-password">([^<]+)<', reset.text)
    assert new and log_in(console, "finance", new.group(1)).status_code == 303
    done = [(x["user"], x["action"], x["target"]) for x in reversed(console.audit_rows())]
    for action in ("user.add", "user.disable", "user.enable", "user.reset"):
        assert ("admin", action, "zhao.liu" if action == "user.add" else "finance") in done


def test_county_commands_that_change_something_are_audited(console: Console) -> None:
    import json

    code, _, err = county_cli(console, "terminal", "add", "--canteen", "C1", "--terminal", "T9")
    assert code == 0, err
    rows = console.audit_rows("terminal.add")
    assert len(rows) == 1 and rows[0]["user"].startswith("cli:") and rows[0]["target"] == "T9"
    assert json.loads(rows[0]["detail"]) == {"canteen": "C1", "terminal": "T9"}
    # A command that fails writes no row.
    code, _, err = county_cli(console, "conflicts", "withdraw", "999", "--reason", "test")
    assert code == 2 and err
    assert console.audit_rows("conflict.withdraw") == []
    # Reading commands write none either.
    before = len(console.audit_rows())
    assert county_cli(console, "alarms")[0] == 0
    assert len(console.audit_rows()) == before


# ---- texts, money, templates ----


def test_every_template_key_is_registered_in_both_languages() -> None:
    """Every literal t("key") in every template (the pages' too) has a Chinese and an
    English text, so no page can show ⟦key⟧ even where no test renders it."""
    import importlib

    from county.console import i18n
    from county.console.pages import PAGES
    from county.console.render import TEMPLATES

    for name in PAGES:
        importlib.import_module(f"county.console.pages.{name}")
    missing, seen = [], 0
    for template in sorted(TEMPLATES.glob("*.html")):
        text = template.read_text()
        # Literal keys only: t("a.b") or t("a.b", x=...), not t("role." ~ name).
        for key in re.findall(r"""\bt\(\s*["']([\w.]+)["']\s*[,)]""", text):
            seen += 1
            if not i18n.known(key):
                missing.append(f"{template.name}: {key}")
    assert seen > 50  # the pattern finds the keys
    assert missing == []


def test_i18n_rules() -> None:
    from county.console import i18n

    i18n.register({"test.x": {"zh": "甲 {n}", "en": "A {n}"}})
    i18n.register({"test.x": {"zh": "甲 {n}", "en": "A {n}"}})  # the same again is fine
    with pytest.raises(ValueError, match="registered twice"):
        i18n.register({"test.x": {"zh": "乙", "en": "B"}})
    with pytest.raises(ValueError, match="has no en text"):
        i18n.register({"test.y": {"zh": "乙"}})
    assert i18n.t("test.x", "en", n=3) == "A 3"
    assert i18n.t("test.x", "zh", n=3) == "甲 3"
    assert i18n.t("test.x", "fr", n=3) == "甲 3"
    assert i18n.t("test.nothing") == "⟦test.nothing⟧"
    assert i18n.t("test.x", "en") == "A {n}"
    assert i18n.t("test.x", "en", m=1) == "⟦test.x⟧"  # a wrong placeholder shows, not raises
    assert i18n.choose(None, None) == "zh"
    assert i18n.choose("en", "zh") == "en"
    assert i18n.choose("xx", "en") == "en"


def test_money_is_yuan_with_two_decimals() -> None:
    from county.console.render import yuan

    assert [yuan(x) for x in (0, 5, 1250, 123456789, -5, -1250, None)] == [
        "0.00", "0.05", "12.50", "1,234,567.89", "-0.05", "-12.50", "",
    ]  # fmt: skip
