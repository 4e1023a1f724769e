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

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The list formats are protocol/lists.py's (the county checks them too); the names stay
# importable from here.
from protocol.lists import CARD_STATUSES as CARD_STATUSES
from protocol.lists import ISSUERS as ISSUERS
from protocol.lists import LIST_NAMES as LIST_NAMES
from protocol.lists import REVOCATION_KINDS as REVOCATION_KINDS
from protocol.lists import REVOCATIONS as REVOCATIONS
from protocol.lists import ROSTER as ROSTER
from protocol.lists import ROSTER_COLUMNS as ROSTER_COLUMNS
from protocol.lists import ListHeader as ListHeader
from protocol.lists import ListInfo as ListInfo
from protocol.lists import RosterCard as RosterCard
from protocol.lists import TrustError as TrustError
from protocol.lists import issuer_key as issuer_key
from protocol.lists import parse_issuer_keys as parse_issuer_keys
from protocol.lists import parse_list_json
from protocol.lists import parse_revocations as parse_revocations
from protocol.lists import parse_roster_csv as parse_roster_csv
from protocol.lists import revocation_key as revocation_key
from protocol.lists import split_list as split_list
from protocol.tokens import IssuerKey, Presentation

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
        # What every code asks and only a list install changes, kept in memory: the issuer
        # keys by kid, the issuer keys the revocation list names (a handful, where the
        # list's other entries may be a million and stay on disk), and the list headers.
        # They are read again whenever the file changed: after each install by this
        # object, and after a commit by any other connection (another TrustStore on the
        # same file, in this process or another), which ``PRAGMA data_version`` tells;
        # ``issuer_keys``, the first lookup of every code, asks it once a code.
        self._keys: dict[bytes, list[IssuerKey]] = {}
        self._revoked_issuer_keys: frozenset[bytes] = frozenset()
        self._infos: dict[str, ListInfo | None] = {}
        self._version_cursor = self._db.cursor()  # one cursor, not one a code
        self._version_lock = threading.Lock()  # which a second thread must not share
        self._data_version: int | None = None
        self._fresh()

    def close(self) -> None:
        self._db.close()

    def reload(self) -> None:
        """Read cached keys and list headers again (as after another process's install)."""
        self._infos.clear()
        self._load_keys()

    def _fresh(self) -> None:
        """Re-read the cached parts if another connection committed to the file since."""
        if self.path == ":memory:" and self._data_version is not None:
            return  # a private database: no other connection can change it
        with self._version_lock:
            version = self._version_cursor.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            # Read the version first: a commit landing during the reload changes it again,
            # so the next code reloads once more rather than keep a half-new picture.
            self._data_version = version
            self.reload()

    # ---- lookups (the decision worker's hot path) ----

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        """The trusted keys with this kid, as the file holds them now.

        Token verification asks this first for every code (protocol/tokens.py), so this
        is where a list installed through another connection is noticed: that code and
        every later one see it, ``issuer_key_revoked`` and ``revoked_kind`` included."""
        self._fresh()
        return self._keys.get(kid, ())

    def all_issuer_keys(self) -> list[IssuerKey]:
        """Every key on the trust list (for the decision worker's checker process)."""
        self._fresh()
        return [k for keys in self._keys.values() for k in keys]

    def _has(self, key: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM revocations WHERE k = ?", (key,)).fetchone()
        return row is not None

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        """Whether the revocation list names this issuer key, from memory: as the file was
        at this code's ``issuer_keys`` lookup (or this object's last install)."""
        return public_key in self._revoked_issuer_keys

    def card_revoked(self, uid: bytes) -> bool:
        return self._has(revocation_key("card", uid))

    def cadre_revoked(self, iss: str, sub: str) -> bool:
        """A cadre revocation also refuses that cadre's cards (the roster names the cadre)."""
        return self._has(revocation_key("cadre", iss, sub))

    def revoked_kind(self, p: Presentation) -> str | None:
        """Which revocation names this presentation, checked in token.md §4 step 7 order.

        The issuer key comes last and from memory (``issuer_key_revoked``): verification
        already refused a revoked one for this code, so only a caller that skipped it
        meets one here."""
        checks = {
            revocation_key("credential", p.iss, p.cti): 0,
            revocation_key("cadre", p.iss, p.sub): 1,
            revocation_key("holder_key", p.holder_key): 2,
        }
        # One statement for the three keys: this runs on every presentation.
        found = self._db.execute(
            "SELECT k FROM revocations WHERE k IN (?, ?, ?)", tuple(checks)
        ).fetchall()
        if found:
            first = min(checks[row[0]] for row in found)
            return ("credential", "cadre", "holder_key")[first]
        return "issuer_key" if p.issuer_key in self._revoked_issuer_keys else None

    def card(self, uid: bytes) -> RosterCard | None:
        row = self._db.execute(
            "SELECT uid, iss, sub, unit, display_name, status FROM roster WHERE uid = ?", (uid,)
        ).fetchone()
        return RosterCard(*row) if row else None

    def list_info(self, name: str) -> ListInfo | None:
        """The header of list ``name`` in force (None if never installed), as the file was
        at this code's ``issuer_keys`` lookup or this object's last install or reload."""
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
        info = self._replace(
            REVOCATIONS,
            header,
            now,
            "DELETE FROM revocations",
            "INSERT OR IGNORE INTO revocations VALUES (?)",
            ((k,) for k in keys),
        )
        self._load_keys()
        return info

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

    # ---- signed update sets (terminal/updates/): shards, one transaction, undo ----
    #
    # The revocations table keeps its one-column shape, so replace_revocations and every
    # existing file keep working; which shard a key came from lives in a table beside it
    # (adding a column would break the column-less INSERT of replace_revocations). The
    # undo tables hold what the last applied set replaced, so a set that stops the
    # terminal from starting can be taken back whole.

    def ensure_update_tables(self) -> None:
        """Create the update-set tables if this file predates them (idempotent)."""
        self._db.executescript(UPDATE_SCHEMA)

    def applied_update_set(self) -> dict[str, Any] | None:
        """The update set in force: its version and what it consisted of, or None."""
        self.ensure_update_tables()
        row = self._db.execute(
            "SELECT set_version, detail FROM applied_set WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        detail: dict[str, Any] = json.loads(row[1])
        detail["set"] = int(row[0])
        return detail

    def revocation_shard_hashes(self) -> dict[str, str]:
        """SHA-256 of each shard file in force; empty if the list did not come in shards."""
        self.ensure_update_tables()
        info = self.list_info(REVOCATIONS)
        applied = self.applied_update_set()
        sharded = applied.get("revocations_version") if applied else None
        if info is None or sharded is None or info.version != sharded:
            return {}  # installed whole by another path: every shard must come again
        return {
            shard: digest
            for shard, digest in self._db.execute("SELECT shard, sha256 FROM revocation_shards")
        }

    def apply_update_set(self, update: UpdateSet, now: int) -> None:
        """Replace lists and revocation shards and record the set, all in one transaction."""
        self.ensure_update_tables()
        current = self.applied_update_set()
        if current is not None and update.set_version < current["set"]:
            raise TrustError(
                f"update set {update.set_version} is older than the set in force "
                f"({current['set']}); refusing to go back"
            )
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not update.stack_undo:
                for table in _UNDO_TABLES:
                    db.execute(f"DELETE FROM {table}")
            if db.execute("SELECT 1 FROM undo_applied").fetchone() is None:
                db.execute(
                    "INSERT INTO undo_applied VALUES (1, ?)",
                    (json.dumps(current) if current is not None else None,),
                )
            if update.issuers is not None:
                keys, header = update.issuers
                self._save_list_undo(ISSUERS, "issuer_keys")
                db.execute("DELETE FROM issuer_keys")
                db.executemany(
                    "INSERT OR IGNORE INTO issuer_keys VALUES (?, ?, ?, ?, ?)",
                    [(k.kid, k.public_key, k.iss, k.not_before, k.not_after) for k in keys],
                )
                self._set_list_row(ISSUERS, header, now)
            if update.roster is not None:
                cards, header = update.roster
                self._save_list_undo(ROSTER, "roster")
                db.execute("DELETE FROM roster")
                db.executemany(
                    "INSERT OR REPLACE INTO roster VALUES (?, ?, ?, ?, ?, ?)",
                    [(c.uid, c.iss, c.sub, c.unit, c.display_name, c.status) for c in cards],
                )
                self._set_list_row(ROSTER, header, now)
            if update.revocations is not None:
                self._apply_shards(update.revocations, now)
            detail = dict(update.detail)
            if update.revocations is not None:
                detail["revocations_version"] = update.revocations.header.version
            elif current is not None and "revocations_version" in current:
                detail["revocations_version"] = current["revocations_version"]
            db.execute(
                "INSERT OR REPLACE INTO applied_set VALUES (1, ?, ?, ?)",
                (update.set_version, json.dumps(detail, sort_keys=True), now),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._infos.clear()
            self._load_keys()
            raise
        self._infos.clear()
        self._load_keys()

    def _save_list_undo(self, name: str, table: str) -> None:
        db = self._db
        if db.execute("SELECT 1 FROM undo_lists WHERE name = ?", (name,)).fetchone():
            return  # stacked on an unconfirmed set: keep the older good copy
        row = db.execute(
            "SELECT version, issued_at, expires_at, installed_at, count FROM lists WHERE name = ?",
            (name,),
        ).fetchone()
        db.execute("INSERT INTO undo_lists VALUES (?, ?)", (name, json.dumps(row) if row else None))
        db.execute(f"INSERT INTO undo_{table} SELECT * FROM {table}")

    def _set_list_row(self, name: str, header: ListHeader, now: int) -> None:
        count = int(self._db.execute(f"SELECT count(*) FROM {_TABLE[name]}").fetchone()[0])
        issued_at = header.issued_at if header.issued_at is not None else now
        self._db.execute(
            "INSERT OR REPLACE INTO lists VALUES (?, ?, ?, ?, ?, ?)",
            (name, header.version, issued_at, header.expires_at, now, count),
        )

    def _apply_shards(self, rev: ShardedRevocations, now: int) -> None:
        db = self._db
        if db.execute("SELECT 1 FROM undo_lists WHERE name = ?", (REVOCATIONS,)).fetchone() is None:
            row = db.execute(
                "SELECT version, issued_at, expires_at, installed_at, count FROM lists "
                "WHERE name = ?",
                (REVOCATIONS,),
            ).fetchone()
            db.execute(
                "INSERT INTO undo_lists VALUES (?, ?)",
                (REVOCATIONS, json.dumps(row) if row else None),
            )
        if rev.whole:
            # Everything goes: keys installed by any path, and every shard record.
            if db.execute("SELECT 1 FROM undo_shards WHERE shard = '*'").fetchone() is None:
                db.execute("INSERT INTO undo_shards VALUES ('*', NULL, NULL, NULL)")
                db.execute(
                    "INSERT OR IGNORE INTO undo_revocation_keys SELECT '*', k FROM revocations"
                )
            db.execute("DELETE FROM revocations")
            db.execute("DELETE FROM revocation_shard_keys")
            db.execute("DELETE FROM revocation_shards")
        for shard, (keys, version, count, digest) in sorted(rev.shards.items()):
            whole_saved = db.execute("SELECT 1 FROM undo_shards WHERE shard = '*'").fetchone()
            saved = db.execute("SELECT 1 FROM undo_shards WHERE shard = ?", (shard,)).fetchone()
            if not saved and not whole_saved:
                old = db.execute(
                    "SELECT version, count, sha256 FROM revocation_shards WHERE shard = ?",
                    (shard,),
                ).fetchone()
                db.execute(
                    "INSERT INTO undo_shards VALUES (?, ?, ?, ?)", (shard, *(old or (None,) * 3))
                )
                db.execute(
                    "INSERT INTO undo_revocation_keys "
                    "SELECT shard, k FROM revocation_shard_keys WHERE shard = ?",
                    (shard,),
                )
            db.execute(
                "DELETE FROM revocations WHERE k IN "
                "(SELECT k FROM revocation_shard_keys WHERE shard = ?)",
                (shard,),
            )
            db.execute("DELETE FROM revocation_shard_keys WHERE shard = ?", (shard,))
            rows = [(shard, k) for k in keys]
            db.executemany("INSERT OR IGNORE INTO revocation_shard_keys VALUES (?, ?)", rows)
            db.executemany("INSERT OR IGNORE INTO revocations VALUES (?)", ((k,) for k in keys))
            db.execute(
                "INSERT OR REPLACE INTO revocation_shards VALUES (?, ?, ?, ?)",
                (shard, version, count, digest),
            )
        shards, listed = db.execute(
            "SELECT count(*), coalesce(sum(count), 0) FROM revocation_shards"
        ).fetchone()
        have = int(db.execute("SELECT count(*) FROM revocations").fetchone()[0])
        if shards != rev.shard_count or listed != rev.count or have != rev.count:
            raise TrustError(
                f"revocation list version {rev.header.version}: the index promises "
                f"{rev.shard_count} shards and {rev.count} entries, the shards give {shards} "
                f"shards, {listed} listed and {have} distinct entries: a shard is missing, "
                "extra or duplicated; nothing applied"
            )
        self._set_list_row(REVOCATIONS, rev.header, now)

    def roll_back_update_set(self) -> dict[str, Any] | None:
        """Put back what the last applied set(s) replaced; the set now in force, or None."""
        self.ensure_update_tables()
        db = self._db
        undo = db.execute("SELECT detail FROM undo_applied WHERE id = 1").fetchone()
        if undo is None:
            raise TrustError("no earlier update set is kept: nothing to go back to")
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, table in ((ISSUERS, "issuer_keys"), (ROSTER, "roster")):
                saved = db.execute("SELECT row FROM undo_lists WHERE name = ?", (name,)).fetchone()
                if saved is None:
                    continue
                db.execute(f"DELETE FROM {table}")
                db.execute(f"INSERT INTO {table} SELECT * FROM undo_{table}")
                self._restore_list_row(name, saved[0])
            whole = db.execute("SELECT 1 FROM undo_shards WHERE shard = '*'").fetchone()
            if whole:
                db.execute("DELETE FROM revocations")
                db.execute("DELETE FROM revocation_shard_keys")
                db.execute("DELETE FROM revocation_shards")
                db.execute(
                    "INSERT OR IGNORE INTO revocations SELECT k FROM undo_revocation_keys "
                    "WHERE shard = '*'"
                )
            else:
                for shard, version, count, digest in db.execute(
                    "SELECT shard, version, count, sha256 FROM undo_shards"
                ).fetchall():
                    db.execute(
                        "DELETE FROM revocations WHERE k IN "
                        "(SELECT k FROM revocation_shard_keys WHERE shard = ?)",
                        (shard,),
                    )
                    db.execute("DELETE FROM revocation_shard_keys WHERE shard = ?", (shard,))
                    db.execute(
                        "INSERT INTO revocation_shard_keys "
                        "SELECT shard, k FROM undo_revocation_keys WHERE shard = ?",
                        (shard,),
                    )
                    db.execute(
                        "INSERT OR IGNORE INTO revocations "
                        "SELECT k FROM undo_revocation_keys WHERE shard = ?",
                        (shard,),
                    )
                    if digest is None:
                        db.execute("DELETE FROM revocation_shards WHERE shard = ?", (shard,))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO revocation_shards VALUES (?, ?, ?, ?)",
                            (shard, version, count, digest),
                        )
            saved = db.execute(
                "SELECT row FROM undo_lists WHERE name = ?", (REVOCATIONS,)
            ).fetchone()
            if saved is not None:
                self._restore_list_row(REVOCATIONS, saved[0])
            previous = json.loads(undo[0]) if undo[0] is not None else None
            if previous is None:
                db.execute("DELETE FROM applied_set")
            else:
                version = previous.pop("set")
                db.execute(
                    "INSERT OR REPLACE INTO applied_set VALUES (1, ?, ?, "
                    "(SELECT applied_at FROM applied_set WHERE id = 1))",
                    (version, json.dumps(previous, sort_keys=True)),
                )
                previous["set"] = version
            for table in _UNDO_TABLES:
                db.execute(f"DELETE FROM {table}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self._infos.clear()
            self._load_keys()
        return previous

    def _restore_list_row(self, name: str, saved: str | None) -> None:
        if saved is None:
            self._db.execute("DELETE FROM lists WHERE name = ?", (name,))
            return
        version, issued_at, expires_at, installed_at, count = json.loads(saved)
        self._db.execute(
            "INSERT OR REPLACE INTO lists VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, issued_at, expires_at, installed_at, count),
        )

    def mark_lists_current(self, names: Iterable[str], current_at: int) -> None:
        """The county vouched at ``current_at`` that these lists are still the newest.

        A list that has not changed for a week is not a week stale when a signed,
        fresh timestamp says it is current; the policy's limits count from this.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for name in names:
                db.execute(
                    "UPDATE lists SET issued_at = ? WHERE name = ? AND issued_at < ?",
                    (current_at, name, current_at),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._infos.clear()

    def _load_keys(self) -> None:
        """Read the issuer keys and the revoked issuer keys into memory (one read
        transaction, so the two agree)."""
        db = self._db
        keys: dict[bytes, list[IssuerKey]] = {}
        revoked: set[bytes] = set()
        own = not db.in_transaction
        if own:
            db.execute("BEGIN")
        try:
            for kid, pk, iss, nb, na in db.execute(
                "SELECT kid, public_key, iss, not_before, not_after FROM issuer_keys"
            ):
                # The table keeps no alg column: a key's algorithm is its length (65 bytes
                # SM2, 32 Ed25519; parse_issuer_keys installs nothing else).
                keys.setdefault(kid, []).append(issuer_key(iss, kid, pk, nb, na))
            # The issuer-key entries are one range of the list's primary key (their kind
            # tag); each is the tag, a two-byte length and the raw key (revocation_key):
            # 32 bytes of an Ed25519 key or the 65-byte point of an SM2 key.
            tag = revocation_key("issuer_key")
            following = bytes([tag[0] + 1])
            for (k,) in db.execute(
                "SELECT k FROM revocations WHERE k >= ? AND k < ?", (tag, following)
            ):
                if int.from_bytes(k[len(tag) : len(tag) + 2], "big") == len(k) - len(tag) - 2:
                    revoked.add(k[len(tag) + 2 :])
        finally:
            if own:
                db.execute("COMMIT")
        self._keys = keys
        self._revoked_issuer_keys = frozenset(revoked)


_TABLE = {ISSUERS: "issuer_keys", REVOCATIONS: "revocations", ROSTER: "roster"}

UPDATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS revocation_shard_keys (
    shard TEXT NOT NULL,
    k BLOB NOT NULL,
    PRIMARY KEY (shard, k)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revocation_shards (
    shard TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sha256 TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS applied_set (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    set_version INTEGER NOT NULL,
    detail TEXT NOT NULL,
    applied_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS undo_applied (id INTEGER PRIMARY KEY CHECK (id = 1), detail TEXT) STRICT;
CREATE TABLE IF NOT EXISTS undo_lists (name TEXT PRIMARY KEY, row TEXT) STRICT;
CREATE TABLE IF NOT EXISTS undo_issuer_keys (
    kid BLOB NOT NULL, public_key BLOB NOT NULL, iss TEXT NOT NULL,
    not_before INTEGER, not_after INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS undo_roster (
    uid BLOB PRIMARY KEY, iss TEXT NOT NULL, sub TEXT NOT NULL, unit TEXT NOT NULL,
    display_name TEXT NOT NULL, status TEXT NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS undo_shards (
    shard TEXT PRIMARY KEY, version INTEGER, count INTEGER, sha256 TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS undo_revocation_keys (
    shard TEXT NOT NULL, k BLOB NOT NULL, PRIMARY KEY (shard, k)
) STRICT, WITHOUT ROWID;
"""
_UNDO_TABLES = (
    "undo_applied",
    "undo_lists",
    "undo_issuer_keys",
    "undo_roster",
    "undo_shards",
    "undo_revocation_keys",
)


@dataclass(frozen=True)
class ShardedRevocations:
    """Changed revocation shards of one signed set: shard -> (keys, version, count, sha256)."""

    header: ListHeader
    shard_count: int  # how many shards the whole list has (the index says)
    count: int  # how many entries the whole list has (the index says)
    shards: dict[str, tuple[list[bytes], int, int, str]]
    whole: bool = False  # True: every shard is here and nothing else stays


@dataclass(frozen=True)
class UpdateSet:
    """Everything one signed update set changes in trust.sqlite, applied in one transaction."""

    set_version: int
    detail: dict[str, Any]  # what was applied (versions, hashes), kept with the set
    issuers: tuple[list[IssuerKey], ListHeader] | None = None
    roster: tuple[list[RosterCard], ListHeader] | None = None
    revocations: ShardedRevocations | None = None
    stack_undo: bool = False  # the set in force is unconfirmed: keep the older undo


# ---- list files ----


def read_json_file(path: str | Path, name: str) -> Any:
    """A list file (token.md §5 JSON) from disk; a ``TrustError`` if unreadable or not JSON."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the {name} list: {exc.strerror}") from None
    return parse_list_json(data, str(path), name)
