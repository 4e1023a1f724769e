"""What county IT reads out of the county database: entries, the report, alarms,
conflicts, clock offsets and counters.

This module owns the read-only answers the commands print and the tests check. Each
function reads inside one read transaction the caller opened (county/store.py), so an
answer is consistent with itself while intake goes on. It never writes: what it shows
was decided at intake (county/intake.py, county/conflicts.py). Hashes leave as hex
text, times as integer milliseconds, as the commands have always printed them.

Volume (issue 14: a year of a city is some 40 million entries). ``iter_entries`` and
``report`` take a range of local calendar days, a canteen and (entries) a terminal, and
ask only for those rows, in a form the indexes of revision 0002 answer: an entry counts
on its service day (``day``) or, when it has none, on the local day of its time, so a
range is "day between FROM and TO, or no day and at_ms between the local midnights"
(``DayRange``), two conditions each with its index, never an expression over every
row. ``iter_entries`` streams (a server-side cursor on PostgreSQL, SQLite's own
row-by-row cursor), so ``canteen-county entries`` never holds a whole result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, literal_column, or_, select

from county.db.schema import alarms as alarms_table
from county.db.schema import clock_offsets as clock_table
from county.db.schema import conflict_revocations, counters, entries, terminals
from county.db.schema import conflicts as conflicts_table
from county.intake import CLOCK_TOLERANCE_MS
from protocol.chain import ACCEPT, REVERSAL, SALE

_ENTRY_KEYS = (
    "terminal",
    "canteen",
    "seq",
    "entry_id",
    "at_ms",
    "kind",
    "verdict",
    "reason",
    "cadre",
    "unit",
    "day",
    "meal",
    "amount_fen",
)


@dataclass(frozen=True)
class DayRange:
    """Local calendar days FROM..TO (``YYYY-MM-DD``, both included; either may be open)
    at a fixed offset from UTC, as county IT names them (Asia/Shanghai is +8 all year).

    An entry is in the range if its service day is, or, when it has none, if its time
    falls between the local midnight that starts FROM and the one that ends TO.
    """

    first: str | None = None
    last: str | None = None
    utc_offset_h: int = 8

    def __post_init__(self) -> None:
        if not -12 <= self.utc_offset_h <= 14:
            raise ValueError(f"UTC offset {self.utc_offset_h}: expected hours from -12 to 14")
        for name, value in (("from", self.first), ("to", self.last)):
            if value is not None:
                parse_day(value, f"--{name}")
        if self.first is not None and self.last is not None and self.first > self.last:
            raise ValueError(f"--from {self.first} is after --to {self.last}")

    @property
    def is_open(self) -> bool:
        """No bound at all: every entry is in it."""
        return self.first is None and self.last is None

    def midnight_ms(self, day: str, days_after: int = 0) -> int:
        """The UTC milliseconds of the local midnight that starts ``day`` (+ days_after)."""
        zone = dt.timezone(dt.timedelta(hours=self.utc_offset_h))
        start = dt.datetime.combine(parse_day(day), dt.time(), zone)
        # Added in milliseconds, not to the date: the midnight after 9999-12-31 has no
        # datetime (OverflowError), and --to 9999-12-31 is a fair way to say "no end".
        return int(start.timestamp()) * 1000 + days_after * 86_400_000

    def with_day(self) -> ColumnElement[bool]:
        """Entries with a service day in the range (entries_day, entries_canteen_day)."""
        e = entries.c
        cond: list[ColumnElement[bool]] = [e.day.is_not(None)]
        if self.first is not None:
            cond.append(e.day >= self.first)
        if self.last is not None:
            cond.append(e.day <= self.last)
        return and_(*cond)

    def without_day(self) -> ColumnElement[bool]:
        """Entries without a service day whose time is in the range (entries_at_ms)."""
        e = entries.c
        cond: list[ColumnElement[bool]] = [e.day.is_(None)]
        if self.first is not None:
            cond.append(e.at_ms >= self.midnight_ms(self.first))
        if self.last is not None:
            cond.append(e.at_ms < self.midnight_ms(self.last, days_after=1))
        return and_(*cond)

    def condition(self) -> ColumnElement[bool] | None:
        """The WHERE condition of the range, None when it is open."""
        if self.is_open:
            return None
        return or_(self.with_day(), self.without_day())


def parse_day(text: str, what: str = "date") -> dt.date:
    """A local calendar date written YYYY-MM-DD, or ValueError with a one-line reason."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected a date YYYY-MM-DD, e.g. 2026-05-28") from None


def iter_entries(
    conn: Connection,
    terminal_id: str | None = None,
    *,
    days: DayRange | None = None,
    canteen: str | None = None,
    batch_rows: int = 1000,
) -> Iterator[dict[str, Any]]:
    """The acknowledged entries asked for, by terminal and sequence number, streamed:
    ``batch_rows`` at a time from the database, never the whole result in memory.

    Each filter is one indexed condition: a terminal (the primary key), a canteen
    (entries_canteen_day), a range of days (entries_day, and entries_at_ms for the
    entries without a day; ``DayRange``)."""
    columns = [entries.c[k] for k in _ENTRY_KEYS]
    query = select(*columns, entries.c.prev_hash, entries.c.hash)
    if terminal_id is not None:
        query = query.where(entries.c.terminal == terminal_id)
    if canteen is not None:
        query = query.where(entries.c.canteen == canteen)
    in_range = days.condition() if days is not None else None
    if in_range is not None:
        query = query.where(in_range)
    query = query.order_by(entries.c.terminal, entries.c.seq).execution_options(
        yield_per=batch_rows
    )
    for r in conn.execute(query):
        item = dict(zip(_ENTRY_KEYS, r[:13], strict=True))
        item["prev_hash"] = bytes(r[13]).hex()
        item["hash"] = bytes(r[14]).hex()
        yield item


def counter(conn: Connection, name: str) -> int:
    value = conn.execute(select(counters.c.value).where(counters.c.name == name)).scalar()
    return 0 if value is None else int(value)


def clock_offsets(conn: Connection) -> list[dict[str, Any]]:
    """Each terminal's newest clock offset (``ahead_ms``: its clock minus county time)."""
    c = clock_table.c
    rows = conn.execute(
        select(c.terminal, c.ahead_ms, c.seq, c.server_ms)
        .where(c.ahead_ms.is_not(None))
        .order_by(c.terminal)
    )
    return [
        {
            "terminal": t,
            "ahead_ms": ahead,
            "seq": seq,
            "server_ms": server,
            "in_tolerance": abs(ahead) <= CLOCK_TOLERANCE_MS,
        }
        for t, ahead, seq, server in rows
    ]


_ALARM_KEYS = (
    "id",
    "terminal",
    "canteen",
    "kind",
    "seq",
    "problem",
    "first_ms",
    "last_ms",
    "times",
    # The review (county/review.py, docs/alarms.md): None until county IT decides.
    "confirmed_ms",
    "confirmed_by",
    "confirmed_reason",
    "withdrawn_ms",
    "withdrawn_by",
    "withdrawn_reason",
)


def alarms(conn: Connection) -> list[dict[str, Any]]:
    a = alarms_table.c
    rows = conn.execute(
        select(
            a.id,
            a.terminal,
            terminals.c.canteen,
            a.kind,
            a.seq,
            a.problem,
            a.first_ms,
            a.last_ms,
            a.times,
            a.confirmed_ms,
            a.confirmed_by,
            a.confirmed_reason,
            a.withdrawn_ms,
            a.withdrawn_by,
            a.withdrawn_reason,
            a.theirs,
        )
        .join_from(alarms_table, terminals, terminals.c.terminal_id == a.terminal, isouter=True)
        .order_by(a.id)
    )
    out = []
    for r in rows:
        n = len(_ALARM_KEYS)
        item = dict(zip(_ALARM_KEYS, r[:n], strict=True))
        item["hash"] = bytes(r[n]).hex() if r[n] is not None else None
        out.append(item)
    return out


_CONFLICT_HEAD = (
    "id",
    "kind",
    "credential",
    "cadre",
    "name",
    "unit",
    "day",
    "meal",
    "reason",
    "found_ms",
    "withdrawn_ms",
    "withdrawn_reason",
    "withdrawn_by",
    "confirmed_ms",
    "confirmed_by",
    "confirmed_reason",
)
_SIDE = ("terminal", "canteen", "seq", "method", "hash", "at_ms")


def conflicts(conn: Connection) -> list[dict[str, Any]]:
    """Every conflict with its evidence: both entries, their terminals, hashes and times."""
    c = conflicts_table.c
    sides = [c[f"{which}_{name}"] for which in ("first", "second") for name in _SIDE]
    rows = conn.execute(select(*[c[k] for k in _CONFLICT_HEAD], *sides).order_by(c.id)).all()
    revoked: dict[int, list[str]] = {}
    r = conflict_revocations.c
    for conflict_id, credential in conn.execute(
        select(r.conflict_id, r.credential).order_by(r.conflict_id, r.credential)
    ):
        revoked.setdefault(int(conflict_id), []).append(credential)
    out = []
    for row in rows:
        n, k = len(_CONFLICT_HEAD), len(_SIDE)
        item = dict(zip(_CONFLICT_HEAD, row[:n], strict=True))
        for name, values in (("first", row[n : n + k]), ("second", row[n + k : n + 2 * k])):
            entry = dict(zip(_SIDE, values, strict=True))
            entry["hash"] = bytes(entry["hash"]).hex() if entry["hash"] is not None else None
            item[name] = entry
        item["revokes"] = revoked.get(int(row[0]), [])
        out.append(item)
    return out


def _local_day(conn: Connection, utc_offset_h: int) -> ColumnElement[str]:
    """The local day (YYYY-MM-DD) of an entry's time at ``utc_offset_h``, in the dialect's
    words. Written out, not bound: GROUP BY must see the very expression the SELECT has."""
    hours = int(utc_offset_h)
    # A terminal may sign any 64-bit time. Outside years 1..9999 there is no calendar
    # day (PostgreSQL's to_timestamp fails, SQLite's date() is NULL): such an entry is
    # reported on the day OUT_OF_CALENDAR instead of stopping the report.
    if conn.dialect.name == "postgresql":
        return literal_column(
            f"coalesce(CASE WHEN entries.at_ms BETWEEN {_CALENDAR_MS[0]} AND {_CALENDAR_MS[1]}"
            f" THEN to_char(to_timestamp(entries.at_ms / 1000) AT TIME ZONE 'UTC'"
            f" + interval '{hours} hours', 'YYYY-MM-DD') END, '{OUT_OF_CALENDAR}')"
        )
    return literal_column(
        f"coalesce(date(entries.at_ms / 1000, 'unixepoch', '{hours:+d} hours'),"
        f" '{OUT_OF_CALENDAR}')"
    )


# The day an entry's time names no calendar day of (years 1 to 9999, with a day to spare
# at each end for the offset).
OUT_OF_CALENDAR = "out-of-calendar"
_CALENDAR_MS = (-62_135_596_800_000 + 86_400_000, 253_402_300_799_999 - 86_400_000)


def report(
    conn: Connection,
    now_ms: int,
    silent_after_ms: int,
    utc_offset_h: int = 8,
    *,
    days: DayRange | None = None,
    canteen: str | None = None,
) -> dict[str, Any]:
    """Per canteen and day: meals, amounts, refusals by reason, conflicts; silent terminals.

    Only the days of ``days`` (every day when None) and only ``canteen`` (every canteen
    when None). An entry without a service day (a refusal before any meal window was
    known) counts on the local day of its time, at the offset of ``days`` (of
    ``utc_offset_h`` when no range is given). The totals are two
    grouped queries, one per half of ``DayRange``: the entries with a day grouped by
    their day (found by entries_day or entries_canteen_day), then the few without one
    grouped by their local day (found by entries_at_ms), so no row outside the range is
    read. Silent terminals are those of ``canteen``; alarms and clock offsets are the
    county's, whatever the range (they are about terminals now, not about days).
    """
    rng = days if days is not None else DayRange(utc_offset_h=utc_offset_h)
    if conn.dialect.name == "postgresql":
        # A month's grouping costs enough for PostgreSQL to compile it (JIT), which took
        # seconds and saved nothing (docs/county-scale.md); for this transaction only.
        conn.exec_driver_sql("SET LOCAL jit = off")
    slots: dict[tuple[str, str], dict[str, Any]] = {}

    def slot(canteen_id: str, day: str) -> dict[str, Any]:
        return slots.setdefault(
            (canteen_id, day),
            {
                "canteen": canteen_id,
                "day": day,
                "meals": 0,
                "amount_fen": 0,
                "reversals": 0,
                "refusals": {},
                "conflicts": 0,
            },
        )

    e = entries.c
    # A terminal may sign any 64-bit amount: SQLite's SUM fails on integer overflow (no
    # report at all), its TOTAL sums in floating point, exact below 2^53 fen (90 trillion
    # yuan). PostgreSQL sums bigint as numeric, always exact.
    fen_sum = (
        func.sum(e.amount_fen) if conn.dialect.name == "postgresql" else func.total(e.amount_fen)
    )
    for on_day, where in (
        (e.day, rng.with_day()),
        (_local_day(conn, rng.utc_offset_h), rng.without_day()),
    ):
        groups = (e.canteen, on_day, e.kind, e.verdict, e.reason)
        query = (
            select(*groups, func.count(), func.coalesce(fen_sum, 0))
            .where(e.kind.in_((SALE, REVERSAL)), where)
            .group_by(*groups)
        )
        if canteen is not None:
            query = query.where(e.canteen == canteen)
        for canteen_id, day, kind, verdict, reason, n, fen in conn.execute(query):
            s = slot(canteen_id, day)
            n, fen = int(n), int(fen)
            if kind == SALE and verdict == ACCEPT:
                s["meals"] += n
                s["amount_fen"] += fen
            elif kind == REVERSAL:
                s["meals"] -= n
                s["amount_fen"] -= fen
                s["reversals"] += n
            elif kind == SALE:
                key = reason or "unknown"
                s["refusals"][key] = s["refusals"].get(key, 0) + n
    per_unit: dict[str, dict[str, int]] = {}
    c = conflicts_table.c
    # A conflict counts where and when its second sale was made: that entry's canteen,
    # the conflict's service day or, without one, the local day of that sale's time.
    conflict_day = func.coalesce(c.day, _local_day(conn, rng.utc_offset_h))
    standing_query = (
        select(c.kind, func.coalesce(c.unit, ""), e.canteen, conflict_day)
        .join_from(
            conflicts_table,
            entries,
            (e.terminal == c.second_terminal) & (e.seq == c.second_seq),
        )
        .where(c.withdrawn_ms.is_(None))
    )
    if not rng.is_open:
        in_days: list[ColumnElement[bool]] = [c.day.is_not(None)]
        if rng.first is not None:
            in_days.append(c.day >= rng.first)
        if rng.last is not None:
            in_days.append(c.day <= rng.last)
        standing_query = standing_query.where(
            or_(and_(*in_days), and_(c.day.is_(None), rng.without_day()))
        )
    if canteen is not None:
        standing_query = standing_query.where(e.canteen == canteen)
    for kind, unit, canteen_id, on_day in conn.execute(standing_query):
        slot(canteen_id, on_day)["conflicts"] += 1
        u = per_unit.setdefault(unit, {})
        u[kind] = u.get(kind, 0) + 1
    t = terminals.c
    silent_query = (
        select(t.terminal_id, t.canteen, t.last_seen_ms, t.acked_seq)
        .where(t.last_seen_ms.is_(None) | (t.last_seen_ms < now_ms - silent_after_ms))
        .where(t.retired_ms.is_(None))  # a retired id is out of service, not silent
        .order_by(t.terminal_id)
    )
    if canteen is not None:
        silent_query = silent_query.where(t.canteen == canteen)
    silent = [
        {"terminal": tid, "canteen": canteen_id, "last_seen_ms": seen, "acked_seq": acked}
        for tid, canteen_id, seen, acked in conn.execute(silent_query)
    ]
    a = alarms_table.c
    by_kind = {
        kind: int(n)
        for kind, n in conn.execute(select(a.kind, func.count()).group_by(a.kind).order_by(a.kind))
    }
    return {
        "from": rng.first,
        "to": rng.last,
        "canteen": canteen,
        "days": [slots[k] for k in sorted(slots)],
        "conflicts_by_unit": per_unit,
        "terminals_not_heard_from": silent,
        "alarms": sum(by_kind.values()),
        "alarms_by_kind": by_kind,
        "clock_offsets": clock_offsets(conn),
    }
