"""The county's cadres: who each one is, the bank account meals are debited from, and
the monthly meal allowance.

This module owns the ``cadres`` table (migration 0003): reading a cadres file county IT
imports, checking it whole, and swapping the table for it inside the caller's write
transaction, so that either every row of the file is stored or none is. Bank
reconciliation (county/reconcile.py) finds a cadre by the account on a bank statement
here, and the allowance report compares a month's spending with the allowance here.

Two files are accepted (docs/reconciliation.md, "Cadres"):

- a cadres CSV, header ``cadre,unit,name,account,monthly_allowance_fen`` (cadre is
  ``iss/sub``, as the ledger names the diner);
- the card roster CSV with the two optional columns ``account`` and
  ``monthly_allowance_fen`` after its six (protocol/lists.py checks each card row): each
  card row gives its holder ``iss/sub``, unit and display name. A cadre with several
  cards has several rows, which must agree.

Every bad row is one line naming the file, the line and what is wrong (``CadresError``
carries them all). It never reads a clock: callers pass the time.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, text

from county.db.schema import cadres as cadres_table
from protocol.lists import ROSTER_COLUMNS, TrustError, roster_card, roster_header_ok

CADRE_COLUMNS = ("cadre", "unit", "name", "account", "monthly_allowance_fen")
# A bank sub-account number: digits, letters and hyphens as banks print them.
_ACCOUNT = re.compile(r"[0-9A-Za-z-]{1,64}")
# The longest text a cadre, unit or name may have, in UTF-8 bytes (the county's limit
# for an entry's texts, county/intake.py).
_MAX_TEXT_BYTES = 512
# pg_advisory_xact_lock key of a cadres import ("cadres" in ASCII).
_PG_LOCK_KEY = 0x636164726573
# Allowances above this (ten billion yuan) are a typo, not a policy.
_MAX_ALLOWANCE_FEN = 10**12


class CadresError(Exception):
    """A cadres file that cannot be imported: ``lines`` holds one line per bad row."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Cadre:
    """One cadre: ``cadre`` is ``iss/sub``; account and allowance may be unknown (None)."""

    cadre: str
    unit: str
    name: str
    account: str | None
    monthly_allowance_fen: int | None


def _text(value: str | None, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise ValueError(f"{what} is empty")
    if has_control(text):
        # A NUL cannot be stored in PostgreSQL text; a line break or an escape breaks the
        # exports and the screens that show the name.
        raise ValueError(f"{what} holds a control character (a NUL, line break or the like)")
    if len(text.encode("utf-8")) > _MAX_TEXT_BYTES:
        raise ValueError(f"{what} is longer than {_MAX_TEXT_BYTES} bytes")
    return text


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (Unicode category Cc: NUL, tab, line
    breaks, escape, DEL and the C1 controls)."""
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _cadre_id(value: str | None) -> str:
    cadre = _text(value, "cadre")
    iss, slash, sub = cadre.partition("/")
    if not slash or not iss or not sub:
        raise ValueError(f"cadre {cadre[:60]!r}: expected ISSUER/ID, e.g. hn-gov/C0001")
    return cadre


def _account(value: str | None) -> str | None:
    text = (value or "").strip()
    if not text:
        return None
    if not _ACCOUNT.fullmatch(text):
        raise ValueError(f"account {text[:70]!r}: expected 1 to 64 digits, letters or hyphens")
    return text


def _allowance(value: str | None) -> int | None:
    text = (value or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 13:
        raise ValueError(
            f"monthly_allowance_fen {text[:40]!r}: expected a whole number of fen, 0 or more"
        )
    fen = int(text)
    if fen > _MAX_ALLOWANCE_FEN:
        raise ValueError(f"monthly_allowance_fen {fen}: more than {_MAX_ALLOWANCE_FEN} fen")
    return fen


def _cadre_rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, Cadre | str]]:
    for row in reader:
        line = reader.line_num
        if None in row:
            yield line, "more cells than the header has columns"
            continue
        try:
            yield (
                line,
                Cadre(
                    cadre=_cadre_id(row["cadre"]),
                    unit=_text(row["unit"], "unit"),
                    name=_text(row["name"], "name"),
                    account=_account(row["account"]),
                    monthly_allowance_fen=_allowance(row["monthly_allowance_fen"]),
                ),
            )
        except ValueError as exc:
            yield line, str(exc)


def _roster_rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, Cadre | str]]:
    for row in reader:
        line = reader.line_num
        if None in row:
            yield line, "more cells than the header has columns"
            continue
        try:
            where = f"line {line}"
            card = roster_card(row, where)
            if (card.monthly_allowance_fen or 0) > _MAX_ALLOWANCE_FEN:
                raise ValueError(
                    f"monthly_allowance_fen {card.monthly_allowance_fen}: more than "
                    f"{_MAX_ALLOWANCE_FEN} fen"
                )
            yield (
                line,
                Cadre(
                    cadre=_cadre_id(card.cadre),
                    unit=_text(card.unit, "unit"),
                    name=_text(card.display_name, "display_name"),
                    account=_account(card.account),
                    monthly_allowance_fen=card.monthly_allowance_fen,
                ),
            )
        except TrustError as exc:
            # roster_card's message starts with "line N: "; the caller names the line.
            yield line, str(exc).removeprefix(f"{where}: ")
        except ValueError as exc:
            yield line, str(exc)


def parse_cadres_csv(
    text: str, source: str, known_units: Collection[str] | None = None
) -> list[Cadre]:
    """The cadres of a cadres CSV or a roster CSV (see the module docstring), checked whole.

    ``known_units``: the agency codes of the stored directory; when given (and not empty)
    a cadre's unit must be one of them. A cadre may appear once (a roster: on several
    card rows that agree), and two cadres may not share an account, since a bank
    statement names the account and reconciliation needs the one cadre behind it.
    Raises CadresError with one line per bad row; an empty file is an error too."""
    text = text.removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _parse_cadres(reader, source, known_units)
    except csv.Error as exc:
        # A cell past the csv module's field limit: the reader cannot go on, so this one
        # line (naming where it stopped) is the whole answer, and nothing is imported.
        # line_num counts the lines before the one it failed on.
        what = str(exc)
        if "field limit" in what:
            what = f"a cell is longer than {csv.field_size_limit()} characters"
        raise CadresError([f"{source} line {reader.line_num + 1}: {what}; nothing read"]) from None


def _parse_cadres(
    reader: csv.DictReader[str], source: str, known_units: Collection[str] | None
) -> list[Cadre]:
    header = [h.strip() for h in reader.fieldnames or ()]
    if tuple(header) == CADRE_COLUMNS:
        reader.fieldnames = header
        rows = _cadre_rows(reader)
        roster = False
    elif roster_header_ok(header):
        reader.fieldnames = header
        rows = _roster_rows(reader)
        roster = True
    else:
        raise CadresError(
            [
                f"{source} line 1: the header must be {','.join(CADRE_COLUMNS)}, or a roster's "
                f"{','.join(ROSTER_COLUMNS)},account,monthly_allowance_fen"
            ]
        )
    errors: list[str] = []
    found: dict[str, tuple[int, Cadre]] = {}
    by_account: dict[str, tuple[int, str]] = {}
    units = set(known_units or ())
    for line, item in rows:
        where = f"{source} line {line}"
        if isinstance(item, str):
            errors.append(f"{where}: {item}")
            continue
        earlier = found.get(item.cadre)
        if earlier is not None:
            if not roster:
                errors.append(f"{where}: cadre {item.cadre} again (first on line {earlier[0]})")
            elif earlier[1] != item:
                errors.append(
                    f"{where}: cadre {item.cadre}'s unit, name, account or allowance differ "
                    f"from line {earlier[0]}; every card row of a cadre must agree"
                )
            continue
        if units and item.unit not in units:
            errors.append(f"{where}: unit {item.unit!r} is not an agency of the directory")
            continue
        if item.account is not None:
            holder = by_account.get(item.account)
            if holder is not None:
                errors.append(
                    f"{where}: account {item.account} is cadre {holder[1]}'s already "
                    f"(line {holder[0]}); a bank account belongs to one cadre"
                )
                continue
            by_account[item.account] = (line, item.cadre)
        found[item.cadre] = (line, item)
    if errors:
        raise CadresError(errors)
    if not found:
        raise CadresError([f"{source}: no cadres, only the header"])
    return [cadre for _, cadre in found.values()]


def replace_cadres(conn: Connection, cadres: Collection[Cadre], now_ms: int) -> int:
    """Make the cadres table exactly ``cadres``, inside the caller's write transaction.
    Returns how many are stored.

    Two imports at once on PostgreSQL would each delete the old rows and insert theirs,
    and the second would stop on the first one's keys; a transaction-scoped advisory
    lock makes the second wait and then replace the first's rows whole. SQLite's write
    transactions are one at a time anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    conn.execute(delete(cadres_table))
    if cadres:
        conn.execute(
            insert(cadres_table),
            [
                {
                    "cadre": c.cadre,
                    "unit": c.unit,
                    "name": c.name,
                    "account": c.account,
                    "monthly_allowance_fen": c.monthly_allowance_fen,
                    "imported_ms": now_ms,
                }
                for c in cadres
            ],
        )
    return len(cadres)


def load_cadres(conn: Connection) -> dict[str, Cadre]:
    """Every stored cadre by ``iss/sub``, ordered by it."""
    c = cadres_table.c
    return {
        row.cadre: Cadre(row.cadre, row.unit, row.name, row.account, row.monthly_allowance_fen)
        for row in conn.execute(
            select(c.cadre, c.unit, c.name, c.account, c.monthly_allowance_fen).order_by(c.cadre)
        )
    }


__all__ = [
    "CADRE_COLUMNS",
    "Cadre",
    "CadresError",
    "has_control",
    "load_cadres",
    "parse_cadres_csv",
    "replace_cadres",
]
