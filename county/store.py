"""The county store: the one door through which the app, the commands and the update
refresher reach the county database.

This module owns opening the database (a SQLite file, the embedded default, or a
PostgreSQL URL several server processes share), the transaction each operation runs in,
and the public methods callers have always used. The rules live beside it, split by
job so each can be read alone: county/intake.py (a batch becomes acknowledged entries),
county/registry.py (terminals, codes, certificates, ledger keys), county/conflicts.py
(evidence, the cross-terminal checks, conflicts, revocations, issuer keys) and
county/reports.py (what county IT reads). county/storekit.py holds what they share.
Names callers import from here (kinds, ``Limits``, ``StoreError``, ``parse_batch`` ...)
are re-exported so that no import of county.store had to change.

There is no lock in the process: every write runs in one database transaction and
the database serialises what must be (county/intake.py explains how), so several
``serve`` processes may share one PostgreSQL. A database that cannot answer now raises
``DatabaseUnavailable`` (a ``StoreError``), which the app answers with 503.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from county import conflicts as _conflicts
from county import evidence, intake, registry, reports
from county.conflicts import revocation_entry
from county.db import Database, DatabaseError, DatabaseUnavailable, PoolLimits
from county.intake import (
    WIRE_ENTRY_LENGTH,
    BatchInvalid,
    IntakeResult,
    WireEntry,
    parse_batch,
)
from county.registry import ProvisionRefused, Terminal
from county.storekit import (
    ALTERED,
    BAD_CHECKPOINT,
    BAD_EVIDENCE,
    BAD_GENESIS,
    FORK,
    GAP,
    OK,
    PRESENTATION_TWICE,
    REFUSED,
    SERVED_TWICE,
    UNSIGNED,
    Limits,
    StoreError,
)

__all__ = [
    "ALTERED",
    "BAD_CHECKPOINT",
    "BAD_EVIDENCE",
    "BAD_GENESIS",
    "FORK",
    "GAP",
    "OK",
    "PRESENTATION_TWICE",
    "REFUSED",
    "SERVED_TWICE",
    "UNSIGNED",
    "WIRE_ENTRY_LENGTH",
    "BatchInvalid",
    "CountyStore",
    "DatabaseError",
    "DatabaseUnavailable",
    "IntakeResult",
    "Limits",
    "ProvisionRefused",
    "StoreClosed",
    "StoreError",
    "Terminal",
    "WireEntry",
    "database_path",
    "next_terminal_id",
    "parse_batch",
    "revocation_entry",
]


class StoreClosed(RuntimeError):
    """The store was used after close(): a bug in the caller, not a request's fault."""


def database_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` database URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreError(f"database URL {url!r}: expected sqlite:///PATH")
    return Path(url[len(prefix) :])


def _open(database: Database | str | Path, limits: Limits) -> tuple[Database, bool]:
    """The Database to use, and whether this store made it (and so closes it)."""
    if isinstance(database, Database):
        return database, False
    if isinstance(database, Path) or "://" not in database:
        # A file path, as callers named the SQLite database before there was a choice.
        url = f"sqlite:///{database}"
    else:
        url = database
    return Database(url, PoolLimits(busy_timeout_ms=limits.busy_timeout_ms)), True


class CountyStore:
    """The open county database. Safe to share between threads and processes: each
    call is one transaction, and the database orders concurrent writers."""

    CLOCK_TOLERANCE_MS = intake.CLOCK_TOLERANCE_MS

    def __init__(
        self,
        database: Database | str | Path,
        limits: Limits | None = None,
        lists: evidence.Lists | None = None,
    ) -> None:
        self.limits = limits or Limits()
        # What county IT published (meal windows, roster), for judging evidence at intake.
        self.lists = lists
        self.db, self._owns_db = _open(database, self.limits)
        self._closed = False
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        return self.db.sqlite_path

    def _prepare(self) -> None:
        """Make the database ready for this version (the one call site: county/db)."""
        from county.db.migrations import prepare

        try:
            prepare(self.db)
        except sa_exc.SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the county database {self.db.url}: {getattr(exc, 'orig', exc)}"
            ) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_db:
            self.db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreClosed("the county store is closed")
        with self.db.write() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreClosed("the county store is closed")
        with self.db.read() as conn:
            yield conn

    # -- terminals and provisioning (county/registry.py) ------------------------------

    def add_terminal(self, terminal_id: str, canteen: str, now_ms: int) -> str:
        """Register ``terminal_id`` at ``canteen`` (or renew its code); return the secret."""
        try:
            with self._write() as conn:
                return registry.add_terminal(
                    conn, terminal_id, canteen, now_ms, self.limits.code_ttl_ms
                )
        except sa_exc.IntegrityError:
            # Two commands adding the same new terminal at once (PostgreSQL): one wins.
            raise StoreError(
                f"terminal {terminal_id} was registered by another command meanwhile: "
                "run this one again to renew its code"
            ) from None

    def redeem_code(self, secret_hex: str, ledger_key: bytes, now_ms: int) -> Terminal:
        """Check a one-time code and the checkpoint key; ``bind_certificate`` spends the code."""
        with self._read() as conn:
            return registry.redeem_code(conn, secret_hex, ledger_key, now_ms)

    def bind_certificate(
        self, secret_hex: str, terminal_id: str, cert_sha256: str, ledger_key: bytes, now_ms: int
    ) -> None:
        """Spend the code: pin the certificate and ledger key, atomically with the code check."""
        with self._write() as conn:
            registry.bind_certificate(
                conn, secret_hex, terminal_id, cert_sha256, ledger_key, now_ms
            )

    def terminal_for_cert(self, cert_sha256: str) -> tuple[str, str] | None:
        """(terminal id, canteen) of a provisioned certificate, or None.

        Asked of the database each time (one indexed read): county IT re-registering a
        terminal in another process must cut its old certificate off at once.
        """
        with self._read() as conn:
            return registry.terminal_for_cert(conn, cert_sha256)

    def terminal(self, terminal_id: str) -> Terminal | None:
        with self._read() as conn:
            return registry.terminal(conn, terminal_id)

    # -- ledger intake (county/intake.py) ----------------------------------------------

    def intake(self, terminal_id: str, doc: Any, now_ms: int) -> IntakeResult:
        """Apply one upload batch; everything it stores is committed before this returns,
        the clock offsets of its entries included (one transaction, one commit). A batch
        without entries is answered from a read transaction when it would write nothing
        that matters (county/intake.py, ``answer_empty``)."""
        if isinstance(doc, dict) and doc.get("entries") == []:
            with self._read() as conn:
                answer = intake.answer_empty(conn, self.limits, terminal_id, doc, now_ms)
            if answer is not None:
                return answer
        checked = intake.check_alone(doc, self.limits)  # before this process's writer turn
        with self._write() as conn:
            return intake.take(conn, self.limits, self.lists, terminal_id, doc, now_ms, checked)

    def note_clock(self, terminal_id: str, now_ms: int) -> None:
        """Keep the terminal's newest clock offset from its time_signal entries; alarm
        each one beyond the tolerance (county/intake.py). ``intake`` already does this for
        the entries it stores; this is for entries stored some other way."""
        with self._write() as conn:
            intake.note_clock(conn, terminal_id, now_ms)

    # -- issuer keys and review (county/conflicts.py) ----------------------------------

    def add_issuer_keys(self, entries: Sequence[Any], now_ms: int) -> int:
        """Remember trust-list entries (token.md §5) as keys that prove phone codes."""
        with self._write() as conn:
            return _conflicts.add_issuer_keys(conn, entries, now_ms)

    def issuer_key_count(self) -> int:
        with self._read() as conn:
            return _conflicts.issuer_key_count(conn)

    def withdraw_conflict(self, conflict_id: int, reason: str, now_ms: int) -> list[dict[str, Any]]:
        """Withdraw a conflict after review; the revocation entries it alone held are lifted."""
        with self._write() as conn:
            return _conflicts.withdraw(conn, conflict_id, reason, now_ms)

    def revocations(self) -> list[dict[str, Any]]:
        """Revocation entries standing on at least one conflict that was not withdrawn."""
        with self._read() as conn:
            return _conflicts.revocations(conn)

    # -- reads for the commands (county/reports.py) ------------------------------------

    def iter_entries(
        self,
        terminal_id: str | None = None,
        *,
        days: reports.DayRange | None = None,
        canteen: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The acknowledged entries of a terminal, a canteen and a range of local days
        (each optional), by terminal and sequence number, streamed (county/reports.py)."""
        with self._read() as conn:
            yield from reports.iter_entries(conn, terminal_id, days=days, canteen=canteen)

    def counter(self, name: str) -> int:
        with self._read() as conn:
            return reports.counter(conn, name)

    def clock_offsets(self) -> list[dict[str, Any]]:
        """Each terminal's newest clock offset (``ahead_ms``: its clock minus county time)."""
        with self._read() as conn:
            return reports.clock_offsets(conn)

    def alarms(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return reports.alarms(conn)

    def conflicts(self) -> list[dict[str, Any]]:
        """Every conflict with its evidence: both entries, their terminals, hashes and times."""
        with self._read() as conn:
            return reports.conflicts(conn)

    def report(
        self,
        now_ms: int,
        silent_after_ms: int,
        utc_offset_h: int = 8,
        *,
        days: reports.DayRange | None = None,
        canteen: str | None = None,
    ) -> dict[str, Any]:
        """Per canteen and day: meals, amounts, refusals by reason, conflicts; silent
        terminals; over ``days`` and ``canteen`` when given, else all (county/reports.py)."""
        with self._read() as conn:
            return reports.report(
                conn, now_ms, silent_after_ms, utc_offset_h, days=days, canteen=canteen
            )


def next_terminal_id(store: CountyStore, canteen: str) -> str:
    """The first free id ``CANTEEN-N`` for a new terminal at ``canteen``."""
    with store._read() as conn:
        return registry.next_terminal_id(conn, canteen)
