"""Settlement (issue 15): the summary and detail of a period, on SQLite and PostgreSQL
(conftest's `county_db_url`).

Entries are written straight into the entries table by ``put`` (well-formed rows as
intake stores them; intake itself is tested elsewhere), with a small directory of a
city, two counties and a township imported through county/directory.py.

What is checked: a hypothesis property (for any mix of sales, refusals, reversals,
duplicate reversals, tiers and date ranges, the totals are the accepted sales minus the
reversed ones of the range, every sale lands in exactly one row and once in the detail,
the subtotals add up to the grand total); periods across local midnight; a late reversal
counts in the sale's month, and --as-of re-runs the month as the county had it; the
XLSX read back (Chinese headers, numeric yuan with #,##0.00); CSV and JSON lines; --out
written whole or not at all; bad input one line with exit status 2; the summary answered
from entries_sales_at.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import tracemalloc
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, delete, event, insert

from county import exports, settlement
from county.cli import main as county_main
from county.db.schema import entries
from county.directory import load_directory, replace_agencies, replace_canteens
from county.localtime import DateRange, LocalTimeError, county_zone
from county.store import CountyStore
from protocol.agencies import parse_agencies_csv, parse_canteens_csv
from protocol.chain import ACCEPT, REJECT, REVERSAL, SALE

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
NOW_MS = 1_780_000_000_000
DAY_MS = 86_400_000

AGENCIES = """code,name,level,parent,finance_account
city1,临川市人民政府,city,,6222000001
cty1,临川县人民政府,county,city1,6222000002
cty1-fin,临川县财政局,county,cty1,6222000003
cty2,东乡县人民政府,county,city1,6222000004
town1,上顿渡镇人民政府,township,cty1,6222000005
"""
CANTEENS = """canteen,name,operator
c1,县政府机关食堂,cty1
c2,东乡县机关食堂,cty2
"""
# Terminals and the canteen each serves.
TERMINALS = {"t1": "c1", "t2": "c1", "t3": "c2"}
UNITS = ("city1", "cty1", "cty1-fin", "cty2", "town1", "nowhere9")


def local_ms(day: str, hour: int, minute: int = 0, second: int = 0, ms: int = 0) -> int:
    d = dt.date.fromisoformat(day)
    when = dt.datetime(d.year, d.month, d.day, hour, minute, second, ms * 1000, tzinfo=SHANGHAI)
    return int(when.timestamp() * 1000)


class Ledger:
    """Writes well-formed entries into the entries table, each terminal's seq in order."""

    def __init__(self, conn: Connection, buffered: bool = False) -> None:
        self.conn = conn
        self.seqs: dict[str, int] = {}
        # With buffered, rows wait for flush(): one executemany instead of a round trip each.
        self.buffer: list[dict[str, Any]] | None = [] if buffered else None

    def flush(self) -> None:
        if self.buffer:
            self.conn.execute(insert(entries), self.buffer)
            self.buffer.clear()

    def put(
        self,
        terminal: str,
        *,
        kind: str = SALE,
        verdict: str | None = ACCEPT,
        at_ms: int,
        unit: str | None = "cty1",
        amount_fen: int = 1200,
        ref_seq: int | None = None,
        tier: str | None = None,
        received_ms: int | None = None,
        method: str = "qr",
    ) -> int:
        seq = self.seqs.get(terminal, 0) + 1
        self.seqs[terminal] = seq
        detail: dict[str, Any] = {"tier": tier} if tier else {}
        if kind == REVERSAL:
            detail = {"staff": "s1"}
        digest = hashlib.sha256(f"{terminal}/{seq}".encode()).digest()
        row = {
            "terminal": terminal,
            "canteen": TERMINALS[terminal],
            "seq": seq,
            "entry_id": f"{terminal}-{seq}",
            "at_ms": at_ms,
            "kind": kind,
            "verdict": verdict,
            "reason": "replayed" if verdict == REJECT else None,
            "method": method,
            "cadre": f"iss-a/cadre-{seq % 7}",
            "credential": f"qr/iss-a/{seq:016x}",
            "ctr": 1,
            "unit": unit,
            "day": dt.datetime.fromtimestamp(at_ms / 1000, SHANGHAI).date().isoformat(),
            "meal": "lunch",
            "amount_fen": amount_fen,
            "ref_seq": ref_seq,
            "detail": json.dumps(detail),
            "prev_hash": b"\0" * 32,
            "hash": digest,
            "received_ms": received_ms if received_ms is not None else at_ms + 60_000,
        }
        if self.buffer is not None:
            self.buffer.append(row)
        else:
            self.conn.execute(insert(entries), row)
        return seq


@pytest.fixture
def db_url(county_db_url: str) -> Iterator[str]:
    """A county database (each backend) with the directory imported and no entries."""
    store = CountyStore(county_db_url)
    try:
        with store.db.write() as conn:
            directory = parse_agencies_csv(AGENCIES)
            replace_agencies(conn, directory, NOW_MS)
            replace_canteens(conn, parse_canteens_csv(CANTEENS, directory), NOW_MS)
    finally:
        store.close()
    yield county_db_url


@pytest.fixture
def store(db_url: str) -> Iterator[CountyStore]:
    """The county store of ``db_url``, open for the whole test (every hypothesis example)."""
    opened = CountyStore(db_url)
    yield opened
    opened.close()


def _settle(
    store: CountyStore, period: settlement.Period
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with store.db.read() as conn:
        directory = load_directory(conn)
        lines = settlement.summary(conn, period, directory)
        detail = list(settlement.iter_detail(conn, period, directory, batch_rows=7))
    return lines, detail


def _run(url: str, *args: str) -> int:
    return county_main(["settlement", "--database", url, *args])


# -- the property ------------------------------------------------------------------------

DAYS = ("2026-05-30", "2026-05-31", "2026-06-01", "2026-06-02")
_sale = st.fixed_dictionaries(
    {
        "terminal": st.sampled_from(sorted(TERMINALS)),
        "day": st.integers(0, len(DAYS) - 1),
        # Minutes of the local day, with the last minutes before and after midnight likely.
        "minute": st.one_of(st.integers(0, 1439), st.sampled_from([0, 1, 1438, 1439])),
        "unit": st.sampled_from(UNITS),
        "amount_fen": st.integers(1, 500_000),
        "accepted": st.booleans(),
        "reversals": st.sampled_from([0, 0, 0, 1, 1, 2]),
        "reversal_days_later": st.integers(0, 40),
        "tier": st.sampled_from([None, "own", "same_level", "higher_level", "unlisted"]),
    }
)


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sales=st.lists(_sale, max_size=25),
    first=st.integers(0, len(DAYS) - 1),
    span=st.integers(0, len(DAYS) - 1),
    canteen=st.sampled_from([None, "c1", "c2"]),
    agency=st.sampled_from([None, "cty1", "nowhere9"]),
)
def test_totals_are_accepted_sales_minus_reversals(
    store: CountyStore,
    sales: list[dict[str, Any]],
    first: int,
    span: int,
    canteen: str | None,
    agency: str | None,
) -> None:
    made: list[dict[str, Any]] = []
    with store.db.write() as conn:
        conn.execute(delete(entries))
        book = Ledger(conn)
        for s in sales:
            at = local_ms(DAYS[s["day"]], 0) + s["minute"] * 60_000
            seq = book.put(
                s["terminal"],
                verdict=ACCEPT if s["accepted"] else REJECT,
                at_ms=at,
                unit=s["unit"],
                amount_fen=s["amount_fen"],
                tier=s["tier"],
            )
            made.append({**s, "seq": seq, "at_ms": at})
        for m in made:
            if not m["accepted"]:
                continue
            for _ in range(m["reversals"]):
                book.put(
                    m["terminal"],
                    kind=REVERSAL,
                    verdict=None,
                    at_ms=m["at_ms"] + m["reversal_days_later"] * DAY_MS,
                    unit=m["unit"],
                    amount_fen=m["amount_fen"],
                    ref_seq=m["seq"],
                )
    last = min(first + span, len(DAYS) - 1)
    dates = DateRange.parse(DAYS[first], DAYS[last], SHANGHAI)
    period = settlement.Period(dates, canteen, agency)
    lines, detail = _settle(store, period)

    expected = [
        m
        for m in made
        if m["accepted"]
        and dates.start_ms <= m["at_ms"] < dates.end_ms
        and canteen in (None, TERMINALS[m["terminal"]])
        and agency in (None, m["unit"])
    ]
    gross = sum(m["amount_fen"] for m in expected)
    reversed_fen = sum(m["amount_fen"] for m in expected if m["reversals"])
    grand = lines[-1]
    assert grand["row"] == settlement.GRAND_TOTAL
    assert grand["sales"] == len(expected)
    assert grand["gross_fen"] == gross
    assert grand["reversed_fen"] == reversed_fen
    assert grand["net_fen"] == gross - reversed_fen
    assert grand["meals"] == sum(1 for m in expected if not m["reversals"])

    # Every sale in exactly one (payer, canteen) row: the rows are distinct pairs and
    # each row holds exactly the sales of its pair.
    rows = [x for x in lines if x["row"] == settlement.PAYER]
    pairs = [(x["payer_agency"], x["canteen"]) for x in rows]
    assert len(pairs) == len(set(pairs))
    for x in rows:
        mine = [
            m for m in expected if (m["unit"], TERMINALS[m["terminal"]]) == pairs[rows.index(x)]
        ]
        assert x["sales"] == len(mine) > 0
        assert x["net_fen"] == sum(m["amount_fen"] for m in mine if not m["reversals"])
    for kind in (settlement.OPERATOR_TOTAL, settlement.LEVEL_PAIR_TOTAL):
        for name in ("sales", "gross_fen", "reversed_fen", "net_fen", "meals"):
            assert sum(x[name] for x in lines if x["row"] == kind) == grand[name]

    # The detail: each sale once, each of its reversals after it, amounts adding to net.
    sold = [(x["terminal"], x["seq"]) for x in detail if x["row"] == settlement.DETAIL_SALE]
    assert sorted(sold) == sorted((m["terminal"], m["seq"]) for m in expected)
    reversals = [x for x in detail if x["row"] == settlement.DETAIL_REVERSAL]
    assert len(reversals) == sum(m["reversals"] for m in expected)
    # Two reversals of one sale undo it once: the second (a duplicate) moves nothing,
    # so the detail's amounts add up to the net.
    assert sum(x["amount_fen"] for x in detail) == grand["net_fen"]
    tiers = {(m["terminal"], m["seq"]): m["tier"] for m in expected}
    for x in detail:
        if x["row"] == settlement.DETAIL_SALE:
            assert x["tier"] == tiers[(x["terminal"], x["seq"])]


# -- periods, reversals, as-of -----------------------------------------------------------


def _fill(url: str, fill: Any) -> None:
    store = CountyStore(url)
    try:
        with store.db.write() as conn:
            fill(Ledger(conn))
    finally:
        store.close()


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_local_midnight_and_late_reversal(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    june_10 = local_ms("2026-06-10", 12)

    def fill(book: Ledger) -> None:
        # 23:30 on May 31 in Beijing is 15:30 UTC: May, whatever UTC says.
        late = book.put(
            "t1", at_ms=local_ms("2026-05-31", 23, 30), unit="city1", tier="higher_level"
        )
        book.put("t1", at_ms=local_ms("2026-05-31", 23, 59, 59, 999), unit="city1")
        book.put("t1", at_ms=local_ms("2026-06-01", 0), unit="city1", amount_fen=700)
        # A May sale reversed on June 10, received then.
        book.put(
            "t1",
            kind=REVERSAL,
            verdict=None,
            at_ms=june_10,
            unit="city1",
            ref_seq=late,
            received_ms=june_10,
        )
        # A refusal in May moves no money.
        book.put("t3", verdict=REJECT, at_ms=local_ms("2026-05-20", 12), unit="cty1")

    _fill(db_url, fill)
    assert _run(db_url, "--from", "2026-05-01", "--to", "2026-05-31") == 0
    may = _json_lines(capsys.readouterr().out)
    assert may[0]["row"] == "period" and may[0]["timezone"] == "Asia/Shanghai"
    rows = [x for x in may if x["row"] == "payer"]
    assert [(x["payer_agency"], x["canteen"], x["operator"]) for x in rows] == [
        ("city1", "c1", "cty1")
    ]
    assert rows[0] | {"payer_name": "临川市人民政府", "payer_level": "city"} == rows[0]
    assert (rows[0]["sales"], rows[0]["reversals"], rows[0]["meals"]) == (2, 1, 1)
    assert (rows[0]["gross_fen"], rows[0]["reversed_fen"], rows[0]["net_fen"]) == (2400, 1200, 1200)
    pair = [x for x in may if x["row"] == "level_pair_total"]
    assert [(x["payer_level"], x["operator_level"], x["net_fen"]) for x in pair] == [
        ("city", "county", 1200)
    ]
    # The same month re-run as the county had it on June 5: the reversal not yet there.
    assert _run(db_url, "--from", "2026-05-01", "--to", "2026-05-31", "--as-of", "2026-06-05") == 0
    as_issued = _json_lines(capsys.readouterr().out)[-1]
    assert (as_issued["reversed_fen"], as_issued["net_fen"]) == (0, 2400)
    # June holds the 00:00 sale only, not the May sale's reversal.
    assert _run(db_url, "--from", "2026-06-01", "--to", "2026-06-30", "--detail") == 0
    june = _json_lines(capsys.readouterr().out)
    assert june[-1]["row"] == "sale" and june[-1]["local_time"] == "2026-06-01 00:00:00"
    total = next(x for x in june if x["row"] == "grand_total")
    assert (total["sales"], total["reversed_fen"], total["net_fen"]) == (1, 0, 700)
    # In UTC the sale at 00:00 on June 1 in Beijing (16:00 UTC) is a May sale.
    assert _run(db_url, "--from", "2026-06-01", "--to", "2026-06-30", "--timezone", "UTC") == 0
    assert _json_lines(capsys.readouterr().out)[-1]["sales"] == 0
    assert _run(db_url, "--from", "2026-05-31", "--to", "2026-05-31", "--timezone", "UTC") == 0
    assert _json_lines(capsys.readouterr().out)[-1]["sales"] == 3


def test_detail_links_sale_and_reversal(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    at = local_ms("2026-05-12", 12, 5)

    def fill(book: Ledger) -> None:
        book.put("t2", at_ms=at, unit="town1", tier="lower_level", amount_fen=1550)
        book.put(
            "t2",
            kind=REVERSAL,
            verdict=None,
            at_ms=at + 90_000,
            unit="town1",
            amount_fen=1550,
            ref_seq=1,
        )
        book.put("t3", at_ms=at, unit="nowhere9", method="card")

    _fill(db_url, fill)
    assert _run(db_url, "--from", "2026-05-12", "--to", "2026-05-12", "--detail") == 0
    lines = _json_lines(capsys.readouterr().out)
    detail = [x for x in lines if x["row"] in ("sale", "reversal")]
    sale, rev, other = detail
    assert sale["row"] == "sale" and sale["terminal"] == "t2" and sale["seq"] == 1
    assert sale["local_time"] == "2026-05-12 12:05:00" and sale["tier"] == "lower_level"
    assert (sale["link_terminal"], sale["link_seq"], sale["link_time"]) == (
        "t2",
        2,
        "2026-05-12 12:06:30",
    )
    assert sale["hash"] == hashlib.sha256(b"t2/1").hexdigest()
    assert rev["row"] == "reversal" and rev["amount_fen"] == -1550
    assert (rev["link_terminal"], rev["link_seq"], rev["link_time"]) == (
        "t2",
        1,
        sale["local_time"],
    )
    assert rev["hash"] == hashlib.sha256(b"t2/2").hexdigest()
    # A unit the directory lacks still gets its row, with no name; no tier is guessed.
    assert other["agency"] == "nowhere9" and other["agency_name"] is None
    assert other["tier"] is None and other["method"] == "card"
    unlisted = [x for x in lines if x["row"] == "payer" and x["payer_agency"] == "nowhere9"]
    assert unlisted[0]["payer_level"] is None and unlisted[0]["operator"] == "cty2"


# -- formats -----------------------------------------------------------------------------


def _three_sales(book: Ledger) -> None:
    book.put("t1", at_ms=local_ms("2026-05-02", 12), unit="city1", amount_fen=123_456)
    book.put("t1", at_ms=local_ms("2026-05-02", 12, 1), unit="cty1-fin", amount_fen=1205)
    book.put("t3", at_ms=local_ms("2026-05-03", 18), unit="cty1", amount_fen=5)
    book.put(
        "t3",
        kind=REVERSAL,
        verdict=None,
        at_ms=local_ms("2026-05-03", 18, 2),
        unit="cty1",
        amount_fen=5,
        ref_seq=1,
    )


def test_xlsx_read_back(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(db_url, _three_sales)
    out = tmp_path / "may.xlsx"
    assert (
        _run(
            db_url,
            "--from",
            "2026-05-01",
            "--to",
            "2026-05-31",
            "--format",
            "xlsx",
            "--out",
            str(out),
            "--detail",
        )
        == 0
    )
    assert "written to" in capsys.readouterr().err
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["结算汇总", "结算明细", "说明"]
    ws = wb["结算汇总"]
    header = [c.value for c in ws[1]]
    for zh in ("结算单位", "食堂", "运营单位", "餐次", "结算金额(元)"):
        assert zh in header
    rows = [dict(zip(header, (c for c in r), strict=True)) for r in ws.iter_rows(min_row=2)]
    city = next(r for r in rows if r["结算单位代码"].value == "city1")
    assert city["结算单位"].value == "临川市人民政府" and city["结算单位级别"].value == "市级"
    assert city["消费金额(元)"].value == pytest.approx(1234.56)
    assert isinstance(city["消费金额(元)"].value, float | int)
    assert city["消费金额(元)"].number_format == "#,##0.00"
    assert city["餐次"].value == 1
    total = rows[-1]
    assert total["类型"].value == "合计"
    assert total["结算金额(元)"].value == pytest.approx(1246.61)
    assert total["冲正金额(元)"].value == pytest.approx(0.05)
    detail = wb["结算明细"]
    dheader = [c.value for c in detail[1]]
    assert dheader[:3] == ["类型", "时间", "食堂代码"] and "金额(元)" in dheader
    kinds = [r[0].value for r in detail.iter_rows(min_row=2)]
    assert kinds == ["消费", "消费", "消费", "冲正"]
    amounts = [r[dheader.index("金额(元)")] for r in detail.iter_rows(min_row=2)]
    assert [a.value for a in amounts] == pytest.approx([1234.56, 12.05, 0.05, -0.05])
    assert {a.number_format for a in amounts} == {"#,##0.00"}


def test_csv_and_json(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(db_url, _three_sales)
    assert _run(db_url, "--from", "2026-05-01", "--to", "2026-05-31", "--format", "csv") == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["类型"] for r in table] == [
        "结算明细",
        "结算明细",
        "运营单位小计",
        "结算明细",
        "运营单位小计",
        "级别小计",
        "级别小计",
        "合计",
    ]
    assert table[0]["消费金额(元)"] == "1234.56" and table[-1]["结算金额(元)"] == "1246.61"
    out = tmp_path / "detail.csv"
    assert (
        _run(
            db_url,
            "--from",
            "2026-05-01",
            "--to",
            "2026-05-31",
            "--format",
            "csv",
            "--detail",
            "--out",
            str(out),
        )
        == 0
    )
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel reads the Chinese as UTF-8
    detail = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["金额(元)"] for r in detail] == ["1234.56", "12.05", "0.05", "-0.05"]
    assert detail[3]["类型"] == "冲正" and detail[3]["关联流水号"] == "1"
    # JSON lines: money in integer fen, the keys scripts read.
    capsys.readouterr()
    assert _run(db_url, "--from", "2026-05-01", "--to", "2026-05-31", "--agency", "cty1") == 0
    lines = _json_lines(capsys.readouterr().out)
    (row,) = [x for x in lines if x["row"] == "payer"]
    for key in (
        "payer_agency",
        "canteen",
        "operator",
        "meals",
        "gross_fen",
        "reversed_fen",
        "net_fen",
    ):
        assert key in row
    assert (row["payer_agency"], row["canteen"], row["operator"], row["meals"]) == (
        "cty1",
        "c2",
        "cty2",
        0,
    )
    assert (row["gross_fen"], row["reversed_fen"], row["net_fen"]) == (5, 5, 0)


def test_out_is_whole_or_absent(tmp_path: Path) -> None:
    out = tmp_path / "report.xlsx"
    out.write_bytes(b"the old report")

    def rows() -> Iterator[dict[str, Any]]:
        yield {"a": "x", "f": 100}
        raise RuntimeError("the database stopped answering")

    cols = [exports.Column("a", "单位"), exports.Column("f", "金额(元)", money=True)]
    for fmt in ("xlsx", "csv", "json"):
        with pytest.raises(RuntimeError):
            exports.write_rows(rows(), cols, fmt, out)
        assert out.read_bytes() == b"the old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.xlsx"]


def test_xlsx_continues_past_the_row_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exports, "XLSX_MAX_ROWS", 3)
    cols = [exports.Column("n", "序号")]
    out = tmp_path / "long.xlsx"
    assert exports.write_rows(({"n": i} for i in range(5)), cols, "xlsx", out, "明细") == 5
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["明细", "明细 (2)", "明细 (3)"]
    assert [[c.value for c in r] for r in wb["明细 (2)"].iter_rows()] == [["序号"], [2], [3]]


def test_yuan_is_exact() -> None:
    assert [exports.yuan_text(f) for f in (0, 5, -5, 100, 123_456, -100_001)] == [
        "0.00",
        "0.05",
        "-0.05",
        "1.00",
        "1234.56",
        "-1000.01",
    ]
    assert str(exports.yuan(2**62 + 1)) == "46116860184273879.05"


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "2026-5-1", "--to", "2026-05-31"], "--from '2026-5-1': expected a date"),
        (["--from", "2026-05-01", "--to", "2026-02-30"], "--to '2026-02-30'"),
        (["--from", "2026-06-01", "--to", "2026-05-31"], "--from 2026-06-01 is after --to"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--timezone", "Mars/Base"], "Mars/Base"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--format", "pdf"], "format 'pdf'"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--format", "xlsx"], "--out FILE"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--canteen", "c9"], "--canteen 'c9'"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--agency", "zz"], "--agency 'zz'"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--as-of", "2026-05-30"], "--as-of"),
    ],
)
def test_bad_input_is_one_line(
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    out = tmp_path / "out.file"
    extra = [] if "--format" in args and "xlsx" in args else ["--out", str(out)]
    assert _run(db_url, *args, *extra) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and says in captured.err, captured.err
    assert captured.err.startswith("canteen-county: error: ")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "county-db") == []


def test_known_filter_without_sales_warns(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # c2 is in the directory and cty2 is an agency: no sales is an empty settlement.
    assert (
        _run(
            db_url,
            "--from",
            "2026-05-01",
            "--to",
            "2026-05-31",
            "--canteen",
            "c2",
            "--agency",
            "cty2",
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "warning: no accepted sales" in captured.err
    lines = _json_lines(captured.out)
    assert [x["row"] for x in lines] == ["period", "grand_total"]
    assert lines[-1]["net_fen"] == 0


def test_missing_out_folder(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such.csv"
    assert _run(db_url, "--from", "2026-05-01", "--to", "2026-05-31", "--out", str(out)) == 2
    assert "no such folder" in capsys.readouterr().err


def test_zone_errors_and_ranges() -> None:
    with pytest.raises(LocalTimeError):
        county_zone("")
    r = DateRange.parse("2026-05-01", "2026-05-31", county_zone("Asia/Shanghai"))
    assert (r.end_ms - r.start_ms) == 31 * DAY_MS
    assert r.start_ms == local_ms("2026-05-01", 0)
    # A day with a daylight-saving change is 23 hours long where the zone says so.
    ny = DateRange.parse("2026-03-08", "2026-03-08", county_zone("America/New_York"))
    assert ny.end_ms - ny.start_ms == 23 * 3_600_000


# -- volume ------------------------------------------------------------------------------


def test_summary_and_detail_read_the_indexes(store: CountyStore) -> None:
    """The summary's two grouped queries find the period's sales through a partial index of
    accepted sales by time, entries_sales_at or entries_sales_cadre (migration 0006; on a few
    rows the planner may take either), or, for the reversed ones, through entries_reversals;
    the detail's reversals come from entries_reversals, each sale looked up by its whole
    primary key, never by its terminal alone (every entry of the terminal, for every sale:
    minutes for a month). Nothing scans the table. On PostgreSQL sequential scans are turned
    off for the EXPLAIN: on a few rows the planner rightly prefers one, and the question is
    which index the query can use."""
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if "FROM entries" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, params))

    period = settlement.Period(DateRange.parse("2026-05-01", "2026-05-31", SHANGHAI))
    plans: list[str] = []
    with store.db.read() as conn:
        directory = load_directory(conn)
        event.listen(conn, "before_cursor_execute", seen)
        settlement.summary(conn, period, directory)
        list(settlement.iter_detail(conn, period, directory))
        event.remove(conn, "before_cursor_execute", seen)
        postgresql = conn.dialect.name == "postgresql"
        if postgresql:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, params in statements:
            explain = "EXPLAIN " if postgresql else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, params).all()
            plans.append(" | ".join(str(row[-1]) for row in rows))
    assert len(plans) == 4, plans
    sales_plan, reversed_plan, detail_reversals_plan, detail_sales_plan = plans

    def by_time(plan: str) -> bool:
        return "entries_sales_at" in plan or "entries_sales_cadre" in plan

    assert by_time(sales_plan), sales_plan
    assert by_time(reversed_plan) or "entries_reversals" in reversed_plan, reversed_plan
    assert "entries_reversals" in detail_reversals_plan or by_time(detail_reversals_plan), (
        detail_reversals_plan
    )
    assert "entries_at_ms" in detail_sales_plan or by_time(detail_sales_plan), detail_sales_plan
    for plan in plans:
        assert "Seq Scan on entries" not in plan, plan
        assert "SCAN entries" not in plan.replace("SCAN entries USING", ""), plan
        assert "PRIMARY KEY (terminal=?)" not in plan, plan


def test_detail_streams(store: CountyStore) -> None:
    """The detail is read a batch at a time: the most memory Python holds while the rows
    go by is a fraction of what the whole list of them takes."""
    start = local_ms("2026-05-10", 11)
    with store.db.write() as conn:
        conn.execute(delete(entries))
        book = Ledger(conn, buffered=True)
        for i in range(1200):
            seq = book.put(f"t{1 + i % 3}", at_ms=start + i * 1000, unit=UNITS[i % 6])
            if i % 10 == 0:
                book.put(
                    f"t{1 + i % 3}",
                    kind=REVERSAL,
                    verdict=None,
                    at_ms=start + i * 1000 + 5,
                    ref_seq=seq,
                )
        book.flush()
    period = settlement.Period(DateRange.parse("2026-05-10", "2026-05-10", SHANGHAI))

    def peak(consume: Any) -> int:
        with store.db.read() as conn:
            directory = load_directory(conn)
            tracemalloc.start()
            try:
                consume(settlement.iter_detail(conn, period, directory, batch_rows=50))
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    def walk(rows: Iterator[dict[str, Any]]) -> None:
        assert sum(1 for _ in rows) == 1320

    whole = peak(list)
    streamed = peak(walk)
    assert streamed < whole / 4, (streamed, whole)
