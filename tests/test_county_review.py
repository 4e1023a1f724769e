"""A hostile review of the county's move to SQLAlchemy and PostgreSQL (issue 14).

Each test here is a finding of that review: something the port answered differently on
PostgreSQL than the SQLite store did (a 500 where a 4xx belongs, a batch that stays
poisoned), proved first on the backend that failed and kept on both. Every test goes
through the real county server over HTTPS with the terminal's client certificate, or
through the real store and commands.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest
from countykit import (
    ON_EACH_BACKEND,
    T0_MS,
    County,
    Terminal,
    make_county,
    post_ledger,
    provision_terminal,
    sync,
)
from pgkit import Cluster
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy import exc as sa_exc

from county.cli import main as county_main
from county.command import DATABASE_ENV
from county.db import Database, PoolLimits
from county.db.schema import entries, terminals
from county.reports import DayRange
from county.store import BatchInvalid, CountyStore, StoreError
from protocol.chain import checkpoint_message, entry_hash
from terminal.ledger import ACCEPT, SALE, load_or_create_signing_key

DAY = "2026-05-28"


def _signed_batch(
    county: County, term: Terminal, changes: list[dict[int, Any]], first: int | None = None
) -> dict[str, Any]:
    """A batch continuing what the county acknowledged of ``term`` (or starting at
    ``first``, linked to nothing the county holds), one card sale per item of
    ``changes`` (field index to value), its last entry signed with the terminal's own
    ledger key: everything a hostile terminal with its key can send."""
    with county.store.db.read() as conn:
        seq, prev = conn.execute(
            text("SELECT acked_seq, last_hash FROM terminals WHERE terminal_id = :t"),
            {"t": term.terminal_id},
        ).one()
    prev = bytes(prev)
    if first is not None:
        seq, prev = first - 1, bytes(32)
    rows: list[list[Any]] = []
    for change in changes:
        seq += 1
        fields: list[Any] = [seq, secrets.token_hex(8), T0_MS, SALE, ACCEPT, None, "card"]
        fields += ["iss/x", "card/0badc0de", None, "u", DAY, "lunch", 1000, None, "{}"]
        for index, value in change.items():
            fields[index] = value
        digest = entry_hash(prev, fields)
        rows.append([*fields, prev.hex(), digest.hex()])
        prev = digest
    key = load_or_create_signing_key(term.root / "terminal-key.pem")
    last = rows[-1]
    signature = key.sign(checkpoint_message(term.terminal_id, last[0], bytes.fromhex(last[17])))
    return {
        "nonce": "",
        "entries": rows,
        "checkpoints": [[last[0], last[17], 0, signature.hex()]],
    }


# --- NUL characters: PostgreSQL refuses them in text, SQLite stored them ------------------


@ON_EACH_BACKEND
def test_a_nul_character_in_a_text_field_is_a_400_and_the_terminal_goes_on(
    county: County, tmp_path: Path
) -> None:
    """PostgreSQL cannot store U+0000 in TEXT: a signed entry with one in its detail,
    cadre or another text field reached the database and came back as a 500 (retry for
    ever). It is malformed input, one line and 400 on both backends, nothing is stored,
    and the same terminal's honest batch is taken right after."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    acked = county.store.terminal("a1").acked_seq  # type: ignore[union-attr]
    for index, value in ((15, '{"note":"a\x00b"}'), (7, "iss/x\x00"), (1, "\x00"), (5, "r\x00")):
        answer = post_ledger(term, _signed_batch(county, term, [{}, {index: value}]))
        assert answer.status_code == 400, answer.text
        problem = answer.json()["problem"]
        assert "NUL" in problem and "\n" not in problem, problem
        assert county.store.terminal("a1").acked_seq == acked  # type: ignore[union-attr]
    answer = post_ledger(term, _signed_batch(county, term, [{}, {}]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2


# --- db copy: an old SQLite county's odd rows, and the target's password ------------------


def _sqlite_county_with_a_nul(tmp_path: Path) -> str:
    """A SQLite county holding an entry whose detail has a NUL character, as a county
    stored it before the server refused them."""
    path = tmp_path / "old" / "county.sqlite"
    CountyStore(path).close()
    db = Database(f"sqlite:///{path}")
    try:
        with db.write() as conn:
            conn.execute(
                insert(terminals).values(
                    terminal_id="a1", canteen="c", registered_ms=1, acked_seq=1, last_hash=b"h"
                )
            )
            conn.execute(
                insert(entries).values(
                    terminal="a1",
                    canteen="c",
                    seq=1,
                    entry_id="e",
                    at_ms=T0_MS,
                    kind=SALE,
                    amount_fen=0,
                    detail='{"note":"a\x00b"}',
                    prev_hash=bytes(32),
                    hash=b"h",
                    received_ms=1,
                )
            )
    finally:
        db.close()
    return f"sqlite:///{path}"


def test_a_copy_of_a_nul_to_postgresql_is_one_line_and_the_target_stays_empty(
    tmp_path: Path,
    pg_county_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A SQLite county may hold a text PostgreSQL cannot store: the copy stopped with a
    DataError traceback (exit 1). Now one line naming the row, exit 2, nothing copied.
    The target's URL comes from $CANTEEN_COUNTY_DATABASE when --to is left out, so the
    owner's password is on no command line for as long as a copy runs."""
    source = _sqlite_county_with_a_nul(tmp_path)
    monkeypatch.setenv(DATABASE_ENV, pg_county_url)
    capsys.readouterr()
    rc = county_main(["db", "copy", "--from", source])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", (out, err)
    assert len(err.splitlines()) == 1, err
    assert "table entries, row terminal a1, seq 1: its detail holds a NUL character" in err
    target = Database(pg_county_url)
    try:
        with target.read() as conn:
            assert conn.execute(select(func.count()).select_from(entries)).scalar_one() == 0
    finally:
        target.close()
    # Without the entry (and its terminal) the same command copies into the same target.
    db = Database(source)
    try:
        with db.write() as conn:
            conn.execute(delete(entries))
            conn.execute(delete(terminals))
    finally:
        db.close()
    rc = county_main(["db", "copy", "--from", source])
    out, err = capsys.readouterr()
    assert rc == 0 and "copied" in out, err


def test_no_documented_command_puts_a_database_url_on_a_command_line() -> None:
    """docs/county-ops.md ran db copy with --to "$CANTEEN_COUNTY_DATABASE" and its
    report examples with --database "$URL": a password in argv, which every local user
    reads in ps. The units and the docs take it from the environment."""
    root = Path(__file__).parent.parent
    for path in [root / "docs" / "county-ops.md", *sorted((root / "systemd").iterdir())]:
        text = path.read_text()
        assert f'"${DATABASE_ENV}"' not in text and f"${{{DATABASE_ENV}}}" not in text, path
        found = re.findall(r"--(?:database|to|from)[ =]\"?\$", text)
        assert not found, (path, found)


# --- collation: PostgreSQL may sort text as a language does, SQLite sorts bytes -----------


def test_a_database_that_sorts_text_by_a_language_is_refused_by_db_upgrade(
    pg_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The county orders text by its bytes, as SQLite does: which of two sales made in the
    same millisecond is a conflict's first (received, terminal, seq), and the order of
    `entries` that docs/county-ops.md compares with cmp after a copy. A database created
    with a language's collation ('hq-2' before 'HQ-3' before 'hq-4') silently changed
    both: `db upgrade` now refuses to make the tables in it, naming the fix."""
    name = f"t{os.getpid()}_review_icu"
    pg_cluster.psql(
        f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' "
        "TEMPLATE template0"
    )
    try:
        url = pg_cluster.url(name)
        with psycopg.connect(url) as conn:
            got = conn.execute(
                "SELECT t FROM (VALUES ('hq-4'), ('HQ-3'), ('hq-2')) AS v(t) ORDER BY t"
            ).fetchall()
            assert [r[0] for r in got] == ["hq-2", "HQ-3", "hq-4"]  # not SQLite's order
        capsys.readouterr()
        rc = county_main(["db", "upgrade", "--database", url])
        out, err = capsys.readouterr()
        assert rc == 2 and out == "", (out, err)
        assert len(err.splitlines()) == 1 and "LOCALE 'C'" in err, err
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
            assert tables == (0,)
    finally:
        pg_cluster.drop_database(name)


# --- the commands: what no column can take is a usage error --------------------------------


def test_a_number_or_an_id_no_column_can_take_is_one_line(
    tmp_path: Path, county_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A conflict number beyond 64 bits and an id that is not UTF-8 (argv bytes Python
    could not decode) were tracebacks: OverflowError or UnicodeEncodeError on SQLite,
    DataError on PostgreSQL. Now one line, exit 2, on both."""
    make_county(tmp_path)  # the CA, and so the data directory
    data = str(tmp_path / "county")
    where = ["--data", data, "--database", county_db_url]
    for argv in (
        ["conflicts", "withdraw", str(2**63), "--reason", "x", *where],
        ["conflicts", "withdraw", "1", "--reason", "bad \udcff", *where],
        ["entries", "--canteen", "\udcff", *where],
        ["entries", "--terminal", "t\udcfe", *where],
        ["terminal", "add", "--canteen", "c\udcff", *where],
    ):
        capsys.readouterr()
        rc = county_main(argv)
        out, err = capsys.readouterr()
        assert rc == 2 and out == "", (argv, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("canteen-county: error:"), err


def test_a_mistyped_url_is_shown_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A URL missing its '//' was echoed whole, password and all, into the error line
    (a terminal's scrollback, a unit's journal)."""
    for url in ("postgresql//admin:hunter2secret@127.0.0.1/county", "admin:hunter2secret@db/c"):
        capsys.readouterr()
        assert county_main(["entries", "--database", url]) == 2
        err = capsys.readouterr().err
        assert "hunter2secret" not in err and "is not a URL" in err, err
        assert len(err.splitlines()) == 1


# --- connections: every failing request gives its connection back ---------------------


def test_failing_requests_leave_no_connection_or_transaction_behind(county_db_url: str) -> None:
    """With one connection in the pool and none extra, refused requests of every kind (an
    unknown terminal, a malformed batch, a terminal without a ledger key, a statement the
    database refuses, a listing) each give the connection back, rolled back: the next
    write and read get it at once instead of a 503 after the pool's timeout. Found
    sound; kept so it stays so."""
    db = Database(county_db_url, PoolLimits(size=1, overflow=0, timeout_s=2))
    store = CountyStore(db)
    try:
        store.add_terminal("a1", "c", T0_MS)
        for _ in range(5):
            with pytest.raises(StoreError):
                store.intake("nobody", {"entries": []}, T0_MS)
            with pytest.raises(BatchInvalid):
                store.intake("a1", {"entries": "no"}, T0_MS)
            with pytest.raises(StoreError):  # not provisioned: no ledger key
                store.intake("a1", {"entries": []}, T0_MS)
            with pytest.raises(sa_exc.SQLAlchemyError), store.db.write() as conn:
                conn.execute(insert(terminals).values(terminal_id="a1", canteen="c"))
            stream = store.iter_entries()
            assert next(stream, None) is None
            del stream
        assert store.add_terminal("a2", "c", T0_MS)
        assert store.terminal("a2") is not None
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # SQLite's writes have a connection of their own (Database.write).
        assert db._write_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        store.close()
        db.close()


# --- report: amounts a hostile terminal signed --------------------------------------------


@ON_EACH_BACKEND
def test_amounts_that_overflow_a_sum_do_not_stop_the_report(county: County, tmp_path: Path) -> None:
    """A terminal may sign any 64-bit amount. Two sales of 2^63 - 1 fen made SQLite's
    SUM fail with 'integer overflow', which the store reported as a database that
    'cannot answer now': no report for any range holding that day, for every canteen.
    PostgreSQL sums bigint as numeric and answered. The report now answers on both."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    huge = 2**63 - 1
    answer = post_ledger(term, _signed_batch(county, term, [{13: huge}, {13: huge}, {13: 1000}]))
    assert answer.status_code == 200, answer.text
    report = county.store.report(T0_MS, 86_400_000)
    [day] = [d for d in report["days"] if d["canteen"] == "canteen-a" and d["day"] == DAY]
    assert day["meals"] == 3
    assert day["amount_fen"] >= 2 * huge - 2**12  # exact or within a float's rounding


@ON_EACH_BACKEND
def test_a_time_beyond_any_calendar_does_not_stop_the_report(
    county: County, tmp_path: Path
) -> None:
    """An entry without a service day is reported on the local day of its time. A
    terminal may sign any 64-bit time: on PostgreSQL to_timestamp of 2^63 - 1 ms is
    'timestamp out of range', so a report over a range open at one end (or none) failed
    for everyone; SQLite's date() gives NULL and answered."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    far = {2: 2**63 - 1, 11: None}  # at_ms, day
    answer = post_ledger(term, _signed_batch(county, term, [far, {2: -(2**63), 11: None}, {}]))
    assert answer.status_code == 200, answer.text
    for days in (None, DayRange(DAY, None), DayRange(None, DAY)):
        report = county.store.report(T0_MS, 86_400_000, days=days)
        assert any(d["day"] == DAY and d["meals"] >= 1 for d in report["days"]), report
    listed = list(county.store.iter_entries("a1", days=DayRange(DAY, None)))
    assert [e["at_ms"] for e in listed if e["at_ms"] == 2**63 - 1]


def test_the_last_and_first_days_of_the_calendar_are_a_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to 9999-12-31 asked for the midnight after it, which no datetime holds:
    OverflowError and a traceback instead of a listing."""
    make_county(tmp_path)
    data = str(tmp_path / "county")
    for argv in (
        ["entries", "--to", "9999-12-31", "--data", data],
        ["report", "--from", "0001-01-01", "--to", "9999-12-31", "--utc-offset", "-12"],
        ["report", "--from", "0001-01-01", "--to", "9999-12-31", "--utc-offset", "14"],
    ):
        if "--data" not in argv:
            argv += ["--data", data]
        capsys.readouterr()
        rc = county_main(argv)
        err = capsys.readouterr().err
        assert rc == 0 and err == "", (argv, err)


# --- very long texts: PostgreSQL's B-tree keeps at most about 2.7 KB a row ---------------


@ON_EACH_BACKEND
def test_a_text_too_long_for_an_index_is_a_400_not_a_retry_for_ever(
    county: County, tmp_path: Path
) -> None:
    """entries.day and entries.unit are indexed (report indexes). A signed entry with a
    day or unit of a few kilobytes of incompressible text exceeded PostgreSQL's B-tree
    row limit (ProgramLimitExceeded, an OperationalError): answered 503, so the terminal
    retried the batch for ever; SQLite stored it. Now a 400 on both, nothing stored,
    and the terminal's honest batch is taken after."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    long_text = secrets.token_hex(4000)
    for index in (11, 10, 7, 8):  # day, unit, cadre, credential
        answer = post_ledger(term, _signed_batch(county, term, [{index: long_text}]))
        assert answer.status_code == 400, answer.text
    answer = post_ledger(term, _signed_batch(county, term, [{}, {}]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
