"""The county database's migrations and its own commands (county/db/migrations.py,
county/db/alembic/, county/db/copy.py, county/db_cli.py), on real SQLite files and a
real PostgreSQL (conftest's pg_url).

What is proved: a SQLite county made by the version before migrations is adopted with
its rows; the migrated schema is the model's; PostgreSQL behind head is refused with
the command that upgrades it; an upgrade killed while it waits on a lock runs again to
head with the data intact; a SQLite county copied to PostgreSQL answers `entries`,
`alarms`, `conflicts` and `revocations` as before and goes on taking syncs; a tampered
copy fails `db verify` naming the terminal and entry; a bad URL is one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import wait_for
from countykit import T0_MS, County, make_county, provision_terminal, signed_sale, sync
from hwsim.wallet import Issuer, key_from_seed, make_wallet
from sqlalchemy import insert, select, text

from county.app import CountyServer
from county.cli import main as county_main
from county.db import Database, migrations
from county.db.schema import alarms, conflicts, metadata
from protocol.chain import GENESIS_PREV_HASH, HASHED_COLUMNS, entry_hash

ROOT = Path(__file__).resolve().parent.parent
REPORT_INDEXES = {
    "entries_canteen_day",
    "entries_day",
    "entries_unit_day",
    "entries_terminal_at",
    "entries_at_ms",
}


def _county(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """canteen-county ARGS in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = county_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _county_process(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    return subprocess.Popen(
        [sys.executable, "-m", "county.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _chain(terminal: str, canteen: str, n: int) -> list[dict[str, Any]]:
    """``n`` linked entries of one terminal as the county stores them."""
    rows, prev = [], GENESIS_PREV_HASH
    for seq in range(1, n + 1):
        fields = {
            "seq": seq,
            "entry_id": f"{terminal}-{seq:08d}",
            "at_ms": T0_MS + seq,
            "kind": "sale",
            "verdict": "accept",
            "reason": None,
            "method": "card",
            "cadre": f"iss/c{seq}",
            "credential": f"card/{seq:08x}",
            "ctr": None,
            "unit": "u-tax",
            "day": "2026-05-28",
            "meal": "lunch",
            "amount_fen": 1000,
            "ref_seq": None,
            "detail": "{}",
        }
        digest = entry_hash(prev, [fields[c] for c in HASHED_COLUMNS])
        rows.append(
            {
                **fields,
                "terminal": terminal,
                "canteen": canteen,
                "prev_hash": prev,
                "hash": digest,
                "received_ms": T0_MS + 10_000,
            }
        )
        prev = digest
    return rows


# ---- a SQLite county of the version before migrations ----

# The tables as the first county version made them (CREATE TABLE IF NOT EXISTS at each
# start): conflicts without their evidence columns, one revocation per credential in
# `revocations`, no issuer keys, evidence or clock offsets yet.
FIRST_VERSION_SQL = """
CREATE TABLE terminals (terminal_id TEXT PRIMARY KEY, canteen TEXT NOT NULL,
    code_hash BLOB UNIQUE, code_expires_ms INTEGER, cert_sha256 TEXT UNIQUE, ledger_key BLOB,
    registered_ms INTEGER NOT NULL, provisioned_ms INTEGER, last_seen_ms INTEGER,
    acked_seq INTEGER NOT NULL DEFAULT 0, last_hash BLOB NOT NULL) STRICT;
CREATE TABLE entries (terminal TEXT NOT NULL, canteen TEXT NOT NULL, seq INTEGER NOT NULL,
    entry_id TEXT NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, verdict TEXT,
    reason TEXT, method TEXT, cadre TEXT, credential TEXT, ctr INTEGER, unit TEXT, day TEXT,
    meal TEXT, amount_fen INTEGER NOT NULL, ref_seq INTEGER, detail TEXT NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (terminal, seq)) STRICT, WITHOUT ROWID;
CREATE INDEX entries_presentation ON entries (credential, ctr)
    WHERE kind = 'sale' AND verdict = 'accept';
CREATE INDEX entries_served ON entries (cadre, day, meal)
    WHERE kind = 'sale' AND verdict = 'accept';
CREATE INDEX entries_reversals ON entries (terminal, ref_seq) WHERE kind = 'reversal';
CREATE TABLE checkpoints (terminal TEXT NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL,
    at_ms INTEGER NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (terminal, seq))
    STRICT, WITHOUT ROWID;
CREATE TABLE held_batches (terminal TEXT NOT NULL, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, body TEXT NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (terminal, first_seq, last_seq)) STRICT;
CREATE TABLE alarms (id INTEGER PRIMARY KEY, terminal TEXT NOT NULL, kind TEXT NOT NULL,
    seq INTEGER NOT NULL, theirs BLOB, ours BLOB, problem TEXT NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, times INTEGER NOT NULL DEFAULT 1,
    UNIQUE (terminal, kind, seq, theirs)) STRICT;
CREATE TABLE conflicts (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, credential TEXT,
    cadre TEXT, unit TEXT, day TEXT, meal TEXT, first_terminal TEXT NOT NULL,
    first_seq INTEGER NOT NULL, second_terminal TEXT NOT NULL, second_seq INTEGER NOT NULL,
    found_ms INTEGER NOT NULL, UNIQUE (kind, second_terminal, second_seq)) STRICT;
CREATE TABLE revocations (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,
    credential TEXT NOT NULL UNIQUE, entry TEXT NOT NULL, conflict_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL) STRICT;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
INSERT INTO alarms (id, terminal, kind, seq, problem, first_ms, last_ms, times)
    VALUES (7, 'a1', 'fork', 3, 'a different entry 3', 1, 2, 2);
INSERT INTO conflicts (id, kind, credential, cadre, unit, day, meal, first_terminal,
    first_seq, second_terminal, second_seq, found_ms)
    VALUES (4, 'presentation_twice', 'qr/iss/00ff', 'iss/x', 'u-tax', '2026-05-28', 'lunch',
    'a1', 1, 'b1', 2, 5);
INSERT INTO revocations (kind, credential, entry, conflict_id, created_ms)
    VALUES ('presentation_twice', 'qr/iss/00ff', '{"kind": "credential"}', 4, 6);
INSERT INTO counters VALUES ('revocation_version', 3);
"""

# A later version's evidence table, before it kept a code's own time `t`.
EVIDENCE_WITHOUT_T_SQL = """
CREATE TABLE evidence (terminal TEXT NOT NULL, seq INTEGER NOT NULL, canteen TEXT NOT NULL,
    method TEXT NOT NULL, cadre TEXT NOT NULL, name TEXT, credential TEXT NOT NULL,
    ctr INTEGER, day TEXT, meal TEXT, at_ms INTEGER NOT NULL, hash BLOB NOT NULL,
    received_ms INTEGER NOT NULL, PRIMARY KEY (terminal, seq)) STRICT, WITHOUT ROWID;
INSERT INTO evidence VALUES ('a1', 2, 'canteen-a', 'qr', 'iss/x', NULL, 'qr/iss/00ff', 1,
    '2026-05-28', 'lunch', 1780000000123, x'00', 5);
"""


def _old_county(path: Path, sql: str) -> list[dict[str, Any]]:
    """An old-version county.sqlite at ``path`` with a terminal and its 3-entry chain."""
    chain = _chain("a1", "canteen-a", 3)
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    if "CREATE TABLE terminals" not in sql:
        conn.executescript(FIRST_VERSION_SQL.split("CREATE INDEX")[0])
    cols = list(chain[0])
    conn.executemany(
        f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [tuple(row[c] for c in cols) for row in chain],
    )
    conn.execute(
        "INSERT INTO terminals (terminal_id, canteen, registered_ms, acked_seq, last_hash)"
        " VALUES ('a1', 'canteen-a', 1, 3, ?)",
        (chain[-1]["hash"],),
    )
    conn.commit()
    conn.close()
    return chain


@pytest.mark.parametrize("sql", [FIRST_VERSION_SQL, EVIDENCE_WITHOUT_T_SQL], ids=["first", "t"])
def test_an_old_sqlite_county_is_adopted_with_its_rows(
    tmp_path: Path, sql: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "county"
    data.mkdir()
    chain = _old_county(data / "county.sqlite", sql)
    rc, out, err = _county("db", "status", "--data", str(data), capsys=capsys)
    assert rc == 1 and json.loads(out)["current"] is None, err

    # Any command that opens a SQLite county upgrades it: --data alone, as before.
    rc, out, err = _county("entries", "--data", str(data), capsys=capsys)
    assert rc == 0, err
    assert [json.loads(line)["hash"] for line in out.splitlines()] == [
        e["hash"].hex() for e in chain
    ]
    rc, out, _ = _county("db", "status", "--data", str(data), capsys=capsys)
    assert rc == 0 and json.loads(out)["current"] == migrations.head()
    rc, out, err = _county("db", "verify", "--data", str(data), capsys=capsys)
    assert rc == 0 and "3 entries of 1 terminals" in out, err

    conn = sqlite3.connect(data / "county.sqlite")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {t.name for t in metadata.sorted_tables} <= tables
    assert "revocations" not in tables
    if sql is FIRST_VERSION_SQL:
        # Rows kept, the conflict's later columns added, the revocation moved to it.
        assert conn.execute("SELECT id, times FROM alarms").fetchall() == [(7, 2)]
        assert conn.execute(
            "SELECT id, cadre, first_canteen, withdrawn_ms FROM conflicts"
        ).fetchall() == [(4, "iss/x", None, None)]
        assert conn.execute(
            "SELECT conflict_id, credential, created_ms FROM conflict_revocations"
        ).fetchall() == [(4, "qr/iss/00ff", 6)]
        assert conn.execute("SELECT value FROM counters").fetchall() == [(3,)]
    else:
        # The code's time is filled from the entry's own (in seconds).
        assert conn.execute("SELECT t, cadre FROM evidence").fetchall() == [
            (1_780_000_000, "iss/x")
        ]
    conn.close()
    if sql is FIRST_VERSION_SQL:
        rc, out, err = _county("conflicts", "--data", str(data), "--json", capsys=capsys)
        assert rc == 0, err
        [found] = [json.loads(line) for line in out.splitlines()]
        assert found["id"] == 4 and found["revokes"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrated_schema_is_the_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = (
        f"sqlite:///{tmp_path / 'county.sqlite'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    db = Database(url)
    try:
        assert migrations.upgrade(db) == (None, migrations.head())
        assert migrations.upgrade(db) == (migrations.head(), migrations.head())
        with db.read() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
            indexes = {
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT name FROM sqlite_master WHERE type = 'index'"
                        if db.is_sqlite
                        else "SELECT indexname FROM pg_indexes WHERE tablename = 'entries'"
                    )
                )
            }
    finally:
        db.close()
    # Every table, column and index the migrations make is in the model, and no more.
    assert diff == []
    assert indexes >= REPORT_INDEXES


def test_postgresql_behind_head_is_refused_with_the_command_that_upgrades_it(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _county("entries", "--database", pg_url, capsys=capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "is at revision none" in err and "canteen-county db upgrade --database" in err
    rc, out, _ = _county("db", "status", "--database", pg_url, capsys=capsys)
    assert rc == 1
    assert json.loads(out) | {"url": ""} == {
        "backend": "postgresql",
        "url": "",
        "current": None,
        "head": migrations.head(),
        "at_head": False,
    }
    rc, out, err = _county("db", "upgrade", "--database", pg_url, capsys=capsys)
    assert rc == 0 and f"revision none to {migrations.head()}" in out, err
    rc, out, err = _county("db", "upgrade", "--database", pg_url, capsys=capsys)
    assert rc == 0 and "this version's head" in out, err
    rc, out, err = _county("entries", "--database", pg_url, capsys=capsys)
    assert (rc, out) == (0, ""), err


def test_the_database_url_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As systemd's EnvironmentFile= gives it: no password on any command line.
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    monkeypatch.setenv("CANTEEN_COUNTY_DATABASE", url)
    rc, out, err = _county("db", "upgrade", capsys=capsys)
    assert rc == 0 and "elsewhere.sqlite" in out, err
    rc, out, err = _county("db", "status", capsys=capsys)
    assert rc == 0 and json.loads(out)["url"].endswith("elsewhere.sqlite"), err
    # --database still wins.
    other = tmp_path / "other.sqlite"
    rc, out, err = _county("db", "upgrade", "--database", f"sqlite:///{other}", capsys=capsys)
    assert rc == 0 and "other.sqlite" in out, err


def test_a_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    data = tmp_path / "county"
    data.mkdir()
    _old_county(data / "county.sqlite", FIRST_VERSION_SQL)
    main, side = pty.openpty()
    # A terminal of 24 lines of 100 columns (a new pty has none, and tqdm fits the width).
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "county.cli", "db", "verify", "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=side,
        env=env,
    )
    os.close(side)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(main, 4096):
            shown += chunk
    os.close(main)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"3 entries of 1 terminals" in out
    assert b"verify" in shown and b"3/3" in shown, shown


@pytest.mark.parametrize(
    "url",
    [
        "mysql://admin:hunter2secret@db.example/county",
        "postgresql://admin:hunter2secret@127.0.0.1:1/county",
        "not a url",
        "sqlite://",
    ],
)
def test_a_bad_database_url_is_one_line_without_its_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (("entries", "--database", url), ("db", "status", "--database", url)):
        rc, out, err = _county(*args, capsys=capsys)
        assert rc == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("canteen-county: error: "), err
        assert "hunter2secret" not in err and "Traceback" not in err


# ---- an upgrade killed half-way ----


def test_an_upgrade_killed_while_waiting_on_a_lock_runs_again_to_head(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = Database(pg_url)
    try:
        assert migrations.upgrade(db, to="0001") == (None, "0001")
        chain = _chain("a1", "canteen-a", 50)
        with db.write() as conn:
            conn.execute(insert(metadata.tables["entries"]), chain)
            conn.execute(
                insert(metadata.tables["terminals"]),
                [
                    {
                        "terminal_id": "a1",
                        "canteen": "canteen-a",
                        "registered_ms": 1,
                        "acked_seq": 50,
                        "last_hash": chain[-1]["hash"],
                    }
                ],
            )
    finally:
        db.close()
    with psycopg.connect(pg_url, autocommit=True) as watch, psycopg.connect(pg_url) as holder:
        # 0002 indexes entries: a lock on entries keeps it waiting there.
        holder.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
        upgrade = _county_process("db", "upgrade", "--database", pg_url)
        try:

            def waiting_on_the_lock() -> bool:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'canteen-county' AND wait_event_type = 'Lock'"
                ).fetchone()
                return row is not None and row[0] == 1

            wait_for(waiting_on_the_lock, what="db upgrade to wait on the lock on entries")
            os.kill(upgrade.pid, signal.SIGKILL)
            assert upgrade.wait(30) == -signal.SIGKILL
        finally:
            if upgrade.poll() is None:
                upgrade.kill()
            upgrade.communicate()
        # Its session notices the client is gone and ends, while the lock is still held.

        def session_gone() -> bool:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'canteen-county'"
            ).fetchone()
            return row is not None and row[0] == 0

        wait_for(session_gone, what="the killed upgrade's session to end")
        # 0001 stays applied; 0002 never committed.
        [(version,)] = watch.execute("SELECT version_num FROM alembic_version").fetchall()
        assert version == "0001"
        holder.rollback()  # the lock goes

    rc, out, err = _county("db", "upgrade", "--database", pg_url, capsys=capsys)
    assert rc == 0 and f"revision 0001 to {migrations.head()}" in out, err
    rc, out, err = _county("db", "status", "--database", pg_url, capsys=capsys)
    assert rc == 0 and json.loads(out)["at_head"] is True, err
    rc, out, err = _county("db", "verify", "--database", pg_url, capsys=capsys)
    assert rc == 0 and "50 entries of 1 terminals" in out, err
    rc, out, err = _county("entries", "--database", pg_url, capsys=capsys)
    assert [json.loads(line)["hash"] for line in out.splitlines()] == [
        e["hash"].hex() for e in chain
    ]


# ---- a SQLite county copied into PostgreSQL ----


def _busy_county(county: County, tmp_path: Path) -> list[Any]:
    """Intake as it happens: two canteens' terminals with sales, reversals and refusals,
    sales without evidence (alarms), and two conflicts with their revocations."""
    issuer = Issuer("iss", key_from_seed("county-copy-issuer"))
    county.store.add_issuer_keys([issuer.trust_entry()], T0_MS)
    t0 = T0_MS // 1000

    x = make_wallet(issuer, "x", "u-tax", "x", now=t0 - 86_400, seed="x")
    copied = x.draw(t0, ctr=5)
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    for term, draft in (
        (a, signed_sale(issuer, "x", "u-tax", t0, code=copied, ctr=5)),
        (b, signed_sale(issuer, "x", "u-tax", t0, code=copied, ctr=5)),
        (b, signed_sale(issuer, "z", "u-water", t0, ctr=1)),
        (a, signed_sale(issuer, "z", "u-water", t0 + 60, ctr=2)),
    ):
        book = term.open_ledger()
        book.append(draft, T0_MS)
        book.close()
        sync(term)
    a.append_entries(120)
    sync(a)
    return [a, b]


def _listing(capsys: pytest.CaptureFixture[str], *where: str) -> dict[str, str]:
    found = {}
    for command in (["entries"], ["alarms"], ["conflicts", "--json", "--all"], ["revocations"]):
        rc, out, err = _county(*command, *where, capsys=capsys)
        assert rc == 0, err
        if command == ["revocations"]:
            doc = json.loads(out)
            out = json.dumps(doc["entries"])  # issued_at is the time of asking
        found[command[0]] = out
    return found


def test_a_sqlite_county_copied_to_postgresql_is_the_same_and_goes_on(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    county = make_county(tmp_path).start()
    try:
        terminals = _busy_county(county, tmp_path)
        assert len(county.store.conflicts()) == 2 and county.store.alarms()
        # The terminals know the server by its address: the PostgreSQL one takes it over.
        port = int(county.url.split("//")[1].split("/")[0].rsplit(":", 1)[1])
    finally:
        county.stop()
    sqlite_url = f"sqlite:///{county.data / 'county.sqlite'}"
    before = _listing(capsys, "--data", str(county.data))
    assert before["entries"].count("\n") > 120

    # The target must be upgraded first, and empty.
    rc, _, err = _county("db", "copy", "--from", sqlite_url, "--to", pg_url, capsys=capsys)
    assert rc == 2 and "db upgrade --database" in err and len(err.splitlines()) == 1
    assert _county("db", "upgrade", "--database", pg_url, capsys=capsys)[0] == 0
    rc, out, err = _county(
        "db", "copy", "--from", sqlite_url, "--to", pg_url, "--batch", "7", capsys=capsys
    )
    assert rc == 0, err
    assert "re-hashed and linked" in out and len(out.splitlines()) == 1
    assert err == ""  # no progress bar where standard error is not a terminal
    assert _listing(capsys, "--database", pg_url) == before
    rc, _, err = _county("db", "copy", "--from", sqlite_url, "--to", pg_url, capsys=capsys)
    assert rc == 2 and "is not empty" in err

    # The copied ids are behind the sequences: a new alarm or conflict gets a new id.
    db = Database(pg_url)
    try:
        with db.write() as conn:
            top = conn.execute(select(alarms.c.id).order_by(alarms.c.id.desc())).scalars().first()
            new = conn.execute(
                insert(alarms)
                .values(terminal="a1", kind="fork", seq=1, problem="p", first_ms=1, last_ms=1)
                .returning(alarms.c.id)
            ).scalar_one()
            assert top is not None and new > top
            top_c = conn.execute(select(conflicts.c.id).order_by(conflicts.c.id.desc())).scalar()
            nxt = conn.execute(text("SELECT nextval(pg_get_serial_sequence('conflicts', 'id'))"))
            assert top_c is not None and nxt.scalar_one() > top_c
            conn.rollback()
    finally:
        db.close()

    # The county goes on on PostgreSQL: the terminal's next entries link to the copy's.
    county.server = CountyServer(county.data, port=port, database_url=pg_url).start()
    try:
        terminals[0].append_entries(5)
        sync(terminals[0])
    finally:
        county.stop()
    rc, out, err = _county("db", "verify", "--database", pg_url, capsys=capsys)
    assert rc == 0, err

    # A row changed in the copy is found, named by terminal and entry.
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "UPDATE entries SET amount_fen = amount_fen + 1 WHERE terminal = 'a1' AND seq = 7"
        )
    rc, out, err = _county("db", "verify", "--database", pg_url, capsys=capsys)
    assert rc == 2 and out == ""
    assert "terminal a1 entry 7: its hash does not match its fields" in err
    assert len(err.splitlines()) == 1


def test_a_copy_that_fails_its_check_leaves_the_target_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Any backend to any: SQLite to SQLite here. The source's entry 2 was altered.
    data = tmp_path / "county"
    data.mkdir()
    _old_county(data / "county.sqlite", FIRST_VERSION_SQL)
    conn = sqlite3.connect(data / "county.sqlite")
    conn.execute("UPDATE entries SET amount_fen = 1 WHERE seq = 2")
    conn.commit()
    conn.close()
    target = f"sqlite:///{tmp_path / 'copy.sqlite'}"
    assert _county("db", "upgrade", "--database", target, capsys=capsys)[0] == 0
    rc, out, err = _county(
        "db", "copy", "--from", f"sqlite:///{data / 'county.sqlite'}", "--to", target,
        capsys=capsys,
    )  # fmt: skip
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert "terminal a1 entry 2: its hash does not match its fields" in err
    for command in ("entries", "alarms"):
        assert _county(command, "--database", target, capsys=capsys)[:2] == (0, "")


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE entries (note TEXT)",  # no key columns: not the county's entries
        "CREATE TABLE revocations (k BLOB PRIMARY KEY, origin TEXT)",  # another revocations
    ],
    ids=["entries", "revocations"],
)
def test_a_database_that_is_not_a_county_is_refused_unchanged(
    tmp_path: Path, sql: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()
    rc, out, err = _county("db", "upgrade", "--database", f"sqlite:///{path}", capsys=capsys)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "run the upgrade again" in err and "Traceback" not in err
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    # The baseline was rolled back: not one county table was made.
    assert tables <= {"entries", "revocations", "alembic_version"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_upgrades_at_once_take_turns(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Two servers' migrate units, or a server and county IT: neither may see the other's
    # half-made tables; the second finds the database at head.
    county_db_url = (
        f"sqlite:///{tmp_path / 'county.sqlite'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))  # empty, not upgraded
    )
    first, second = (_county_process("db", "upgrade", "--database", county_db_url) for _ in "12")
    results = [p.communicate(timeout=120) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], results
    outs = sorted(out for out, _ in results)
    assert "this version's head" in outs[0] and "revision none to" in outs[1], outs
    db = Database(county_db_url)
    try:
        with db.read() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                (migrations.head(),)
            ]
    finally:
        db.close()
