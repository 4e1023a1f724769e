"""Kitchen planning in the console (issue 16): /console/meals and its entries.

A real console server (tests/consolekit.py) over a county whose entries are written
straight into the entries table (tests/test_inspection.py's Ledger; c1 is served by t1
and t2, c2 by t3); the console's clock is put at 2026-05-31 noon, so the default period
is the four weeks 2026-05-04..2026-05-31. No settings are published: the windows are the
terminal's defaults (breakfast 07:00-09:00, lunch 11:30-13:30, dinner 17:30-19:30).

What is checked: the figures of the comparison and of one canteen (per weekday, per day)
are the hand-counted ones and the CLI's; a number's link opens exactly the sales behind
it (a reversed sale left out); every role may read it; bad query text is a 400 page that
says what is wrong, never a 500; in Chromium at 1366x768, in both languages, no
horizontal scroll and no untranslated key, and a click on a number lands on its entries.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from consolekit import (  # noqa: F401
    ROLES,
    Console,
    check_page,
    console_fixture,
    console_template_fixture,
    role_page_fixture,
)
from test_inspection import AGENCIES, CANTEENS, NOW_MS, Ledger, local_ms

from county.cli import main as county_main
from county.console import charts
from county.directory import replace_agencies, replace_canteens
from protocol.agencies import parse_agencies_csv, parse_canteens_csv

MONDAY, TUESDAY = "2026-05-25", "2026-05-26"


def fill(console: Console) -> dict[str, Any]:
    """c1 on Monday: breakfast 2, lunch 3 (one reversed: 2 count), dinner 1, one sale at
    15:00 (outside); c2 on Tuesday: lunch 2; a c1 lunch before the period."""
    made: dict[str, Any] = {}
    with console.db.write() as conn:
        directory = parse_agencies_csv(AGENCIES)
        replace_agencies(conn, directory, NOW_MS)
        replace_canteens(conn, parse_canteens_csv(CANTEENS, directory), NOW_MS)
        book = Ledger(conn)
        made["breakfast"] = [
            book.put("t1", at_ms=local_ms(MONDAY, 7, 30 + i), cadre=f"iss/b{i}") for i in range(2)
        ]
        lunch = [book.put("t2", at_ms=local_ms(MONDAY, 12, i), cadre=f"iss/l{i}") for i in range(3)]
        book.reverse(lunch[1], local_ms(MONDAY, 12, 10))
        made["lunch"] = [lunch[0], lunch[2]]
        made["dinner"] = [book.put("t1", at_ms=local_ms(MONDAY, 18), cadre="iss/d")]
        made["outside"] = [book.put("t1", at_ms=local_ms(MONDAY, 15), cadre="iss/o")]
        made["c2_lunch"] = [
            book.put("t3", at_ms=local_ms(TUESDAY, 12, 10 + i), cadre=f"iss/m{i}") for i in range(2)
        ]
        book.put("t1", at_ms=local_ms("2026-05-03", 12), cadre="iss/early")
        book.flush()
    console.clock.now = local_ms("2026-05-31", 12)
    return made


def _cell(html: str, row: str, window: str) -> tuple[str, str]:
    """(link, number) of the cell of ``window`` in the table row whose data attribute is
    ``row`` (e.g. 'data-canteen="c1"')."""
    found = re.search(rf"<tr {row}>(.*?)</tr>", html, re.S)
    assert found, row
    cell = re.search(rf'data-window="{window}" href="([^"]+)">(\d+)<', found.group(1))
    assert cell, (row, window)
    return cell.group(1).replace("&amp;", "&"), cell.group(2)


def _keys(console: Console, link: str) -> list[str]:
    page = console.http("inspector").get(console.url + link, timeout=30)
    assert page.status_code == 200, page.text[:300]
    return re.findall(r'data-key="([^"]+)"', page.text)


def test_the_canteens_side_by_side_and_their_entries(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    made = fill(console)
    html = console.http("inspector").get(console.url + "/console/meals?lang=en", timeout=30).text
    assert "2026-05-04 to 2026-05-31, 28 days" in html
    figures = {
        (c, w): _cell(html, f'data-canteen="{c}"', w)
        for c, w in (("c1", "breakfast"), ("c1", "lunch"), ("c1", "dinner"), ("c1", "-"))
    }
    assert {k: int(v[1]) for k, v in figures.items()} == {
        ("c1", "breakfast"): 2,
        ("c1", "lunch"): 2,
        ("c1", "dinner"): 1,
        ("c1", "-"): 1,
    }
    assert _cell(html, 'data-canteen="c2"', "lunch")[1] == "2"
    for (_, window), (link, _) in figures.items():
        expected = made["outside" if window == "-" else window]
        assert _keys(console, link) == [f"{t}:{s}" for t, s in expected], window
    # The CLI counts the same.
    capsys.readouterr()
    url = str(console.db.url)
    assert (
        county_main(["meals", "--database", url, "--from", "2026-05-04", "--to", "2026-05-31"]) == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    c1 = next(x for x in lines if x["row"] == "canteen" and x["canteen"] == "c1")
    assert c1["meals"] == {"breakfast": 2, "lunch": 2, "dinner": 1} and c1["outside"] == 1
    assert '<img src="data:image/svg+xml;base64,' in html


def test_one_canteen_per_weekday_and_per_day(console: Console) -> None:
    made = fill(console)
    http = console.http("finance")
    html = http.get(console.url + "/console/meals?canteen=c1&by=weekday&lang=en", timeout=30).text
    link, n = _cell(html, 'data-weekday="0"', "lunch")  # Monday
    assert n == "2"
    assert _keys(console, link) == [f"{t}:{s}" for t, s in made["lunch"]]
    assert _cell(html, 'data-weekday="1"', "lunch")[1] == "0"  # c2's Tuesday is not c1's
    assert re.search(r'<tr data-weekday="0"><td>Mon</td><td class="num">4</td>', html)
    html = http.get(console.url + "/console/meals?canteen=c1&by=day", timeout=30).text
    link, n = _cell(html, f'data-day="{MONDAY}"', "breakfast")
    assert n == "2" and "from=2026-05-25&to=2026-05-25" in link
    assert _keys(console, link) == [f"{t}:{s}" for t, s in made["breakfast"]]
    assert _cell(html, 'data-day="2026-05-04"', "lunch")[1] == "0"
    assert 'data-day="2026-05-03"' not in html


def test_every_role_may_read_it_and_a_stranger_nothing(console: Console) -> None:
    fill(console)
    for role in ROLES:
        assert console.http(role).get(console.url + "/console/meals", timeout=30).status_code == 200
    stranger = console.http().get(
        console.url + "/console/meals/entries?canteen=c1", timeout=30, allow_redirects=False
    )
    assert stranger.status_code in (303, 401) and "data-key" not in stranger.text


BAD_QUERIES = [
    ("/console/meals?from=2026-13-01", "2026-13-01"),
    ("/console/meals?from=2026-06-01&to=2026-05-01", "is after"),
    ("/console/meals?from=2025-01-01&to=2026-05-01", "at most 366 days"),
    ("/console/meals?from=0001-01-01&to=0001-01-02", "lies within"),
    ("/console/meals?canteen=c%001", "control characters"),
    ("/console/meals?by=month", ""),
    ("/console/meals/entries?canteen=c1&window=supper", "supper"),
    ("/console/meals/entries?canteen=c1&weekday=7", ""),
    ("/console/meals/entries?canteen=c1&weekday=x", ""),
    ("/console/meals/entries", ""),
    ("/console/meals/entries?canteen=%0a", "control characters"),
    ("/console/meals/entries?canteen=c1&to=2026-02-30", "YYYY-MM-DD"),
]


def test_bad_queries_are_refused_plainly(console: Console) -> None:
    http = console.http("inspector")
    for path, words in BAD_QUERIES:
        response = http.get(console.url + path, timeout=30)
        assert response.status_code == 400, (path, response.text[:300])
        assert words in response.text, path


@pytest.mark.slow
def test_the_page_in_both_languages_and_a_click_to_the_entries(
    console: Console, role_page: Any
) -> None:
    made = fill(console)
    for lang in ("zh", "en"):
        page = role_page("inspector", lang, "/console/meals")
        for path in (
            "/console/meals",
            "/console/meals?canteen=c1",
            "/console/meals?canteen=c1&by=day",
        ):
            page.goto(console.url + path)
            check_page(page)
            assert page.locator("h1").count() == 1
            assert page.locator("#meals-table").count() == 1
        page.goto(console.url + "/console/meals")
        page.locator('tr[data-canteen="c1"] a[data-window="lunch"]').click()
        page.wait_for_url(re.compile(r".*/console/meals/entries\?.*window=lunch.*"))
        keys = page.locator("#entries tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.key)"
        )
        assert keys == [f"{t}:{s}" for t, s in made["lunch"]]
        check_page(page)
        page.context.close()


def test_count_ticks_read_as_counts() -> None:
    assert [charts.count_ticks(v) for v in (0.0, 2.0, 0.5, 1250.0, 12.25)] == [
        "0",
        "2",
        "0.5",
        "1,250",
        "12.2",
    ]
