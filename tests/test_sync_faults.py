"""Exactly-once upload through a hostile link: the real county server over mTLS behind the
fault proxy, and a terminal whose decision worker keeps writing while the sync thread uploads.

After more than 10,000 entries with latency, cuts before and after the server commits,
injected 500s (before and after commit), stalls mid-answer and answers at one byte per
second, the server must hold exactly the terminal's chain: none lost, none twice, no gap,
every hash and link re-verified.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from pathlib import Path

import faultproxy
import pytest
from countykit import (
    FAST,
    T0_MS,
    append_entries,
    local_chain,
    make_county,
    provision_terminal,
    server_chain,
)

from terminal.core.clock import TrustedClock
from terminal.ledger import verify_file
from terminal.sync import SyncClient, SyncResult, apply_result

ENTRIES = 10_000


@pytest.mark.slow
def test_ten_thousand_entries_exactly_once_through_faults(tmp_path: Path) -> None:
    server_faults: list[faultproxy.ServerFaults] = []

    def wrap(app: faultproxy.ASGIApp) -> faultproxy.ASGIApp:
        drawn = faultproxy.random_server_plan(7, before=0.06, after=0.06)
        first = {3: faultproxy.FAIL_BEFORE, 9: faultproxy.FAIL_AFTER}
        sf = faultproxy.ServerFaults(app, lambda n: first.get(n) or drawn(n))
        server_faults.append(sf)
        return sf

    county = make_county(tmp_path).start(wrap=wrap)
    forced = {
        4: faultproxy.CUT_BEFORE,
        5: faultproxy.CUT_AFTER,
        6: faultproxy.STALL,
        7: faultproxy.TRICKLE,
        8: faultproxy.LATENCY,
    }
    assert county.server is not None
    drawn = faultproxy.random_plan(
        11,
        {
            faultproxy.PASS: 50,
            faultproxy.LATENCY: 10,
            faultproxy.CUT_BEFORE: 8,
            faultproxy.CUT_AFTER: 8,
            faultproxy.STALL: 5,
            faultproxy.TRICKLE: 2,
        },
        latency_s=0.02,
        stall_s=2.0,
        bytes_per_s=1.0,
    )

    def plan(n: int) -> faultproxy.Fault:
        # A few of every kind early on for certain, then random draws.
        if n in forced:
            return dataclasses.replace(drawn(n), kind=forced[n])
        return drawn(n)

    proxy = faultproxy.FaultProxy(("127.0.0.1", county.server.port), plan).start()
    try:
        term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
        settings = dataclasses.replace(FAST, deadline_s=1.5, read_timeout_s=0.6, batch_entries=100)
        client = SyncClient(term.ledger_path, term.identity, settings, server=proxy.url)

        results: queue.Queue[SyncResult] = queue.Queue()
        writing_done = threading.Event()
        stop_sync = threading.Event()

        def sync_thread() -> None:
            while not stop_sync.is_set():
                results.put(client.sync_once(time.monotonic() + settings.deadline_s))

        syncer = threading.Thread(target=sync_thread, daemon=True)
        syncer.start()

        # This thread is the decision worker: the only one writing the ledger.
        book = term.open_ledger()
        clock = TrustedClock(book.last_time_ms(), 0, 0)
        kinds: set[str | None] = set()
        deadline = time.monotonic() + 110
        try:
            while book.last_seq() < ENTRIES:
                append_entries(book, 100, start_ms=T0_MS)
                while not results.empty():
                    r = results.get()
                    kinds.add(r.error_kind)
                    apply_result(book, clock, r, T0_MS + book.last_seq() + 10, settings)
            writing_done.set()
            while time.monotonic() < deadline:
                r = results.get(timeout=30)
                kinds.add(r.error_kind)
                apply_result(book, clock, r, T0_MS + book.last_seq() + 10, settings)
                if r.complete and book.unsynced()[0] == 0:
                    break
            stop_sync.set()
            syncer.join(10)
            while not results.empty():
                apply_result(book, clock, results.get(), T0_MS + book.last_seq() + 10, settings)
            assert book.unsynced()[0] == 0, "the sync did not finish within the test's time"
        finally:
            stop_sync.set()
            book.close()

        ours = local_chain(term.ledger_path)
        theirs = server_chain(county.store.path, "t1")
        assert len(ours) > ENTRIES
        assert theirs == ours  # none lost, none twice, no gap, same hashes
        assert verify_file(term.ledger_path).ok
        # Every kind of fault really happened, and the retries it caused were absorbed.
        for kind in (
            faultproxy.CUT_BEFORE,
            faultproxy.CUT_AFTER,
            faultproxy.STALL,
            faultproxy.TRICKLE,
        ):
            assert proxy.triggered[kind] > 0, (kind, proxy.connections, proxy.triggered)
        assert server_faults[0].triggered[faultproxy.FAIL_BEFORE] > 0
        assert server_faults[0].triggered[faultproxy.FAIL_AFTER] > 0
        assert county.store.counter("entries_duplicate") > 0  # committed but unanswered, resent
        assert county.store.counter("entries_accepted") == len(ours)
        assert {"network", "deadline"} <= kinds
    finally:
        proxy.stop()
        county.stop()


def test_a_408_from_the_county_is_a_network_failure_not_a_refusal(tmp_path: Path) -> None:
    """The county answers 408 to a request that dripped in too slowly: the link is bad,
    the data is not, so the terminal retries on the ordinary backoff."""

    def wrap(app: faultproxy.ASGIApp) -> faultproxy.ASGIApp:
        async def slow_link(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] == "http" and scope["path"] == "/v1/ledger":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 408,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"problem": "too slow"}'})
                return
            await app(scope, receive, send)

        return slow_link

    county = make_county(tmp_path).start(wrap=wrap)
    try:
        term = provision_terminal(county, tmp_path / "t", "t1", "c1")
        term.append_entries(3)
        result = SyncClient(term.ledger_path, term.identity, FAST).sync_once(time.monotonic() + 10)
        assert result.error_kind == "network", result.error
        assert "timed out" in (result.error or "")
    finally:
        county.stop()
