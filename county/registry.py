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
from typing import Any

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
    found = conn.execute(
        select(terminals.c.canteen, terminals.c.retired_ms)
        .where(terminals.c.terminal_id == terminal_id)
        .with_for_update()
    ).one_or_none()
    have, retired_ms = (None, None) if found is None else (found[0], found[1])
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
    elif retired_ms is not None:
        raise StoreError(
            f"terminal {terminal_id} was retired: an id is never used again; provision a "
            f"replacement with 'canteen-county terminal replace {terminal_id}'"
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
    """(terminal id, canteen) of a provisioned certificate, or None; None too for the
    certificate of a retired terminal (revoked: ``retired_for_cert`` says so)."""
    row = conn.execute(
        select(terminals.c.terminal_id, terminals.c.canteen).where(
            terminals.c.cert_sha256 == cert_sha256, terminals.c.retired_ms.is_(None)
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


# --- retiring and replacing a terminal id (issue 16; docs/technicians.md) ----------------

MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Retired:
    """A retired terminal id: when, why, and the id that took its place (if any)."""

    terminal_id: str
    canteen: str
    retired_ms: int
    reason: str
    replaced_by: str | None


def _reason(text: str) -> str:
    reason = " ".join(text.split())
    if not reason:
        raise StoreError("give a reason (--reason TEXT): it is kept for the record")
    if len(reason) > MAX_REASON_CHARS:
        raise StoreError(f"the reason is longer than {MAX_REASON_CHARS} characters")
    return reason


def _locked(conn: Connection, terminal_id: str) -> Any:
    row = conn.execute(
        select(
            terminals.c.canteen,
            terminals.c.retired_ms,
            terminals.c.retired_reason,
            terminals.c.replaced_by,
        )
        .where(terminals.c.terminal_id == terminal_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise StoreError(f"no terminal {terminal_id} is registered")
    return row


def retire_terminal(conn: Connection, terminal_id: str, reason: str, now_ms: int) -> Retired:
    """Take ``terminal_id`` out of service: its certificate is refused from now on (the
    row keeps its hash, so the refusal can say why), an unspent provisioning code is
    void, and the id is never registered again. Its entries and pinned ledger key stay:
    a recovered ledger is verified against that key (county/replacement.py)."""
    why = _reason(reason)
    row = _locked(conn, terminal_id)
    if row[1] is not None:
        raise StoreError(f"terminal {terminal_id} is already retired: {row[2]}")
    conn.execute(
        update(terminals)
        .where(terminals.c.terminal_id == terminal_id)
        .values(retired_ms=now_ms, retired_reason=why, code_hash=None, code_expires_ms=None)
    )
    return Retired(terminal_id, row[0], now_ms, why, row[3])


def replace_terminal(
    conn: Connection,
    old_id: str,
    new_id: str | None,
    reason: str,
    now_ms: int,
    code_ttl_ms: int,
) -> tuple[Retired, bool, str, str]:
    """Register a new terminal id at ``old_id``'s canteen in its place: (the old one as
    retired, whether it was retired just now, the new id, the new id's code secret).
    ``old_id`` is retired first if it is not yet; ``new_id`` defaults to the canteen's
    next free id and must be new."""
    row = _locked(conn, old_id)
    canteen, retired_ms, retired_reason, replaced_by = row
    if replaced_by is not None:
        raise StoreError(
            f"terminal {old_id} was already replaced by {replaced_by}; for a new code for "
            f"{replaced_by}: canteen-county terminal add --terminal {replaced_by} "
            f"--canteen {canteen}"
        )
    new = new_id or next_terminal_id(conn, canteen)
    if new == old_id:
        raise StoreError("a replacement needs a new terminal id, not the old one")
    if terminal(conn, new) is not None:
        raise StoreError(
            f"terminal {new} is registered already: a replacement gets a new id "
            "(leave out --new for the canteen's next free one)"
        )
    retired_now = retired_ms is None
    if retired_now:
        old = retire_terminal(conn, old_id, reason, now_ms)
    else:
        old = Retired(old_id, canteen, int(retired_ms), str(retired_reason), None)
    secret = add_terminal(conn, new, canteen, now_ms, code_ttl_ms)
    conn.execute(update(terminals).where(terminals.c.terminal_id == old_id).values(replaced_by=new))
    done = Retired(old.terminal_id, canteen, old.retired_ms, old.reason, new)
    return done, retired_now, new, secret


def retired_for_cert(conn: Connection, cert_sha256: str) -> Retired | None:
    """The retired terminal whose (revoked) certificate this is, or None."""
    row = conn.execute(
        select(
            terminals.c.terminal_id,
            terminals.c.canteen,
            terminals.c.retired_ms,
            terminals.c.retired_reason,
            terminals.c.replaced_by,
        ).where(terminals.c.cert_sha256 == cert_sha256, terminals.c.retired_ms.is_not(None))
    ).one_or_none()
    if row is None:
        return None
    return Retired(row[0], row[1], int(row[2]), row[3] or "", row[4])


def retired_terminals(conn: Connection) -> list[Retired]:
    """Every retired terminal id, the most recently retired first."""
    rows = conn.execute(
        select(
            terminals.c.terminal_id,
            terminals.c.canteen,
            terminals.c.retired_ms,
            terminals.c.retired_reason,
            terminals.c.replaced_by,
        )
        .where(terminals.c.retired_ms.is_not(None))
        .order_by(terminals.c.retired_ms.desc(), terminals.c.terminal_id)
    )
    return [Retired(r[0], r[1], int(r[2]), r[3] or "", r[4]) for r in rows]
