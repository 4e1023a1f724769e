"""The checks no single terminal can make offline, and what they find.

This module owns the county's view across terminals: the evidence it takes from each
new accepted sale (county/evidence.py verifies it; only what verified is kept in the
``evidence`` table), the two cross-terminal checks (one phone code accepted at two
terminals; one cadre served one meal at two canteens), the conflicts they find, the
credential revocations those conflicts hold, their withdrawal after review or by a
staff reversal, and the issuer keys phone codes are verified with. It never decides
whether an entry belongs to a chain (county/intake.py does, before anything here runs)
and never publishes a revocation (county/updates.py does).

Found once, across server processes. A conflict is the meeting of two halves, the
first sale and the second, which may arrive at the same moment in two processes. Each
process, before it stores its half and looks for the other, takes a transaction-scoped
advisory lock on PostgreSQL for each key it checks (the code's credential and counter;
the cadre, day and meal), all keys of the batch at once and sorted so that two
transactions always take them in the same order and cannot deadlock on them. The second
process waits for the first to commit, and at READ COMMITTED its next statement sees the
first's evidence row, so exactly one of them finds the conflict. The UNIQUE (kind,
second_terminal, second_seq) constraint stays the backstop: a conflict inserted twice
is ignored (ON CONFLICT DO NOTHING). On SQLite the write transaction already holds the
file's lock (BEGIN IMMEDIATE), so the advisory locks are not taken.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Executable,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
    update,
)

from county import evidence
from county.db.schema import conflict_revocations, conflicts, entries, issuer_keys
from county.db.schema import evidence as evidence_table
from county.storekit import (
    BAD_EVIDENCE,
    PRESENTATION_TWICE,
    SERVED_TWICE,
    StoreError,
    alarm_row,
    dialect_insert,
    insert_or_ignore,
    upsert,
)
from protocol.chain import REVERSAL, canonical_json
from protocol.lists import issuer_key, parse_issuer_keys
from protocol.tokens import IssuerKey

# An issuer's keys under one key id, built once (see county/intake.py on why).
_ISSUER_KEYS = (
    select(
        issuer_keys.c.public_key,
        issuer_keys.c.iss,
        issuer_keys.c.not_before,
        issuer_keys.c.not_after,
    )
    .where(issuer_keys.c.kid == bindparam("kid"))
    .order_by(issuer_keys.c.public_key)
)


class Keyring:
    """The issuer keys in the county database, read inside the intake's transaction.

    The table keeps no algorithm: each key gets the one its raw bytes give (the 65-byte
    point of an SM2 key, 32 bytes of an Ed25519 one; the trust lists it came from allow
    nothing else), here and nowhere else (county/evidence.py uses these keys as they are).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._cache: dict[bytes, list[IssuerKey]] = {}

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        found = self._cache.get(kid)
        if found is None:
            rows = self.conn.execute(_ISSUER_KEYS, {"kid": kid})
            found = [
                # issuer_key gives the key its algorithm (65 bytes: SM2, token.md §7)
                issuer_key(iss, kid, bytes(public_key), not_before, not_after)
                for public_key, iss, not_before, not_after in rows
            ]
            self._cache[kid] = found
        return found


@dataclass(frozen=True)
class Sale:
    """One new accepted sale of a batch, with the proof the county found in it."""

    terminal: str
    canteen: str
    seq: int
    hash: bytes
    fields: Mapping[str, Any]  # ledger field names
    proof: evidence.Proof


@dataclass(frozen=True)
class _Side:
    """One of the two accepted sales of a conflict."""

    terminal: str
    seq: int
    canteen: str
    method: str
    credential: str
    hash: bytes


def judge(
    keyring: Keyring,
    lists: evidence.Lists | None,
    terminal_id: str,
    canteen: str,
    seq: int,
    entry_hash: bytes,
    fields: Mapping[str, Any],
    now_ms: int,
    counts: dict[str, int],
    alarms: list[dict[str, Any]],
) -> Sale | None:
    """The proof in one new accepted sale, or None: a sale the county has nothing to judge
    by is counted (in ``counts``, which the caller adds to the counters once a batch); one
    the terminal vouched for but cannot prove is an alarm against the terminal, never a
    conflict against the cadre it names (its row is added to ``alarms``, which the caller
    records once a batch with ``storekit.record_alarms``)."""
    proof = evidence.check_sale(fields, keyring, canteen, lists)
    if isinstance(proof, evidence.Unjudged):
        counts["sales_unjudged"] = counts.get("sales_unjudged", 0) + 1
        return None
    if isinstance(proof, str):
        alarms.append(
            alarm_row(
                terminal_id,
                BAD_EVIDENCE,
                seq,
                entry_hash,
                None,
                f"accepted sale {seq} is no evidence: {proof}",
                now_ms,
            )
        )
        counts["sales_without_evidence"] = counts.get("sales_without_evidence", 0) + 1
        return None
    return Sale(terminal_id, canteen, seq, entry_hash, fields, proof)


def check_keys(sale: Sale) -> list[str]:
    """The keys the cross-terminal checks of ``sale`` look under."""
    keys = []
    if sale.proof.method == evidence.QR:
        keys.append(f"presentation\x1f{sale.proof.credential}\x1f{sale.fields['ctr']}")
    if sale.fields["day"] is not None and sale.fields["meal"] is not None:
        keys.append(
            f"served\x1f{sale.proof.cadre}\x1f{sale.fields['day']}\x1f{sale.fields['meal']}"
        )
    return keys


# unnest yields the array in order and count() makes every row's lock be taken.
_LOCK_KEYS = text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))"
    " FROM unnest(CAST(:keys AS text[])) AS k"
)


def lock_keys(conn: Connection, keys: Iterable[str]) -> None:
    """On PostgreSQL, lock ``keys`` until the transaction ends, in sorted order (see the
    module's docstring). Nothing to do on SQLite: the writer holds the whole file."""
    ordered = sorted(set(keys))
    if not ordered or conn.dialect.name != "postgresql":
        return
    conn.execute(_LOCK_KEYS, {"keys": ordered})


def store_evidence(conn: Connection, sales: Sequence[Sale], now_ms: int) -> None:
    """Keep the verified sales of a batch as evidence, the rows the checks compare."""
    if not sales:
        return
    conn.execute(
        insert_or_ignore(conn.dialect.name, evidence_table),
        [
            {
                "terminal": sale.terminal,
                "seq": sale.seq,
                "canteen": sale.canteen,
                "method": sale.proof.method,
                "cadre": sale.proof.cadre,
                "name": sale.proof.name,
                "credential": sale.proof.credential,
                "ctr": sale.fields["ctr"] if sale.proof.method == evidence.QR else None,
                "day": sale.fields["day"],
                "meal": sale.fields["meal"],
                "t": sale.proof.t,
                "at_ms": sale.fields["at_ms"],
                "hash": sale.hash,
                "received_ms": now_ms,
            }
            for sale in sales
        ],
    )


_V = evidence_table.c
# The other half of a conflict: the earliest stored sale that matches (columns of _Side,
# then at_ms). Built once, run with the sale's values as parameters.
_SIDE = (_V.terminal, _V.seq, _V.canteen, _V.method, _V.credential, _V.hash, _V.at_ms)
_FIRST = (_V.received_ms, _V.terminal, _V.seq)


# The other halves of a batch's sales are looked up with two statements a batch, not
# two a sale: every stored sale under any of the batch's keys, in the order "earliest"
# means, then each sale takes the first that matches it exactly. A key column's IN list
# may match a combination no sale has (another sale's credential with this one's
# counter): those rows are read and never matched. Nothing the batch stores is among
# them (its own terminal is excluded), so looking up all at once finds what looking up
# one sale after another did.
_PRESENTED = (
    select(*_SIDE, _V.ctr)
    .where(
        _V.credential.in_(bindparam("credentials", expanding=True)),
        _V.ctr.in_(bindparam("ctrs", expanding=True)),
        _V.ctr.is_not(None),
        _V.terminal != bindparam("terminal"),
    )
    .order_by(*_FIRST)
)


def _served_query() -> Select[Any]:
    r = entries.alias("r")
    reversed_since = exists().where(
        r.c.terminal == _V.terminal, r.c.ref_seq == _V.seq, r.c.kind == REVERSAL
    )
    return (
        select(*_SIDE, _V.cadre, _V.day, _V.meal, _V.t)
        .where(
            _V.cadre.in_(bindparam("cadres", expanding=True)),
            _V.day.in_(bindparam("days", expanding=True)),
            _V.meal.in_(bindparam("meals", expanding=True)),
            _V.terminal != bindparam("terminal"),
            ~reversed_since,
        )
        .order_by(*_FIRST)
    )


# Stored sales of one cadre, day and meal at other terminals, not reversed since.
_SERVED = _served_query()


def find_conflicts(
    conn: Connection, sales: Sequence[Sale], meal_span_s: int, now_ms: int
) -> list[int]:
    """Look for the other half of each of one terminal's stored sales at another terminal;
    the ids of the conflicts found (at most one a sale), in the sales' order. The caller
    holds ``check_keys`` of every sale and has left out the sales the batch reverses
    (the cadre was not charged for them).

    For each sale: the same phone code (credential and counter) accepted at another
    terminal first, the earliest such sale (a copied code, a screenshot: one conflict,
    not also "served twice", though both are true); else the same cadre served the same
    meal at another terminal within ``meal_span_s`` of the code's time and not reversed
    since, the earliest such sale."""
    if not sales:
        return []
    terminal_id = sales[0].terminal
    # A code without a counter matches nothing (ctr = NULL is never true).
    qr = [s for s in sales if s.proof.method == evidence.QR and s.fields["ctr"] is not None]
    presented: dict[tuple[str, Any], Any] = {}
    if qr:
        copies = conn.execute(
            _PRESENTED,
            {
                "credentials": sorted({s.proof.credential for s in qr}),
                "ctrs": sorted({s.fields["ctr"] for s in qr}),
                "terminal": terminal_id,
            },
        )
        for copy in copies:
            presented.setdefault((copy[4], copy[7]), copy)
    meals = [s for s in sales if s.fields["day"] is not None and s.fields["meal"] is not None]
    served: dict[tuple[str, str, str], list[Any]] = {}
    if meals:
        meals_elsewhere = conn.execute(
            _SERVED,
            {
                "cadres": sorted({s.proof.cadre for s in meals}),
                "days": sorted({s.fields["day"] for s in meals}),
                "meals": sorted({s.fields["meal"] for s in meals}),
                "terminal": terminal_id,
            },
        )
        for meal in meals_elsewhere:
            served.setdefault((meal[7], meal[8], meal[9]), []).append(meal)
    found: list[int] = []
    for sale in sales:
        f, proof = sale.fields, sale.proof
        if proof.method == evidence.QR:
            copied = presented.get((proof.credential, f["ctr"]))
            if copied is not None:
                found += _presentation_twice(conn, sale, copied, now_ms)
                continue
        if f["day"] is None or f["meal"] is None:
            continue
        t = proof.t
        for row in served.get((proof.cadre, f["day"], f["meal"]), ()):
            if abs(row[10] - t) <= meal_span_s:
                found += _served_twice(conn, sale, row, now_ms)
                break
    return found


def _presentation_twice(conn: Connection, sale: Sale, row: Any, now_ms: int) -> list[int]:
    f, proof, terminal_id = sale.fields, sale.proof, sale.terminal
    second = _Side(terminal_id, sale.seq, sale.canteen, proof.method, proof.credential, sale.hash)
    first = _Side(row[0], row[1], row[2], row[3], row[4], bytes(row[5]))
    reason = (
        f"one phone code (counter {f['ctr']}) was accepted at {first.terminal} and "
        f"{terminal_id}: the code was copied (a screenshot); its credential is revoked"
    )
    return _conflict(
        conn,
        PRESENTATION_TWICE,
        sale,
        first,
        int(row[6]),
        second,
        [proof.credential],
        reason,
        now_ms,
    )


def _served_twice(conn: Connection, sale: Sale, row: Any, now_ms: int) -> list[int]:
    f, proof, terminal_id = sale.fields, sale.proof, sale.terminal
    second = _Side(terminal_id, sale.seq, sale.canteen, proof.method, proof.credential, sale.hash)
    first = _Side(row[0], row[1], row[2], row[3], row[4], bytes(row[5]))
    cards = sorted({s.credential for s in (first, second) if s.method == evidence.CARD})
    where = f"{first.terminal} ({first.canteen}) and {terminal_id} ({sale.canteen})"
    if cards:
        # A card proves nothing about its holder: revoke the card, never the phone.
        revoke = cards
        reason = (
            f"{proof.cadre} was served {f['meal']} on {f['day']} at {where}, by card: a "
            "cloned or lent card, or a faulty terminal; the card is revoked"
        )
    else:
        revoke = [proof.credential]
        reason = (
            f"{proof.cadre} was served {f['meal']} on {f['day']} at {where}, both times "
            "with the phone's signed code; the later credential is revoked"
        )
    return _conflict(conn, SERVED_TWICE, sale, first, int(row[6]), second, revoke, reason, now_ms)


@functools.cache
def _insert_conflict(dialect: str) -> Executable:
    """A new conflict's row, its id returned; nothing when that pair was found before."""
    return dialect_insert(dialect, conflicts).on_conflict_do_nothing().returning(conflicts.c.id)


def _conflict(
    conn: Connection,
    kind: str,
    sale: Sale,
    first: _Side,
    first_at_ms: int,
    second: _Side,
    revoke: Sequence[str],
    reason: str,
    now_ms: int,
) -> list[int]:
    """Record a conflict and what it revokes; [] when it was recorded before."""
    f, proof = sale.fields, sale.proof
    conflict_id = conn.execute(
        _insert_conflict(conn.dialect.name),
        {
            "kind": kind,
            "credential": proof.credential,
            "cadre": proof.cadre,
            "unit": f["unit"],
            "day": f["day"],
            "meal": f["meal"],
            "first_terminal": first.terminal,
            "first_seq": first.seq,
            "second_terminal": second.terminal,
            "second_seq": second.seq,
            "found_ms": now_ms,
            "first_canteen": first.canteen,
            "second_canteen": second.canteen,
            "first_method": first.method,
            "second_method": second.method,
            "first_hash": first.hash,
            "second_hash": second.hash,
            "first_at_ms": first_at_ms,
            "second_at_ms": int(f["at_ms"]),
            "name": proof.name,
            "reason": reason,
        },
    ).scalar_one_or_none()
    if conflict_id is None:
        return []
    for credential in revoke:
        entry = revocation_entry(credential)
        if entry is not None:
            conn.execute(
                insert_or_ignore(conn.dialect.name, conflict_revocations),
                {
                    "conflict_id": conflict_id,
                    "credential": credential,
                    "entry": canonical_json(entry),
                    "created_ms": now_ms,
                },
            )
    return [int(conflict_id)]


def reversed_sale(conn: Connection, terminal_id: str, ref: int, seq: int, now_ms: int) -> None:
    """Staff undid sale ``ref`` (reversal entry ``seq``): a standing conflict it was part of
    no longer stands. The refresher lifts what only that conflict revoked (county/updates.py)."""
    c = conflicts.c
    conn.execute(
        update(conflicts)
        .where(
            c.withdrawn_ms.is_(None),
            or_(
                and_(c.first_terminal == terminal_id, c.first_seq == ref),
                and_(c.second_terminal == terminal_id, c.second_seq == ref),
            ),
        )
        .values(
            withdrawn_ms=now_ms,
            withdrawn_reason=f"staff at {terminal_id} reversed entry {ref} (reversal entry {seq})",
            withdrawn_by=f"reversal:{terminal_id}",
        )
    )


# -- issuer keys and review -------------------------------------------------------------


def add_issuer_keys(conn: Connection, entries_: Sequence[Any], now_ms: int) -> int:
    """Remember trust-list entries (token.md §5) as keys that prove phone codes; how many
    were new or changed their window."""
    changed = 0
    for k in parse_issuer_keys(entries_):
        stmt = upsert(conn, issuer_keys).values(
            public_key=k.public_key,
            iss=k.iss,
            kid=k.kid,
            not_before=k.not_before,
            not_after=k.not_after,
            added_ms=now_ms,
        )
        result = conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[issuer_keys.c.public_key, issuer_keys.c.iss, issuer_keys.c.kid],
                set_={
                    "not_before": stmt.excluded.not_before,
                    "not_after": stmt.excluded.not_after,
                },
                where=or_(
                    issuer_keys.c.not_before.is_distinct_from(stmt.excluded.not_before),
                    issuer_keys.c.not_after.is_distinct_from(stmt.excluded.not_after),
                ),
            )
        )
        changed += max(result.rowcount, 0)
    return changed


def issuer_key_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(issuer_keys)).scalar_one())


def lock_undecided(conn: Connection, table: Any, what: str, item_id: int) -> None:
    """Lock alarm or conflict ``item_id`` of ``table`` (alarms or conflicts) for a review
    decision in ``conn``'s transaction; StoreError in one line when there is no such one or
    someone decided on it before (a decision is final, county/review.py)."""
    c = table.c
    row = conn.execute(
        select(c.confirmed_ms, c.confirmed_by, c.withdrawn_ms, c.withdrawn_by)
        .where(c.id == item_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise StoreError(f"no {what} {item_id}: 'canteen-county {what}s' lists them")
    confirmed_ms, confirmed_by, withdrawn_ms, withdrawn_by = row
    if withdrawn_ms is not None:
        by = f" (by {withdrawn_by})" if withdrawn_by else ""
        raise StoreError(f"{what} {item_id} was withdrawn already{by}")
    if confirmed_ms is not None:
        raise StoreError(f"{what} {item_id} was confirmed already (by {confirmed_by or '?'})")


def withdraw(
    conn: Connection, conflict_id: int, reason: str, now_ms: int, by: str | None = None
) -> list[dict[str, Any]]:
    """Withdraw a conflict after review (by ``by``, a console user or cli:<login>); the
    revocation entries it alone held are lifted. A conflict confirmed or withdrawn before
    is refused."""
    if not reason.strip():
        raise StoreError("say why the conflict is withdrawn (--reason TEXT): it is kept")
    lock_undecided(conn, conflicts, "conflict", conflict_id)
    conn.execute(
        update(conflicts)
        .where(conflicts.c.id == conflict_id)
        .values(withdrawn_ms=now_ms, withdrawn_reason=reason.strip(), withdrawn_by=by)
    )
    r = conflict_revocations.alias("r")
    o = conflict_revocations.alias("o")
    c = conflicts.alias("c")
    still_held = exists().where(
        c.c.id == o.c.conflict_id, o.c.credential == r.c.credential, c.c.withdrawn_ms.is_(None)
    )
    lifted = conn.execute(
        select(r.c.entry)
        .where(r.c.conflict_id == conflict_id, ~still_held)
        .order_by(r.c.credential)
    ).scalars()
    return [json.loads(entry) for entry in lifted]


def revocations(conn: Connection) -> list[dict[str, Any]]:
    """Revocation entries standing on at least one conflict that was not withdrawn."""
    r = conflict_revocations.alias("r")
    w = conflicts.alias("w")
    c = conflicts.alias("c")
    # One row per credential, named after the first standing conflict that revokes it;
    # the conflict's kind and unit joined in SQL, not read for every conflict. Every row
    # of one credential holds the same entry (made from the credential alone).
    standing = (
        select(
            r.c.credential,
            func.min(r.c.entry).label("entry"),
            func.min(r.c.conflict_id).label("first"),
            func.min(r.c.created_ms).label("created"),
        )
        .join_from(r, w, w.c.id == r.c.conflict_id)
        .where(w.c.withdrawn_ms.is_(None))
        .group_by(r.c.credential)
        .subquery("s")
    )
    rows = conn.execute(
        select(standing.c.entry, standing.c.first, standing.c.created, c.c.kind, c.c.unit)
        .join_from(standing, c, c.c.id == standing.c.first)
        .order_by(standing.c.first, standing.c.credential)
    )
    out = []
    for entry, conflict_id, created_ms, kind, unit in rows:
        item = json.loads(entry)
        item.update(
            {"reason": kind, "conflict": conflict_id, "unit": unit, "created_ms": created_ms}
        )
        out.append(item)
    return out


def revocation_entry(credential: str | None) -> dict[str, Any] | None:
    """The token.md §5 revocation entry for a ledger credential reference, if it names one."""
    if credential is None:
        return None
    if credential.startswith("qr/"):
        iss, _, cti = credential[3:].rpartition("/")
        if iss and cti:
            return {"kind": "credential", "iss": iss, "cti": cti}
    elif credential.startswith("card/"):
        return {"kind": "card", "uid": credential[5:]}
    return None
