"""canteen-county db: the county database's own commands (upgrade, status, copy, verify).

This module only parses arguments, calls county/db (migrations.py, copy.py) and prints
the result: one line for people, or a JSON document where scripts read it (status).
Each command turns the database's errors into one line on standard error with exit
status 2 by itself, like county/updates_cli.py. A URL is only ever shown with its
password masked.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from sqlalchemy import func, select

from county import rollups
from county.command import (
    DATABASE_ENV,
    CommandError,
    add_data,
    add_database,
    one_line_errors,
    print_json,
    store_url,
)
from county.db import Database, DatabaseError, migrations
from county.db.copy import BATCH_ROWS, copy_county, verify_chains
from county.db.schema import multi_days, sales_days, sales_slots, visits
from county.localtime import LocalTimeError, add_timezone_option, county_zone

_one_line_errors = one_line_errors(DatabaseError, CommandError, LocalTimeError)


def _open(url: str, must_exist: bool) -> Database:
    db = Database(url)
    path = db.sqlite_path
    if must_exist and path is not None and not path.is_file():
        db.close()
        raise CommandError(f"no county database at {path}")
    return db


@_one_line_errors
def cmd_upgrade(a: argparse.Namespace) -> int:
    db = _open(store_url(a), must_exist=False)
    try:
        before, after = migrations.upgrade(db)
    finally:
        db.close()
    if before == after:
        print(f"the county database at {db.url} is at revision {after}, this version's head")
    else:
        print(
            f"the county database at {db.url} is upgraded: revision {before or 'none'} to {after}"
        )
    return 0


@_one_line_errors
def cmd_status(a: argparse.Namespace) -> int:
    db = _open(store_url(a), must_exist=True)
    try:
        found = migrations.status(db)
    finally:
        db.close()
    print_json(
        {
            "backend": found.backend,
            "url": found.url,
            "current": found.current,
            "head": found.head,
            "at_head": found.at_head,
        }
    )
    return 0 if found.at_head else 1


@_one_line_errors
def cmd_copy(a: argparse.Namespace) -> int:
    if a.batch < 1:
        raise CommandError("--batch must be at least 1")
    # The target's URL (the PostgreSQL one, with its password) comes from the environment
    # unless --to names it: a copy of a city's county runs for many minutes, and every
    # local user sees a command line in ps for as long as it runs.
    target_url = a.target or os.environ.get(DATABASE_ENV)
    if not target_url:
        raise CommandError(f"name the new database: --to URL, or ${DATABASE_ENV}")
    source = _open(a.source, must_exist=True)
    try:
        target = _open(target_url, must_exist=False)
        try:
            result = copy_county(source, target, a.batch)
        finally:
            target.close()
    finally:
        source.close()
    print(
        f"copied {result.total} rows of {len(result.rows)} tables from {source.url} to "
        f"{target.url}; verified: every table's row count, and {result.chains.entries} "
        f"entries of {result.chains.terminals} terminals re-hashed and linked"
    )
    return 0


@_one_line_errors
def cmd_verify(a: argparse.Namespace) -> int:
    db = _open(store_url(a), must_exist=True)
    try:
        check = verify_chains(db)
    finally:
        db.close()
    print(
        f"{db.url}: {check.entries} entries of {check.terminals} terminals re-hashed and "
        "linked, every terminal's last hash its last entry's"
    )
    return 0


@_one_line_errors
def cmd_rollups(a: argparse.Namespace) -> int:
    zone = county_zone(a.timezone).key
    db = _open(store_url(a), must_exist=True)
    try:
        migrations.prepare(db)
        with db.write() as conn:
            rollups.rebuild(conn, zone)
            counts = {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (visits, sales_slots, sales_days, multi_days)
            }
            kept_zone = rollups.zone_name(conn)
    finally:
        db.close()
    print(
        f"{db.url}: the summaries made again from the entries: {counts['visits']} visiting "
        f"sales, {counts['sales_slots']} quarter-hour rows, {counts['sales_days']} day rows, "
        f"{counts['multi_days']} multi-canteen days ({kept_zone})"
    )
    return 0


def add_db_commands(subparsers: Any) -> None:
    """Add 'db upgrade|status|copy|verify' to canteen-county."""
    p = subparsers.add_parser(
        "db",
        help="the county database: migrations, status, copy to another database, verify",
    )
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = dsub.add_parser(
        "upgrade",
        help="apply the migrations this version needs (each in its own transaction)",
        description="Bring the county database to this version's schema. Safe to run again, "
        "also after it was stopped half-way. On PostgreSQL stop the servers first; a SQLite "
        "county is upgraded by every command that opens it anyway.",
    )
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_upgrade)
    p = dsub.add_parser(
        "status",
        help="the database's revision and this version's (JSON; exit 1 when behind)",
    )
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_status)
    p = dsub.add_parser(
        "copy",
        help="copy a county into a new database (SQLite to PostgreSQL), then verify it",
        description="Copy every table of the county at --from into the empty database at "
        "--to, which 'db upgrade' has brought to this version; in one transaction, in "
        "batches. Then re-hash every terminal's chain in the copy and compare every table's "
        "row count. Stop the county's servers first.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="the county now")
    p.add_argument(
        "--to",
        dest="target",
        metavar="URL",
        help=f"the new database (default: ${DATABASE_ENV}, which keeps its password off "
        "the command line)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=BATCH_ROWS,
        metavar="N",
        help=f"rows read and written at a time (default {BATCH_ROWS})",
    )
    p.set_defaults(func=cmd_copy)
    p = dsub.add_parser(
        "rollups",
        help="make the console's summaries again from the entries",
        description="Empty and fill again, in one transaction, the summaries the intake "
        "keeps beside the entries for the console's year views (visiting sales, meals per "
        "quarter hour, cadres at several canteens on one local day; county/rollups.py). "
        "The migration that added them and a generated history run this already; run it "
        "after changing the county's time zone. The servers may keep running.",
    )
    add_data(p, required=False)
    add_database(p)
    add_timezone_option(p)
    p.set_defaults(func=cmd_rollups)
    p = dsub.add_parser(
        "verify",
        help="re-hash every terminal's chain in the database",
        description="Re-hash every stored entry, check each links to the one before and each "
        "terminal's last hash; exit 2 naming the first terminal and entry that differs.",
    )
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_verify)
