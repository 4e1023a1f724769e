"""Settlement: who owes which canteen for the meals of a period, as a summary and a detail.

This module owns the two tables a county finance office settles a month with
(docs/settlement.md): the summary, one row per (payer agency, canteen) with subtotals per
canteen operator, per level pair and in all, and the detail, every accepted sale of the
period and every reversal of those sales. It reads inside one read transaction the caller
opened (``Database.read()``), so the summary and the detail written from it agree, and
it never writes. Formats are county/exports.py's; the command is county/settlement_cli.py.

The rules, decided in docs/settlement.md:

- A sale belongs to the period that holds its own time (``at_ms``, the terminal's signed
  time) in the county's time zone (county/localtime.py): a sale at 23:30 on the 31st is in
  that month whatever its service day.
- A reversal counts against the sale it undoes, in the sale's row and period, whenever it
  was made: re-running a closed month shows a late reversal there (the finance office
  carries the difference into the next settlement). A sale counts as reversed once, however
  many reversal entries name it, and is reversed for its own amount.
- The payer is the diner's agency (``entries.unit``); the operator is the canteen's, from
  the stored directory (county/directory.py). A unit or canteen the directory lacks still
  gets its row, with empty names and levels: money is never dropped for want of a name.
- Refused sales move no money and are not settled (``canteen-county entries`` lists them).

Volume: the summary is two GROUP BY queries over the period's accepted sales, which the
partial index entries_sales_at (at_ms, canteen, unit, meal, amount_fen) answers by range;
the reversed ones are those whose (terminal, seq) a reversal names, found through
entries_reversals (terminal, ref_seq). The detail is one query in time order streamed
``batch_rows`` at a time (a server-side cursor on PostgreSQL), never held whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    exists,
    func,
    select,
    text,
    tuple_,
)

from county.db.schema import entries, terminals
from county.localtime import DateRange, local_text
from county.storekit import sql_word
from protocol.agencies import LEVEL_NAMES_ZH, RANK, TIER_NAMES_ZH, Directory
from protocol.chain import ACCEPT, REVERSAL, SALE

# The "row" of a summary line: a (payer, canteen) pair or one of the subtotals.
PAYER = "payer"
OPERATOR_TOTAL = "operator_total"
LEVEL_PAIR_TOTAL = "level_pair_total"
GRAND_TOTAL = "grand_total"
ROW_NAMES_ZH = {
    PAYER: "结算明细",
    OPERATOR_TOTAL: "运营单位小计",
    LEVEL_PAIR_TOTAL: "级别小计",
    GRAND_TOTAL: "合计",
}
# The "row" of a detail line.
DETAIL_SALE = "sale"
DETAIL_REVERSAL = "reversal"
DETAIL_NAMES_ZH = {DETAIL_SALE: "消费", DETAIL_REVERSAL: "冲正"}

_SUMS = ("sales", "reversals", "meals", "gross_fen", "reversed_fen", "net_fen")


class SettlementError(ValueError):
    """A settlement that cannot be made as asked (an unknown canteen or agency); one line."""


@dataclass(frozen=True)
class Period:
    """What to settle: the sales of ``dates`` (local, both ends included), of one canteen
    and one payer agency when given. ``received_before_ms``: only what the county had
    received before then (a closed month re-run as it was issued); None for everything."""

    dates: DateRange
    canteen: str | None = None
    agency: str | None = None
    received_before_ms: int | None = None


def _accepted_sales(period: Period) -> list[ColumnElement[bool]]:
    """The WHERE of the period's accepted sales, in the words of entries_sales_at."""
    e = entries.c
    cond: list[ColumnElement[bool]] = [
        e.kind == sql_word(SALE),
        e.verdict == sql_word(ACCEPT),
        e.at_ms >= period.dates.start_ms,
        e.at_ms < period.dates.end_ms,
    ]
    if period.canteen is not None:
        cond.append(e.canteen == period.canteen)
    if period.agency is not None:
        cond.append(e.unit == period.agency)
    if period.received_before_ms is not None:
        cond.append(e.received_ms < period.received_before_ms)
    return cond


def _reversals(period: Period) -> Any:
    """The reversal entries (aliased ``r``) the period counts: every one, or those the
    county had received before ``received_before_ms``."""
    r = entries.alias("r")
    cond: list[ColumnElement[bool]] = [r.c.kind == sql_word(REVERSAL)]
    if period.received_before_ms is not None:
        cond.append(r.c.received_ms < period.received_before_ms)
    return r, and_(*cond)


def _fen_sum(conn: Connection, column: Any) -> Any:
    # A terminal may sign any 64-bit amount: SQLite's SUM fails on integer overflow,
    # its TOTAL sums in floating point, exact below 2^53 fen (as county/reports.py does).
    # PostgreSQL sums bigint as numeric, always exact.
    if conn.dialect.name == "postgresql":
        return func.coalesce(func.sum(column), 0)
    return func.total(column)


def check_filters(conn: Connection, period: Period, directory: Directory) -> None:
    """Refuse a --canteen or --agency the county has never heard of: not in the directory
    and named by no terminal or entry (a typo, most likely). A known one with no sales in
    the period is no error: its settlement is empty."""
    e = entries.c
    if period.canteen is not None and period.canteen not in directory.canteens:
        named = conn.execute(
            select(
                exists().where(terminals.c.canteen == period.canteen)
                | exists().where(e.canteen == period.canteen)
            )
        ).scalar()
        if not named:
            raise SettlementError(
                f"--canteen {period.canteen!r}: no such canteen in the directory, "
                "and no terminal or entry names it"
            )
    if period.agency is not None and directory.agency(period.agency) is None:
        named = conn.execute(select(exists().where(e.unit == period.agency))).scalar()
        if not named:
            raise SettlementError(
                f"--agency {period.agency!r}: no such agency in the directory, "
                "and no entry names it"
            )


def _level(directory: Directory, code: str | None) -> str | None:
    agency = directory.agency(code)
    return None if agency is None else agency.level


def _zero() -> dict[str, int]:
    return dict.fromkeys(_SUMS, 0)


def summary(conn: Connection, period: Period, directory: Directory) -> list[dict[str, Any]]:
    """The summary's lines in print order: each operator's (payer, canteen) rows by
    canteen and payer, then that operator's subtotal; then one subtotal per level pair
    (payer level, operator level); then the grand total (always, zero when empty).

    Every line has ``row`` and the sums sales, reversals, meals (sales not reversed),
    gross_fen, reversed_fen and net_fen (gross minus reversed), integer fen."""
    if conn.dialect.name == "postgresql":
        # A month's grouping costs enough for PostgreSQL to compile it (JIT), which took
        # seconds and saved nothing (docs/county-scale.md); for this transaction only.
        conn.exec_driver_sql("SET LOCAL jit = off")
    e = entries.c
    where = _accepted_sales(period)
    pairs: dict[tuple[str | None, str], dict[str, int]] = {}
    sales_query = (
        select(e.unit, e.canteen, func.count(), _fen_sum(conn, e.amount_fen))
        .where(*where)
        .group_by(e.unit, e.canteen)
    )
    for unit, canteen, n, fen in conn.execute(sales_query):
        sums = pairs.setdefault((unit, canteen), _zero())
        sums["sales"] += int(n)
        sums["gross_fen"] += int(fen)
    r, is_reversal = _reversals(period)
    # A sale is reversed when a reversal of its terminal names its seq; IN counts it once
    # however many reversals name it, for the sale's own amount.
    reversed_query = (
        select(e.unit, e.canteen, func.count(), _fen_sum(conn, e.amount_fen))
        .where(
            *where,
            tuple_(e.terminal, e.seq).in_(
                select(r.c.terminal, r.c.ref_seq).where(is_reversal, r.c.ref_seq.is_not(None))
            ),
        )
        .group_by(e.unit, e.canteen)
    )
    for unit, canteen, n, fen in conn.execute(reversed_query):
        sums = pairs.setdefault((unit, canteen), _zero())
        sums["reversals"] += int(n)
        sums["reversed_fen"] += int(fen)

    def key(pair: tuple[str | None, str]) -> tuple[bool, str, str, str]:
        unit, canteen = pair
        operator = directory.operator_of(canteen)
        return (operator is None, operator or "", canteen, unit or "")

    lines: list[dict[str, Any]] = []
    by_operator: dict[str | None, dict[str, int]] = {}
    by_levels: dict[tuple[str | None, str | None], dict[str, int]] = {}
    grand = _zero()
    current: str | None = None
    started = False
    for unit, canteen in sorted(pairs, key=key):
        sums = pairs[(unit, canteen)]
        sums["meals"] = sums["sales"] - sums["reversals"]
        sums["net_fen"] = sums["gross_fen"] - sums["reversed_fen"]
        operator = directory.operator_of(canteen)
        if started and operator != current:
            lines.append(_operator_line(directory, current, by_operator[current]))
        current, started = operator, True
        payer = directory.agency(unit)
        op = directory.agency(operator)
        line: dict[str, Any] = {
            "row": PAYER,
            "payer_agency": unit,
            "payer_name": None if payer is None else payer.name,
            "payer_level": None if payer is None else payer.level,
            "canteen": canteen,
            "canteen_name": _canteen_name(directory, canteen),
            "operator": operator,
            "operator_name": None if op is None else op.name,
            "operator_level": None if op is None else op.level,
            **sums,
        }
        lines.append(line)
        for total in (
            by_operator.setdefault(operator, _zero()),
            by_levels.setdefault((line["payer_level"], line["operator_level"]), _zero()),
            grand,
        ):
            for name in _SUMS:
                total[name] += sums[name]
    if started:
        lines.append(_operator_line(directory, current, by_operator[current]))

    def level_key(pair: tuple[str | None, str | None]) -> tuple[int, int]:
        return (_rank(pair[0]), _rank(pair[1]))

    for payer_level, operator_level in sorted(by_levels, key=level_key):
        lines.append(
            {
                "row": LEVEL_PAIR_TOTAL,
                "payer_level": payer_level,
                "operator_level": operator_level,
                **by_levels[(payer_level, operator_level)],
            }
        )
    lines.append({"row": GRAND_TOTAL, **grand})
    return lines


def _rank(level: str | None) -> int:
    return RANK.get(level or "", len(RANK) + 1)


def _canteen_name(directory: Directory, canteen: str | None) -> str | None:
    found = directory.canteens.get(canteen or "")
    return None if found is None else found.name


def _operator_line(
    directory: Directory, operator: str | None, sums: dict[str, int]
) -> dict[str, Any]:
    op = directory.agency(operator)
    return {
        "row": OPERATOR_TOTAL,
        "operator": operator,
        "operator_name": None if op is None else op.name,
        "operator_level": None if op is None else op.level,
        **sums,
    }


def _tier(detail: str | None) -> str | None:
    """The price tier the terminal recorded in a sale's detail, or None (older entries
    have none; it is never guessed)."""
    if not detail:
        return None
    try:
        doc = json.loads(detail)
    except ValueError:
        return None
    tier = doc.get("tier") if isinstance(doc, dict) else None
    return tier if isinstance(tier, str) and tier else None


def _reversals_of_sales(conn: Connection, period: Period, batch_rows: int) -> tuple[Any, ...]:
    """The reversals of the period's accepted sales, as (sale terminal, sale seq, reversal
    seq, its at_ms, its hash), in the order of the sales (at_ms, terminal, seq) and then
    of the reversals: a statement and its parameters.

    Written out, not built, to say how it is read: from entries_reversals (every reversal
    the county has, a small share of the entries), each looking its sale up by primary
    key. Without statistics SQLite otherwise starts from the sales and finds each one's
    reversals by its terminal alone, reading every entry of the terminal for every sale;
    its CROSS JOIN keeps the order as written. PostgreSQL has no CROSS JOIN ... ON, and
    plans the JOIN from its own statistics."""
    join = "CROSS JOIN" if conn.dialect.name == "sqlite" else "JOIN"
    where = [
        "r.kind = 'reversal'",
        "r.ref_seq IS NOT NULL",
        "s.kind = 'sale'",
        "s.verdict = 'accept'",
        "s.at_ms >= :start_ms",
        "s.at_ms < :end_ms",
    ]
    params: dict[str, Any] = {"start_ms": period.dates.start_ms, "end_ms": period.dates.end_ms}
    if period.canteen is not None:
        where.append("s.canteen = :canteen")
        params["canteen"] = period.canteen
    if period.agency is not None:
        where.append("s.unit = :agency")
        params["agency"] = period.agency
    if period.received_before_ms is not None:
        where.append("s.received_ms < :received_before_ms")
        where.append("r.received_ms < :received_before_ms")
        params["received_before_ms"] = period.received_before_ms
    statement = text(
        "SELECT s.terminal, s.seq, r.seq, r.at_ms, r.hash"
        f" FROM entries AS r {join} entries AS s"
        " ON s.terminal = r.terminal AND s.seq = r.ref_seq"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY s.at_ms, s.terminal, s.seq, r.seq"
    ).execution_options(yield_per=batch_rows)
    return statement, params


def iter_detail(
    conn: Connection,
    period: Period,
    directory: Directory,
    batch_rows: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every accepted sale of the period in time order (then terminal, seq), each followed
    by the reversals that name it, streamed ``batch_rows`` at a time.

    A sale's line links to its (first) reversal: link_terminal, link_seq, link_at_ms and
    link_time; a reversal's line links back to its sale. A sale's amount_fen is its amount,
    a reversal's is minus the sale's (0 for a second reversal of one sale, which undoes
    nothing more), so the amounts of the detail add up to the summary's net.

    Two streams in the same order, merged here: the period's sales, and the reversals of
    those sales (``_reversals_of_sales``). One outer join of the sales to their reversals
    took SQLite minutes for a month: it searched every entry of each sale's terminal."""
    zone = period.dates.zone
    e = entries.c
    sales_query = (
        select(
            e.at_ms,
            e.canteen,
            e.terminal,
            e.seq,
            e.cadre,
            e.unit,
            e.method,
            e.day,
            e.meal,
            e.amount_fen,
            e.detail,
            e.hash,
        )
        .where(*_accepted_sales(period))
        .order_by(e.at_ms, e.terminal, e.seq)
        .execution_options(yield_per=batch_rows)
    )
    reversals = iter(conn.execute(*_reversals_of_sales(conn, period, batch_rows)))
    waiting = next(reversals, None)
    for row in conn.execute(sales_query):
        (at_ms, canteen, terminal, seq, cadre, unit, method, day, meal, amount) = row[:10]
        detail, sale_hash = row[10:]
        # The reversals of this sale: the next ones of their stream (the same order, and
        # every one of them names a sale of the first stream).
        mine: list[tuple[int, int, bytes]] = []
        while waiting is not None and (waiting[0], waiting[1]) == (terminal, seq):
            mine.append((int(waiting[2]), int(waiting[3]), bytes(waiting[4])))
            waiting = next(reversals, None)
        tier = _tier(detail)
        first = mine[0] if mine else None
        sale: dict[str, Any] = {
            "row": DETAIL_SALE,
            "local_time": local_text(at_ms, zone),
            "at_ms": at_ms,
            "canteen": canteen,
            "operator": directory.operator_of(canteen),
            "terminal": terminal,
            "seq": seq,
            "cadre": cadre,
            "agency": unit,
            "agency_name": directory.name_of(unit),
            "method": method,
            "day": day,
            "meal": meal,
            "tier": tier,
            "tier_zh": TIER_NAMES_ZH.get(tier or ""),
            "amount_fen": int(amount),
            "link_terminal": None if first is None else terminal,
            "link_seq": None if first is None else first[0],
            "link_at_ms": None if first is None else first[1],
            "link_time": None if first is None else local_text(first[1], zone),
            "hash": bytes(sale_hash).hex(),
        }
        yield sale
        for nth, (rev_seq, rev_at_ms, rev_hash) in enumerate(mine):
            yield {
                **sale,
                "row": DETAIL_REVERSAL,
                "local_time": local_text(rev_at_ms, zone),
                "at_ms": rev_at_ms,
                "seq": rev_seq,
                # A sale is reversed once (as the summary counts it): a second reversal
                # of it is listed, as evidence, and moves nothing.
                "amount_fen": -sale["amount_fen"] if nth == 0 else 0,
                "link_terminal": terminal,
                "link_seq": seq,
                "link_at_ms": sale["at_ms"],
                "link_time": sale["local_time"],
                "hash": rev_hash.hex(),
            }
    if waiting is not None:
        # Both streams come from one transaction with one order: a reversal left over
        # means they disagreed, and the detail would silently lack it.
        raise RuntimeError(
            f"settlement detail: reversal {waiting[2]} of {waiting[0]}/{waiting[1]} out of "
            "order with its sale"
        )


def level_zh(level: str | None) -> str:
    """A level's Chinese name, "未登记" for a payer or operator the directory lacks."""
    return LEVEL_NAMES_ZH.get(level or "", "未登记")


def display(line: dict[str, Any]) -> dict[str, Any]:
    """A summary or detail line for people (CSV, XLSX): the row kind, levels and tier in
    Chinese; money stays integer fen (county/exports.py shows it as yuan)."""
    out = dict(line)
    kind = line.get("row")
    out["row"] = ROW_NAMES_ZH.get(kind or "") or DETAIL_NAMES_ZH.get(kind or "", kind)
    for key in ("payer_level", "operator_level"):
        if key in line:
            out[key] = level_zh(line[key])
    if kind in (DETAIL_SALE, DETAIL_REVERSAL):
        out["tier"] = line.get("tier_zh") or line.get("tier") or ""
    return out


def period_label(dates: DateRange) -> str:
    """``2026-05-01..2026-05-31`` of a range."""
    return f"{dates.first.isoformat()}..{dates.last.isoformat()}"


__all__ = [
    "DETAIL_REVERSAL",
    "DETAIL_SALE",
    "GRAND_TOTAL",
    "LEVEL_PAIR_TOTAL",
    "OPERATOR_TOTAL",
    "PAYER",
    "Period",
    "SettlementError",
    "check_filters",
    "display",
    "iter_detail",
    "level_zh",
    "period_label",
    "summary",
]
