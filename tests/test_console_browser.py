"""The console in Debian's Chromium (Playwright), at 1366x768 (issue 16): logging in as
each role by the form, the language switch, an expired session, the audit page showing
what was done, and every page a role can reach checked in both languages (no horizontal
scroll, no untranslated text).

One Chromium for the whole test process (conftest.py's session-scoped ``chromium``);
each test opens its own context. A real console server on 127.0.0.1 (tests/consolekit.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import shot
from consolekit import (  # noqa: F401
    PASSWORDS,
    ROLES,
    VIEWPORT,
    Console,
    check_page,
    console_fixture,
    console_template_fixture,
    role_page_fixture,
)

from county.console.render import nav_items


def fresh_page(browser: Any) -> Any:
    return browser.new_context(viewport=VIEWPORT).new_page()


def type_login(page: Any, name: str, password: str) -> None:
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("form[action='/console/login'] button[type=submit]")


def test_each_role_logs_in_and_out_by_the_form(console: Console, browser: Any) -> None:
    page = fresh_page(browser)
    for role in ROLES:
        page.goto(console.url + "/console")
        assert "/console/login" in page.url  # sent to log in first
        type_login(page, role, PASSWORDS[role])
        page.wait_for_url(console.url + "/console")
        who = page.locator(".who")
        assert who.get_attribute("data-role") == role
        check_page(page)
        links = page.locator("nav.sidebar a").evaluate_all("els => els.map(e => e.pathname)")
        assert ("/console/audit" in links) == (role == "admin")
        read_only = page.locator(".read-only").count()
        assert read_only == (1 if role == "inspector" else 0)
        page.click("text=退出登录")
        page.wait_for_url(re.compile(r".*/console/login\?why=logged_out"))
        assert "您已退出登录" in page.inner_text("body")
    shot(page, "login-logged-out", "console")


def test_wrong_password_in_the_browser(console: Console, browser: Any) -> None:
    page = fresh_page(browser)
    page.goto(console.url + "/console/login")
    type_login(page, "admin", "wrong-password")
    page.wait_for_selector(".error")
    assert page.inner_text(".error").strip() == "用户名或密码错误。"
    assert page.input_value("input[name=name]") == "admin"
    check_page(page)
    shot(page, "login-wrong", "console")


def test_language_switch_is_remembered(console: Console, role_page: Any) -> None:
    page = role_page("admin")
    assert "首页" in page.inner_text("nav.sidebar")
    page.click("a.lang")
    page.wait_for_url(re.compile(r".*lang=en"))
    assert "Home" in page.inner_text("nav.sidebar")
    page.click("nav.sidebar >> text=Audit log")
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "Audit log"  # the cookie kept English
    assert page.evaluate("document.documentElement.lang") == "en"
    page.click("a.lang")
    page.wait_for_url(re.compile(r".*lang=zh"))
    assert page.locator("h1").inner_text() == "审计日志"


def test_expired_session_in_the_browser_returns_to_the_page(console: Console, browser: Any) -> None:
    page = fresh_page(browser)
    page.goto(console.url + "/console/login")
    type_login(page, "admin", PASSWORDS["admin"])
    page.wait_for_url(console.url + "/console")
    page.goto(console.url + "/console/audit?action=login")
    console.clock.advance(console.config.idle_ms + 1)
    page.reload()
    assert "/console/login?why=expired" in page.url
    assert "登录已过期，请重新登录" in page.inner_text("body")
    check_page(page)
    shot(page, "login-expired", "console")
    type_login(page, "admin", PASSWORDS["admin"])
    page.wait_for_url(console.url + "/console/audit?action=login")


def test_audit_page_shows_what_was_done(console: Console, browser: Any, role_page: Any) -> None:
    page = fresh_page(browser)
    page.goto(console.url + "/console/login")
    type_login(page, "finance", "not-the-password")
    page.wait_for_selector(".error")
    type_login(page, "finance", PASSWORDS["finance"])
    page.wait_for_url(console.url + "/console")
    page.click("text=修改密码")
    page.fill("input[name=current]", PASSWORDS["finance"])
    page.fill("input[name=new]", "finance-new-password")
    page.fill("input[name=repeat]", "finance-new-password")
    page.click("form[action='/console/password'] button[type=submit]")
    page.wait_for_url(re.compile(r".*why=changed"))
    admin = role_page("admin")  # logged in by cookie: no login row
    admin.click("nav.sidebar >> text=审计日志")
    admin.wait_for_selector("table#audit")
    rows = admin.locator("table#audit tbody tr").evaluate_all(
        "trs => trs.map(tr => [...tr.cells].map(td => td.innerText))"
    )
    seen = [(r[1], r[2]) for r in rows]
    assert seen[:3] == [
        ("finance", "修改密码 password.change"),
        ("finance", "登录 login"),
        ("finance", "登录失败 login.failed"),
    ]
    check_page(admin)
    admin.select_option("select[name=action]", "login.failed")
    admin.click("form.filters button[type=submit]")
    admin.wait_for_url(re.compile(r".*action=login\.failed"))
    assert admin.locator("table#audit tbody tr").count() == 1
    shot(admin, "audit", "console")


@pytest.mark.slow
def test_every_page_of_every_role_in_both_languages(console: Console, role_page: Any) -> None:
    """Each page a role's navigation links to, and the account pages, at 1366x768 in
    Chinese and English: no horizontal scroll, no untranslated key, no error."""
    for role in ROLES:
        paths = [n.path for n in nav_items() if role in n.roles] + ["/console/password"]
        for lang in ("zh", "en"):
            page = role_page(role, lang)
            for path in paths:
                response = page.goto(console.url + path)
                assert response is not None and response.status == 200, (role, lang, path)
                check_page(page)
                assert page.evaluate("document.documentElement.lang").startswith(lang)
                shot(page, f"{role}-{lang}-{path.strip('/').replace('/', '-')}", "console")
            page.context.close()


def test_home_and_errors_fit_in_both_languages(console: Console, role_page: Any) -> None:
    for lang in ("zh", "en"):
        page = role_page("admin", lang)
        check_page(page)
        for path, status in (("/console/nowhere", 404), ("/console/audit?page=0", 400)):
            response = page.goto(console.url + path)
            assert response is not None and response.status == status
            check_page(page)
        page.context.close()
    finance = role_page("finance", "en", "/console/audit")
    assert finance.locator(".error").inner_text().startswith("You are not allowed")  # 403
    check_page(finance)


def test_first_login_with_a_one_time_password(console: Console, browser: Any) -> None:
    """An admin adds a user on the users page; the new user logs in with the one-time
    password shown there, is sent to choose a password, then logs in with it."""
    admin = fresh_page(browser)
    admin.goto(console.url + "/console/login")
    type_login(admin, "admin", PASSWORDS["admin"])
    admin.wait_for_url(console.url + "/console")
    admin.click("nav.sidebar >> text=用户管理")
    admin.fill("form[action='/console/users/add'] input[name=name]", "王小明")
    admin.select_option("form[action='/console/users/add'] select[name=role]", "finance")
    admin.click("form[action='/console/users/add'] button[type=submit]")
    once = admin.locator("#one-time-password").inner_text(timeout=30_000)
    check_page(admin)
    shot(admin, "users-added", "console")
    page = fresh_page(browser)
    page.goto(console.url + "/console/login")
    type_login(page, "王小明", once)
    page.wait_for_url(console.url + "/console/password")
    assert "一次性密码" in page.inner_text(".notice")
    page.fill("input[name=current]", once)
    page.fill("input[name=new]", "wang-xiaoming-2026")
    page.fill("input[name=repeat]", "wang-xiaoming-2026")
    page.click("form[action='/console/password'] button[type=submit]")
    page.wait_for_url(re.compile(r".*why=changed"))
    type_login(page, "王小明", "wang-xiaoming-2026")
    page.wait_for_url(console.url + "/console")
    assert page.locator(".who").get_attribute("data-role") == "finance"
