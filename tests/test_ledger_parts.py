"""The ledger's parts beside it: one write transaction (terminal/durable.py), the names
terminal.ledger re-exports from ledger_schema, ledger_audit and ledger_key, and the one
synthetic ledger writer (tests/ledger_writer.py) that tests and bench share.
Real SQLite files, no mocks."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_writer import synthetic_draft, write_synthetic

from protocol import chain
from terminal import ledger, ledger_audit, ledger_key, ledger_schema
from terminal.durable import write_transaction


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    c.execute("CREATE TABLE t (n INTEGER)")
    yield c
    c.close()


def rows(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT n FROM t ORDER BY n")]


def test_a_write_transaction_commits_when_the_block_ends(conn: sqlite3.Connection) -> None:
    with write_transaction(conn) as c:
        assert c is conn and conn.in_transaction
        conn.execute("INSERT INTO t VALUES (1)")
    assert not conn.in_transaction and rows(conn) == [1]


def test_an_exception_rolls_the_whole_transaction_back(conn: sqlite3.Connection) -> None:
    with pytest.raises(KeyError), write_transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        raise KeyError("the block failed")
    assert not conn.in_transaction and rows(conn) == []


def test_a_failed_savepoint_leaves_the_rest_of_its_transaction(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        with write_transaction(conn, "entry"):
            conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError), write_transaction(conn, "entry"):
            conn.execute("INSERT INTO t VALUES (2)")
            raise ValueError("refused")
        assert conn.in_transaction  # the outer transaction is still open
    assert rows(conn) == [1]


def test_a_transaction_sqlite_rolled_back_does_not_end_in_silence(
    conn: sqlite3.Connection,
) -> None:
    # What a full disk or an I/O error does: SQLite ends the transaction by itself.
    with pytest.raises(sqlite3.OperationalError, match="rolled back"), write_transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("ROLLBACK")
    assert rows(conn) == []


def test_the_write_lock_is_taken_at_begin(tmp_path: Path, conn: sqlite3.Connection) -> None:
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None, timeout=0)
    try:
        with write_transaction(conn), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


def test_terminal_ledger_reexports_the_names_that_moved_beside_it() -> None:
    moved = {
        chain: ("EntryDraft", "LedgerEntry", "SALE", "ACCEPT", "entry_hash"),
        ledger_audit: (
            "ChainAudit",
            "ChainMark",
            "StartCheck",
            "VerifyReport",
            "check_at_start",
            "export_file",
            "stats_file",
            "verify_file",
        ),
        ledger_key: ("load_or_create_signing_key",),
        ledger_schema: ("ALL_COLUMNS", "SCHEMA_VERSION", "LedgerError"),
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(ledger, name) is getattr(module, name), name
    assert ledger_schema.MIGRATIONS[-1][0] == ledger_schema.SCHEMA_VERSION


def test_the_synthetic_writer_makes_sales_refusals_and_reversals(tmp_path: Path) -> None:
    key = ledger.load_or_create_signing_key(tmp_path / "k.pem")
    book = ledger.Ledger.open(
        tmp_path / "l.db", terminal_id="t", signing_key=key, now_ms=1, checkpoint_every=16
    )
    write_synthetic(book, 120, group=32)  # grouped, as bench/ledger_start.py builds
    write_synthetic(book, 30, start=120)  # one commit each, as bench/ledger_bench.py
    book.close()
    stats = ledger.stats_file(tmp_path / "l.db")
    assert stats["entries"] == 151  # and genesis
    assert stats["by_kind"] == {"genesis": 1, "sale": 148, "reversal": 2}
    assert stats["by_verdict"]["reject"] == 15  # every tenth
    assert ledger.verify_file(tmp_path / "l.db", ledger_key.public_bytes(key)).ok

    # The same numbers give the same entries: a bench run can be built again.
    a = synthetic_draft(7, random.Random(3), 0)
    b = synthetic_draft(7, random.Random(3), 0)
    assert a == b and a.verdict == ledger.ACCEPT and a.detail["qr"].startswith("CT1:")
    assert synthetic_draft(50, random.Random(3), 9).kind == ledger.REVERSAL
    assert synthetic_draft(50, random.Random(3), 0).kind == ledger.SALE  # nothing to reverse
    assert "qr" not in synthetic_draft(7, random.Random(3), 0, keep_code=False).detail
