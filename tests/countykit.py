"""Shared pieces of the sync and county tests: a county with a running server, provisioned
terminals, ledgers with realistic entries, and a check of the server's copy of a chain.

No tests and no fixtures live here (the `county` fixture is in conftest.py); it never
starts a server by itself.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from hwsim.wallet import Issuer, make_wallet
from sqlalchemy import select

from county import ca
from county import updates as county_updates
from county.app import ASGIApp, CountyServer, new_provisioning_code
from county.db.schema import entries as entries_table
from county.store import CountyStore
from protocol.chain import entry_hash
from terminal import state
from terminal import updates as terminal_updates
from terminal.config import SyncSettings
from terminal.core.checkout import reversal_draft
from terminal.core.clock import TrustedClock
from terminal.ledger import (
    ACCEPT,
    REJECT,
    SALE,
    EntryDraft,
    Ledger,
    load_or_create_signing_key,
)
from terminal.link.provision import CountyIdentity, provision
from terminal.sync import LedgerReader, SyncClient, _batch_checkpoint, apply_result

T0_MS = 1_780_000_000_000  # 2026-05-28, inside every certificate's validity

# A test marked with this runs twice: with the `county` fixture on its SQLite file and on
# a fresh PostgreSQL database (ids "sqlite" and "postgresql"; conftest.py builds both).
ON_EACH_BACKEND = pytest.mark.parametrize("county", ["sqlite", "postgresql"], indirect=True)

FAST = SyncSettings(
    interval_s=1,
    jitter_s=0,
    deadline_s=5,
    connect_timeout_s=2,
    read_timeout_s=2,
    batch_entries=200,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
)


@dataclass
class County:
    data: Path
    server: CountyServer | None = None
    # The county database: None for DATA/county.sqlite (the embedded default), else a URL.
    database_url: str | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def store(self) -> CountyStore:
        assert self.server is not None
        return self.server.store

    def start(self, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> County:
        self.server = CountyServer(self.data, wrap=wrap, database_url=self.database_url).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def code(self, terminal_id: str, canteen: str) -> str:
        store = (
            self.server.store
            if self.server
            else CountyStore(self.database_url or self.data / "county.sqlite")
        )
        secret = store.add_terminal(terminal_id, canteen, time.time_ns() // 1_000_000)
        if self.server is None:
            store.close()
        return new_provisioning_code(self.data, secret)

    def pin_root(self, terminal_root: Path) -> None:
        """Pin this county's first update root on a terminal, as county IT does at provisioning."""
        root_json = (county_updates.RepoPaths(self.data).metadata / "1.root.json").read_bytes()
        terminal_updates.pin_root(terminal_root, root_json)


def make_county(root: Path, database_url: str | None = None) -> County:
    data = root / "county"
    ca.init_ca(data)
    return County(data, database_url=database_url)


@dataclass
class Terminal:
    root: Path
    terminal_id: str
    identity: CountyIdentity

    @property
    def ledger_path(self) -> Path:
        return state.StatePaths(self.root).ledger

    def open_ledger(self) -> Ledger:
        paths = state.StatePaths(self.root)
        return state.open_ledger(paths.ledger, paths.key, self.terminal_id, T0_MS)

    def append_entries(self, n: int, **kw: Any) -> None:
        """``n`` more made-up entries in this terminal's ledger (``append_entries``)."""
        book = self.open_ledger()
        try:
            append_entries(book, n, **kw)
        finally:
            book.close()


def provision_terminal(
    county: County, root: Path, terminal_id: str, canteen: str, server: str | None = None
) -> Terminal:
    paths = state.prepare(root)
    key = load_or_create_signing_key(paths.key)
    code = county.code(terminal_id, canteen)
    identity = provision(
        paths.root, server or county.url, code, key.public_key().public_bytes_raw()
    )
    term = Terminal(paths.root, terminal_id, identity)
    term.open_ledger().close()
    return term


# For a sync that must succeed: FAST, with room for a loaded 2-core machine to answer
# (a PostgreSQL-backed server at load average 12 took more than FAST's 2 s for a batch).
PATIENT = dataclasses.replace(FAST, read_timeout_s=30, deadline_s=60)


def sync(term: Terminal) -> None:
    """One sync of ``term`` with the county, which must succeed, and its result kept."""
    client = SyncClient(term.ledger_path, term.identity, PATIENT)
    result = client.sync_once(time.monotonic() + 60)
    assert result.error is None, result.error
    book = term.open_ledger()
    try:
        apply_result(book, TrustedClock(book.last_time_ms(), 0, 0), result, T0_MS)
    finally:
        book.close()


def sale(
    i: int,
    *,
    unit: str = "u1",
    cadre: str | None = None,
    day: str = "2026-05-28",
    meal: str = "lunch",
    credential: str | None = None,
    ctr: int | None = None,
    detail: dict[str, Any] | None = None,
) -> EntryDraft:
    """An accepted QR sale; every ninth one a refusal, to vary kinds and reasons."""
    if i % 9 == 8:
        return EntryDraft(
            kind=SALE,
            verdict=REJECT,
            reason="replayed",
            method="qr",
            detail={"qr_sha256": f"{i:032x}", "qr_length": 80},
        )
    return EntryDraft(
        kind=SALE,
        verdict=ACCEPT,
        method="qr",
        cadre=cadre or f"iss-a/cadre-{i}",
        credential=credential or f"qr/iss-a/{i:016x}",
        ctr=ctr if ctr is not None else 1,
        unit=unit,
        day=day,
        meal=meal,
        amount_fen=1000,
        # Not a real signed code: the county stores such a sale but takes it as no
        # evidence (a bad_evidence alarm); tests of conflicts pass a real one in detail.
        detail=detail or {"qr": "HC1:" + "X" * 120, "price": "own"},
    )


def append_entries(book: Ledger, n: int, start_ms: int = T0_MS, **kw: Any) -> None:
    first = book.last_seq()
    for i in range(n):
        entry = book.append(sale(first + i, **kw), start_ms + first + i)
        if i % 50 == 49 and entry.verdict == ACCEPT:
            # A staff undo now and then: reversals reference earlier entries.
            book.append(reversal_draft(entry, "s1"), start_ms + first + i)


def local_chain(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return [(s, h.hex()) for s, h in conn.execute("SELECT seq, hash FROM entries ORDER BY seq")]
    finally:
        conn.close()


CHAIN_COLUMNS = (
    "seq", "entry_id", "at_ms", "kind", "verdict", "reason", "method", "cadre", "credential",
    "ctr", "unit", "day", "meal", "amount_fen", "ref_seq", "detail", "prev_hash", "hash",
)  # fmt: skip


def server_chain(store: Path | CountyStore, terminal_id: str) -> list[tuple[int, str]]:
    """The server's copy of a terminal's chain, re-verified link by link and hash by hash;
    read from a SQLite file, or through an open store (either backend)."""
    if isinstance(store, CountyStore):
        query = (
            select(*(entries_table.c[name] for name in CHAIN_COLUMNS))
            .where(entries_table.c.terminal == terminal_id)
            .order_by(entries_table.c.seq)
        )
        with store.db.read() as db:
            rows = [tuple(r) for r in db.execute(query)]
    else:
        conn = sqlite3.connect(f"{store.absolute().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                f"SELECT {', '.join(CHAIN_COLUMNS)} FROM entries WHERE terminal = ? ORDER BY seq",
                (terminal_id,),
            ).fetchall()
        finally:
            conn.close()
    prev = bytes(32)
    out = []
    for expected, row in enumerate(rows, start=1):
        assert row[0] == expected, f"server has a gap or repeat at {expected}"
        assert row[16] == prev, f"server chain broken at {row[0]}"
        assert entry_hash(row[16], row[:16]) == row[17], f"server entry {row[0]} altered"
        prev = row[17]
        out.append((row[0], row[17].hex()))
    return out


def copy_county(src: Path, dest: Path) -> None:
    """Copy a county data directory made once, for one test: the update repository's
    targets are linked, not copied (they are named by their hash and never rewritten,
    and metadata is replaced by rename, so a link cannot carry one test's change into
    another); every other file (the databases, keys, metadata) is copied."""

    def copy(source: str, target: str) -> object:
        if f"{os.sep}targets{os.sep}" in source:
            os.link(source, target)
            return target
        return shutil.copy2(source, target)

    shutil.copytree(src, dest, copy_function=copy)


def post_ledger(term: Terminal, doc: dict[str, Any], timeout: float = 30) -> requests.Response:
    """POST ``doc`` to the county's /v1/ledger as ``term`` (its client certificate), as
    it is: for tests that send what no SyncClient would (forged, replayed, raced)."""
    ident = term.identity
    return requests.post(
        ident.server + "/v1/ledger",
        json=doc,
        cert=(str(ident.cert_file), str(ident.key_file)),
        verify=str(ident.ca_file),
        timeout=timeout,
    )


def signed_rows(term: Terminal, first: int, last: int) -> tuple[list[Any], list[Any]]:
    """Entries first..last of ``term``'s ledger and their checkpoints, as its SyncClient
    sends them: a batch always ends on a checkpoint signed with the ledger key."""
    reader = LedgerReader(term.ledger_path)
    try:
        rows = reader.batch(first, last - first + 1)
        cps = reader.checkpoints(first, last)
    finally:
        reader.close()
    if not cps or cps[-1][0] != rows[-1][0]:
        key = load_or_create_signing_key(state.StatePaths(term.root).key)
        cps.append(_batch_checkpoint(key, term.terminal_id, rows[-1]))
    return rows, cps


def signed_sale(
    issuer: Issuer, sub: str, unit: str, t: int, *, code: str | None = None, ctr: int = 1
) -> EntryDraft:
    """An accepted QR sale of cadre ``sub`` that is evidence: the phone's signed code
    (drawn at Unix second ``t``, or ``code`` as given, to replay one) in its detail."""
    w = make_wallet(issuer, sub, unit, sub, now=T0_MS // 1000 - 86_400, seed=sub)
    return sale(
        0,
        unit=unit,
        cadre=f"iss/{sub}",
        credential=f"qr/iss/{w.cti.hex()}",
        ctr=ctr,
        detail={"qr": code or w.draw(t, ctr=ctr)},
    )
