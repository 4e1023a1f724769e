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
  never had, a debit twice, statement rows with and without references, refunds naming
  the reversal or the sale), reconciliation reports exactly the planted differences:
  every one, and no other; the differences add up to the bank's net minus the ledger's;
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
import random
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from county import reconcile as rc
from county.cadres import Cadre, replace_cadres
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
    # None, reversal reference mode: "reversal" or "sale")
    sales: list[tuple[int, int, int, int, str | None, str, str | None, str]]
    refusals: int
    neighbours: int  # sales the day before and after, which the day must ignore
    extra_debits: int  # at the bank, not in the ledger
    extra_unknown: int  # an account nobody has
    duplicates: int  # a debit twice with the same reference
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
    for cadre_i, till_i, fen, second, tier, fate, rev_fate, rev_ref in plan.sales:
        cadre = cadres[cadre_i]
        entry = tills[till_i].sale(cadre.cadre, fen, start + second * 1000, tier)
        built.ledger_net += fen
        plant(entry, cadre, fate, fen, entry.entry_id, rc.IN_LEDGER_NOT_AT_BANK)
        sales.append((entry, till_i, cadre, rev_fate, rev_ref))
    # Reversals after every sale (a till's entries go forward in time), in sale order.
    last = start + (DAY_MS - 3600_000)
    for k, (entry, till_i, cadre, rev_fate, rev_ref) in enumerate(sales):
        if rev_fate is None:
            continue
        reversal = tills[till_i].reversal(entry, last + k * 1000)
        built.ledger_net -= entry.amount_fen
        ref = reversal.entry_id if rev_ref == "reversal" else entry.entry_id
        plant(reversal, cadre, rev_fate, -entry.amount_fen, ref, rc.REVERSAL_NOT_REFUNDED)
    for i in range(plan.neighbours):
        tills[i % 2].sale(cadres[0].cadre, 1000, start + DAY_MS + 500 + i)
    for till in tills:
        till.upload()

    rng.shuffle(rows)
    extras: list[tuple[list[str], str | None, str | None]] = []
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
    max_examples=12,
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
