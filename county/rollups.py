"""The summaries the intake keeps beside the entries, for the console's year views.

This module owns three tables (county/db/schema.py, migration 0007) that let the
inspection and meals pages answer a year from thousands of rows instead of the 2.5
million sales a county of 80 canteens records in a year (docs/inspection.md "Speed"):

- ``visits``: accepted sales of a cadre whose agency is not the canteen's operator, the
  only sales a reception batch can hold (about 3 % of all sales);
- ``sales_slots``: meals and fen of the accepted sales that no reversal names, per
  quarter hour (UTC ms // 900,000) and canteen; the canteens of a period, the meals per
  window and the off-hours finder read these;
- ``sales_days``: the same per local day (of the zone ``rollups_meta`` names), canteen
  and the diner's agency; spending per agency or township and month sums these;
- ``multi_days``: (cadre, local day) pairs with accepted sales at two canteens or more, in
  the zone ``rollups_meta`` names (the county's, Asia/Shanghai by default).

``note_entries`` brings them up to date with the entries a sync just stored, in the
intake's own transaction, so they never disagree with the entries a reader sees.
``rebuild`` makes them again from the entries (migration 0007, a bulk-loaded history,
``canteen-county db rollups``); ``rebuild_visits`` after a canteen's operator changes.
Each is a summary, never evidence: the pages' drill-downs still list the entries, and
the finders check what a summary points at against the entries themselves. The rules
stay those of county/inspection.py: a reversed sale counts nowhere, a reversal counts
against its sale whenever it is made.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    union_all,
    update,
)

from county.db.schema import (
    canteens,
    entries,
    multi_days,
    rollups_meta,
    sales_days,
    sales_slots,
    visits,
)
from county.localtime import DEFAULT_TIMEZONE, county_zone, midnight_ms
from county.storekit import Prepared, dialect_insert, sql_word
from protocol.chain import ACCEPT, REVERSAL, SALE

SLOT_MS = 900_000  # a quarter hour: every zone's offset from UTC is whole quarters
DAY_MS = 86_400_000
NO_UNIT = ""  # sales_days.unit of a sale without an agency
# A sale's amount is summed in sales_slots when 0 <= amount_fen < MAX_FEN (about 11
# billion yuan): a terminal may sign any 64-bit amount, and two of those overflow a sum.
# Sales outside are counted in rollups_meta ``unsummed``; while any is, spending and
# meals are summed from the entries as before (county/inspection.py).
MAX_FEN = 1 << 40
# Likewise a time before 1970 or past the year 146,000 (2^62 ms): such sales stay out of
# sales_slots (SQL and Python divide negative numbers differently, and a local day of
# 2^63 - 1 ms overflows), counted with them.
MAX_MS = 1 << 62


def _nearer(a: Any, b: Any) -> Any:
    """The smaller of two distances, either of which may be NULL (none)."""
    return case((a.is_(None), b), (b.is_(None), a), (a < b, a), else_=b)


def _accepted_sale() -> list[Any]:
    e = entries.c
    return [e.kind == sql_word(SALE), e.verdict == sql_word(ACCEPT)]


def reversed_keys() -> Any:
    """(terminal, seq) of every sale a reversal names (through entries_reversals)."""
    r = entries.alias("r")
    return select(r.c.terminal, r.c.ref_seq).where(
        r.c.kind == sql_word(REVERSAL), r.c.ref_seq.is_not(None)
    )


def _meta(conn: Connection, name: str) -> str | None:
    found = conn.execute(
        select(rollups_meta.c.value).where(rollups_meta.c.name == name)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def _set_meta(conn: Connection, name: str, value: str | None) -> None:
    if value is None:
        conn.execute(delete(rollups_meta).where(rollups_meta.c.name == name))
        return
    # An upsert: two intakes at once never collide on the key (``unsummed`` only ever
    # needs to be above zero, so a lost increment does not matter).
    ins = dialect_insert(conn.dialect.name, rollups_meta).values(name=name, value=value)
    conn.execute(ins.on_conflict_do_update(index_elements=["name"], set_={"value": value}))


def zone_name(conn: Connection) -> str:
    """The zone ``multi_days`` counts local days in."""
    return _meta(conn, "zone") or DEFAULT_TIMEZONE


def fill_requested(conn: Connection) -> bool:
    """A migration made the tables and asked for them to be filled (rebuild clears it)."""
    return _meta(conn, "fill") is not None


def unsummed(conn: Connection) -> int:
    """How many accepted sales sales_slots leaves out for their amount or time (MAX_FEN,
    MAX_MS); while any is, the pages sum from the entries."""
    return int(_meta(conn, "unsummed") or 0)


def day_no(at_ms: int, zone: dt.tzinfo) -> int:
    """The local day of ``at_ms`` in ``zone``, as days since 1970-01-01 (the UTC day of
    a time beyond the calendar, which a terminal may sign)."""
    try:
        local = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).astimezone(zone)
    except (ValueError, OverflowError, OSError):
        return at_ms // DAY_MS
    return (local.date() - dt.date(1970, 1, 1)).days


def _summable() -> list[Any]:
    e = entries.c
    return [e.amount_fen >= 0, e.amount_fen < MAX_FEN, e.at_ms >= 0, e.at_ms < MAX_MS]


def summable(amount_fen: int, at_ms: int) -> bool:
    """The sale goes into sales_slots (else it is counted as unsummed)."""
    return 0 <= amount_fen < MAX_FEN and 0 <= at_ms < MAX_MS


# -- kept by the intake ---------------------------------------------------------------------


def _visits_of(where: Sequence[Any]) -> Any:
    e = entries.c
    op = canteens.c.operator
    return (
        select(e.terminal, e.seq, e.canteen, e.unit, e.cadre, e.at_ms, e.amount_fen)
        .select_from(entries.outerjoin(canteens, canteens.c.canteen == e.canteen))
        .where(
            *_accepted_sale(),
            e.unit.is_not(None),
            e.cadre.is_not(None),
            or_(op.is_(None), e.unit != op),
            # A time a terminal may sign but no meal has (before 1970, past 2^62 ms): its
            # distance to a neighbour would overflow. No batch is looked for there.
            e.at_ms >= 0,
            e.at_ms < MAX_MS,
            *where,
        )
    )


_VISIT_COLUMNS = ("terminal", "seq", "canteen", "unit", "cadre", "at_ms", "amount_fen")


def _slots_of(where: Sequence[Any]) -> Any:
    e = entries.c
    slot = (e.at_ms // SLOT_MS).label("slot")
    return (
        select(slot, e.canteen, func.count().label("meals"), func.sum(e.amount_fen))
        .where(*_accepted_sale(), *_summable(), *where)
        .group_by(slot, e.canteen)
    )


def _days_of(where: Sequence[Any], offset_ms: int) -> Any:
    e = entries.c
    day = ((e.at_ms + offset_ms) // DAY_MS).label("day_no")
    unit = func.coalesce(e.unit, NO_UNIT).label("unit")
    return (
        select(day, e.canteen, unit, func.count().label("meals"), func.sum(e.amount_fen))
        .where(*_accepted_sale(), *_summable(), *where)
        .group_by(day, e.canteen, unit)
    )


def _count_unsummed(conn: Connection, where: Sequence[Any]) -> int:
    e = entries.c
    return int(
        conn.execute(
            select(func.count()).where(
                *_accepted_sale(),
                or_(e.amount_fen < 0, e.amount_fen >= MAX_FEN, e.at_ms < 0, e.at_ms >= MAX_MS),
                *where,
            )
        ).scalar_one()
    )


_VISITS_OF_RANGE = Prepared(
    insert(visits).from_select(
        _VISIT_COLUMNS,
        _visits_of(
            [
                entries.c.terminal == bindparam("terminal"),
                entries.c.seq >= bindparam("first"),
                entries.c.seq <= bindparam("last"),
            ]
        ),
    )
)


_V = visits.c
_NEW_VISITS = Prepared(
    select(_V.terminal, _V.seq, _V.canteen, _V.unit, _V.at_ms)
    .where(
        _V.terminal == bindparam("terminal"),
        _V.seq >= bindparam("first"),
        _V.seq <= bindparam("last"),
    )
    .order_by(_V.at_ms, _V.seq)
)
_IN_RUN = [_V.canteen == bindparam("canteen"), _V.unit == bindparam("unit")]
_RUN_SPAN = Prepared(
    select(_V.terminal, _V.seq, _V.at_ms).where(
        *_IN_RUN, _V.at_ms >= bindparam("lo"), _V.at_ms <= bindparam("hi")
    )
)
_RUN_BELOW = Prepared(
    select(_V.terminal, _V.seq, _V.at_ms)
    .where(*_IN_RUN, _V.at_ms < bindparam("lo"))
    .order_by(_V.at_ms.desc())
    .limit(1)
)
_RUN_ABOVE = Prepared(
    select(_V.terminal, _V.seq, _V.at_ms)
    .where(*_IN_RUN, _V.at_ms > bindparam("hi"))
    .order_by(_V.at_ms)
    .limit(1)
)
_NEAR = Prepared(
    update(visits)
    .where(_V.terminal == bindparam("t"), _V.seq == bindparam("s"))
    .values(near_ms=_nearer(_V.near_ms, bindparam("gap")))
)
_LOCK_RUNS = (
    "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext('visits:' || c) AS h "
    "FROM unnest(%(runs)s::text[]) AS c ORDER BY h) AS locks"
)


def _note_neighbours(conn: Connection, new: Sequence[Any]) -> None:
    """Each new visit's distance to its nearest neighbour of the same canteen and agency,
    and its two neighbours' (the only visits that can have it as their nearest).

    Per canteen and agency, one read of the visits between the new ones' first and last
    time and one each for the nearest before and after them; the visits in time order,
    each new one's two neighbours in it; then one executemany of the distances. A batch
    uploaded after an outage (hundreds of sales) thus costs a few statements, not six a
    sale. Visits at the same time are ordered by terminal and seq, so each is next to
    another and both get 0."""
    if not new:
        return
    runs: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    for terminal, seq, canteen, unit, at_ms in new:
        runs.setdefault((str(canteen), str(unit)), []).append((str(terminal), int(seq), int(at_ms)))
    if conn.dialect.name == "postgresql":
        # Two servers adding visits of one canteen and agency at once would each miss the
        # other's: one (canteen, agency) at a time.
        keys = sorted(f"{c}\x1f{u}" for c, u in runs)
        conn.exec_driver_sql(_LOCK_RUNS, {"runs": keys})
    nearest: dict[tuple[str, int], int] = {}

    def note(key: tuple[str, int], gap: int) -> None:
        if key not in nearest or gap < nearest[key]:
            nearest[key] = gap

    for (canteen, unit), mine in runs.items():
        span = {
            "canteen": canteen,
            "unit": unit,
            "lo": min(at for _, _, at in mine),
            "hi": max(at for _, _, at in mine),
        }
        around = list(_RUN_SPAN.run(conn, span).fetchall())
        for look in (_RUN_BELOW, _RUN_ABOVE):
            around.extend(look.run(conn, span).fetchall())
        ordered = sorted((int(at), str(t), int(q)) for t, q, at in around)
        place = {(t, q): i for i, (_, t, q) in enumerate(ordered)}
        for terminal, seq, at_ms in mine:
            i = place[(terminal, seq)]
            for j in (i - 1, i + 1):
                if 0 <= j < len(ordered):
                    other_at, other_t, other_q = ordered[j]
                    gap = abs(at_ms - other_at)
                    note((terminal, seq), gap)
                    note((other_t, other_q), gap)
    if nearest:
        _NEAR.run(conn, [{"t": t, "s": q, "gap": gap} for (t, q), gap in nearest.items()])


def _add_to(dialect: str, table: Any, key: Sequence[str]) -> Prepared:
    ins = dialect_insert(dialect, table)
    return Prepared(
        ins.on_conflict_do_update(
            index_elements=list(key),
            set_={
                "meals": table.c.meals + ins.excluded.meals,
                "fen": table.c.fen + ins.excluded.fen,
            },
        ),
        [*key, "meals", "fen"],
    )


_ADD_SLOTS = {d: _add_to(d, sales_slots, ["slot", "canteen"]) for d in ("sqlite", "postgresql")}
_ADD_DAYS = {
    d: _add_to(d, sales_days, ["day_no", "canteen", "unit"]) for d in ("sqlite", "postgresql")
}
_ZONE = Prepared(select(rollups_meta.c.value).where(rollups_meta.c.name == "zone"))
# One lock per cadre, taken in one order by every server (a deadlock is found by
# PostgreSQL and answered 503, which the terminal retries).
_LOCK_CADRES = (
    "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext('multi:' || c) AS h "
    "FROM unnest(%(cadres)s::text[]) AS c ORDER BY h) AS locks"
)


# The accepted sales of some cadres on some day texts or none (entries_served): one
# statement for a batch's cadres, not one per cadre and day (a terminal back from an
# outage sends hundreds of sales of as many cadres in one batch).
# Two halves, so that SQLite seeks the index on both of its columns (with an OR of the
# two it seeks the cadre only and reads a year of the cadre's sales).
_CADRES_DAYS = union_all(
    *(
        select(entries.c.cadre, entries.c.day, entries.c.canteen, entries.c.at_ms).where(
            *_accepted_sale(), entries.c.cadre.in_(bindparam("cadres", expanding=True)), day
        )
        for day in (
            entries.c.day.in_(bindparam("days", expanding=True)),
            entries.c.day.is_(None),
        )
    )
)
# Cadres a statement asks about: well under both databases' limits on parameters.
_CADRES_A_STATEMENT = 500


def note_entries(conn: Connection, stored: Sequence[Mapping[str, Any]]) -> None:
    """Bring the summaries up to date with ``stored``, the entries of one terminal just
    inserted in the caller's write transaction (county/intake.py), each a mapping of the
    entries table's columns, in seq order.

    What it can, it works out from the entries in hand; a one-sale sync runs three or
    four statements more than before (visits, sales_slots, and the cadre's other sales
    of those days; on PostgreSQL the cadre's lock)."""
    if not stored:
        return
    sales = [r for r in stored if r["kind"] == SALE and r["verdict"] == ACCEPT]
    undone = [r for r in stored if r["kind"] == REVERSAL and r["ref_seq"] is not None]
    if not sales and not undone:
        return
    dialect = conn.dialect.name
    terminal = str(stored[0]["terminal"])
    if sales:
        span = {"terminal": terminal, "first": sales[0]["seq"], "last": sales[-1]["seq"]}
        _VISITS_OF_RANGE.run(conn, span)
        _note_neighbours(conn, _NEW_VISITS.run(conn, span).fetchall())
        zone_row = _ZONE.run(conn, {}).fetchone()
        zone = county_zone(str(zone_row[0]) if zone_row else DEFAULT_TIMEZONE)
        slots: dict[tuple[int, str], list[int]] = {}
        days: dict[tuple[int, str, str], list[int]] = {}
        absurd = 0
        for r in sales:
            fen, at_ms = int(r["amount_fen"]), int(r["at_ms"])
            if not summable(fen, at_ms):
                absurd += 1
                continue
            unit = r["unit"] if r["unit"] is not None else NO_UNIT
            canteen = str(r["canteen"])
            for cell in (
                slots.setdefault((at_ms // SLOT_MS, canteen), [0, 0]),
                days.setdefault((day_no(at_ms, zone), canteen, unit), [0, 0]),
            ):
                cell[0] += 1
                cell[1] += fen
        if slots:
            _ADD_SLOTS[dialect].run(
                conn,
                [
                    {"slot": k[0], "canteen": k[1], "meals": n, "fen": f}
                    for k, (n, f) in slots.items()
                ],
            )
            _ADD_DAYS[dialect].run(
                conn,
                [
                    {"day_no": k[0], "canteen": k[1], "unit": k[2], "meals": n, "fen": f}
                    for k, (n, f) in days.items()
                ],
            )
        if absurd:
            _set_meta(conn, "unsummed", str(unsummed(conn) + absurd))
    for r in undone:
        _note_reversal(conn, terminal, int(r["seq"]), int(r["ref_seq"]))
    served = [r for r in sales if r["cadre"] is not None]
    if served:
        _note_multi_days(conn, served)


def _note_reversal(conn: Connection, terminal: str, seq: int, ref: int) -> None:
    """A new reversal takes its sale out of sales_slots, once, whenever it is made."""
    e = entries.c
    r = entries.alias("r")
    earlier = conn.execute(
        select(func.count())
        .select_from(r)
        .where(
            r.c.terminal == terminal,
            r.c.kind == sql_word(REVERSAL),
            r.c.ref_seq == ref,
            r.c.seq < seq,
        )
    ).scalar_one()
    if earlier:
        return  # the sale was taken out by the first reversal naming it
    sale = conn.execute(
        select(e.at_ms, e.canteen, e.unit, e.amount_fen).where(
            e.terminal == terminal, e.seq == ref, *_accepted_sale()
        )
    ).one_or_none()
    if sale is None or not summable(int(sale[3]), int(sale[0])):
        return  # not an accepted sale (it counted nowhere), or not summed
    at_ms, canteen, unit, fen = sale
    s, d = sales_slots.c, sales_days.c
    conn.execute(
        update(sales_slots)
        .where(s.slot == int(at_ms) // SLOT_MS, s.canteen == canteen)
        .values(meals=s.meals - 1, fen=s.fen - int(fen))
    )
    day = day_no(int(at_ms), county_zone(zone_name(conn)))
    conn.execute(
        update(sales_days)
        .where(
            d.day_no == day,
            d.canteen == canteen,
            d.unit == (unit if unit is not None else NO_UNIT),
        )
        .values(meals=d.meals - 1, fen=d.fen - int(fen))
    )


def _next_days(days: Iterable[str]) -> set[str]:
    """Each day text with the day before and after (a terminal's local day may differ
    from the county's by one)."""
    out: set[str] = set()
    for text in days:
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            out.add(text)
            continue
        out.update((day + dt.timedelta(days=k)).isoformat() for k in (-1, 0, 1))
    return out


def _note_multi_days(conn: Connection, served: Sequence[Mapping[str, Any]]) -> None:
    """Cadres of the new sales served at another canteen on the same local day: their
    accepted sales of those days (the new ones among them), by cadre and day text
    (entries_served), counted per local day of the zone only when two canteens appear."""
    cadres = sorted({str(r["cadre"]) for r in served})
    if conn.dialect.name == "postgresql":
        # Two servers taking two sales of one cadre at two canteens at the same moment
        # would each miss the other's (not yet committed): one cadre at a time.
        conn.exec_driver_sql(_LOCK_CADRES, {"cadres": cadres})
    # The cadre's sales of the day before, the day and the day after (a terminal's day
    # text may differ from the county's local day by one), and those without a day.
    rows: set[tuple[str, str, int]] = set()
    near_days: dict[str, set[str]] = defaultdict(set)
    for r in served:
        if r["day"]:
            near_days[str(r["cadre"])].update(_next_days([str(r["day"])]))
    asked = sorted(near_days)
    for i in range(0, len(asked), _CADRES_A_STATEMENT):
        chunk = asked[i : i + _CADRES_A_STATEMENT]
        days = sorted(set().union(*(near_days[c] for c in chunk)))
        for cadre, day, canteen, at in conn.execute(_CADRES_DAYS, {"cadres": chunk, "days": days}):
            # The statement asks for every chunk's day: keep each cadre's own.
            if day is None or day in near_days[cadre]:
                rows.add((str(cadre), str(canteen), int(at)))
    e = entries.c
    for r in served:
        if not r["day"]:  # a sale without its day: the cadre's sales less than a day away
            at = int(r["at_ms"])  # any 64-bit time a terminal signed: bounds kept in range
            near = select(e.canteen, e.at_ms).where(
                *_accepted_sale(),
                e.cadre == r["cadre"],
                e.at_ms > max(at - DAY_MS, -(1 << 63)),
                e.at_ms < min(at + DAY_MS, (1 << 63) - 1),
            )
            rows.update((str(r["cadre"]), str(k), int(t)) for k, t in conn.execute(near))
    where: dict[str, set[str]] = defaultdict(set)
    for cadre, canteen, _ in rows:
        where[cadre].add(canteen)
    if all(len(k) < 2 for k in where.values()):
        return  # the usual case: one canteen each over those days
    zone = county_zone(zone_name(conn))
    seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for cadre, canteen, at_ms in rows:
        if len(where[cadre]) > 1:
            seen[(cadre, day_no(at_ms, zone))].add(canteen)
    several = [{"cadre": c, "day_no": d} for (c, d), k in seen.items() if len(k) > 1]
    if several:
        conn.execute(
            dialect_insert(conn.dialect.name, multi_days).on_conflict_do_nothing(), several
        )


# -- rebuilt from the entries ---------------------------------------------------------------


def rebuild_visits(conn: Connection, canteen: str | None = None) -> None:
    """Make ``visits`` again (for one canteen, whose operator changed), in the caller's
    write transaction, each with the distance to its nearest neighbour."""
    v = visits.c
    where = [] if canteen is None else [entries.c.canteen == canteen]
    conn.execute(delete(visits).where(*([v.canteen == canteen] if canteen else [])))
    found = _visits_of(where).subquery("found")
    f = found.c
    order = (f.at_ms, f.terminal, f.seq)
    gap_before = f.at_ms - func.lag(f.at_ms).over(partition_by=(f.canteen, f.unit), order_by=order)
    gap_after = func.lead(f.at_ms).over(partition_by=(f.canteen, f.unit), order_by=order) - f.at_ms
    near = select(*(f[name] for name in _VISIT_COLUMNS), _nearer(gap_before, gap_after))
    conn.execute(insert(visits).from_select([*_VISIT_COLUMNS, "near_ms"], near))


def rebuild(conn: Connection, zone: str | None = None) -> None:
    """Make every summary again from the entries, in the caller's write transaction;
    ``zone`` names the zone of multi_days (else the one they had, else the county's:
    $CANTEEN_COUNTY_TIMEZONE or Asia/Shanghai)."""
    e = entries.c
    chosen = zone or _meta(conn, "zone") or county_zone().key
    tz = county_zone(chosen)
    # Nothing is written for the defaults, so a new county's tables stay empty.
    _set_meta(conn, "fill", None)
    _set_meta(conn, "zone", None if chosen == DEFAULT_TIMEZONE else chosen)
    more = _count_unsummed(conn, [])
    _set_meta(conn, "unsummed", str(more) if more else None)
    rebuild_visits(conn)
    conn.execute(delete(sales_slots))
    conn.execute(delete(sales_days))
    conn.execute(delete(multi_days))
    kept = [tuple_(e.terminal, e.seq).not_in(reversed_keys())]
    conn.execute(
        insert(sales_slots).from_select(["slot", "canteen", "meals", "fen"], _slots_of(kept))
    )
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    # Local days by the offset at each sale: in SQL for a zone of one offset (Asia/Shanghai
    # since 1992), else sale by sale in Python (daylight saving).
    off = _fixed_offset_ms(tz)
    if off is not None:
        conn.execute(
            insert(sales_days).from_select(
                ["day_no", "canteen", "unit", "meals", "fen"], _days_of(kept, off)
            )
        )
    else:
        sums: dict[tuple[int, str, str], list[int]] = {}
        for canteen, unit, at_ms, fen in conn.execute(
            select(e.canteen, e.unit, e.at_ms, e.amount_fen).where(
                *_accepted_sale(), *_summable(), *kept
            )
        ):
            key = (day_no(int(at_ms), tz), str(canteen), unit if unit is not None else NO_UNIT)
            cell = sums.setdefault(key, [0, 0])
            cell[0] += 1
            cell[1] += int(fen)
        if sums:
            conn.execute(
                insert(sales_days),
                [
                    {"day_no": k[0], "canteen": k[1], "unit": k[2], "meals": n, "fen": f}
                    for k, (n, f) in sums.items()
                ],
            )
    if off is not None:
        day = ((e.at_ms + off) // DAY_MS).label("day_no")
        pairs = (
            select(e.cadre, day)
            .where(*_accepted_sale(), e.cadre.is_not(None), e.at_ms >= 0, e.at_ms < MAX_MS)
            .group_by(e.cadre, day)
            .having(func.count(func.distinct(e.canteen)) > 1)
        )
        conn.execute(insert(multi_days).from_select(["cadre", "day_no"], pairs))
        return
    found: dict[tuple[str, int], set[str]] = defaultdict(set)
    for cadre, canteen, at_ms in conn.execute(
        select(e.cadre, e.canteen, e.at_ms).where(*_accepted_sale(), e.cadre.is_not(None))
    ):
        found[(str(cadre), day_no(int(at_ms), tz))].add(str(canteen))
    rows = [{"cadre": c, "day_no": d} for (c, d), where in found.items() if len(where) > 1]
    if rows:
        conn.execute(insert(multi_days), rows)


def _fixed_offset_ms(zone: dt.tzinfo) -> int | None:
    """The zone's offset when it has had one offset since 2000 (Asia/Shanghai), else None."""
    offsets = set()
    for year in range(2000, 2040):
        for month in (1, 4, 7, 10):
            at = dt.datetime(year, month, 15, 12, tzinfo=dt.UTC).astimezone(zone)
            offset = at.utcoffset()
            assert offset is not None
            offsets.add(int(offset.total_seconds() * 1000))
    return offsets.pop() if len(offsets) == 1 else None


def slot_range(start_ms: int, end_ms: int) -> tuple[int, int] | None:
    """[start_ms, end_ms) as a range of slots, or None when it is not whole quarters."""
    if start_ms % SLOT_MS or end_ms % SLOT_MS:
        return None
    return start_ms // SLOT_MS, end_ms // SLOT_MS


def day_range_all(
    conn: Connection, ranges: Sequence[tuple[int, int]], zone: dt.tzinfo
) -> list[tuple[int, int]] | None:
    """Each [lo, hi) of ``ranges`` as local day numbers [first, end) when sales_days can
    answer for them: every bound a local midnight of ``zone``, the zone sales_days counts
    in, and no sale left out for its amount or time; else None (read the entries)."""
    if getattr(zone, "key", None) != zone_name(conn) or unsummed(conn):
        return None
    out = []
    for lo, hi in ranges:
        days = []
        for at in (lo, hi):
            day = day_no(at, zone)
            if midnight_ms(dt.date(1970, 1, 1) + dt.timedelta(days=day), zone) != at:
                return None
            days.append(day)
        out.append((days[0], days[1]))
    return out


def multi_day_pairs(
    conn: Connection, zone: dt.tzinfo, first: int, last: int
) -> set[tuple[str, int]] | None:
    """The (cadre, day_no) pairs of multi_days with first <= day_no <= last, or None when
    multi_days counts days in another zone than ``zone``."""
    if getattr(zone, "key", None) != zone_name(conn):
        return None
    m = multi_days.c
    return {
        (str(c), int(d))
        for c, d in conn.execute(
            select(m.cadre, m.day_no).where(m.day_no >= first, m.day_no <= last)
        )
    }
