"""The fleet: one row per terminal, what needs looking at first, and one terminal's page.

This module owns the county's view of its terminals (docs/fleet.md): where each figure
comes from (terminals.last_seen_ms and acked_seq; the ``status`` a terminal sends with
its uploads, kept in terminal_status; clock_offsets; alarms; what its config_applied
entries say it applied, kept beside the update repository), what "silent", "clock out
of tolerance" and "behind on updates" mean, and the sync history kept in sync_log
(``note_upload``, at most SYNC_LOG_KEEP rows per terminal). Every query is a plain
function over a SQLAlchemy Connection, so the command (county/fleet_cli.py) and the
console page (county/console/pages/fleet.py) share them on SQLite and PostgreSQL. It
reads no clock (``now_ms`` is an argument) and renders nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select

from county.db.schema import (
    alarms as alarms_table,
)
from county.db.schema import (
    canteens,
    clock_offsets,
    sync_log,
    terminal_status,
    terminals,
)
from county.intake import CLOCK_TOLERANCE_MS
from county.localtime import county_zone
from county.storekit import Prepared, dialect_insert
from protocol.layout import (
    DIRECTORY_TARGET,
    INDEX_TARGET,
    ROSTER_TARGET,
    TRUST_TARGET,
    layers_digest,
    settings_target,
)

# The sync history kept per terminal: the newest uploads the county wrote something for.
SYNC_LOG_KEEP = 500
# What a terminal's config_applied entries name, and the published target of each.
CONTENT_PARTS = ("settings", "trust", "roster", "directory", "revocations")
_PART_TARGETS = {
    "trust": TRUST_TARGET,
    "roster": ROSTER_TARGET,
    "directory": DIRECTORY_TARGET,
    "revocations": INDEX_TARGET,
}

# A row's states, in the order the fleet shows them first.
SILENT = "silent"
CLOCK = "clock"
BEHIND = "behind"
ALARMS = "alarms"
OK = "ok"
RETIRED = "retired"
WAITING = "waiting"  # registered, never provisioned
STATES = (SILENT, CLOCK, BEHIND, ALARMS, OK, WAITING, RETIRED)

SORTS = (
    "attention",
    "terminal",
    "canteen",
    "last_seen",
    "backlog",
    "software",
    "update",
    "lists_age",
    "clock",
    "alarms",
)


class FleetError(ValueError):
    """A filter or sort the fleet does not know; one line."""


@dataclass(frozen=True)
class FleetRules:
    """What "silent" and "out of tolerance" mean (docs/fleet.md).

    A terminal is silent when, since it was last heard from, more than
    ``silent_intervals`` sync intervals of service hours have passed: a terminal
    switched off at night is not silent until the next morning's service has run
    that long without it. Its clock is out of tolerance when its newest clock offset
    is more than ``clock_tolerance_ms`` either way (the terminal's own default)."""

    sync_interval_ms: int = 300_000  # the terminal's [sync] interval_s default
    silent_intervals: int = 3
    service_start: dt.time = dt.time(6, 30)  # half an hour before the first meal window
    service_end: dt.time = dt.time(20, 0)  # half an hour after the last
    clock_tolerance_ms: int = CLOCK_TOLERANCE_MS
    zone: dt.tzinfo = field(default_factory=county_zone)

    @property
    def silent_after_ms(self) -> int:
        return self.sync_interval_ms * self.silent_intervals


def service_ms_between(start_ms: int, end_ms: int, rules: FleetRules, enough: int) -> int:
    """Milliseconds of service hours (local) from ``start_ms`` to ``end_ms``; counting
    stops once ``enough`` is passed (a terminal silent for a year costs a few days)."""
    if end_ms <= start_ms:
        return 0
    zone = rules.zone
    start = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).astimezone(zone)
    end = dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).astimezone(zone)
    total = 0
    day = start.date()
    while day <= end.date() and total <= enough:
        open_at = dt.datetime.combine(day, rules.service_start, zone)
        close_at = dt.datetime.combine(day, rules.service_end, zone)
        lo, hi = max(open_at, start), min(close_at, end)
        if hi > lo:
            total += int((hi - lo).total_seconds() * 1000)
        day += dt.timedelta(days=1)
    return total


# --- what the terminal says about itself, and its sync history -------------------------


_STATUS_COLUMNS = ("reported_ms", "software", "last_seq", "update_set", "lists", "status")


@functools.cache
def _upsert_status(dialect: str) -> Prepared:
    stmt = dialect_insert(dialect, terminal_status).values(
        terminal=bindparam("terminal"), **{k: bindparam(k) for k in _STATUS_COLUMNS}
    )
    return Prepared(
        stmt.on_conflict_do_update(
            index_elements=[terminal_status.c.terminal],
            set_={k: getattr(stmt.excluded, k) for k in _STATUS_COLUMNS},
        )
    )


_LOG_COLUMNS = ("terminal", "at_ms", "outcome", "accepted", "duplicates", "acked_seq")
_INSERT_LOG = Prepared(
    insert(sync_log).values(
        **{k: bindparam(k) for k in (*_LOG_COLUMNS, "last_seq", "alarm")},
    )
)
_lg = sync_log.c
# Past the newest SYNC_LOG_KEEP lines of the terminal (an index walk of that many).
_TRIM_LOG = Prepared(
    delete(sync_log).where(
        _lg.terminal == bindparam("terminal"),
        _lg.id
        < select(_lg.id)
        .where(_lg.terminal == bindparam("terminal"))
        .order_by(_lg.id.desc())
        .offset(SYNC_LOG_KEEP - 1)
        .limit(1)
        .scalar_subquery(),
    )
)


def note_upload(
    conn: Connection,
    terminal_id: str,
    now_ms: int,
    *,
    status: dict[str, Any] | None,
    outcome: str,
    accepted: int = 0,
    duplicates: int = 0,
    acked_seq: int | None = None,
    alarm: str | None = None,
) -> None:
    """Keep a terminal's newest status (when its upload carried one) and one line of its
    sync history, trimmed to the newest SYNC_LOG_KEEP; inside the caller's transaction.
    It runs with every upload that stores entries, so its three statements are
    compiled once (storekit.Prepared), as intake's are."""
    if status is not None:
        _upsert_status(conn.dialect.name).run(
            conn,
            {
                "terminal": terminal_id,
                "reported_ms": now_ms,
                "software": status.get("software"),
                "last_seq": status.get("last_seq"),
                "update_set": status.get("update_set"),
                "lists": _canonical(status.get("lists") or {}),
                "status": _canonical(status),
            },
        )
    _INSERT_LOG.run(
        conn,
        {
            "terminal": terminal_id,
            "at_ms": now_ms,
            "outcome": outcome,
            "accepted": accepted,
            "duplicates": duplicates,
            "acked_seq": acked_seq,
            "last_seq": status.get("last_seq") if status is not None else None,
            "alarm": alarm,
        },
    )
    _TRIM_LOG.run(conn, {"terminal": terminal_id})


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sync_history(
    conn: Connection, terminal_id: str, limit: int = SYNC_LOG_KEEP
) -> list[dict[str, Any]]:
    """The terminal's uploads, newest first."""
    lg = sync_log.c
    rows = conn.execute(
        select(
            lg.at_ms, lg.outcome, lg.accepted, lg.duplicates, lg.acked_seq, lg.last_seq, lg.alarm
        )
        .where(lg.terminal == terminal_id)
        .order_by(lg.id.desc())
        .limit(limit)
    )
    keys = ("at_ms", "outcome", "accepted", "duplicates", "acked_seq", "last_seq", "alarm")
    return [dict(zip(keys, r, strict=True)) for r in rows]


# --- the update set: is the terminal current? -----------------------------------------


@dataclass(frozen=True)
class Published:
    """What the county's update repository publishes now (None: it has none)."""

    county_set: int
    content: Callable[[str], dict[str, str | None]]  # a canteen's expected content
    applied: dict[str, dict[str, Any]]  # terminal id -> what it last reported applying


def published(data: Path | None) -> Published | None:
    """The repository's newest set and what each terminal reported; None without one."""
    if data is None:
        return None
    from county import updates

    if not (updates.RepoPaths(Path(data)).metadata / "timestamp.json").is_file():
        return None
    with updates.CountyRepository(data) as repo:
        snap = repo.snapshot()
        targets = repo.targets(snap).signed.targets
        applied = {row["terminal"]: row for row in repo.applied()}

    def sha(path: str) -> str | None:
        info = targets.get(path)
        return None if info is None else str(info.hashes["sha256"])

    common = {part: sha(target) for part, target in _PART_TARGETS.items()}
    cache: dict[str, dict[str, str | None]] = {}

    def content(canteen: str) -> dict[str, str | None]:
        if canteen not in cache:
            layers = [h for h in (sha(settings_target(None)), sha(settings_target(canteen))) if h]
            cache[canteen] = {"settings": layers_digest(layers) if layers else None, **common}
        return cache[canteen]

    return Published(int(snap.signed.version), content, applied)


def update_standing(pub: Published | None, terminal_id: str, canteen: str) -> dict[str, Any]:
    """Whether the terminal runs the newest published content (docs/fleet.md).

    "current" means: the content of the set it last reported applying (each part's
    SHA-256 in its config_applied entry) equals what the county publishes for its
    canteen now, whatever the set numbers; a re-signing (``rotate``, a timestamp or
    snapshot refresh) bumps the county's set and changes no content, and a terminal
    that fetched nothing new from it is still current. "behind" names the parts that
    differ; "unknown": it never reported a set; "none": the county publishes no updates.
    """
    if pub is None:
        return _standing("none")
    row = pub.applied.get(terminal_id)
    if row is None:
        return _standing("unknown", county_set=pub.county_set)
    detail = row.get("detail") or {}
    expected = pub.content(canteen)
    differs = []
    for part in CONTENT_PARTS:
        reported = detail.get(part)
        digest = reported.get("sha256") if isinstance(reported, dict) else None
        if detail.get("rolled_back_from") is not None or digest != expected[part]:
            differs.append(part)
    return _standing(
        "behind" if differs else "current",
        set=row.get("set"),
        county_set=pub.county_set,
        differs=differs,
        applied_at_ms=row.get("applied_at_ms"),
        via=detail.get("via"),
        rolled_back_from=detail.get("rolled_back_from"),
    )


def _standing(state: str, **known: Any) -> dict[str, Any]:
    """Every key of an update standing, None where not known."""
    keys = ("set", "county_set", "applied_at_ms", "via", "rolled_back_from")
    return {"state": state, "differs": [], **dict.fromkeys(keys), **known}


# --- the fleet ---------------------------------------------------------------------------


def _alarm_counts(conn: Connection) -> dict[str, tuple[int, int | None]]:
    """Per terminal, its alarms nobody has reviewed yet (docs/alarms.md: an alarm county IT
    confirmed or withdrew has been dealt with) and the newest one's time."""
    a = alarms_table.c
    return {
        t: (int(n), last)
        for t, n, last in conn.execute(
            select(a.terminal, func.count(), func.max(a.last_ms))
            .where(a.confirmed_ms.is_(None), a.withdrawn_ms.is_(None))
            .group_by(a.terminal)
        )
    }


def fleet(
    conn: Connection,
    data: Path | None,
    now_ms: int,
    rules: FleetRules | None = None,
    *,
    canteen: str | None = None,
    only: Sequence[str] = (),
    retired: bool = False,
    sort: str = "attention",
    descending: bool = False,
    terminal_id: str | None = None,
) -> list[dict[str, Any]]:
    """One row per terminal (docs/fleet.md), the silent and the out-of-tolerance first.

    ``only``: states a row must have one of (silent, clock, behind, alarms, ok, ...);
    ``retired``: include retired terminals (left out by default); ``sort``: one of SORTS
    ("attention": silent, then clock, behind, alarms; ties by terminal id)."""
    rules = rules or FleetRules()
    if sort not in SORTS:
        raise FleetError(f"sort {sort!r}: expected one of {', '.join(SORTS)}")
    unknown = [s for s in only if s not in STATES]
    if unknown:
        raise FleetError(f"state {unknown[0]!r}: expected one of {', '.join(STATES)}")
    t, s, c, k = terminals.c, terminal_status.c, clock_offsets.c, canteens.c
    query = (
        select(
            t.terminal_id,
            t.canteen,
            k.name,
            t.registered_ms,
            t.provisioned_ms,
            t.last_seen_ms,
            t.acked_seq,
            t.retired_ms,
            t.retired_reason,
            t.replaced_by,
            s.reported_ms,
            s.software,
            s.last_seq,
            s.update_set,
            s.lists,
            c.ahead_ms,
            c.server_ms,
        )
        .join_from(terminals, terminal_status, s.terminal == t.terminal_id, isouter=True)
        .join_from(terminals, clock_offsets, c.terminal == t.terminal_id, isouter=True)
        .join_from(terminals, canteens, k.canteen == t.canteen, isouter=True)
        .order_by(t.terminal_id)
    )
    if canteen is not None:
        query = query.where(t.canteen == canteen)
    if terminal_id is not None:
        query = query.where(t.terminal_id == terminal_id)
    if not retired:
        query = query.where(t.retired_ms.is_(None))
    alarm_counts = _alarm_counts(conn)
    pub = published(data)
    rows = [_row(r, now_ms, rules, alarm_counts, pub) for r in conn.execute(query).mappings().all()]
    if only:
        rows = [r for r in rows if set(r["states"]) & set(only)]
    return sort_rows(rows, sort, descending)


def _row(
    r: Any,
    now_ms: int,
    rules: FleetRules,
    alarm_counts: dict[str, tuple[int, int | None]],
    pub: Published | None,
) -> dict[str, Any]:
    tid = r["terminal_id"]
    seen = r["last_seen_ms"]
    since = seen if seen is not None else r["provisioned_ms"]
    silent = False
    if r["retired_ms"] is None and since is not None:
        threshold = rules.silent_after_ms
        silent = service_ms_between(since, now_ms, rules, threshold) > threshold
    lists = json.loads(r["lists"]) if r["lists"] else {}
    issued = [
        int(v["issued_at"])
        for v in lists.values()
        if isinstance(v, dict) and isinstance(v.get("issued_at"), int)
    ]
    # The age of its oldest list (issued_at is when the county last vouched for it).
    lists_age_s = max(0, now_ms // 1000 - min(issued)) if issued else None
    last_seq = r["last_seq"]
    backlog = max(0, int(last_seq) - int(r["acked_seq"])) if last_seq is not None else None
    ahead = r["ahead_ms"]
    clock_bad = ahead is not None and abs(int(ahead)) > rules.clock_tolerance_ms
    n_alarms, last_alarm = alarm_counts.get(tid, (0, None))
    update = update_standing(pub, tid, r["canteen"])
    states: list[str] = []
    if r["retired_ms"] is not None:
        states.append(RETIRED)
    elif r["provisioned_ms"] is None:
        states.append(WAITING)
    else:
        if silent:
            states.append(SILENT)
        if clock_bad:
            states.append(CLOCK)
        if update["state"] == "behind":
            states.append(BEHIND)
        if n_alarms:
            states.append(ALARMS)
        if not states:
            states.append(OK)
    return {
        "terminal": tid,
        "canteen": r["canteen"],
        "canteen_name": r["name"],
        "registered_ms": r["registered_ms"],
        "provisioned_ms": r["provisioned_ms"],
        "last_seen_ms": seen,
        "acked_seq": r["acked_seq"],
        "backlog": backlog,
        "last_seq": last_seq,
        "status_ms": r["reported_ms"],
        "software": r["software"],
        "reported_set": r["update_set"],
        "update": update,
        "lists": lists,
        "lists_age_s": lists_age_s,
        "clock_ahead_ms": ahead,
        "clock_ok": None if ahead is None else not clock_bad,
        "alarms": n_alarms,
        "last_alarm_ms": last_alarm,
        "retired_ms": r["retired_ms"],
        "retired_reason": r["retired_reason"],
        "replaced_by": r["replaced_by"],
        "states": states,
    }


def _attention(row: dict[str, Any]) -> tuple[Any, ...]:
    states = row["states"]
    return (
        SILENT not in states,
        CLOCK not in states,
        BEHIND not in states,
        -row["alarms"],
        RETIRED in states,
        row["terminal"],
    )


def _none_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "terminal": lambda r: r["terminal"],
    "canteen": lambda r: (r["canteen"], r["terminal"]),
    "last_seen": lambda r: _none_last(r["last_seen_ms"]),
    "backlog": lambda r: _none_last(r["backlog"]),
    "software": lambda r: _none_last(r["software"]),
    "update": lambda r: _none_last(r["update"]["set"]),
    "lists_age": lambda r: _none_last(r["lists_age_s"]),
    "clock": lambda r: _none_last(_abs(r["clock_ahead_ms"])),
    "alarms": lambda r: r["alarms"],
}


def _abs(value: int | None) -> int | None:
    return None if value is None else abs(value)


def sort_rows(
    rows: list[dict[str, Any]], sort: str, descending: bool = False
) -> list[dict[str, Any]]:
    if sort == "attention":
        ordered = sorted(rows, key=_attention)
        return ordered[::-1] if descending else ordered
    key = _KEYS[sort]
    ordered = sorted(rows, key=lambda r: r["terminal"])  # ties by terminal id
    if descending:
        # Unknown values stay last either way.
        known = [r for r in ordered if not _is_none(key(r))]
        rest = [r for r in ordered if _is_none(key(r))]
        return sorted(known, key=key, reverse=True) + rest
    return sorted(ordered, key=key)


def _is_none(key: Any) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and key[0] is True


def state_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many rows have each state (a row may count under several), every state named."""
    counts = dict.fromkeys(STATES, 0)
    for row in rows:
        for state in row["states"]:
            counts[state] += 1
    return counts


def terminal_alarms(conn: Connection, terminal_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """The terminal's alarms, newest first."""
    a = alarms_table.c
    rows = conn.execute(
        select(a.id, a.kind, a.seq, a.problem, a.first_ms, a.last_ms, a.times)
        .where(a.terminal == terminal_id)
        .order_by(a.last_ms.desc(), a.id.desc())
        .limit(limit)
    )
    keys = ("id", "kind", "seq", "problem", "first_ms", "last_ms", "times")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def terminal_page(
    conn: Connection,
    data: Path | None,
    terminal_id: str,
    now_ms: int,
    rules: FleetRules | None = None,
) -> dict[str, Any] | None:
    """One terminal: its fleet row (retired too), its sync history and its alarms; None
    for an unknown id."""
    rows = fleet(conn, data, now_ms, rules, retired=True, terminal_id=terminal_id)
    if not rows:
        return None
    return {
        "row": rows[0],
        "syncs": sync_history(conn, terminal_id),
        "alarms": terminal_alarms(conn, terminal_id),
    }


def applied_report(conn: Connection, data: Path) -> dict[str, Any]:
    """What ``canteen-county applied`` prints: each terminal that reported a set, with
    whether it is current (``update_standing``) beside the county's newest set."""
    pub = published(data)
    if pub is None:
        return {"county_set": None, "terminals": []}
    t = terminals.c
    canteen_of = {tid: canteen for tid, canteen in conn.execute(select(t.terminal_id, t.canteen))}
    out = []
    for terminal_id in sorted(pub.applied):
        row = dict(pub.applied[terminal_id])
        canteen = canteen_of.get(terminal_id)
        standing = (
            update_standing(pub, terminal_id, canteen)
            if canteen is not None
            else {"state": "unknown", "differs": []}
        )
        row.update(canteen=canteen, state=standing["state"], differs=standing["differs"])
        out.append(row)
    return {"county_set": pub.county_set, "terminals": out}
