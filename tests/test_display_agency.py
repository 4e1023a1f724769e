"""The screen names the diner's agency and the price tier (issue 15), in Debian's Chromium.

A real Checkout with an installed agency directory (tests/displaykit.py) decides; the
page shows the agency's name from the directory instead of its code, the tier in words,
and for a unit the directory does not list, that it paid the visitor price. The staff
panel's last charge shows the tier too. Screenshots go to test-artifacts/display/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LARGE, SMALL, shot
from displaykit import LUNCH, EventReader, Kit, wallet

from protocol import agencies
from protocol.agencies import Agency, Directory
from terminal.display import views

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect


def directory() -> Directory:
    """The test terminal's canteen (demo-canteen) run by `own`, a Yuhang bureau."""

    def a(code: str, name: str, level: str, parent: str | None) -> Agency:
        return Agency(code, name, level, parent, "")

    return Directory(
        [
            a("zj-gov", "浙江省人民政府", "province", None),
            a("hz-gov", "杭州市人民政府", "city", "zj-gov"),
            a("hz-finance", "杭州市财政局", "city", "hz-gov"),
            a("yh-gov", "余杭区人民政府", "county", "hz-gov"),
            a("own", "余杭区机关事务管理局", "county", "yh-gov"),
            a("yh-edu", "余杭区教育局", "county", "yh-gov"),
        ],
        [agencies.Canteen("demo-canteen", "示例机关食堂", "own")],
        version=1,
    )


def install(kit: Kit) -> None:
    def put() -> None:
        kit.terminal.c.directory = directory()

    kit.terminal.run(put)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path / "state")
    install(k)
    k.ready()
    yield k
    k.close()


def open_page(browser: Any, kit: Kit, viewport: dict[str, int] = SMALL) -> Any:
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.clock.install(time=kit.terminal.clock_ms / 1000)
    page.goto(kit.url)
    expect(page.locator("#idle-meal")).to_have_text(re.compile(r"午餐|Lunch"))
    return page


def fits(page: Any) -> None:
    """The verdict's lines are all inside the viewport, none cut off below."""
    size = page.viewport_size
    bottom = page.evaluate(
        "() => Math.max(...['verdict-who', 'verdict-tier', 'verdict-note', 'verdict-what']"
        ".map((id) => document.getElementById(id).getBoundingClientRect().bottom))"
    )
    scroll = page.evaluate("() => document.documentElement.scrollHeight")
    assert bottom <= size["height"] and scroll <= size["height"], (bottom, scroll)


def test_the_agency_name_and_tier_replace_the_code(browser: Any, kit: Kit) -> None:
    page = open_page(browser, kit)
    kit.terminal.present(wallet("A1", "张三", unit="hz-finance").draw(LUNCH))
    expect(page.locator("body")).to_have_attribute("data-view", "accept")
    expect(page.locator("#verdict-who")).to_have_text("张三 · 杭州市财政局")
    expect(page.locator("#verdict-tier")).to_have_text("上级来客")
    expect(page.locator("#verdict-note")).to_be_hidden()
    expect(page.locator("#verdict-what")).to_contain_text("¥15.00")  # no tier price: visitor
    expect(page.locator("body")).to_have_attribute("data-tier", "higher_level")
    fits(page)
    shot(page, "agency-higher-800x480")
    kit.terminal.present(wallet("A2", "李四", unit="own").draw(LUNCH))
    expect(page.locator("#verdict-who")).to_have_text("李四 · 余杭区机关事务管理局")
    expect(page.locator("#verdict-tier")).to_have_text("本单位")
    expect(page.locator("#verdict-what")).to_contain_text("¥10.00")
    assert page.errors == []


def test_an_unlisted_unit_is_told_it_paid_the_visitor_price(browser: Any, kit: Kit) -> None:
    page = open_page(browser, kit)
    kit.terminal.present(wallet("U1", "王五", unit="visiting-bureau").draw(LUNCH))
    expect(page.locator("body")).to_have_attribute("data-view", "accept")
    # No name anywhere for it: the code, and the note why the price is the visitor's.
    expect(page.locator("#verdict-who")).to_have_text("王五 · visiting-bureau")
    expect(page.locator("#verdict-tier")).to_have_text("未登记单位")
    expect(page.locator("#verdict-note")).to_have_text("该单位不在单位名录中，按来客价收费")
    expect(page.locator("#verdict-what")).to_contain_text("¥15.00")
    fits(page)
    shot(page, "agency-unlisted-800x480")


def test_english_words_the_tier_and_the_note(browser: Any, tmp_path: Path) -> None:
    k = Kit(tmp_path / "state", language="en")
    try:
        install(k)
        k.ready()
        page = open_page(browser, k, LARGE)
        k.terminal.present(wallet("E1", "Zhang San", unit="yh-edu").draw(LUNCH))
        expect(page.locator("#verdict-who")).to_have_text("Zhang San · 余杭区教育局")
        expect(page.locator("#verdict-tier")).to_have_text("Same-level agency")
        shot(page, "agency-same-en-1024x600")
        k.terminal.present(wallet("E2", "Li Si", unit="nowhere").draw(LUNCH))
        expect(page.locator("#verdict-tier")).to_have_text("Unit not in the directory")
        expect(page.locator("#verdict-note")).to_have_text(
            "This unit is not in the agency directory: visitor price charged"
        )
        fits(page)
        shot(page, "agency-unlisted-en-1024x600")
        page.set_viewport_size(SMALL)
        fits(page)
        shot(page, "agency-unlisted-en-800x480")
    finally:
        k.close()


def test_the_staff_panel_shows_the_tier_of_the_last_charge(browser: Any, kit: Kit) -> None:
    page = open_page(browser, kit)
    kit.terminal.present(wallet("S1", "赵六", unit="hz-finance").draw(LUNCH))
    page.locator("#staff-button").click()
    for digit in "4821":
        page.locator(f'#pin-pad button[data-key="{digit}"]').click()
    page.locator("#pin-ok").click()
    expect(page.locator("#panel-view")).to_be_visible()
    expect(page.locator("#last-charge")).to_contain_text("杭州市财政局")
    expect(page.locator("#last-charge")).to_contain_text("上级来客")
    shot(page, "agency-staff-panel-800x480")
    status, body, _ = kit.post("/staff/open", {"pin": "4821"})
    assert status == 200
    charge = body["last_charge"]
    assert (charge["unit_name"], charge["tier"], charge["tier_text"]) == (
        "杭州市财政局",
        "higher_level",
        "上级来客",
    )


def test_the_decision_event_carries_the_tier_and_the_note(kit: Kit) -> None:
    reader = EventReader(kit)
    try:
        assert reader.next()[0] == "hello"
        kit.terminal.present(wallet("V1", unit="stray").draw(LUNCH))
        name, event = reader.next(skip=("ping", "status"))
        assert name == "decision"
        assert (event["tier"], event["tier_text"], event["amount_fen"]) == (
            "unlisted",
            "未登记单位",
            1500,
        )
        assert event["tier_note"] == views.UNLISTED_NOTE["zh"]
    finally:
        reader.close()


def test_tier_words_are_checked_before_they_leave() -> None:
    assert views.tier_fields("own", "zh") == {
        "tier": "own",
        "tier_text": "本单位",
        "tier_note": None,
    }
    # An unknown tier, or a tier of the wrong type, is not shown.
    for odd in ("<b>mine</b>", 7, None, ["own"]):
        assert views.tier_fields(odd, "en") == {"tier": None, "tier_text": None, "tier_note": None}
    for tier in agencies.TIERS:
        assert views.tier_label(tier, "zh") == agencies.TIER_NAMES_ZH[tier]
        assert views.tier_label(tier, "en")
