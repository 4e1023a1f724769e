"""canteen-county batches | spending | anomalies: the discipline-inspection figures as JSON lines.

This module only parses the commands' arguments, checks them before the database is
opened, and prints what county/inspection.py finds: one JSON object per line, the first
a "period" line saying what was asked (docs/inspection.md lists every row). Bad input (a
date, --from after --to, a time zone, an option out of range, a holidays file) is one
line on standard error with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from county import inspection
from county.command import (
    CommandError,
    add_data,
    add_database,
    one_line_errors,
    open_county,
    whole_number,
)
from county.db import DatabaseError
from county.directory import load_directory
from county.errors import StoreError
from county.inspection import InspectionError
from county.localtime import DateRange, LocalTimeError, add_timezone_option, county_zone

KINDS = ("repeat_batches", "multi_canteen_day", "off_hours", "holiday")

# The one-line errors of a command over a period of the county (shared by meals_cli.py).
period_errors = one_line_errors(
    CommandError, DatabaseError, StoreError, LocalTimeError, InspectionError
)


def print_line(doc: dict[str, Any]) -> None:
    # As county/exports.py: U+2028/2029/0085 escaped so a line never splits in two.
    text = json.dumps(doc, ensure_ascii=False)
    for ch in ("\u2028", "\u2029", "\x85"):
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    print(text)


def period_of(a: argparse.Namespace) -> DateRange:
    for name in ("canteen", "unit"):
        value = getattr(a, name, None)
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise CommandError(f"--{name} {value!r}: not UTF-8 text") from None
    dates = DateRange.parse(a.date_from, a.date_to, county_zone(a.timezone))
    inspection.check_dates(dates.first, dates.last)
    return dates


def _head(a: argparse.Namespace, dates: DateRange, **more: Any) -> dict[str, Any]:
    prev_start = inspection.year_before_ms(dates.start_ms, dates.zone)
    prev_end = inspection.year_before_ms(dates.end_ms, dates.zone)
    return {
        "row": "period",
        "from": dates.first.isoformat(),
        "to": dates.last.isoformat(),
        "timezone": str(dates.zone),
        "start_ms": dates.start_ms,
        "end_ms": dates.end_ms,
        "previous_start_ms": prev_start,
        "previous_end_ms": prev_end,
        **more,
    }


@period_errors
def cmd_batches(a: argparse.Namespace) -> int:
    dates = period_of(a)
    inspection.check_batch_options(a.min_people, a.window_min)
    zone = dates.zone
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            directory = load_directory(conn)
            found = inspection.both_years(
                conn,
                dates.start_ms,
                dates.end_ms,
                zone=zone,
                min_people=a.min_people,
                window_min=a.window_min,
                canteen=a.canteen,
                unit=a.unit,
            )
            summaries = [
                inspection.batch_summary(
                    conn,
                    dates.start_ms,
                    dates.end_ms,
                    by=by,
                    zone=zone,
                    directory=directory,
                    found=found,
                )
                for by in inspection.BY_BATCH
            ]
    finally:
        db.close()
    print_line(
        _head(
            a,
            dates,
            canteen=a.canteen,
            unit=a.unit,
            min_people=a.min_people,
            window_min=a.window_min,
        )
    )
    total = summaries[0].total
    for row, listed in (("batch", total.batches), ("previous_batch", total.previous)):
        for b in listed:
            print_line({"row": row, **b.as_json(zone)})
    for summary in summaries:
        for fig in summary.rows:
            print_line({"row": f"by_{summary.by}", **fig.as_json()})
    print_line({"row": "total", **total.as_json()})
    return 0


@period_errors
def cmd_spending(a: argparse.Namespace) -> int:
    dates = period_of(a)
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            directory = load_directory(conn)
            found = inspection.spending(
                conn,
                dates.start_ms,
                dates.end_ms,
                by=a.by,
                zone=dates.zone,
                directory=directory,
                canteen=a.canteen,
            )
            detail: list[tuple[str | None, list[inspection.Key]]] = []
            if a.detail:
                for fig in found.groups:
                    keys = inspection.spending_entries(
                        conn,
                        dates.start_ms,
                        dates.end_ms,
                        canteen=a.canteen,
                        **inspection.group_filter(directory, a.by, fig.group),
                    )
                    detail.append((fig.group, keys))
    finally:
        db.close()
    print_line(_head(a, dates, by=a.by, canteen=a.canteen))
    for fig in found.months:
        print_line({"row": "month", **fig.as_json()})
    for fig in found.groups:
        print_line({"row": "group", **fig.as_json()})
    for fig in found.month_totals:
        print_line({"row": "month_total", **fig.as_json()})
    print_line({"row": "total", **found.total.as_json()})
    for group, keys in detail:
        print_line({"row": "entries", "group": group, "entries": [[t, s] for t, s in keys]})
    return 0


def _holidays(a: argparse.Namespace, asked: bool) -> frozenset[Any] | None:
    """--holidays FILE, else holidays.txt in --data DIR; None when neither exists (an
    error when the holiday kind was asked for by name)."""
    if a.holidays is not None:
        return inspection.read_holidays(a.holidays)
    if a.data is not None:
        file = Path(a.data) / inspection.HOLIDAYS_FILE
        if file.is_file():
            return inspection.read_holidays(file)
    if asked:
        raise CommandError(
            f"--kind holiday needs a holidays list: --holidays FILE or "
            f"{inspection.HOLIDAYS_FILE} in --data DIR (one date YYYY-MM-DD a line)"
        )
    return None


@period_errors
def cmd_anomalies(a: argparse.Namespace) -> int:
    dates = period_of(a)
    kinds = list(dict.fromkeys(a.kind or KINDS))
    inspection.check_batch_options(a.min_people, a.window_min)
    holidays = _holidays(a, "holiday" in (a.kind or ())) if "holiday" in kinds else None
    zone = dates.zone
    lo, hi = dates.start_ms, dates.end_ms
    db = open_county(a, must_exist=True)
    lines: list[dict[str, Any]] = []
    try:
        with db.read() as conn:
            if "repeat_batches" in kinds:
                for rep in inspection.find_repeat_batches(
                    conn,
                    lo,
                    hi,
                    min_batches=a.repeat_batches,
                    days=a.repeat_days,
                    min_people=a.min_people,
                    window_min=a.window_min,
                ):
                    lines.append({"row": rep.as_json(zone)["kind"], **rep.as_json(zone)})
            if "multi_canteen_day" in kinds:
                for f in inspection.find_multi_canteen_days(conn, lo, hi, zone=zone):
                    lines.append({"row": f.kind, **f.as_json(zone)})
            if "off_hours" in kinds:
                if a.data is not None:
                    ids = inspection.canteens_seen(conn, lo, hi, zone)
                    windows = inspection.published_windows(a.data, ids)
                else:
                    windows = inspection.default_windows()
                for f in inspection.find_off_hours(conn, lo, hi, zone=zone, windows=windows):
                    lines.append({"row": f.kind, **f.as_json(zone)})
            if "holiday" in kinds and holidays is not None:
                found = inspection.find_holiday_sales(conn, lo, hi, zone=zone, holidays=holidays)
                for f in found:
                    lines.append({"row": f.kind, **f.as_json(zone)})
    finally:
        db.close()
    if "holiday" in kinds and holidays is None:
        print(
            f"canteen-county: warning: no holidays list ({inspection.HOLIDAYS_FILE} in --data "
            "DIR or --holidays FILE): holiday sales not looked for",
            file=sys.stderr,
        )
        kinds.remove("holiday")
    print_line(_head(a, dates, kinds=kinds))
    for line in lines:
        print_line(line)
    return 0


def period_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="date_from", required=True, metavar="DATE", help="YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", required=True, metavar="DATE", help="YYYY-MM-DD")
    add_timezone_option(p)
    add_data(p, required=False)
    add_database(p)


def _batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-people",
        type=whole_number(2, 10_000),
        default=inspection.DEFAULT_MIN_PEOPLE,
        metavar="N",
        help=f"distinct cadres that make a batch (default {inspection.DEFAULT_MIN_PEOPLE})",
    )
    p.add_argument(
        "--window-min",
        type=whole_number(1, 1440),
        default=inspection.DEFAULT_WINDOW_MIN,
        metavar="M",
        help=f"minutes from a batch's first sale (default {inspection.DEFAULT_WINDOW_MIN})",
    )


def add_inspection_commands(sub: Any) -> None:
    """Register 'batches', 'spending' and 'anomalies' on the county CLI's subparsers."""
    p = sub.add_parser(
        "batches",
        help="reception batches of the local dates FROM..TO, per canteen, agency and month, "
        "beside the same period a year before (JSON lines)",
        description="Reception batches: at least N distinct cadres of one visiting agency "
        "(not the canteen's operator) with accepted sales at one canteen within M minutes "
        "of the group's first sale. Prints a period line, every batch (and every batch of "
        "the same dates a year before) with its entries, figures by canteen, by unit and "
        "by month beside the year before, and the total. See docs/inspection.md.",
    )
    period_options(p)
    p.add_argument("--canteen", metavar="ID", help="only this canteen")
    p.add_argument("--unit", metavar="AGENCY", help="only this visiting agency")
    _batch_options(p)
    p.set_defaults(func=cmd_batches)

    p = sub.add_parser(
        "spending",
        help="work-meal spending per agency or township per month, year on year (JSON lines)",
        description="Work-meal spending: accepted sales less the reversed ones, in fen, per "
        "diner's agency or township and local month, beside the same months a year before "
        "with the change in percent. See docs/inspection.md.",
    )
    period_options(p)
    p.add_argument("--by", choices=inspection.BY_SPENDING, required=True)
    p.add_argument("--canteen", metavar="ID", help="only sales at this canteen")
    p.add_argument(
        "--detail", action="store_true", help="also the entries behind each group's total"
    )
    p.set_defaults(func=cmd_spending)

    p = sub.add_parser(
        "anomalies",
        help="repeated batches, cadres at several canteens a day, off-hours and holiday "
        "sales (JSON lines)",
        description="Anomalies of the local dates FROM..TO, each with the entries behind "
        "it. Holidays come from --holidays FILE or holidays.txt in --data DIR (one date "
        "YYYY-MM-DD a line); meal windows from the settings the county published, else "
        "the terminal's defaults. See docs/inspection.md.",
    )
    period_options(p)
    p.add_argument(
        "--kind",
        action="append",
        choices=KINDS,
        help="only this kind (repeatable; default every kind)",
    )
    p.add_argument("--holidays", metavar="FILE", help="public holidays, one date a line")
    p.add_argument(
        "--repeat-batches",
        type=whole_number(2, 1000),
        default=inspection.DEFAULT_REPEAT_BATCHES,
        metavar="N",
        help="batches of one agency at one canteen that make a repeat (default "
        f"{inspection.DEFAULT_REPEAT_BATCHES})",
    )
    p.add_argument(
        "--repeat-days",
        type=whole_number(1, 366),
        default=inspection.DEFAULT_REPEAT_DAYS,
        metavar="D",
        help=f"within this many days (default {inspection.DEFAULT_REPEAT_DAYS})",
    )
    _batch_options(p)
    p.set_defaults(func=cmd_anomalies)
