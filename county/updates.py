"""The county's TUF repository: signed settings, trust list, roster and revocation shards.

This module owns ``DIR/updates/`` in the county data directory: the online
signing keys (targets, bins, snapshot, timestamp), the repository that the
server serves read-only (``repository/metadata`` and ``repository/targets``,
consistent snapshots, so a terminal never sees a file of one publication under
the metadata of another), the county's master revocation list (4,096 shards by
hash prefix, each a target of its own, delegated through 64 hash bins so that
one revocation costs a terminal one bin and one shard), and the table of what
each terminal last applied. Every publication validates its input before
anything is signed (settings go through the terminal's own loader), writes the
target files first and the timestamp last, under one file lock, so a crash
leaves the previous publication in force. It never holds the root keys beyond
the command that needs them (they live in a separate, offline directory), never
serves HTTP itself (``mount_repository`` hands a read-only mount to the app) and
never decides what a terminal does with an update.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer._crypto_signer import CryptoSigner  # not re-exported to mypy
from securesystemslib.signer._key import Key
from securesystemslib.signer._signer import Signer
from tuf.api._payload import (  # re-exported by tuf.api.metadata, but not to mypy
    Delegations,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from county.files import read_list_file, write_atomic, write_new_files
from protocol.agencies import Directory, DirectoryError, parse_directory
from protocol.layout import (
    BIN_BITS,
    BIN_PREFIX,
    DIRECTORY_MAX_BYTES,
    DIRECTORY_TARGET,
    INDEX_TARGET,
    ROSTER_TARGET,
    SHARD_COUNT,
    SIGNED_AT_FIELD,
    TRUST_TARGET,
    all_shards,
    settings_target,
    shard_bytes,
    shard_of,
    shard_target,
)
from protocol.lists import (
    TrustError,
    parse_issuer_keys,
    parse_revocations,
    parse_roster_csv,
    split_list,
)
from terminal import config

if TYPE_CHECKING:
    from county.store import CountyStore

log = logging.getLogger(__name__)

UPDATES_DIR = "updates"
ROOT_KEYS_DIR = "updates-root-keys-OFFLINE"
ROOT_THRESHOLD = 2
ROOT_KEYS = 3
BINS = "bins"
ONLINE_ROLES = (Targets.type, BINS, Snapshot.type, Timestamp.type)
ROLES = (Root.type, *ONLINE_ROLES)

# How long each role's signature stays valid. The timestamp is short on purpose: a
# terminal that cannot get a fresh one within a day knows it may be held back (freeze).
EXPIRY_S = {
    Root.type: 365 * 86400,
    Targets.type: 90 * 86400,
    BINS: 90 * 86400,
    Snapshot.type: 30 * 86400,
    Timestamp.type: 86400,
}
# An online role is re-signed once less than this share of its validity remains.
RENEW_FRACTION = 0.5
# The largest agency directory a terminal downloads (its default cap): a larger one would
# be refused by every terminal, and with it the whole update set.

_CANTEEN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_COMPACT = JSONSerializer(compact=True)


class UpdatesError(Exception):
    """The repository cannot do what was asked; the message says what and what to do."""


class SettingsRefused(UpdatesError):
    """A settings file failed validation; nothing was published."""


def _utc(unix_s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).replace(microsecond=0)


def _expiry(role: str, now: int) -> dt.datetime:
    return _utc(now + EXPIRY_S[role])


def _bump(md: Metadata[Any], role: str, now: int) -> None:
    """The next version of a role, valid for the role's span from ``now`` (then re-sign it)."""
    md.signed.version += 1
    md.signed.expires = _expiry(role, now)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


# --- keys ------------------------------------------------------------------------------


def _new_signer() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def _save_signer(directory: Path, signer: CryptoSigner) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(directory / f"{signer.public_key.keyid}.pem", signer.private_bytes, 0o600)


def _load_signers(directory: Path) -> dict[str, CryptoSigner]:
    signers: dict[str, CryptoSigner] = {}
    if not directory.is_dir():
        return signers
    for pem in sorted(directory.glob("*.pem")):
        try:
            key = load_pem_private_key(pem.read_bytes(), password=None)
            signer = CryptoSigner(key)
        except (OSError, ValueError, TypeError) as exc:
            raise UpdatesError(f"{pem}: not a usable signing key: {exc}") from None
        signers[signer.public_key.keyid] = signer
    return signers


# --- the repository --------------------------------------------------------------------


@dataclass(frozen=True)
class RepoPaths:
    data: Path

    @property
    def root(self) -> Path:
        return self.data / UPDATES_DIR

    @property
    def metadata(self) -> Path:
        return self.root / "repository" / "metadata"

    @property
    def targets(self) -> Path:
        return self.root / "repository" / "targets"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def source(self) -> Path:
        return self.root / "county-updates.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / ".publish.lock"


@dataclass
class Publication:
    """What one publication changed; ``bytes_written`` counts target files only."""

    timestamp_version: int = 0
    snapshot_version: int = 0
    targets_version: int = 0
    targets: list[str] = field(default_factory=list)
    bins: list[str] = field(default_factory=list)
    bytes_written: int = 0
    revocation_version: int | None = None
    revocations_added: int = 0
    revocations_lifted: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp_version,
            "snapshot": self.snapshot_version,
            "targets": self.targets_version,
            "changed_targets": len(self.targets),
            "changed_bins": len(self.bins),
            "target_bytes": self.bytes_written,
            "revocation_version": self.revocation_version,
            "revocations_added": self.revocations_added,
            "revocations_lifted": self.revocations_lifted,
        }


_SOURCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS revocations (
    k BLOB PRIMARY KEY,
    shard TEXT NOT NULL,
    entry TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_shard ON revocations (shard);
CREATE INDEX IF NOT EXISTS revocations_unpublished ON revocations (published) WHERE published = 0;
CREATE TABLE IF NOT EXISTS applied (
    terminal TEXT PRIMARY KEY,
    set_version INTEGER,
    detail TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL,
    reported_at_ms INTEGER NOT NULL
) STRICT;
"""


# Who put a revocation on the list: county IT by hand, or the conflict checks. Only a
# conflict's own revocation is lifted when county IT withdraws the conflict.
BY_COUNTY_IT = "county-it"
BY_CONFLICT = "conflict"


def _source(paths: RepoPaths) -> sqlite3.Connection:
    db = sqlite3.connect(paths.source, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.executescript(_SOURCE_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(revocations)")}
    if "origin" not in columns:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            f"ALTER TABLE revocations ADD COLUMN origin TEXT NOT NULL DEFAULT '{BY_COUNTY_IT}'"
        )
        # A list published before origins were kept: the conflict checks' revocations are
        # those the county database holds for its conflicts; they must stay liftable.
        keys = [(BY_CONFLICT, k) for k in _conflict_revocation_keys(paths.data)]
        db.executemany("UPDATE revocations SET origin = ? WHERE k = ?", keys)
        db.execute("COMMIT")
    return db


def _conflict_revocation_keys(data: Path) -> list[bytes]:
    """Index keys of every revocation the county database made from a conflict."""
    file = data / "county.sqlite"
    if not file.is_file():
        return []
    conn = sqlite3.connect(f"{file.absolute().as_uri()}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        # This release's table, or the first release's (one row per credential).
        table = "conflict_revocations" if "conflict_revocations" in tables else "revocations"
        if table not in tables:
            return []
        entries = [json.loads(r[0]) for r in conn.execute(f"SELECT entry FROM {table}")]
    finally:
        conn.close()
    return list(parse_revocations(entries))


class CountyRepository:
    """The TUF repository in ``DATA/updates``; every method that changes it takes the lock."""

    def __init__(self, data: str | Path, database_url: str | None = None) -> None:
        self.paths = RepoPaths(Path(data))
        # The county database that publishing a trust list records issuer keys in
        # (None: DATA/county.sqlite).
        self.database_url = database_url
        if not (self.paths.metadata / "timestamp.json").is_file():
            raise UpdatesError(
                f"{self.paths.root}: no update repository here; run "
                f"'canteen-county updates init --data {self.paths.data}' first"
            )
        self._db = _source(self.paths)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CountyRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.paths.lock, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ---- reading the published state ----

    def _read(self, name: str) -> Metadata[Any]:
        try:
            return Metadata.from_file(str(self.paths.metadata / name))
        except Exception as exc:  # a broken repository file is one clear line
            raise UpdatesError(f"{self.paths.metadata / name}: cannot read: {exc}") from None

    def root(self) -> Metadata[Root]:
        return self._read("root.json")

    def timestamp(self) -> Metadata[Timestamp]:
        return self._read("timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._read(f"{version}.snapshot.json")

    def targets(self, snapshot: Metadata[Snapshot] | None = None) -> Metadata[Targets]:
        snap = snapshot or self.snapshot()
        return self._read(f"{snap.signed.meta['targets.json'].version}.targets.json")

    def bin(self, name: str, snapshot: Metadata[Snapshot] | None = None) -> Metadata[Targets]:
        snap = snapshot or self.snapshot()
        return self._read(f"{snap.signed.meta[f'{name}.json'].version}.{name}.json")

    def succinct(self, targets: Metadata[Targets]) -> SuccinctRoles:
        delegations = targets.signed.delegations
        if delegations is None or delegations.succinct_roles is None:
            raise UpdatesError("the targets role delegates no hash bins: repository damaged")
        return delegations.succinct_roles

    def target_info(self, path: str) -> TargetFile | None:
        snap = self.snapshot()
        top = self.targets(snap)
        if path in top.signed.targets:
            return top.signed.targets[path]
        name = self.succinct(top).get_role_for_target(path)
        return self.bin(name, snap).signed.targets.get(path)

    def _signers(self, role: str) -> dict[str, CryptoSigner]:
        return _load_signers(self.paths.keys / role)

    # ---- one publication ----

    def _publish(
        self,
        now: int,
        top: dict[str, tuple[bytes, dict[str, Any]]] | None = None,
        binned: dict[str, tuple[bytes, dict[str, Any]]] | None = None,
        *,
        resign: Sequence[str] = (),
        root_keys: Path | None = None,
    ) -> Publication:
        """Write targets, then bins, targets, snapshot, and the timestamp last (the commit)."""
        pub = Publication()
        snap = self.snapshot()
        targets = self.targets(snap)
        succinct = self.succinct(targets)
        top = top or {}
        binned = binned or {}
        touched_bins: dict[str, Metadata[Targets]] = {}
        new_files: dict[Path, bytes] = {}
        for path, (data, custom) in {**top, **binned}.items():
            info = TargetFile.from_data(path, data, ["sha256"])
            if custom:
                info.unrecognized_fields["custom"] = custom
            dest = self._target_file(path, info)
            if not dest.exists():
                new_files[dest] = data
            pub.bytes_written += len(data)
            pub.targets.append(path)
            if path in top:
                targets.signed.targets[path] = info
            else:
                name = succinct.get_role_for_target(path)
                if name not in touched_bins:
                    touched_bins[name] = self.bin(name, snap)
                touched_bins[name].signed.targets[path] = info
        # Every target is on disk, whole, before any metadata names it.
        write_new_files(new_files)
        if BINS in resign:
            for name in succinct.get_roles():
                if name not in touched_bins:
                    touched_bins[name] = self.bin(name, snap)
        bin_signers = list(self._signers(BINS).values())
        for name, md in sorted(touched_bins.items()):
            self._new_version(md, BINS, name, now, snap, bin_signers)
            pub.bins.append(name)
        if top or Targets.type in resign or BINS in resign:
            self._new_version(targets, Targets.type, Targets.type, now, snap)
        pub.timestamp_version = self._commit(snap, now)
        pub.snapshot_version = snap.signed.version
        pub.targets_version = snap.signed.meta["targets.json"].version
        return pub

    def _sign(self, md: Metadata[Any], signers: Sequence[Signer], role: str) -> None:
        if not signers:
            raise UpdatesError(
                f"no {role} key in {self.paths.keys / role}: restore it or run "
                f"'canteen-county rotate --data {self.paths.data} {role}'"
            )
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)

    def _new_version(
        self,
        md: Metadata[Any],
        role: str,
        name: str,
        now: int,
        snap: Metadata[Snapshot],
        signers: Sequence[Signer] | None = None,
    ) -> None:
        """The next version of a targets or bin role: signed, written, listed in ``snap``.

        The snapshot is not written here: ``_commit`` does that after every role."""
        _bump(md, role, now)
        self._sign(md, list(self._signers(role).values()) if signers is None else signers, role)
        self._write_meta(f"{md.signed.version}.{name}.json", md)
        snap.signed.meta[f"{name}.json"] = MetaFile(md.signed.version)

    def _commit(self, snap: Metadata[Snapshot], now: int) -> int:
        """Sign and write the next snapshot version, then a timestamp that names it (the
        commit: terminals see the publication from here on). The timestamp's version."""
        _bump(snap, Snapshot.type, now)
        self._sign(snap, list(self._signers(Snapshot.type).values()), Snapshot.type)
        self._write_meta(f"{snap.signed.version}.snapshot.json", snap)
        return self._new_timestamp(now, snap.signed.version)

    def _new_timestamp(self, now: int, snapshot_version: int | None = None) -> int:
        """Sign and write the next timestamp version (naming a new snapshot, if given)."""
        ts = self.timestamp()
        _bump(ts, Timestamp.type, now)
        if snapshot_version is not None:
            ts.signed.snapshot_meta = MetaFile(snapshot_version)
        # When the county last vouched that everything listed is current: the terminal
        # counts the freshness of its lists from this, not from when a list last changed.
        ts.signed.unrecognized_fields[SIGNED_AT_FIELD] = now
        self._sign(ts, list(self._signers(Timestamp.type).values()), Timestamp.type)
        self._write_meta("timestamp.json", ts)
        return int(ts.signed.version)

    def _write_meta(self, name: str, md: Metadata[Any]) -> None:
        write_atomic(self.paths.metadata / name, md.to_bytes(_COMPACT))

    def _target_file(self, path: str, info: TargetFile) -> Path:
        """Where a target's bytes go: named by their hash, so a file once written is final."""
        directory, _, base = path.rpartition("/")
        return self.paths.targets / directory / f"{info.hashes['sha256']}.{base}"

    # ---- what county IT publishes ----

    def publish_settings(self, file: str | Path, canteen: str | None, now: int) -> Publication:
        """Validate a settings file with the terminal's loader, then sign it for one or all.

        Terminals lay a canteen's own file over the file for all canteens, so a canteen's
        file is checked laid over the published file for all (when there is one) and may
        name only what it changes; a file for all canteens is checked alone and under
        every canteen's published file, so it cannot break one of them."""
        with self._locked():
            under = None if canteen is None else self.published_settings(None)
            data = validate_settings(file, canteen, under=under)
            if canteen is None:
                for other, text in self._canteen_settings():
                    try:
                        check_settings_layers(
                            [(data, str(file)), (text, f"the published {settings_target(other)}")]
                        )
                    except SettingsRefused as exc:
                        raise SettingsRefused(
                            f"{exc} (canteen {other}'s own file laid over this one)"
                        ) from None
            version = self._next_version(settings_target(canteen))
            return self._publish(
                now, top={settings_target(canteen): (data, {"version": version, "issued_at": now})}
            )

    def published_settings(self, canteen: str | None) -> bytes | None:
        """The bytes of the settings published for ``canteen`` (None: for all), or None."""
        path = settings_target(canteen)
        info = self.target_info(path)
        if info is None:
            return None
        file = self._target_file(path, info)
        try:
            return file.read_bytes()
        except OSError as exc:
            raise UpdatesError(f"{file}: the published settings cannot be read: {exc}") from None

    def _canteen_settings(self) -> Iterator[tuple[str, bytes]]:
        """Each canteen's own published settings file: (canteen id, bytes)."""
        prefix, _, _ = settings_target("").rpartition("/")
        for path in sorted(self.targets().signed.targets):
            folder, _, base = path.rpartition("/")
            if folder == prefix and base.endswith(".toml"):
                canteen = base[: -len(".toml")]
                data = self.published_settings(canteen)
                if data is not None:
                    yield canteen, data

    def publish_trust(self, file: str | Path, now: int) -> Publication:
        """Sign the trust list in ``file`` (token.md §5 entries) as the next version.

        Every entry is checked as a terminal checks it (protocol.lists.parse_issuer_keys)
        before anything is signed: an Ed25519 key of 32 bytes, or an SM2 key (§7.4,
        ``"alg": "SM2-SM3"``) that is a 65-byte point on the curve; the first bad entry
        is a ``TrustError`` of one line and nothing is published. The entries go out as
        county IT wrote them, ``"alg"`` included, and their keys are recorded in the
        county database, whose ``issuer_keys`` keeps the raw key (65 bytes: SM2)."""
        doc = read_list_file(file, "trust")
        entries, header = split_list(doc, "trust")
        parse_issuer_keys(entries)  # every entry checked before anything is signed
        # The county verifies phone codes in uploaded sales with every key it published.
        _remember_issuer_keys(self.paths.data, entries, now, self.database_url)
        version = max(header.version, self._next_version(TRUST_TARGET))
        body = {
            "version": version,
            "issued_at": now,
            "expires_at": header.expires_at,
            "entries": entries,
        }
        with self._locked():
            return self._publish(
                now, top={TRUST_TARGET: (_dump(body), {"version": version, "issued_at": now})}
            )

    def publish_roster(self, file: str | Path, now: int) -> Publication:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UpdatesError(f"{file}: cannot read the roster CSV: {exc}") from None
        parse_roster_csv(text)
        version = self._next_version(ROSTER_TARGET)
        with self._locked():
            return self._publish(
                now,
                top={ROSTER_TARGET: (text.encode(), {"version": version, "issued_at": now})},
            )

    def publish_directory(self, directory: Directory, now: int) -> Publication:
        """Sign the agency directory (its agencies and canteens) as the next version of the
        directory target, issued at ``now``. The document is checked as a terminal checks
        it (protocol.agencies.parse_directory) before anything is signed; a directory that
        fails is ``UpdatesError`` with one line per problem, and nothing is published."""
        with self._locked():
            version = self._next_version(DIRECTORY_TARGET)
            doc = Directory(
                directory.agencies.values(), directory.canteens.values(), version, now
            ).as_json()
            try:
                parse_directory(doc, "the directory to publish")
            except DirectoryError as exc:
                raise UpdatesError(f"{exc}\nNothing published") from None
            data = _dump(doc)
            if len(data) > DIRECTORY_MAX_BYTES:
                # A terminal would refuse the whole update set for it, revocations too.
                raise UpdatesError(
                    f"the directory to publish is {len(data):,} bytes, more than the "
                    f"{DIRECTORY_MAX_BYTES:,} bytes a terminal takes; nothing published"
                )
            return self._publish(
                now, top={DIRECTORY_TARGET: (data, {"version": version, "issued_at": now})}
            )

    def _next_version(self, path: str) -> int:
        info = self.target_info(path)
        if info is None:
            return 1
        return int(info.custom.get("version", 0)) + 1

    # ---- revocations ----

    def revoke(
        self, entries: Sequence[dict[str, Any]], now: int, origin: str = BY_COUNTY_IT
    ) -> Publication:
        """Add §5 revocation entries to the master list and publish the shards they touch."""
        with self._locked():
            return self._revoke_held(entries, now, origin)

    def _revoke_held(self, entries: Sequence[dict[str, Any]], now: int, origin: str) -> Publication:
        """``revoke`` with the repository lock already held."""
        keys = list(parse_revocations(entries))
        rows = []
        for key, entry in zip(keys, entries, strict=True):
            clean = {k: v for k, v in entry.items() if k in _ENTRY_FIELDS}
            rows.append((key, shard_of(key), _dump(clean).decode(), now, origin))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO revocations (k, shard, entry, added_at, origin) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            added = self._db.total_changes - before
            if origin == BY_COUNTY_IT:
                # County IT's own word outlives any conflict's withdrawal.
                self._db.executemany(
                    "UPDATE revocations SET origin = ? WHERE k = ?",
                    [(origin, row[0]) for row in rows],
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        pub = self._publish_revocations(now)
        pub.revocations_added = added
        return pub

    def lift(self, entries: Sequence[dict[str, Any]], now: int) -> Publication:
        """Take a withdrawn conflict's revocations off the list and publish their shards.

        Entries county IT revoked by hand stay: only the conflict checks' own are lifted.
        """
        with self._locked():
            return self._lift_held(entries, now)

    def _lift_held(self, entries: Sequence[dict[str, Any]], now: int) -> Publication:
        """``lift`` with the repository lock already held."""
        return self._lift_keys_held(list(parse_revocations(entries)), now)

    def _lift_keys_held(self, keys: Sequence[bytes], now: int) -> Publication:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            shards = sorted(
                {
                    row[0]
                    for key in keys
                    for row in self._db.execute(
                        "SELECT shard FROM revocations WHERE k = ? AND origin = ?",
                        (key, BY_CONFLICT),
                    )
                }
            )
            before = self._db.total_changes
            self._db.executemany(
                "DELETE FROM revocations WHERE k = ? AND origin = ?",
                [(key, BY_CONFLICT) for key in keys],
            )
            lifted = self._db.total_changes - before
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if not shards:
            return Publication()
        pub = self._publish_revocations(now, shards=shards)
        pub.revocations_lifted = lifted
        return pub

    def withdraw_conflict(
        self, store: Any, conflict_id: int, reason: str, now_ms: int
    ) -> tuple[list[dict[str, Any]], Publication]:
        """Withdraw a conflict in ``store`` (a CountyStore) and lift what it alone revoked,
        under the repository lock, so the refresher cannot publish it again in between."""
        with self._locked():
            lifted = store.withdraw_conflict(conflict_id, reason, now_ms)
            pub = self._lift_held(lifted, now_ms // 1000) if lifted else Publication()
        return lifted, pub

    def revocation_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM revocations").fetchone()[0])

    def _publish_revocations(
        self, now: int, every_shard: bool = False, shards: Sequence[str] = ()
    ) -> Publication:
        """Publish each shard with unpublished entries (or all, or also ``shards``, which
        lost entries), then the index (lock held)."""
        if every_shard:
            dirty = list(all_shards())
        else:
            pending = {
                r[0]
                for r in self._db.execute(
                    "SELECT DISTINCT shard FROM revocations WHERE published = 0 ORDER BY shard"
                )
            }
            dirty = sorted(pending | set(shards))
        index = self.target_info(INDEX_TARGET)
        version = 1 if index is None else int(index.custom["version"]) + 1
        if not dirty and index is not None:
            return Publication(revocation_version=version - 1)
        binned: dict[str, tuple[bytes, dict[str, Any]]] = {}
        for shard in dirty:
            entries = [
                json.loads(r[0])
                for r in self._db.execute(
                    "SELECT entry FROM revocations WHERE shard = ? ORDER BY k", (shard,)
                )
            ]
            binned[shard_target(shard)] = (
                shard_bytes(shard, version, entries),
                {"version": version, "count": len(entries)},
            )
        total = self.revocation_count()
        index_body = {
            "version": version,
            "issued_at": now,
            "shards": SHARD_COUNT,
            "count": total,
        }
        custom = {"version": version, "count": total, "issued_at": now}
        pub = self._publish(now, top={INDEX_TARGET: (_dump(index_body), custom)}, binned=binned)
        self._db.execute("UPDATE revocations SET published = 1 WHERE published = 0")
        pub.revocation_version = version
        return pub

    def publish_pending_revocations(self, now: int) -> Publication:
        with self._locked():
            return self._publish_revocations(now)

    # ---- keys and freshness ----

    def refresh(self, now: int, force: bool = False) -> list[str]:
        """Re-sign every online role that is past half its validity (all with ``force``)."""

        def due(md: Metadata[Any], role: str) -> bool:
            left = md.signed.expires.timestamp() - now
            return force or left < EXPIRY_S[role] * RENEW_FRACTION

        with self._locked():
            snap = self.snapshot()
            targets = self.targets(snap)
            resign: list[str] = []
            if due(targets, Targets.type):
                resign.append(Targets.type)
            first_bin = next(self.succinct(targets).get_roles())
            if due(self.bin(first_bin, snap), BINS):
                resign.append(BINS)
            if resign or due(snap, Snapshot.type):
                self._publish(now, resign=resign)
                return [*resign, Snapshot.type, Timestamp.type]
            if due(self.timestamp(), Timestamp.type):
                self._new_timestamp(now)
                return [Timestamp.type]
            return []

    def renew_root(self, now: int, root_keys: Path) -> dict[str, Any]:
        """The same root keys, a new version with a new expiry (do it yearly: an expired
        root stops every terminal's updates until it is renewed)."""
        with self._locked():
            previous = self.root()
            root = self.root()
            _bump(root, Root.type, now)
            self._sign_root(root, _load_signers(root_keys), previous=previous)
            self._write_root(root)
            return {"root_version": root.signed.version, "expires": str(root.signed.expires)}

    def rotate(self, role: str, now: int, root_keys: Path) -> dict[str, Any]:
        """New keys for ``role``; root, targets, snapshot and timestamp changes need root keys."""
        if role not in ROLES:
            raise UpdatesError(f"no role {role!r}: choose one of {', '.join(ROLES)}")
        with self._locked():
            if role == BINS:
                return self._rotate_bins(now)
            old_root_signers = _load_signers(root_keys)
            root = self.root()
            if role == Root.type:
                new_signers = [_new_signer() for _ in range(ROOT_KEYS)]
            else:
                new_signers = [_new_signer()]
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            for signer in new_signers:
                root.signed.add_key(signer.public_key, role)
            _bump(root, Root.type, now)
            # The old root's threshold must sign the new root, and so must the new one's.
            self._sign_root(root, old_root_signers, previous=self.root())
            if role == Root.type:
                for signer in new_signers:
                    root.sign(signer, append=True)
                    _save_signer(root_keys, signer)
            self._write_root(root)
            if role != Root.type:
                directory = self.paths.keys / role
                for old in directory.glob("*.pem"):
                    old.rename(old.with_suffix(".retired"))
                for signer in new_signers:
                    _save_signer(directory, signer)
                self._publish(now, resign=[Targets.type] if role == Targets.type else [])
            else:
                current = set(root.signed.roles[Root.type].keyids)
                for pem in root_keys.glob("*.pem"):
                    if pem.stem not in current:
                        pem.rename(pem.with_suffix(".retired"))
            keys = [s.public_key.keyid for s in new_signers]
            return {"role": role, "root_version": root.signed.version, "keys": keys}

    def _sign_root(
        self,
        root: Metadata[Root],
        signers: dict[str, CryptoSigner],
        previous: Metadata[Root],
    ) -> None:
        wanted = [k for k in previous.signed.roles[Root.type].keyids if k in signers]
        need = previous.signed.roles[Root.type].threshold
        if len(wanted) < need:
            raise UpdatesError(
                f"the root needs {need} of its offline keys to sign, found {len(wanted)} in the "
                "root key directory: bring the offline root keys (--root-keys DIR)"
            )
        root.signatures.clear()
        for keyid in wanted:
            root.sign(signers[keyid], append=True)

    def _write_root(self, root: Metadata[Root]) -> None:
        """A new root, once it verifies under itself: its versioned file, then root.json."""
        root.verify_delegate(Root.type, root)
        self._write_meta(f"{root.signed.version}.root.json", root)
        self._write_meta("root.json", root)

    def _rotate_bins(self, now: int) -> dict[str, Any]:
        signer = _new_signer()
        snap = self.snapshot()
        targets = self.targets(snap)
        succinct = self.succinct(targets)
        delegations = targets.signed.delegations
        assert delegations is not None and delegations.keys is not None
        for keyid in list(succinct.keyids):
            delegations.keys.pop(keyid, None)
        succinct.keyids = [signer.public_key.keyid]
        delegations.keys[signer.public_key.keyid] = signer.public_key
        directory = self.paths.keys / BINS
        for old in directory.glob("*.pem"):
            old.rename(old.with_suffix(".retired"))
        _save_signer(directory, signer)
        # _publish reads the targets role from disk, so write the new delegation first
        # as the next version and let the publication carry it.
        self._new_version(targets, Targets.type, Targets.type, now, snap)
        self._commit(snap, now)
        self._publish(now, resign=[BINS])
        return {"role": BINS, "keys": [signer.public_key.keyid]}

    # ---- what terminals applied ----

    def record_applied(
        self, terminal_id: str, detail: dict[str, Any], applied_at_ms: int, now_ms: int
    ) -> None:
        set_version = detail.get("set")
        self._db.execute(
            "INSERT INTO applied VALUES (?, ?, ?, ?, ?) ON CONFLICT (terminal) DO UPDATE SET "
            "set_version = excluded.set_version, detail = excluded.detail, "
            "applied_at_ms = excluded.applied_at_ms, reported_at_ms = excluded.reported_at_ms "
            "WHERE excluded.applied_at_ms >= applied.applied_at_ms",
            (
                terminal_id,
                set_version if isinstance(set_version, int) else None,
                _dump(detail).decode(),
                applied_at_ms,
                now_ms,
            ),
        )

    def applied(self) -> list[dict[str, Any]]:
        out = []
        for terminal_id, set_version, detail, at_ms, reported in self._db.execute(
            "SELECT terminal, set_version, detail, applied_at_ms, reported_at_ms FROM applied "
            "ORDER BY terminal"
        ):
            out.append(
                {
                    "terminal": terminal_id,
                    "set": set_version,
                    "applied_at_ms": at_ms,
                    "reported_at_ms": reported,
                    "detail": json.loads(detail),
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        root = self.root()
        ts = self.timestamp()
        snap = self.snapshot()
        targets = self.targets(snap)
        listed: dict[str, Any] = {}
        for path, info in sorted(targets.signed.targets.items()):
            listed[path] = {"length": info.length, **info.custom}
        root_left_days = (root.signed.expires.timestamp() - time.time()) / 86400
        return {
            "root": root.signed.version,
            "root_expires": root.signed.expires.isoformat(),
            "root_warning": (
                f"the root expires in {root_left_days:.0f} days: run 'updates renew-root'"
                if root_left_days < 60
                else None
            ),
            "timestamp": ts.signed.version,
            "timestamp_expires": ts.signed.expires.isoformat(),
            "snapshot": snap.signed.version,
            "targets": targets.signed.version,
            "listed": listed,
            "revocations": self.revocation_count(),
        }


_ENTRY_FIELDS = ("kind", "iss", "cti", "sub", "public_key", "uid")


# --- init ------------------------------------------------------------------------------


def init_repository(data: str | Path, root_keys: str | Path, now: int) -> dict[str, Any]:
    """Keys and version 1 of every role; the root keys go to ``root_keys`` (take it offline)."""
    paths = RepoPaths(Path(data))
    root_dir = Path(root_keys)
    if (paths.metadata / "root.json").exists():
        raise UpdatesError(f"{paths.root}: an update repository exists already; not replacing it")
    if root_dir.resolve().is_relative_to(paths.root.resolve()):
        raise UpdatesError(
            f"{root_dir}: the offline root keys must not live inside {paths.root}, "
            "which the server reads"
        )
    paths.metadata.mkdir(parents=True, exist_ok=True)
    paths.targets.mkdir(parents=True, exist_ok=True)
    root_signers = [_new_signer() for _ in range(ROOT_KEYS)]
    online = {role: _new_signer() for role in ONLINE_ROLES}
    for signer in root_signers:
        _save_signer(root_dir, signer)
    for role, signer in online.items():
        _save_signer(paths.keys / role, signer)

    root = Metadata(Root(expires=_expiry(Root.type, now), consistent_snapshot=True))
    for signer in root_signers:
        root.signed.add_key(signer.public_key, Root.type)
    root.signed.roles[Root.type].threshold = ROOT_THRESHOLD
    for role in (Targets.type, Snapshot.type, Timestamp.type):
        root.signed.add_key(online[role].public_key, role)
    for signer in root_signers:
        root.sign(signer, append=True)

    bins_key: Key = online[BINS].public_key
    succinct = SuccinctRoles([bins_key.keyid], 1, BIN_BITS, BIN_PREFIX)
    targets = Metadata(Targets(expires=_expiry(Targets.type, now)))
    targets.signed.delegations = Delegations(
        keys={bins_key.keyid: bins_key}, roles=None, succinct_roles=succinct
    )
    snapshot = Metadata(Snapshot(expires=_expiry(Snapshot.type, now)))
    for name in succinct.get_roles():
        md = Metadata(Targets(expires=_expiry(BINS, now)))
        md.sign(online[BINS])
        write_atomic(paths.metadata / f"1.{name}.json", md.to_bytes(_COMPACT))
        snapshot.signed.meta[f"{name}.json"] = MetaFile(1)
    targets.sign(online[Targets.type])
    snapshot.sign(online[Snapshot.type])
    timestamp = Metadata(Timestamp(expires=_expiry(Timestamp.type, now)))
    timestamp.signed.unrecognized_fields[SIGNED_AT_FIELD] = now
    timestamp.sign(online[Timestamp.type])
    files: tuple[tuple[str, Metadata[Any]], ...] = (
        ("1.root.json", root),
        ("root.json", root),
        ("1.targets.json", targets),
        ("1.snapshot.json", snapshot),
        ("timestamp.json", timestamp),
    )
    for name, md in files:
        write_atomic(paths.metadata / name, md.to_bytes(_COMPACT))
    # An empty revocation list with every shard published, so a terminal can tell
    # "no revocations" from "revocations not received".
    with CountyRepository(data) as repo, repo._locked():
        repo._publish_revocations(now, every_shard=True)
    return {
        "repository": str(paths.root),
        "root_keys": str(root_dir),
        "root_threshold": f"{ROOT_THRESHOLD} of {ROOT_KEYS}",
        "root": str(paths.metadata / "1.root.json"),
        "root_sha256": hashlib.sha256((paths.metadata / "1.root.json").read_bytes()).hexdigest(),
    }


# --- settings validation ---------------------------------------------------------------

# Options that belong to one device, never to a publication for a canteen.
_DEVICE_OPTIONS = {"terminal": ("id", "state_dir")}


def validate_settings(file: str | Path, canteen: str | None, under: bytes | None = None) -> bytes:
    """The file's bytes if the terminal's own loader accepts it; else ``SettingsRefused``.

    ``under`` is the published file for all canteens that terminals lay a canteen's own
    file over: the file is checked over it (else over the embedded defaults alone)."""
    import tomllib

    path = Path(file)
    if canteen is not None and not _CANTEEN_ID.match(canteen):
        raise SettingsRefused(f"{canteen!r}: a canteen id is letters, digits, '.', '_' or '-'")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsRefused(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsRefused(f"{path}: not UTF-8 text; nothing published") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsRefused(f"{path}: not valid TOML: {exc}; nothing published") from None
    except RecursionError:
        raise SettingsRefused(
            f"{path}: nested deeper than any setting needs; nothing published"
        ) from None
    for section, options in _DEVICE_OPTIONS.items():
        table = doc.get(section)
        if isinstance(table, dict):
            for option in options:
                if option in table:
                    raise SettingsRefused(
                        f"{path}: [{section}] {option}: belongs to one terminal's own settings, "
                        "not to a publication; remove it. Nothing published"
                    )
    table = doc.get("canteen")
    canteen_table: dict[str, Any] = table if isinstance(table, dict) else {}
    if canteen is None:
        for option in ("id", "name"):
            if option in canteen_table:
                raise SettingsRefused(
                    f"{path}: [canteen] {option}: settings for all canteens cannot name one; "
                    "publish with --canteen ID or remove it. Nothing published"
                )
    elif "id" in canteen_table and canteen_table["id"] != canteen:
        raise SettingsRefused(
            f"{path}: [canteen] id is {canteen_table['id']!r} but the publication is for "
            f"{canteen!r}. Nothing published"
        )
    layers = [] if under is None else [(under, f"the published {settings_target(None)}")]
    check_settings_layers([*layers, (data, str(path))])
    return data


def check_settings_layers(layers: Sequence[tuple[bytes, str]]) -> None:
    """Settings files (bytes and a name for messages), lowest first, must load with the
    terminal's own loader laid in that order over its embedded defaults, as a terminal
    lays the published files; else ``SettingsRefused`` with one line."""
    try:
        config.load_layers(layers)
    except config.ConfigError as exc:
        raise SettingsRefused(f"{exc}. Nothing published") from None


# --- conflicts, applied sets, serving, re-signing --------------------------------------


def _county_store(data_dir: str | Path, database_url: str | None) -> CountyStore:
    """The county store (a CountyStore) of ``database_url``, else the SQLite file in the
    data directory: the one place this module opens it."""
    from county.db import database_url as url_of
    from county.store import CountyStore

    return CountyStore(url_of(database_url, data_dir))


def publish_conflict_revocations(
    data_dir: str | Path, now: int | None = None, database_url: str | None = None
) -> Publication:
    """Revoke every credential the county store found in a conflict and publish at once.
    The store is ``database_url``'s, else DATA/county.sqlite."""
    now = int(time.time()) if now is None else now
    if database_url is None and not (Path(data_dir) / "county.sqlite").is_file():
        return Publication()  # no intake yet, so no conflicts
    with CountyRepository(data_dir) as repo, repo._locked():
        # Read under the lock that a withdrawal takes too: a conflict withdrawn between
        # this read and the publication would otherwise be revoked again.
        store = _county_store(data_dir, database_url)
        try:
            found = store.revocations()
        finally:
            store.close()
        entries = []
        standing: set[bytes] = set()
        for e in found:
            entry = {k: v for k, v in e.items() if k in _ENTRY_FIELDS}
            try:
                [key] = parse_revocations([entry])
            except TrustError as exc:
                # One bad entry must not hold back every other conflict's revocation.
                log.warning("conflict %s: its revocation cannot be published: %s", e, exc)
                continue
            standing.add(key)
            entries.append(entry)
        # What the conflict checks published and no standing conflict holds any more (a
        # conflict withdrawn by review or by a staff reversal) comes off the list.
        published = {
            bytes(r[0])
            for r in repo._db.execute("SELECT k FROM revocations WHERE origin = ?", (BY_CONFLICT,))
        }
        gone = sorted(published - standing)
        pub = repo._lift_keys_held(gone, now) if gone else Publication()
        if entries:
            lifted = pub.revocations_lifted
            pub = repo._revoke_held(entries, now, BY_CONFLICT)
            pub.revocations_lifted = lifted
        return pub


def _remember_issuer_keys(
    data_dir: Path, entries: Sequence[Any], now: int, database_url: str | None
) -> None:
    store = _county_store(data_dir, database_url)
    try:
        store.add_issuer_keys(entries, now * 1000)
    finally:
        store.close()


def import_published_issuer_keys(
    data_dir: str | Path, now: int, database_url: str | None = None
) -> int:
    """Keys of the trust list in force, into the county database (``database_url``, else
    DATA/county.sqlite; a repository published before the county verified codes);
    returns how many were new. No repository: 0."""
    paths = RepoPaths(Path(data_dir))
    if not (paths.metadata / "timestamp.json").is_file():
        return 0
    with CountyRepository(data_dir) as repo:
        info = repo.target_info(TRUST_TARGET)
        if info is None:
            return 0
    directory, _, base = TRUST_TARGET.rpartition("/")
    file = paths.targets / directory / f"{info.hashes['sha256']}.{base}"
    try:
        entries, _ = split_list(json.loads(file.read_bytes()), "trust")
    except (OSError, ValueError, TrustError) as exc:
        raise UpdatesError(f"{file}: the published trust list cannot be read: {exc}") from None
    store = _county_store(data_dir, database_url)
    try:
        return store.add_issuer_keys(entries, now * 1000)
    finally:
        store.close()


def record_applied(
    data_dir: str | Path,
    terminal_id: str,
    detail: dict[str, Any],
    applied_at_ms: int,
    now_ms: int | None = None,
) -> None:
    """Note what a terminal reports it applied (the detail of its config_applied entry)."""
    reported = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    with CountyRepository(data_dir) as repo:
        repo.record_applied(terminal_id, detail, applied_at_ms, reported)


def mount_repository(app: Any, data_dir: str | Path, prefix: str = "/tuf") -> None:
    """Serve metadata at PREFIX/metadata/ and targets at PREFIX/targets/, read-only.

    A county that has not run ``updates init`` yet has no directories to serve: every
    terminal sync still asks, so each request gets a one-line 404 problem (not
    StaticFiles' RuntimeError, a 500 with a traceback in the log). The check is made
    per request, so the files are served as soon as ``updates init`` makes them,
    without a restart."""
    from starlette.responses import JSONResponse
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Receive, Scope, Send

    paths = RepoPaths(Path(data_dir))

    def read_only(directory: Path) -> ASGIApp:
        files = StaticFiles(directory=directory, check_dir=False)

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and not directory.is_dir():
                answer = JSONResponse(
                    {
                        "problem": "this county publishes no signed updates yet "
                        "(county IT: canteen-county updates init)"
                    },
                    status_code=404,
                )
                await answer(scope, receive, send)
                return
            await files(scope, receive, send)

        return serve

    app.mount(f"{prefix}/metadata", read_only(paths.metadata), name="tuf-metadata")
    app.mount(f"{prefix}/targets", read_only(paths.targets), name="tuf-targets")


def start_timestamp_refresher(
    data_dir: str | Path,
    interval_s: float,
    clock: Callable[[], float] = time.time,
    database_url: str | None = None,
) -> Callable[[], None]:
    """Every ``interval_s`` in a thread: re-sign online roles near expiry and publish the
    revocations of new conflicts (read from ``database_url``, else DATA/county.sqlite).
    Returns the function that stops it."""
    stop = threading.Event()

    def run() -> None:
        try:
            # A trust list published before the county kept issuer keys: its keys too.
            added = import_published_issuer_keys(data_dir, int(clock()), database_url)
            if added:
                log.info("the county now verifies phone codes with %d more issuer keys", added)
        except Exception as exc:  # the refresher's own work must go on
            log.warning("issuer keys of the published trust list: %s", exc)
        while not stop.is_set():
            try:
                with CountyRepository(data_dir) as repo:
                    renewed = repo.refresh(int(clock()))
                    # Revocations recorded but not published (a crash mid-publication).
                    repo.publish_pending_revocations(int(clock()))
                # Conflicts that the sync intake found since the last round.
                added = publish_conflict_revocations(
                    data_dir, int(clock()), database_url
                ).revocations_added
                if added:
                    log.info("published %d revocations from conflicts", added)
                if renewed:
                    log.info("re-signed %s", ", ".join(renewed))
            except UpdatesError as exc:
                log.warning("update repository: %s", exc)
            except Exception:  # the thread must outlive one bad round
                log.exception("update repository: re-signing failed")
            stop.wait(interval_s)

    thread = threading.Thread(target=run, name="tuf-timestamp", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(10)

    return halt
