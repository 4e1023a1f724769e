"""canteen-county settlement: a period's summary and detail as JSON lines, CSV or XLSX.

This module only parses the command's arguments, checks them before anything is read or
written, opens the county database, and hands the lines of county/settlement.py to
county/exports.py. Bad input (a date, --from after --to, a time zone, a format, XLSX
without --out, an unknown canteen or agency) is one line on standard error with exit
status 2, and nothing is written to --out; a file is written whole or not at all. The
rules of the settlement and the columns are in docs/settlement.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from county import exports
from county.command import (
    PROG,
    CommandError,
    add_data,
    add_database,
    now_ms,
    one_line_errors,
    store_url,
)
from county.db import DatabaseError
from county.directory import load_directory
from county.errors import StoreError
from county.exports import Column, ExportError, Table
from county.localtime import (
    DateRange,
    LocalTimeError,
    add_timezone_option,
    county_zone,
    local_text,
    midnight_ms,
    parse_date,
)
from county.settlement import (
    GRAND_TOTAL,
    Period,
    SettlementError,
    check_filters,
    display,
    iter_detail,
    period_label,
    summary,
)

SUMMARY_TITLE = "结算汇总"
DETAIL_TITLE = "结算明细"
ABOUT_TITLE = "说明"

SUMMARY_COLUMNS = (
    Column("row", "类型", width=14),
    Column("payer_agency", "结算单位代码", width=14),
    Column("payer_name", "结算单位", width=24),
    Column("payer_level", "结算单位级别"),
    Column("canteen", "食堂代码", width=14),
    Column("canteen_name", "食堂", width=24),
    Column("operator", "运营单位代码", width=14),
    Column("operator_name", "运营单位", width=24),
    Column("operator_level", "运营单位级别"),
    Column("sales", "消费笔数"),
    Column("reversals", "冲正笔数"),
    Column("meals", "餐次"),
    Column("gross_fen", "消费金额(元)", money=True, width=16),
    Column("reversed_fen", "冲正金额(元)", money=True, width=16),
    Column("net_fen", "结算金额(元)", money=True, width=16),
)

DETAIL_COLUMNS = (
    Column("row", "类型"),
    Column("local_time", "时间", width=20),
    Column("canteen", "食堂代码", width=14),
    Column("operator", "运营单位代码", width=14),
    Column("terminal", "终端", width=14),
    Column("seq", "流水号"),
    Column("cadre", "就餐人员", width=24),
    Column("agency", "结算单位代码", width=14),
    Column("agency_name", "结算单位", width=24),
    Column("method", "支付方式"),
    Column("day", "服务日", width=12),
    Column("meal", "餐别"),
    Column("tier", "价格档"),
    Column("amount_fen", "金额(元)", money=True, width=14),
    Column("link_terminal", "关联终端", width=14),
    Column("link_seq", "关联流水号"),
    Column("link_time", "关联时间", width=20),
    Column("hash", "记录哈希", width=66),
)

ABOUT_COLUMNS = (Column("item", "项目", width=16), Column("value", "内容", width=40))

_one_line_errors = one_line_errors(
    CommandError, DatabaseError, StoreError, ExportError, LocalTimeError, SettlementError
)


def _period(a: argparse.Namespace) -> Period:
    for name in ("canteen", "agency"):
        value = getattr(a, name)
        try:
            if value is not None:
                value.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(f"--{name} {value!r}: not UTF-8 text") from None
    zone = county_zone(a.timezone)
    dates = DateRange.parse(a.date_from, a.date_to, zone)
    received_before = None
    if a.as_of is not None:
        as_of = parse_date(a.as_of, "--as-of")
        if as_of < dates.last:
            raise LocalTimeError(f"--as-of {as_of} is before --to {dates.last}")
        received_before = midnight_ms(as_of, zone) + 86_400_000
    return Period(dates, a.canteen, a.agency, received_before)


def _about(a: argparse.Namespace, period: Period, made_ms: int) -> list[dict[str, Any]]:
    zone = period.dates.zone
    return [
        {"item": "结算期间", "value": period_label(period.dates)},
        {"item": "时区", "value": str(zone)},
        {"item": "食堂", "value": a.canteen or "全部"},
        {"item": "结算单位", "value": a.agency or "全部"},
        {"item": "截至接收日", "value": a.as_of or "全部已接收"},
        {"item": "生成时间", "value": local_text(made_ms, zone)},
    ]


@_one_line_errors
def cmd_settlement(a: argparse.Namespace) -> int:
    period = _period(a)
    exports.check_output(a.format, a.out)
    made_ms = now_ms()
    from county.store import CountyStore

    store = CountyStore(store_url(a))
    try:
        with store.db.read() as conn:
            directory = load_directory(conn)
            check_filters(conn, period, directory)
            lines = summary(conn, period, directory)
            detail = iter_detail(conn, period, directory) if a.detail else None
            tables = _tables(a, period, lines, detail, made_ms)
            try:
                written = exports.write_tables(tables, a.format, a.out)
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise ExportError(f"cannot write {a.out}: {exc.strerror or exc}") from None
    finally:
        store.close()
    grand = lines[-1]
    assert grand["row"] == GRAND_TOTAL
    if grand["sales"] == 0:
        print(
            f"{PROG}: warning: no accepted sales in {period_label(period.dates)}"
            + (f" at canteen {a.canteen}" if a.canteen else "")
            + (f" by agency {a.agency}" if a.agency else ""),
            file=sys.stderr,
        )
    if a.out is not None and a.out != "-":
        print(
            f"settlement {period_label(period.dates)}: {written} rows written to {a.out}",
            file=sys.stderr,
        )
    return 0


def _tables(
    a: argparse.Namespace,
    period: Period,
    lines: list[dict[str, Any]],
    detail: Any,
    made_ms: int,
) -> list[Table]:
    """What each format gets: JSON lines every line (a first "period" line, the summary,
    the detail when asked); CSV one table (the detail with --detail, else the summary);
    XLSX the summary, the detail when asked, and a sheet saying what was settled."""
    if a.format == "json":
        head = {
            "row": "period",
            "from": period.dates.first.isoformat(),
            "to": period.dates.last.isoformat(),
            "timezone": str(period.dates.zone),
            "canteen": a.canteen,
            "agency": a.agency,
            "as_of": a.as_of,
            "made_ms": made_ms,
        }
        tables = [Table("period", (), [head]), Table("summary", SUMMARY_COLUMNS, lines)]
        if detail is not None:
            tables.append(Table("detail", DETAIL_COLUMNS, detail))
        return tables
    shown_summary = Table(SUMMARY_TITLE, SUMMARY_COLUMNS, (display(x) for x in lines))
    shown_detail = (
        None if detail is None else Table(DETAIL_TITLE, DETAIL_COLUMNS, map(display, detail))
    )
    if a.format == "csv":
        return [shown_detail if shown_detail is not None else shown_summary]
    tables = [shown_summary]
    if shown_detail is not None:
        tables.append(shown_detail)
    tables.append(Table(ABOUT_TITLE, ABOUT_COLUMNS, _about(a, period, made_ms)))
    return tables


def add_settlement_commands(sub: Any) -> None:
    """Register 'settlement' on the county CLI's subparsers."""
    p = sub.add_parser(
        "settlement",
        help="who owes which canteen for a period's meals: summary and detail "
        "(json lines, csv or xlsx)",
        description="Settle the accepted sales of the local dates FROM..TO (both included): "
        "one row per payer agency and canteen with meals, gross, reversed and net, "
        "subtotals per canteen operator and per level pair, and with --detail every sale "
        "and reversal. A sale belongs to the period of its own time; its reversal counts "
        "against it whenever made. See docs/settlement.md.",
    )
    p.add_argument("--from", dest="date_from", required=True, metavar="DATE", help="YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", required=True, metavar="DATE", help="YYYY-MM-DD")
    p.add_argument("--canteen", metavar="ID", help="only this canteen's sales")
    p.add_argument("--agency", metavar="ID", help="only the sales this payer agency owes")
    p.add_argument(
        "--format",
        default="json",
        metavar="|".join(exports.FORMATS),
        help="json lines (default), csv (one table: the detail with --detail, else the "
        "summary) or xlsx (needs --out)",
    )
    p.add_argument(
        "--out", metavar="FILE", help="write here (whole or not at all) instead of stdout"
    )
    p.add_argument("--detail", action="store_true", help="also every sale and reversal")
    p.add_argument(
        "--as-of",
        metavar="DATE",
        help="only what the county had received by the end of this local date: re-run a "
        "closed month as it was issued (default: everything received)",
    )
    add_timezone_option(p)
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_settlement)
