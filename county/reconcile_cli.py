"""canteen-county cadres, reconcile and allowances: county finance's money commands.

This module only parses arguments, reads the files named, calls county/cadres.py and
county/reconcile.py inside one database transaction, and writes the result through
county/exports.py. A file with bad rows (a cadres file, a bank statement) is refused
with one line per row on standard error and exit status 2, and nothing is imported or
reconciled; every other error is one line with exit status 2 too. ``reconcile`` exits
0 when the day balances and 1 when it found differences, so a script can tell the
three apart (docs/reconciliation.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from county.cadres import CADRE_COLUMNS, CadresError, load_cadres, parse_cadres_csv, replace_cadres
from county.command import (
    PROG,
    Command,
    CommandError,
    add_data,
    add_database,
    every_line,
    now_ms,
    one_line_errors,
    open_county,
    read_text,
)
from county.db import DatabaseError
from county.db.schema import agencies as agencies_table
from county.exports import FORMATS, Column, ExportError, check_output, write_rows, write_tables
from county.localtime import LocalTimeError, add_timezone_option, county_zone, parse_date
from county.reconcile import (
    DIFFERENCE_KINDS,
    Reconciliation,
    StatementError,
    allowance_table,
    allowances,
    parse_statement,
    reconcile,
    reconciliation_tables,
)

_one_line_errors = one_line_errors(DatabaseError, CommandError, ExportError, LocalTimeError)
# Exit status of reconcile when the day does not balance (0 balances, 2 bad input).
DIFFERENCES_FOUND = 1


def _every_line(what: str) -> Callable[[Command], Command]:
    return every_line(what, CadresError, StatementError)


# The largest statement or cadres file read. A day's statement of a county's cadre
# accounts, or its roster, is a few megabytes; a larger file is refused before it is read
# (a 22 MB statement took 49 s and 450 MB of memory before the database was opened).
MAX_FILE_BYTES = 64 * 1024 * 1024


def _read(file: str, encoding: str) -> str:
    return read_text(file, encoding, MAX_FILE_BYTES, "statement or cadres file")


# ---- cadres ----


@_one_line_errors
@_every_line("imported")
def cmd_cadres_import(a: argparse.Namespace) -> int:
    text = _read(a.file, a.encoding)
    db = open_county(a)
    try:
        with db.write() as conn:
            units = list(conn.execute(select(agencies_table.c.code)).scalars())
            cadres = parse_cadres_csv(text, a.file, units)
            stored = replace_cadres(conn, cadres, now_ms())
    finally:
        db.close()
    accounts = sum(1 for c in cadres if c.account is not None)
    allowed = sum(1 for c in cadres if c.monthly_allowance_fen is not None)
    checked = (
        f"; units checked against {len(units)} agencies"
        if units
        else ("; no agency directory is imported, so units were not checked")
    )
    print(
        f"{stored} cadres imported ({accounts} with a bank account, {allowed} with a monthly "
        f"allowance); they replace the cadres imported before{checked}"
    )
    return 0


_LIST_COLUMNS = (
    Column("cadre", "干部", width=18),
    Column("unit", "单位"),
    Column("name", "姓名"),
    Column("account", "账号", width=20),
    Column("monthly_allowance_fen", "月度额度", money=True),
)


@_one_line_errors
def cmd_cadres_list(a: argparse.Namespace) -> int:
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            cadres = list(load_cadres(conn).values())
    finally:
        db.close()
    if a.format == "table":
        for c in cadres:
            account = c.account or "-"
            allowance = (
                "-"
                if c.monthly_allowance_fen is None
                else f"{c.monthly_allowance_fen // 100}.{c.monthly_allowance_fen % 100:02d} yuan"
            )
            print(f"{c.cadre}\t{c.unit}\t{c.name}\taccount {account}\tallowance {allowance}")
        if not cadres:
            print(f"no cadres: import them with '{PROG} cadres import FILE.csv'")
        return 0
    if a.format == "csv":
        # The cadres CSV itself, fen as integers: it imports again as it is.
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CADRE_COLUMNS)
        for c in cadres:
            writer.writerow(
                [
                    c.cadre,
                    c.unit,
                    c.name,
                    c.account or "",
                    "" if c.monthly_allowance_fen is None else c.monthly_allowance_fen,
                ]
            )
        return 0
    rows = (
        {
            "cadre": c.cadre,
            "unit": c.unit,
            "name": c.name,
            "account": c.account,
            "monthly_allowance_fen": c.monthly_allowance_fen,
        }
        for c in cadres
    )
    write_rows(rows, _LIST_COLUMNS, "json", None)
    return 0


# ---- reconcile ----


def _summary_line(result: Reconciliation) -> str:
    s = result.summary
    head = (
        f"{s['date']}: {s['ledger_movements']} ledger movements, {s['statement_rows']} "
        f"statement rows ({s['matched_by_reference']} matched by reference, "
        f"{s['matched_by_account']} by account, amount and time)"
    )
    if result.balanced:
        return head + ": balanced"
    kinds = ", ".join(f"{kind} {s[kind]}" for kind in DIFFERENCE_KINDS if s[kind])
    n = s["differences"]
    return f"{head}: {n} difference{'' if n == 1 else 's'} ({kinds})"


@_one_line_errors
@_every_line("reconciled")
def cmd_reconcile(a: argparse.Namespace) -> int:
    zone = county_zone(a.timezone)
    day = parse_date(a.date, "--date")
    check_output(a.format, a.out)
    rows = parse_statement(_read(a.statement, a.encoding), a.statement, day, zone)
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            result = reconcile(conn, rows, day, zone)
    finally:
        db.close()
    tables = reconciliation_tables(result)
    # CSV holds one table: the differences. The summary goes to the terminal.
    write_tables(tables[:1] if a.format == "csv" else tables, a.format, a.out)
    # With the table on standard output, the summary goes to standard error.
    to_stderr = a.out is None or a.out == "-"
    print(_summary_line(result), file=sys.stderr if to_stderr else sys.stdout)
    if not result.summary["cadres_on_file"] and result.summary["statement_rows"]:
        print(
            f"{PROG}: no cadres are imported, so no account is known: run "
            f"'{PROG} cadres import FILE.csv' first (docs/reconciliation.md)",
            file=sys.stderr,
        )
    return 0 if result.balanced else DIFFERENCES_FOUND


# ---- allowances ----


@_one_line_errors
def cmd_allowances(a: argparse.Namespace) -> int:
    zone = county_zone(a.timezone)
    check_output(a.format, a.out)
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            rows = allowances(conn, a.month, zone, over_only=a.over)
    finally:
        db.close()
    write_tables([allowance_table(rows)], a.format, a.out)
    if a.out is not None and a.out != "-":
        over = sum(1 for r in rows if r["over"])
        print(f"{a.month}: {len(rows)} cadres, {over} over their monthly allowance")
    return 0


def add_reconcile_commands(sub: Any) -> None:
    """Register 'cadres', 'reconcile' and 'allowances' on the county CLI's subparsers."""
    p = sub.add_parser(
        "cadres",
        help="cadres with their bank account and monthly allowance (import, list)",
    )
    csub = p.add_subparsers(dest="cadres_command", required=True, metavar="ACTION")
    p = csub.add_parser(
        "import",
        help="replace the cadres with a cadres CSV or a roster CSV with account columns",
        description="Import the cadres of FILE: a CSV with the header "
        "cadre,unit,name,account,monthly_allowance_fen, or the card roster CSV with the "
        "columns account,monthly_allowance_fen after its six. Every row is checked first; "
        "one bad row and nothing is imported. The file replaces the cadres imported before "
        "(docs/reconciliation.md).",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("file", metavar="FILE.csv", help="the cadres or roster CSV")
    p.add_argument(
        "--encoding", default="utf-8-sig", help="the file's text encoding (default UTF-8)"
    )
    p.set_defaults(func=cmd_cadres_import)
    p = csub.add_parser("list", help="the imported cadres")
    add_data(p, required=False)
    add_database(p)
    p.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="lines for people (default), JSON lines, or the cadres CSV",
    )
    p.set_defaults(func=cmd_cadres_list)

    p = sub.add_parser(
        "reconcile",
        help="compare a day's bank statement of cadre accounts with the ledger "
        "(exit 0 balanced, 1 differences, 2 bad input)",
        description="Match the accepted sales and reversals of local DATE with the rows of "
        "the bank's statement of that day (by reference, then by account, amount and "
        "nearest time) and list every difference: in_ledger_not_at_bank, "
        "at_bank_not_in_ledger, amount_differs, reversal_not_refunded, account_unknown, "
        "account_differs. Exit status 0 when the day balances, 1 when differences were "
        "found, 2 on bad input (nothing reconciled). See docs/reconciliation.md.",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--statement", required=True, metavar="FILE", help="the bank statement CSV")
    p.add_argument("--date", required=True, metavar="DATE", help="the local day, YYYY-MM-DD")
    p.add_argument(
        "--encoding", default="utf-8", help="the statement's text encoding (default UTF-8)"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json lines (differences, per cadre, summary), csv (the differences) or xlsx "
        "(one sheet each)",
    )
    p.add_argument("--out", metavar="FILE", help="write to FILE (default standard output)")
    add_timezone_option(p)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "allowances",
        help="per cadre and month: meals and net spending against the monthly allowance",
        description="For each cadre: the local month's meals (accepted sales minus "
        "reversals), gross, reversed and net fen, the monthly allowance of 'cadres import', "
        "what remains and what is over. --over lists only cadres over their allowance.",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--month", required=True, metavar="YYYY-MM", help="the local month")
    p.add_argument("--over", action="store_true", help="only cadres over their allowance")
    p.add_argument("--format", choices=FORMATS, default="json", help="json (default), csv, xlsx")
    p.add_argument("--out", metavar="FILE", help="write to FILE (default standard output)")
    add_timezone_option(p)
    p.set_defaults(func=cmd_allowances)


__all__ = ["DIFFERENCES_FOUND", "add_reconcile_commands"]
