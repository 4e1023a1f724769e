"""The county's reads by range, canteen and terminal (issue 14, "Volume"), on SQLite and
PostgreSQL (conftest's `county_db_url`).

The county is filled through its real intake: each terminal keeps a real ledger
(terminal/ledger.py, its own key and hash chain) and uploads it as the sync does
(LedgerReader's batch, a checkpoint signed with the pinned key) into CountyStore.intake.
Around local midnight the entries are placed so that a day in China (UTC+8) and the UTC
day differ, and some have no service day (refusals before a meal window was known):
those count on the local day of their time, the others on their service day even when
it was served after midnight.

What is checked: each filter of `entries` (--from/--to, --canteen, --terminal, combined)
selects exactly the entries a plain Python filter over every entry selects, in terminal
and sequence order; the report's totals over a range are the Python sum over those
entries; `entries` streams (memory bounded by its batch, not by the result); the
queries answer from the report indexes (EXPLAIN); and the commands' bad input is one
line with exit status 2.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, event

from county import reports
from county.cli import main as county_main
from county.reports import DayRange
from county.store import OK, CountyStore
from protocol.chain import ACCEPT, REJECT, REVERSAL, SALE, EntryDraft
from terminal.ledger import Ledger
from terminal.sync import LedgerReader, _batch_checkpoint

CHINA = dt.timezone(dt.timedelta(hours=8))
NOW_MS = int(dt.datetime(2026, 6, 1, 12, tzinfo=CHINA).timestamp() * 1000)
DAY = 86_400_000


def local_ms(day: str, hour: int, minute: int = 0) -> int:
    """Milliseconds of a local (UTC+8) time on ``day``."""
    d = dt.date.fromisoformat(day)
    return int(dt.datetime(d.year, d.month, d.day, hour, minute, tzinfo=CHINA).timestamp() * 1000)


def on_day(entry: dict[str, Any], hours: int = 8) -> str:
    """The day an entry counts on, the rule written out plainly: its service day, else the
    local day of its time."""
    if entry["day"] is not None:
        return str(entry["day"])
    zone = dt.timezone(dt.timedelta(hours=hours))
    return dt.datetime.fromtimestamp(entry["at_ms"] / 1000, zone).date().isoformat()


# Entries around local midnight whose UTC day is another day, all without a service day.
LATE_REFUSAL_MS = local_ms("2026-05-28", 23, 50)  # 15:50 UTC, 05-28 either way
AFTER_MIDNIGHT_MS = local_ms("2026-05-29", 0, 20)  # 16:20 UTC on 05-28: local day 05-29
EARLY_REFUSAL_MS = local_ms("2026-05-28", 7, 30)  # 23:30 UTC on 05-27: local day 05-28
# A sale of the 05-28 dinner rung up after local midnight: it counts on its service day.
SERVED_LATE_MS = local_ms("2026-05-29", 0, 10)


class Till:
    """One terminal: registered and provisioned in the county, with its own ledger."""

    def __init__(self, store: CountyStore, root: Path, terminal_id: str, canteen: str) -> None:
        self.store, self.terminal_id, self.canteen = store, terminal_id, canteen
        self.key = Ed25519PrivateKey.generate()
        secret = store.add_terminal(terminal_id, canteen, NOW_MS)
        store.bind_certificate(
            secret,
            terminal_id,
            hashlib.sha256(terminal_id.encode()).hexdigest(),
            self.key.public_key().public_bytes_raw(),
            NOW_MS,
        )
        self.path = root / f"{terminal_id}.sqlite"
        # Genesis (no service day) at 09:00 local on 05-26.
        self.book = Ledger.open(
            self.path,
            terminal_id=terminal_id,
            signing_key=self.key,
            now_ms=local_ms("2026-05-26", 9),
        )
        self.acked = 0
        self.numbers = itertools.count(1)

    def sale(self, at_ms: int, day: str, fen: int, *, meal: str = "lunch") -> int:
        n = next(self.numbers)
        entry = self.book.append(
            EntryDraft(
                kind=SALE,
                verdict=ACCEPT,
                method="card",
                cadre=f"card/{self.terminal_id}-{n}",
                credential=f"card/{self.terminal_id}-{n:08x}",
                unit=f"u{n % 3}",
                day=day,
                meal=meal,
                amount_fen=fen,
            ),
            at_ms,
        )
        return entry.seq

    def refusal(self, at_ms: int, reason: str, day: str | None = None) -> None:
        self.book.append(
            EntryDraft(kind=SALE, verdict=REJECT, reason=reason, method="card", day=day), at_ms
        )

    def reversal(self, seq: int, at_ms: int, day: str, fen: int) -> None:
        self.book.append(
            EntryDraft(
                kind=REVERSAL,
                method="card",
                cadre=f"card/{self.terminal_id}-{seq}",
                day=day,
                meal="lunch",
                amount_fen=fen,
                ref_seq=seq,
                detail={"staff": "s1"},
            ),
            at_ms,
        )

    def upload(self) -> None:
        """Send everything not yet acknowledged, as the terminal's sync does."""
        reader = LedgerReader(self.path)
        try:
            while True:
                rows = reader.batch(self.acked + 1, 2000)
                if not rows:
                    return
                cps = reader.checkpoints(rows[0][0], rows[-1][0])
                if not cps or cps[-1][0] != rows[-1][0]:
                    cps.append(_batch_checkpoint(self.key, self.terminal_id, rows[-1]))
                doc = {"nonce": "", "entries": rows, "checkpoints": cps}
                result = self.store.intake(self.terminal_id, doc, NOW_MS)
                assert result.status == OK, result.problem
                self.acked = result.acked_seq
        finally:
            reader.close()

    def close(self) -> None:
        self.book.close()


def fill(store: CountyStore, root: Path) -> None:
    """Three terminals at two canteens over 05-27..05-29, with the midnight cases."""
    tills = [
        Till(store, root, "north-1", "north"),
        Till(store, root, "north-2", "north"),
        Till(store, root, "south-1", "south"),
    ]
    try:
        for i, till in enumerate(tills):
            fen = 1000 + 100 * i
            till.sale(local_ms("2026-05-27", 12), "2026-05-27", fen)
            till.sale(local_ms("2026-05-27", 18), "2026-05-27", fen, meal="dinner")
            till.refusal(EARLY_REFUSAL_MS, "replayed")
            first = till.sale(local_ms("2026-05-28", 12), "2026-05-28", fen)
            till.sale(local_ms("2026-05-28", 12, 5), "2026-05-28", fen + 50)
            till.refusal(local_ms("2026-05-28", 12, 6), "already_served", "2026-05-28")
            till.reversal(first, local_ms("2026-05-28", 12, 9), "2026-05-28", fen)
            till.refusal(LATE_REFUSAL_MS, "expired")
            till.sale(SERVED_LATE_MS, "2026-05-28", fen + 7, meal="dinner")
            till.refusal(AFTER_MIDNIGHT_MS, "revoked")
            till.sale(local_ms("2026-05-29", 12), "2026-05-29", fen + 1)
            till.upload()
    finally:
        for till in tills:
            till.close()


@pytest.fixture
def store(county_db_url: str, tmp_path: Path) -> Iterator[CountyStore]:
    s = CountyStore(county_db_url)
    try:
        fill(s, tmp_path)
        yield s
    finally:
        s.close()


RANGES = [
    DayRange("2026-05-28", "2026-05-28"),
    DayRange("2026-05-29", None),
    DayRange(None, "2026-05-27"),
    DayRange("2026-05-27", "2026-05-28"),
    DayRange("2026-05-26", "2026-05-26"),
    DayRange("2026-05-28", "2026-05-28", utc_offset_h=0),
    DayRange(None, None),
]


def in_range(entry: dict[str, Any], days: DayRange) -> bool:
    day = on_day(entry, days.utc_offset_h)
    return (days.first is None or day >= days.first) and (days.last is None or day <= days.last)


def test_each_filter_selects_exactly_the_entries_on_its_days(store: CountyStore) -> None:
    every = list(store.iter_entries())
    # 3 terminals x (genesis + 11 entries), by terminal and sequence number.
    assert len(every) == 36
    assert [(e["terminal"], e["seq"]) for e in every] == sorted(
        (e["terminal"], e["seq"]) for e in every
    )
    for days, canteen, terminal in itertools.product(RANGES, (None, "north"), (None, "north-2")):
        got = list(store.iter_entries(terminal, days=days, canteen=canteen))
        want = [
            e
            for e in every
            if in_range(e, days)
            and (canteen is None or e["canteen"] == canteen)
            and (terminal is None or e["terminal"] == terminal)
        ]
        assert got == want, (days, canteen, terminal)

    def times(days: DayRange, canteen: str | None = None) -> set[int]:
        return {e["at_ms"] for e in store.iter_entries(days=days, canteen=canteen)}

    the_28th = times(DayRange("2026-05-28", "2026-05-28"))
    the_29th = times(DayRange("2026-05-29", "2026-05-29"))
    # Without a service day: the local day, not the UTC day.
    assert EARLY_REFUSAL_MS in the_28th and LATE_REFUSAL_MS in the_28th
    assert AFTER_MIDNIGHT_MS in the_29th and AFTER_MIDNIGHT_MS not in the_28th
    # With one: the service day, whatever the clock said.
    assert SERVED_LATE_MS in the_28th and SERVED_LATE_MS not in the_29th
    # At UTC+0 the refusal 20 minutes after local midnight was on the 28th.
    assert AFTER_MIDNIGHT_MS in times(DayRange("2026-05-28", "2026-05-28", utc_offset_h=0))
    # The genesis entries (no day, 05-26 local) are on the 26th only.
    assert {e["kind"] for e in store.iter_entries(days=DayRange("2026-05-26", "2026-05-26"))} == {
        "genesis"
    }
    assert {e["terminal"] for e in store.iter_entries(canteen="south")} == {"south-1"}
    assert list(store.iter_entries(canteen="nowhere")) == []
    assert list(store.iter_entries("north-1", canteen="south")) == []


def expected_days(entries: list[dict[str, Any]], hours: int = 8) -> list[dict[str, Any]]:
    """The report's "days", summed in plain Python from the entries."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        if e["kind"] not in (SALE, REVERSAL):
            continue
        key = (e["canteen"], on_day(e, hours))
        d = out.setdefault(
            key,
            {"canteen": key[0], "day": key[1], "meals": 0, "amount_fen": 0, "reversals": 0,
             "refusals": {}, "conflicts": 0},
        )  # fmt: skip
        if e["kind"] == REVERSAL:
            d["meals"] -= 1
            d["amount_fen"] -= e["amount_fen"]
            d["reversals"] += 1
        elif e["verdict"] == ACCEPT:
            d["meals"] += 1
            d["amount_fen"] += e["amount_fen"]
        else:
            d["refusals"][e["reason"]] = d["refusals"].get(e["reason"], 0) + 1
    return [out[k] for k in sorted(out)]


def test_report_totals_over_a_range_are_the_sum_of_its_entries(store: CountyStore) -> None:
    for days, canteen in itertools.product(RANGES, (None, "north", "south")):
        report = store.report(NOW_MS, DAY, days.utc_offset_h, days=days, canteen=canteen)
        entries = list(store.iter_entries(days=days, canteen=canteen))
        assert report["days"] == expected_days(entries, days.utc_offset_h), (days, canteen)
        assert (report["from"], report["to"], report["canteen"]) == (
            days.first,
            days.last,
            canteen,
        )
    # Spelled out once: north on the 28th. Two terminals, each: two sales, one reversed,
    # the late dinner sale; refusals: early and late (no day) and one with the day.
    report = store.report(NOW_MS, DAY, days=DayRange("2026-05-28", "2026-05-28"), canteen="north")
    (north,) = report["days"]
    assert north["meals"] == 2 * (3 - 1)
    assert north["amount_fen"] == (1050 + 1007) + (1150 + 1107)
    assert north["reversals"] == 2
    assert north["refusals"] == {"replayed": 2, "already_served": 2, "expired": 2}
    # The report's other keys stay, for the canteen asked.
    assert {"conflicts_by_unit", "terminals_not_heard_from", "alarms", "alarms_by_kind"} <= set(
        report
    )
    assert {t["canteen"] for t in report["terminals_not_heard_from"]} <= {"north"}
    # No range: every day, as the report always was.
    whole = store.report(NOW_MS, DAY)
    assert whole["days"] == expected_days(list(store.iter_entries()))


def test_entries_stream_within_their_batch_not_the_whole_result(
    county_db_url: str, tmp_path: Path
) -> None:
    store = CountyStore(county_db_url)
    try:
        till = Till(store, tmp_path, "big-1", "big")
        try:
            with till.book.group():
                for i in range(1200):
                    till.sale(local_ms("2026-05-28", 11) + i * 1000, "2026-05-28", 1000)
            till.upload()
        finally:
            till.close()
        days = DayRange("2026-05-28", "2026-05-28")

        def peak(consume: Callable[[Iterator[dict[str, Any]]], object]) -> int:
            """The most memory Python held while ``consume`` read the day's entries, 50 rows
            a database batch (the command reads 1,000: the same code, a smaller batch)."""
            with store.db.read() as conn:
                tracemalloc.start()
                try:
                    consume(reports.iter_entries(conn, days=days, batch_rows=50))
                    return tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()

        def walk(it: Iterator[dict[str, Any]]) -> int:
            n = sum(1 for _ in it)
            assert n == 1200
            return n

        whole = peak(list)
        streamed = peak(walk)
        # The whole result held at once, against one batch at a time.
        assert streamed < whole / 4, (streamed, whole)
        # The store's generator: the first entry of the day comes while the rest is still
        # in the database, and closing it early ends its read transaction.
        first = store.iter_entries(days=days)
        assert next(first)["seq"] == 2  # 1 is the genesis, on 05-26
        first.close()
        assert sum(1 for _ in store.iter_entries(days=days)) == 1200
    finally:
        store.close()


def _plans(store: CountyStore, work: Callable[[CountyStore], object]) -> list[str]:
    """The plan of each query on entries that ``work`` runs, as one text each. On
    PostgreSQL sequential scans are turned off for the EXPLAIN: on a few dozen rows the
    planner rightly prefers one, and the question here is which index the query can use."""
    seen: list[tuple[str, Any]] = []

    def note(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if "FROM entries" in statement and not statement.startswith("EXPLAIN"):
            seen.append((statement, params))

    event.listen(store.db.engine, "before_cursor_execute", note)
    try:
        work(store)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", note)
    out = []
    with store.db.read() as conn:
        if not store.db.is_sqlite:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params in seen:
            if store.db.is_sqlite:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                out.append("\n".join(str(r[3]) for r in rows))
            else:
                rows = conn.exec_driver_sql("EXPLAIN " + statement, params)
                out.append("\n".join(str(r[0]) for r in rows))
    return out


def test_the_filters_answer_from_the_report_indexes(store: CountyStore) -> None:
    days = DayRange("2026-05-28", "2026-05-28")
    sqlite = store.db.is_sqlite
    # A canteen and a range: (canteen, day) or (day) then the canteen, as the statistics
    # say (on a few dozen rows either); bench/county_reads.py shows the plans at 2 million.
    cases: list[tuple[str, Callable[[CountyStore], object], list[set[str]]]] = [
        # Each statement of the work, with the indexes one of which its plan must name.
        (
            "entries by days",
            lambda s: list(s.iter_entries(days=days)),
            [{"entries_day"}],
        ),
        (
            "entries of a canteen",
            lambda s: list(s.iter_entries(canteen="north")),
            [{"entries_canteen_day"}],
        ),
        (
            "entries of a terminal",
            lambda s: list(s.iter_entries("north-1")),
            [{"PRIMARY KEY", "entries_pkey", "entries_terminal_at"}],
        ),
        (
            "entries of a canteen by days",
            lambda s: list(s.iter_entries(canteen="north", days=days)),
            [{"entries_canteen_day", "entries_day"}],
        ),
        (
            "report by days",
            lambda s: s.report(NOW_MS, DAY, days=days),
            # The totals of entries with a day, then of those without one.
            [{"entries_day"}, {"entries_day", "entries_at_ms"}],
        ),
        (
            "report of a canteen by days",
            lambda s: s.report(NOW_MS, DAY, days=days, canteen="north"),
            [
                {"entries_canteen_day", "entries_day"},
                {"entries_canteen_day", "entries_day", "entries_at_ms"},
            ],
        ),
    ]
    for what, work, indexes in cases:
        plans = _plans(store, work)
        assert len(plans) == len(indexes), (what, plans)
        for plan, names in zip(plans, indexes, strict=True):
            assert any(name in plan for name in names), f"{what}: {plan}"
            if sqlite:
                # Every step on entries searches an index; none scans the table.
                assert "SCAN entries" not in plan, f"{what}: {plan}"
            else:
                assert "Seq Scan" not in plan, f"{what}: {plan}"


def _county(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    rc = county_main(list(args))
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def test_the_commands_take_the_range_canteen_and_terminal(
    store: CountyStore, county_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database", county_db_url)
    rc, out, err = _county(capsys, "entries", *db, "--from", "2026-05-28", "--to", "2026-05-28",
                           "--canteen", "north")  # fmt: skip
    assert rc == 0, err
    days = DayRange("2026-05-28", "2026-05-28")
    assert [json.loads(line) for line in out] == list(
        store.iter_entries(days=days, canteen="north")
    )
    rc, out, err = _county(capsys, "entries", *db, "--terminal", "south-1", "--from", "2026-05-29")
    assert rc == 0, err
    got = [json.loads(line) for line in out]
    assert {e["terminal"] for e in got} == {"south-1"}
    assert {e["at_ms"] for e in got} == {AFTER_MIDNIGHT_MS, local_ms("2026-05-29", 12)}
    # --utc-offset moves the day of the entries without a service day.
    rc, out, _ = _county(capsys, "entries", *db, "--from", "2026-05-29", "--utc-offset", "0")
    assert AFTER_MIDNIGHT_MS not in {json.loads(line)["at_ms"] for line in out}

    rc, out, err = _county(capsys, "report", *db, "--from", "2026-05-27", "--to", "2026-05-28",
                           "--canteen", "south")  # fmt: skip
    assert rc == 0, err
    report = json.loads("\n".join(out))
    assert [(d["canteen"], d["day"]) for d in report["days"]] == [
        ("south", "2026-05-27"),
        ("south", "2026-05-28"),
    ]
    # No range: the last 7 local days, today included; these entries are older.
    rc, out, err = _county(capsys, "report", *db)
    assert rc == 0, err
    report = json.loads("\n".join(out))
    today = dt.datetime.now(CHINA).date()
    assert report["days"] == []
    assert report["to"] in {today.isoformat(), (today + dt.timedelta(days=1)).isoformat()}
    first, last = dt.date.fromisoformat(report["from"]), dt.date.fromisoformat(report["to"])
    assert (last - first).days == 6
    # --to alone: the 7 days up to it.
    rc, out, err = _county(capsys, "report", *db, "--to", "2026-05-29")
    assert rc == 0, err
    report = json.loads("\n".join(out))
    assert (report["from"], report["to"]) == ("2026-05-23", "2026-05-29")
    assert [(d["canteen"], d["day"][-2:]) for d in report["days"]] == [
        (c, d) for c in ("north", "south") for d in ("27", "28", "29")
    ]
    rc, out, err = _county(capsys, "report", *db, "--to", "2026-05-29", "--text")
    assert rc == 0, err
    assert out[0].startswith("north 2026-05-27: 4 meals, 42.00 yuan, refusals: none")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("entries", "--from", "2026-13-01"), "--from '2026-13-01': expected a date YYYY-MM-DD"),
        (("entries", "--to", "28/05/2026"), "--to '28/05/2026': expected a date YYYY-MM-DD"),
        (("entries", "--from", "2026-5-28"), "--from '2026-5-28': expected a date YYYY-MM-DD"),
        (("report", "--from", "yesterday"), "--from 'yesterday': expected a date YYYY-MM-DD"),
        (("report", "--from", "2026-05-29", "--to", "2026-05-28"), "--from 2026-05-29 is after"),
        (("report", "--to", "2026-02-30"), "--to '2026-02-30': expected a date YYYY-MM-DD"),
        (("entries", "--from", "2026-05-28", "--utc-offset", "99"), "UTC offset 99: expected"),
        (("report", "--utc-offset", "-13"), "UTC offset -13"),
    ],
)
def test_bad_dates_are_one_line_and_exit_2(
    args: tuple[str, ...], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'county.sqlite'}"
    rc, out, err = _county(capsys, *args, "--database", url)
    assert rc == 2 and out == []
    assert len(err) == 1 and err[0].startswith("canteen-county: error: "), err
    assert says in err[0], err
