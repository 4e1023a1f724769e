"""canteen-county fleet: one line per terminal, the silent and the out-of-tolerance first.

This module only parses the command's arguments, opens the county database, calls
county/fleet.py and prints its rows: a table for people (local times, ages in words),
or JSON for scripts (``--json``: every figure in milliseconds and seconds). What each
column means and where it comes from is in docs/fleet.md. Bad input (an unknown
sort, state or time zone) is one line on standard error with exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from county import fleet
from county.command import (
    add_data,
    add_database,
    now_ms,
    one_line_errors,
    open_county,
    print_json,
)
from county.localtime import LocalTimeError, add_timezone_option, county_zone, local_text


def age_text(seconds: int | None) -> str:
    """An age for people: 45 s, 12 min, 3 h, 2 d; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def update_text(update: dict[str, Any]) -> str:
    state = update["state"]
    if state == "none":
        return "no updates"
    if state == "unknown":
        return "not reported"
    text = f"set {update['set']} {state}"
    if state == "behind":
        text += f" ({','.join(update['differs'])})"
    return text


def _line(row: dict[str, Any], now: int, zone: Any) -> list[str]:
    seen = row["last_seen_ms"]
    ahead = row["clock_ahead_ms"]
    return [
        row["terminal"],
        row["canteen"] + (f" {row['canteen_name']}" if row["canteen_name"] else ""),
        ",".join(row["states"]),
        local_text(seen, zone) if seen is not None else "never",
        age_text(None if seen is None else max(0, (now - seen) // 1000)),
        "" if row["backlog"] is None else str(row["backlog"]),
        row["software"] or "",
        update_text(row["update"]),
        age_text(row["lists_age_s"]),
        "" if ahead is None else f"{ahead / 1000:+.1f} s",
        str(row["alarms"]),
    ]


HEAD = [
    "terminal",
    "canteen",
    "state",
    "last seen",
    "ago",
    "backlog",
    "software",
    "update set",
    "lists age",
    "clock",
    "alarms",
]


@one_line_errors(fleet.FleetError, LocalTimeError)
def cmd_fleet(a: argparse.Namespace) -> int:
    zone = county_zone(a.timezone)
    now = now_ms()
    only = [fleet.SILENT] if a.silent else []
    only += [s for s in (a.state or []) if s not in only]
    db = open_county(a)
    try:
        with db.read() as conn:
            rows = fleet.fleet(
                conn,
                Path(a.data) if a.data else None,
                now,
                fleet.FleetRules(zone=zone),
                canteen=a.canteen,
                only=only,
                retired=a.retired,
                sort=a.sort,
                descending=a.desc,
            )
    finally:
        db.close()
    if a.json:
        print_json({"now_ms": now, "counts": fleet.state_counts(rows), "terminals": rows})
        return 0
    lines = [HEAD] + [_line(r, now, zone) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


def add_fleet_commands(subparsers: Any) -> None:
    """Add 'fleet' to canteen-county."""
    p = subparsers.add_parser(
        "fleet",
        help="one line per terminal: last seen, backlog, software, update set, clock, alarms",
        description="Every terminal not retired, the silent first, then a clock out of "
        "tolerance, behind on updates, with alarms (docs/fleet.md says what each means).",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--json", action="store_true", help="JSON for scripts instead of a table")
    p.add_argument("--silent", action="store_true", help="only the silent terminals")
    p.add_argument(
        "--state",
        action="append",
        choices=fleet.STATES,
        help="only terminals in this state (repeat for several)",
    )
    p.add_argument("--canteen", metavar="ID", help="only this canteen's terminals")
    p.add_argument("--retired", action="store_true", help="retired terminals too")
    p.add_argument("--sort", choices=fleet.SORTS, default="attention", help="the column to sort by")
    p.add_argument("--desc", action="store_true", help="sort in descending order")
    add_timezone_option(p)
    p.set_defaults(func=cmd_fleet)
