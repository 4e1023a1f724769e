"""The county's local time: its time zone, local dates, and date ranges as time ranges.

This module owns how a county command turns what county IT types (``--from 2026-05-01
--to 2026-05-31``, the county's time zone) into what the database holds (UTC
milliseconds since the epoch), and back into a local time a finance office reads. The
zone is Asia/Shanghai unless ``--timezone`` or ``$CANTEEN_COUNTY_TIMEZONE`` names
another IANA zone; zones with daylight saving work too, because a local midnight is
found by the zone's rules, not by a fixed offset. It reads no clock and no database.

A range of local dates FROM..TO (both included) is the half-open time range from the
midnight that starts FROM to the midnight that ends TO: an entry at 23:30 on the 31st
belongs to that month, one at 00:00 on the 1st to the next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import zoneinfo
from dataclasses import dataclass

DEFAULT_TIMEZONE = "Asia/Shanghai"
TIMEZONE_ENV = "CANTEEN_COUNTY_TIMEZONE"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class LocalTimeError(ValueError):
    """A date, a range or a time zone county IT typed that cannot be used; one line."""


def county_zone(name: str | None = None) -> zoneinfo.ZoneInfo:
    """The county's time zone: ``name``, else ``$CANTEEN_COUNTY_TIMEZONE``, else
    Asia/Shanghai. An unknown name is a LocalTimeError."""
    chosen = name if name is not None else os.environ.get(TIMEZONE_ENV) or DEFAULT_TIMEZONE
    try:
        return zoneinfo.ZoneInfo(chosen)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise LocalTimeError(
            f"time zone {chosen!r}: not a known IANA zone, e.g. {DEFAULT_TIMEZONE}"
        ) from None


def parse_date(text: str, what: str = "date") -> dt.date:
    """A local calendar date written YYYY-MM-DD, or LocalTimeError naming ``what``."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise LocalTimeError(
            f"{what} {text!r}: expected a date YYYY-MM-DD, e.g. 2026-05-31"
        ) from None


def midnight_ms(day: dt.date, zone: dt.tzinfo) -> int:
    """UTC milliseconds of the local midnight that starts ``day`` in ``zone``. A day after
    9999-12-31 has no datetime: its midnight is computed in milliseconds past the last."""
    if day == dt.date.max:
        return midnight_ms(day - dt.timedelta(days=1), zone) + 86_400_000
    start = dt.datetime.combine(day, dt.time(), zone)
    return (start - _EPOCH) // dt.timedelta(milliseconds=1)


@dataclass(frozen=True)
class DateRange:
    """Local dates ``first``..``last``, both included, in ``zone``; ``start_ms`` and
    ``end_ms`` bound it in UTC milliseconds (start included, end excluded)."""

    first: dt.date
    last: dt.date
    zone: dt.tzinfo

    def __post_init__(self) -> None:
        if self.first > self.last:
            raise LocalTimeError(f"--from {self.first} is after --to {self.last}")

    @classmethod
    def parse(cls, first: str, last: str, zone: dt.tzinfo) -> DateRange:
        """From the text of --from and --to."""
        return cls(parse_date(first, "--from"), parse_date(last, "--to"), zone)

    @property
    def start_ms(self) -> int:
        return midnight_ms(self.first, self.zone)

    @property
    def end_ms(self) -> int:
        if self.last == dt.date.max:
            return midnight_ms(self.last, self.zone) + 86_400_000
        return midnight_ms(self.last + dt.timedelta(days=1), self.zone)

    def contains_ms(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms < self.end_ms


def local_datetime(at_ms: int, zone: dt.tzinfo) -> dt.datetime | None:
    """The local time of ``at_ms`` in ``zone``, or None outside years 1..9999 (a terminal
    may sign any 64-bit time; such a time has no calendar date to show)."""
    try:
        return (_EPOCH + dt.timedelta(milliseconds=at_ms)).astimezone(zone)
    except (OverflowError, ValueError):
        return None


def local_text(at_ms: int | None, zone: dt.tzinfo) -> str:
    """``YYYY-MM-DD HH:MM:SS`` local time of ``at_ms``; empty for None or a time outside
    the calendar."""
    if at_ms is None:
        return ""
    when = local_datetime(int(at_ms), zone)
    return "" if when is None else when.strftime("%Y-%m-%d %H:%M:%S")


def local_date(at_ms: int, zone: dt.tzinfo) -> dt.date | None:
    """The local calendar date of ``at_ms``, or None outside the calendar."""
    when = local_datetime(at_ms, zone)
    return None if when is None else when.date()


def add_timezone_option(p: argparse.ArgumentParser) -> None:
    """--timezone TZ, as every county command that takes local dates names it."""
    p.add_argument(
        "--timezone",
        metavar="TZ",
        help=f"the county's time zone, an IANA name (default: ${TIMEZONE_ENV} if set, "
        f"else {DEFAULT_TIMEZONE})",
    )


__all__ = [
    "DEFAULT_TIMEZONE",
    "TIMEZONE_ENV",
    "DateRange",
    "LocalTimeError",
    "add_timezone_option",
    "county_zone",
    "local_date",
    "local_datetime",
    "local_text",
    "midnight_ms",
    "parse_date",
]
