"""Terminal replacement: retire a dead terminal's id, provision its successor, and take the
entries its SD card still holds.

This module owns what county IT does when a terminal dies (docs/technicians.md,
"Replacing a dead terminal"), for the CLI (county/replacement_cli.py) and the console
(county/console/pages/replacement.py) alike:

- ``retire``: the id's certificate is refused from now on (county/registry.py; the
  terminal API answers its requests 403 with ``refusal_for_cert``'s line), it is no
  longer reported as silent, and it is never registered again;
- ``replace``: a new id at the same canteen (a new device brings a new ledger key, and a
  pinned key never changes), retiring the old one first if need be;
- ``recover``: a recovery file (protocol/recovery.py, written by ``canteen-terminal
  ledger export --format recovery`` from the old state directory) is verified whole
  against the ledger key the county pinned for the old id (every entry re-hashed, every
  link, the genesis, every checkpoint signature, the last entry signed), and only then
  taken through the intake rules of a sync (county/intake.py ``take``): entries the
  county holds already are compared and skipped, new ones appended with their evidence
  and conflict checks, a different entry under a held number is a fork alarm. A file
  that does not verify changes nothing; the same file twice takes nothing the second
  time and writes nothing.

Each change writes one audit_log row (county/console/audit.py ``record``). It never
speaks HTTP and never signs anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, select, update

from county import evidence, intake, registry
from county.console.audit import record
from county.db.engine import Database
from county.db.schema import entries, terminals
from county.registry import Retired
from county.storekit import OK, Limits, StoreError
from protocol.chain import (
    GENESIS,
    GENESIS_PREV_HASH,
    canonical_json,
    checkpoint_message,
    entry_hash,
)
from protocol.recovery import MAX_HEADER_BYTES, RecoveryFormatError, parse_header

# The largest recovery file the county reads, the CLI and the console's upload alike (the
# console refuses a larger body anyway): about 110,000 entries of QR sales. A bigger
# ledger is exported from the entry after the county's last on (--from).
MAX_RECOVERY_BYTES = 64 * 1024 * 1024
# Entries parsed and checked at a time in the verification pass.
_CHUNK = 512


class RecoveryRefused(StoreError):
    """The recovery file is refused: not verified, or not for this terminal. Nothing changed."""


class RecoveryFork(StoreError):
    """The file verifies, but an entry differs from the one the county holds under its
    number: a fork alarm was raised (and kept), and nothing was taken."""


@dataclass(frozen=True)
class Recovery:
    """What one recovery took: ``new`` entries appended, ``known`` already held, the
    terminal's head after it (sequence number and hash in hex), the file's SHA-256."""

    terminal_id: str
    new: int
    known: int
    head_seq: int
    head_hash: str
    file_sha256: str


# --- retire and replace -------------------------------------------------------------------


def retire(db: Database, terminal_id: str, reason: str, *, user: str, now_ms: int) -> Retired:
    with db.write() as conn:
        done = registry.retire_terminal(conn, terminal_id, reason, now_ms)
        record(
            conn,
            user=user,
            action="terminal.retire",
            target=terminal_id,
            detail=done.reason,
            at_ms=now_ms,
        )
    return done


@dataclass(frozen=True)
class Replacement:
    old: Retired
    retired_now: bool
    new_id: str
    canteen: str
    secret: str  # the new id's provisioning code secret (county/app.py makes the code)


def replace_terminal(
    db: Database,
    old_id: str,
    new_id: str | None,
    reason: str | None,
    *,
    user: str,
    now_ms: int,
    code_ttl_ms: int,
) -> Replacement:
    """Register a successor at ``old_id``'s canteen, retiring ``old_id`` first if it is
    not yet (with ``reason``, by default "replaced")."""
    with db.write() as conn:
        old, retired_now, new, secret = registry.replace_terminal(
            conn, old_id, new_id, reason or "replaced", now_ms, code_ttl_ms
        )
        if retired_now:
            record(
                conn,
                user=user,
                action="terminal.retire",
                target=old_id,
                detail=old.reason,
                at_ms=now_ms,
            )
        record(
            conn,
            user=user,
            action="terminal.replace",
            target=old_id,
            detail=f"replaced by {new} at canteen {old.canteen}",
            at_ms=now_ms,
        )
    return Replacement(old, retired_now, new, old.canteen, secret)


def refusal_for_cert(db: Database, cert_sha256: str) -> str | None:
    """The terminal API's one line for the certificate of a retired terminal, or None."""
    with db.read() as conn:
        found = registry.retired_for_cert(conn, cert_sha256)
    if found is None:
        return None
    successor = f"; its replacement is {found.replaced_by}" if found.replaced_by else ""
    return (
        f"terminal {found.terminal_id} was retired ({found.reason}): its certificate is "
        f"revoked and its uploads are refused{successor}"
    )


def history(conn: Connection) -> list[dict[str, Any]]:
    """Retired ids with their reason and successor, the latest first (console, CLI)."""
    return [
        {
            "terminal": r.terminal_id,
            "canteen": r.canteen,
            "retired_ms": r.retired_ms,
            "reason": r.reason,
            "replaced_by": r.replaced_by,
        }
        for r in registry.retired_terminals(conn)
    ]


# --- recover: verify the whole file, then take it through the intake ---------------------


def _refused(text: str) -> RecoveryRefused:
    return RecoveryRefused(f"recovery file refused, nothing taken: {text}")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the file, the header included; refused if not UTF-8."""
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError:
        raise _refused("the file is not UTF-8 text") from None


@dataclass(frozen=True)
class _Verified:
    terminal_id: str
    first_seq: int
    last_seq: int
    # Each checkpoint's seq, in order: the batches of the intake pass end on them.
    checkpoints: list[tuple[int, bytes, int, bytes]]


def _header(path: Path, terminal_id: str, pinned: bytes) -> tuple[Any, list[Any]]:
    size = path.stat().st_size
    if size > MAX_RECOVERY_BYTES:
        raise _refused(
            f"{size / 2**20:.1f} MiB, more than {MAX_RECOVERY_BYTES // 2**20} MiB: export it "
            "in parts with 'canteen-terminal ledger export --format recovery --from SEQ'"
        )
    with open(path, "rb") as f:
        first = f.readline(MAX_HEADER_BYTES + 1)
    if not first.strip():
        raise _refused("the file is empty")
    try:
        header = parse_header(first.decode("utf-8"))
    except UnicodeDecodeError:
        raise _refused("the file is not UTF-8 text") from None
    except RecoveryFormatError as exc:
        raise _refused(str(exc)) from None
    if header.terminal_id != terminal_id:
        raise _refused(f"it is the ledger of terminal {header.terminal_id}, not of {terminal_id}")
    if header.public_key != pinned:
        raise _refused(
            f"it is signed with another key than the ledger key pinned for {terminal_id} "
            "when it was provisioned"
        )
    verifier = Ed25519PublicKey.from_public_bytes(pinned)
    cps: list[Any] = []
    for seq, hash_hex, at_ms, sig_hex in header.checkpoints:
        try:
            digest, signature = bytes.fromhex(hash_hex), bytes.fromhex(sig_hex)
        except ValueError:
            raise _refused(f"checkpoint {seq}: not hex") from None
        if len(digest) != 32 or len(signature) != 64:
            raise _refused(f"checkpoint {seq}: a hash is 32 bytes and a signature 64")
        try:
            verifier.verify(signature, checkpoint_message(terminal_id, seq, digest))
        except InvalidSignature:
            raise _refused(
                f"checkpoint {seq}: the signature is not made with {terminal_id}'s pinned key"
            ) from None
        if cps and seq <= cps[-1][0]:
            raise _refused("the checkpoints are not in order")
        if not header.first_seq <= seq <= header.last_seq:
            raise _refused(f"checkpoint {seq} is outside the file's entries")
        cps.append((seq, digest, at_ms, signature))
    if not cps or cps[-1][0] != header.last_seq:
        raise _refused(
            f"no checkpoint signed with the terminal's key covers its last entry "
            f"{header.last_seq}: export it again with the terminal's key"
        )
    return header, cps


def _rows(path: Path, limits: Limits) -> Iterator[list[intake.WireEntry]]:
    """The file's entries in chunks, each parsed as a sync batch is (shape, types)."""
    chunk: list[Any] = []
    for number, line in _lines(path):
        if number == 1:
            continue
        if not line.strip():
            raise _refused(f"line {number} is empty")
        try:
            chunk.append(json.loads(line))
        except (ValueError, RecursionError):
            raise _refused(f"line {number} is not JSON") from None
        if len(chunk) == _CHUNK:
            yield _parse(chunk, limits, number)
            chunk = []
    if chunk:
        yield _parse(chunk, limits, None)


def _parse(chunk: list[Any], limits: Limits, line: int | None) -> list[intake.WireEntry]:
    # Said here in a technician's words before parse_batch's "must be contiguous".
    prev: int | None = None
    for item in chunk:
        if isinstance(item, list) and item and type(item[0]) is int:
            if prev is not None and item[0] != prev + 1:
                raise _refused(
                    f"entry {prev + 1} is missing (found {item[0]})"
                    if item[0] > prev + 1
                    else f"entry {item[0]} is repeated or out of order"
                )
            prev = item[0]
    try:
        wire, _cps, _nonce = intake.parse_batch({"entries": chunk}, limits)
    except intake.BatchInvalid as exc:
        where = f" (near line {line})" if line is not None else ""
        raise _refused(f"{exc}{where}") from None
    return wire


def verify_file(path: Path, terminal_id: str, pinned: bytes, limits: Limits) -> _Verified:
    """Check the whole file against the pinned key; RecoveryRefused says what is wrong."""
    header, cps = _header(path, terminal_id, pinned)
    signed = {seq: digest for seq, digest, _at, _sig in cps}
    wide = replace(limits, max_batch_entries=_CHUNK)
    expected = header.first_seq
    prev: bytes | None = None
    genesis_detail = canonical_json({"terminal_id": terminal_id, "public_key": pinned.hex()})
    for wire in _rows(path, wide):
        for e in wire:
            if e.seq != expected:
                raise _refused(
                    f"entry {expected} is missing (found {e.seq})"
                    if e.seq > expected
                    else f"entry {e.seq} is repeated or out of order"
                )
            if entry_hash(e.prev_hash, e.fields) != e.hash:
                raise _refused(f"entry {e.seq} was altered: its hash does not match its contents")
            if prev is not None and e.prev_hash != prev:
                raise _refused(f"entry {e.seq} does not link to entry {e.seq - 1}")
            if e.seq == 1 and (
                e.fields[3] != GENESIS
                or e.fields[15] != genesis_detail
                or e.prev_hash != GENESIS_PREV_HASH
            ):
                raise _refused("entry 1 is not the genesis of this terminal with its pinned key")
            want = signed.get(e.seq)
            if want is not None and want != e.hash:
                raise _refused(
                    f"entry {e.seq} differs from what the terminal's checkpoint {e.seq} signed"
                )
            prev = e.hash
            expected += 1
    if expected - 1 != header.last_seq or expected == header.first_seq:
        raise _refused(f"the file ends at entry {expected - 1}, its header says {header.last_seq}")
    if header.entries != header.last_seq - header.first_seq + 1:
        raise _refused("the header's entry count does not match its range")
    return _Verified(terminal_id, header.first_seq, header.last_seq, cps)


def _spans(path: Path, ok: _Verified, limits: Limits) -> Iterator[list[intake.WireEntry]]:
    """The verified entries again, in batches that each end on a signed checkpoint."""
    ends = iter([cp[0] for cp in ok.checkpoints])
    end = next(ends)
    batch: list[intake.WireEntry] = []
    for wire in _rows(path, replace(limits, max_batch_entries=_CHUNK)):
        for e in wire:
            batch.append(e)
            if e.seq == end:
                yield batch
                batch = []
                end = next(ends, -1)


def _wire(
    batch: list[intake.WireEntry], cps: list[tuple[int, bytes, int, bytes]]
) -> dict[str, Any]:
    lo, hi = batch[0].seq, batch[-1].seq
    return {
        "entries": [[*e.fields, e.prev_hash.hex(), e.hash.hex()] for e in batch],
        "checkpoints": [
            [seq, digest.hex(), at, sig.hex()] for seq, digest, at, sig in cps if lo <= seq <= hi
        ],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recover(
    db: Database,
    terminal_id: str,
    path: Path,
    *,
    limits: Limits,
    lists: evidence.Lists | None,
    user: str,
    now_ms: int,
) -> Recovery:
    """Verify the recovery file at ``path`` against ``terminal_id``'s pinned ledger key,
    then take its entries exactly once (see the module's docstring)."""
    with db.read() as conn:
        found = registry.terminal(conn, terminal_id)
    if found is None:
        raise StoreError(f"no terminal {terminal_id} is registered")
    if found.ledger_key is None:
        raise _refused(
            f"terminal {terminal_id} was never provisioned: the county has no ledger key to "
            "verify its entries with"
        )
    ok = verify_file(path, terminal_id, found.ledger_key, limits)
    file_sha = _sha256(path)
    _T = terminals.c
    with db.write() as conn:
        # Locked as the intake locks it: two recoveries (or a sync) of this terminal at
        # once run one after the other, and the second finds the first's entries.
        row = conn.execute(
            select(_T.acked_seq, _T.last_seen_ms)
            .where(_T.terminal_id == terminal_id)
            .with_for_update()
        ).one()
        acked, seen = int(row[0]), row[1]
        if ok.first_seq > acked + 1:
            raise _refused(
                f"the county holds {terminal_id}'s entries up to {acked} and the file starts at "
                f"{ok.first_seq}: export it from entry {acked + 1} on (--from {acked + 1})"
            )
        new = known = 0
        took = False
        fork: str | None = None
        for batch in _spans(path, ok, limits):
            if batch[-1].seq <= acked:
                same = _held_same(conn, terminal_id, batch)
                if same:
                    known += len(batch)
                    continue
            # New entries, or a held number with another entry: the intake's rules decide
            # (a fork is its alarm, kept with this transaction).
            took = True
            wide = replace(limits, max_batch_entries=max(limits.max_batch_entries, len(batch)))
            result = intake.take(
                conn, wide, lists, terminal_id, _wire(batch, ok.checkpoints), now_ms
            )
            if result.status != OK:
                fork = result.problem or result.status
                break
            new += result.accepted
            known += result.duplicates
        if took:
            # The old device was not heard from: a recovery is no sign of life.
            conn.execute(
                update(terminals).where(_T.terminal_id == terminal_id).values(last_seen_ms=seen)
            )
        head = conn.execute(
            select(_T.acked_seq, _T.last_hash).where(_T.terminal_id == terminal_id)
        ).one()
        if fork is None and new:
            record(
                conn,
                user=user,
                action="terminal.recover",
                target=terminal_id,
                detail=f"{new} new, {known} already held, head {head[0]}; file sha256 {file_sha}",
                at_ms=now_ms,
            )
    if fork is not None:
        raise RecoveryFork(f"recovery file refused, nothing taken: {fork} (alarm raised)")
    return Recovery(terminal_id, new, known, int(head[0]), bytes(head[1]).hex(), file_sha)


def _held_same(conn: Connection, terminal_id: str, batch: list[intake.WireEntry]) -> bool:
    """Whether the county holds exactly these entries (same numbers, same hashes)."""
    held = {
        int(seq): bytes(h)
        for seq, h in conn.execute(
            select(entries.c.seq, entries.c.hash).where(
                entries.c.terminal == terminal_id,
                entries.c.seq.between(batch[0].seq, batch[-1].seq),
            )
        )
    }
    return all(held.get(e.seq) == e.hash for e in batch)
