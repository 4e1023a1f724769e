"""canteen-county meals: meals per meal window per canteen and local day, as JSON lines.

Parses the command's arguments, checks them before the database is opened, and prints
what county/meals.py counts (docs/inspection.md lists the rows). Bad input (a date, --from
after --to, a time zone, a canteen id that is not text) is one line on standard error with
exit status 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from county import inspection, meals
from county.command import open_county
from county.directory import load_directory
from county.inspection_cli import period_errors, period_of, period_options, print_line


@period_errors
def cmd_meals(a: argparse.Namespace) -> int:
    dates = period_of(a)
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            directory = load_directory(conn)
            ids = (
                [a.canteen]
                if a.canteen is not None
                else inspection.canteens_seen(conn, dates.start_ms, dates.end_ms, dates.zone)
            )
            if a.data is not None:
                table = meals.published_windows(a.data, ids)
            else:
                table = meals.default_windows()
            found = meals.meals_per_window(
                conn, dates.first, dates.last, zone=dates.zone, windows=table, canteens=ids
            )
    finally:
        db.close()
    head: dict[str, Any] = {
        "row": "period",
        "from": dates.first.isoformat(),
        "to": dates.last.isoformat(),
        "timezone": str(dates.zone),
        "start_ms": dates.start_ms,
        "end_ms": dates.end_ms,
        "canteen": a.canteen,
        "windows": "published" if a.data is not None else "defaults",
    }
    print_line(head)
    for c in found:
        known = directory.canteens.get(c.canteen)
        print_line({"row": "canteen", **c.as_json(None if known is None else known.name)})
        for day in c.days:
            print_line({"row": "day", **c.day_json(day)})
    return 0


def add_meals_command(sub: Any) -> None:
    """Register 'meals' on the county CLI's subparsers."""
    p = sub.add_parser(
        "meals",
        help="meals per meal window per canteen and local day of FROM..TO, for kitchen "
        "planning (JSON lines)",
        description="Meals (accepted sales no reversal names) per meal window of each "
        "canteen and local day. The windows are those the county published (--data DIR: "
        "a canteen's own settings, else the settings for all), else the terminal's "
        "defaults; a sale in no window counts as 'outside'. Prints a period line, then "
        "per canteen a 'canteen' line (its windows and totals) and a 'day' line for every "
        "day of the period. See docs/inspection.md.",
    )
    period_options(p)  # --from, --to, --timezone, --data, --database as the inspection commands
    p.add_argument("--canteen", metavar="ID", help="only this canteen")
    p.set_defaults(func=cmd_meals)


__all__ = ["add_meals_command", "cmd_meals"]
