"""canteen-county agencies and canteens: county IT's commands for the agency directory.

This module only parses arguments, reads the CSV file, calls protocol/agencies.py (which
checks a file whole), county/directory.py (which stores it) and county/updates.py (which
signs the directory for the terminals), and prints the result. A file with bad rows is
refused with one line per row on standard error and exit status 2, and nothing is
stored; so is an import the stored directory cannot take (an agency a canteen still
runs). An import is stored in one write transaction, then published: the terminals
decide price tiers offline from the directory they installed (docs/agencies.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from county.command import (
    PROG,
    CommandError,
    add_data,
    add_database,
    every_line,
    given_database,
    now_ms,
    now_s,
    one_line_errors,
    open_county,
    print_json,
    read_text,
)
from county.db import DatabaseError
from county.directory import DirectoryRefused, load_directory, replace_agencies, replace_canteens
from county.updates import CountyRepository, RepoPaths, UpdatesError
from protocol.agencies import (
    CANTEEN_COLUMNS,
    LEVEL_NAMES_ZH,
    LEVELS,
    Agency,
    Canteen,
    Directory,
    DirectoryError,
    agencies_csv,
    parse_agencies_csv,
    parse_canteens_csv,
)
from protocol.layout import DIRECTORY_TARGET

_one_line_errors = one_line_errors(DatabaseError, CommandError, UpdatesError)
FORMATS = ("table", "json", "csv")


class NotPublished(Exception):
    """The directory is stored but could not be signed for the terminals."""


_every_line = every_line("imported", DirectoryError, DirectoryRefused)


# The largest agencies or canteens file read: MAX_ROWS (100,000) rows of the longest codes,
# names and accounts allowed stay below it (under 800 bytes a row). A larger file is
# refused before it is read (a 150 MB file took 20 s and a gigabyte of memory only to be
# refused past its 100,000th row).
MAX_FILE_BYTES = 100 * 1024 * 1024


def _read(file: str, encoding: str) -> str:
    return read_text(file, encoding, MAX_FILE_BYTES, "directory file")


def _stored(a: argparse.Namespace) -> Directory:
    db = open_county(a)
    try:
        with db.read() as conn:
            return load_directory(conn)
    finally:
        db.close()


def _publish(a: argparse.Namespace, directory: Directory) -> str:
    """Sign ``directory`` for the terminals when the update repository is there; the line
    that says what happened."""
    data = getattr(a, "data", None)
    if data is None or not (RepoPaths(Path(data)).metadata / "timestamp.json").is_file():
        where = f" --data {data}" if data else " --data DIR"
        return (
            "stored, not published: there is no update repository"
            + (f" in {data}" if data else " (no --data)")
            + f"; the terminals get the directory after '{PROG} updates init{where}' and "
            f"'{PROG} agencies publish{where}'"
        )
    try:
        with CountyRepository(data, given_database(a)) as repo:
            repo.publish_directory(directory, now_s())
            info = repo.target_info(DIRECTORY_TARGET)
    except UpdatesError as exc:
        # Stored all the same: the import is not undone because signing failed.
        why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise NotPublished(
            f"stored, NOT published: {why}; run '{PROG} agencies publish --data {data}' "
            "once that is fixed"
        ) from None
    version = "?" if info is None else info.custom.get("version", "?")
    return f"published as directory version {version}"


def _report(a: argparse.Namespace, directory: Directory) -> int:
    """Publish what was stored and print the summary line; exit status 1 when the
    directory is stored but signing it failed (the line says how to publish it later)."""
    try:
        print(_summary(directory, _publish(a, directory)))
    except NotPublished as exc:
        print(_summary(directory, str(exc)))
        return 1
    return 0


def _by_level(directory: Directory) -> str:
    counts = {level: 0 for level in LEVELS}
    for agency in directory.agencies.values():
        counts[agency.level] += 1
    return ", ".join(f"{n} {level}" for level, n in counts.items() if n)


def _summary(directory: Directory, published: str) -> str:
    agencies = len(directory.agencies)
    line = f"{agencies} agencies"
    if agencies:
        line += f" ({_by_level(directory)})"
    return f"{line}, {len(directory.canteens)} canteens; {published}"


# ---- agencies ----


@_one_line_errors
@_every_line
def cmd_agencies_import(a: argparse.Namespace) -> int:
    text = _read(a.file, a.encoding)
    parsed = parse_agencies_csv(text, a.file)
    if not parsed.agencies:
        raise CommandError(f"{a.file}: no agencies, only the header; nothing was imported")
    db = open_county(a)
    try:
        with db.write() as conn:
            stored = replace_agencies(conn, parsed, now_ms())
    finally:
        db.close()
    return _report(a, stored)


@_one_line_errors
def cmd_agencies_publish(a: argparse.Namespace) -> int:
    stored = _stored(a)
    if not stored.agencies:
        raise CommandError(
            f"the county database holds no agencies: run '{PROG} agencies import FILE.csv' first"
        )
    if not (RepoPaths(Path(a.data)).metadata / "timestamp.json").is_file():
        raise CommandError(
            f"{a.data}: no update repository here; run '{PROG} updates init --data {a.data}' first"
        )
    return _report(a, stored)


def _tree_order(directory: Directory) -> list[Agency]:
    """Agencies parents first, each followed by its children (by code): reads as a tree."""
    children: dict[str | None, list[Agency]] = {}
    for agency in directory.agencies.values():
        parent = agency.parent if agency.parent in directory.agencies else None
        children.setdefault(parent, []).append(agency)
    out: list[Agency] = []
    stack = sorted(children.get(None, []), key=lambda x: x.code, reverse=True)
    while stack:
        agency = stack.pop()
        out.append(agency)
        stack.extend(sorted(children.get(agency.code, []), key=lambda x: x.code, reverse=True))
    return out


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: a Chinese character takes two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


@_one_line_errors
def cmd_agencies_list(a: argparse.Namespace) -> int:
    directory = _stored(a)
    agencies = [x for x in _tree_order(directory) if a.level is None or x.level == a.level]
    if a.format == "csv":
        sys.stdout.write(agencies_csv(Directory(agencies)))
        return 0
    if a.format == "json":
        print_json(
            [
                {
                    **x.as_json(),
                    "level_name": LEVEL_NAMES_ZH[x.level],
                    "parent_name": directory.name_of(x.parent),
                }
                for x in agencies
            ]
        )
        return 0
    rows = [
        [
            x.code,
            x.name,
            f"{x.level} {LEVEL_NAMES_ZH[x.level]}",
            f"{x.parent} {directory.name_of(x.parent)}" if x.parent else "-",
            x.finance_account or "-",
        ]
        for x in agencies
    ]
    _table(("code", "name", "level", "parent", "finance account"), rows)
    return 0


# ---- canteens ----


@_one_line_errors
@_every_line
def cmd_canteens_import(a: argparse.Namespace) -> int:
    text = _read(a.file, a.encoding)
    before = _stored(a)
    if not before.agencies:
        raise CommandError(
            f"the county database holds no agencies to run canteens: run '{PROG} agencies "
            "import FILE.csv' first"
        )
    canteens = parse_canteens_csv(text, before, a.file)
    if not canteens:
        raise CommandError(f"{a.file}: no canteens, only the header; nothing was imported")
    db = open_county(a)
    try:
        with db.write() as conn:
            stored = replace_canteens(conn, canteens, now_ms())
    finally:
        db.close()
    return _report(a, stored)


def _canteens_csv(canteens: Sequence[Canteen]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CANTEEN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(c.as_json() for c in canteens)
    return out.getvalue()


@_one_line_errors
def cmd_canteens_list(a: argparse.Namespace) -> int:
    directory = _stored(a)
    canteens = list(directory.canteens.values())
    if a.format == "csv":
        sys.stdout.write(_canteens_csv(canteens))
        return 0

    def operator(c: Canteen) -> Agency:
        found = directory.agency(c.operator)
        assert found is not None  # an import never stores a canteen without its operator
        return found

    if a.format == "json":
        print_json(
            [
                {
                    **c.as_json(),
                    "operator_name": operator(c).name,
                    "operator_level": operator(c).level,
                }
                for c in canteens
            ]
        )
        return 0
    rows = [
        [c.canteen, c.name, f"{c.operator} {operator(c).name}", operator(c).level] for c in canteens
    ]
    _table(("canteen", "name", "operator", "operator level"), rows)
    return 0


# ---- the parser ----


def _file_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("file", metavar="FILE.csv", help=what)
    p.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help="the file's text encoding (default utf-8; Excel's plain 'CSV' in Chinese "
        "Windows is gb18030)",
    )


def _list_options(p: argparse.ArgumentParser) -> None:
    add_data(p, required=False)
    add_database(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table for people (default), json, or csv as the import reads it",
    )


def add_directory_commands(sub: Any) -> None:
    """Add 'agencies import|list|publish' and 'canteens import|list' to canteen-county."""
    p = sub.add_parser("agencies", help="the agency directory: import, list, publish")
    asub = p.add_subparsers(dest="agencies_command", required=True, metavar="ACTION")
    p = asub.add_parser(
        "import",
        help="replace the agencies with a CSV file, then publish the directory",
        description="Check FILE.csv (header code,name,level,parent,finance_account) whole: "
        "every bad row is reported with its line and nothing is imported. Then replace the "
        "stored agencies in one transaction (refused, one line per canteen, if a canteen's "
        "operator would go) and publish the directory to the terminals when DIR/updates "
        "exists. See docs/agencies.md.",
    )
    _file_options(p, "the agencies (code,name,level,parent,finance_account)")
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_agencies_import)
    p = asub.add_parser(
        "list",
        help="the stored agencies with level, parent and finance account",
        description="Agencies parents first, each followed by its children.",
    )
    _list_options(p)
    p.add_argument("--level", choices=LEVELS, help="only agencies at this level")
    p.set_defaults(func=cmd_agencies_list)
    p = asub.add_parser(
        "publish",
        help="sign the stored directory (agencies and canteens) for the terminals again",
        description="Publish what the county database holds as the next directory version, "
        "for instance after 'updates init' on a county that imported its agencies before.",
    )
    add_data(p)
    add_database(p)
    p.set_defaults(func=cmd_agencies_publish)

    p = sub.add_parser("canteens", help="which agency runs each canteen: import, list")
    csub = p.add_subparsers(dest="canteens_command", required=True, metavar="ACTION")
    p = csub.add_parser(
        "import",
        help="replace the canteens with a CSV file, then publish the directory",
        description="Check FILE.csv (header canteen,name,operator; each operator an agency "
        "of the stored directory) whole: every bad row is reported with its line and "
        "nothing is imported. Then replace the stored canteens in one transaction and "
        "publish the directory (which carries the canteens) when DIR/updates exists.",
    )
    _file_options(p, "the canteens (canteen,name,operator)")
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_canteens_import)
    p = csub.add_parser("list", help="the stored canteens with their operator agency")
    _list_options(p)
    p.set_defaults(func=cmd_canteens_list)
