"""Bank reconciliation and allowances: the ledger's money against the bank's and the budget.

This module owns three things a county finance office does with the ledger
(docs/reconciliation.md):

- reading a bank's daily statement of the cadres' virtual sub-accounts (the CSV format
  defined in docs/reconciliation.md), checked whole: every bad row is one line naming
  it, and a statement with any bad row is not reconciled at all (``StatementError``);
- reconciling one local day: each accepted sale (a debit) and each reversal (a refund)
  the ledger holds for that day is matched with one statement row, by the statement's
  reference (the entry's ``TERMINAL/SEQ``, or its ``entry_id``) first, then by account,
  direction, amount and
  nearest time; what stays unmatched or differs is a difference (``DIFFERENCE_KINDS``);
- the allowance report: per cadre and local month, meals and net spending against the
  cadre's monthly allowance (county/cadres.py holds the allowances).

The matching itself (``match``) is pure: it takes the day's ledger movements, the
statement rows and the cadres, so the rules can be read and tested alone. Reading the
database happens in ``day_movements`` and ``allowances`` inside a read transaction the
caller opened (``Database.read()``), on SQLite and PostgreSQL alike. Money is integer
fen throughout; county/exports.py turns it into yuan when a table is written. Local
days and months are the county's time zone (county/localtime.py): an entry belongs to
the local day of its own time (``at_ms``), a reversal to the day it was made.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import decimal
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, case, func, select
from sqlalchemy.orm import aliased

from county.cadres import Cadre, has_control, load_cadres
from county.db.schema import entries
from county.exports import Column, Table
from county.localtime import DateRange, LocalTimeError, local_text
from county.storekit import sql_word
from protocol.chain import ACCEPT, REVERSAL, SALE

DEBIT = "debit"  # the bank took money from the cadre's account: a sale
REFUND = "refund"  # the bank gave money back: a reversal

# The difference kinds, in the order a report lists them, with the finance office's words.
IN_LEDGER_NOT_AT_BANK = "in_ledger_not_at_bank"
AT_BANK_NOT_IN_LEDGER = "at_bank_not_in_ledger"
AMOUNT_DIFFERS = "amount_differs"
REVERSAL_NOT_REFUNDED = "reversal_not_refunded"
ACCOUNT_UNKNOWN = "account_unknown"
ACCOUNT_DIFFERS = "account_differs"
DIFFERENCE_KINDS = (
    IN_LEDGER_NOT_AT_BANK,
    AT_BANK_NOT_IN_LEDGER,
    AMOUNT_DIFFERS,
    REVERSAL_NOT_REFUNDED,
    ACCOUNT_UNKNOWN,
    ACCOUNT_DIFFERS,
)
DIFFERENCE_NAMES_ZH = {
    IN_LEDGER_NOT_AT_BANK: "账务有银行无",
    AT_BANK_NOT_IN_LEDGER: "银行有账务无",
    AMOUNT_DIFFERS: "金额不符",
    REVERSAL_NOT_REFUNDED: "冲正未退款",
    ACCOUNT_UNKNOWN: "账号未登记",
    ACCOUNT_DIFFERS: "扣款账号不符",
}

# ---- the bank statement -------------------------------------------------------------

# Statement columns: key -> (English header, Chinese header). ``direction`` is optional.
STATEMENT_COLUMNS = {
    "account": ("account", "账号"),
    "name": ("name", "户名"),
    "date": ("date", "交易日期"),
    "time": ("time", "交易时间"),
    "amount": ("amount", "金额"),
    "reference": ("reference", "交易流水号"),
    "memo": ("memo", "摘要"),
    "direction": ("direction", "借贷"),
}
_OPTIONAL_COLUMNS = ("direction",)
_HEADER_KEYS = {name: key for key, names in STATEMENT_COLUMNS.items() for name in names}
_DIRECTIONS = {
    "借": DEBIT,
    "d": DEBIT,
    "debit": DEBIT,
    "贷": REFUND,
    "c": REFUND,
    "credit": REFUND,
}
_AMOUNT = re.compile(r"[+-]?[0-9]{1,15}(?:\.[0-9]{1,2})?")
_TOO_PRECISE = re.compile(r"[+-]?[0-9]+\.[0-9]{3,}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}")
_MAX_TEXT = 512


class StatementError(Exception):
    """A statement that cannot be reconciled: ``lines`` holds one line per bad row."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class BankRow:
    """One statement row: ``amount_fen`` is positive, ``direction`` says which way."""

    line: int
    account: str
    name: str
    at_ms: int
    time_text: str  # "YYYY-MM-DD HH:MM:SS", local, as the bank printed it
    amount_fen: int
    direction: str  # DEBIT or REFUND
    reference: str  # may be empty
    memo: str

    @property
    def signed_fen(self) -> int:
        return self.amount_fen if self.direction == DEBIT else -self.amount_fen


def parse_amount(text: str) -> int:
    """A statement amount in yuan (at most 2 decimals) as integer fen, exactly; a
    ValueError says what is wrong with it."""
    t = text.strip()
    if not t:
        raise ValueError("amount is empty")
    if _TOO_PRECISE.fullmatch(t):
        raise ValueError(f"amount {t!r} has more than 2 decimals: yuan to the fen")
    if not _AMOUNT.fullmatch(t):
        raise ValueError(f"amount {t[:40]!r} is not yuan with at most 2 decimals, e.g. 12.50")
    return int(decimal.Decimal(t).scaleb(2))


def _statement_header(fieldnames: Sequence[str] | None, source: str) -> dict[str, str]:
    """Statement header -> {file's column name: key}; every problem as one line."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for raw in fieldnames or ():
        name = raw.strip()
        if not name:
            # A column without a name (a trailing comma, as some banks export): ignored.
            continue
        key = _HEADER_KEYS.get(name)
        if key is None:
            problems.append(f"unknown column {name[:40]!r}")
        elif key in found.values():
            problems.append(f"column {name!r} twice")
        else:
            found[raw] = key
    missing = [
        f"{en}/{zh}"
        for key, (en, zh) in STATEMENT_COLUMNS.items()
        if key not in found.values() and key not in _OPTIONAL_COLUMNS
    ]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if problems:
        english = ",".join(en for en, _ in STATEMENT_COLUMNS.values())
        raise StatementError(
            [
                f"{source} line 1: the header must be {english} (direction optional) "
                f"or the Chinese 账号,户名,交易日期,交易时间,金额,交易流水号,摘要[,借贷]: "
                + "; ".join(problems)
            ]
        )
    return found


def _bank_row(
    cells: Mapping[str, str], line: int, day: dt.date, zone: dt.tzinfo, has_direction: bool
) -> BankRow:
    """One statement row, or ValueError naming its first problem."""
    for key, value in cells.items():
        if len(value.encode("utf-8")) > _MAX_TEXT:
            raise ValueError(f"{key} is longer than {_MAX_TEXT} bytes")
        if has_control(value):
            # Shown again in the differences: a NUL or an escape has no place in an
            # XLSX cell or a CSV a finance office opens.
            raise ValueError(f"{key} holds a control character (a NUL, line break or the like)")
    account = cells["account"]
    if not account:
        raise ValueError("account is empty")
    date_text = cells["date"]
    try:
        if not _DATE.fullmatch(date_text):
            raise ValueError
        date = dt.date.fromisoformat(date_text)
    except ValueError:
        raise ValueError(f"date {date_text[:40]!r} is not a date YYYY-MM-DD") from None
    if date != day:
        raise ValueError(f"date {date} is not the statement's day {day}")
    time_text = cells["time"]
    try:
        if not _TIME.fullmatch(time_text):
            raise ValueError
        time = dt.time.fromisoformat(time_text)
    except ValueError:
        raise ValueError(f"time {time_text[:40]!r} is not a time HH:MM:SS") from None
    fen = parse_amount(cells["amount"])
    if has_direction:
        word = cells["direction"]
        direction = _DIRECTIONS.get(word.lower())
        if direction is None:
            raise ValueError(f"direction {word[:20]!r}: expected 借 or 贷 (D or C)")
        if fen <= 0:
            raise ValueError(
                f"amount {cells['amount']!r}: with a direction column the amount is positive"
            )
    else:
        if fen == 0:
            raise ValueError("amount 0.00 moves no money")
        direction = DEBIT if fen > 0 else REFUND
    local = dt.datetime.combine(date, time, zone)
    at_ms = int(local.timestamp()) * 1000
    return BankRow(
        line=line,
        account=account,
        name=cells["name"],
        at_ms=at_ms,
        time_text=f"{date.isoformat()} {time.isoformat()}",
        amount_fen=abs(fen),
        direction=direction,
        reference=cells["reference"],
        memo=cells["memo"],
    )


def parse_statement(text: str, source: str, day: dt.date, zone: dt.tzinfo) -> list[BankRow]:
    """The rows of a bank statement of ``day`` (docs/reconciliation.md), checked whole.

    A UTF-8 BOM is dropped; cells are stripped; a row of empty cells is skipped. Every
    row must be of ``day``. Raises StatementError with one line per bad row (file and
    line named), so that nothing is reconciled from a statement that is partly wrong."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    rows: list[BankRow] = []
    errors: list[str] = []
    try:
        columns = _statement_header(reader.fieldnames, source)
        has_direction = "direction" in columns.values()
        for raw in reader:
            line = reader.line_num
            if None in raw:
                errors.append(f"{source} line {line}: more cells than the header has columns")
                continue
            cells = {key: (raw.get(name) or "").strip() for name, key in columns.items()}
            if not any(cells.values()):
                continue
            try:
                rows.append(_bank_row(cells, line, day, zone, has_direction))
            except ValueError as exc:
                errors.append(f"{source} line {line}: {exc}")
    except csv.Error as exc:
        # A cell past the csv module's field limit: the reader cannot go on. The rows
        # before it are reported as usual, this one line says where it stopped
        # (line_num counts the lines before the one it failed on).
        what = str(exc)
        if "field limit" in what:
            what = f"a cell is longer than {csv.field_size_limit()} characters"
        errors.append(f"{source} line {reader.line_num + 1}: {what}; nothing read")
    if errors:
        raise StatementError(errors)
    return rows


# ---- the ledger's side --------------------------------------------------------------


@dataclass(frozen=True)
class Movement:
    """An accepted sale (a debit) or a reversal (a refund) of the ledger."""

    terminal: str
    seq: int
    entry_id: str
    canteen: str
    cadre: str
    unit: str | None
    at_ms: int
    amount_fen: int
    direction: str
    # A reversal's sale: its seq (same terminal) and entry_id (None if not stored).
    ref_seq: int | None = None
    sale_entry_id: str | None = None
    hash: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.terminal, self.seq)

    @property
    def reference(self) -> str:
        """The transaction id the county gives the bank: ``TERMINAL/SEQ``, as the
        settlement detail shows the entry (its terminal and seq columns)."""
        return f"{self.terminal}/{self.seq}"

    @property
    def references(self) -> tuple[str, ...]:
        """Every reference a statement row may name this movement by: its own
        ``TERMINAL/SEQ`` and entry_id, and for a refund those of the sale it reversed."""
        found = [self.reference, self.entry_id]
        if self.ref_seq is not None:
            found.append(f"{self.terminal}/{self.ref_seq}")
        if self.sale_entry_id:
            found.append(self.sale_entry_id)
        return tuple(found)

    @property
    def signed_fen(self) -> int:
        return self.amount_fen if self.direction == DEBIT else -self.amount_fen


def day_range(day: dt.date, zone: dt.tzinfo) -> DateRange:
    return DateRange(day, day, zone)


def day_movements(conn: Connection, day: dt.date, zone: dt.tzinfo) -> list[Movement]:
    """The accepted sales and the reversals made on local ``day``, with an amount and a
    cadre (a free meal moves no money), by terminal and seq. Two queries, each on an
    index: accepted sales by time (entries_sales_at), reversals by time (entries_at_ms)."""
    span = day_range(day, zone)
    e = entries.c
    in_day = and_(e.at_ms >= span.start_ms, e.at_ms < span.end_ms)
    found: list[Movement] = []
    sales = select(
        e.terminal, e.seq, e.entry_id, e.canteen, e.cadre, e.unit, e.at_ms, e.amount_fen, e.hash
    ).where(in_day, e.kind == SALE, e.verdict == ACCEPT, e.amount_fen != 0, e.cadre.is_not(None))
    for q in conn.execute(sales):
        found.append(
            Movement(
                q.terminal,
                int(q.seq),
                q.entry_id,
                q.canteen,
                q.cadre,
                q.unit,
                int(q.at_ms),
                int(q.amount_fen),
                DEBIT,
                hash=bytes(q.hash).hex(),
            )
        )
    sale = aliased(entries)
    reversals = (
        select(
            e.terminal,
            e.seq,
            e.entry_id,
            e.canteen,
            e.cadre,
            e.unit,
            e.at_ms,
            e.amount_fen,
            e.hash,
            e.ref_seq,
            sale.c.entry_id.label("sale_entry_id"),
        )
        .join_from(
            entries,
            sale,
            and_(sale.c.terminal == e.terminal, sale.c.seq == e.ref_seq),
            isouter=True,
        )
        .where(in_day, e.kind == REVERSAL, e.amount_fen != 0, e.cadre.is_not(None))
    )
    for r in conn.execute(reversals):
        found.append(
            Movement(
                r.terminal,
                int(r.seq),
                r.entry_id,
                r.canteen,
                r.cadre,
                r.unit,
                int(r.at_ms),
                int(r.amount_fen),
                REFUND,
                ref_seq=None if r.ref_seq is None else int(r.ref_seq),
                sale_entry_id=r.sale_entry_id,
                hash=bytes(r.hash).hex(),
            )
        )
    found.sort(key=lambda m: m.key)
    return found


# ---- matching -----------------------------------------------------------------------

BY_REFERENCE = "reference"
BY_ACCOUNT = "account, amount and time"


@dataclass
class Reconciliation:
    """One day's result: the differences, one row per cadre, and the day's totals."""

    day: dt.date
    differences: list[dict[str, Any]] = field(default_factory=list)
    cadres: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return not self.differences


class _Matcher:
    """The matching of one day (see ``match``): state kept while the passes run."""

    def __init__(
        self,
        movements: Sequence[Movement],
        rows: Sequence[BankRow],
        cadres: Mapping[str, Cadre],
        day: dt.date,
        zone: dt.tzinfo,
    ) -> None:
        self.movements, self.rows, self.cadres = movements, rows, cadres
        self.day, self.zone = day, zone
        self.by_account = {c.account: c for c in cadres.values() if c.account is not None}
        # (row line) -> (movement, how)
        self.pairs: dict[int, tuple[Movement, str]] = {}
        self.matched: set[tuple[str, int]] = set()
        self.differences: list[dict[str, Any]] = []

    # -- the passes --

    def run(self) -> None:
        debits: dict[str, Movement] = {}
        refunds: dict[str, Movement] = {}
        for m in self.movements:
            into = debits if m.direction == DEBIT else refunds
            own = m.references[:2]
            for ref in m.references:
                # A movement's own references first; a refund by its sale's only when no
                # other reversal of the day took that one (a sale is reversed once).
                if ref in own:
                    into[ref] = m
                else:
                    into.setdefault(ref, m)
        known_ids = set(debits) | set(refunds)
        pool: list[BankRow] = []
        first_line: dict[tuple[str, int], int] = {}
        # Pass 1: references. A reference that names a movement of the day matches it;
        # one that names a movement already matched, or a sale for a refund, is a row the
        # ledger does not have; one that names nothing of the day goes to pass 2.
        for row in self.rows:
            ref = row.reference
            if not ref or ref not in known_ids:
                pool.append(row)
                continue
            target = (debits if row.direction == DEBIT else refunds).get(ref)
            if target is None:
                what = (
                    "a reversal or the sale of one, not a sale of the day"
                    if row.direction == DEBIT
                    else "a sale not reversed on the day"
                )
                self._bank_only(row, f"this {row.direction}'s reference {ref} names {what}")
            elif target.key in self.matched:
                self._bank_only(
                    row,
                    f"reference {ref} was matched already on line "
                    f"{first_line[target.key]}: a second {row.direction}",
                )
            else:
                self._pair(row, target, BY_REFERENCE)
                first_line[target.key] = row.line
        # Pass 2: rows without a usable reference, by the account's cadre, direction and
        # amount; of the candidates the nearest in time first, over all rows at once.
        # The unmatched movements by (cadre, direction, amount): a row's candidates are
        # one look-up, not a walk over the day (a day of a city has tens of thousands).
        unmatched: dict[tuple[str, str, int], list[Movement]] = {}
        for m in self.movements:
            if m.key not in self.matched:
                unmatched.setdefault((m.cadre, m.direction, m.amount_fen), []).append(m)
        candidates: list[tuple[int, int, int, str, int, BankRow, Movement]] = []
        for row in pool:
            holder = self.by_account.get(row.account)
            if holder is None:
                continue
            for m in unmatched.get((holder.cadre, row.direction, row.amount_fen), ()):
                gap = abs(m.at_ms - row.at_ms)
                candidates.append((gap, row.line, m.at_ms, m.terminal, m.seq, row, m))
        candidates.sort(key=lambda c: c[:5])
        for _, _, _, _, _, row, m in candidates:
            if row.line in self.pairs or m.key in self.matched:
                continue
            self._pair(row, m, BY_ACCOUNT)
        for row in pool:
            if row.line in self.pairs:
                continue
            if row.account not in self.by_account:
                self._add(
                    ACCOUNT_UNKNOWN,
                    None,
                    row,
                    f"no cadre has account {row.account}: import it with 'cadres import'",
                )
            else:
                note = "no ledger entry of the day"
                if row.reference:
                    note += (
                        f" has the reference {row.reference} or the same account, amount "
                        "and direction"
                    )
                else:
                    note += " has the same account, amount and direction"
                self._bank_only(row, note)
        # Pass 3: what the ledger has that the bank does not.
        for m in self.movements:
            if m.key in self.matched:
                continue
            if m.direction == DEBIT:
                self._add(IN_LEDGER_NOT_AT_BANK, m, None, "no statement row debits this sale")
            else:
                self._add(REVERSAL_NOT_REFUNDED, m, None, "no statement row refunds this reversal")

    def _pair(self, row: BankRow, m: Movement, how: str) -> None:
        self.pairs[row.line] = (m, how)
        self.matched.add(m.key)
        amount_note = None
        if row.amount_fen != m.amount_fen:
            amount_note = (
                f"matched by {how}: the bank moved {_yuan(row.amount_fen)}, "
                f"the ledger {_yuan(m.amount_fen)}"
            )
            self._add(AMOUNT_DIFFERS, m, row, amount_note)
        holder = self.by_account.get(row.account)
        money = amount_note is None  # the money difference goes on one row only
        if holder is None:
            self._add(
                ACCOUNT_UNKNOWN,
                m,
                row,
                f"matched by {how}, but no cadre has account {row.account}",
                carries_money=money,
            )
        elif holder.cadre != m.cadre:
            self._add(
                ACCOUNT_DIFFERS,
                m,
                row,
                f"matched by {how}: account {row.account} is cadre {holder.cadre}'s, "
                f"the meal was {m.cadre}'s",
                carries_money=money,
            )

    def _bank_only(self, row: BankRow, note: str) -> None:
        self._add(AT_BANK_NOT_IN_LEDGER, None, row, note)

    def _add(
        self,
        kind: str,
        m: Movement | None,
        row: BankRow | None,
        note: str,
        carries_money: bool = True,
    ) -> None:
        cadre_id = m.cadre if m is not None else self._row_cadre(row)
        cadre = self.cadres.get(cadre_id) if cadre_id else None
        ledger_fen = m.signed_fen if m is not None else None
        bank_fen = row.signed_fen if row is not None else None
        self.differences.append(
            {
                "row": "difference",
                "date": self.day.isoformat(),
                "kind": kind,
                "kind_zh": DIFFERENCE_NAMES_ZH[kind],
                "cadre": cadre_id or "",
                "name": cadre.name if cadre else (row.name if row else ""),
                "unit": m.unit if m is not None else (cadre.unit if cadre else ""),
                "account": cadre.account if cadre else None,
                "direction": (m.direction if m is not None else row.direction if row else ""),
                "reference": m.reference if m is not None else None,
                "entry_id": m.entry_id if m is not None else None,
                "terminal": m.terminal if m is not None else None,
                "seq": m.seq if m is not None else None,
                "canteen": m.canteen if m is not None else None,
                "ledger_time": local_text(m.at_ms, self.zone) if m is not None else None,
                "ledger_fen": ledger_fen,
                "bank_line": row.line if row is not None else None,
                "bank_account": row.account if row is not None else None,
                "bank_time": row.time_text if row is not None else None,
                "bank_fen": bank_fen,
                "bank_reference": row.reference if row is not None else None,
                "difference_fen": ((bank_fen or 0) - (ledger_fen or 0)) if carries_money else 0,
                "note": note,
            }
        )

    def _row_cadre(self, row: BankRow | None) -> str | None:
        if row is None:
            return None
        matched = self.pairs.get(row.line)
        if matched is not None:
            return matched[0].cadre
        holder = self.by_account.get(row.account)
        return holder.cadre if holder else None

    # -- the tables --

    def per_cadre(self) -> list[dict[str, Any]]:
        """One row per cadre (or unknown account) with money on either side."""
        out: dict[str, dict[str, Any]] = {}

        def slot(cadre_id: str | None, account: str) -> dict[str, Any]:
            key = cadre_id or f"account {account}"
            found = out.get(key)
            if found is None:
                cadre = self.cadres.get(cadre_id) if cadre_id else None
                found = out[key] = {
                    "row": "cadre",
                    "date": self.day.isoformat(),
                    "cadre": cadre_id or "",
                    "name": cadre.name if cadre else "",
                    "unit": cadre.unit if cadre else "",
                    "account": cadre.account if cadre else account,
                    "meals": 0,
                    "ledger_debit_fen": 0,
                    "ledger_refund_fen": 0,
                    "bank_debit_fen": 0,
                    "bank_refund_fen": 0,
                    "difference_fen": 0,
                    "differences": 0,
                }
            return found

        for m in self.movements:
            s = slot(m.cadre, "")
            if m.direction == DEBIT:
                s["meals"] += 1
                s["ledger_debit_fen"] += m.amount_fen
            else:
                s["meals"] -= 1
                s["ledger_refund_fen"] += m.amount_fen
            s["difference_fen"] -= m.signed_fen
            if not s["unit"] and m.unit:
                s["unit"] = m.unit
        for row in self.rows:
            s = slot(self._row_cadre(row), row.account)
            s["bank_debit_fen" if row.direction == DEBIT else "bank_refund_fen"] += row.amount_fen
            s["difference_fen"] += row.signed_fen
        for d in self.differences:
            s = slot(d["cadre"] or None, d["bank_account"] or "")
            s["differences"] += 1
        return [out[k] for k in sorted(out)]

    def summary(self) -> dict[str, Any]:
        by_kind = {kind: 0 for kind in DIFFERENCE_KINDS}
        for d in self.differences:
            by_kind[d["kind"]] += 1
        how = [h for _, h in self.pairs.values()]
        return {
            "row": "summary",
            "date": self.day.isoformat(),
            "ledger_movements": len(self.movements),
            "statement_rows": len(self.rows),
            "cadres_on_file": len(self.cadres),
            "matched_by_reference": how.count(BY_REFERENCE),
            "matched_by_account": how.count(BY_ACCOUNT),
            "differences": len(self.differences),
            **by_kind,
            "ledger_net_fen": sum(m.signed_fen for m in self.movements),
            "bank_net_fen": sum(r.signed_fen for r in self.rows),
            "balanced": not self.differences,
        }


def _yuan(fen: int) -> str:
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole}.{cents:02d} yuan"


def match(
    movements: Sequence[Movement],
    rows: Sequence[BankRow],
    cadres: Mapping[str, Cadre],
    day: dt.date,
    zone: dt.tzinfo,
) -> Reconciliation:
    """Reconcile one day: ``movements`` of the ledger against statement ``rows``.

    1. A row whose reference names one of the day's movements in its direction (a
       debit: a sale; a refund: a reversal, or the sale it reversed), by TERMINAL/SEQ or
       by entry_id, is matched with it. A reference naming a movement matched already, or one of the
       other direction, makes the row at_bank_not_in_ledger.
    2. The other rows are matched with unmatched movements of the cadre whose account
       they name, in the same direction and of the same amount; the pairs nearest in
       time are taken first (ties: statement line, then the ledger's time, terminal, seq).
    3. Differences: a matched pair whose amounts differ (amount_differs) or whose account
       is not the diner's (account_differs, or account_unknown when no cadre has it); a
       row left over (at_bank_not_in_ledger, or account_unknown); a sale left over
       (in_ledger_not_at_bank); a reversal left over (reversal_not_refunded).

    Each difference's ``difference_fen`` is what it puts between the two sides (bank
    minus ledger, debits positive), so the differences add up to the day's bank net
    minus its ledger net."""
    m = _Matcher(movements, rows, cadres, day, zone)
    m.run()
    order = {kind: i for i, kind in enumerate(DIFFERENCE_KINDS)}
    m.differences.sort(
        key=lambda d: (d["cadre"], order[d["kind"]], d["ledger_time"] or d["bank_time"] or "")
    )
    return Reconciliation(day, m.differences, m.per_cadre(), m.summary())


def reconcile(
    conn: Connection, rows: Sequence[BankRow], day: dt.date, zone: dt.tzinfo
) -> Reconciliation:
    """Reconcile the statement ``rows`` of ``day`` with the ledger in the database."""
    return match(day_movements(conn, day, zone), rows, load_cadres(conn), day, zone)


DIFFERENCE_COLUMNS = (
    Column("date", "日期", width=12),
    Column("kind", "差异类型", width=22),
    Column("kind_zh", "差异说明", width=14),
    Column("cadre", "干部", width=18),
    Column("name", "姓名"),
    Column("unit", "单位"),
    Column("account", "登记账号", width=20),
    Column("direction", "借贷"),
    Column("reference", "账务流水号", width=18),
    Column("entry_id", "条目编号", width=34),
    Column("terminal", "终端", width=14),
    Column("seq", "序号"),
    Column("canteen", "食堂"),
    Column("ledger_time", "账务时间", width=20),
    Column("ledger_fen", "账务金额", money=True),
    Column("bank_line", "对账单行号"),
    Column("bank_account", "银行账号", width=20),
    Column("bank_time", "银行时间", width=20),
    Column("bank_fen", "银行金额", money=True),
    Column("bank_reference", "银行流水号", width=34),
    Column("difference_fen", "差额", money=True),
    Column("note", "备注", width=60),
)
CADRE_COLUMNS = (
    Column("date", "日期", width=12),
    Column("cadre", "干部", width=18),
    Column("name", "姓名"),
    Column("unit", "单位"),
    Column("account", "账号", width=20),
    Column("meals", "餐次"),
    Column("ledger_debit_fen", "账务扣款", money=True),
    Column("ledger_refund_fen", "账务退款", money=True),
    Column("bank_debit_fen", "银行扣款", money=True),
    Column("bank_refund_fen", "银行退款", money=True),
    Column("difference_fen", "差额", money=True),
    Column("differences", "差异笔数"),
)
SUMMARY_COLUMNS = (
    Column("date", "日期", width=12),
    Column("ledger_movements", "账务笔数"),
    Column("statement_rows", "对账单笔数"),
    Column("cadres_on_file", "登记干部数"),
    Column("matched_by_reference", "按流水号匹配"),
    Column("matched_by_account", "按账号金额匹配"),
    Column("differences", "差异笔数"),
    *(Column(kind, DIFFERENCE_NAMES_ZH[kind]) for kind in DIFFERENCE_KINDS),
    Column("ledger_net_fen", "账务净额", money=True),
    Column("bank_net_fen", "银行净额", money=True),
    Column("balanced", "是否平账"),
)


def reconciliation_tables(result: Reconciliation) -> list[Table]:
    """The differences, the per-cadre rows and the summary, as county/exports.py writes."""
    return [
        Table("差异明细", DIFFERENCE_COLUMNS, result.differences),
        Table("按干部汇总", CADRE_COLUMNS, result.cadres),
        Table("对账汇总", SUMMARY_COLUMNS, [result.summary]),
    ]


# ---- allowances ---------------------------------------------------------------------

_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")


def month_range(month: str, zone: dt.tzinfo) -> DateRange:
    """The local days of ``month`` (YYYY-MM), or LocalTimeError naming it."""
    try:
        if not _MONTH.fullmatch(month):
            raise ValueError
        year, number = int(month[:4]), int(month[5:])
        first = dt.date(year, number, 1)
    except ValueError:
        raise LocalTimeError(f"--month {month!r}: expected a month YYYY-MM, e.g. 2026-05") from None
    last = first.replace(day=calendar.monthrange(year, number)[1])
    return DateRange(first, last, zone)


def _spending(conn: Connection, span: DateRange) -> dict[str, tuple[int, int, int, int]]:
    """cadre -> (sales, gross fen, sales reversed, reversed fen) of the accepted sales in
    ``span``. A sale is reversed when any reversal names it (terminal, ref_seq), whenever
    it was made, and for its own amount; found through entries_reversals."""
    e = entries.c
    r = entries.alias("r")
    # 'reversal' written into the SQL, not bound: SQLite uses the partial index
    # entries_reversals (WHERE kind = 'reversal') only for a condition it can see.
    is_reversed = (
        select(r.c.seq)
        .where(
            r.c.kind == sql_word(REVERSAL),
            r.c.terminal == e.terminal,
            r.c.ref_seq == e.seq,
        )
        .exists()
    )
    sales = (
        select(e.cadre, e.amount_fen, case((is_reversed, 1), else_=0).label("undone"))
        .where(
            e.kind == SALE,
            e.verdict == ACCEPT,
            e.at_ms >= span.start_ms,
            e.at_ms < span.end_ms,
            e.cadre.is_not(None),
        )
        .subquery()
    )
    s = sales.c
    pg = conn.dialect.name == "postgresql"

    def fen_sum(column: Any) -> Any:
        # SQLite's SUM stops at 2^63 with an error; TOTAL (a float) is exact below 2^53
        # fen. PostgreSQL sums bigint as numeric, always exact.
        return func.coalesce(func.sum(column), 0) if pg else func.total(column)

    query = select(
        s.cadre,
        func.count(),
        fen_sum(s.amount_fen),
        func.coalesce(func.sum(s.undone), 0),
        fen_sum(s.amount_fen * s.undone),
    ).group_by(s.cadre)
    return {
        row[0]: (int(row[1]), int(row[2]), int(row[3]), int(row[4])) for row in conn.execute(query)
    }


def allowances(
    conn: Connection, month: str, zone: dt.tzinfo, over_only: bool = False
) -> list[dict[str, Any]]:
    """Per cadre for local ``month``: meals (accepted sales not reversed), gross,
    reversed and net fen, against the cadre's monthly allowance. Every cadre of the
    cadres table is listed, and every cadre that ate without being in it; ``over_only``
    keeps those whose net spending is above their allowance.

    As in the settlement (county/settlement.py): a sale counts in the month of its own
    time, and a reversal against the sale it undoes, in the sale's month, whenever it
    was made; so the allowance report of a month agrees with that month's settlement."""
    span = month_range(month, zone)
    spent = _spending(conn, span)
    cadres = load_cadres(conn)
    out = []
    for cadre_id in sorted(set(cadres) | set(spent)):
        cadre = cadres.get(cadre_id)
        meals, gross, undone, reversed_fen = spent.get(cadre_id, (0, 0, 0, 0))
        net = gross - reversed_fen
        allowance = cadre.monthly_allowance_fen if cadre else None
        over = allowance is not None and net > allowance
        if over_only and not over:
            continue
        out.append(
            {
                "row": "allowance",
                "month": month,
                "cadre": cadre_id,
                "name": cadre.name if cadre else "",
                "unit": cadre.unit if cadre else "",
                "meals": meals - undone,
                "gross_fen": gross,
                "reversed_fen": reversed_fen,
                "net_fen": net,
                "allowance_fen": allowance,
                "remaining_fen": None if allowance is None else allowance - net,
                "over_fen": max(0, net - allowance) if allowance is not None else None,
                "over": over,
            }
        )
    return out


ALLOWANCE_COLUMNS = (
    Column("month", "月份", width=10),
    Column("cadre", "干部", width=18),
    Column("name", "姓名"),
    Column("unit", "单位"),
    Column("meals", "餐次"),
    Column("gross_fen", "消费金额", money=True),
    Column("reversed_fen", "冲正金额", money=True),
    Column("net_fen", "净消费", money=True),
    Column("allowance_fen", "月度额度", money=True),
    Column("remaining_fen", "剩余额度", money=True),
    Column("over_fen", "超出金额", money=True),
    Column("over", "是否超额"),
)


def allowance_table(rows: Iterable[dict[str, Any]]) -> Table:
    return Table("月度额度", ALLOWANCE_COLUMNS, rows)


__all__ = [
    "ACCOUNT_DIFFERS",
    "ACCOUNT_UNKNOWN",
    "AMOUNT_DIFFERS",
    "AT_BANK_NOT_IN_LEDGER",
    "DEBIT",
    "DIFFERENCE_KINDS",
    "IN_LEDGER_NOT_AT_BANK",
    "REFUND",
    "REVERSAL_NOT_REFUNDED",
    "BankRow",
    "Movement",
    "Reconciliation",
    "StatementError",
    "allowance_table",
    "allowances",
    "day_movements",
    "match",
    "month_range",
    "parse_amount",
    "parse_statement",
    "reconcile",
    "reconciliation_tables",
]
