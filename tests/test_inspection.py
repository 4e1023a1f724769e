"""Discipline inspection (issue 16): batches, spending year on year, anomalies; the CLI.

Entries are written straight into the entries table (well-formed rows as intake stores
them, as tests/test_county_settlement.py does; intake is tested elsewhere), with a small
directory imported through county/directory.py: a county government running canteen c1,
a second county running c2, a township with a township office under it.

What is checked: hand-built days for each rule of a batch (own agency, distinct cadres,
reversed sales, the window from the first sale, the range's edges); a hypothesis property
against a brute-force reference; the Rucheng figure (batches and people beside a year
before) and the Anren figure (spending per township year on year, reversals netted);
repeats, multi-canteen days, off-hours against meal windows, holiday sales; the drill-down
rows; the CLI's JSON lines and its refusals, one line with exit status 2. Each on SQLite
and PostgreSQL (conftest's county_db_url), the property with fewer PostgreSQL examples.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import examples, wait_for
from countykit import ON_EACH_BACKEND, County, append_entries, provision_terminal, sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, delete, insert, text

from county import inspection, rollups
from county.cli import main as county_main
from county.db.schema import cadres, entries, rollups_meta
from county.directory import load_directory, replace_agencies, replace_canteens
from county.store import CountyStore
from protocol.agencies import parse_agencies_csv, parse_canteens_csv
from protocol.chain import ACCEPT, REJECT, REVERSAL, SALE

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
NOW_MS = 1_780_000_000_000
MIN = 60_000

AGENCIES = """code,name,level,parent,finance_account
city1,临川市人民政府,city,,6222000001
cty1,临川县人民政府,county,city1,6222000002
cty1-fin,临川县财政局,county,cty1,6222000003
cty2,东乡县人民政府,county,city1,6222000004
town1,上顿渡镇人民政府,township,cty1,6222000005
town1-pol,上顿渡镇派出所,township,town1,6222000006
town2,温圳镇人民政府,township,cty1,6222000007
"""
CANTEENS = """canteen,name,operator
c1,县政府机关食堂,cty1
c2,东乡县机关食堂,cty2
"""
TERMINALS = {"t1": "c1", "t2": "c1", "t3": "c2", "t9": "c9"}  # c9: in no directory


def local_ms(day: str, hour: int, minute: int = 0, second: int = 0) -> int:
    d = dt.date.fromisoformat(day)
    return int(
        dt.datetime(d.year, d.month, d.day, hour, minute, second, tzinfo=SHANGHAI).timestamp()
        * 1000
    )


class Ledger:
    """Writes well-formed entries into the entries table, each terminal's seq in order."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seqs: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []

    def put(
        self,
        terminal: str,
        *,
        at_ms: int,
        cadre: str = "iss/a",
        unit: str | None = "cty2",
        kind: str = SALE,
        verdict: str | None = ACCEPT,
        amount_fen: int = 1500,
        ref_seq: int | None = None,
    ) -> tuple[str, int]:
        seq = self.seqs.get(terminal, 0) + 1
        self.seqs[terminal] = seq
        self.rows.append(
            {
                "terminal": terminal,
                "canteen": TERMINALS[terminal],
                "seq": seq,
                "entry_id": f"{terminal}-{seq}",
                "at_ms": at_ms,
                "kind": kind,
                "verdict": verdict,
                "reason": "replayed" if verdict == REJECT else None,
                "method": "qr",
                "cadre": cadre,
                "credential": f"qr/{cadre}",
                "ctr": seq,
                "unit": unit,
                "day": dt.datetime.fromtimestamp(at_ms / 1000, SHANGHAI).date().isoformat(),
                "meal": "lunch",
                "amount_fen": amount_fen,
                "ref_seq": ref_seq,
                "detail": "{}",
                "prev_hash": b"\0" * 32,
                "hash": hashlib.sha256(f"{terminal}/{seq}".encode()).digest(),
                "received_ms": at_ms + 60_000,
            }
        )
        return terminal, seq

    def reverse(self, key: tuple[str, int], at_ms: int) -> None:
        self.put(key[0], kind=REVERSAL, verdict=None, at_ms=at_ms, ref_seq=key[1])

    def flush(self) -> None:
        """Store the rows and bring the summaries up to date as the intake does."""
        if self.rows:
            self.conn.execute(insert(entries), self.rows)
            for terminal in sorted({row["terminal"] for row in self.rows}):
                mine = [row for row in self.rows if row["terminal"] == terminal]
                rollups.note_entries(self.conn, sorted(mine, key=lambda row: row["seq"]))
            self.rows.clear()


@pytest.fixture
def db_url(county_db_url: str) -> str:
    store = CountyStore(county_db_url)
    try:
        with store.db.write() as conn:
            directory = parse_agencies_csv(AGENCIES)
            replace_agencies(conn, directory, NOW_MS)
            replace_canteens(conn, parse_canteens_csv(CANTEENS, directory), NOW_MS)
            conn.execute(
                insert(cadres),
                [
                    {"cadre": "iss/a", "unit": "cty2", "name": "张三", "imported_ms": NOW_MS},
                ],
            )
    finally:
        store.close()
    return county_db_url


@pytest.fixture
def store(db_url: str) -> Iterator[CountyStore]:
    opened = CountyStore(db_url)
    yield opened
    opened.close()


def write(store: CountyStore, fill: Any) -> Any:
    with store.db.write() as conn:
        book = Ledger(conn)
        made = fill(book)
        book.flush()
    return made


def batches(store: CountyStore, first: str, last: str, **kw: Any) -> list[inspection.Batch]:
    with store.db.read() as conn:
        return inspection.find_batches(
            conn, local_ms(first, 0), local_ms(last, 0) + 86_400_000, **kw
        )


# -- hand-built days ---------------------------------------------------------------------

DAY = "2026-05-12"


def test_a_batch_is_distinct_visiting_cadres_within_the_window(store: CountyStore) -> None:
    noon = local_ms(DAY, 12)

    def fill(book: Ledger) -> dict[str, Any]:
        # 5 cadres of cty2 at c1 within 14 minutes, one of them twice: a batch of 5.
        batch = [book.put("t1", at_ms=noon + m * MIN, cadre=f"iss/v{m % 5}") for m in range(6)]
        batch.append(book.put("t2", at_ms=noon + 14 * MIN, cadre="iss/v9"))
        # 6 cadres of cty1 at c1, its own canteen: no batch.
        for m in range(6):
            book.put("t1", at_ms=noon + m * MIN, cadre=f"iss/own{m}", unit="cty1")
        # 4 cadres of city1 at c2, one reversed: 3 people, no batch.
        keys = [
            book.put("t3", at_ms=noon + m * MIN, cadre=f"iss/c{m}", unit="city1") for m in range(4)
        ]
        book.reverse(keys[0], noon + 30 * MIN)
        # 4 cadres of town1 at c2, one refused: no batch.
        for m in range(4):
            book.put(
                "t3",
                at_ms=noon + m * MIN,
                cadre=f"iss/t{m}",
                unit="town1",
                verdict=REJECT if m == 0 else ACCEPT,
            )
        # 4 cadres of town2 at c9 (a canteen in no directory): every unit visits, a batch.
        for m in range(4):
            book.put("t9", at_ms=noon + m * MIN, cadre=f"iss/w{m}", unit="town2")
        return {"batch": batch}

    made = write(store, fill)
    found = batches(store, DAY, DAY)
    assert [(b.canteen, b.unit, b.people) for b in found] == [("c1", "cty2", 6), ("c9", "town2", 4)]
    first = found[0]
    assert sorted(first.entries) == sorted(made["batch"])
    assert first.start_ms == noon and first.end_ms == noon + 14 * MIN
    assert first.amount_fen == 7 * 1500
    # A higher threshold and a filter.
    assert [b.canteen for b in batches(store, DAY, DAY, min_people=6)] == ["c1"]
    assert batches(store, DAY, DAY, canteen="c2") == []
    assert [b.canteen for b in batches(store, DAY, DAY, unit="town2")] == ["c9"]


def test_the_window_runs_from_the_groups_first_sale(store: CountyStore) -> None:
    noon = local_ms(DAY, 12)

    def fill(book: Ledger) -> None:
        # Sales every 4 minutes from 12:00 to 12:28, 8 cadres: greedy groups
        # [0,4,8,12] and [16,20,24,28] with a 15-minute window, each of 4.
        for i in range(8):
            book.put("t1", at_ms=noon + 4 * i * MIN, cadre=f"iss/v{i}")
        # A sale exactly 15 minutes after a group's first starts a new group.
        for i, m in enumerate((0, 5, 10, 15)):
            book.put("t3", at_ms=noon + m * MIN, cadre=f"iss/x{i}", unit="cty1")

    write(store, fill)
    found = batches(store, DAY, DAY)
    assert [(b.canteen, b.start_ms, b.people) for b in found] == [
        ("c1", noon, 4),
        ("c1", noon + 16 * MIN, 4),
    ]
    assert [b.people for b in batches(store, DAY, DAY, window_min=16)] == [4, 4, 4]


def test_batches_stop_at_the_ranges_edges(store: CountyStore) -> None:
    late = local_ms("2026-05-12", 23, 55)

    def fill(book: Ledger) -> None:
        for i in range(4):
            book.put("t1", at_ms=late + 3 * i * MIN, cadre=f"iss/v{i}")  # 23:55 .. 00:04

    write(store, fill)
    assert [b.people for b in batches(store, "2026-05-12", "2026-05-13")] == [4]
    assert batches(store, "2026-05-12", "2026-05-12") == []
    assert batches(store, "2026-05-13", "2026-05-13") == []


def test_bad_batch_options_are_refused(store: CountyStore) -> None:
    with pytest.raises(inspection.InspectionError, match="min-people"):
        batches(store, DAY, DAY, min_people=1)
    with pytest.raises(inspection.InspectionError, match="window-min"):
        batches(store, DAY, DAY, window_min=0)


# -- the property ------------------------------------------------------------------------


def reference_batches(
    sales: list[dict[str, Any]], min_people: int, window_ms: int
) -> list[tuple[str, str, tuple[tuple[str, int], ...]]]:
    """Written from the definition, without SQL: per (canteen, unit) of a visiting agency,
    the counted sales in time order, cut greedily from each group's first sale."""
    operators = {"c1": "cty1", "c2": "cty2"}
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in sales:
        if not s["counted"] or operators.get(s["canteen"]) == s["unit"]:
            continue
        pairs.setdefault((s["canteen"], s["unit"]), []).append(s)
    out = []
    for (canteen, unit), found in sorted(pairs.items()):
        found.sort(key=lambda s: (s["at_ms"], s["key"]))
        i = 0
        while i < len(found):
            j = i
            while j < len(found) and found[j]["at_ms"] - found[i]["at_ms"] < window_ms:
                j += 1
            group = found[i:j]
            if len({s["cadre"] for s in group}) >= min_people:
                out.append((canteen, unit, tuple(s["key"] for s in group)))
            i = j
    return out


_sale = st.fixed_dictionaries(
    {
        "terminal": st.sampled_from(["t1", "t2", "t3", "t9"]),
        # Clustered, with sales exactly a window apart likely (the edge of a group).
        "minute": st.one_of(st.integers(0, 60), st.sampled_from([0, 5, 10, 15, 20, 30, 45])),
        "cadre": st.integers(0, 5),
        "unit": st.sampled_from(["cty1", "cty2", "town1"]),
        "refused": st.sampled_from([False, False, False, True]),
        "reversed": st.sampled_from([False, False, False, True]),
    }
)


def _property(
    store: CountyStore, sales: list[dict[str, Any]], min_people: int, window: int
) -> None:
    noon = local_ms(DAY, 11, 30)
    made: list[dict[str, Any]] = []
    with store.db.write() as conn:
        conn.execute(delete(entries))
        rollups.rebuild(conn)  # the summaries of the entries just deleted
        book = Ledger(conn)
        for s in sales:
            at = noon + s["minute"] * MIN
            key = book.put(
                s["terminal"],
                at_ms=at,
                cadre=f"iss/c{s['cadre']}",
                unit=s["unit"],
                verdict=REJECT if s["refused"] else ACCEPT,
            )
            if s["reversed"] and not s["refused"]:
                book.reverse(key, at + MIN)
            made.append(
                {
                    "canteen": TERMINALS[s["terminal"]],
                    "unit": s["unit"],
                    "cadre": f"iss/c{s['cadre']}",
                    "at_ms": at,
                    "key": key,
                    "counted": not s["refused"] and not s["reversed"],
                }
            )
        book.flush()
    found = batches(store, DAY, DAY, min_people=min_people, window_min=window)
    got = [(b.canteen, b.unit, b.entries) for b in found]
    assert got == reference_batches(made, min_people, window * MIN)
    for b in found:
        assert b.end_ms - b.start_ms < window * MIN
        assert b.people >= min_people


_examples = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(max_examples=examples(60), **_examples)  # type: ignore[arg-type]
@given(
    sales=st.lists(_sale, max_size=40),
    min_people=st.integers(2, 5),
    window=st.sampled_from([5, 15, 30]),
)
def test_batches_match_a_brute_force_reference_sqlite(
    sqlite_store: CountyStore,
    sales: list[dict[str, Any]],
    min_people: int,
    window: int,
) -> None:
    _property(sqlite_store, sales, min_people, window)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[CountyStore]:
    url = f"sqlite:///{tmp_path / 'county.sqlite'}"
    opened = CountyStore(url)
    with opened.db.write() as conn:
        directory = parse_agencies_csv(AGENCIES)
        replace_agencies(conn, directory, NOW_MS)
        replace_canteens(conn, parse_canteens_csv(CANTEENS, directory), NOW_MS)
    yield opened
    opened.close()


@pytest.fixture
def pg_store(pg_county_url: str) -> Iterator[CountyStore]:
    opened = CountyStore(pg_county_url)
    with opened.db.write() as conn:
        directory = parse_agencies_csv(AGENCIES)
        replace_agencies(conn, directory, NOW_MS)
        replace_canteens(conn, parse_canteens_csv(CANTEENS, directory), NOW_MS)
    yield opened
    opened.close()


@settings(max_examples=examples(8), **_examples)  # type: ignore[arg-type]
@given(
    sales=st.lists(_sale, min_size=10, max_size=40),
    min_people=st.integers(2, 4),
    window=st.sampled_from([15, 30]),
)
def test_batches_match_a_brute_force_reference_postgresql(
    pg_store: CountyStore, sales: list[dict[str, Any]], min_people: int, window: int
) -> None:
    _property(pg_store, sales, min_people, window)


# -- the Rucheng and Anren figures -------------------------------------------------------


def test_batch_summary_beside_the_year_before(store: CountyStore) -> None:
    def batch(book: Ledger, day: str, terminal: str, unit: str, people: int) -> None:
        noon = local_ms(day, 12)
        for i in range(people):
            book.put(terminal, at_ms=noon + i * MIN, cadre=f"iss/{unit}-{i}", unit=unit)

    def fill(book: Ledger) -> None:
        batch(book, "2025-03-05", "t1", "cty2", 5)
        batch(book, "2025-03-20", "t1", "city1", 6)
        batch(book, "2025-04-02", "t3", "town1", 4)
        batch(book, "2026-03-05", "t1", "cty2", 4)
        batch(book, "2026-05-31", "t3", "city1", 7)
        batch(book, "2026-06-01", "t3", "city1", 7)  # outside the period

    write(store, fill)
    start, end = local_ms("2026-03-01", 0), local_ms("2026-06-01", 0)
    with store.db.read() as conn:
        directory = load_directory(conn)
        by = {
            k: inspection.batch_summary(conn, start, end, by=k, zone=SHANGHAI, directory=directory)
            for k in inspection.BY_BATCH
        }
    total = by["canteen"].total
    assert (total.count, total.people, total.previous_count, total.previous_people) == (
        2,
        11,
        3,
        15,
    )
    assert by["canteen"].previous_start_ms == local_ms("2025-03-01", 0)
    assert by["canteen"].previous_end_ms == local_ms("2025-06-01", 0)
    rows = {
        r.key: (r.count, r.people, r.previous_count, r.previous_people) for r in by["canteen"].rows
    }
    assert rows == {"c1": (1, 4, 2, 11), "c2": (1, 7, 1, 4)}
    assert by["canteen"].rows[0].name == "县政府机关食堂"
    units = {r.key: (r.count, r.previous_count) for r in by["unit"].rows}
    assert units == {"cty2": (1, 1), "city1": (1, 1), "town1": (0, 1)}
    months = {r.key: (r.count, r.previous_count, r.previous_key) for r in by["month"].rows}
    assert months == {
        "2026-03": (1, 2, "2025-03"),
        "2026-04": (0, 1, "2025-04"),
        "2026-05": (1, 0, "2025-05"),
    }
    assert total.as_json()["batches_change_pct"] == -33.3


def test_spending_per_township_year_on_year(store: CountyStore) -> None:
    def fill(book: Ledger) -> dict[str, Any]:
        keys = {}
        noon = local_ms("2025-05-10", 12)
        book.put("t1", at_ms=noon, unit="town1", amount_fen=10_000)
        book.put("t1", at_ms=noon, unit="town1-pol", amount_fen=10_000)
        book.put("t1", at_ms=noon, unit="cty1-fin", amount_fen=500)
        noon = local_ms("2026-05-10", 12)
        keys["town1"] = book.put("t1", at_ms=noon, unit="town1", amount_fen=9_000)
        keys["pol"] = book.put("t1", at_ms=noon, unit="town1-pol", amount_fen=6_000)
        gone = book.put("t1", at_ms=noon, unit="town1-pol", amount_fen=5_000)
        book.reverse(gone, noon + 3 * 86_400_000)  # reversed later, in June: still netted
        keys["town2"] = book.put(
            "t2", at_ms=local_ms("2026-06-03", 12), unit="town2", amount_fen=700
        )
        keys["none"] = book.put("t3", at_ms=noon, unit="nowhere", amount_fen=300)
        return keys

    keys = write(store, fill)
    start, end = local_ms("2026-05-01", 0), local_ms("2026-07-01", 0)
    with store.db.read() as conn:
        directory = load_directory(conn)
        town = inspection.spending(
            conn, start, end, by="township", zone=SHANGHAI, directory=directory
        )
        agency = inspection.spending(
            conn, start, end, by="agency", zone=SHANGHAI, directory=directory
        )
        town1_keys = inspection.spending_entries(
            conn, start, end, **inspection.group_filter(directory, "township", "town1")
        )
        none_keys = inspection.spending_entries(
            conn, start, end, **inspection.group_filter(directory, "township", None)
        )
    groups = {g.group: (g.meals, g.net_fen, g.previous_net_fen, g.change_pct) for g in town.groups}
    assert groups == {
        "town1": (2, 15_000, 20_000, -25.0),
        "town2": (1, 700, 0, None),
        None: (1, 300, 500, -40.0),
    }
    months = {
        (m.group, m.month): (m.net_fen, m.previous_month, m.previous_net_fen) for m in town.months
    }
    assert months[("town1", "2026-05")] == (15_000, "2025-05", 20_000)
    assert months[("town2", "2026-06")] == (700, "2025-06", 0)
    assert town.total.net_fen == 16_000 and town.total.previous_net_fen == 20_500
    assert [(m.month, m.net_fen) for m in town.month_totals] == [
        ("2026-05", 15_300),
        ("2026-06", 700),
    ]
    by_agency = {g.group: g.net_fen for g in agency.groups}
    assert by_agency == {
        "town1": 9_000,
        "town1-pol": 6_000,
        "town2": 700,
        "nowhere": 300,
        "cty1-fin": 0,
    }
    assert {g.group: g.name for g in agency.groups}["town1-pol"] == "上顿渡镇派出所"
    assert sorted(town1_keys) == sorted([keys["town1"], keys["pol"]])
    assert none_keys == [keys["none"]]


def test_township_of() -> None:
    directory = parse_agencies_csv(AGENCIES)
    assert inspection.township_of(directory, "town1-pol") == "town1"
    assert inspection.township_of(directory, "town1") == "town1"
    assert inspection.township_of(directory, "cty1-fin") is None
    assert inspection.township_of(directory, "nowhere") is None


# -- anomalies ---------------------------------------------------------------------------


def test_repeats_multi_canteen_off_hours_and_holidays(store: CountyStore) -> None:
    def fill(book: Ledger) -> dict[str, Any]:
        made: dict[str, Any] = {"repeat": []}
        for day in ("2026-05-04", "2026-05-20", "2026-06-30"):  # 16 days, then 41
            noon = local_ms(day, 12)
            for i in range(4):
                book.put("t1", at_ms=noon + i * MIN, cadre=f"iss/r{i}", unit="city1")
            made["repeat"].append(noon)
        # iss/m at c1 for lunch and c2 for dinner on one day; at c1 twice another day.
        made["multi"] = [
            book.put("t1", at_ms=local_ms("2026-05-06", 12), cadre="iss/m", unit="cty1"),
            book.put("t3", at_ms=local_ms("2026-05-06", 18), cadre="iss/m", unit="cty1"),
        ]
        book.put("t1", at_ms=local_ms("2026-05-07", 12), cadre="iss/m", unit="cty1")
        book.put("t2", at_ms=local_ms("2026-05-07", 18), cadre="iss/m", unit="cty1")
        # Across local midnight: two local days, no multi-canteen finding (both off hours).
        made["night"] = [
            book.put("t1", at_ms=local_ms("2026-05-08", 23, 50), cadre="iss/n", unit="cty1"),
            book.put("t3", at_ms=local_ms("2026-05-09", 0, 10), cadre="iss/n", unit="cty1"),
        ]
        # Off hours: 15:00 (between lunch and dinner); 13:30 exactly is past lunch's end.
        made["off"] = [
            book.put("t2", at_ms=local_ms("2026-05-11", 13, 30), cadre="iss/o1", unit="cty1"),
            book.put("t2", at_ms=local_ms("2026-05-11", 15), cadre="iss/o2", unit="cty1"),
        ]
        book.put("t2", at_ms=local_ms("2026-05-11", 13, 29, 59), cadre="iss/o3", unit="cty1")
        gone = book.put("t2", at_ms=local_ms("2026-05-11", 16), cadre="iss/o4", unit="cty1")
        book.reverse(gone, local_ms("2026-05-11", 16, 5))
        # A holiday sale.
        made["holiday"] = [
            book.put("t3", at_ms=local_ms("2026-05-01", 12), cadre="iss/h", unit="cty2")
        ]
        return made

    made = write(store, fill)
    start, end = local_ms("2026-05-01", 0), local_ms("2026-07-01", 0)
    windows = inspection.default_windows()
    with store.db.read() as conn:
        repeats = inspection.find_repeat_batches(conn, start, end)
        multi = inspection.find_multi_canteen_days(conn, start, end, zone=SHANGHAI)
        off = inspection.find_off_hours(conn, start, end, zone=SHANGHAI, windows=windows)
        holiday = inspection.find_holiday_sales(
            conn, start, end, zone=SHANGHAI, holidays={dt.date(2026, 5, 1), dt.date(2026, 10, 1)}
        )
        # c1's own windows: lunch until 14:00 covers 13:30, nothing covers 15:00.
        own = {**windows, "c1": ((dt.time(11), dt.time(14)), (dt.time(17), dt.time(19)))}
        off_own = inspection.find_off_hours(conn, start, end, zone=SHANGHAI, windows=own)
        rows = inspection.entry_rows(
            conn, made["holiday"] + made["multi"], zone=SHANGHAI, directory=load_directory(conn)
        )
    assert [(r.canteen, r.unit, [b.start_ms for b in r.batches]) for r in repeats] == [
        ("c1", "city1", made["repeat"][:2])
    ]
    assert len(repeats[0].entries) == 8
    assert [(f.cadre, f.day, f.canteens, f.entries) for f in multi] == [
        ("iss/m", "2026-05-06", ("c1", "c2"), tuple(made["multi"]))
    ]
    assert [f.entries[0] for f in off] == made["night"] + made["off"]
    assert [f.entries[0] for f in off_own] == made["night"] + made["off"][1:]
    assert [(f.entries[0], f.day) for f in holiday] == [(made["holiday"][0], "2026-05-01")]
    assert [r["local_time"] for r in rows] == [
        "2026-05-01 12:00:00",
        "2026-05-06 12:00:00",
        "2026-05-06 18:00:00",
    ]
    assert rows[0]["cadre_name"] is None and rows[0]["canteen_name"] == "东乡县机关食堂"
    assert rows[1]["unit_name"] == "临川县人民政府" and rows[1]["reversed"] is False


def test_offset_segments_follow_daylight_saving() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    start = int(dt.datetime(2026, 3, 1, tzinfo=paris).timestamp() * 1000)
    end = int(dt.datetime(2026, 4, 1, tzinfo=paris).timestamp() * 1000)
    segs = inspection.offset_segments(start, end, paris)
    change = int(dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert segs == [(start, change, 3_600_000), (change, end, 7_200_000)]
    assert inspection.offset_segments(start, end, SHANGHAI) == [(start, end, 28_800_000)]


def test_read_holidays(tmp_path: Path) -> None:
    good = tmp_path / "holidays.txt"
    good.write_text("\ufeff# 2026\n2026-01-01 元旦\n\n2026-10-01\n", encoding="utf-8")
    assert inspection.read_holidays(good) == {dt.date(2026, 1, 1), dt.date(2026, 10, 1)}
    bad = tmp_path / "bad.txt"
    bad.write_text("2026-01-01\n2026-13-01\n", encoding="utf-8")
    with pytest.raises(inspection.InspectionError, match="line 2"):
        inspection.read_holidays(bad)
    with pytest.raises(inspection.InspectionError, match="cannot read"):
        inspection.read_holidays(tmp_path / "missing.txt")


# -- the CLI ------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = county_main(list(args))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_cli_batches_spending_and_anomalies(
    store: CountyStore, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fill(book: Ledger) -> None:
        for day in ("2025-05-12", "2026-05-12", "2026-05-14"):
            noon = local_ms(day, 12)
            for i in range(5):
                book.put("t1", at_ms=noon + i * MIN, cadre=f"iss/v{i}", unit="town1")
        book.put("t3", at_ms=local_ms("2026-05-13", 3), cadre="iss/late", unit="cty1")

    write(store, fill)
    code, lines, err = _cli(
        capsys, "batches", "--database", db_url, "--from", "2026-05-01", "--to", "2026-05-31"
    )
    assert code == 0, err
    rows = [line["row"] for line in lines]
    assert rows[0] == "period" and rows[-1] == "total"
    assert rows.count("batch") == 2 and rows.count("previous_batch") == 1
    total = lines[-1]
    assert (
        total["batches"],
        total["people"],
        total["previous_batches"],
        total["previous_people"],
    ) == (2, 10, 1, 5)
    assert total["batches_change_pct"] == 100.0
    by_canteen = [x for x in lines if x["row"] == "by_canteen"]
    assert by_canteen == [
        {
            "row": "by_canteen",
            "key": "c1",
            "name": "县政府机关食堂",
            "previous_key": "c1",
            "batches": 2,
            "people": 10,
            "previous_batches": 1,
            "previous_people": 5,
            "batches_change_pct": 100.0,
            "people_change_pct": 100.0,
        }
    ]
    first = next(x for x in lines if x["row"] == "batch")
    assert first["start"] == "2026-05-12 12:00:00" and len(first["entries"]) == 5

    code, lines, err = _cli(
        capsys,
        "spending",
        "--database",
        db_url,
        "--from",
        "2026-05-01",
        "--to",
        "2026-05-31",
        "--by",
        "township",
        "--detail",
    )
    assert code == 0, err
    group = next(x for x in lines if x["row"] == "group" and x["group"] == "town1")
    assert (group["net_fen"], group["previous_net_fen"], group["change_pct"]) == (
        15_000,
        7_500,
        100.0,
    )
    detail = next(x for x in lines if x["row"] == "entries" and x["group"] == "town1")
    assert len(detail["entries"]) == 10

    holidays = tmp_path / "h.txt"
    holidays.write_text("2026-05-14\n", encoding="utf-8")
    code, lines, err = _cli(
        capsys,
        "anomalies",
        "--database",
        db_url,
        "--from",
        "2026-05-01",
        "--to",
        "2026-05-31",
        "--holidays",
        str(holidays),
    )
    assert code == 0, err
    kinds = [x["row"] for x in lines]
    assert kinds == ["period", "repeat_batches", "off_hours"] + ["holiday"] * 5
    assert lines[2]["times"] == ["2026-05-13 03:00:00"]

    code, lines, err = _cli(
        capsys,
        "anomalies",
        "--database",
        db_url,
        "--from",
        "2026-05-01",
        "--to",
        "2026-05-31",
        "--kind",
        "off_hours",
    )
    assert code == 0 and [x["row"] for x in lines] == ["period", "off_hours"]
    code, lines, err = _cli(
        capsys, "anomalies", "--database", db_url, "--from", "2026-05-01", "--to", "2026-05-31"
    )
    assert code == 0 and "holiday sales not looked for" in err
    assert "holiday" not in lines[0]["kinds"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["batches", "--from", "2026-5-1", "--to", "2026-05-31"], "expected a date"),
        (["batches", "--from", "0001-01-01", "--to", "0001-01-31"], "lies within"),
        (
            ["spending", "--from", "0001-01-01", "--to", "0001-01-31", "--by", "agency"],
            "lies within",
        ),
        (["batches", "--from", "2026-06-01", "--to", "2026-05-31"], "is after"),
        (
            ["batches", "--from", "2026-05-01", "--to", "2026-05-31", "--min-people", "1"],
            "is not between 2",
        ),
        (
            ["batches", "--from", "2026-05-01", "--to", "2026-05-31", "--window-min", "x"],
            "not a whole number",
        ),
        (
            ["batches", "--from", "2026-05-01", "--to", "2026-05-31", "--timezone", "Mars/Base"],
            "not a known IANA zone",
        ),
        (
            ["spending", "--from", "2026-05-01", "--to", "2026-05-31", "--by", "city"],
            "invalid choice",
        ),
        (
            ["anomalies", "--from", "2026-05-01", "--to", "2026-05-31", "--kind", "holiday"],
            "needs a holidays list",
        ),
        (
            ["anomalies", "--from", "2026-05-01", "--to", "2026-05-31", "--holidays", "BAD"],
            "line 1",
        ),
        (
            ["anomalies", "--from", "2026-05-01", "--to", "2026-05-31", "--kind", "nap"],
            "invalid choice",
        ),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("tomorrow\n", encoding="utf-8")
    args = [str(bad) if a == "BAD" else a for a in args]
    url = f"sqlite:///{tmp_path / 'county.sqlite'}"
    try:
        code = county_main([*args, "--database", url])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("canteen-county")]
    assert len(lines) == 1 and message in lines[0], err


def test_cli_refuses_a_county_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    code = county_main(
        ["batches", "--data", str(tmp_path / "data"), "--from", "2026-05-01", "--to", "2026-05-31"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no county database" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data" / "county.sqlite").exists()


@pytest.mark.slow  # updates init makes root keys: about 6 s
def test_off_hours_by_the_published_meal_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --data, a canteen's meal windows are those the county published for it (its
    own settings file, else the file for all canteens), as intake judges a sale's meal."""
    data = tmp_path / "county"
    assert (
        county_main(["updates", "init", "--data", str(data), "--root-keys", str(tmp_path / "k")])
        == 0
    )
    everyone = tmp_path / "all.toml"
    everyone.write_text(
        '[[meals]]\nname = "breakfast"\nstart = "06:00"\nend = "10:00"\n'
        "price_own_fen = 300\nprice_visitor_fen = 500\n"
        '[[meals]]\nname = "lunch"\nstart = "11:00"\nend = "13:00"\n'
        "price_own_fen = 700\nprice_visitor_fen = 900\n",
        encoding="utf-8",
    )
    own = tmp_path / "c1.toml"
    own.write_text(
        '[[meals]]\nname = "lunch"\nstart = "11:00"\nend = "14:00"\n'
        "price_own_fen = 700\nprice_visitor_fen = 900\n",
        encoding="utf-8",
    )
    assert county_main(["publish", "settings", "--data", str(data), str(everyone), "--all"]) == 0
    assert (
        county_main(["publish", "settings", "--data", str(data), str(own), "--canteen", "c1"]) == 0
    )
    windows = inspection.published_windows(data, ["c1", "c2"])
    assert windows["c1"] == ((dt.time(11), dt.time(14)),)
    assert windows["c2"] == ((dt.time(6), dt.time(10)), (dt.time(11), dt.time(13)))
    assert windows[None] == inspection.default_windows()[None]

    store = CountyStore(f"sqlite:///{data / 'county.sqlite'}")
    try:
        made = write(
            store,
            lambda book: [
                book.put(t, at_ms=local_ms(DAY, h, m), cadre=f"iss/{t}{h}", unit="cty1")
                for t, h, m in (("t1", 13, 45), ("t3", 13, 45), ("t1", 9, 30), ("t3", 9, 30))
            ],
        )
    finally:
        store.close()
    capsys.readouterr()
    args = ["anomalies", "--data", str(data), "--from", DAY, "--to", DAY, "--kind", "off_hours"]
    assert county_main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    flagged = [tuple(x["entries"][0]) for x in lines if x["row"] == "off_hours"]
    # c1 (t1): lunch until 14:00, no breakfast; c2 (t3): breakfast, lunch until 13:00.
    assert flagged == [made[2], made[1]]


# -- the summaries the intake keeps (county/rollups.py) ----------------------------------------

SUMMARIES = ("visits", "sales_slots", "sales_days", "multi_days", "rollups_meta")


def _summaries(store: CountyStore) -> dict[str, list[tuple[Any, ...]]]:
    with store.db.read() as conn:
        return {
            name: sorted(tuple(row) for row in conn.execute(text(f"SELECT * FROM {name}")))
            for name in SUMMARIES
        }


def _plant(store: CountyStore, *, absurd: bool) -> dict[str, Any]:
    """Sales in three syncs' worth of flushes, as terminals would send them: visitors and
    home cadres at both canteens, a reversal in a later sync, a second reversal of the
    same sale, a reversal of a refusal, a cadre at both canteens on one day (his two
    sales from two terminals in two syncs), and, when ``absurd``, an amount no meal has."""
    day = "2026-05-12"
    keys: dict[str, Any] = {}

    def first(book: Ledger) -> None:
        for i in range(5):  # a batch of cty2 at c1, and cty2's own cadres at c2
            keys[f"v{i}"] = book.put("t1", at_ms=local_ms(day, 11, 40 + i), cadre=f"iss/v{i}")
            book.put("t3", at_ms=local_ms(day, 12, i), cadre=f"iss/h{i}")
        keys["refused"] = book.put("t2", at_ms=local_ms(day, 12, 30), verdict=REJECT)
        keys["c1"] = book.put("t2", at_ms=local_ms(day, 7, 15), cadre="iss/m", unit="cty1")

    def second(book: Ledger) -> None:
        book.reverse(keys["v0"], local_ms(day, 13))
        book.reverse(keys["v0"], local_ms(day, 13, 1))
        book.reverse(keys["refused"], local_ms(day, 13, 2))
        keys["c2"] = book.put("t3", at_ms=local_ms(day, 18, 5), cadre="iss/m", unit="cty1")
        book.put("t9", at_ms=local_ms(day, 18, 20), cadre="iss/n", unit=None)
        book.put("t3", at_ms=local_ms(day, 15, 10), cadre="iss/h1")  # between meals
        # A visit from another terminal between two that arrived in the first sync, and
        # one of cty2's at c1 at dinner, far from the others.
        book.put("t2", at_ms=local_ms(day, 11, 42, 30), cadre="iss/v9")
        book.put("t2", at_ms=local_ms(day, 19, 0), cadre="iss/v8")
        if absurd:
            book.put("t9", at_ms=local_ms(day, 18, 25), cadre="iss/n", amount_fen=2**62)

    seqs: dict[str, int] = {}
    for fill in (first, second):  # one write transaction each, as two syncs
        with store.db.write() as conn:
            book = Ledger(conn)
            book.seqs = seqs
            fill(book)
            book.flush()
    return keys


@pytest.mark.parametrize(
    "absurd, zone", [(False, "Asia/Shanghai"), (True, "Asia/Shanghai"), (False, "Europe/Berlin")]
)
def test_the_summaries_kept_sync_by_sync_equal_a_rebuild(
    store: CountyStore, absurd: bool, zone: str
) -> None:
    """Kept sync by sync as the intake does, then made again from the entries: the same
    rows; in the county's zone, and in a zone with daylight saving (local days worked
    out sale by sale, not by one offset in SQL)."""
    with store.db.write() as conn:
        rollups.rebuild(conn, zone)
    _plant(store, absurd=absurd)
    kept = _summaries(store)
    day = (dt.date(2026, 5, 12) - dt.date(1970, 1, 1)).days
    assert kept["multi_days"] == [("iss/m", day)]
    # cty2's five at c1 and cty1's one at c2, not the sale without an agency at c9; the
    # absurd sale is cty2's at c9, a canteen no agency runs.
    assert len(kept["visits"]) == 5 + 1 + 2 + absurd
    near = {(r[0], r[1]): r[7] for r in kept["visits"]}
    assert near[("t1", 3)] == near[("t2", 4)] == 30_000  # v2 at 11:42, v9 at 11:42:30
    assert near[("t2", 5)] == (19 * 60 - (11 * 60 + 44)) * 60_000  # dinner, against 11:44
    c1_lunch = [r for r in kept["sales_days"] if r[1] == "c1" and r[2] == "cty2"]
    assert sum(r[3] for r in c1_lunch) == 4 + 2  # five sales, one reversed (twice); two more
    assert sum(r[4] for r in c1_lunch) == 6 * 1500
    meta = [row for row in kept["rollups_meta"] if row[0] != "zone"]
    assert meta == ([("unsummed", "1")] if absurd else [])
    with store.db.write() as conn:
        rollups.rebuild(conn)
    assert _summaries(store) == kept


def test_the_pages_read_from_the_summaries_what_the_entries_say(store: CountyStore) -> None:
    """Spending, the canteens of a period, meals per window and multi-canteen days, from the
    summaries and then from the entries alone (the summaries made unusable: an unsummed
    sale, and multi_days kept in another zone)."""
    from county import meals

    _plant(store, absurd=False)
    first, last = dt.date(2026, 5, 1), dt.date(2026, 5, 31)
    lo, hi = local_ms("2026-05-01", 0), local_ms("2026-06-01", 0)

    def answers() -> Any:
        with store.db.read() as conn:
            directory = load_directory(conn)
            spent = [
                inspection.spending(conn, lo, hi, by=by, zone=SHANGHAI, directory=directory)
                for by in ("agency", "township")
            ]
            seen = inspection.canteens_seen(conn, lo, hi, SHANGHAI)
            assert inspection.canteens_seen(conn, lo, hi) == seen  # from sales_slots
            served = meals.meals_per_window(
                conn, first, last, zone=SHANGHAI, windows=meals.default_windows(), canteens=seen
            )
            served += meals.meals_per_window(
                conn,
                first,
                last,
                zone=SHANGHAI,
                windows=meals.default_windows(),
                canteens=seen,
                by_day=False,
            )
            multi = inspection.find_multi_canteen_days(conn, lo, hi, zone=SHANGHAI)
            off = inspection.find_off_hours(
                conn, lo, hi, zone=SHANGHAI, windows=inspection.default_windows()
            )
            return spent, seen, [m.cells for m in served], multi, off

    summed = answers()
    assert summed[1] == ["c1", "c2", "c9"]
    assert [f.cadre for f in summed[3]] == ["iss/m"]
    assert summed[0][0].total.meals == 5 + 5 + 1 + 1 + 1 + 1 + 2 - 1
    assert [f.at_ms for f in summed[4]] == [(local_ms("2026-05-12", 15, 10),)]
    with store.db.write() as conn:
        conn.execute(
            insert(rollups_meta),
            [
                {"name": "unsummed", "value": "1"},
                {"name": "zone", "value": "UTC"},
            ],
        )
    assert answers() == summed


def test_a_new_operator_changes_which_sales_are_visits(store: CountyStore) -> None:
    """The visits of a canteen are made again when its operator changes: cty2's five
    cadres at c1 are a batch while cty1 runs c1, and none once cty2 does."""
    _plant(store, absurd=False)
    assert [b.unit for b in batches(store, "2026-05-12", "2026-05-12")] == ["cty2"]
    with store.db.write() as conn:
        directory = load_directory(conn)
        moved = CANTEENS.replace("c1,县政府机关食堂,cty1", "c1,县政府机关食堂,cty2")
        replace_canteens(conn, parse_canteens_csv(moved, directory), NOW_MS)
    assert batches(store, "2026-05-12", "2026-05-12") == []
    kept = _summaries(store)
    with store.db.write() as conn:
        rollups.rebuild(conn)
    assert _summaries(store) == kept


# A whole daemon (or a county server and a terminal's sync): 5-9 s, in the second step.
@pytest.mark.slow
@ON_EACH_BACKEND
def test_a_terminals_sync_keeps_the_summaries(county: County, tmp_path: Path) -> None:
    """Through the real intake (HTTPS, mTLS): a terminal's sales and its staff's undos
    reach sales_slots as they arrive, the same as a rebuild from the entries."""
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    book = term.open_ledger()
    try:
        append_entries(book, 120, unit="cty2")  # every ninth refused, two reversed
    finally:
        book.close()
    sync(term)
    store = county.store
    kept = _summaries(store)
    with store.db.read() as conn:
        counted = conn.execute(
            text(
                "SELECT count(*) FROM entries s WHERE kind = 'sale' AND verdict = 'accept' "
                "AND NOT EXISTS (SELECT 1 FROM entries r WHERE r.kind = 'reversal' "
                "AND r.terminal = s.terminal AND r.ref_seq = s.seq)"
            )
        ).scalar_one()
    assert counted > 90
    assert sum(row[2] for row in kept["sales_slots"]) == counted
    assert sum(row[3] for row in kept["sales_days"]) == counted
    with store.db.write() as conn:
        rollups.rebuild(conn)
    assert _summaries(store) == kept


def test_db_rollups_makes_the_summaries_again(
    store: CountyStore, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`canteen-county db rollups` after the summaries were lost (or a zone changed): the
    same tables as the intake kept; a zone that does not exist is one line, nothing done."""
    _plant(store, absurd=False)
    kept = _summaries(store)
    with store.db.write() as conn:
        for name in SUMMARIES:
            conn.execute(text(f"DELETE FROM {name}"))
    assert county_main(["db", "rollups", "--database", db_url, "--timezone", "Mars/Base"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Mars/Base" in err
    assert all(rows == [] for rows in _summaries(store).values())
    assert county_main(["db", "rollups", "--database", db_url]) == 0
    out, _ = capsys.readouterr()
    assert "8 visiting sales" in out and "1 multi-canteen days (Asia/Shanghai)" in out
    assert _summaries(store) == kept


@pytest.mark.parametrize("waits_on", ["cadre", "visits"])
def test_two_servers_taking_related_sales_at_once_keep_the_summaries(
    pg_store: CountyStore, waits_on: str
) -> None:
    """Two server processes' intakes in two transactions at the same moment, on
    PostgreSQL. The first takes cadre m's breakfast at c1 (a visit: cty2 does not run
    c1) and holds its transaction open; the second takes, first, either m's dinner at c2
    (``cadre``) or another cty2 breakfast at c1 a minute later (``visits``), then the
    other. Neither would see the other's sale before it commits: the second waits on the
    first's lock of the cadre, or of c1's cty2 visits, so the day is a multi-canteen day,
    both breakfasts are counted, each visit knows the other is a minute away, and the
    summaries equal a rebuild."""
    day = "2026-05-12"
    first_in = threading.Event()
    results: list[BaseException | None] = []

    def first() -> None:
        try:
            with pg_store.db.write() as conn:
                book = Ledger(conn)
                book.put("t1", at_ms=local_ms(day, 7, 1), cadre="iss/m", unit="cty2")
                book.flush()
                first_in.set()
                # Hold the transaction until the second intake waits on a lock of ours.
                wait_for(lambda: _waiting_on_locks(pg_store) > 0, 30, "the second intake waits")
            results.append(None)
        except BaseException as exc:  # reported by the main thread
            first_in.set()
            results.append(exc)

    dinner = {"terminal": "t3", "at_ms": local_ms(day, 18, 5), "cadre": "iss/m"}
    visit = {"terminal": "t2", "at_ms": local_ms(day, 7, 2), "cadre": "iss/o"}

    def second() -> None:
        with pg_store.db.write() as conn:
            book = Ledger(conn)
            for sale in (dinner, visit) if waits_on == "cadre" else (visit, dinner):
                book.put(sale["terminal"], at_ms=sale["at_ms"], cadre=sale["cadre"], unit="cty2")
                book.flush()  # the first waits on the other intake's lock

    holder = threading.Thread(target=first)
    holder.start()
    assert first_in.wait(30)
    second()
    holder.join(30)
    assert results == [None]
    kept = _summaries(pg_store)
    assert kept["multi_days"] == [("iss/m", (dt.date(2026, 5, 12) - dt.date(1970, 1, 1)).days)]
    breakfast = [r for r in kept["sales_slots"] if r[1] == "c1"]
    assert [(r[2], r[3]) for r in breakfast] == [(2, 3000)]
    assert sorted(r[7] for r in kept["visits"] if r[2] == "c1") == [60_000, 60_000]
    with pg_store.db.write() as conn:
        rollups.rebuild(conn)
    assert _summaries(pg_store) == kept


def _waiting_on_locks(store: CountyStore) -> int:
    with store.db.read() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()")
            ).scalar_one()
        )


def test_migration_0007_fills_the_summaries_of_a_county_that_has_entries(tmp_path: Path) -> None:
    """A county at 0006 with sales, upgraded: the summaries are made from its entries
    right after the revisions, as the intake would have kept them."""
    from county.db import Database, migrations

    db = Database(f"sqlite:///{tmp_path / 'county.sqlite'}")
    try:
        migrations.upgrade(db, to="0006")
        with db.write() as conn:
            directory = parse_agencies_csv(AGENCIES)
            replace_agencies(conn, directory, NOW_MS)
            conn.execute(
                text(
                    "INSERT INTO canteens (canteen, name, operator, imported_ms) VALUES "
                    "('c1', '县政府机关食堂', 'cty1', 0), ('c2', '东乡县机关食堂', 'cty2', 0)"
                )
            )
            book = Ledger(conn)
            for i in range(5):
                book.put("t1", at_ms=local_ms("2026-05-12", 11, 40 + i), cadre=f"iss/v{i}")
            book.put("t3", at_ms=local_ms("2026-05-12", 18), cadre="iss/v0")
            conn.execute(insert(entries), book.rows)  # as an older county stored them
        assert migrations.upgrade(db) == ("0006", migrations.head())
        store = CountyStore(f"sqlite:///{tmp_path / 'county.sqlite'}")
        try:
            filled = _summaries(store)
            assert len(filled["visits"]) == 5 and len(filled["multi_days"]) == 1
            assert filled["rollups_meta"] == []
            with store.db.write() as conn:
                rollups.rebuild(conn)
            assert _summaries(store) == filled
        finally:
            store.close()
    finally:
        db.close()


def test_a_county_whose_summaries_were_never_filled_is_refused_or_filled(
    pg_county_url: str, tmp_path: Path
) -> None:
    """An upgrade killed after the revisions and before the fill: a PostgreSQL server
    refuses to start in one line naming `db upgrade`, which fills them; a SQLite county
    is filled by the next command that opens it."""
    from county.db import Database, DatabaseError, migrations

    for url in (pg_county_url, f"sqlite:///{tmp_path / 'county.sqlite'}"):
        db = Database(url)
        try:
            migrations.upgrade(db)
            with db.write() as conn:
                conn.execute(insert(rollups_meta).values(name="fill", value="0007"))
            if db.is_sqlite:
                migrations.prepare(db)
            else:
                with pytest.raises(DatabaseError, match=r"never filled.*db upgrade"):
                    migrations.prepare(db)
                migrations.upgrade(db)
                migrations.prepare(db)
            with db.read() as conn:
                assert not rollups.fill_requested(conn)
        finally:
            db.close()
