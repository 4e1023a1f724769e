"""Discipline inspection: reception batches, work-meal spending year on year, and anomalies.

This module owns the questions a discipline-inspection officer asks of the county's
entries (issue 16; the definitions and their reasons are in docs/inspection.md):

- reception batches: at least ``min_people`` distinct cadres of one visiting agency (not
  the canteen's operator) with accepted sales at one canteen within ``window_min``
  minutes, grouped greedily from a group's first sale (``find_batches``), and counted per
  canteen, agency or month beside the same period a year before (``batch_summary``: the
  Rucheng figure);
- work-meal spending: accepted sales less the reversed ones, per agency or township and
  month, beside the same months a year before with the change in percent (``spending``:
  the Anren figure);
- anomalies: repeated batches of one agency at one canteen (``find_repeat_batches``),
  cadres served at several canteens on one local day (``find_multi_canteen_days``), sales
  outside every meal window (``find_off_hours``) and on public holidays
  (``find_holiday_sales``).

Every figure carries the entries behind it as (terminal, seq) keys, and ``entry_rows``
turns keys into what a person reads (names, local times, yuan). Functions take a
SQLAlchemy Connection inside the caller's read transaction, never write, and read no
clock: the CLI (county/inspection_cli.py) and the console page share them. Reversed sales
(a 'reversal' entry names them) count nowhere, as in settlement.

Volume (bench/console.py, ~5 million entries): the grouping, the per-day arithmetic and the
pruning of sales that cannot belong to a batch are SQL (window functions on both
backends); Python only walks the candidate rows of a batch scan and the few findings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    union,
)

from county import rollups
from county.db.schema import cadres as cadres_table
from county.db.schema import canteens, entries, sales_days, sales_slots, terminals, visits
from county.localtime import local_datetime, local_text, midnight_ms
from county.storekit import sql_word
from protocol.agencies import TOWNSHIP, Directory
from protocol.chain import ACCEPT, SALE

DAY_MS = 86_400_000
MINUTE_MS = 60_000
DEFAULT_MIN_PEOPLE = 4
DEFAULT_WINDOW_MIN = 15
DEFAULT_REPEAT_BATCHES = 2
DEFAULT_REPEAT_DAYS = 30
DEFAULT_MIN_CANTEENS = 2
BY_BATCH = ("canteen", "unit", "month")
BY_SPENDING = ("agency", "township")
HOLIDAYS_FILE = "holidays.txt"
MAX_HOLIDAYS_BYTES = 1 << 20

Key = tuple[str, int]  # (terminal, seq) of one entry


class InspectionError(ValueError):
    """An inspection that cannot be made as asked (a bad option, a bad holidays file)."""


# -- shared SQL ------------------------------------------------------------------------


def sales_kept(start_ms: int, end_ms: int) -> list[ColumnElement[bool]]:
    """Accepted sales with start_ms <= at_ms < end_ms that no reversal names."""
    e = entries.c
    return [
        e.kind == sql_word(SALE),
        e.verdict == sql_word(ACCEPT),
        e.at_ms >= start_ms,
        e.at_ms < end_ms,
        tuple_(e.terminal, e.seq).not_in(rollups.reversed_keys()),
    ]


def _fen_sum(conn: Connection, column: Any) -> Any:
    # As settlement: SQLite's SUM fails on overflow, TOTAL is exact below 2^53 fen.
    if conn.dialect.name == "postgresql":
        return func.coalesce(func.sum(column), 0)
    return func.total(column)


def _no_jit(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL jit = off")


# -- local time ----------------------------------------------------------------------------


FIRST_DATE = dt.date(2, 1, 1)  # the year before it is still in the calendar
LAST_DATE = dt.date(9998, 12, 31)  # its month and the next are too


def check_dates(first: dt.date, last: dt.date) -> None:
    """Refuse a period whose year before, or whose months, leave the calendar."""
    if first < FIRST_DATE or last > LAST_DATE:
        raise InspectionError(
            f"{first}..{last}: an inspection period lies within {FIRST_DATE}..{LAST_DATE}"
        )


def year_before_ms(at_ms: int, zone: dt.tzinfo) -> int:
    """The same local wall time one year earlier (29 February becomes the 28th)."""
    when = local_datetime(at_ms, zone)
    if when is None:
        raise InspectionError(f"time {at_ms} ms: no year before it in the calendar")
    naive = when.replace(tzinfo=None)
    if naive.year <= 1:
        raise InspectionError(f"{naive:%Y-%m-%d}: no year before it in the calendar")
    try:
        earlier = naive.replace(year=naive.year - 1)
    except ValueError:
        earlier = naive.replace(year=naive.year - 1, day=28)
    aware = earlier.replace(tzinfo=zone)
    return int(aware.timestamp() * 1000)


def month_of(at_ms: int, zone: dt.tzinfo) -> str:
    """``YYYY-MM``, the local month of ``at_ms``."""
    when = local_datetime(at_ms, zone)
    return "" if when is None else when.strftime("%Y-%m")


def month_bounds(start_ms: int, end_ms: int, zone: dt.tzinfo) -> list[tuple[str, int, int]]:
    """(YYYY-MM, from, to) of each local month the range touches, cut to the range."""
    first = local_datetime(start_ms, zone)
    if first is None or end_ms <= start_ms:
        return []
    out: list[tuple[str, int, int]] = []
    month = dt.date(first.year, first.month, 1)
    lo = start_ms
    while lo < end_ms:
        following = dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)
        hi = min(end_ms, midnight_ms(following, zone))
        out.append((month.strftime("%Y-%m"), lo, hi))
        lo, month = hi, following
    return out


def _offset_ms(at_ms: int, zone: dt.tzinfo) -> int:
    when = local_datetime(at_ms, zone)
    off = None if when is None else when.utcoffset()
    return 0 if off is None else off // dt.timedelta(milliseconds=1)


def offset_segments(start_ms: int, end_ms: int, zone: dt.tzinfo) -> list[tuple[int, int, int]]:
    """The range cut where the zone's UTC offset changes: (from, to, offset_ms) each, so
    that SQL finds a local day as (at_ms + offset) / DAY_MS and a local time of day as
    (at_ms + offset) % DAY_MS without a time-zone function of its own (Asia/Shanghai has
    one segment; a daylight-saving zone two a year)."""
    segments: list[tuple[int, int, int]] = []
    lo = start_ms
    while lo < end_ms:
        off = _offset_ms(lo, zone)
        probe = lo
        while probe < end_ms and _offset_ms(probe, zone) == off:
            probe += 6 * 3_600_000  # transitions are hours apart at least
        if probe >= end_ms:
            segments.append((lo, end_ms, off))
            break
        low, high = probe - 6 * 3_600_000, probe  # offset changes in (low, high]
        while high - low > MINUTE_MS:
            mid = (low + high) // 2 // MINUTE_MS * MINUTE_MS
            if mid <= low:
                break
            if _offset_ms(mid, zone) == off:
                low = mid
            else:
                high = mid
        segments.append((lo, high, off))
        lo = high
    return segments


# -- reception batches -------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One reception batch: ``people`` distinct cadres of ``unit`` at ``canteen`` whose
    accepted sales fall from ``start_ms`` to ``end_ms`` (signed times of its first and last
    sale); ``entries`` are those sales, in time order."""

    canteen: str
    unit: str
    start_ms: int
    end_ms: int
    people: int
    amount_fen: int
    entries: tuple[Key, ...]
    cadres: tuple[str, ...] = ()

    def as_json(self, zone: dt.tzinfo) -> dict[str, Any]:
        return {
            "canteen": self.canteen,
            "unit": self.unit,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "start": local_text(self.start_ms, zone),
            "end": local_text(self.end_ms, zone),
            "people": self.people,
            "sales": len(self.entries),
            "amount_fen": self.amount_fen,
            "cadres": list(self.cadres),
            "entries": [[t, s] for t, s in self.entries],
        }


def _candidates(
    start_ms: int,
    end_ms: int,
    min_people: int,
    window_ms: int,
    canteen: str | None,
    unit: str | None,
) -> Any:
    """Visiting sales that may belong to a batch, ordered by canteen, unit, at_ms.

    They come from ``visits`` (county/rollups.py: the accepted sales of an agency not the
    canteen's operator, kept by the intake), less the lone ones and the reversed ones. A
    sale more than a window after the previous sale of its (canteen, unit) always starts a
    new group, so the stream splits there into runs that group independently; a run of fewer
    than ``min_people`` sales holds no batch and is dropped here, in SQL (lag, a running sum
    and a count, window functions on both backends)."""
    v = visits.c
    where = [
        # A visit with no other of its canteen and agency within the window is in a run
        # of one, which holds no batch (near_ms, kept by the intake: 16 % of a year's
        # visits are nearer than 15 minutes to another).
        v.near_ms < window_ms,
        v.at_ms >= start_ms,
        v.at_ms < end_ms,
        tuple_(v.terminal, v.seq).not_in(rollups.reversed_keys()),
    ]
    if canteen is not None:
        where.append(v.canteen == canteen)
    if unit is not None:
        where.append(v.unit == unit)
    order = (v.at_ms, v.terminal, v.seq)
    s1 = (
        select(
            v.terminal,
            v.seq,
            v.canteen,
            v.unit,
            v.cadre,
            v.at_ms,
            v.amount_fen,
            func.lag(v.at_ms).over(partition_by=(v.canteen, v.unit), order_by=order).label("prev"),
        )
        .where(*where)
        .subquery("s1")
    )
    starts = case((s1.c.prev.is_(None), 1), (s1.c.at_ms - s1.c.prev >= window_ms, 1), else_=0)
    s2 = select(
        *(s1.c[n] for n in ("terminal", "seq", "canteen", "unit", "cadre", "at_ms", "amount_fen")),
        func.sum(starts)
        .over(
            partition_by=(s1.c.canteen, s1.c.unit),
            order_by=(s1.c.at_ms, s1.c.terminal, s1.c.seq),
            rows=(None, 0),
        )
        .label("run"),
    ).subquery("s2")
    s3 = select(
        *s2.c,
        func.count().over(partition_by=(s2.c.canteen, s2.c.unit, s2.c.run)).label("n"),
    ).subquery("s3")
    return (
        select(
            s3.c.terminal,
            s3.c.seq,
            s3.c.canteen,
            s3.c.unit,
            s3.c.cadre,
            s3.c.at_ms,
            s3.c.amount_fen,
        )
        .where(s3.c.n >= min_people)
        .order_by(s3.c.canteen, s3.c.unit, s3.c.at_ms, s3.c.terminal, s3.c.seq)
        .execution_options(yield_per=2000)
    )


def check_batch_options(min_people: int, window_min: int) -> None:
    if not 2 <= min_people <= 10_000:
        raise InspectionError(f"--min-people {min_people}: must be from 2 to 10000")
    if not 1 <= window_min <= 24 * 60:
        raise InspectionError(f"--window-min {window_min}: must be from 1 to 1440 minutes")


def group_batches(
    rows: Iterable[tuple[str, int, str, str, str, int, int]], min_people: int, window_ms: int
) -> Iterator[Batch]:
    """The greedy grouping of sales (terminal, seq, canteen, unit, cadre, at_ms, amount)
    ordered by canteen, unit, at_ms: a sale joins the open group of its (canteen, unit)
    when it is less than ``window_ms`` after the group's FIRST sale, else it opens a new
    group; a group with ``min_people`` distinct cadres or more is a batch."""
    group: list[tuple[str, int, str, str, str, int, int]] = []

    def close() -> Batch | None:
        people = sorted({row[4] for row in group})
        if len(people) < min_people:
            return None
        return Batch(
            canteen=group[0][2],
            unit=group[0][3],
            start_ms=int(group[0][5]),
            end_ms=int(group[-1][5]),
            people=len(people),
            amount_fen=sum(int(row[6]) for row in group),
            entries=tuple((row[0], int(row[1])) for row in group),
            cadres=tuple(people),
        )

    for row in rows:
        if group and (
            (row[2], row[3]) != (group[0][2], group[0][3]) or row[5] - group[0][5] >= window_ms
        ):
            done = close()
            if done is not None:
                yield done
            group = []
        group.append(row)
    if group:
        done = close()
        if done is not None:
            yield done


def find_batches(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    min_people: int = DEFAULT_MIN_PEOPLE,
    window_min: int = DEFAULT_WINDOW_MIN,
    canteen: str | None = None,
    unit: str | None = None,
) -> list[Batch]:
    """The reception batches whose sales fall in [start_ms, end_ms), ordered by canteen,
    unit and time. A group is cut at the range's edges (its sales outside are not seen)."""
    check_batch_options(min_people, window_min)
    _no_jit(conn)
    window_ms = window_min * MINUTE_MS
    query = _candidates(start_ms, end_ms, min_people, window_ms, canteen, unit)
    rows = (tuple(row) for row in conn.execute(query))
    return list(group_batches(rows, min_people, window_ms))


def year_and_year_before(start_ms: int, end_ms: int, zone: dt.tzinfo) -> list[tuple[int, int]]:
    """[start_ms, end_ms) and the same local dates one year before."""
    return [(start_ms, end_ms), (year_before_ms(start_ms, zone), year_before_ms(end_ms, zone))]


def both_years(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    zone: dt.tzinfo,
    min_people: int = DEFAULT_MIN_PEOPLE,
    window_min: int = DEFAULT_WINDOW_MIN,
    canteen: str | None = None,
    unit: str | None = None,
) -> tuple[list[Batch], list[Batch]]:
    """The batches of the range and of the same local dates one year before."""
    prev_start, prev_end = year_before_ms(start_ms, zone), year_before_ms(end_ms, zone)
    now, before = (
        find_batches(
            conn, lo, hi, min_people=min_people, window_min=window_min, canteen=canteen, unit=unit
        )
        for lo, hi in ((start_ms, end_ms), (prev_start, prev_end))
    )
    return now, before


@dataclass(frozen=True)
class BatchFigure:
    """Batches and people of one group (a canteen, an agency or a month; ``key`` None for
    the total) in the period and in the same period a year before, with the batches behind
    each figure."""

    key: str | None
    name: str | None
    previous_key: str | None
    batches: tuple[Batch, ...]
    previous: tuple[Batch, ...]

    @property
    def count(self) -> int:
        return len(self.batches)

    @property
    def people(self) -> int:
        return sum(b.people for b in self.batches)

    @property
    def previous_count(self) -> int:
        return len(self.previous)

    @property
    def previous_people(self) -> int:
        return sum(b.people for b in self.previous)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "previous_key": self.previous_key,
            "batches": self.count,
            "people": self.people,
            "previous_batches": self.previous_count,
            "previous_people": self.previous_people,
            "batches_change_pct": change_pct(self.count, self.previous_count),
            "people_change_pct": change_pct(self.people, self.previous_people),
        }


@dataclass(frozen=True)
class BatchSummary:
    by: str
    start_ms: int
    end_ms: int
    previous_start_ms: int
    previous_end_ms: int
    rows: list[BatchFigure]
    total: BatchFigure


def change_pct(now: int, before: int) -> float | None:
    """The change from ``before`` to ``now`` in percent, one decimal; None from zero."""
    if before == 0:
        return None
    return round((now - before) * 100 / before, 1)


def batch_summary(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    by: str,
    zone: dt.tzinfo,
    directory: Directory | None = None,
    min_people: int = DEFAULT_MIN_PEOPLE,
    window_min: int = DEFAULT_WINDOW_MIN,
    canteen: str | None = None,
    unit: str | None = None,
    found: tuple[Sequence[Batch], Sequence[Batch]] | None = None,
) -> BatchSummary:
    """Batches and people per canteen, visiting agency or local month, each beside the same
    group in the same period one year before (the same local dates a year earlier).
    ``found``: the batches of the period and of the year before, already found with the
    same options (one scan serves several groupings)."""
    if by not in BY_BATCH:
        raise InspectionError(f"--by {by!r}: expected one of {', '.join(BY_BATCH)}")
    prev_start, prev_end = year_before_ms(start_ms, zone), year_before_ms(end_ms, zone)
    if found is None:
        found = both_years(
            conn,
            start_ms,
            end_ms,
            zone=zone,
            min_people=min_people,
            window_min=window_min,
            canteen=canteen,
            unit=unit,
        )
    now, before = found

    def key_of(b: Batch, shift_year: bool) -> str:
        if by == "canteen":
            return b.canteen
        if by == "unit":
            return b.unit
        month = month_of(b.start_ms, zone)
        if shift_year and month:
            return f"{int(month[:4]) + 1:04d}{month[4:]}"
        return month

    groups: dict[str, tuple[list[Batch], list[Batch]]] = {}
    if by == "month":
        for label, _, _ in month_bounds(start_ms, end_ms, zone):
            groups[label] = ([], [])
    for b in now:
        groups.setdefault(key_of(b, False), ([], []))[0].append(b)
    for b in before:
        groups.setdefault(key_of(b, True), ([], []))[1].append(b)

    def name_of(key: str) -> str | None:
        if directory is None or by == "month":
            return None
        if by == "canteen":
            found = directory.canteens.get(key)
            return None if found is None else found.name
        return directory.name_of(key)

    def previous_key(key: str) -> str:
        if by == "month":
            return f"{int(key[:4]) - 1:04d}{key[4:]}"
        return key

    rows = [
        BatchFigure(k, name_of(k), previous_key(k), tuple(a), tuple(b))
        for k, (a, b) in sorted(groups.items())
    ]
    total = BatchFigure(None, None, None, tuple(now), tuple(before))
    return BatchSummary(by, start_ms, end_ms, prev_start, prev_end, rows, total)


# -- spending ----------------------------------------------------------------------------


def township_of(directory: Directory, code: str | None) -> str | None:
    """The township of an agency: the township-level agency at the top of its unbroken
    chain of township-level ancestors (itself included), i.e. the township government a
    township office belongs to; None for an agency above township level or unknown."""
    if code is None:
        return None
    found: str | None = None
    for ancestor in directory.ancestors(code):
        agency = directory.agencies[ancestor]
        if agency.level != TOWNSHIP:
            break
        found = ancestor
    return found


@dataclass(frozen=True)
class SpendingFigure:
    """Work-meal spending of one group (an agency or township code; None: no township, or
    the total when ``total``) in one local month (None: the whole period), beside the
    same month (or period) a year before."""

    group: str | None
    name: str | None
    month: str | None
    previous_month: str | None
    meals: int
    net_fen: int
    previous_meals: int
    previous_net_fen: int
    total: bool = False

    @property
    def change_pct(self) -> float | None:
        return change_pct(self.net_fen, self.previous_net_fen)

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "month": self.month,
            "previous_month": self.previous_month,
            "meals": self.meals,
            "net_fen": self.net_fen,
            "previous_meals": self.previous_meals,
            "previous_net_fen": self.previous_net_fen,
            "change_pct": self.change_pct,
        }


@dataclass(frozen=True)
class Spending:
    by: str
    start_ms: int
    end_ms: int
    previous_start_ms: int
    previous_end_ms: int
    months: list[SpendingFigure]  # per group per month
    groups: list[SpendingFigure]  # per group, whole period
    total: SpendingFigure
    month_totals: list[SpendingFigure] = field(default_factory=list)


def sales_accepted(start_ms: int, end_ms: int) -> list[ColumnElement[bool]]:
    """Accepted sales with start_ms <= at_ms < end_ms, reversed or not: the words of
    entries_sales_at, which answers from the index alone what it covers."""
    e = entries.c
    return [
        e.kind == sql_word(SALE),
        e.verdict == sql_word(ACCEPT),
        e.at_ms >= start_ms,
        e.at_ms < end_ms,
    ]


def sale_reversed() -> ColumnElement[bool]:
    """The sale is named by a reversal (through entries_reversals)."""
    e = entries.c
    return tuple_(e.terminal, e.seq).in_(rollups.reversed_keys())


def _bucketed_days(
    conn: Connection,
    bounds: list[tuple[str, int, int]],
    days: list[tuple[int, int]],
    canteen: str | None,
) -> dict[tuple[str | None, str], tuple[int, int]]:
    """``_bucketed`` from sales_days (county/rollups.py): a year is some 100,000 rows
    per day, canteen and agency, not 2.5 million sales. ``days`` are ``bounds`` as local
    day numbers."""
    d = sales_days.c
    bucket = case(
        *(
            (d.day_no < hi, literal_column(f"'{label}'"))
            for (label, _, _), (_, hi) in zip(bounds, days, strict=True)
        ),
        else_=literal_column("''"),
    ).label("bucket")
    where = [d.day_no >= days[0][0], d.day_no < days[-1][1]]
    if canteen is not None:
        where.append(d.canteen == canteen)
    sums = (
        select(d.unit, bucket, _fen_sum(conn, d.meals), _fen_sum(conn, d.fen))
        .where(*where)
        .group_by(d.unit, bucket)
    )
    out: dict[tuple[str | None, str], tuple[int, int]] = {}
    for u, b, n, f in conn.execute(sums):
        unit = None if u == rollups.NO_UNIT else str(u)
        had_n, had_f = out.get((unit, str(b)), (0, 0))
        out[(unit, str(b))] = (had_n + int(n), had_f + int(f))
    return out


def _bucketed(
    conn: Connection, bounds: list[tuple[str, int, int]], canteen: str | None, zone: dt.tzinfo
) -> dict[tuple[str | None, str], tuple[int, int]]:
    """(unit, month) -> (meals, fen) of the counted sales in each of ``bounds``.

    From sales_slots when every bound is a whole quarter hour (a local midnight always is);
    else, for a range cut elsewhere, from the entries as settlement does: every accepted
    sale summed from entries_sales_at alone (an index-only scan), less the reversed ones
    found from the reversals (few). One query that left the reversed out while summing made
    PostgreSQL read the table instead of the index: 2.0 s against 0.56 s for three months of
    1.7 million entries."""
    if not bounds:
        return {}
    days = rollups.day_range_all(conn, [(lo, hi) for _, lo, hi in bounds], zone)
    if days is not None:
        return _bucketed_days(conn, bounds, days, canteen)
    e = entries.c
    extra = [] if canteen is None else [e.canteen == canteen]
    bucket = case(
        *((e.at_ms < hi, literal_column(f"'{label}'")) for label, _, hi in bounds),
        else_=literal_column("''"),
    ).label("bucket")
    where = [*sales_accepted(bounds[0][1], bounds[-1][2]), *extra]
    sums = select(e.unit, bucket, func.count(), _fen_sum(conn, e.amount_fen)).group_by(
        e.unit, bucket
    )
    out: dict[tuple[str | None, str], tuple[int, int]] = {}
    for u, b, n, f in conn.execute(sums.where(*where)):
        out[(u, str(b))] = (int(n), int(f))
    for u, b, n, f in conn.execute(sums.where(*where, sale_reversed())):
        had_n, had_f = out[(u, str(b))]
        out[(u, str(b))] = (had_n - int(n), had_f - int(f))
    return out


def spending(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    by: str,
    zone: dt.tzinfo,
    directory: Directory,
    canteen: str | None = None,
) -> Spending:
    """Work-meal spending (accepted sales not reversed, in fen; their count as meals) per
    agency (the diner's unit) or township, per local month, beside the same months a year
    before and the change in percent; with each group's period total and the grand total."""
    if by not in BY_SPENDING:
        raise InspectionError(f"--by {by!r}: expected one of {', '.join(BY_SPENDING)}")
    _no_jit(conn)
    prev_start, prev_end = year_before_ms(start_ms, zone), year_before_ms(end_ms, zone)
    months = month_bounds(start_ms, end_ms, zone)
    prev_months = month_bounds(prev_start, prev_end, zone)
    now = _bucketed(conn, months, canteen, zone)
    before = _bucketed(conn, prev_months, canteen, zone)

    def group_of(unit: str | None) -> str | None:
        return unit if by == "agency" else township_of(directory, unit)

    def shift(label: str, years: int) -> str:
        return f"{int(label[:4]) + years:04d}{label[4:]}"

    cells: dict[tuple[str | None, str], list[int]] = {}
    for (unit, label), (n, fen) in now.items():
        cell = cells.setdefault((group_of(unit), label), [0, 0, 0, 0])
        cell[0] += n
        cell[1] += fen
    for (unit, label), (n, fen) in before.items():
        cell = cells.setdefault((group_of(unit), shift(label, 1)), [0, 0, 0, 0])
        cell[2] += n
        cell[3] += fen

    def name(group: str | None) -> str | None:
        return directory.name_of(group)

    def key(item: tuple[tuple[str | None, str], list[int]]) -> tuple[bool, str, str]:
        (group, month), _ = item
        return (group is None, group or "", month)

    per_month = [
        SpendingFigure(g, name(g), m, shift(m, -1), c[0], c[1], c[2], c[3])
        for (g, m), c in sorted(cells.items(), key=key)
    ]
    sums: dict[str | None, list[int]] = {}
    month_sums: dict[str, list[int]] = {label: [0, 0, 0, 0] for label, _, _ in months}
    for fig in per_month:
        vals = (fig.meals, fig.net_fen, fig.previous_meals, fig.previous_net_fen)
        for acc in (
            sums.setdefault(fig.group, [0, 0, 0, 0]),
            month_sums.setdefault(fig.month or "", [0, 0, 0, 0]),
        ):
            for i, v in enumerate(vals):
                acc[i] += v
    groups = [
        SpendingFigure(g, name(g), None, None, s[0], s[1], s[2], s[3])
        for g, s in sorted(sums.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    ]
    grand = [sum(s[i] for s in sums.values()) for i in range(4)]
    total = SpendingFigure(None, None, None, None, grand[0], grand[1], grand[2], grand[3], True)
    month_totals = [
        SpendingFigure(None, None, m, shift(m, -1), s[0], s[1], s[2], s[3], True)
        for m, s in sorted(month_sums.items())
    ]
    return Spending(
        by, start_ms, end_ms, prev_start, prev_end, per_month, groups, total, month_totals
    )


def spending_entries(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    units: Collection[str | None] | None = None,
    not_units: Collection[str] | None = None,
    canteen: str | None = None,
    limit: int | None = None,
) -> list[Key]:
    """The sales behind a spending figure: accepted, not reversed, in the range, in time
    order; of one of ``units`` (None in it: sales with no unit; ``units`` None: any unit)
    and of none of ``not_units`` (sales with no unit are never excluded by it)."""
    e = entries.c
    where = sales_kept(start_ms, end_ms)
    if canteen is not None:
        where.append(e.canteen == canteen)
    if units is not None:
        named = [u for u in units if u is not None]
        cond: list[ColumnElement[bool]] = []
        if named:
            cond.append(e.unit.in_(named))
        if None in units:
            cond.append(e.unit.is_(None))
        if not cond:
            return []
        where.append(or_(*cond))
    if not_units:
        where.append(or_(e.unit.is_(None), e.unit.not_in(sorted(not_units))))
    query = select(e.terminal, e.seq).where(*where).order_by(e.at_ms, e.terminal, e.seq)
    if limit is not None:
        query = query.limit(limit)
    return [(t, int(s)) for t, s in conn.execute(query)]


def group_filter(directory: Directory, by: str, group: str | None) -> dict[str, Any]:
    """The spending_entries keywords of one spending group: an agency (None: sales with no
    unit), or a township's agencies (None: every sale whose agency has no township, the
    unknown ones and those with no unit included)."""
    if by == "agency":
        return {"units": [group]}
    if group is not None:
        return {"units": [c for c in directory.agencies if township_of(directory, c) == group]}
    return {"not_units": [c for c in directory.agencies if township_of(directory, c) is not None]}


# -- anomalies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeat:
    """``unit`` received at ``canteen`` in several batches within a few days."""

    canteen: str
    unit: str
    batches: tuple[Batch, ...]

    @property
    def entries(self) -> tuple[Key, ...]:
        return tuple(k for b in self.batches for k in b.entries)

    def as_json(self, zone: dt.tzinfo) -> dict[str, Any]:
        return {
            "kind": "repeat_batches",
            "canteen": self.canteen,
            "unit": self.unit,
            "starts_ms": [b.start_ms for b in self.batches],
            "starts": [local_text(b.start_ms, zone) for b in self.batches],
            "people": [b.people for b in self.batches],
            "entries": [[t, s] for t, s in self.entries],
        }


def repeats_of(batches: Iterable[Batch], *, min_batches: int, days: int) -> list[Repeat]:
    """Batches of one (canteen, unit) grouped greedily as sales are into batches: a batch
    joins the open group when it starts less than ``days`` days after the group's first;
    a group of ``min_batches`` or more is a repeat."""
    by_pair: dict[tuple[str, str], list[Batch]] = {}
    for one in batches:
        by_pair.setdefault((one.canteen, one.unit), []).append(one)
    out: list[Repeat] = []
    span = days * DAY_MS
    for (canteen, unit), found in sorted(by_pair.items()):
        found.sort(key=lambda x: x.start_ms)
        group: list[Batch] = []
        pending: list[Batch | None] = [*found, None]
        for b in pending:
            if b is None or (group and b.start_ms - group[0].start_ms >= span):
                if len(group) >= min_batches:
                    out.append(Repeat(canteen, unit, tuple(group)))
                group = []
            if b is not None:
                group.append(b)
    return out


def find_repeat_batches(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    min_batches: int = DEFAULT_REPEAT_BATCHES,
    days: int = DEFAULT_REPEAT_DAYS,
    min_people: int = DEFAULT_MIN_PEOPLE,
    window_min: int = DEFAULT_WINDOW_MIN,
    canteen: str | None = None,
    unit: str | None = None,
    batches: Sequence[Batch] | None = None,
) -> list[Repeat]:
    """Repeated batches of the same agency at the same canteen in the range (``batches``:
    those already found for the same range and options, to save the scan)."""
    if not 2 <= min_batches <= 1000:
        raise InspectionError(f"--repeat-batches {min_batches}: must be from 2 to 1000")
    if not 1 <= days <= 366:
        raise InspectionError(f"--repeat-days {days}: must be from 1 to 366")
    if batches is None:
        batches = find_batches(
            conn,
            start_ms,
            end_ms,
            min_people=min_people,
            window_min=window_min,
            canteen=canteen,
            unit=unit,
        )
    return repeats_of(batches, min_batches=min_batches, days=days)


@dataclass(frozen=True)
class Finding:
    """One flagged sale, or a cadre's day (``entries`` several sales)."""

    kind: str
    cadre: str | None
    day: str
    canteens: tuple[str, ...]
    entries: tuple[Key, ...]
    at_ms: tuple[int, ...]
    unit: str | None = None

    def as_json(self, zone: dt.tzinfo) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cadre": self.cadre,
            "unit": self.unit,
            "day": self.day,
            "canteens": list(self.canteens),
            "times": [local_text(t, zone) for t in self.at_ms],
            "entries": [[t, s] for t, s in self.entries],
        }


def _local_day(dayno: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(dayno))).isoformat()


def find_multi_canteen_days(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    zone: dt.tzinfo,
    min_canteens: int = DEFAULT_MIN_CANTEENS,
) -> list[Finding]:
    """Cadres with accepted (not reversed) sales at ``min_canteens`` canteens or more on
    one local day, by cadre and day, each with every sale of that day."""
    if not 2 <= min_canteens <= 100:
        raise InspectionError(f"--min-canteens {min_canteens}: must be from 2 to 100")
    _no_jit(conn)
    if conn.dialect.name == "postgresql":
        # The period's (cadre, day, canteen) triples hashed in memory, not sorted on disk.
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
    e = entries.c
    found: list[Finding] = []
    for lo, hi, off in offset_segments(start_ms, end_ms, zone):
        dayno = ((e.at_ms + off) // DAY_MS).label("dayno")
        # The candidates the intake kept (county/rollups.py multi_days), when it kept them
        # in this zone; each is checked against the entries below.
        kept = rollups.multi_day_pairs(conn, zone, (lo + off) // DAY_MS, (hi - 1 + off) // DAY_MS)
        if kept is not None:
            found.extend(_multi_canteen_findings(conn, lo, hi, dayno, kept, min_canteens))
            continue
        triples = (
            select(e.cadre, dayno, e.canteen)
            .where(*sales_kept(lo, hi), e.cadre.is_not(None))
            .group_by(e.cadre, dayno, e.canteen)
            .subquery("t")
        )
        days = {
            (str(cadre), int(day))
            for cadre, day in conn.execute(
                select(triples.c.cadre, triples.c.dayno)
                .group_by(triples.c.cadre, triples.c.dayno)
                .having(func.count() >= min_canteens)
            )
        }
        # The sales of those cadres in the segment, through entries_served (cadre first):
        # few cadres, so a second pass over the period is not needed.
        cadres = sorted({cadre for cadre, _ in days})
        rows: list[Any] = []
        for i in range(0, len(cadres), 500):
            rows.extend(
                row
                for row in conn.execute(
                    select(e.cadre, e.terminal, e.seq, e.canteen, e.at_ms, e.unit, dayno).where(
                        *sales_kept(lo, hi), e.cadre.in_(cadres[i : i + 500])
                    )
                )
                if (row[0], int(row[6])) in days
            )
        rows.sort(key=lambda r: (r[0], int(r[6]), int(r[4]), r[1], int(r[2])))
        current: list[Any] = []
        for row in [*rows, None]:
            if current and (row is None or (row[0], row[6]) != (current[0][0], current[0][6])):
                found.append(
                    Finding(
                        kind="multi_canteen_day",
                        cadre=current[0][0],
                        day=_local_day(current[0][6]),
                        canteens=tuple(sorted({r[3] for r in current})),
                        entries=tuple((r[1], int(r[2])) for r in current),
                        at_ms=tuple(int(r[4]) for r in current),
                        unit=current[0][5],
                    )
                )
                current = []
            if row is not None:
                current.append(row)
    found.sort(key=lambda f: (f.day, f.cadre or ""))
    return found


def _multi_canteen_findings(
    conn: Connection,
    lo: int,
    hi: int,
    dayno: Any,
    days: set[tuple[str, int]],
    min_canteens: int,
) -> list[Finding]:
    """The multi-canteen days among candidate ``days`` (cadre, local day): their sales
    read by cadre (entries_served), and each day counted again, reversals out."""
    e = entries.c
    cadres = sorted({cadre for cadre, _ in days})
    by_day: dict[tuple[str, int], list[Any]] = {}
    for i in range(0, len(cadres), 500):
        for row in conn.execute(
            select(e.cadre, e.terminal, e.seq, e.canteen, e.at_ms, e.unit, dayno).where(
                *sales_kept(lo, hi), e.cadre.in_(cadres[i : i + 500])
            )
        ):
            key = (str(row[0]), int(row[6]))
            if key in days:
                by_day.setdefault(key, []).append(row)
    out = []
    for (cadre, day), rows in sorted(by_day.items()):
        if len({r[3] for r in rows}) < min_canteens:
            continue  # a reversal since, or fewer canteens than asked
        rows.sort(key=lambda r: (int(r[4]), r[1], int(r[2])))
        out.append(
            Finding(
                kind="multi_canteen_day",
                cadre=cadre,
                day=_local_day(day),
                canteens=tuple(sorted({r[3] for r in rows})),
                entries=tuple((r[1], int(r[2])) for r in rows),
                at_ms=tuple(int(r[4]) for r in rows),
                unit=rows[0][5],
            )
        )
    return out


# Meal windows as (start, end) local times of day, start included, end excluded.
Windows = Sequence[tuple[dt.time, dt.time]]


def _tod_ms(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


def _single(kind: str, rows: Iterable[Any], zone: dt.tzinfo) -> list[Finding]:
    out = []
    for terminal, seq, canteen, cadre, at_ms, unit in rows:
        day = local_datetime(int(at_ms), zone)
        out.append(
            Finding(
                kind=kind,
                cadre=cadre,
                day="" if day is None else day.date().isoformat(),
                canteens=(canteen,),
                entries=((terminal, int(seq)),),
                at_ms=(int(at_ms),),
                unit=unit,
            )
        )
    return out


def find_off_hours(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    zone: dt.tzinfo,
    windows: Mapping[str | None, Windows],
) -> list[Finding]:
    """Accepted (not reversed) sales whose local time of day is outside every meal window
    of their canteen: ``windows[canteen]``, else ``windows[None]`` (every other canteen).
    In time order.

    When every window starts and ends on a quarter hour, the quarter hours outside them
    with meals are found in sales_slots (county/rollups.py) and only their sales are read;
    else every sale of the range is looked at."""
    e = entries.c
    s = sales_slots.c
    default = windows.get(None, ())
    specific = {c: w for c, w in windows.items() if c is not None}
    quarters = all(
        _tod_ms(t) % rollups.SLOT_MS == 0 for ws in windows.values() for w in ws for t in w
    )
    summed = quarters and not rollups.unsummed(conn)
    out: list[Finding] = []
    for lo, hi, off in offset_segments(start_ms, end_ms, zone):
        slots = rollups.slot_range(lo, hi) if summed else None
        canteen_col = e.canteen if slots is None else s.canteen
        if slots is None:
            tod = (e.at_ms + off) % DAY_MS
        else:
            tod = (s.slot * rollups.SLOT_MS + off) % DAY_MS

        def outside(ws: Windows, tod: Any = tod) -> ColumnElement[bool]:
            inside = [and_(tod >= _tod_ms(a), tod < _tod_ms(b)) for a, b in ws]
            return ~or_(*inside) if inside else literal_column("1") == 1

        cond: list[ColumnElement[bool]] = [
            and_(canteen_col == c, outside(w)) for c, w in sorted(specific.items())
        ]
        if specific:
            cond.append(and_(canteen_col.not_in(sorted(specific)), outside(default)))
        else:
            cond.append(outside(default))
        if slots is None:
            parts = [or_(*cond)]
        else:
            found = conn.execute(
                select(s.canteen, s.slot)
                .where(s.slot >= slots[0], s.slot < slots[1], s.meals > 0, or_(*cond))
                .distinct()
            ).all()
            spans = [
                and_(
                    e.canteen == c,
                    e.at_ms >= int(q) * rollups.SLOT_MS,
                    e.at_ms < (int(q) + 1) * rollups.SLOT_MS,
                )
                for c, q in found
            ]
            parts = [or_(*spans[i : i + 200]) for i in range(0, len(spans), 200)]
        rows: list[Any] = []
        for part in parts:
            rows.extend(
                conn.execute(
                    select(e.terminal, e.seq, e.canteen, e.cadre, e.at_ms, e.unit).where(
                        *sales_kept(lo, hi), part
                    )
                )
            )
        rows.sort(key=lambda r: (int(r[4]), r[0], int(r[1])))
        out.extend(_single("off_hours", rows, zone))
    return out


def find_holiday_sales(
    conn: Connection,
    start_ms: int,
    end_ms: int,
    *,
    zone: dt.tzinfo,
    holidays: Collection[dt.date],
) -> list[Finding]:
    """Accepted (not reversed) sales on a local date in ``holidays``, in time order."""
    e = entries.c
    ranges = []
    for day in sorted(holidays):
        lo = max(start_ms, midnight_ms(day, zone))
        hi = min(end_ms, midnight_ms(day + dt.timedelta(days=1), zone))
        if lo < hi:
            ranges.append(and_(e.at_ms >= lo, e.at_ms < hi))
    if not ranges:
        return []
    out: list[Finding] = []
    for i in range(0, len(ranges), 200):
        rows = conn.execute(
            select(e.terminal, e.seq, e.canteen, e.cadre, e.at_ms, e.unit)
            .where(*sales_kept(start_ms, end_ms), or_(*ranges[i : i + 200]))
            .order_by(e.at_ms, e.terminal, e.seq)
        )
        out.extend(_single("holiday", rows, zone))
    return out


def read_holidays(path: str | Path) -> frozenset[dt.date]:
    """A holidays file: one local date YYYY-MM-DD a line, optionally followed by spaces
    and a name; blank lines and lines starting with '#' are skipped. UTF-8 (a BOM is
    allowed). A bad line is an InspectionError naming the file and line."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_HOLIDAYS_BYTES:
            raise InspectionError(f"{p}: more than 1 MiB, not a holidays file")
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InspectionError(f"{p}: not UTF-8 text") from None
    except OSError as exc:
        raise InspectionError(f"{p}: cannot read: {exc.strerror}") from None
    days: set[dt.date] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word = stripped.split(maxsplit=1)[0]
        try:
            if len(word) != 10:
                raise ValueError(word)
            days.add(dt.date.fromisoformat(word))
        except ValueError:
            raise InspectionError(
                f"{p} line {number}: {word[:40]!r} is not a date YYYY-MM-DD"
            ) from None
    return frozenset(days)


def default_windows() -> dict[str | None, Windows]:
    """The meal windows of terminal/defaults.toml, for every canteen."""
    from county import meals

    return _spans(meals.default_windows())


def canteens_seen(
    conn: Connection, start_ms: int, end_ms: int, zone: dt.tzinfo | None = None
) -> list[str]:
    """Every canteen id the county knows of for the range: the directory's, the
    terminals', and those of the range's accepted sales (from the summaries when they
    can say: sales_days for local days of ``zone``, else sales_slots; else from
    entries_sales_at)."""
    e = entries.c
    slots = rollups.slot_range(start_ms, end_ms)
    days = None if zone is None else rollups.day_range_all(conn, [(start_ms, end_ms)], zone)
    if days is not None:
        d = sales_days.c
        sold = select(d.canteen).where(d.day_no >= days[0][0], d.day_no < days[0][1]).distinct()
    elif slots is not None and not rollups.unsummed(conn):
        # Each accepted sale has its row in sales_slots (county/rollups.py).
        s = sales_slots.c
        sold = select(s.canteen).where(s.slot >= slots[0], s.slot < slots[1]).distinct()
    else:
        sold = select(e.canteen).where(*sales_accepted(start_ms, end_ms)).distinct()
    found = {
        str(c)
        for (c,) in conn.execute(
            union(select(canteens.c.canteen), select(terminals.c.canteen), sold)
        )
    }
    return sorted(found)


def published_windows(data: str | Path, canteen_ids: Iterable[str]) -> dict[str | None, Windows]:
    """The meal windows the county published (county/published.py): each canteen's own
    settings file when it sets meals, else the file for all canteens, else the embedded
    defaults (terminal/defaults.toml), which is what a terminal given no meals serves.
    county/meals.py reads them (with their names); here only their spans matter."""
    from county import meals

    return _spans(meals.published_windows(data, canteen_ids))


def _spans(table: Mapping[str | None, Sequence[Any]]) -> dict[str | None, Windows]:
    return {k: tuple((w.start, w.end) for w in ws) for k, ws in table.items()}


# -- drill-down --------------------------------------------------------------------------


def entry_rows(
    conn: Connection, keys: Sequence[Key], *, zone: dt.tzinfo, directory: Directory
) -> list[dict[str, Any]]:
    """The entries named by ``keys`` as a person reads them, in time order: terminal, seq,
    local time, canteen and its name, the cadre and their name (the cadres table), the
    agency and its name, meal, amount, kind, verdict and whether a reversal names it."""
    e = entries.c
    reversed_keys = rollups.reversed_keys()
    out: list[dict[str, Any]] = []
    unique = list(dict.fromkeys((str(t), int(s)) for t, s in keys))
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        query = (
            select(
                e.terminal,
                e.seq,
                e.at_ms,
                e.canteen,
                e.cadre,
                cadres_table.c.name,
                e.unit,
                e.meal,
                e.amount_fen,
                e.kind,
                e.verdict,
                e.method,
                tuple_(e.terminal, e.seq).in_(reversed_keys).label("reversed"),
            )
            .select_from(entries.outerjoin(cadres_table, cadres_table.c.cadre == e.cadre))
            .where(tuple_(e.terminal, e.seq).in_(chunk))
        )
        for row in conn.execute(query):
            canteen = directory.canteens.get(row.canteen)
            out.append(
                {
                    "terminal": row.terminal,
                    "seq": int(row.seq),
                    "at_ms": int(row.at_ms),
                    "local_time": local_text(row.at_ms, zone),
                    "canteen": row.canteen,
                    "canteen_name": None if canteen is None else canteen.name,
                    "cadre": row.cadre,
                    "cadre_name": row.name,
                    "unit": row.unit,
                    "unit_name": directory.name_of(row.unit),
                    "meal": row.meal,
                    "amount_fen": int(row.amount_fen),
                    "kind": row.kind,
                    "verdict": row.verdict,
                    "method": row.method,
                    "reversed": bool(row.reversed),
                }
            )
    out.sort(key=lambda x: (x["at_ms"], x["terminal"], x["seq"]))
    return out


__all__ = [
    "BY_BATCH",
    "BY_SPENDING",
    "Batch",
    "BatchFigure",
    "BatchSummary",
    "Finding",
    "InspectionError",
    "Repeat",
    "Spending",
    "SpendingFigure",
    "batch_summary",
    "both_years",
    "canteens_seen",
    "change_pct",
    "check_dates",
    "default_windows",
    "entry_rows",
    "find_batches",
    "find_holiday_sales",
    "find_multi_canteen_days",
    "find_off_hours",
    "find_repeat_batches",
    "group_batches",
    "group_filter",
    "month_bounds",
    "month_of",
    "offset_segments",
    "published_windows",
    "read_holidays",
    "repeats_of",
    "sale_reversed",
    "sales_accepted",
    "sales_kept",
    "spending",
    "spending_entries",
    "township_of",
    "year_before_ms",
]
