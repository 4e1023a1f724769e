"""Alarms and conflicts reviewed in the console (issue 16): a real console server on
127.0.0.1 over a real county, Debian's Chromium through Playwright.

An admin withdraws a conflict in the browser with a reason, and a real terminal, after
its sync, no longer holds the revocation (its own check at a sale passes again). The
inspector and finance see every alarm and conflict with its evidence and no form; their
POSTs are 403 and change nothing; an admin's POST without the session's CSRF token is
refused too; refusals (no reason, a second decision, bad filters) are 4xx and change
nothing. Each page fits 1366x768 in both languages with no untranslated key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import shot
from consolekit import (  # noqa: F401
    ON_EACH_BACKEND,
    Clock,
    Console,
    check_page,
    console_template_fixture,
    no_change,
    role_page_fixture,
    serve_console,
    start_console,
)
from countykit import T0_MS, County, provision_terminal, sync
from test_county_evidence import (  # noqa: F401
    county_fixture,
    issuer_fixture,
    published_fixture,
    qr_sale,
    record,
    wallet,
)
from test_review import seed

from county import updates as cu
from protocol import tokens
from terminal import trust
from terminal import updates as tu

PAGE = "/console/alarms"
T0 = T0_MS // 1000
FORM = re.compile(r'<form method="post" action="/console/alarms/')


@pytest.fixture(name="console")
def console_fixture(
    tmp_path: Path, request: pytest.FixtureRequest, console_template: Path
) -> Iterator[Console]:
    """A console over the test's ``county`` (the evidence tests' county, with its update
    repository and server) when it asks for one, else over a new seeded county."""
    if "county" not in request.fixturenames:
        url = None
        if getattr(request, "param", "sqlite") == "postgresql":  # ON_EACH_BACKEND
            url = str(request.getfixturevalue("pg_county_url"))
        for console in start_console(tmp_path / "console", url, console_template):
            with console.db.write() as conn:
                seed(conn)
            yield console
        return
    county: County = request.getfixturevalue("county")
    # The county server and the terminals read the wall clock: so does the console.
    yield from serve_console(county, Clock(time.time_ns() // 1_000_000))


def csrf_of(s: requests.Session, url: str) -> str:
    r = s.get(url)
    assert r.status_code == 200, r.text
    m = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert m, r.text
    return m.group(1)


def test_the_inspector_and_finance_see_everything_and_change_nothing(console: Console) -> None:
    base = console.url + PAGE
    for role in ("inspector", "finance"):
        s = console.http(role)
        listing = s.get(base)
        assert listing.status_code == 200
        assert 'data-what="conflict" data-id="1"' in listing.text
        assert 'data-what="alarm" data-id="1"' in listing.text
        page = s.get(base + "/conflict/1?lang=en")
        assert page.status_code == 200
        # The evidence: names from the directory, both canteens, the codes checked now.
        for text in ("王五", "县委食堂", "镇食堂", "Verifies with issuer key hn-review "):
            assert text in page.text, text
        assert "the entry&#39;s ctr &#39;7&#39; is not the one the phone signed" in page.text
        assert not FORM.search(page.text) and 'id="read-only"' in page.text
        # A forged POST with the user's own valid token: 403, nothing changed.
        token = _token(s, console)
        with no_change(console):
            for path in ("/conflict/1/withdraw", "/conflict/1/confirm", "/alarm/1/withdraw"):
                r = s.post(base + path, data={"csrf": token, "reason": "forged"})
                assert r.status_code == 403, (role, path, r.status_code)
    assert [r["action"] for r in console.audit_rows("conflict.")] == []

    # The admin without the session's token, or with another's: 403, nothing changed.
    admin = console.http("admin")
    other = _token(console.http("admin"), console)
    with no_change(console):
        for data in ({"reason": "x"}, {"csrf": "", "reason": "x"}, {"csrf": other, "reason": "x"}):
            assert admin.post(base + "/conflict/1/withdraw", data=data).status_code == 403


def _token(s: requests.Session, console: Console) -> str:
    """The session's CSRF token, from the logout form every page carries."""
    return csrf_of(s, console.url + "/console")


@ON_EACH_BACKEND
def test_the_admin_decides_once_with_a_reason_over_http(console: Console) -> None:
    base = console.url + PAGE
    s = console.http("admin")
    token = csrf_of(s, base + "/alarm/1")
    assert len(FORM.findall(s.get(base + "/alarm/1").text)) == 2
    with no_change(console):
        for reason, status, why in (
            ("", 400, "say why the alarm is confirmed"),
            ("a\nb", 400, "one line of text"),
            ("z" * 501, 400, "at most 500"),
            ("z" * 5000, 400, "reason"),  # over the form's own limit
        ):
            r = s.post(base + "/alarm/1/confirm", data={"csrf": token, "reason": reason})
            assert r.status_code == status and why in r.text, (reason[:10], r.status_code)
        for path, status in (
            ("/alarm/9/confirm", 404),
            ("/other/1/confirm", 404),
            ("/alarm/1/approve", 404),
            ("/alarm/x/confirm", 400),
        ):
            r = s.post(base + path, data={"csrf": token, "reason": "x"})
            assert r.status_code == status, (path, r.status_code)
    r = s.post(base + "/alarm/1/confirm?lang=en", data={"csrf": token, "reason": "swapped card"})
    assert r.status_code == 200 and 'id="done"' in r.text
    assert "Confirmed by admin on " in r.text and not FORM.search(r.text)
    r = s.post(base + "/alarm/1/withdraw", data={"csrf": token, "reason": "second"})
    assert r.status_code == 400 and "alarm 1 was confirmed already (by admin)" in r.text
    [row] = console.audit_rows("alarm.")
    assert (row["user"], row["action"], row["target"]) == ("admin", "alarm.confirm", "1")
    assert "swapped card" in row["detail"]

    # Filters: the confirmed alarm leaves the open list; bad filters are 400.
    open_list = s.get(base + "?state=open").text
    assert 'data-what="alarm"' not in open_list and 'data-what="conflict"' in open_list
    for query in ("state=bad", "what=x", "kind=zz", "terminal=a%00b", "state=" + "o" * 30):
        assert s.get(base + "?" + query).status_code == 400, query
    assert s.get(base + "/alarm/99").status_code == 404
    assert s.get(base + "/alarm/99999999999999999999999").status_code in (400, 404)
    # The home page counts what waits for review and links to it.
    home = s.get(console.url + "/console").text
    assert 'href="/console/alarms?state=open&amp;what=alarm"' in home
    assert re.search(r'id="fig-alarms">0<', home) and re.search(r'id="fig-conflicts">1<', home)


@pytest.mark.slow
def test_every_page_fits_in_both_languages(console: Console, role_page: Any) -> None:
    for lang in ("zh", "en"):
        for path in (PAGE, PAGE + "/conflict/1", PAGE + "/alarm/1"):
            page = role_page("inspector", lang, path)
            check_page(page)
            assert page.locator("form[method=post]").count() == 1  # the logout form only
            page.context.close()
        page = role_page("admin", lang, PAGE + "/conflict/1")
        check_page(page)
        assert page.locator("#form-withdraw").count() == 1
        shot(page, f"alarms-conflict-{lang}", "console")
        page.context.close()


@pytest.mark.slow
def test_a_conflict_withdrawn_in_the_browser_is_lifted_on_a_terminal(
    county: County, console: Console, role_page: Any, tmp_path: Path, issuer: Any
) -> None:
    now = int(time.time())
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    county.pin_root(a.root)
    store = trust.TrustStore(a.root / "trust.sqlite")
    try:
        assert tu.update_once(tu.updater_for_county(a.root), store, now) is not None
        w = wallet(issuer, "V")
        record(a, qr_sale(w, w.draw(T0), 1))
        sync(a)
        record(b, qr_sale(w, w.draw(T0 + 30), 2))
        sync(b)
        assert cu.publish_conflict_revocations(county.data, now).revocations_added == 1
        assert tu.update_once(tu.updater_for_county(a.root), store, now) is not None
        code = tokens.verify_presentation(w.draw(T0 + 60), T0 + 60, store)
        assert store.revoked_kind(code) is not None  # terminal a refuses the cadre

        [conflict] = county.store.conflicts()
        page = role_page("admin", "en", PAGE)
        check_page(page)
        page.click(f"tr[data-what=conflict][data-id='{conflict['id']}'] a")
        page.wait_for_selector("#form-withdraw")
        check_page(page)
        checks = page.locator("td.check").all_inner_texts()
        assert len(checks) == 2 and all("Verifies with issuer key" in c for c in checks), checks
        page.fill("#form-withdraw input[name=reason]", "on an inspection trip; both approved")
        page.click("#form-withdraw button")
        page.wait_for_selector("#done")
        assert "revocation list version" in page.inner_text("#lifted")
        assert page.get_attribute("#state", "data-state") == "withdrawn"
        check_page(page)
        [row] = console.audit_rows("conflict.withdraw")
        assert row["user"] == "admin" and "inspection trip" in row["detail"]

        # Terminal a's next sync brings the signed list without the revocation.
        applied = tu.update_once(tu.updater_for_county(a.root), store, now + 90)
        assert applied is not None and applied.changed == ("revocations",)
        assert store.revoked_kind(code) is None  # the cadre is accepted again
        # The refresher does not bring it back.
        assert cu.publish_conflict_revocations(county.data, now).revocations_added == 0

        # The inspector sees the decision and the evidence, and no form.
        page = role_page("inspector", "zh", f"{PAGE}/conflict/{conflict['id']}")
        check_page(page)
        assert "on an inspection trip" in page.inner_text("#decision")
        assert page.locator("#form-withdraw, #form-confirm").count() == 0
    finally:
        store.close()
