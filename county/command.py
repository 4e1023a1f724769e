"""canteen-county's command plumbing, shared by county/cli.py and county/updates_cli.py.

This module owns what every county command does the same way: the program name,
turning a library error into one line on standard error with exit status 2,
running the parsed command (a broken pipe is exit 0, Ctrl+C 130), printing a
JSON document, whole-number options, the clock a command reads, and the --data and
--database options
(which database a command opens: --database URL, else $CANTEEN_COUNTY_DATABASE,
else the SQLite file in --data DIR). It holds no command of its own and never
touches the county's data.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from county.db import Database
from county.db.engine import database_url
from county.db.migrations import prepare

PROG = "canteen-county"
# The database URL when no --database is given: an environment file (systemd's
# EnvironmentFile=) keeps a password off the command line, which every local user sees.
DATABASE_ENV = "CANTEEN_COUNTY_DATABASE"

Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A usage problem found by the command itself."""


def error_line(exc: BaseException) -> int:
    """One line on standard error that says what happened; the exit status 2. A message
    of several lines (a database driver's) is joined into one."""
    line = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return 2


def one_line_errors(*errors: type[Exception]) -> Callable[[Command], Command]:
    """Make a command turn ``errors`` into one line and exit status 2 by itself, so it
    behaves the same whichever parser it was added to."""

    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def run(a: argparse.Namespace) -> int:
            try:
                return fn(a)
            except errors as exc:
                return error_line(exc)

        return run

    return wrap


def every_line(what: str, *errors: type[Exception]) -> Callable[[Command], Command]:
    """Make a command turn ``errors`` (each with ``lines``: one per bad row of a file) into
    every one of their lines on standard error, then 'nothing was WHAT', exit status 2."""

    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def run(a: argparse.Namespace) -> int:
            try:
                return fn(a)
            except errors as exc:
                for line in getattr(exc, "lines", None) or [str(exc)]:
                    print(f"{PROG}: error: {line}", file=sys.stderr)
                print(f"{PROG}: nothing was {what}", file=sys.stderr)
                return 2

        return run

    return wrap


def open_county(a: argparse.Namespace, must_exist: bool = False) -> Database:
    """The county database of the command's --database/--data, brought to this version's
    schema (SQLite) or checked (PostgreSQL); the caller closes it. With ``must_exist`` a
    SQLite county that does not exist is refused rather than answered from an empty new
    file (a report)."""
    db = Database(store_url(a))
    try:
        path = db.sqlite_path
        if must_exist and path is not None and not path.is_file():
            raise CommandError(f"no county database at {path}")
        prepare(db)
    except BaseException:
        db.close()
        raise
    return db


def read_text(file: str, encoding: str, max_bytes: int, what: str) -> str:
    """A file county IT hands a command (a CSV from Excel, a bank statement), as text.

    A file over ``max_bytes`` is refused before it is read (a 150 MB file would take
    seconds and a gigabyte only to be refused row by row); so is one not in ``encoding``,
    with a hint for Excel's files. ``what`` names the kind of file in the message."""
    try:
        size = Path(file).stat().st_size
        if size > max_bytes:
            raise CommandError(
                f"{file}: {size / 2**20:.1f} MiB, more than any {what} "
                f"({max_bytes // 2**20} MiB at most); nothing read"
            )
        return Path(file).read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise CommandError(
            f"{file}: not {encoding} text; save it from Excel as 'CSV UTF-8', or name its "
            "encoding with --encoding gb18030"
        ) from None
    except OSError as exc:
        raise CommandError(f"{file}: cannot read: {exc.strerror}") from None
    except LookupError:
        raise CommandError(f"--encoding {encoding!r}: no such text encoding") from None


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    errors: tuple[type[Exception], ...],
) -> int:
    """Parse ``argv``, run the chosen command and return its exit status."""
    args = parser.parse_args(argv)
    try:
        _storable(args)
    except CommandError as exc:
        return error_line(exc)
    try:
        return int(args.func(args))
    except errors as exc:
        return error_line(exc)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


# Options whose text goes into the county database as it is (ids, a reason).
_DATABASE_TEXT = ("canteen", "terminal", "reason")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _storable(a: argparse.Namespace) -> None:
    """Refuse, as a usage error, what no database column can take: an integer beyond
    signed 64 bits (a conflict number) and an id or reason that is not UTF-8 text
    (argv bytes Python could not decode). SQLite raised OverflowError and
    UnicodeEncodeError, PostgreSQL a DataError: each a traceback, not one line."""
    for name, value in vars(a).items():
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            raise CommandError(f"{name} {value}: beyond signed 64 bits")
        if name in _DATABASE_TEXT and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise CommandError(f"--{name} {value!r}: not UTF-8 text") from None


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``, when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def print_json(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False, indent=1))


def now_s() -> int:
    return int(time.time())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def add_data(p: argparse.ArgumentParser, required: bool = True) -> None:
    help = "the county's data directory"
    if not required:
        help += " (its database is DIR/county.sqlite unless --database names one)"
    p.add_argument("--data", required=required, metavar="DIR", help=help)


def add_database(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database",
        metavar="URL",
        help="the county database: postgresql://USER@HOST/NAME or sqlite:///PATH "
        f"(default: ${DATABASE_ENV} if set, else sqlite:///DIR/county.sqlite, DIR from --data)",
    )


def given_database(a: argparse.Namespace) -> str | None:
    """The database URL the command was given: --database, else $CANTEEN_COUNTY_DATABASE."""
    return getattr(a, "database", None) or os.environ.get(DATABASE_ENV) or None


def store_url(a: argparse.Namespace) -> str:
    """The database a command opens: --database URL, else $CANTEEN_COUNTY_DATABASE, else
    DIR/county.sqlite of --data DIR, which must exist (a county starts with 'ca init')."""
    url = given_database(a)
    data = getattr(a, "data", None)
    if url and "://" not in url:
        # Shown without what looks like a password (USER:PASSWORD@ of a mistyped URL).
        shown = re.sub(r":[^:@/]*@", ":***@", url)
        raise CommandError(
            f"--database {shown!r} is not a URL: expected postgresql://USER@HOST/NAME "
            "or sqlite:///PATH"
        )
    if not url:
        if data is None:
            raise CommandError("name the county database: --database URL or --data DIR")
        if not Path(data).is_dir():
            raise CommandError(f"{data}: no such county data directory; run '{PROG} ca init' first")
    return database_url(url, data)
