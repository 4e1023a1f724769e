"""Bank reconciliation, cadres and allowances (county/reconcile.py, county/cadres.py,
county/reconcile_cli.py), on a real SQLite file and a real PostgreSQL database.

The ledger is made as terminals make it: each till keeps a real ledger
(terminal/ledger.py, its own key and hash chain, reversals drafted by the checkout's
reversal_draft) and uploads it through the county's real intake (CountyStore.intake, a
batch and a signed checkpoint as the sync sends them).

What is proved:

- for generated ledgers (sales of several cadres and terminals, reversals, refusals,
  tiers, sales just before and after the day) and a bank statement generated from them
  with planted differences of every kind (a debit or refund missing at the bank, a
  different amount, another cadre's account, an account nobody has, a debit the ledger
  never had, a debit twice, a refund naming a sale nobody reversed and a debit naming a
  reversal, statement rows with and without references (TERMINAL/SEQ or entry_id),
  refunds naming the reversal or the sale), reconciliation reports exactly the planted
  differences: every one, and no other; the differences add up to the bank's net minus
  the ledger's;
- a statement with bad rows (an amount with 3 decimals, a bad amount, an empty amount,
  a bad date, a date of another day, a bad time) is refused one line per row naming its
  line, and nothing is reconciled (no output); exit statuses 0 balanced, 1 differences,
  2 bad input; the Chinese header and a BOM are read; xlsx has the Chinese headers and
  yuan cells;
- cadres import: a cadres CSV and a roster CSV with the account columns; bad rows one
  line each and nothing imported (the cadres before stay);
- allowances: per cadre and local month, over and under, --over, month bounds local.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import random
import threading
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import examples, wait_for
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from county import reconcile as rc
from county.cadres import Cadre, load_cadres, replace_cadres
from county.cli import main as county_main
from county.db import Database
from county.db.migrations import prepare
from county.store import OK, CountyStore
from protocol.chain import ACCEPT, REJECT, SALE, EntryDraft, LedgerEntry
from terminal.core.checkout import reversal_draft
from terminal.ledger import Ledger
from terminal.sync import LedgerReader, _batch_checkpoint

ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
DAY_MS = 86_400_000
HEADER = "account,name,date,time,amount,reference,memo"
HEADER_ZH = "账号,户名,交易日期,交易时间,金额,交易流水号,摘要"


def local_ms(day: dt.date, seconds: int) -> int:
    """Milliseconds of ``seconds`` after local midnight of ``day``."""
    start = dt.datetime.combine(day, dt.time(), ZONE)
    return int(start.timestamp()) * 1000 + seconds * 1000


def yuan(fen: int) -> str:
    return f"{Decimal(fen).scaleb(-2):.2f}"


class Till:
    """One terminal: registered in the county, with its own real ledger, uploaded as the
    sync uploads it."""

    def __init__(
        self, store: CountyStore, root: Path, terminal_id: str, canteen: str, genesis_ms: int
    ) -> None:
        self.store, self.terminal_id = store, terminal_id
        self.key = Ed25519PrivateKey.generate()
        self.now_ms = genesis_ms + 10 * DAY_MS
        secret = store.add_terminal(terminal_id, canteen, genesis_ms)
        store.bind_certificate(
            secret,
            terminal_id,
            hashlib.sha256(terminal_id.encode()).hexdigest(),
            self.key.public_key().public_bytes_raw(),
            genesis_ms,
        )
        self.path = root / f"{terminal_id}.sqlite"
        self.book = Ledger.open(
            self.path, terminal_id=terminal_id, signing_key=self.key, now_ms=genesis_ms
        )
        self.acked = 0

    def sale(
        self, cadre: str, fen: int, at_ms: int, tier: str | None = "own", unit: str = "u1"
    ) -> LedgerEntry:
        return self.book.append(
            EntryDraft(
                kind=SALE,
                verdict=ACCEPT,
                method="qr",
                cadre=cadre,
                credential=f"qr/{cadre}/{at_ms:016x}",
                ctr=1,
                unit=unit,
                day=dt.datetime.fromtimestamp(at_ms / 1000, ZONE).date().isoformat(),
                meal="lunch",
                amount_fen=fen,
                detail={"qr": "HC1:" + "X" * 40, **({"tier": tier} if tier else {})},
            ),
            at_ms,
        )

    def refusal(self, cadre: str, at_ms: int) -> None:
        self.book.append(
            EntryDraft(kind=SALE, verdict=REJECT, reason="replayed", method="qr", cadre=cadre),
            at_ms,
        )

    def reversal(self, sale: LedgerEntry, at_ms: int) -> LedgerEntry:
        return self.book.append(reversal_draft(sale, "staff-1"), at_ms)

    def upload(self) -> None:
        """Send everything not yet acknowledged, as the terminal's sync does."""
        reader = LedgerReader(self.path)
        try:
            while rows := reader.batch(self.acked + 1, 2000):
                cps = reader.checkpoints(rows[0][0], rows[-1][0])
                if not cps or cps[-1][0] != rows[-1][0]:
                    cps.append(_batch_checkpoint(self.key, self.terminal_id, rows[-1]))
                doc = {"nonce": "", "entries": rows, "checkpoints": cps}
                result = self.store.intake(self.terminal_id, doc, self.now_ms)
                assert result.status == OK, result.problem
                self.acked = result.acked_seq
        finally:
            reader.close()
        self.book.close()


# ---- the generated ledger and statement -------------------------------------------

# What becomes of one movement's statement row.
FATES = ("ok", "ok_no_reference", "missing", "amount", "other_account", "unknown_account")
# Ledger amounts are multiples of 50 fen; planted bank-only debits end in 1 fen, so the
# fallback by account and amount can never pair them with a ledger movement.
AMOUNTS = st.integers(2, 100).map(lambda n: n * 50)


@dataclass
class Plan:
    """One generated day: what goes into the ledger and what the statement does to it."""

    cadres: int
    # (cadre index, terminal index, fen, second of the day, tier, fate, reversal fate or
    # None, reversal reference mode: "reversal" or "sale", reference style: TERMINAL/SEQ
    # or entry_id)
    sales: list[tuple[int, int, int, int, str | None, str, str | None, str, str]]
    refusals: int
    neighbours: int  # sales the day before and after, which the day must ignore
    extra_debits: int  # at the bank, not in the ledger
    extra_unknown: int  # an account nobody has
    duplicates: int  # a debit twice with the same reference
    wrong_way: int  # a refund naming a sale not reversed, a debit naming a reversal
    shuffle: int


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    cadres = draw(st.integers(1, 4))
    n = draw(st.integers(0, 10))
    seconds = draw(st.lists(st.integers(60, 80_000), min_size=n, max_size=n, unique=True))
    sales = []
    for second in sorted(seconds):
        sales.append(
            (
                draw(st.integers(0, cadres - 1)),
                draw(st.integers(0, 1)),
                draw(AMOUNTS),
                second,
                draw(st.sampled_from([None, "own", "same_level", "higher_level", "unlisted"])),
                draw(st.sampled_from(FATES)),
                draw(st.one_of(st.none(), st.sampled_from(FATES))),
                draw(st.sampled_from(["reversal", "sale"])),
                draw(st.sampled_from(["terminal_seq", "entry_id"])),
            )
        )
    return Plan(
        cadres=cadres,
        sales=sales,
        refusals=draw(st.integers(0, 2)),
        neighbours=draw(st.integers(0, 2)),
        extra_debits=draw(st.integers(0, 2)),
        extra_unknown=draw(st.integers(0, 1)),
        duplicates=draw(st.integers(0, 2)),
        wrong_way=draw(st.integers(0, 2)),
        shuffle=draw(st.integers(0, 2**32)),
    )


@dataclass
class Built:
    """The ledger and statement of one plan, with the differences that must be found:
    (kind, ledger entry_id or None, statement line or None)."""

    day: dt.date
    statement: str
    expected: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    ledger_net: int = 0
    bank_net: int = 0


def build(store: CountyStore, root: Path, plan: Plan, day: dt.date, tag: str) -> Built:
    """Put ``plan`` into the county's ledger on local ``day`` and write its statement."""
    with store.db.write() as conn:
        cadres = [
            Cadre(f"hn-gov/{tag}-{i}", "u1", f"干部{i}", f"6222{tag}{i:02d}", 50_000)
            for i in range(plan.cadres)
        ]
        replace_cadres(conn, cadres, 0)
    start = local_ms(day, 0)
    tills = [Till(store, root, f"{tag}-t{k}", f"canteen-{k}", start - 2 * DAY_MS) for k in range(2)]
    rng = random.Random(plan.shuffle)
    # (row text without its line, expected kind, entry_id) for rows that carry one.
    rows: list[tuple[list[str], str | None, str | None]] = []
    built = Built(day, "")

    def row(cadre: Cadre, account: str, at_ms: int, signed_fen: int, ref: str) -> list[str]:
        when = dt.datetime.fromtimestamp(at_ms / 1000, ZONE)
        return [
            account,
            cadre.name,
            when.date().isoformat(),
            when.time().isoformat("seconds"),
            yuan(signed_fen),
            ref,
            "午餐" if signed_fen > 0 else "退款",
        ]

    def plant(
        entry: LedgerEntry, cadre: Cadre, fate: str, signed: int, ref: str, missing_kind: str
    ) -> None:
        other = cadres[(cadres.index(cadre) + 1) % len(cadres)]
        if fate == "missing":
            built.expected.append((missing_kind, entry.entry_id, None))
            return
        account, fen, kind = str(cadre.account), signed, None
        if fate == "ok_no_reference":
            ref = ""
        elif fate == "amount":
            fen = signed + (50 if signed > 0 else -50)
            kind = rc.AMOUNT_DIFFERS
        elif fate == "other_account" and other is not cadre:
            account, kind = str(other.account), rc.ACCOUNT_DIFFERS
        elif fate == "unknown_account":
            account, kind = f"9999{tag}", rc.ACCOUNT_UNKNOWN
        built.bank_net += fen
        rows.append((row(cadre, account, entry.at_ms, fen, ref), kind, entry.entry_id))

    for i in range(plan.neighbours):
        # Sales a second before the day and (below) just after it: never the day's.
        tills[i % 2].sale(cadres[0].cadre, 1000, start - 1000)
    for i in range(plan.refusals):
        tills[i % 2].refusal(cadres[0].cadre, start + 30_000 + i)
    sales = []

    def ref_of(entry: LedgerEntry, till_i: int, style: str) -> str:
        if style == "entry_id":
            return entry.entry_id
        return f"{tills[till_i].terminal_id}/{entry.seq}"

    for cadre_i, till_i, fen, second, tier, fate, rev_fate, rev_ref, style in plan.sales:
        cadre = cadres[cadre_i]
        entry = tills[till_i].sale(cadre.cadre, fen, start + second * 1000, tier)
        built.ledger_net += fen
        plant(entry, cadre, fate, fen, ref_of(entry, till_i, style), rc.IN_LEDGER_NOT_AT_BANK)
        sales.append((entry, till_i, cadre, rev_fate, rev_ref, style))
    # Reversals after every sale (a till's entries go forward in time), in sale order.
    last = start + (DAY_MS - 3600_000)
    # Statement rows in the wrong direction: a refund naming a sale nobody reversed, a
    # debit naming a reversal (its own TERMINAL/SEQ or entry_id).
    wrong_way: list[tuple[list[str], str | None, str | None]] = []
    for k, (entry, till_i, cadre, rev_fate, rev_ref, style) in enumerate(sales):
        if rev_fate is None:
            if len(wrong_way) < plan.wrong_way:
                ref = ref_of(entry, till_i, style)
                cells = row(cadre, str(cadre.account), entry.at_ms, -entry.amount_fen, ref)
                wrong_way.append((cells, "bank", None))
            continue
        reversal = tills[till_i].reversal(entry, last + k * 1000)
        if len(wrong_way) < plan.wrong_way:
            ref = ref_of(reversal, till_i, style)
            cells = row(cadre, str(cadre.account), reversal.at_ms, entry.amount_fen, ref)
            wrong_way.append((cells, "bank", None))
        built.ledger_net -= entry.amount_fen
        ref = ref_of(reversal if rev_ref == "reversal" else entry, till_i, style)
        plant(reversal, cadre, rev_fate, -entry.amount_fen, ref, rc.REVERSAL_NOT_REFUNDED)
    for i in range(plan.neighbours):
        tills[i % 2].sale(cadres[0].cadre, 1000, start + DAY_MS + 500 + i)
    for till in tills:
        till.upload()

    rng.shuffle(rows)
    extras: list[tuple[list[str], str | None, str | None]] = list(wrong_way)
    for i in range(plan.extra_debits):
        cadre = cadres[i % len(cadres)]
        fen = 1001 + 50 * i
        extras.append(
            (row(cadre, str(cadre.account), start + 7200_000 + i, fen, f"bank-{i}"), "bank", None)
        )
    for _ in range(plan.extra_unknown):
        extras.append(
            (row(cadres[0], f"8888{tag}", start + 9000_000, 1201, ""), rc.ACCOUNT_UNKNOWN, None)
        )
    referenced = [r for r in rows if r[0][5]]
    for i in range(min(plan.duplicates, len(referenced))):
        extras.append((list(referenced[i][0]), "bank", None))
    lines = [HEADER]
    for n, (cells, kind, entry_id) in enumerate(rows + extras, start=2):
        lines.append(",".join(cells))
        if entry_id is not None and kind is not None:
            built.expected.append((kind, entry_id, n))
        elif kind == "bank":
            built.expected.append((rc.AT_BANK_NOT_IN_LEDGER, None, n))
        elif kind == rc.ACCOUNT_UNKNOWN:
            built.expected.append((rc.ACCOUNT_UNKNOWN, None, n))
        if entry_id is None:
            fen = int(Decimal(cells[4]).scaleb(2))
            built.bank_net += fen
    built.statement = "\n".join(lines) + "\n"
    return built


_days = itertools.count()


@pytest.fixture
def store(county_db_url: str) -> Iterator[CountyStore]:
    """The county store on each backend, opened once for all of a test's examples."""
    opened = CountyStore(county_db_url)
    try:
        yield opened
    finally:
        opened.close()


@settings(
    max_examples=examples(12),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans())
def test_reconciliation_finds_every_planted_difference(
    store: CountyStore, tmp_path: Path, plan: Plan
) -> None:
    """Each example on a day of its own (three apart, so its neighbours are nobody's)."""
    n = next(_days)
    day = dt.date(2026, 3, 2) + dt.timedelta(days=3 * n)
    built = build(store, tmp_path, plan, day, f"{n:03d}")
    rows = rc.parse_statement(built.statement, "statement.csv", day, ZONE)
    with store.db.read() as conn:
        result = rc.reconcile(conn, rows, day, ZONE)
    found = sorted(
        ((d["kind"], d["entry_id"], d["bank_line"]) for d in result.differences),
        key=repr,
    )
    assert found == sorted(built.expected, key=repr), built.statement
    assert result.balanced == (not built.expected)
    total = sum(d["difference_fen"] for d in result.differences)
    assert result.summary["bank_net_fen"] == built.bank_net
    assert result.summary["ledger_net_fen"] == built.ledger_net
    assert total == built.bank_net - built.ledger_net
    # Every statement row and every movement is on the per-cadre rows, once.
    assert sum(c["bank_debit_fen"] - c["bank_refund_fen"] for c in result.cadres) == built.bank_net
    assert (
        sum(c["ledger_debit_fen"] - c["ledger_refund_fen"] for c in result.cadres)
        == built.ledger_net
    )


# ---- the commands ------------------------------------------------------------------

DAY = dt.date(2026, 5, 28)
ROSTER = """\
uid,iss,sub,unit,display_name,status,account,monthly_allowance_fen
0A1B2C3D,hn-gov,C1,u1,张伟,active,6222000001,3000
0A1B2C3E,hn-gov,C1,u1,张伟,lost,6222000001,3000
0A1B2C3F,hn-gov,C2,u1,李娜,active,6222000002,2000
0A1B2C40,hn-gov,C3,u2,王芳,active,,
0A1B2C41,hn-gov,C4,u2,周敏,active,6222000004,5000
"""


def county(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """canteen-county ARGS in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = county_main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


def test_roster_with_account_columns() -> None:
    """The terminal's roster parser takes the county's two columns and keeps its checks."""
    from protocol.lists import TrustError, parse_roster_csv

    cards = parse_roster_csv(ROSTER)
    assert [(c.cadre, c.account, c.monthly_allowance_fen) for c in cards[2:4]] == [
        ("hn-gov/C2", "6222000002", 2000),
        ("hn-gov/C3", None, None),
    ]
    head = "uid,iss,sub,unit,display_name,status"
    assert parse_roster_csv(f"{head},account\n01020304,x,y,z,n,active,62\n")[0].account == "62"
    with pytest.raises(TrustError, match="line 2: monthly_allowance_fen must be a whole"):
        parse_roster_csv(f"{head},account,monthly_allowance_fen\n01020304,x,y,z,n,active,1,-5\n")
    with pytest.raises(TrustError, match="the header must be"):
        parse_roster_csv(f"{head},monthly_allowance_fen\n01020304,x,y,z,n,active,5\n")
    with pytest.raises(TrustError, match="line 2: status must be one of"):
        parse_roster_csv(f"{head},account\n01020304,x,y,z,n,gone,62\n")


def test_cadres_import_and_list(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database", county_db_url)
    status, out, err = county(capsys, "cadres", "import", write(tmp_path, "r.csv", ROSTER), *db)
    assert (status, err) == (0, "")
    assert out.startswith("4 cadres imported (3 with a bank account, 3 with a monthly allowance)")
    status, out, _ = county(capsys, "cadres", "list", "--format", "json", *db)
    listed = [json.loads(line) for line in out.splitlines()]
    assert [c["cadre"] for c in listed] == ["hn-gov/C1", "hn-gov/C2", "hn-gov/C3", "hn-gov/C4"]
    assert listed[0] == {
        "cadre": "hn-gov/C1",
        "unit": "u1",
        "name": "张伟",
        "account": "6222000001",
        "monthly_allowance_fen": 3000,
    }
    # The CSV listing imports again as it is.
    status, csv_out, _ = county(capsys, "cadres", "list", "--format", "csv", *db)
    status, out, err = county(
        capsys, "cadres", "import", write(tmp_path, "again.csv", csv_out), *db
    )
    assert (status, err) == (0, "") and out.startswith("4 cadres imported")

    bad = (
        "cadre,unit,name,account,monthly_allowance_fen\n"
        "hn-gov/C1,u1,张伟,6222000001,3000\n"
        "no-slash,u1,某,6222000009,1\n"
        "hn-gov/C2,u1,李娜,6222000001,2000\n"
        "hn-gov/C5,u1,赵,6222 000,1\n"
        "hn-gov/C6,u1,钱,6222000006,1.5\n"
        "hn-gov/C1,u1,张伟,,\n"
        "hn-gov/C7,,孙,,\n"
    )
    status, out, err = county(capsys, "cadres", "import", write(tmp_path, "bad.csv", bad), *db)
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert lines[-1] == "canteen-county: nothing was imported"
    wanted = {
        3: "cadre 'no-slash': expected ISSUER/ID",
        4: "account 6222000001 is cadre hn-gov/C1's already (line 2)",
        5: "account '6222 000'",
        6: "monthly_allowance_fen '1.5'",
        7: "cadre hn-gov/C1 again (first on line 2)",
        8: "unit is empty",
    }
    assert len(lines) == len(wanted) + 1
    for line, (n, word) in zip(lines, sorted(wanted.items()), strict=False):
        assert line.startswith(f"canteen-county: error: {tmp_path}/bad.csv line {n}: "), line
        assert word in line, line
    # Nothing imported: the cadres before stay.
    status, out, _ = county(capsys, "cadres", "list", "--format", "json", *db)
    assert [json.loads(line)["cadre"] for line in out.splitlines()] == [c["cadre"] for c in listed]

    conflicting = ROSTER.replace(
        "0A1B2C3E,hn-gov,C1,u1,张伟,lost,6222000001,3000",
        "0A1B2C3E,hn-gov,C1,u1,张伟,lost,6222000001,4000",
    )
    status, _, err = county(capsys, "cadres", "import", write(tmp_path, "r2.csv", conflicting), *db)
    assert (
        status == 2
        and "r2.csv line 3: cadre hn-gov/C1's unit, name, account or allowance differ from line 2"
        in err
    )


@dataclass
class Day:
    """A small real ledger on DAY: two cadres, a reversal, a refusal."""

    sales: list[LedgerEntry]
    reversal: LedgerEntry


def small_day(store: CountyStore, root: Path) -> Day:
    till = Till(store, root, "north-1", "north", local_ms(DAY, 0) - DAY_MS)
    s1 = till.sale("hn-gov/C1", 1500, local_ms(DAY, 12 * 3600 + 5))
    s2 = till.sale("hn-gov/C2", 1250, local_ms(DAY, 12 * 3600 + 65), tier="higher_level")
    till.refusal("hn-gov/C2", local_ms(DAY, 12 * 3600 + 70))
    s3 = till.sale("hn-gov/C1", 800, local_ms(DAY, 18 * 3600))
    rev = till.reversal(s3, local_ms(DAY, 18 * 3600 + 120))
    till.upload()
    return Day([s1, s2, s3], rev)


def statement_of(day: Day, header: str = HEADER_ZH) -> list[str]:
    def when(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, ZONE).strftime("%Y-%m-%d,%H:%M:%S")

    s1, s2, s3 = day.sales
    return [
        header,
        f"6222000001,张伟,{when(s1.at_ms)},15.00,north-1/{s1.seq},午餐",
        f"6222000002,李娜,{when(s2.at_ms)},12.50,north-1/{s2.seq},午餐",
        f"6222000001,张伟,{when(s3.at_ms)},8.00,,晚餐",
        f"6222000001,张伟,{when(day.reversal.at_ms)},-8.00,{s3.entry_id},退款",
    ]


def test_reconcile_command(
    county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database", county_db_url)
    store = CountyStore(county_db_url)
    try:
        day = small_day(store, tmp_path)
    finally:
        store.close()
    assert county(capsys, "cadres", "import", write(tmp_path, "r.csv", ROSTER), *db)[0] == 0
    lines = statement_of(day)
    # The Chinese header, a BOM, CRLF line ends, as Excel saves 'CSV UTF-8'.
    good = write(tmp_path, "good.csv", "\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    status, out, err = county(capsys, "reconcile", "--statement", good, "--date", "2026-05-28", *db)
    assert status == 0, err
    assert err.strip().endswith(": balanced")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["row"] for r in rows] == ["cadre", "cadre", "summary"]
    summary = rows[-1]
    assert summary["balanced"] is True and summary["ledger_net_fen"] == 1500 + 1250
    assert (summary["matched_by_reference"], summary["matched_by_account"]) == (3, 1)

    # The English header with a direction column; the 8.00 debit missing, 12.50 as 12.40.
    english = [
        HEADER + ",direction",
        lines[1] + ",借",
        lines[2].replace("12.50", "12.40") + ",D",
        lines[4].replace("-8.00", "8.00") + ",贷",
    ]
    short = write(tmp_path, "short.csv", "\n".join(english) + "\n")
    status, out, err = county(
        capsys, "reconcile", "--statement", short, "--date", "2026-05-28", *db
    )
    assert status == 1
    assert "2 differences (in_ledger_not_at_bank 1, amount_differs 1)" in err
    found = [json.loads(line) for line in out.splitlines()]
    diffs = [r for r in found if r["row"] == "difference"]
    assert [(d["kind"], d["entry_id"], d["difference_fen"]) for d in diffs] == [
        (rc.IN_LEDGER_NOT_AT_BANK, day.sales[2].entry_id, -800),
        (rc.AMOUNT_DIFFERS, day.sales[1].entry_id, -10),
    ]

    # xlsx: one sheet each, Chinese headers, money as yuan cells.
    from openpyxl import load_workbook

    book = tmp_path / "r.xlsx"
    args = ("reconcile", "--statement", short, "--date", "2026-05-28", "--format", "xlsx")
    status, out, err = county(capsys, *args, "--out", str(book), *db)
    assert (status, err) == (1, "") and "2 differences" in out
    wb = load_workbook(book)
    assert wb.sheetnames == ["差异明细", "按干部汇总", "对账汇总"]
    sheet = wb["差异明细"]
    header = [c.value for c in sheet[1]]
    assert header[:3] == ["日期", "差异类型", "差异说明"] and "银行金额" in header
    cell = sheet.cell(row=3, column=header.index("银行金额") + 1)
    assert (Decimal(str(cell.value)), cell.number_format) == (Decimal("12.40"), "#,##0.00")
    # csv: the differences only, yuan text.
    status, out, _ = county(capsys, *args[:-2], "--format", "csv", *db)
    table = out.splitlines()
    assert status == 1 and table[0].startswith("日期,差异类型,差异说明") and len(table) == 3
    assert ",-8.00," in table[1] and ",12.40," in table[2]


def test_bad_statement_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every bad row one line naming it; nothing reconciled (no output, no file)."""
    data = tmp_path / "county"
    data.mkdir()
    db = ("--data", str(data))
    ok = "6222000001,张伟,2026-05-28,12:00:05"
    text = "\n".join(
        [
            HEADER,
            f"{ok},15.00,r1,午餐",
            f"{ok},15.005,r2,午餐",
            f"{ok},十五,r3,午餐",
            f"{ok},,r4,午餐",
            "6222000001,张伟,2026-02-30,12:00:05,15.00,r5,午餐",
            "6222000001,张伟,2026-05-27,12:00:05,15.00,r6,午餐",
            "6222000001,张伟,2026-05-28,12:60:05,15.00,r7,午餐",
            f"{ok},0.00,r8,午餐",
            f"{ok},1.5e3,r9,午餐",
            "6222000001,张\x1b伟,2026-05-28,12:00:05,15.00,r10,午餐",
        ]
    )
    path = write(tmp_path, "bad.csv", text + "\n")
    out_file = tmp_path / "out.json"
    status, out, err = county(
        capsys,
        "reconcile",
        "--statement",
        path,
        "--date",
        "2026-05-28",
        "--out",
        str(out_file),
        *db,
    )
    assert status == 2 and out == "" and not out_file.exists()
    wanted = {
        3: "amount '15.005' has more than 2 decimals",
        4: "amount '十五' is not yuan",
        5: "amount is empty",
        6: "date '2026-02-30' is not a date",
        7: "date 2026-05-27 is not the statement's day 2026-05-28",
        8: "time '12:60:05' is not a time",
        9: "amount 0.00 moves no money",
        10: "amount '1.5e3' is not yuan",
        11: "name holds a control character",
    }
    lines = err.splitlines()
    assert lines[-1] == "canteen-county: nothing was reconciled"
    assert len(lines) == len(wanted) + 1
    for line, (n, word) in zip(lines, sorted(wanted.items()), strict=False):
        assert line.startswith(f"canteen-county: error: {path} line {n}: "), line
        assert word in line, line
    # A bad header, a bad date option, a bad time zone: one line each, exit 2.
    for args, word in [
        (
            ("--statement", write(tmp_path, "h.csv", "账号,金额\n"), "--date", "2026-05-28"),
            "missing name/户名",
        ),
        (("--statement", path, "--date", "28.05.2026"), "--date '28.05.2026'"),
        (("--statement", path, "--date", "2026-05-28", "--timezone", "Mars/Base"), "Mars/Base"),
    ]:
        status, out, err = county(capsys, "reconcile", *args, *db)
        assert status == 2 and out == "" and word in err and len(err.splitlines()) <= 2, err


def test_allowances(county_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Over and under a monthly allowance; the month's bounds are local midnights; a
    reversal counts in its sale's month."""
    db = ("--database", county_db_url)
    may = dt.date(2026, 5, 1)
    store = CountyStore(county_db_url)
    try:
        till = Till(store, tmp_path, "north-1", "north", local_ms(may, 0) - 2 * DAY_MS)
        # C1 (3000): 00:10 local on 05-01 is 04-30 in UTC; 1500 + 1500 + 800 - 800 = 3000.
        till.sale("hn-gov/C1", 1500, local_ms(may, 600))
        till.sale("hn-gov/C1", 1500, local_ms(DAY, 43_200))
        undone = till.sale("hn-gov/C1", 800, local_ms(DAY, 43_300))
        till.reversal(undone, local_ms(DAY, 43_400))
        # C2 (2000): 1500 + 1000 = 2500, over by 500; and 00:30 on 06-01 (May in UTC).
        till.sale("hn-gov/C2", 1500, local_ms(DAY, 50_000))
        till.sale("hn-gov/C2", 1000, local_ms(DAY, 50_100))
        till.sale("hn-gov/C2", 700, local_ms(dt.date(2026, 6, 1), 1800))
        # C3 has no allowance; hn-gov/C9 is not in the cadres at all.
        till.sale("hn-gov/C3", 100, local_ms(DAY, 60_000))
        till.sale("hn-gov/C9", 100, local_ms(DAY, 60_100))
        # C4 (5000): 5200 at 23:00 on 05-31, reversed on 06-01: it counts against May's
        # sale, as the settlement counts it, so C4 is not over.
        late = till.sale("hn-gov/C4", 5200, local_ms(dt.date(2026, 5, 31), 23 * 3600))
        till.reversal(late, local_ms(dt.date(2026, 6, 1), 9 * 3600))
        till.upload()
    finally:
        store.close()
    assert county(capsys, "cadres", "import", write(tmp_path, "r.csv", ROSTER), *db)[0] == 0
    status, out, err = county(capsys, "allowances", "--month", "2026-05", *db)
    assert (status, err) == (0, "")
    rows = {r["cadre"]: r for r in map(json.loads, out.splitlines())}
    assert list(rows) == ["hn-gov/C1", "hn-gov/C2", "hn-gov/C3", "hn-gov/C4", "hn-gov/C9"]
    c1 = rows["hn-gov/C1"]
    assert (c1["meals"], c1["gross_fen"], c1["reversed_fen"], c1["net_fen"]) == (2, 3800, 800, 3000)
    assert (c1["allowance_fen"], c1["remaining_fen"], c1["over_fen"], c1["over"]) == (
        3000,
        0,
        0,
        False,
    )
    c2 = rows["hn-gov/C2"]
    assert (c2["net_fen"], c2["over_fen"], c2["remaining_fen"], c2["over"]) == (
        2500,
        500,
        -500,
        True,
    )
    assert rows["hn-gov/C3"]["allowance_fen"] is None and rows["hn-gov/C3"]["over"] is False
    c4 = rows["hn-gov/C4"]
    assert (c4["meals"], c4["gross_fen"], c4["reversed_fen"], c4["net_fen"]) == (0, 5200, 5200, 0)
    assert (c4["remaining_fen"], c4["over"]) == (5000, False)
    assert rows["hn-gov/C9"]["name"] == "" and rows["hn-gov/C9"]["net_fen"] == 100

    status, out, _ = county(capsys, "allowances", "--month", "2026-05", "--over", *db)
    assert [json.loads(line)["cadre"] for line in out.splitlines()] == ["hn-gov/C2"]
    # In UTC the 00:10 sale of 05-01 is April's and the 00:30 of 06-01 is May's.
    status, out, _ = county(
        capsys, "allowances", "--month", "2026-05", "--timezone", "UTC", "--over", *db
    )
    over = [json.loads(line) for line in out.splitlines()]
    assert [(r["cadre"], r["net_fen"]) for r in over] == [("hn-gov/C2", 3200)]
    status, out, _ = county(capsys, "allowances", "--month", "2026-05", "--format", "csv", *db)
    table = out.splitlines()
    assert table[0].startswith("月份,干部,姓名,单位,餐次,消费金额")
    assert table[2].startswith("2026-05,hn-gov/C2,李娜,u1,2,25.00,0.00,25.00,20.00,-5.00,5.00")
    status, _, err = county(capsys, "allowances", "--month", "2026-13", *db)
    assert status == 2 and "--month '2026-13'" in err


def _waiting_for_advisory_lock(db: Database) -> int:
    """Sessions of ``db``'s PostgreSQL database waiting for an advisory lock."""
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = "
                    "current_database())"
                )
            ).scalar_one()
        )


def test_two_cadres_imports_at_once(county_db_url: str) -> None:
    """The second import waits for the first and then replaces its cadres whole; on
    PostgreSQL without the lock it stopped on the first one's keys (a unique violation)."""
    first_db, second_db = Database(county_db_url), Database(county_db_url)
    try:
        prepare(first_db)
        first = [Cadre("hn-gov/A", "u1", "甲", "1001", 100)]
        second = [
            Cadre("hn-gov/A", "u1", "甲", "2001", 200),
            Cadre("hn-gov/B", "u1", "乙", None, None),
        ]
        holding, release = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def run(db: Database, cadres: list[Cadre], hold: bool) -> None:
            try:
                with db.write() as conn:
                    replace_cadres(conn, cadres, 1)
                    if hold:
                        holding.set()
                        release.wait(60)
            except BaseException as exc:
                errors.append(exc)

        one = threading.Thread(target=run, args=(first_db, first, True))
        one.start()
        assert holding.wait(60)
        two = threading.Thread(target=run, args=(second_db, second, False))
        two.start()
        if not first_db.is_sqlite:
            wait_for(lambda: _waiting_for_advisory_lock(first_db) == 1, what="second import waits")
        release.set()
        one.join(60)
        two.join(60)
        assert errors == []
        with first_db.read() as conn:
            assert list(load_cadres(conn).values()) == second
    finally:
        release.set()
        first_db.close()
        second_db.close()


def test_statement_forms() -> None:
    """What a bank's export may look like and still be read: amounts written several
    ways, direction words, a trailing comma, columns in another order."""
    assert [rc.parse_amount(t) for t in ("15", "15.0", "15.00", "+15.00", "-8", " 0.05 ")] == [
        1500,
        1500,
        1500,
        1500,
        -800,
        5,
    ]
    text = (
        "交易流水号,账号,户名,交易日期,交易时间,金额,摘要,借贷,\n"
        "t-1/5,62,张伟,2026-05-28,12:00:05,15.00,午餐,借,\n"
        "t-1/6,62,张伟,2026-05-28,18:00:00,15,退款,C,\n"
        ",,,,,,,,\n"
        "t-1/7,62,张伟,2026-05-28,19:00:00,1.5,午餐,debit,\n"
    )
    rows = rc.parse_statement(text, "s.csv", DAY, ZONE)
    assert [(r.line, r.reference, r.direction, r.amount_fen) for r in rows] == [
        (2, "t-1/5", rc.DEBIT, 1500),
        (3, "t-1/6", rc.REFUND, 1500),
        (5, "t-1/7", rc.DEBIT, 150),
    ]
    assert rows[0].at_ms == local_ms(DAY, 12 * 3600 + 5)
    with pytest.raises(rc.StatementError) as caught:
        rc.parse_statement(text.replace(",借,", ",-15.00,"), "s.csv", DAY, ZONE)
    assert caught.value.lines == ["s.csv line 2: direction '-15.00': expected 借 or 贷 (D or C)"]
    with pytest.raises(rc.StatementError) as caught:
        rc.parse_statement(text.replace("15.00,午餐,借", "-15.00,午餐,借"), "s.csv", DAY, ZONE)
    assert caught.value.lines == [
        "s.csv line 2: amount '-15.00': with a direction column the amount is positive"
    ]
