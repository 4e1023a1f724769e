"""Local trust state: issuer keys, the revocation list and the card roster.

This module owns ``trust.sqlite`` in the terminal's state directory: the three
lists the decisions rest on, each with its version, issue time and expiry, and
the lookups the decision worker makes on every presentation. The lists live in
SQLite rather than in memory so that a revocation list of a million entries
loads in seconds and costs a few megabytes of page cache, not hundreds of
megabytes of Python objects. A list is replaced whole, in one transaction, so a
crash leaves either the old list or the new one. This module never reads a
clock (times are arguments), never opens the network and never decides a
verdict: it answers questions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terminal.tokens import IssuerKey, Presentation

ISSUERS = "issuers"
REVOCATIONS = "revocations"
ROSTER = "roster"
LIST_NAMES = (ISSUERS, REVOCATIONS, ROSTER)

REVOCATION_KINDS = ("credential", "cadre", "holder_key", "issuer_key", "card")
CARD_STATUSES = ("active", "lost", "blocked")

# One byte per revocation kind, so every revocation is a single short key in one index.
_KIND_TAG = {
    "credential": b"C",
    "cadre": b"S",
    "holder_key": b"H",
    "issuer_key": b"I",
    "card": b"R",
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER,
    installed_at INTEGER NOT NULL,
    count INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS issuer_keys (
    kid BLOB NOT NULL,
    public_key BLOB NOT NULL,
    iss TEXT NOT NULL,
    not_before INTEGER,
    not_after INTEGER,
    PRIMARY KEY (kid, public_key, iss)
) STRICT;
CREATE TABLE IF NOT EXISTS revocations (k BLOB PRIMARY KEY) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roster (
    uid BLOB PRIMARY KEY,
    iss TEXT NOT NULL,
    sub TEXT NOT NULL,
    unit TEXT NOT NULL,
    display_name TEXT NOT NULL,
    status TEXT NOT NULL
) STRICT, WITHOUT ROWID;
"""


class TrustError(Exception):
    """A list is unusable: the message names the list, the entry and what is wrong."""


@dataclass(frozen=True)
class ListInfo:
    """Which version of a list is in force, and how old it is."""

    name: str
    version: int
    issued_at: int  # Unix seconds, from the list's publisher
    expires_at: int | None
    installed_at: int
    count: int


@dataclass(frozen=True)
class RosterCard:
    """One canteen card: its canonical UID and the cadre who holds it."""

    uid: bytes
    iss: str
    sub: str
    unit: str
    display_name: str
    status: str  # active, lost or blocked

    @property
    def cadre(self) -> str:
        return f"{self.iss}/{self.sub}"


@dataclass(frozen=True)
class ListHeader:
    """Version and times of a list file; a bare §5 array has none and gets version 0."""

    version: int
    issued_at: int | None
    expires_at: int | None


def revocation_key(kind: str, *parts: str | bytes) -> bytes:
    """The index key of one revocation: a kind tag, then length-prefixed parts."""
    out = bytearray(_KIND_TAG[kind])
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else part
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


class TrustStore:
    """The three lists in one SQLite file (``":memory:"`` for a throw-away store)."""

    def __init__(self, path: str | Path, *, cache_kib: int = 4096) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise TrustError(f"{self.path}: cannot open the trust store: {exc}") from None
        self._keys: dict[bytes, list[IssuerKey]] = {}
        # Only this object replaces lists in its file, so the cached headers stay true.
        self._infos: dict[str, ListInfo | None] = {}
        self._load_keys()

    def close(self) -> None:
        self._db.close()

    def reload(self) -> None:
        """Forget cached keys and list headers after another process replaced a list."""
        self._infos.clear()
        self._load_keys()

    # ---- lookups (the decision worker's hot path) ----

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        return self._keys.get(kid, ())

    def _has(self, key: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM revocations WHERE k = ?", (key,)).fetchone()
        return row is not None

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        return self._has(revocation_key("issuer_key", public_key))

    def card_revoked(self, uid: bytes) -> bool:
        return self._has(revocation_key("card", uid))

    def revoked_kind(self, p: Presentation) -> str | None:
        """Which revocation names this presentation, checked in token.md §4 step 7 order."""
        checks = {
            revocation_key("credential", p.iss, p.cti): 0,
            revocation_key("cadre", p.iss, p.sub): 1,
            revocation_key("holder_key", p.holder_key): 2,
            revocation_key("issuer_key", p.issuer_key): 3,
        }
        # One statement for the four keys: this runs on every presentation.
        found = self._db.execute(
            "SELECT k FROM revocations WHERE k IN (?, ?, ?, ?)", tuple(checks)
        ).fetchall()
        if not found:
            return None
        first = min(checks[row[0]] for row in found)
        return ("credential", "cadre", "holder_key", "issuer_key")[first]

    def card(self, uid: bytes) -> RosterCard | None:
        row = self._db.execute(
            "SELECT uid, iss, sub, unit, display_name, status FROM roster WHERE uid = ?", (uid,)
        ).fetchone()
        return RosterCard(*row) if row else None

    def list_info(self, name: str) -> ListInfo | None:
        if name in self._infos:
            return self._infos[name]
        row = self._db.execute(
            "SELECT name, version, issued_at, expires_at, installed_at, count FROM lists "
            "WHERE name = ?",
            (name,),
        ).fetchone()
        info = ListInfo(*row) if row else None
        self._infos[name] = info
        return info

    def revocation_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM revocations").fetchone()[0])

    # ---- replacing a list, whole and atomically ----

    def replace_issuers(self, keys: Iterable[IssuerKey], header: ListHeader, now: int) -> ListInfo:
        rows = [(k.kid, k.public_key, k.iss, k.not_before, k.not_after) for k in keys]
        info = self._replace(
            ISSUERS,
            header,
            now,
            "DELETE FROM issuer_keys",
            "INSERT OR IGNORE INTO issuer_keys VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        self._load_keys()
        return info

    def replace_revocations(self, keys: Iterable[bytes], header: ListHeader, now: int) -> ListInfo:
        return self._replace(
            REVOCATIONS,
            header,
            now,
            "DELETE FROM revocations",
            "INSERT OR IGNORE INTO revocations VALUES (?)",
            ((k,) for k in keys),
        )

    def replace_roster(self, cards: Iterable[RosterCard], header: ListHeader, now: int) -> ListInfo:
        return self._replace(
            ROSTER,
            header,
            now,
            "DELETE FROM roster",
            "INSERT OR REPLACE INTO roster VALUES (?, ?, ?, ?, ?, ?)",
            ((c.uid, c.iss, c.sub, c.unit, c.display_name, c.status) for c in cards),
        )

    def _replace(
        self,
        name: str,
        header: ListHeader,
        now: int,
        clear: str,
        insert: str,
        rows: Iterable[tuple[Any, ...]],
    ) -> ListInfo:
        current = self.list_info(name)
        if current is not None and header.version < current.version:
            raise TrustError(
                f"{name} list: version {header.version} is older than the version in force "
                f"({current.version}); refusing to go back"
            )
        issued_at = header.issued_at if header.issued_at is not None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(clear)
            db.executemany(insert, rows)
            count = int(db.execute(f"SELECT count(*) FROM {_TABLE[name]}").fetchone()[0])
            db.execute(
                "INSERT OR REPLACE INTO lists VALUES (?, ?, ?, ?, ?, ?)",
                (name, header.version, issued_at, header.expires_at, now, count),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        info = ListInfo(name, header.version, issued_at, header.expires_at, now, count)
        self._infos[name] = info
        return info

    def _load_keys(self) -> None:
        keys: dict[bytes, list[IssuerKey]] = {}
        for kid, pk, iss, nb, na in self._db.execute(
            "SELECT kid, public_key, iss, not_before, not_after FROM issuer_keys"
        ):
            keys.setdefault(kid, []).append(IssuerKey(iss, kid, pk, nb, na))
        self._keys = keys


_TABLE = {ISSUERS: "issuer_keys", REVOCATIONS: "revocations", ROSTER: "roster"}


# ---- list files (token.md §5 and the roster CSV) ----


def _hex(value: Any, where: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise TrustError(f"{where}: must be hex text")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise TrustError(f"{where}: not hex: {value[:40]!r}") from None
    if length is not None and len(raw) != length:
        raise TrustError(f"{where}: must be {length} bytes, got {len(raw)}")
    return raw


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TrustError(f"{where}: must be a non-empty text")
    return value


def _opt_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrustError(f"{where}: must be a whole number of Unix seconds")
    return value


def split_list(doc: Any, name: str) -> tuple[list[Any], ListHeader]:
    """A list document: a bare §5 array, or {"version", "issued_at", "expires_at", "entries"}."""
    if isinstance(doc, list):
        return doc, ListHeader(0, None, None)
    if isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        version = _opt_int(doc.get("version", 0), f"{name} list: version")
        header = ListHeader(
            version or 0,
            _opt_int(doc.get("issued_at"), f"{name} list: issued_at"),
            _opt_int(doc.get("expires_at"), f"{name} list: expires_at"),
        )
        return doc["entries"], header
    raise TrustError(f"{name} list: must be a JSON array of entries or an object with 'entries'")


def parse_issuer_keys(entries: Sequence[Any]) -> list[IssuerKey]:
    keys = []
    for i, entry in enumerate(entries):
        where = f"trust list entry {i}"
        if not isinstance(entry, dict):
            raise TrustError(f"{where}: must be an object")
        pk = _hex(entry.get("public_key"), f"{where}: public_key", 32)
        kid = _hex(entry.get("kid"), f"{where}: kid", 8)
        if kid != hashlib.sha256(pk).digest()[:8]:
            raise TrustError(f"{where}: kid {kid.hex()} is not the kid of its public key")
        keys.append(
            IssuerKey(
                iss=_text(entry.get("iss"), f"{where}: iss"),
                kid=kid,
                public_key=pk,
                not_before=_opt_int(entry.get("not_before"), f"{where}: not_before"),
                not_after=_opt_int(entry.get("not_after"), f"{where}: not_after"),
            )
        )
    return keys


def parse_revocations(entries: Iterable[Any]) -> Iterator[bytes]:
    """Revocation index keys from §5 entries; a bad entry stops with a TrustError naming it."""
    for i, entry in enumerate(entries):
        where = f"revocation list entry {i}"
        if not isinstance(entry, dict):
            raise TrustError(f"{where}: must be an object")
        kind = entry.get("kind")
        if kind == "credential":
            cti = _hex(entry.get("cti"), f"{where}: cti")
            yield revocation_key(kind, _text(entry.get("iss"), f"{where}: iss"), cti)
        elif kind == "cadre":
            iss = _text(entry.get("iss"), f"{where}: iss")
            yield revocation_key(kind, iss, _text(entry.get("sub"), f"{where}: sub"))
        elif kind in ("holder_key", "issuer_key"):
            yield revocation_key(kind, _hex(entry.get("public_key"), f"{where}: public_key", 32))
        elif kind == "card":
            uid = _hex(entry.get("uid"), f"{where}: uid")
            if not 4 <= len(uid) <= 10:
                raise TrustError(f"{where}: uid must be 4 to 10 bytes, got {len(uid)}")
            yield revocation_key(kind, uid)
        else:
            raise TrustError(f"{where}: kind must be one of {', '.join(REVOCATION_KINDS)}")


ROSTER_COLUMNS = ("uid", "iss", "sub", "unit", "display_name", "status")


def parse_roster_csv(text: str) -> list[RosterCard]:
    """A roster CSV with the header uid,iss,sub,unit,display_name,status (uid in hex)."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or tuple(reader.fieldnames) != ROSTER_COLUMNS:
        raise TrustError(f"roster CSV: the header must be {','.join(ROSTER_COLUMNS)}")
    cards = []
    for row in reader:
        where = f"roster CSV line {reader.line_num}"
        uid = _hex(row["uid"], f"{where}: uid")
        if not 4 <= len(uid) <= 10:
            raise TrustError(f"{where}: uid must be 4 to 10 bytes, got {len(uid)}")
        status = row["status"]
        if status not in CARD_STATUSES:
            raise TrustError(f"{where}: status must be one of {', '.join(CARD_STATUSES)}")
        cards.append(
            RosterCard(
                uid=uid,
                iss=_text(row["iss"], f"{where}: iss"),
                sub=_text(row["sub"], f"{where}: sub"),
                unit=_text(row["unit"], f"{where}: unit"),
                display_name=_text(row["display_name"], f"{where}: display_name"),
                status=status,
            )
        )
    return cards


def read_json_file(path: str | Path, name: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the {name} list: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrustError(f"{path}: the {name} list is not valid JSON: {exc}") from None
