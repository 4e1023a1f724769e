"""Ledger tests: append and query semantics, append-only triggers, tamper detection
by verify_file, checkpoints and keys, migrations, a full disk, the read-only tools,
and a property test against a plain Python model. Real SQLite files, no mocks."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import examples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.chain import HASHED_COLUMNS, canonical_json, entry_hash
from terminal.ledger import (
    ACCEPT,
    CLOCK_FAULT,
    GENESIS,
    PRUNED,
    REJECT,
    REVERSAL,
    SALE,
    TOKEN_CHECK,
    EntryDraft,
    Ledger,
    LedgerError,
    export_file,
    load_or_create_signing_key,
    stats_file,
    verify_file,
)

T0 = 1_772_000_000_000  # 2026-02-25, Unix ms
DAY = "2026-02-25"


def sale(
    cadre: str = "iss/alice",
    *,
    accepted: bool = True,
    meal: str = "lunch",
    day: str = DAY,
    fen: int = 1200,
    credential: str | None = None,
    ctr: int | None = None,
) -> EntryDraft:
    return EntryDraft(
        kind=SALE,
        verdict=ACCEPT if accepted else REJECT,
        reason=None if accepted else "already_served",
        method="qr",
        cadre=cadre,
        credential=credential or f"qr/iss/{cadre}",
        ctr=ctr,
        unit="u-1",
        day=day,
        meal=meal,
        amount_fen=fen if accepted else 0,
        detail={"kid": "k1", "note": "午餐"},
    )


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path, key: Ed25519PrivateKey) -> Iterator[Ledger]:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=4)
    try:
        yield led
    finally:
        led.close()


def fill(led: Ledger, n: int, start_ms: int = T0) -> None:
    for i in range(n):
        led.append(sale(f"iss/c{i}", ctr=i), start_ms + 1000 * (i + 1))


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- append and queries ---------------------------------------------------------------


def test_new_ledger_starts_with_genesis(ledger: Ledger, key: Ed25519PrivateKey) -> None:
    genesis = ledger.entry(1)
    assert genesis is not None
    assert genesis.kind == GENESIS
    assert genesis.prev_hash == bytes(32)
    assert genesis.at_ms == T0
    assert genesis.detail == {"terminal_id": "t-001", "public_key": public_bytes(key).hex()}
    assert ledger.last_seq() == 1
    assert ledger.last_time_ms() == T0
    assert ledger.unsynced() == (1, 0)


def test_append_links_entries_and_reads_back(ledger: Ledger) -> None:
    first = ledger.append(sale(ctr=3), T0 + 10)
    second = ledger.append(sale("iss/bob", accepted=False), T0 + 20)
    assert (first.seq, second.seq) == (2, 3)
    assert first.prev_hash == ledger.entry(1).hash  # type: ignore[union-attr]
    assert second.prev_hash == first.hash
    assert len({first.entry_id, second.entry_id}) == 2 and len(first.entry_id) == 32
    assert ledger.entry(2) == first
    assert ledger.entry(99) is None
    assert [e.seq for e in ledger.entries()] == [1, 2, 3]
    assert [e.seq for e in ledger.entries(from_seq=2, limit=1)] == [2]
    assert first.detail == {"kid": "k1", "note": "午餐"}
    assert ledger.last_time_ms() == T0 + 20


def test_entries_pages_through_long_ledgers(ledger: Ledger) -> None:
    fill(ledger, 600)
    assert [e.seq for e in ledger.entries()] == list(range(1, 602))
    assert [e.seq for e in ledger.entries(from_seq=250, limit=300)] == list(range(250, 550))


def test_served_day_totals_and_reversal(ledger: Ledger) -> None:
    assert not ledger.served("iss/alice", DAY, "lunch")
    ledger.append(sale(accepted=False), T0 + 1)  # a refusal serves nothing
    assert not ledger.served("iss/alice", DAY, "lunch")
    lunch = ledger.append(sale(fen=1200), T0 + 2)
    ledger.append(sale(meal="dinner", fen=800), T0 + 3)
    ledger.append(sale(day="2026-02-26", fen=500), T0 + 4)
    ledger.append(sale("iss/bob", fen=999), T0 + 5)
    assert ledger.served("iss/alice", DAY, "lunch")
    assert not ledger.served("iss/alice", DAY, "breakfast")
    assert ledger.day_totals("iss/alice", DAY) == (2, 2000)
    assert ledger.day_totals("iss/nobody", DAY) == (0, 0)

    rev = ledger.append(EntryDraft(kind=REVERSAL, ref_seq=lunch.seq, amount_fen=1200), T0 + 6)
    assert rev.ref_seq == lunch.seq
    assert not ledger.served("iss/alice", DAY, "lunch")
    assert ledger.day_totals("iss/alice", DAY) == (1, 800)
    last = ledger.last_sale()
    assert last is not None and last.cadre == "iss/bob"


def test_reversal_must_name_an_accepted_unreversed_sale(ledger: Ledger) -> None:
    refused = ledger.append(sale(accepted=False), T0 + 1)
    ok = ledger.append(sale(), T0 + 2)
    clock = ledger.append(EntryDraft(kind=CLOCK_FAULT, detail={"wall_ms": 5}), T0 + 3)
    before = ledger.last_seq()
    bad_refs: list[int | None] = [None, refused.seq, clock.seq, 1, 999]
    for ref in bad_refs:
        with pytest.raises(LedgerError, match="reversal refused"):
            ledger.append(EntryDraft(kind=REVERSAL, ref_seq=ref), T0 + 4)
    with pytest.raises(LedgerError, match="reversal refused"):
        ledger.append(EntryDraft(kind=REVERSAL, ref_seq=ok.seq, verdict=REJECT), T0 + 4)
    ledger.append(EntryDraft(kind=REVERSAL, ref_seq=ok.seq), T0 + 5)
    with pytest.raises(LedgerError, match="already reversed"):
        ledger.append(EntryDraft(kind=REVERSAL, ref_seq=ok.seq), T0 + 6)
    assert ledger.last_seq() == before + 1
    assert ledger.last_sale() is None


def test_highest_ctr_counts_accepted_sales_and_token_checks(ledger: Ledger) -> None:
    cred = "qr/iss/abcd"
    assert ledger.highest_ctr(cred) is None
    ledger.append(sale(credential=cred, ctr=5), T0 + 1)
    ledger.append(sale(credential=cred, ctr=50, accepted=False), T0 + 2)  # refused: ignored
    ledger.append(sale(credential="qr/iss/other", ctr=70), T0 + 3)
    assert ledger.highest_ctr(cred) == 5
    check = EntryDraft(kind=TOKEN_CHECK, verdict=ACCEPT, credential=cred, ctr=9)
    ledger.append(check, T0 + 4)
    assert ledger.highest_ctr(cred) == 9


def test_unsynced_and_acknowledgement(ledger: Ledger) -> None:
    a = ledger.append(sale("iss/a", fen=1000), T0 + 1)
    ledger.append(sale("iss/b", accepted=False), T0 + 2)
    c = ledger.append(sale("iss/c", fen=700), T0 + 3)
    assert ledger.unsynced() == (4, 1700)
    assert ledger.last_ack_ms() is None
    assert ledger.mark_acked(a.seq, T0 + 100) == 2  # genesis and a
    assert ledger.unsynced() == (2, 700)
    assert ledger.last_ack_ms() == T0 + 100
    assert ledger.mark_acked(a.seq, T0 + 200) == 0  # already acknowledged: unchanged
    assert ledger.entry(a.seq).acked_at_ms == T0 + 100  # type: ignore[union-attr]
    ledger.append(EntryDraft(kind=REVERSAL, ref_seq=c.seq), T0 + 4)
    assert ledger.unsynced() == (3, 0)  # a reversed sale no longer counts against the cap
    with pytest.raises(LedgerError, match="ledger ends at"):
        ledger.mark_acked(999, T0 + 300)
    assert ledger.mark_acked(ledger.last_seq(), T0 + 300) == 3
    assert ledger.unsynced() == (0, 0)
    assert ledger.last_ack_ms() == T0 + 300


@pytest.mark.parametrize(
    "draft",
    [
        EntryDraft(kind=GENESIS),
        EntryDraft(kind=""),
        EntryDraft(kind=SALE, verdict="maybe"),
        EntryDraft(kind=SALE, ctr=True),
        EntryDraft(kind=SALE, ctr=2**64),
        EntryDraft(kind=SALE, amount_fen=1.5),  # type: ignore[arg-type]
        EntryDraft(kind=SALE, cadre="\ud800"),
        EntryDraft(kind=SALE, detail={"x": float("nan")}),
        EntryDraft(kind=SALE, detail={"x": object()}),
    ],
)
def test_bad_drafts_are_refused_and_leave_nothing(ledger: Ledger, draft: EntryDraft) -> None:
    with pytest.raises(LedgerError, match="refused"):
        ledger.append(draft, T0 + 1)
    assert ledger.last_seq() == 1


def test_closed_ledger_refuses_work(path: Path, key: Ed25519PrivateKey) -> None:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)
    led.close()
    led.close()  # twice is harmless
    with pytest.raises(LedgerError, match="closed"):
        led.append(sale(), T0 + 1)


# --- checkpoints, reopening, identity --------------------------------------------------


def test_checkpoints_every_n_and_on_close(path: Path, key: Ed25519PrivateKey) -> None:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=4)
    fill(led, 9)  # seqs 2..10: checkpoints at 4 and 8
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT seq FROM checkpoints")] == [4, 8]
    led.close()
    assert [r[0] for r in conn.execute("SELECT seq FROM checkpoints")] == [4, 8, 10]
    conn.close()
    report = verify_file(path, public_bytes(key))
    assert report.ok and report.entries == 10 and report.checkpoints == 3


def test_reopen_continues_the_chain(path: Path, key: Ed25519PrivateKey) -> None:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)
    fill(led, 3)
    last = led.entry(led.last_seq())
    led.close()
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0 + 10_000)
    assert led.last_seq() == 4
    nxt = led.append(sale("iss/z"), T0 + 20_000)
    assert last is not None and nxt.seq == 5 and nxt.prev_hash == last.hash
    assert led.entry(1).kind == GENESIS  # type: ignore[union-attr]
    assert sum(1 for e in led.entries() if e.kind == GENESIS) == 1
    led.close()
    assert verify_file(path).ok


def test_two_writers_on_one_file_keep_one_chain(path: Path, key: Ed25519PrivateKey) -> None:
    # e.g. the daemon and `verify-token --ledger`, or a sync job with its own connection:
    # append reads the chain head inside its write transaction, never from a cache.
    one = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=3)
    two = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=3)
    seqs = []
    assert one.unsynced()[0] == two.unsynced()[0] == 1  # both keep an answer from here on
    for i in range(10):
        seqs.append((one if i % 2 else two).append(sale(f"iss/{i}"), T0 + i + 1).seq)
        # Each sees the other's commits: a kept count never hides another writer's entry.
        assert one.unsynced() == two.unsynced() == (i + 2, (i + 1) * 1200)
    assert seqs == list(range(2, 12))
    assert two.mark_acked(5, T0 + 50) == 5
    assert one.unsynced()[0] == 6
    one.close()
    two.close()
    report = verify_file(path, public_bytes(key))
    assert report.ok and report.entries == 11


def test_open_refuses_other_terminal_or_key(path: Path, key: Ed25519PrivateKey) -> None:
    Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0).close()
    with pytest.raises(LedgerError, match="belongs to terminal 't-001'"):
        Ledger.open(path, terminal_id="t-002", signing_key=key, now_ms=T0)
    with pytest.raises(LedgerError, match="different terminal key"):
        Ledger.open(path, terminal_id="t-001", signing_key=Ed25519PrivateKey.generate(), now_ms=T0)


def test_migrations_are_recorded_and_idempotent(path: Path, key: Ed25519PrivateKey) -> None:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)
    first = led.applied_migrations()
    led.close()
    assert [m[0] for m in first] == [1, 2, 3, 4]
    assert all(m[2] == T0 for m in first)  # applied_at is the time given, not a clock
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0 + 5)
    assert led.applied_migrations() == first
    led.close()
    conn = sqlite3.connect(path)
    strict = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND sql LIKE '%STRICT%'"
    ).fetchone()[0]
    assert strict == 6  # entries, checkpoints, meta, migrations, pruned, pruned_ctr
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("INSERT INTO migrations VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer version"):
        Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)


def test_queries_use_their_indexes(ledger: Ledger, path: Path) -> None:
    conn = sqlite3.connect(path)
    cases = {
        "entries_ctr": "SELECT max(ctr) FROM entries WHERE credential = 'x'"
        " AND verdict = 'accept' AND kind IN ('sale', 'token_check')",
        "entries_sales": "SELECT 1 FROM entries WHERE cadre = 'c' AND day = 'd' AND meal = 'm'"
        " AND kind = 'sale' AND verdict = 'accept'",
        "entries_unacked": "SELECT count(*) FROM entries WHERE acked_at_ms IS NULL",
        "entries_reversals": "SELECT 1 FROM entries WHERE kind = 'reversal' AND ref_seq = 3",
    }
    # What highest_ctr really runs, with the replay memory of pruned entries beside it.
    union = (
        "SELECT max(m) FROM (SELECT max(ctr) AS m FROM entries WHERE credential = 'x'"
        " AND verdict = 'accept' AND kind IN ('sale', 'token_check')"
        " UNION ALL SELECT ctr FROM pruned_ctr WHERE credential = 'x')"
    )
    plan = " ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + union))
    assert "entries_ctr" in plan, plan
    for index, query in cases.items():
        plan = " ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + query))
        assert index in plan, (index, plan)
    conn.close()


# --- the append-only triggers ------------------------------------------------------------


def test_triggers_refuse_update_and_delete(ledger: Ledger, path: Path) -> None:
    fill(ledger, 4)
    conn = sqlite3.connect(path, isolation_level=None)
    refused = [
        "DELETE FROM entries WHERE seq = 3",
        "UPDATE entries SET amount_fen = 1 WHERE seq = 3",
        "UPDATE entries SET acked_at_ms = 5, amount_fen = 1 WHERE seq = 3",
        "UPDATE entries SET acked_at_ms = 5, hash = zeroblob(32) WHERE seq = 3",
        "DELETE FROM checkpoints",
        "UPDATE checkpoints SET at_ms = 0",
        "UPDATE meta SET terminal_id = 'evil'",
        "DELETE FROM meta",
        # seq not last+1, prev_hash not the last hash, a checkpoint with a wrong hash
        "INSERT INTO entries SELECT 99, 'x', at_ms, kind, verdict, reason, method, cadre,"
        " credential, ctr, unit, day, meal, amount_fen, ref_seq, detail, hash, hash, NULL"
        " FROM entries WHERE seq = 5",
        "INSERT INTO entries SELECT 6, 'x', at_ms, kind, verdict, reason, method, cadre,"
        " credential, ctr, unit, day, meal, amount_fen, ref_seq, detail, prev_hash, hash,"
        " NULL FROM entries WHERE seq = 5",
        "INSERT INTO checkpoints VALUES (5, zeroblob(32), 0, x'00')",
    ]
    for statement in refused:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(statement)
    # The one change allowed: acknowledging, once.
    conn.execute("UPDATE entries SET acked_at_ms = 7 WHERE seq = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET acked_at_ms = 8 WHERE seq = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET acked_at_ms = NULL WHERE seq = 3")
    conn.close()
    assert ledger.entry(3).acked_at_ms == 7  # type: ignore[union-attr]
    assert verify_file(path).ok


# --- tampering, as an attacker with the file would do it ---------------------------------


def attacker(path: Path) -> sqlite3.Connection:
    """A raw connection with every trigger dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in names:
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def row(conn: sqlite3.Connection, seq: int) -> list[Any]:
    cols = ", ".join((*HASHED_COLUMNS, "prev_hash", "hash", "acked_at_ms"))
    return list(conn.execute(f"SELECT {cols} FROM entries WHERE seq = ?", (seq,)).fetchone())


def put(conn: sqlite3.Connection, values: list[Any]) -> None:
    conn.execute(f"INSERT INTO entries VALUES ({', '.join('?' * len(values))})", values)


def rehash_from(conn: sqlite3.Connection, seq: int) -> None:
    """Recompute prev_hash and hash from ``seq`` to the end: the chain alone then looks fine."""
    prev = row(conn, seq - 1)[17]
    last = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
    for s in range(seq, last + 1):
        r = row(conn, s)
        digest = entry_hash(prev, r[:16])
        conn.execute("UPDATE entries SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, s))
        prev = digest


@pytest.fixture
def sealed(path: Path, key: Ed25519PrivateKey) -> Path:
    """A closed 20-entry ledger with checkpoints at 4, 8, 12, 16, 20."""
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=4)
    fill(led, 19)
    led.close()
    assert verify_file(path).ok
    return path


def check_caught(path: Path, seq: int, words: str) -> None:
    report = verify_file(path)
    assert not report.ok
    assert report.first_bad_seq == seq, report
    assert report.problem is not None and words in report.problem, report.problem


def test_edited_row_is_caught(sealed: Path) -> None:
    with attacker(sealed) as conn:
        conn.execute("UPDATE entries SET amount_fen = 1 WHERE seq = 7")
    check_caught(sealed, 7, "entry 7 was altered")


def test_edited_and_rehashed_row_is_caught_by_the_checkpoint(sealed: Path) -> None:
    conn = attacker(sealed)
    conn.execute("UPDATE entries SET amount_fen = 1 WHERE seq = 6")
    rehash_from(conn, 6)
    conn.close()
    # 1..4 are proven by checkpoint 4, entry 8 is proven changed: name 5 and say so.
    check_caught(sealed, 5, "entries 5..8 were rewritten")


def test_edited_row_with_only_its_own_hash_fixed_is_caught(sealed: Path) -> None:
    conn = attacker(sealed)
    r = row(conn, 9)
    r[13] = 1
    conn.execute(
        "UPDATE entries SET amount_fen = 1, hash = ? WHERE seq = 9", (entry_hash(r[16], r[:16]),)
    )
    conn.close()
    check_caught(sealed, 9, "entry 9 was altered or replaced")


def test_deleted_row_is_caught(sealed: Path) -> None:
    with attacker(sealed) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 11")
    check_caught(sealed, 11, "entry 11 is missing")


def test_deleted_row_with_renumbering_is_caught(sealed: Path) -> None:
    conn = attacker(sealed)
    conn.execute("DELETE FROM entries WHERE seq = 11")
    for s in range(12, 21):
        conn.execute("UPDATE entries SET seq = seq - 1 WHERE seq = ?", (s,))
    conn.close()
    check_caught(sealed, 11, "entry 11 was altered or moved")


def test_deleted_tail_is_caught_by_a_checkpoint(sealed: Path) -> None:
    with attacker(sealed) as conn:
        conn.execute("DELETE FROM entries WHERE seq >= 18")
    check_caught(sealed, 18, "entries from 18 on were deleted")


def test_reordered_rows_are_caught(sealed: Path) -> None:
    conn = attacker(sealed)
    five, eight = row(conn, 5), row(conn, 8)
    conn.execute("DELETE FROM entries WHERE seq IN (5, 8)")
    put(conn, [5, *eight[1:]])
    put(conn, [8, *five[1:]])
    conn.close()
    check_caught(sealed, 5, "entry 5 was altered or moved")


def test_inserted_row_is_caught(sealed: Path) -> None:
    conn = attacker(sealed)
    for s in range(20, 9, -1):
        conn.execute("UPDATE entries SET seq = seq + 1 WHERE seq = ?", (s,))
    fake = row(conn, 9)
    fake[0] = 10
    fake[1] = uuid.uuid4().hex
    fake[7] = "iss/mallory"
    fake[16] = row(conn, 9)[17]
    fake[17] = entry_hash(fake[16], fake[:16])  # a well-formed, correctly linked fake
    put(conn, fake)
    conn.close()
    check_caught(sealed, 10, "entries 10..10 were inserted")


def test_forged_checkpoint_signature_is_caught(sealed: Path) -> None:
    with attacker(sealed) as conn:
        conn.execute("UPDATE checkpoints SET signature = zeroblob(64) WHERE seq = 12")
    check_caught(sealed, 12, "checkpoint at entry 12")


def test_pinned_key_is_enforced(sealed: Path, key: Ed25519PrivateKey) -> None:
    assert verify_file(sealed, public_bytes(key)).ok
    report = verify_file(sealed, public_bytes(Ed25519PrivateKey.generate()))
    assert not report.ok and report.first_bad_seq == 1
    assert report.problem is not None and "pinned" in report.problem


def test_rebuilt_ledger_with_another_key_fails_against_the_pin(
    path: Path, key: Ed25519PrivateKey
) -> None:
    # Someone builds a whole new, internally consistent ledger with their own key.
    other = Ed25519PrivateKey.generate()
    led = Ledger.open(path, terminal_id="t-001", signing_key=other, now_ms=T0)
    fill(led, 3)
    led.close()
    assert verify_file(path).ok  # consistent on its own terms...
    assert not verify_file(path, public_bytes(key)).ok  # ...but not the terminal's


def test_verify_reports_unreadable_files(tmp_path: Path) -> None:
    report = verify_file(tmp_path / "absent.db")
    assert not report.ok and "no ledger file" in (report.problem or "")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    report = verify_file(junk)
    assert not report.ok and report.problem
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE x (a)").connection.close()
    assert "not a ledger" in (verify_file(empty).problem or "")


# --- a full disk ------------------------------------------------------------------------


def test_full_database_refuses_append_and_records_nothing(
    path: Path, key: Ed25519PrivateKey
) -> None:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=4)
    fill(led, 5)
    conn = led._conn  # the ledger's own connection: cap its file size as a full disk would
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = EntryDraft(kind=SALE, verdict=REJECT, reason="x", detail={"pad": "x" * 3000})
    appended = 0
    with pytest.raises(LedgerError, match=r"ledger write failed: .*full.*nothing was recorded"):
        for i in range(100):
            led.append(big, T0 + 10_000 + i)
            appended += 1
    seq_after_failure = led.last_seq()
    assert seq_after_failure == 6 + appended
    assert verify_file(path).ok
    # Space comes back: the same ledger carries on, with no gap and no half entry.
    conn.execute("PRAGMA max_page_count = 1000000")
    nxt = led.append(sale("iss/after"), T0 + 20_000)
    assert nxt.seq == seq_after_failure + 1
    led.close()
    report = verify_file(path)
    assert report.ok and report.entries == nxt.seq


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a real full disk. Needs root (mount); skipped otherwise."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        )
    except OSError:
        pytest.skip("mount is not available")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_filesystem_refuses_append_and_recovers(tiny_fs: Path, key: Ed25519PrivateKey) -> None:
    path = tiny_fs / "ledger.db"
    filler = tiny_fs / "filler"
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=4)
    filler.write_bytes(b"\0" * (256 * 1024))
    pad = EntryDraft(kind=SALE, verdict=REJECT, reason="x", detail={"pad": "x" * 2000})
    with pytest.raises(LedgerError, match=r"ledger write failed.*nothing was recorded"):
        for i in range(1000):
            led.append(pad, T0 + i + 1)
    stuck_at = led.last_seq()
    assert stuck_at > 2
    assert verify_file(path).ok
    assert verify_file(path).entries == stuck_at
    filler.unlink()  # the technician frees space
    nxt = led.append(sale("iss/after"), T0 + 5000)
    assert nxt.seq == stuck_at + 1
    led.close()
    report = verify_file(path)
    assert report.ok and report.entries == stuck_at + 1


# --- the read-only tools ------------------------------------------------------------------


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_offline_tools_do_not_write_a_closed_ledger(sealed: Path) -> None:
    before = snapshot(sealed)
    names = sorted(os.listdir(sealed.parent))
    assert verify_file(sealed).ok
    export_file(sealed, "csv", io.StringIO())
    export_file(sealed, "jsonl", io.StringIO())
    stats_file(sealed)
    assert snapshot(sealed) == before
    assert sorted(os.listdir(sealed.parent)) == names  # no -wal or -shm left behind


def test_offline_tools_read_a_live_ledger_without_writing_it(ledger: Ledger, path: Path) -> None:
    fill(ledger, 10)
    assert Path(str(path) + "-wal").exists()  # committed entries still in the WAL
    before = snapshot(path)
    report = verify_file(path)
    assert report.ok and report.entries == 11
    assert stats_file(path)["entries"] == 11
    assert snapshot(path) == before
    ledger.append(sale("iss/more"), T0 + 99_000)  # the writer is unaffected
    assert verify_file(path).entries == 12


def test_export_csv_and_jsonl(ledger: Ledger, path: Path) -> None:
    s = ledger.append(sale(ctr=4), T0 + 1)
    ledger.append(EntryDraft(kind=REVERSAL, ref_seq=s.seq), T0 + 2)
    out = io.StringIO()
    assert export_file(path, "csv", out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["seq"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["hash"] == s.hash.hex() and rows[1]["cadre"] == "iss/alice"
    assert json.loads(rows[1]["detail"]) == s.detail
    out = io.StringIO()
    export_file(path, "jsonl", out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[1]["detail"] == {"kid": "k1", "note": "午餐"}
    assert records[2]["ref_seq"] == s.seq and records[2]["kind"] == REVERSAL
    assert records[0]["prev_hash"] == "00" * 32
    with pytest.raises(LedgerError, match="unknown export format"):
        export_file(path, "xml", io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="no ledger file"):
        export_file(path.parent / "nope.db", "csv", io.StringIO())


def test_stats(ledger: Ledger, path: Path) -> None:
    a = ledger.append(sale("iss/a", fen=1000), T0 + 1)
    ledger.append(sale("iss/b", fen=500), T0 + 2)
    ledger.append(sale("iss/c", accepted=False), T0 + 3)
    ledger.append(EntryDraft(kind=REVERSAL, ref_seq=a.seq), T0 + 4)
    ledger.mark_acked(2, T0 + 5)
    stats = stats_file(path)
    assert stats["entries"] == 5
    assert stats["by_kind"] == {GENESIS: 1, SALE: 3, REVERSAL: 1}
    assert stats["by_verdict"] == {"none": 2, ACCEPT: 2, REJECT: 1}
    assert stats["by_reason"] == {"already_served": 1}
    assert (stats["accepted_fen"], stats["reversed_fen"], stats["net_fen"]) == (1500, 1000, 500)
    assert stats["unacked"] == 3
    assert (stats["first_ms"], stats["last_ms"]) == (T0, T0 + 4)
    assert stats["checkpoints"] == 1  # at seq 4
    assert stats["terminal_id"] == "t-001" and stats["file_bytes"] > 0


# --- the terminal's key ----------------------------------------------------------------------


def test_signing_key_is_created_private_and_reloaded(tmp_path: Path) -> None:
    file = tmp_path / "terminal.key"
    key = load_or_create_signing_key(file)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_bytes(load_or_create_signing_key(file)) == public_bytes(key)
    assert [p.name for p in tmp_path.iterdir()] == ["terminal.key"]  # no temp file left
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    assert public_bytes(load_or_create_signing_key(raw)) == public_bytes(
        Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    )
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"hello")
    with pytest.raises(LedgerError, match="neither PEM nor 32 raw bytes"):
        load_or_create_signing_key(bad)


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


# --- property test against a model ---------------------------------------------------------

CADRES = ["iss/a", "iss/b", "iss/c"]
DAYS = ["2026-02-25", "2026-02-26"]
MEALS = ["lunch", "dinner"]

op_sale = st.tuples(
    st.just("sale"),
    st.sampled_from(CADRES),
    st.sampled_from(DAYS),
    st.sampled_from(MEALS),
    st.booleans(),
    st.integers(0, 3000),
    st.integers(0, 50),
)
op_check = st.tuples(st.just("check"), st.sampled_from(CADRES), st.booleans(), st.integers(0, 50))
op_reverse = st.tuples(st.just("reverse"), st.integers(0, 40))
op_ack = st.tuples(st.just("ack"), st.integers(0, 40))
operations = st.lists(st.one_of(op_sale, op_check, op_reverse, op_ack), max_size=30)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, every=st.integers(1, 6))
def test_ledger_matches_a_simple_model(ops: list[tuple[Any, ...]], every: int) -> None:
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "ledger.db"
        led = Ledger.open(
            path, terminal_id="t-m", signing_key=key, now_ms=T0, checkpoint_every=every
        )
        # model: seq -> dict of what matters; genesis is seq 1
        model: dict[int, dict[str, Any]] = {1: {"kind": GENESIS, "acked": None}}
        reversed_: set[int] = set()
        now = T0
        for op in ops:
            now += 1000
            if op[0] == "sale":
                _, cadre, day, meal, accepted, fen, ctr = op
                e = led.append(
                    sale(cadre, accepted=accepted, day=day, meal=meal, fen=fen, ctr=ctr), now
                )
                model[e.seq] = {
                    "kind": SALE, "cadre": cadre, "day": day, "meal": meal, "ok": accepted,
                    "fen": fen if accepted else 0, "ctr": ctr, "cred": f"qr/iss/{cadre}",
                    "acked": None,
                }  # fmt: skip
            elif op[0] == "check":
                _, cadre, accepted, ctr = op
                draft = EntryDraft(
                    kind=TOKEN_CHECK,
                    verdict=ACCEPT if accepted else REJECT,
                    credential=f"qr/iss/{cadre}",
                    ctr=ctr,
                )
                e = led.append(draft, now)
                model[e.seq] = {
                    "kind": TOKEN_CHECK, "ok": accepted, "ctr": ctr, "cred": f"qr/iss/{cadre}",
                    "acked": None,
                }  # fmt: skip
            elif op[0] == "reverse":
                target = model.get(op[1])
                valid = (
                    target is not None
                    and target["kind"] == SALE
                    and target["ok"]
                    and op[1] not in reversed_
                )
                if valid:
                    e = led.append(EntryDraft(kind=REVERSAL, ref_seq=op[1]), now)
                    model[e.seq] = {"kind": REVERSAL, "acked": None}
                    reversed_.add(op[1])
                else:
                    with pytest.raises(LedgerError, match="reversal refused"):
                        led.append(EntryDraft(kind=REVERSAL, ref_seq=op[1]), now)
            else:
                up_to = op[1]
                if up_to > len(model):
                    with pytest.raises(LedgerError):
                        led.mark_acked(up_to, now)
                else:
                    fresh = [s for s in model if s <= up_to and model[s]["acked"] is None]
                    for s in fresh:
                        model[s]["acked"] = now
                    assert led.mark_acked(up_to, now) == len(fresh)

            live_sales = {
                s: m for s, m in model.items()
                if m["kind"] == SALE and m["ok"] and s not in reversed_
            }  # fmt: skip
            assert led.last_seq() == len(model)
            for cadre in CADRES:
                for day in DAYS:
                    mine = [
                        m for m in live_sales.values() if m["cadre"] == cadre and m["day"] == day
                    ]
                    assert led.day_totals(cadre, day) == (len(mine), sum(m["fen"] for m in mine))
                    for meal in MEALS:
                        assert led.served(cadre, day, meal) == any(m["meal"] == meal for m in mine)
                ctrs = [
                    m["ctr"] for m in model.values()
                    if m.get("cred") == f"qr/iss/{cadre}" and m["ok"]
                ]  # fmt: skip
                assert led.highest_ctr(f"qr/iss/{cadre}") == (max(ctrs) if ctrs else None)
            unacked = [s for s, m in model.items() if m["acked"] is None]
            unacked_fen = sum(m["fen"] for s, m in live_sales.items() if m["acked"] is None)
            assert led.unsynced() == (len(unacked), unacked_fen)
            acks = [m["acked"] for m in model.values() if m["acked"] is not None]
            assert led.last_ack_ms() == (max(acks) if acks else None)
            last = max(live_sales) if live_sales else None
            got = led.last_sale()
            assert (got.seq if got else None) == last
        assert verify_file(path).ok
        led.close()
        report = verify_file(path, public_bytes(key))
        assert report.ok and report.entries == len(model)


# --- group commit ---------------------------------------------------------------------


def test_a_group_commits_its_entries_together(ledger: Ledger, path: Path) -> None:
    before = ledger.last_seq()
    with ledger.group():
        entries = [ledger.append(sale(f"iss/g{i}"), T0 + i + 1) for i in range(6)]
        # Inside the group the worker's own queries already see them (same connection)...
        assert ledger.served("iss/g3", DAY, "lunch")
        # ...but another connection does not: nothing is durable yet.
        other = sqlite3.connect(path)
        assert other.execute("SELECT max(seq) FROM entries").fetchone()[0] == before
        other.close()
    assert [e.seq for e in entries] == list(range(before + 1, before + 7))
    assert ledger.unsynced() == (before + 6, 6 * 1200)
    ledger.close()
    assert verify_file(path).ok


def test_an_exception_rolls_the_whole_group_back(ledger: Ledger) -> None:
    fill(ledger, 2)
    before = (ledger.last_seq(), ledger.unsynced())
    with pytest.raises(RuntimeError), ledger.group():
        ledger.append(sale("iss/x1"), T0 + 10_000)
        ledger.append(sale("iss/x2"), T0 + 10_001)
        raise RuntimeError("power cut in the middle of the group")
    assert (ledger.last_seq(), ledger.unsynced()) == before
    assert not ledger.served("iss/x1", DAY, "lunch")


def test_a_refused_append_leaves_the_rest_of_its_group(ledger: Ledger, path: Path) -> None:
    with ledger.group():
        first = ledger.append(sale("iss/y1"), T0 + 1)
        with pytest.raises(LedgerError, match="not an accepted sale"):
            ledger.append(EntryDraft(kind=REVERSAL, ref_seq=1, amount_fen=5), T0 + 2)
        second = ledger.append(sale("iss/y2"), T0 + 3)
    assert second.seq == first.seq + 1 and second.prev_hash == first.hash
    with pytest.raises(LedgerError, match="do not nest"), ledger.group(), ledger.group():
        pass
    ledger.close()
    assert verify_file(path).ok


def test_a_kill_inside_a_group_leaves_none_of_it(path: Path, key: Ed25519PrivateKey) -> None:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)
    led.close()
    child = """
import sys, threading
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from terminal.ledger import ACCEPT, SALE, EntryDraft, Ledger
key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[2]))
led = Ledger.open(sys.argv[1], terminal_id="t-001", signing_key=key, now_ms=1)
with led.group():
    for i in range(5):
        led.append(EntryDraft(kind=SALE, verdict=ACCEPT, cadre=f"iss/k{i}", amount_fen=1), 10 + i)
    print("appended", flush=True)
    threading.Event().wait(60)  # inside the group until the test kills this process
"""
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(path), raw.hex()],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"appended"
    proc.kill()
    proc.wait()
    report = verify_file(path)
    assert report.ok and report.entries == 1  # genesis only: the group never committed


# --- retention ------------------------------------------------------------------------


def aged_ledger(path: Path, key: Ed25519PrivateKey, n: int = 40) -> Ledger:
    led = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0, checkpoint_every=8)
    for i in range(n):
        led.append(sale(f"iss/p{i}", credential=f"qr/iss/{i % 5:02x}", ctr=i), T0 + 1000 * (i + 1))
    return led


def test_prune_removes_only_acknowledged_old_entries_up_to_a_checkpoint(
    path: Path, key: Ed25519PrivateKey
) -> None:
    led = aged_ledger(path, key)
    assert led.prune(T0 + 10**9, T0 + 100_000) == 0  # nothing acknowledged: nothing goes
    led.mark_acked(30, T0 + 50_000)
    removed = led.prune(T0 + 10**9, T0 + 100_000)
    assert removed == 24  # up to checkpoint 24, the last one below the first unacked (31)
    assert led.entry(24) is None and led.entry(25) is not None
    last = led.entry(led.last_seq())
    assert last is not None and last.kind == PRUNED and last.detail["up_to_seq"] == 24
    # Replay memory survives: the highest counters of pruned credentials are kept.
    assert led.highest_ctr("qr/iss/00") == 35
    assert led.highest_ctr("qr/iss/03") == 38
    led.append(sale("iss/after"), T0 + 200_000)
    led.close()
    report = verify_file(path, public_bytes(key))
    assert report.ok, report.problem
    again = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)
    assert again.prune(T0 + 10**9, T0 + 300_000) == 0  # nothing new to prune
    again.close()


def test_the_last_acknowledgement_outlives_a_prune_of_every_acknowledged_entry(
    path: Path, key: Ed25519PrivateKey
) -> None:
    # Up to entry 24 acknowledged, 24 is a checkpoint: the prune takes every acknowledged
    # entry. "Time since the last sync" (sync_overdue) must still count from the county's
    # acknowledgement, not fall back to the ledger's start.
    led = aged_ledger(path, key)
    led.mark_acked(24, T0 + 50_000)
    assert led.prune(T0 + 10**9, T0 + 100_000) == 24
    assert led.entry(25) is not None and led.entry(25).acked_at_ms is None  # type: ignore[union-attr]
    assert led.last_ack_ms() == T0 + 50_000
    led.close()
    assert verify_file(path, public_bytes(key)).ok
    again = Ledger.open(path, terminal_id="t-001", signing_key=key, now_ms=T0)
    assert again.last_ack_ms() == T0 + 50_000
    again.mark_acked(30, T0 + 70_000)
    assert again.last_ack_ms() == T0 + 70_000
    again.close()


def test_prune_keeps_what_is_younger_than_the_retention(path: Path, key: Ed25519PrivateKey) -> None:
    led = aged_ledger(path, key)
    led.mark_acked(led.last_seq(), T0 + 50_000)
    assert led.prune(T0 + 9_000, T0 + 60_000) == 8  # only entries older than 9 s: up to cp 8
    led.close()
    assert verify_file(path).ok


def test_a_faked_prune_is_caught(path: Path, key: Ed25519PrivateKey) -> None:
    led = aged_ledger(path, key)
    led.close()
    conn = attacker(path)
    # Delete unsent entries and claim a prune point without a pruned entry in the chain.
    point_hash = conn.execute("SELECT hash FROM entries WHERE seq = 16").fetchone()[0]
    conn.execute("INSERT INTO pruned VALUES (1, 16, ?, 0)", (point_hash,))
    conn.execute("DELETE FROM entries WHERE seq <= 16")
    conn.commit()
    conn.close()
    report = verify_file(path)
    assert not report.ok and "no pruned entry" in (report.problem or "")


def test_a_prune_point_without_its_checkpoint_is_caught(path: Path, key: Ed25519PrivateKey) -> None:
    led = aged_ledger(path, key)
    led.mark_acked(led.last_seq(), T0 + 50_000)
    led.prune(T0 + 10**9, T0 + 60_000)
    led.close()
    conn = attacker(path)
    point = conn.execute("SELECT up_to_seq FROM pruned").fetchone()[0]
    conn.execute("DELETE FROM checkpoints WHERE seq = ?", (point,))
    conn.commit()
    conn.close()
    report = verify_file(path)
    assert not report.ok and "not covered by a signed checkpoint" in (report.problem or "")


def test_triggers_still_refuse_deleting_unacknowledged_entries(
    path: Path, key: Ed25519PrivateKey
) -> None:
    led = aged_ledger(path, key)
    led.mark_acked(10, T0 + 50_000)
    led.prune(T0 + 10**9, T0 + 60_000)
    led.close()
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 30")
    with pytest.raises(sqlite3.DatabaseError, match="cannot be removed"):
        conn.execute("DELETE FROM pruned")
    with pytest.raises(sqlite3.DatabaseError, match="only move forward"):
        conn.execute("UPDATE pruned SET up_to_seq = 1")
    conn.close()
