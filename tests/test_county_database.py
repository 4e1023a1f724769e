"""The county on its real databases: what only a database can get wrong.

On both backends (SQLite and PostgreSQL, conftest's `county_db_url` and countykit's
ON_EACH_BACKEND): one batch sent again, and sent twice at the same moment, is
acknowledged each time and stored once. On PostgreSQL (the throwaway cluster of
tests/pgkit.py): the server restarted in the middle of an intake (the terminal is told
503 or loses its connection, retries, and nothing is lost or doubled); a pool with no
free connection answers 503 with Retry-After instead of hanging; and the restore drill
of docs/county-ops.md (pg_dump, drop, pg_restore) gives `canteen-county entries` the
same output as before.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import requests
from conftest import wait_for
from countykit import (
    FAST,
    ON_EACH_BACKEND,
    PATIENT,
    County,
    Terminal,
    local_chain,
    post_ledger,
    provision_terminal,
    server_chain,
    signed_rows,
)
from pgkit import Cluster

from county.app import ASGIApp, CountyServer
from county.cli import main as county_main
from county.db.engine import PoolLimits
from terminal.sync import SyncClient, SyncResult

ON_POSTGRESQL = pytest.mark.parametrize("county", ["postgresql"], indirect=True)


def _batch(term: Terminal, first: int, last: int) -> dict[str, Any]:
    """The upload document of entries first..last, signed as the terminal's SyncClient does."""
    rows, cps = signed_rows(term, first, last)
    return {"nonce": "", "entries": rows, "checkpoints": cps}


# --- duplicates, on both backends ----------------------------------------------------------


@ON_EACH_BACKEND
def test_a_batch_sent_again_and_twice_at_once_is_acknowledged_and_stored_once(
    county: County, tmp_path: Any
) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(120)
    first = _batch(term, 1, 60)
    answer = post_ledger(term, first)
    assert answer.status_code == 200 and answer.json()["acked_seq"] == 60, answer.text
    # The answer was lost; the terminal sends the same batch again: acknowledged again.
    again = post_ledger(term, first)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "ok" and again.json()["acked_seq"] == 60
    # The next batch arrives twice at the same moment (a retry racing the original):
    # both are acknowledged, whichever the database took first, and it is stored once.
    second = _batch(term, 61, 120)
    answers: list[requests.Response] = []
    start = threading.Barrier(2)

    def send() -> None:
        start.wait()
        answers.append(post_ledger(term, second))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert {a.json()["acked_seq"] for a in answers} == {120}
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)[:120]
    assert county.store.terminal("t1").acked_seq == 120  # type: ignore[union-attr]


# --- PostgreSQL restarted in the middle of an intake ---------------------------------------


class Statuses:
    """An ASGI wrapper that notes the status of every answer to an upload."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def wrapped(
            scope: MutableMapping[str, Any],
            receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
            send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
        ) -> None:
            if scope.get("type") != "http" or scope.get("path") != "/v1/ledger":
                await app(scope, receive, send)
                return

            async def noting(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    self.seen.append(int(message["status"]))
                await send(message)

            await app(scope, receive, noting)

        return wrapped  # type: ignore[return-value]

    def count(self, status: int) -> int:
        return sum(1 for s in self.seen if s == status)


class SyncLoop:
    """The terminal syncing over and over, in a thread, until the county holds everything;
    every failed round is kept (the terminal retries after its short backoff)."""

    def __init__(self, term: Terminal) -> None:
        settings = dataclasses.replace(PATIENT, batch_entries=20)
        self.client = SyncClient(term.ledger_path, term.identity, settings)
        self.failures: list[SyncResult] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            result = self.client.sync_once(time.monotonic() + 30)
            if result.error is None and result.complete:
                self.done.set()
                return
            self.failures.append(result)
            time.sleep(FAST.backoff_base_s)  # the terminal's retry backoff, not a test wait

    def __enter__(self) -> SyncLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(130)


@pytest.mark.slow
@ON_POSTGRESQL
def test_postgresql_restarted_during_an_intake_loses_and_doubles_nothing(
    county: County, pg_cluster: Cluster, tmp_path: Any
) -> None:
    county.stop()
    statuses = Statuses()
    county.start(wrap=statuses)
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")

    # 1. pg_ctl restart -m fast while the terminal uploads 20-entry batches back to back.
    term.append_entries(300)
    with SyncLoop(term) as loop:
        wait_for(lambda: statuses.count(200) >= 3, what="a few batches acknowledged")
        pg_cluster.restart()
        wait_for(loop.done.is_set, 120, "the terminal to finish after the restart")
    assert server_chain(county.store, "t1") == local_chain(term.ledger_path)

    # 2. Stopped mid-intake, then started: the terminal is told 503 while it is down (or
    # loses its connection when the server kills the transaction), retries, and finishes.
    term.append_entries(300)
    with SyncLoop(term) as loop:
        acked = statuses.count(200)
        wait_for(lambda: statuses.count(200) >= acked + 3, what="more batches acknowledged")
        pg_cluster.stop()
        try:
            wait_for(lambda: statuses.count(503) >= 1, what="a 503 while PostgreSQL is down")
        finally:
            pg_cluster.start()
        wait_for(loop.done.is_set, 120, "the terminal to finish after the outage")
    assert loop.failures, "the terminal never saw the outage"
    assert all(f.error_kind == "network" for f in loop.failures), [f.error for f in loop.failures]
    assert any("HTTP 503" in (f.error or "") for f in loop.failures)
    # Nothing lost, nothing twice: the county's chain is the terminal's, every seq once.
    chain = server_chain(county.store, "t1")
    assert chain == local_chain(term.ledger_path)
    assert [seq for seq, _ in chain] == list(range(1, len(chain) + 1))
    assert county.store.terminal("t1").acked_seq == len(chain)  # type: ignore[union-attr]


# --- an exhausted connection pool ----------------------------------------------------------


@ON_POSTGRESQL
def test_an_exhausted_connection_pool_answers_503_not_a_hang(county: County, tmp_path: Any) -> None:
    # A server with one connection and half a second's wait (serve's --pool-size 1
    # --pool-overflow 0 --pool-timeout 0.5), so the test takes every connection it has.
    county.stop()
    county.server = CountyServer(
        county.data,
        database_url=county.database_url,
        pool=PoolLimits(size=1, overflow=0, timeout_s=0.5),
    ).start()
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    term.append_entries(10)
    db = county.store.db
    assert (db.pool.size, db.pool.overflow, db.pool.timeout_s) == (1, 0, 0.5)
    # Every connection the server's pool may open, taken by the test.
    held = [db.engine.connect() for _ in range(db.pool.size + db.pool.overflow)]
    try:
        began = time.monotonic()
        answer = post_ledger(term, _batch(term, 1, 10), timeout=60)
        waited = time.monotonic() - began
    finally:
        for conn in held:
            conn.close()
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("Retry-After", "").isdigit()
    assert "busy" in answer.json()["problem"]
    # Answered once the pool's timeout ran out, not left hanging.
    assert db.pool.timeout_s <= waited < db.pool.timeout_s + 5, waited
    # With the connections back, the same batch is taken.
    again = post_ledger(term, _batch(term, 1, 10))
    assert again.status_code == 200 and again.json()["acked_seq"] == 10, again.text


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--pool-size", "0", "0 is below 1"),
        ("--pool-overflow", "-1", "-1 is below 0"),
        ("--pool-timeout", "0", "must be more than 0"),
        ("--pool-size", "many", "is not a whole number"),
    ],
)
def test_serve_refuses_pool_limits_it_cannot_use_in_one_line(
    option: str, value: str, says: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        county_main(["serve", "--data", str(tmp_path), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}" in err and says in err, err


# --- the restore drill ---------------------------------------------------------------------


def _entries(url: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert county_main(["entries", "--database", url]) == 0
    return capsys.readouterr().out


@ON_POSTGRESQL
def test_restore_drill_dump_drop_restore_gives_the_same_entries(
    county: County, pg_cluster: Cluster, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    held = 0
    for name in ("a1", "b1"):
        term = provision_terminal(county, tmp_path / name, name, f"canteen-{name}")
        term.append_entries(60)
        client = SyncClient(term.ledger_path, term.identity, PATIENT)
        result = client.sync_once(time.monotonic() + 30)
        assert result.error is None and result.complete, result.error
        held += len(local_chain(term.ledger_path))
    url = county.database_url
    assert url is not None
    county.stop()
    before = _entries(url, capsys)
    assert len(before.splitlines()) == held
    dbname = url.rsplit("/", 1)[1]
    dump = tmp_path / "county.dump"

    def run(program: str, *args: str) -> None:
        done = subprocess.run(
            [str(pg_cluster.bindir / program), "-h", "127.0.0.1", "-p", str(pg_cluster.port),
             "-U", "postgres", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    run("pg_dump", "-Fc", "-f", str(dump), dbname)
    pg_cluster.drop_database(dbname)
    # Gone: one line, exit 2.
    assert county_main(["entries", "--database", url]) == 2
    assert "does not exist" in capsys.readouterr().err
    pg_cluster.create_database(dbname)
    run("pg_restore", "--exit-on-error", "--no-owner", "-d", dbname, str(dump))
    assert _entries(url, capsys) == before
