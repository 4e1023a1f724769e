"""The county's terminal registry: who may send ledger entries, and at which canteen.

This module owns the rows of the ``terminals`` table as county IT and provisioning see
them: registering a terminal at a canteen with a one-time code, redeeming that code,
pinning the terminal's certificate and ledger key when the code is spent, and finding
the terminal behind a client certificate. It never reads a ledger entry (county/intake.py
owns acked_seq and last_hash) and never issues a certificate (county/ca.py does).

Each function runs inside a transaction the caller opened (county/store.py). Where a
decision reads a row and then writes it (renewing a code, spending one) the row is
locked first (SELECT ... FOR UPDATE on PostgreSQL; on SQLite the write transaction
already holds the file's lock), so two server processes cannot spend one code twice.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, literal, select, update

from county.db.schema import terminals
from county.storekit import StoreError
from protocol.chain import GENESIS_PREV_HASH


class ProvisionRefused(StoreError):
    """A provisioning request is refused (unknown, used or expired code, another key)."""


@dataclass(frozen=True)
class Terminal:
    terminal_id: str
    canteen: str
    ledger_key: bytes | None
    acked_seq: int


def _code_hash(secret_hex: str) -> bytes:
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError:
        raise ProvisionRefused("the provisioning code is malformed") from None
    return hashlib.sha256(secret).digest()


def add_terminal(
    conn: Connection, terminal_id: str, canteen: str, now_ms: int, code_ttl_ms: int
) -> str:
    """Register ``terminal_id`` at ``canteen`` (or renew its code); return the secret."""
    if not terminal_id or not canteen:
        raise StoreError("a terminal needs a non-empty id and canteen")
    secret = secrets.token_bytes(10)
    code_hash = hashlib.sha256(secret).digest()
    have = conn.execute(
        select(terminals.c.canteen).where(terminals.c.terminal_id == terminal_id).with_for_update()
    ).scalar_one_or_none()
    if have is None:
        conn.execute(
            insert(terminals).values(
                terminal_id=terminal_id,
                canteen=canteen,
                code_hash=code_hash,
                code_expires_ms=now_ms + code_ttl_ms,
                registered_ms=now_ms,
                last_hash=GENESIS_PREV_HASH,
            )
        )
    elif have != canteen:
        raise StoreError(
            f"terminal {terminal_id} is registered at canteen {have}, not {canteen}; "
            "a terminal keeps its canteen: register a new terminal id instead"
        )
    else:
        # Re-provisioning (a new TLS key): the pinned ledger key stays, and the old
        # certificate stops working now, so a stolen terminal is cut off at once.
        conn.execute(
            update(terminals)
            .where(terminals.c.terminal_id == terminal_id)
            .values(code_hash=code_hash, code_expires_ms=now_ms + code_ttl_ms, cert_sha256=None)
        )
    return secret.hex()


def redeem_code(conn: Connection, secret_hex: str, ledger_key: bytes, now_ms: int) -> Terminal:
    """Check a one-time code and the checkpoint key; ``bind_certificate`` spends the code."""
    row = conn.execute(
        select(
            terminals.c.terminal_id,
            terminals.c.canteen,
            terminals.c.code_expires_ms,
            terminals.c.ledger_key,
            terminals.c.acked_seq,
        ).where(terminals.c.code_hash == _code_hash(secret_hex))
    ).one_or_none()
    if row is None:
        raise ProvisionRefused(
            "unknown or already used provisioning code: ask county IT for a new one "
            "('canteen-county terminal add')"
        )
    terminal_id, canteen, expires_ms, pinned, acked = row
    if expires_ms is not None and now_ms > expires_ms:
        raise ProvisionRefused("the provisioning code has expired: ask county IT for a new one")
    if pinned is not None and bytes(pinned) != ledger_key:
        raise ProvisionRefused(
            f"terminal {terminal_id} already has a different ledger key pinned: a terminal's "
            "ledger key never changes; restore the terminal's key or register a new terminal"
        )
    return Terminal(terminal_id, canteen, None if pinned is None else bytes(pinned), acked)


def bind_certificate(
    conn: Connection,
    secret_hex: str,
    terminal_id: str,
    cert_sha256: str,
    ledger_key: bytes,
    now_ms: int,
) -> None:
    """Spend the code: pin the certificate and ledger key, atomically with the code check.

    The row is locked with the code still in it: a second process spending the same code
    waits, then finds the code gone (PostgreSQL re-checks the condition on the row the
    first one committed) and is refused."""
    found = conn.execute(
        select(terminals.c.terminal_id)
        .where(
            terminals.c.terminal_id == terminal_id,
            terminals.c.code_hash == _code_hash(secret_hex),
        )
        .with_for_update()
    ).one_or_none()
    if found is None:
        raise ProvisionRefused("the provisioning code was used meanwhile")
    conn.execute(
        update(terminals)
        .where(terminals.c.terminal_id == terminal_id)
        .values(
            code_hash=None,
            code_expires_ms=None,
            cert_sha256=cert_sha256,
            # A pinned ledger key never changes.
            ledger_key=func.coalesce(
                terminals.c.ledger_key, literal(ledger_key, terminals.c.ledger_key.type)
            ),
            provisioned_ms=now_ms,
        )
    )


def terminal_for_cert(conn: Connection, cert_sha256: str) -> tuple[str, str] | None:
    """(terminal id, canteen) of a provisioned certificate, or None."""
    row = conn.execute(
        select(terminals.c.terminal_id, terminals.c.canteen).where(
            terminals.c.cert_sha256 == cert_sha256
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def terminal(conn: Connection, terminal_id: str) -> Terminal | None:
    row = conn.execute(
        select(
            terminals.c.terminal_id,
            terminals.c.canteen,
            terminals.c.ledger_key,
            terminals.c.acked_seq,
        ).where(terminals.c.terminal_id == terminal_id)
    ).one_or_none()
    if row is None:
        return None
    key = None if row[2] is None else bytes(row[2])
    return Terminal(row[0], row[1], key, row[3])


def next_terminal_id(conn: Connection, canteen: str) -> str:
    """The first free id ``CANTEEN-N`` for a new terminal at ``canteen``."""
    taken = set(
        conn.execute(select(terminals.c.terminal_id).where(terminals.c.canteen == canteen))
        .scalars()
        .all()
    )
    n = 1
    while f"{canteen}-{n}" in taken:
        n += 1
    return f"{canteen}-{n}"
