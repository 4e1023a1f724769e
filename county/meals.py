"""Meals per meal window per canteen and local day: the kitchen-planning figures (issue 16).

This module owns counting how many meals each canteen served in each of its meal windows
(breakfast, lunch, dinner, or whatever the county's published settings name them) on each
local day of a period, and the entries behind each count. A meal is an accepted sale that
no reversal names, as in settlement and inspection (county/inspection.py); a sale counts in
the window of its canteen that holds its signed local time of day (start included, end
excluded), or as ``OTHER`` when it falls in none.

The windows are those the county published (county/published.py: a canteen's own
settings file, else the file for all canteens), else the terminal's embedded defaults
(terminal/defaults.toml), which is what a terminal given no meals serves: the same rule
as the off-hours finder. Functions take a SQLAlchemy Connection inside the caller's read
transaction, never write and read no clock; the console page (/console/meals) and
``canteen-county meals`` share them, so they always agree.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, literal_column, select

from county import inspection, rollups
from county.db.schema import entries, sales_slots
from county.inspection import DAY_MS, Key, offset_segments
from county.localtime import midnight_ms
from terminal.config import MealWindow

OTHER = ""  # the "window" of a sale outside every meal window of its canteen
WEEKDAYS = 7
_EPOCH_DAY = dt.date(1970, 1, 1)
_EPOCH_WEEKDAY = _EPOCH_DAY.weekday()  # 3: a Thursday


class MealsError(ValueError):
    """A question this module cannot answer as asked (an unknown window); one line."""


@dataclass(frozen=True)
class Window:
    """One meal window of a canteen, local times of day, start included, end excluded."""

    name: str
    start: dt.time
    end: dt.time

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "start": self.start.isoformat("minutes"),
            "end": self.end.isoformat("minutes"),
        }


Windows = tuple[Window, ...]
# canteen id -> its windows; None -> every canteen not named.
WindowTable = Mapping[str | None, Windows]


def windows_of(meals: Iterable[MealWindow]) -> Windows:
    """Meal windows of a settings file as this module keeps them: ordered by start."""
    return tuple(sorted((Window(m.name, m.start, m.end) for m in meals), key=lambda w: w.start))


def default_windows() -> dict[str | None, Windows]:
    """The meal windows of terminal/defaults.toml, for every canteen."""
    from terminal import config

    return {None: windows_of(config.load(None).meals)}


def published_windows(data: str | Path, canteen_ids: Iterable[str]) -> dict[str | None, Windows]:
    """The windows the county published in ``data``/updates for each canteen that has
    some, the defaults for every other (key None)."""
    from county.published import Published

    found = default_windows()
    published = Published(data)
    for canteen_id in canteen_ids:
        meals = published.meal_windows(canteen_id)
        if meals is not None:
            found[canteen_id] = windows_of(meals)
    return found


def windows_for(table: WindowTable, canteen: str) -> Windows:
    """The windows ``canteen`` is counted by."""
    return table[canteen] if canteen in table else table.get(None, ())


def _tod_ms(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


def _window_index(tod: Any, windows: Windows) -> ColumnElement[Any]:
    """1 + the index in ``windows`` of the first window holding ``tod``, 0 in none. Whole
    numbers written into the SQL (not bound), so that the grouping by it is one
    expression on PostgreSQL too."""
    whens: list[tuple[ColumnElement[bool], ColumnElement[Any]]] = [
        (and_(tod >= _tod_ms(w.start), tod < _tod_ms(w.end)), literal_column(str(i)))
        for i, w in enumerate(windows, start=1)
    ]
    if not whens:
        return literal_column("0")
    return case(*whens, else_=literal_column("0"))


def _on_quarters(window: Window) -> bool:
    """The window starts and ends on a quarter hour (sales_slots' step)."""
    return all(_tod_ms(t) % rollups.SLOT_MS == 0 for t in (window.start, window.end))


def _groups(table: WindowTable, canteens: Sequence[str]) -> list[tuple[Windows, list[str]]]:
    """``canteens`` grouped by the windows they are counted by, one group per distinct set
    (most counties publish one set for all): one query per group."""
    by_windows: dict[Windows, list[str]] = defaultdict(list)
    for c in canteens:
        by_windows[windows_for(table, c)].append(c)
    return list(by_windows.items())


def day_of(dayno: int) -> dt.date:
    return _EPOCH_DAY + dt.timedelta(days=int(dayno))


@dataclass
class CanteenMeals:
    """One canteen's meals of a period: ``cells[(day, window)]`` (window OTHER: outside
    every window); every local day of the period is in ``days``, with or without meals."""

    canteen: str
    windows: Windows
    days: list[dt.date]
    cells: dict[tuple[dt.date, str], int] = field(default_factory=dict)
    # Only the period's totals per window, counted under its first day
    # (meals_per_window(by_day=False)): what is per day or weekday cannot be asked.
    totals_only: bool = False

    def _per_day(self) -> None:
        if self.totals_only:
            raise ValueError("these meals were counted for the whole period, not per day")

    @property
    def columns(self) -> list[str]:
        """The window names in order of their start, then OTHER when it has meals."""
        names = [w.name for w in self.windows]
        if any(n for (_, w), n in self.cells.items() if w == OTHER):
            names.append(OTHER)
        return names

    def on(self, day: dt.date, window: str) -> int:
        self._per_day()
        return self.cells.get((day, window), 0)

    def day_total(self, day: dt.date) -> int:
        self._per_day()
        return sum(n for (d, _), n in self.cells.items() if d == day)

    def window_total(self, window: str) -> int:
        return sum(n for (_, w), n in self.cells.items() if w == window)

    @property
    def total(self) -> int:
        return sum(self.cells.values())

    def weekday_total(self, weekday: int, window: str | None = None) -> int:
        """Meals on every ``weekday`` (Monday 0) of the period, of one window or all."""
        self._per_day()
        return sum(
            n
            for (d, w), n in self.cells.items()
            if d.weekday() == weekday and (window is None or w == window)
        )

    def weekday_days(self, weekday: int) -> int:
        """How many of the period's days are that weekday."""
        return sum(1 for d in self.days if d.weekday() == weekday)

    def weekday_mean(self, weekday: int, window: str) -> float:
        days = self.weekday_days(weekday)
        return self.weekday_total(weekday, window) / days if days else 0.0

    def as_json(self, name: str | None = None) -> dict[str, Any]:
        return {
            "canteen": self.canteen,
            "name": name,
            "windows": [w.as_json() for w in self.windows],
            "meals": {w.name: self.window_total(w.name) for w in self.windows},
            "outside": self.window_total(OTHER),
            "total": self.total,
            "days": len(self.days),
        }

    def day_json(self, day: dt.date) -> dict[str, Any]:
        return {
            "canteen": self.canteen,
            "day": day.isoformat(),
            "weekday": day.strftime("%a"),
            "meals": {w.name: self.on(day, w.name) for w in self.windows},
            "outside": self.on(day, OTHER),
            "total": self.day_total(day),
        }


def meals_per_window(
    conn: Connection,
    first: dt.date,
    last: dt.date,
    *,
    zone: dt.tzinfo,
    windows: WindowTable,
    canteens: Sequence[str],
    by_day: bool = True,
) -> list[CanteenMeals]:
    """Meals per window per local day of ``first``..``last`` (both included) at each of
    ``canteens`` (in that order; one with no meals has empty cells).

    ``by_day=False``: only each canteen's totals per window over the period (what the
    page of every canteen shows), all counted under ``first``, ``totals_only`` set: a
    year of 80 canteens groups into some 300 sums instead of 117,000 cells."""
    start_ms = midnight_ms(first, zone)
    end_ms = midnight_ms(last + dt.timedelta(days=1), zone)
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    out = {
        c: CanteenMeals(c, windows_for(windows, c), days, totals_only=not by_day) for c in canteens
    }
    if not canteens:
        return []
    e = entries.c
    summed = not rollups.unsummed(conn)
    for windows_of_group, group in _groups(windows, canteens):
        where = e.canteen.in_(sorted(group))
        names = [OTHER, *(w.name for w in windows_of_group)]
        quarters = all(_on_quarters(w) for w in windows_of_group)
        for lo, hi, off in offset_segments(start_ms, end_ms, zone):
            slots = rollups.slot_range(lo, hi)
            if summed and quarters and slots is not None:
                # From sales_slots (county/rollups.py): every sale of a quarter hour falls
                # in the same window when each window starts and ends on a quarter.
                s = sales_slots.c
                local = s.slot * rollups.SLOT_MS + off
                dayno = (local // DAY_MS).label("dayno") if by_day else _first_day(first)
                widx = _window_index(local % DAY_MS, windows_of_group).label("widx")
                keys = (s.canteen, dayno, widx) if by_day else (s.canteen, widx)
                rows = conn.execute(
                    select(s.canteen, dayno, widx, func.sum(s.meals))
                    .where(s.slot >= slots[0], s.slot < slots[1], s.canteen.in_(sorted(group)))
                    .group_by(*keys)
                )
                for canteen, day, index, n in rows:
                    found = out.get(str(canteen))
                    if found is not None:
                        key = (day_of(int(day)), names[int(index)])
                        found.cells[key] = found.cells.get(key, 0) + int(n)
                continue
            local = e.at_ms + off
            dayno = (local // DAY_MS).label("dayno") if by_day else _first_day(first)
            widx = _window_index(local % DAY_MS, windows_of_group).label("widx")
            keys = (e.canteen, dayno, widx) if by_day else (e.canteen, widx)
            counts = select(e.canteen, dayno, widx, func.count()).group_by(*keys)
            # As settlement and spending: every accepted sale counted from the sales index,
            # less the reversed ones (few), rather than a NOT IN over every row.
            accepted = inspection.sales_accepted(lo, hi)
            for sign, extra in ((1, []), (-1, [inspection.sale_reversed()])):
                for canteen, day, index, n in conn.execute(counts.where(*accepted, where, *extra)):
                    found = out.get(str(canteen))
                    if found is None:
                        continue
                    key = (day_of(int(day)), names[int(index)])
                    found.cells[key] = found.cells.get(key, 0) + sign * int(n)
    for found in out.values():
        found.cells = {k: n for k, n in found.cells.items() if n}
    return [out[c] for c in canteens]


def _first_day(first: dt.date) -> Any:
    """The day number of ``first`` as a value of every row (grouped by nothing)."""
    return literal_column(str((first - _EPOCH_DAY).days)).label("dayno")


def halves(first: dt.date, last: dt.date) -> list[tuple[dt.date, dt.date]]:
    """``first``..``last`` in two (one for a period under two months), for
    ``meals_per_window`` on two connections at once (the console's year view)."""
    days = (last - first).days + 1
    if days < 62:
        return [(first, last)]
    middle = first + dt.timedelta(days=days // 2)
    return [(first, middle - dt.timedelta(days=1)), (middle, last)]


def joined(parts: Sequence[list[CanteenMeals]]) -> list[CanteenMeals]:
    """``meals_per_window`` of consecutive periods (``halves``) as one period's."""
    out = [
        CanteenMeals(c.canteen, c.windows, list(c.days), dict(c.cells), c.totals_only)
        for c in parts[0]
    ]
    for part in parts[1:]:
        for whole, more in zip(out, part, strict=True):
            whole.days.extend(more.days)
            for key, n in more.cells.items():
                # Totals only: each half's are under its own first day; keep them apart.
                whole.cells[key] = whole.cells.get(key, 0) + n
    return out


def meal_entries(
    conn: Connection,
    first: dt.date,
    last: dt.date,
    *,
    zone: dt.tzinfo,
    windows: WindowTable,
    canteen: str,
    window: str | None = None,
    weekday: int | None = None,
    limit: int | None = None,
) -> list[Key]:
    """The meals behind a count, in time order: accepted sales not reversed at ``canteen``
    on the local days ``first``..``last``, in ``window`` (OTHER: outside every window;
    None: any), on ``weekday`` (Monday 0; None: any day)."""
    own = windows_for(windows, canteen)
    names = [w.name for w in own]
    if window is not None and window != OTHER and window not in names:
        raise MealsError(f"window {window!r}: canteen {canteen} has {', '.join(names) or 'none'}")
    if weekday is not None and not 0 <= weekday < WEEKDAYS:
        raise MealsError(f"weekday {weekday}: expected 0 (Monday) to 6 (Sunday)")
    e = entries.c
    start_ms = midnight_ms(first, zone)
    end_ms = midnight_ms(last + dt.timedelta(days=1), zone)
    keys: list[Key] = []
    for lo, hi, off in offset_segments(start_ms, end_ms, zone):
        local = e.at_ms + off
        where: list[ColumnElement[bool]] = [*inspection.sales_kept(lo, hi), e.canteen == canteen]
        if window is not None:
            index = 0 if window == OTHER else names.index(window) + 1
            where.append(_window_index(local % DAY_MS, own) == literal_column(str(index)))
        if weekday is not None:
            shift = (weekday - _EPOCH_WEEKDAY) % WEEKDAYS
            where.append((local // DAY_MS) % WEEKDAYS == literal_column(str(shift)))
        query = select(e.terminal, e.seq).where(*where).order_by(e.at_ms, e.terminal, e.seq)
        if limit is not None:
            query = query.limit(limit - len(keys))
        keys.extend((str(t), int(s)) for t, s in conn.execute(query))
        if limit is not None and len(keys) >= limit:
            break
    return keys


__all__ = [
    "OTHER",
    "CanteenMeals",
    "MealsError",
    "Window",
    "WindowTable",
    "Windows",
    "day_of",
    "default_windows",
    "meal_entries",
    "meals_per_window",
    "published_windows",
    "windows_for",
    "windows_of",
]
