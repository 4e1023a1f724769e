"""Discipline inspection in the console (issue 16): /console/inspection and its entries.

A real console server (tests/consolekit.py) over a county whose entries are written
straight into the entries table (tests/test_inspection.py's Ledger) with a small
directory; the console's clock is put at 2026-05-31 noon, so the default period is
2026-03-01..2026-05-31 and its year before 2025-03-01..2025-05-31.

What is checked: every page renders for each role in both languages at 1366x768 (no
horizontal scroll, no untranslated key); the figures on the page are the CLI's; a
drill-down link leads to exactly the entries behind the number, with names and local
times; bad query text is a 400 page that says what is wrong, never a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from consolekit import (  # noqa: F401
    ON_EACH_BACKEND,
    ROLES,
    Console,
    check_page,
    console_fixture,
    console_template_fixture,
    role_page_fixture,
)
from sqlalchemy import insert
from test_inspection import AGENCIES, CANTEENS, NOW_MS, Ledger, local_ms

from county.cli import main as county_main
from county.db.schema import cadres, terminals
from county.directory import replace_agencies, replace_canteens
from protocol.agencies import parse_agencies_csv, parse_canteens_csv

MIN = 60_000
NOON = local_ms("2026-05-31", 12)
PAGES = (
    "/console/inspection",
    "/console/inspection/spending",
    "/console/inspection/anomalies",
    "/console/inspection/entries?keys=t1:1,t1:2",
)


def fill(console: Console) -> dict[str, Any]:
    made: dict[str, Any] = {}
    with console.db.write() as conn:
        directory = parse_agencies_csv(AGENCIES)
        replace_agencies(conn, directory, NOW_MS)
        replace_canteens(conn, parse_canteens_csv(CANTEENS, directory), NOW_MS)
        conn.execute(
            insert(cadres),
            [
                {"cadre": f"iss/v{i}", "unit": "town1", "name": f"王{i}", "imported_ms": NOW_MS}
                for i in range(6)
            ],
        )
        book = Ledger(conn)
        batches = []
        for day, people in (("2025-03-10", 6), ("2025-04-10", 5), ("2026-04-10", 5)):
            start = local_ms(day, 12)
            batches.append(
                [
                    book.put("t1", at_ms=start + i * MIN, cadre=f"iss/v{i}", unit="town1")
                    for i in range(people)
                ]
            )
        made["batch"] = batches[-1]
        book.put("t3", at_ms=local_ms("2026-05-02", 15), cadre="iss/late", unit="cty1")
        book.flush()
    console.clock.now = NOON
    return made


def _cli(url: str, *args: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert county_main([*args, "--database", url]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _url(console: Console) -> str:
    return str(console.db.url)


@pytest.mark.slow
def test_figures_match_the_cli_and_drill_down(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    made = fill(console)
    http = console.http("inspector")
    page = http.get(console.url + "/console/inspection?lang=en", timeout=30)
    assert page.status_code == 200, page.text
    html = page.text
    total = _cli(
        _url(console), "batches", "--from", "2026-03-01", "--to", "2026-05-31", capsys=capsys
    )[-1]
    assert (total["batches"], total["people"]) == (1, 5)
    assert (total["previous_batches"], total["previous_people"]) == (2, 11)

    def figure(name: str) -> str:
        found = re.search(rf'id="fig-{name}" href="([^"]*)">([^<]*)<', html)
        assert found, name
        return found.group(2)

    assert figure("batches") == "1" and figure("people") == "5"
    assert figure("prev-batches") == "2" and figure("prev-people") == "11"
    # The batch's own entries link: the five sales, names and local times.
    link = re.search(r'class="entries" href="([^"]+)"', html)
    assert link
    entries = http.get(console.url + link.group(1).replace("&amp;", "&"), timeout=30)
    assert entries.status_code == 200
    keys = re.findall(r'data-key="([^"]+)"', entries.text)
    assert keys == [f"{t}:{s}" for t, s in made["batch"]]
    assert "2026-04-10 12:00:00" in entries.text and "王0" in entries.text
    # The year-before figure's link: the eleven sales of two batches.
    prev = re.search(r'id="fig-prev-people" href="([^"]*)"', html)
    assert prev
    before = http.get(console.url + prev.group(1).replace("&amp;", "&"), timeout=30)
    assert len(re.findall(r'data-key="', before.text)) == 11

    spending = http.get(console.url + "/console/inspection/spending?by=township", timeout=30)
    assert spending.status_code == 200
    lines = _cli(
        _url(console),
        "spending",
        "--from",
        "2026-03-01",
        "--to",
        "2026-05-31",
        "--by",
        "township",
        capsys=capsys,
    )
    town1 = next(x for x in lines if x["row"] == "group" and x["group"] == "town1")
    row = re.search(r'data-group="town1">(.*?)</tr>', spending.text, re.S)
    assert row
    assert f"{town1['net_fen'] // 100}.00" in row.group(1)
    assert f"{town1['previous_net_fen'] // 100:,}.00" in row.group(1)

    anomalies = http.get(console.url + "/console/inspection/anomalies", timeout=30)
    assert anomalies.status_code == 200
    assert 'id="off-hours"' in anomalies.text and "2026-05-02 15:00:00" in anomalies.text


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/console/inspection?from=2026-13-01", 400, "2026-13-01"),
        ("/console/inspection?canteen=c%001", 400, "control characters"),
        ("/console/inspection/spending?canteen=%0a", 400, "control characters"),
        ("/console/inspection/entries?keys=t%001:1", 400, "control characters"),
        ("/console/inspection?from=0001-01-01&to=0001-01-02", 400, "lies within"),
        ("/console/inspection/spending?from=9999-12-01&to=9999-12-31", 400, "lies within"),
        ("/console/inspection/entries?what=spending&from=9999-12-01&to=9999-12-31", 400, "within"),
        ("/console/inspection?from=2026-06-01&to=2026-05-01", 400, "is after"),
        ("/console/inspection/spending?from=1-1-1", 400, "YYYY-MM-DD"),
        ("/console/inspection/entries?keys=nonsense", 400, "TERMINAL:SEQ"),
        ("/console/inspection/entries?what=batches&from=2026-02-30", 400, "YYYY-MM-DD"),
        ("/console/inspection?min_people=1", 400, ""),
        ("/console/inspection/spending?by=city", 400, ""),
        ("/console/inspection/entries?what=drop", 400, ""),
    ],
)
def test_bad_queries_are_refused_plainly(
    console: Console, path: str, status: int, words: str
) -> None:
    response = console.http("finance").get(console.url + path, timeout=30)
    assert response.status_code == status, response.text[:300]
    assert words in response.text


@ON_EACH_BACKEND
def test_nul_in_a_query_is_400_on_each_backend(console: Console) -> None:
    for path in (
        "/console/inspection?unit=%00",
        "/console/inspection/entries?what=batches&canteen=%00",
        "/console/inspection/entries?keys=%00:1",
    ):
        response = console.http("inspector").get(console.url + path, timeout=30)
        assert response.status_code == 400 and "control characters" in response.text, path


def test_a_stranger_sees_nothing(console: Console) -> None:
    fill(console)
    response = console.http().get(
        console.url + "/console/inspection/entries?keys=t1:1", timeout=30, allow_redirects=False
    )
    assert response.status_code in (303, 401)
    assert "t1:1" not in response.text


@pytest.mark.slow
def test_every_page_for_each_role_in_both_languages(console: Console, role_page: Any) -> None:
    fill(console)
    for role in ROLES:
        for lang in ("zh", "en"):
            page = role_page(role, lang, PAGES[0])
            for path in PAGES:
                page.goto(console.url + path)
                check_page(page)
                assert page.locator("h1").count() == 1
            # A drill-down link by a click.
            page.goto(console.url + "/console/inspection")
            page.locator("#batch-list a.entries").first.click()
            page.wait_for_url(re.compile(r".*/console/inspection/entries\?keys=.*"))
            assert page.locator("#entries tbody tr").count() == 5
            page.context.close()


def test_charts_are_svg_images(console: Console) -> None:
    fill(console)
    html = console.http("admin").get(console.url + "/console/inspection", timeout=30).text
    uri = re.search(r'<img src="(data:image/svg\+xml;base64,[^"]+)"', html)
    assert uri
    import base64

    svg = base64.b64decode(uri.group(1).split(",", 1)[1]).decode("utf-8")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "2026-04" in svg  # the month labels are text


def test_figures_follow_new_entries(console: Console) -> None:
    """The page keeps its figures while the county's entries stand still, and shows new
    ones once a terminal's upload moved its acknowledged seq."""
    fill(console)
    http = console.http("inspector")

    def people() -> str:
        html = http.get(console.url + "/console/inspection", timeout=30).text
        found = re.search(r'id="fig-people" href="[^"]*">([^<]*)<', html)
        assert found
        return found.group(1)

    assert people() == "5"
    with console.db.write() as conn:
        book = Ledger(conn)
        book.seqs["t3"] = 100
        start = local_ms("2026-05-20", 12)
        for i in range(4):
            book.put("t3", at_ms=start + i * MIN, cadre=f"iss/x{i}", unit="town1")
        book.flush()
    assert people() == "5"  # no terminal moved: the same figures, from memory
    with console.db.write() as conn:
        conn.execute(
            insert(terminals).values(
                terminal_id="t3", canteen="c2", registered_ms=NOW_MS, acked_seq=104,
                last_hash=b"\0" * 32,
            )
        )  # fmt: skip
    assert people() == "9"


def test_spending_numbers_open_their_entries(console: Console) -> None:
    made = fill(console)
    http = console.http("finance")
    html = http.get(console.url + "/console/inspection/spending?by=agency", timeout=30).text
    row = re.search(r'data-month="2026-04">(.*?)</tr>', html, re.S)
    assert row
    net = re.search(r'class="net" href="([^"]+)">([^<]+)<', row.group(1))
    assert net and net.group(2) == "75.00"  # five sales of 15.00
    listed = http.get(console.url + net.group(1).replace("&amp;", "&"), timeout=30).text
    assert re.findall(r'data-key="([^"]+)"', listed) == [f"{t}:{s}" for t, s in made["batch"]]
    prev = re.search(r'class="prev-net" href="([^"]+)">([^<]+)<', row.group(1))
    assert prev and prev.group(2) == "75.00"  # April 2025: the five of 2025-04-10
    listed = http.get(console.url + prev.group(1).replace("&amp;", "&"), timeout=30).text
    assert len(re.findall(r'data-key="', listed)) == 5 and "2025-04-10 12:00:00" in listed


def test_batch_drill_downs_are_the_same_with_the_page_remembered_or_not(
    console: Console,
) -> None:
    """A batches drill-down answers from what the batches page found when it holds it
    (filtered here by the link's canteen or unit), else finds them again: both the same."""
    from county.console.pages import inspection as page

    fill(console)
    with console.db.write() as conn:  # two more batches: another canteen, another agency
        book = Ledger(conn)
        book.seqs["t3"] = 100
        for day, unit in (("2026-05-20", "town1"), ("2026-05-21", "town2")):
            for i in range(4):
                book.put("t3", at_ms=local_ms(day, 12) + i * MIN, cadre=f"iss/{unit}{i}", unit=unit)
        book.flush()
    http = console.http("inspector")
    html = http.get(console.url + "/console/inspection", timeout=30).text
    links = sorted(
        {h.replace("&amp;", "&") for h in re.findall(r'href="([^"]*what=batches[^"]*)"', html)}
    )
    assert any("canteen=" in h for h in links) and any("unit=" in h for h in links)

    def keys() -> dict[str, list[str]]:
        return {
            h: re.findall(r'data-key="([^"]+)"', http.get(console.url + h, timeout=30).text)
            for h in links
        }

    remembered = keys()
    page._RESULTS.clear()
    found_again = keys()
    assert remembered == found_again
    # The links' filters tell the batches apart: not every link lists the same entries.
    assert len({tuple(k) for k in remembered.values() if k}) >= 3
