"""The review of alarms and conflicts (issue 16): what each is, its evidence, and the
decision a named person takes on it.

This module owns the review's reads and writes, as plain functions taking a
Connection (the console's page county/console/pages/alarms.py and the commands
``canteen-county alarms|conflicts confirm|withdraw`` both call them):

- ``items`` lists alarms and conflicts, the undecided ("open") first, filtered by
  state, kind and terminal, each with its evidence: the entries it names, read from the
  entries table, with their signed codes re-verified now (county/evidence.py, the very
  check the intake made) and the result in words ("verifies with issuer key ..." or
  why not), the cadre's name from the directory, canteen and agency names, local times;
- ``item`` gives one of them;
- ``decide`` confirms or withdraws one, with a reason (one line, at most
  ``MAX_REASON`` characters), by whom and when. A decision is final: a second one on
  the same alarm or conflict is refused in one line.

What a decision does (docs/alarms.md): withdrawing a conflict lifts the revocations it
alone held; ``withdraw_conflict`` does it through the signed update repository when the
county publishes one, under its lock (county/updates.py, CountyRepository.
withdraw_conflict), as the command always did. Confirming a conflict keeps its
revocations, and marks it reviewed. An alarm's decision is a reviewed note only: a
withdrawn fork alarm does not un-fork the chain, a withdrawn clock alarm does not
change the terminal's clock; it no longer waits for review.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, and_, func, or_, select, tuple_, update

from county import conflicts as conflicts_mod
from county import evidence
from county.db.schema import agencies, alarms, cadres, canteens, conflict_revocations, entries
from county.db.schema import conflicts as conflicts_table
from county.errors import StoreError
from county.localtime import local_text

ALARM = "alarm"
CONFLICT = "conflict"
WHATS = (ALARM, CONFLICT)
CONFIRM = "confirm"
WITHDRAW = "withdraw"
DECISIONS = (CONFIRM, WITHDRAW)
DONE = {CONFIRM: "confirmed", WITHDRAW: "withdrawn"}  # a decision's past participle
OPEN = "open"
CONFIRMED = "confirmed"
WITHDRAWN = "withdrawn"
STATES = (OPEN, CONFIRMED, WITHDRAWN)
MAX_REASON = 500
MAX_ID = 2**63 - 1
# The list shows at most this many items (the newest of each state first).
MAX_ITEMS = 500


class ReviewError(StoreError):
    """A review refused: the message is one line and nothing was changed."""


def check_reason(reason: str | None, decision: str, what: str) -> str:
    """The reason of a decision, trimmed: required, one line, at most MAX_REASON."""
    text = (reason or "").strip()
    if not text:
        raise ReviewError(
            f"say why the {what} is {DONE.get(decision, decision)} (--reason TEXT): nothing changed"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ReviewError("the reason must be one line of text, without control characters")
    if len(text) > MAX_REASON:
        raise ReviewError(f"the reason is {len(text)} characters; at most {MAX_REASON}")
    return text


def _check(what: str, decision: str) -> None:
    if what not in WHATS:
        raise ReviewError(f"{what!r} is neither an alarm nor a conflict")
    if decision not in DECISIONS:
        raise ReviewError(f"{decision!r} is neither confirm nor withdraw")


def decide(
    conn: Connection,
    what: str,
    item_id: int,
    decision: str,
    reason: str | None,
    by: str,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Confirm or withdraw alarm or conflict ``item_id`` in ``conn``'s transaction; the
    revocation entries a withdrawn conflict alone held (to lift; [] otherwise)."""
    _check(what, decision)
    text = check_reason(reason, decision, what)
    if not 0 < item_id <= MAX_ID:
        raise ReviewError(f"no {what} {item_id}: 'canteen-county {what}s' lists them")
    if what == CONFLICT and decision == WITHDRAW:
        # The one place a conflict is withdrawn (the command's path too).
        return conflicts_mod.withdraw(conn, item_id, text, now_ms, by=by)
    table = alarms if what == ALARM else conflicts_table
    conflicts_mod.lock_undecided(conn, table, what, item_id)
    prefix = DONE[decision]
    conn.execute(
        update(table)
        .where(table.c.id == item_id)
        .values({f"{prefix}_ms": now_ms, f"{prefix}_by": by, f"{prefix}_reason": text})
    )
    return []


@dataclass(frozen=True)
class Withdrawal:
    """What withdrawing a conflict did: the revocations it lifted, and the signed
    revocation list's version they left (None when the county publishes none)."""

    lifted: list[dict[str, Any]]
    version: int | None
    published_lifted: int


# What runs in a withdrawal's transaction after it: (connection, the entries lifted).
Also = Callable[[Connection, list[dict[str, Any]]], None]


class _Reviewer:
    """What CountyRepository.withdraw_conflict calls as its store: the withdrawal in one
    write transaction of ``db``, with ``also(conn, lifted)`` (an audit row) in it."""

    def __init__(self, db: Any, by: str, also: Also | None) -> None:
        self.db, self.by, self.also = db, by, also

    def withdraw_conflict(self, conflict_id: int, reason: str, now_ms: int) -> list[Any]:
        with self.db.write() as conn:
            lifted = decide(conn, CONFLICT, conflict_id, WITHDRAW, reason, self.by, now_ms)
            if self.also is not None:
                self.also(conn, lifted)
        return lifted


def withdraw_conflict(
    db: Any,
    data: Path | None,
    conflict_id: int,
    reason: str | None,
    by: str,
    now_ms: int,
    also: Also | None = None,
) -> Withdrawal:
    """Withdraw a conflict (``db``: a county Database) and lift what it alone revoked:
    through a signed revocation list when county ``data`` has an update repository,
    under the repository's lock so the refresher cannot publish it again in between.
    ``also(conn, lifted)`` runs in the withdrawal's transaction (the console's audit row).
    Refusals are ReviewError/StoreError (nothing changed) or updates.UpdatesError."""
    from county import updates

    check_reason(reason, WITHDRAW, CONFLICT)  # before the repository's lock is taken
    reviewer = _Reviewer(db, by, also)
    text = str(reason)
    if data is not None and (updates.RepoPaths(data).metadata / "timestamp.json").is_file():
        with updates.CountyRepository(data) as repo:
            lifted, pub = repo.withdraw_conflict(reviewer, conflict_id, text, now_ms)
        version = pub.revocation_version if lifted else None
        return Withdrawal(lifted, version, pub.revocations_lifted)
    return Withdrawal(reviewer.withdraw_conflict(conflict_id, text, now_ms), None, 0)


# -- reading -----------------------------------------------------------------------------


def _state(confirmed_ms: int | None, withdrawn_ms: int | None) -> str:
    if withdrawn_ms is not None:
        return WITHDRAWN
    return CONFIRMED if confirmed_ms is not None else OPEN


def _decision(r: Any, zone: Any) -> dict[str, Any] | None:
    for prefix in ("withdrawn", "confirmed"):
        at = r[f"{prefix}_ms"]
        if at is not None:
            return {
                "state": WITHDRAWN if prefix == "withdrawn" else CONFIRMED,
                "at_ms": at,
                "local": local_text(at, zone),
                "by": r[f"{prefix}_by"] or "",
                "reason": r[f"{prefix}_reason"] or "",
            }
    return None


def _state_where(table: Table, state: str | None) -> Any:
    c = table.c
    if state == OPEN:
        return and_(c.confirmed_ms.is_(None), c.withdrawn_ms.is_(None))
    if state == CONFIRMED:
        return and_(c.confirmed_ms.is_not(None), c.withdrawn_ms.is_(None))
    if state == WITHDRAWN:
        return c.withdrawn_ms.is_not(None)
    return None


def open_counts(conn: Connection) -> dict[str, int]:
    """How many alarms and conflicts wait for review (the home page's figures)."""
    out = {}
    for what, table in ((ALARM, alarms), (CONFLICT, conflicts_table)):
        query = select(func.count()).select_from(table).where(_state_where(table, OPEN))
        out[what] = int(conn.execute(query).scalar_one())
    return out


def _rows(
    conn: Connection,
    table: Table,
    found_ms: str,
    state: str | None,
    kind: str | None,
    terminal: Any,
    item_id: int | None,
) -> list[Any]:
    """Rows of ``table`` (alarms or conflicts), the newest first by ``found_ms``;
    ``terminal``: a clause on the table, or None."""
    c = table.c
    where = [w for w in (_state_where(table, state), terminal) if w is not None]
    if kind:
        where.append(c.kind == kind)
    if item_id is not None:
        where.append(c.id == item_id)
    query = select(table).where(*where).order_by(c[found_ms].desc(), c.id.desc())
    return list(conn.execute(query.limit(MAX_ITEMS)).mappings().all())


class _Names:
    """Directory names (cadres, canteens, agencies) of the items shown, read once."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cadres: dict[str, str] = {}
        self.canteens: dict[str, str] = {}
        self.agencies: dict[str, str] = {}

    def load(self, cadre_ids: set[str], canteen_ids: set[str], units: set[str]) -> None:
        for key, table, col, out in (
            (cadre_ids, cadres, cadres.c.cadre, self.cadres),
            (canteen_ids, canteens, canteens.c.canteen, self.canteens),
            (units, agencies, agencies.c.code, self.agencies),
        ):
            wanted = sorted(k for k in key if k)
            if wanted:
                rows = self.conn.execute(select(col, table.c.name).where(col.in_(wanted)))
                out.update({str(k): str(v) for k, v in rows})


def _entries(conn: Connection, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    e = entries.c
    rows = conn.execute(select(entries).where(tuple_(e.terminal, e.seq).in_(wanted))).mappings()
    return {(r["terminal"], int(r["seq"])): r for r in rows}


def key_label(public_key: bytes) -> str:
    """An issuer key as people compare it: its algorithm and the start of its SHA-256."""
    alg = "SM2" if len(public_key) == 65 else "Ed25519"
    return f"{alg} {sha256(public_key).hexdigest()[:16]}"


def verify_entry(
    row: Any, keyring: evidence.Keyring, lists: evidence.Lists | None
) -> tuple[str, bool, str]:
    """A stored entry's signed code re-verified now: (the result in words, verified?, the
    issuer key's label when a phone code verified, else "")."""
    if row["kind"] != "sale" or row["verdict"] != "accept":
        return (f"a {row['kind']} entry ({row['verdict'] or '-'}): no code to verify", False, "")
    proof = evidence.check_sale(dict(row), keyring, row["canteen"], lists)
    if isinstance(proof, evidence.Unjudged):
        return (f"not judged: {proof}", False, "")
    if isinstance(proof, str):
        return (f"refused: {proof}", False, "")
    if proof.method == evidence.QR and proof.issuer_key is not None:
        iss = proof.cadre.split("/", 1)[0]
        label = f"{iss} {key_label(proof.issuer_key)}"
        return (f"verifies with issuer key {label}", True, label)
    uid = proof.credential.removeprefix("card/")
    return (
        f"card {uid} is {proof.cadre}'s in the published roster (a card signs nothing)",
        True,
        "",
    )


_ENTRY_FIELDS = (
    "canteen", "canteen_name", "local", "kind", "verdict", "method", "cadre", "cadre_name",
    "credential", "unit", "day", "meal", "hash",
)  # fmt: skip


def _entry_doc(
    role: str,
    terminal: str,
    seq: int,
    row: Any,
    keyring: evidence.Keyring,
    lists: evidence.Lists | None,
    names: _Names,
    zone: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"role": role, "terminal": terminal, "seq": seq, "found": row is not None}
    if row is None:
        doc.update(dict.fromkeys(_ENTRY_FIELDS, ""), at_ms=None, ctr=None, amount_fen=None)
        doc.update(check="the county holds no entry with this number", verified=False, key="")
        return doc
    check, ok, key = verify_entry(row, keyring, lists)
    doc.update(
        {
            "canteen": row["canteen"],
            "canteen_name": names.canteens.get(row["canteen"], ""),
            "at_ms": row["at_ms"],
            "local": local_text(row["at_ms"], zone),
            "kind": row["kind"],
            "verdict": row["verdict"] or "",
            "method": row["method"] or "",
            "cadre": row["cadre"] or "",
            "cadre_name": names.cadres.get(row["cadre"] or "", ""),
            "credential": row["credential"] or "",
            "ctr": row["ctr"],
            "unit": row["unit"] or "",
            "day": row["day"] or "",
            "meal": row["meal"] or "",
            "amount_fen": row["amount_fen"],
            "hash": bytes(row["hash"]).hex(),
            "check": check,
            "verified": ok,
            "key": key,
        }
    )
    return doc


def _revokes(conn: Connection, ids: Sequence[int]) -> dict[int, list[str]]:
    if not ids:
        return {}
    r = conflict_revocations.c
    out: dict[int, list[str]] = {}
    rows = conn.execute(
        select(r.conflict_id, r.credential)
        .where(r.conflict_id.in_(sorted(ids)))
        .order_by(r.conflict_id, r.credential)
    )
    for conflict_id, credential in rows:
        out.setdefault(int(conflict_id), []).append(credential)
    return out


def _head(what: str, r: Any, found_ms: int, zone: Any) -> dict[str, Any]:
    """What an alarm and a conflict both show: which, its state, when found, the decision."""
    return {
        "what": what,
        "id": int(r["id"]),
        "kind": r["kind"],
        "state": _state(r["confirmed_ms"], r["withdrawn_ms"]),
        "found_ms": int(found_ms),
        "found": local_text(found_ms, zone),
        "decision": _decision(r, zone),
    }


def items(
    conn: Connection,
    zone: Any,
    lists: evidence.Lists | None = None,
    *,
    state: str | None = None,
    what: str | None = None,
    kind: str | None = None,
    terminal: str | None = None,
    item_id: int | None = None,
) -> list[dict[str, Any]]:
    """Alarms and conflicts with their evidence: the open ones first, then the confirmed,
    then the withdrawn, the newest first in each; filtered by ``state`` (STATES), ``what``
    (alarm or conflict), ``kind`` (fork, served_twice, ...) and ``terminal`` (either side
    of a conflict). ``lists``: the published lists the meal windows and the card roster
    are judged by (county/published.py), as the intake did."""
    if state is not None and state not in STATES:
        raise ReviewError(f"state {state!r} is none of {', '.join(STATES)}")
    if what is not None and what not in WHATS:
        raise ReviewError(f"{what!r} is neither an alarm nor a conflict")
    a, c = alarms.c, conflicts_table.c
    on_a = None if not terminal else a.terminal == terminal
    on_c = (
        None if not terminal else or_(c.first_terminal == terminal, c.second_terminal == terminal)
    )
    a_rows = _rows(conn, alarms, "first_ms", state, kind, on_a, item_id) if what != CONFLICT else []
    c_rows = (
        _rows(conn, conflicts_table, "found_ms", state, kind, on_c, item_id)
        if what != ALARM
        else []
    )
    wanted = [(r["terminal"], int(r["seq"])) for r in a_rows if r["seq"]]
    for r in c_rows:
        wanted += [(r["first_terminal"], int(r["first_seq"]))]
        wanted += [(r["second_terminal"], int(r["second_seq"]))]
    stored = _entries(conn, wanted)
    names = _Names(conn)
    names.load(
        {str(e["cadre"]) for e in stored.values() if e["cadre"]}
        | {str(r["cadre"]) for r in c_rows if r["cadre"]},
        {str(e["canteen"]) for e in stored.values()}
        | {
            str(r[f"{s}_canteen"]) for r in c_rows for s in ("first", "second") if r[f"{s}_canteen"]
        },
        {str(r["unit"]) for r in c_rows if r["unit"]},
    )
    terminal_canteens = dict(
        conn.execute(select(entries.c.terminal, entries.c.canteen).distinct().where(
            entries.c.terminal.in_(sorted({r["terminal"] for r in a_rows}))
        )).all()
    ) if a_rows else {}  # fmt: skip
    keyring = conflicts_mod.Keyring(conn)
    revokes = _revokes(conn, [int(r["id"]) for r in c_rows])
    out: list[dict[str, Any]] = []
    for r in a_rows:
        seq = int(r["seq"])
        docs = []
        if seq:
            row = stored.get((r["terminal"], seq))
            docs.append(_entry_doc("entry", r["terminal"], seq, row, keyring, lists, names, zone))
        out.append(
            {
                **_head(ALARM, r, r["first_ms"], zone),
                "terminal": r["terminal"],
                "terminals": [r["terminal"]],
                "canteen": terminal_canteens.get(r["terminal"], ""),
                "seq": seq,
                "problem": r["problem"],
                "last": local_text(r["last_ms"], zone),
                "times": int(r["times"]),
                "theirs": bytes(r["theirs"]).hex() if r["theirs"] is not None else "",
                "ours": bytes(r["ours"]).hex() if r["ours"] is not None else "",
                "cadre": "",
                "cadre_name": "",
                "entries": docs,
                "revokes": [],
            }
        )
    for r in c_rows:
        docs = [
            _entry_doc(
                side,
                r[f"{side}_terminal"],
                int(r[f"{side}_seq"]),
                stored.get((r[f"{side}_terminal"], int(r[f"{side}_seq"]))),
                keyring,
                lists,
                names,
                zone,
            )
            for side in ("first", "second")
        ]
        out.append(
            {
                **_head(CONFLICT, r, r["found_ms"], zone),
                "terminal": r["second_terminal"],
                "terminals": [r["first_terminal"], r["second_terminal"]],
                "problem": r["reason"] or "",
                "cadre": r["cadre"] or "",
                "cadre_name": names.cadres.get(r["cadre"] or "", ""),
                "signed_name": r["name"] or "",
                "unit": r["unit"] or "",
                "unit_name": names.agencies.get(r["unit"] or "", ""),
                "day": r["day"] or "",
                "meal": r["meal"] or "",
                "entries": docs,
                "revokes": revokes.get(int(r["id"]), []),
            }
        )
    rank = {OPEN: 0, CONFIRMED: 1, WITHDRAWN: 2}
    out.sort(key=lambda x: (rank[x["state"]], -x["found_ms"], x["what"], -x["id"]))
    return out


def item(
    conn: Connection, what: str, item_id: int, zone: Any, lists: evidence.Lists | None = None
) -> dict[str, Any] | None:
    """One alarm or conflict with its evidence, or None."""
    if what not in WHATS or not 0 < item_id <= MAX_ID:
        return None
    found = items(conn, zone, lists, what=what, item_id=item_id)
    return found[0] if found else None


__all__ = [
    "ALARM",
    "CONFIRM",
    "CONFLICT",
    "MAX_REASON",
    "STATES",
    "WITHDRAW",
    "ReviewError",
    "Withdrawal",
    "check_reason",
    "decide",
    "item",
    "items",
    "open_counts",
    "verify_entry",
    "withdraw_conflict",
]
