"""The fleet in the console (issue 16): /console/fleet and a terminal's page in Chromium.

A real console server over a county whose terminals were provisioned and synced over
mTLS by the real county server (tests/consolekit.py, tests/countykit.py); their last
contact and one clock offset are then set in the database, and the console's clock put at
a local noon, so that which terminal is silent does not depend on the hour the test runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from conftest import shot
from consolekit import (  # noqa: F401
    ROLES,
    Console,
    check_page,
    console_fixture,
    console_template_fixture,
    role_page_fixture,
)
from countykit import provision_terminal, sync
from sqlalchemy import delete, insert, update

from county.db.schema import alarms, clock_offsets, terminals

ZONE = dt.timezone(dt.timedelta(hours=8))  # the console's default zone, Asia/Shanghai
NOON = int(dt.datetime(2026, 5, 28, 12, 0, tzinfo=ZONE).timestamp() * 1000)
MIN = 60_000


def fill(console: Console, tmp_path: Path) -> None:
    county = console.county.start()
    try:
        for tid, canteen in (("t-ok", "c1"), ("t-clock", "c1"), ("t-silent", "c2")):
            sync(provision_terminal(county, tmp_path / tid, tid, canteen))
    finally:
        county.stop()
    seen = {"t-ok": NOON - 4 * MIN, "t-clock": NOON - MIN, "t-silent": NOON - 40 * MIN}
    with console.db.write() as conn:
        for tid, at in seen.items():
            conn.execute(
                update(terminals).where(terminals.c.terminal_id == tid).values(last_seen_ms=at)
            )
        conn.execute(delete(clock_offsets).where(clock_offsets.c.terminal == "t-clock"))
        conn.execute(
            insert(clock_offsets).values(
                terminal="t-clock", scanned_seq=2, seq=2, ahead_ms=47_000, server_ms=NOON,
                noted_ms=NOON,
            )
        )  # fmt: skip
        conn.execute(
            insert(alarms).values(
                terminal="t-ok", kind="fork", seq=3, problem="two entries 3", first_ms=NOON,
                last_ms=NOON,
            )
        )  # fmt: skip
    console.clock.now = NOON


def order(page: Any) -> list[str]:
    return [
        str(x)
        for x in page.eval_on_selector_all(
            "#fleet tbody tr", "rs => rs.map(r => r.dataset.terminal)"
        )
    ]


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_fleet_table_in_both_languages(
    tmp_path: Path, console: Console, role_page: Any, lang: str
) -> None:
    fill(console, tmp_path)
    page = role_page("inspector", lang, "/console/fleet")
    check_page(page)
    shot(page, f"fleet-{lang}", "console")
    assert page.inner_text("h1") == ("终端状态" if lang == "zh" else "Fleet")
    # The silent first, then the wrong clock, then the rest.
    assert order(page) == ["t-silent", "t-clock", "t-ok"]
    silent_badge = page.inner_text("#fleet tbody tr:first-child .state-silent")
    assert silent_badge == ("失联" if lang == "zh" else "Silent")
    assert page.inner_text('tr[data-terminal="t-clock"] td.warn').strip() == "+47.0 s"
    # The chart is an inline SVG whose labels are text in the page's language.
    chart = page.inner_html(".fleet-chart")
    assert "<svg" in chart and ("时钟超差" if lang == "zh" else "Clock off") in chart
    assert page.inner_text('.figure[data-state="silent"] .value') == "1"

    # Sorting by a heading's link, then the same link again for descending.
    heading = "终端" if lang == "zh" else "Terminal"
    page.click(f'#fleet thead a:text-is("{heading}")')
    page.wait_for_url("**sort=terminal**")
    assert order(page) == ["t-clock", "t-ok", "t-silent"]
    page.click("#fleet thead a.sorted")
    page.wait_for_url("**desc=1**")
    assert order(page) == ["t-silent", "t-ok", "t-clock"]
    check_page(page)

    # Filters: the silent only, then a canteen.
    page.select_option('select[name="state"]', "silent")
    page.click(".filters button")
    page.wait_for_url("**state=silent**")
    assert order(page) == ["t-silent"]
    page.goto(console.url + "/console/fleet?canteen=c1")
    assert order(page) == ["t-clock", "t-ok"]

    # A terminal's page: its figures, its syncs and its alarm.
    page.goto(console.url + "/console/fleet")
    page.click('#fleet a:text-is("t-ok")')
    page.wait_for_url("**/console/fleet/t-ok")
    check_page(page)
    shot(page, f"fleet-terminal-{lang}", "console")
    assert "t-ok" in page.inner_text("h1")
    assert page.locator("#syncs tbody tr").count() >= 1
    assert "fork" in page.inner_text("#alarms")
    page.context.close()


@pytest.mark.slow
def test_every_role_reads_the_fleet_and_bad_input_is_refused(
    tmp_path: Path, console: Console
) -> None:
    fill(console, tmp_path)
    for role in ROLES:
        s = console.http(role)
        r = s.get(console.url + "/console/fleet")
        assert r.status_code == 200 and 'data-terminal="t-silent"' in r.text
        assert s.get(console.url + "/console/fleet/t-ok").status_code == 200
    s = console.http("finance")
    r = s.get(console.url + "/console/fleet/nobody")
    assert r.status_code == 404
    r = s.get(console.url + "/console/fleet?sort=age")
    assert r.status_code == 400 and "sort &#39;age&#39;" in r.text
    assert s.get(console.url + "/console/fleet?state=asleep").status_code == 400
    assert s.get(console.url + "/console/fleet?desc=7").status_code == 400
    # Not logged in: the login page, not the fleet.
    r = console.http().get(console.url + "/console/fleet", allow_redirects=False)
    assert r.status_code == 303 and "/console/login" in r.headers["location"]
