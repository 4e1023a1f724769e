"""What county IT reads out of the county database: entries, the report, alarms,
conflicts, clock offsets and counters.

This module owns the read-only answers the commands print and the tests check. Each
function reads inside one read transaction the caller opened (county/store.py), so an
answer is consistent with itself while intake goes on. It never writes: what it shows
was decided at intake (county/intake.py, county/conflicts.py). Hashes leave as hex
text, times as integer milliseconds, as the commands have always printed them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, literal_column, select

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


def iter_entries(conn: Connection, terminal_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every acknowledged entry, by terminal and sequence number, streamed."""
    columns = [entries.c[k] for k in _ENTRY_KEYS]
    query = select(*columns, entries.c.prev_hash, entries.c.hash)
    if terminal_id is not None:
        query = query.where(entries.c.terminal == terminal_id)
    query = query.order_by(entries.c.terminal, entries.c.seq)
    for r in conn.execution_options(yield_per=1000).execute(query):
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
            a.theirs,
        )
        .join_from(alarms_table, terminals, terminals.c.terminal_id == a.terminal, isouter=True)
        .order_by(a.id)
    )
    out = []
    for r in rows:
        item = dict(zip(_ALARM_KEYS, r[:9], strict=True))
        item["hash"] = bytes(r[9]).hex() if r[9] is not None else None
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
        item = dict(zip(_CONFLICT_HEAD, row[:12], strict=True))
        for name, values in (("first", row[12:18]), ("second", row[18:24])):
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
    if conn.dialect.name == "postgresql":
        return literal_column(
            f"to_char(to_timestamp(entries.at_ms / 1000) AT TIME ZONE 'UTC'"
            f" + interval '{hours} hours', 'YYYY-MM-DD')"
        )
    return literal_column(f"date(entries.at_ms / 1000, 'unixepoch', '{hours:+d} hours')")


def report(
    conn: Connection, now_ms: int, silent_after_ms: int, utc_offset_h: int = 8
) -> dict[str, Any]:
    """Per canteen and day: meals, amounts, refusals by reason, conflicts; silent terminals.

    An entry without a service day (a refusal before any meal window was
    known) counts on the local day of its time, at ``utc_offset_h``.
    """
    days: dict[tuple[str, str], dict[str, Any]] = {}

    def slot(canteen: str, day: str) -> dict[str, Any]:
        return days.setdefault(
            (canteen, day),
            {
                "canteen": canteen,
                "day": day,
                "meals": 0,
                "amount_fen": 0,
                "reversals": 0,
                "refusals": {},
                "conflicts": 0,
            },
        )

    e = entries.c
    day = func.coalesce(e.day, _local_day(conn, utc_offset_h))
    groups = (e.canteen, day, e.kind, e.verdict, e.reason)
    totals = conn.execute(
        select(*groups, func.count(), func.coalesce(func.sum(e.amount_fen), 0))
        .where(e.kind.in_((SALE, REVERSAL)))
        .group_by(*groups)
    )
    for canteen, on_day, kind, verdict, reason, n, fen in totals:
        s = slot(canteen, on_day)
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
    standing = conn.execute(
        select(c.kind, func.coalesce(c.unit, ""), e.canteen, func.coalesce(c.day, ""))
        .join_from(
            conflicts_table,
            entries,
            (e.terminal == c.second_terminal) & (e.seq == c.second_seq),
        )
        .where(c.withdrawn_ms.is_(None))
    )
    for kind, unit, canteen, on_day in standing:
        slot(canteen, on_day)["conflicts"] += 1
        u = per_unit.setdefault(unit, {})
        u[kind] = u.get(kind, 0) + 1
    t = terminals.c
    silent = [
        {"terminal": tid, "canteen": canteen, "last_seen_ms": seen, "acked_seq": acked}
        for tid, canteen, seen, acked in conn.execute(
            select(t.terminal_id, t.canteen, t.last_seen_ms, t.acked_seq)
            .where(t.last_seen_ms.is_(None) | (t.last_seen_ms < now_ms - silent_after_ms))
            .order_by(t.terminal_id)
        )
    ]
    a = alarms_table.c
    by_kind = {
        kind: int(n)
        for kind, n in conn.execute(select(a.kind, func.count()).group_by(a.kind).order_by(a.kind))
    }
    return {
        "days": [days[k] for k in sorted(days)],
        "conflicts_by_unit": per_unit,
        "terminals_not_heard_from": silent,
        "alarms": sum(by_kind.values()),
        "alarms_by_kind": by_kind,
        "clock_offsets": clock_offsets(conn),
    }
