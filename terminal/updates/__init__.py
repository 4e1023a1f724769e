"""Signed updates from county IT: verify with python-tuf, apply as one set, keep the last good.

This module owns the terminal's side of docs/updates.md: the TUF client state in
``STATE/tuf/`` (the root pinned at provisioning, then whatever verified), the
fetch of one update set (the settings for this canteen, the issuer trust list,
the card roster and the changed revocation shards) under size caps and one
total deadline, the checks python-tuf does not know about (a shard's entries
hash to that shard, shard and entry counts match the index, settings pass the
terminal's own loader), and the atomic apply: the settings file of the set is
written first (temp file, fsync, rename, fsync of the directory), then one
trust.sqlite transaction replaces the lists and shards and records the set, and
last ``updates/applied.json`` names the set and its settings file. On start,
``begin_start`` reconciles the two (the database is the truth; the pointer is
rewritten from it) and goes back to the last good set when the previous start
with a new set never confirmed. It never decides a verdict, never writes the
ledger (it returns what the daemon records as ``config_applied``) and never
trusts a byte that python-tuf has not verified against the pinned root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api._payload import TargetFile  # re-exported by tuf.api.metadata, not to mypy
from tuf.api.metadata import Metadata
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from protocol.layout import (  # noqa: F401  (the layout names, as both sides use them)
    BIN_BITS,
    BIN_PREFIX,
    INDEX_TARGET,
    ROSTER_TARGET,
    SHARD_COUNT,
    SHARD_HEX,
    SIGNED_AT_FIELD,
    TRUST_TARGET,
    all_shards,
    settings_target,
    shard_bytes,
    shard_of,
    shard_target,
)
from terminal import config, trust
from terminal.durable import write_atomic
from terminal.ledger import CONFIG_APPLIED, EntryDraft

# Files in the terminal's state directory.
TUF_DIR = "tuf"
UPDATES_DIR = "updates"
APPLIED_FILE = "applied.json"
LAST_REFRESH_FILE = "last-refresh.json"
REFUSED_FILE = "refused-settings.json"


# ---- limits and errors --------------------------------------------------------------


@dataclass(frozen=True)
class UpdateLimits:
    """Every bound on what one refresh may cost the terminal."""

    # Wall time for a whole refresh and all its downloads, whatever the link does.
    deadline_s: float = 120.0
    # Per connection attempt and per silent read, each also cut to what the deadline leaves.
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    # Metadata: root and timestamp are small; snapshot lists 65 roles; a bin lists 64 shards.
    root_max_bytes: int = 64 * 1024
    timestamp_max_bytes: int = 16 * 1024
    snapshot_max_bytes: int = 256 * 1024
    targets_max_bytes: int = 1024 * 1024
    # Targets: a longer length in signed metadata is refused before any download.
    settings_max_bytes: int = 256 * 1024
    trust_max_bytes: int = 1024 * 1024
    roster_max_bytes: int = 32 * 1024 * 1024
    index_max_bytes: int = 16 * 1024
    shard_max_bytes: int = 2 * 1024 * 1024
    # Root versions one refresh may walk through (each must be signed by the one before).
    max_root_rotations: int = 32


class UpdateError(Exception):
    """No new set was applied; ``kind`` says why for logs, status and JSON."""

    kind = "update"


class UpdateRefused(UpdateError):
    """The repository's data failed verification: an attack or a damaged copy. Keep the old."""

    kind = "refused"


class UpdatesStale(UpdateRefused):
    """Signed metadata has expired: the county's timestamp is not fresh (a freeze?)."""

    kind = "stale"


class UpdateUnavailable(UpdateError):
    """The county could not be reached in time; try again at the next sync."""

    kind = "unavailable"


class NotPinned(UpdateError):
    """No trusted root is pinned in the state directory yet."""

    kind = "not_pinned"


# ---- fetchers -----------------------------------------------------------------------


class DeadlineFetcher(FetcherInterface):
    """HTTP(S) with one total deadline across every request of a refresh, and a byte count.

    ``read1`` hands back whatever arrived, so a server that trickles a byte at a time
    is checked against the deadline after every byte, not after a full chunk.
    """

    def __init__(
        self,
        limits: UpdateLimits,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.deadline_s
        self.bytes_received = 0
        kwargs: dict[str, Any] = {"retries": False}
        if ca_file:
            kwargs.update(cert_reqs="CERT_REQUIRED", ca_certs=ca_file)
        if cert_file:
            kwargs.update(cert_file=cert_file, key_file=key_file)
        self._pool = urllib3.PoolManager(**kwargs)

    def start(self) -> None:
        self.deadline = time.monotonic() + self.limits.deadline_s

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise tuf_errors.SlowRetrievalError(
                f"the update deadline of {self.limits.deadline_s:g} s passed"
            )
        return left

    def _slow(self, exc: BaseException) -> tuf_errors.SlowRetrievalError:
        if time.monotonic() >= self.deadline - 0.05:
            return tuf_errors.SlowRetrievalError(
                f"the update deadline of {self.limits.deadline_s:g} s passed"
            )
        return tuf_errors.SlowRetrievalError(
            f"no data for {self.limits.read_timeout_s:g} s (read timeout): {exc}"
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        left = self._left()
        timeout = urllib3.Timeout(
            connect=min(self.limits.connect_timeout_s, left),
            read=min(self.limits.read_timeout_s, left),
        )
        try:
            response = self._pool.request(
                "GET", url, preload_content=False, timeout=timeout, redirect=False
            )
        except urllib3.exceptions.TimeoutError as exc:
            raise self._slow(exc) from exc
        if response.status >= 400:
            response.close()  # an unread body must not stay on a pooled connection
            raise tuf_errors.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return self._chunks(response)

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        done = False
        try:
            while True:
                left = self._left()
                conn = getattr(response, "connection", None)
                sock = getattr(conn, "sock", None)
                if isinstance(sock, socket.socket):
                    sock.settimeout(min(self.limits.read_timeout_s, left))
                chunk = response.read1(64 * 1024)
                if not chunk:
                    done = True
                    return
                self.bytes_received += len(chunk)
                yield chunk
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise self._slow(exc) from exc
        except OSError as exc:
            if time.monotonic() >= self.deadline - 0.05:
                raise self._slow(exc) from exc
            raise
        finally:
            if done:
                response.release_conn()
            else:
                response.close()  # cut short (cap, deadline): never reuse that connection


class DirectoryFetcher(FetcherInterface):
    """A copy of the repository on a USB stick: ``dir:///metadata/...`` and ``dir:///targets/``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.bytes_received = 0

    def start(self) -> None:
        return None

    def _fetch(self, url: str) -> Iterator[bytes]:
        rel = unquote(urlsplit(url).path).lstrip("/")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise tuf_errors.DownloadHTTPError(f"{rel}: not on the update medium", 404)
        return self._chunks(path)

    def _chunks(self, path: Path) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(64 * 1024):
                self.bytes_received += len(chunk)
                yield chunk


# ---- files --------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn or damaged pointer is treated as absent and rebuilt
    return doc if isinstance(doc, dict) else None


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, indent=1).encode()


@dataclass(frozen=True)
class UpdatePaths:
    state: Path

    @property
    def tuf(self) -> Path:
        return self.state / TUF_DIR / "metadata"

    @property
    def staging(self) -> Path:
        return self.state / TUF_DIR / "staging"

    @property
    def updates(self) -> Path:
        return self.state / UPDATES_DIR

    @property
    def applied(self) -> Path:
        return self.updates / APPLIED_FILE

    @property
    def last_refresh(self) -> Path:
        return self.updates / LAST_REFRESH_FILE

    @property
    def refused(self) -> Path:
        return self.updates / REFUSED_FILE

    @property
    def trust(self) -> Path:
        return self.state / "trust.sqlite"

    @property
    def lock(self) -> Path:
        return self.state / TUF_DIR / ".lock"

    def settings_file(self, name: str) -> Path:
        return self.updates / name


def pin_root(state_dir: str | Path, root_json: bytes) -> str:
    """Pin the county's root metadata at provisioning; returns its SHA-256 to compare."""
    try:
        md = Metadata.from_bytes(root_json)
        md.verify_delegate("root", md)
    except Exception as exc:
        raise UpdateRefused(f"the root metadata to pin does not verify: {exc}") from None
    if md.signed.type != "root":
        raise UpdateRefused("the file to pin is not root metadata")
    paths = UpdatePaths(Path(state_dir))
    if (paths.tuf / "root.json").exists():
        raise UpdateError(
            f"{paths.tuf / 'root.json'}: a root is pinned already; a new one comes only "
            "through a signed rotation"
        )
    paths.tuf.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.tuf / "root.json", root_json)
    return hashlib.sha256(root_json).hexdigest()


# ---- one update set ------------------------------------------------------------------


@dataclass
class PreparedSet:
    """A verified set, parsed and ready to apply; ``changed`` names what differs."""

    set_version: int
    signed_at: int | None
    detail: dict[str, Any]
    changed: list[str]
    settings: bytes | None = None
    issuers: tuple[list[Any], trust.ListHeader] | None = None
    roster: tuple[list[trust.RosterCard], trust.ListHeader] | None = None
    revocations: trust.ShardedRevocations | None = None
    bytes_downloaded: int = 0
    base_set: int | None = None  # the set in force when it was prepared (changes are relative)


@dataclass(frozen=True)
class AppliedSet:
    """What was applied: the daemon records it as a ``config_applied`` ledger entry."""

    set_version: int
    detail: dict[str, Any]
    changed: tuple[str, ...]
    settings_file: Path | None
    settings_changed: bool
    bytes_downloaded: int
    apply_s: float

    def ledger_draft(self) -> EntryDraft:
        return EntryDraft(
            kind=CONFIG_APPLIED,
            detail={"set": self.set_version, "changed": list(self.changed), **self.detail},
        )


@dataclass(frozen=True)
class StartNote:
    """What ``begin_start`` found: the settings file to load and anything to tell people."""

    settings_file: Path | None
    set_version: int | None
    rolled_back_from: int | None = None
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def ledger_draft(self) -> EntryDraft | None:
        if self.rolled_back_from is None:
            return None
        return EntryDraft(
            kind=CONFIG_APPLIED,
            reason="rolled_back",
            detail={
                "set": self.set_version,
                "rolled_back_from": self.rolled_back_from,
                "message": self.message,
                **self.detail,
            },
        )


def _target_hash(info: TargetFile) -> str:
    return str(info.hashes["sha256"])


class TerminalUpdater:
    """The TUF client of one terminal. ``prepare`` may run in any thread; ``apply`` in the
    thread that owns the trust store (the decision worker)."""

    def __init__(
        self,
        state_dir: str | Path,
        canteen_id: str,
        *,
        base_url: str | None = None,
        medium: str | Path | None = None,
        limits: UpdateLimits | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        if (base_url is None) == (medium is None):
            raise ValueError("give exactly one of base_url and medium")
        self.paths = UpdatePaths(Path(state_dir))
        self.canteen_id = canteen_id
        self.limits = limits or UpdateLimits()
        self.fetcher: DeadlineFetcher | DirectoryFetcher
        if medium is not None:
            root = Path(medium)
            if (root / "repository").is_dir():
                root = root / "repository"
            if not (root / "metadata").is_dir():
                raise UpdateError(f"{medium}: no repository copy here (metadata/ is missing)")
            self.fetcher = DirectoryFetcher(root)
            self.base = "dir:///"
        else:
            assert base_url is not None
            self.fetcher = DeadlineFetcher(
                self.limits, ca_file=ca_file, cert_file=cert_file, key_file=key_file
            )
            self.base = base_url.rstrip("/") + "/"

    # ---- fetch and verify (network; no trust.sqlite writes) ----

    def _updater(self, at_ms: int | None = None) -> Updater:
        if not (self.paths.tuf / "root.json").is_file():
            raise NotPinned(
                f"{self.paths.tuf}: no county root is pinned; provision this terminal "
                "(or 'canteen-terminal update pin-root') first"
            )
        self.paths.staging.mkdir(parents=True, exist_ok=True)
        cfg = UpdaterConfig(
            max_root_rotations=self.limits.max_root_rotations,
            root_max_length=self.limits.root_max_bytes,
            timestamp_max_length=self.limits.timestamp_max_bytes,
            snapshot_max_length=self.limits.snapshot_max_bytes,
            targets_max_length=self.limits.targets_max_bytes,
        )
        # bootstrap=None: the trust anchor is the root.json in our own state directory,
        # pinned at provisioning and since then only replaced through verified rotations.
        updater = Updater(
            str(self.paths.tuf),
            self.base + "metadata/",
            str(self.paths.staging),
            self.base + "targets/",
            fetcher=self.fetcher,
            config=cfg,
            bootstrap=None,
        )
        if at_ms is not None:
            # python-tuf judges expiry at the system clock when its trusted set is made. A
            # Pi without a real-time clock may boot far behind and would take expired
            # metadata (a freeze attack); the terminal's trusted time judges instead.
            updater._trusted_set.reference_time = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC)
        return updater

    def prepare(
        self,
        applied: dict[str, Any] | None,
        shard_hashes: dict[str, str],
        at_ms: int | None = None,
    ) -> PreparedSet:
        """Refresh the metadata and fetch what differs from ``applied``; verified and parsed.

        ``applied`` is ``TrustStore.applied_update_set()``; ``shard_hashes`` is
        ``TrustStore.revocation_shard_hashes()``. ``at_ms`` is the trusted time
        (Unix ms) every expiry is judged at; None: the system clock (a command run
        by a technician who checked it). Raises an ``UpdateError`` subclass.
        """
        with self._lock():
            self.fetcher.start()
            try:
                return self._prepare(applied or {}, shard_hashes, at_ms)
            except UpdateError:
                raise
            except tuf_errors.ExpiredMetadataError as exc:
                raise UpdatesStale(f"updates stale: {exc}") from None
            except tuf_errors.SlowRetrievalError as exc:
                raise UpdateUnavailable(f"too slow: {exc or 'the deadline passed'}") from None
            except tuf_errors.DownloadLengthMismatchError as exc:
                raise UpdateRefused(f"more data than the signed length allows: {exc}") from None
            except tuf_errors.DownloadHTTPError as exc:
                raise UpdateUnavailable(f"the county answered {exc}") from None
            except tuf_errors.DownloadError as exc:
                cause = exc.__cause__ or exc
                raise UpdateUnavailable(f"cannot reach the county: {cause}") from None
            except tuf_errors.RepositoryError as exc:
                why = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
                raise UpdateRefused(
                    f"{type(exc).__name__}: {exc or 'metadata failed verification'}{why}"
                ) from None
            except OSError as exc:
                raise UpdateUnavailable(f"cannot reach the county or write: {exc}") from None

    def prepare_in_force(self, at_ms: int | None = None) -> PreparedSet:
        """``prepare`` against the set in force, read through a connection of its own, so
        the sync thread never touches the decision worker's trust store. ``at_ms`` as
        for ``prepare`` (the daemon passes the county's signed time)."""
        store = trust.TrustStore(self.paths.trust)
        try:
            applied, shards = store.applied_update_set(), store.revocation_shard_hashes()
        finally:
            store.close()
        return self.prepare(applied, shards, at_ms)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.paths.lock.parent.mkdir(parents=True, exist_ok=True)
        with open(self.paths.lock, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _prepare(
        self, applied: dict[str, Any], shard_hashes: dict[str, str], at_ms: int | None
    ) -> PreparedSet:
        updater = self._updater(at_ms)
        updater.refresh()
        snapshot = Metadata.from_file(str(self.paths.tuf / "snapshot.json"))
        timestamp = Metadata.from_file(str(self.paths.tuf / "timestamp.json"))
        signed_at = timestamp.signed.unrecognized_fields.get(SIGNED_AT_FIELD)
        prepared = PreparedSet(
            set_version=int(snapshot.signed.version),
            signed_at=signed_at if isinstance(signed_at, int) else None,
            detail={},
            changed=[],
            base_set=applied.get("set"),
        )
        detail = prepared.detail
        refused = _read_json(self.paths.refused) or {}

        # Settings: this canteen's own file, else the one for all canteens, else none.
        info = updater.get_targetinfo(settings_target(self.canteen_id))
        if info is None:
            info = updater.get_targetinfo(settings_target(None))
        if info is not None:
            digest = _target_hash(info)
            detail["settings"] = {
                "target": info.path,
                "sha256": digest,
                "version": info.custom.get("version"),
            }
            if digest in refused.get("sha256", []):
                raise UpdateRefused(
                    f"set {prepared.set_version}: its settings ({info.path}, {digest[:12]}) "
                    "stopped this terminal from starting before; waiting for new settings"
                )
            if (applied.get("settings") or {}).get("sha256") != digest:
                data = self._download(updater, info, self.limits.settings_max_bytes)
                check_settings(data, info.path)
                prepared.settings = data
                prepared.changed.append("settings")
        elif applied.get("settings"):
            detail["settings"] = None
            prepared.changed.append("settings")

        info = updater.get_targetinfo(TRUST_TARGET)
        if info is not None:
            detail["trust"] = {"sha256": _target_hash(info), "version": info.custom.get("version")}
            if (applied.get("trust") or {}).get("sha256") != _target_hash(info):
                data = self._download(updater, info, self.limits.trust_max_bytes)
                entries, header = trust.split_list(_parse_json(data, info.path), "trust")
                prepared.issuers = (trust.parse_issuer_keys(entries), header)
                prepared.changed.append("trust")

        info = updater.get_targetinfo(ROSTER_TARGET)
        if info is not None:
            version = int(info.custom.get("version", 0))
            detail["roster"] = {"sha256": _target_hash(info), "version": version}
            if (applied.get("roster") or {}).get("sha256") != _target_hash(info):
                data = self._download(updater, info, self.limits.roster_max_bytes)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise UpdateRefused(f"{info.path}: not UTF-8") from None
                issued = info.custom.get("issued_at")
                header = trust.ListHeader(
                    version, issued if isinstance(issued, int) else None, None
                )
                prepared.roster = (trust.parse_roster_csv(text), header)
                prepared.changed.append("roster")

        info = updater.get_targetinfo(INDEX_TARGET)
        if info is not None:
            detail["revocations"] = {
                "sha256": _target_hash(info),
                "version": info.custom.get("version"),
                "count": info.custom.get("count"),
            }
            same_index = (applied.get("revocations") or {}).get("sha256") == _target_hash(info)
            if not same_index or not shard_hashes:
                prepared.revocations = self._revocations(updater, info, shard_hashes)
                prepared.changed.append("revocations")
        prepared.bytes_downloaded = self.fetcher.bytes_received
        return prepared

    def _download(self, updater: Updater, info: TargetFile, cap: int) -> bytes:
        if info.length > cap:
            raise UpdateRefused(
                f"{info.path}: the signed length {info.length} is above this terminal's "
                f"cap of {cap} bytes"
            )
        # Named by hash and kept until the set is applied: a first load of a large list
        # that runs out of time resumes where it stopped at the next sync.
        path = self.paths.staging / _target_hash(info)
        try:
            with open(path, "rb") as f:
                info.verify_length_and_hashes(f)
                f.seek(0)
                return f.read()
        except (OSError, tuf_errors.LengthOrHashMismatchError):
            pass
        updater.download_target(info, str(path))
        return path.read_bytes()

    def _revocations(
        self, updater: Updater, index_info: TargetFile, have: dict[str, str]
    ) -> trust.ShardedRevocations:
        index = _parse_json(self._download(updater, index_info, self.limits.index_max_bytes), "")
        if not isinstance(index, dict):
            raise UpdateRefused(f"{INDEX_TARGET}: not an object")
        version, count, shards = index.get("version"), index.get("count"), index.get("shards")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) for v in (version, count, shards)
        ):
            raise UpdateRefused(f"{INDEX_TARGET}: version, count and shards must be numbers")
        assert isinstance(version, int) and isinstance(count, int) and isinstance(shards, int)
        if shards != SHARD_COUNT:
            raise UpdateRefused(
                f"{INDEX_TARGET}: {shards} shards; this terminal knows {SHARD_COUNT}-shard lists"
            )
        issued = index.get("issued_at")
        header = trust.ListHeader(version, issued if isinstance(issued, int) else None, None)
        changed: dict[str, tuple[list[bytes], int, int, str]] = {}
        for shard in all_shards():
            info = updater.get_targetinfo(shard_target(shard))
            if info is None:
                raise UpdateRefused(
                    f"revocation list version {version}: shard {shard} is not listed "
                    "(a missing shard); nothing applied"
                )
            digest = _target_hash(info)
            if have.get(shard) == digest:
                continue
            empty = shard_bytes(shard, int(info.custom.get("version", 0)), [])
            if info.custom.get("count") == 0 and hashlib.sha256(empty).hexdigest() == digest:
                data = empty  # the signed hash is that of an empty shard: nothing to fetch
            else:
                data = self._download(updater, info, self.limits.shard_max_bytes)
            changed[shard] = parse_shard(data, shard, digest)
        return trust.ShardedRevocations(
            header=header, shard_count=shards, count=count, shards=changed, whole=not have
        )


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise UpdateRefused(f"{where}: not JSON: {exc}") from None


def parse_shard(data: bytes, shard: str, digest: str) -> tuple[list[bytes], int, int, str]:
    """Keys of one shard file, after checking every entry belongs to that shard."""
    where = shard_target(shard)
    doc = _parse_json(data, where)
    if not isinstance(doc, dict) or doc.get("shard") != shard:
        raise UpdateRefused(f"{where}: the file names another shard")
    entries, version, count = doc.get("entries"), doc.get("version"), doc.get("count")
    if not isinstance(entries, list) or not isinstance(version, int) or count != len(entries):
        raise UpdateRefused(f"{where}: entries, version or count are wrong")
    try:
        keys = list(trust.parse_revocations(entries))
    except trust.TrustError as exc:
        raise UpdateRefused(f"{where}: {exc}") from None
    for key in keys:
        if shard_of(key) != shard:
            raise UpdateRefused(f"{where}: an entry belongs to shard {shard_of(key)}")
    if len(set(keys)) != len(keys):
        raise UpdateRefused(f"{where}: an entry is listed twice")
    return keys, version, count, digest


def check_settings(data: bytes, origin: str) -> None:
    """Published settings must load with this terminal's loader, over its defaults."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".toml") as f:
        f.write(data)
        f.flush()
        try:
            config.load(f.name)
        except config.ConfigError as exc:
            text = str(exc).replace(f.name, origin)
            raise UpdateRefused(f"settings refused: {text}") from None


# ---- apply and start -----------------------------------------------------------------


def apply(
    state_dir: str | Path, store: trust.TrustStore, prepared: PreparedSet, now: int
) -> AppliedSet | None:
    """Apply a prepared set atomically (the trust store's owner calls this); None: no change."""
    paths = UpdatePaths(Path(state_dir))
    started = time.monotonic()
    pointer = _read_json(paths.applied) or {}
    current = store.applied_update_set()
    if not prepared.changed:
        _mark_current(store, prepared)
        shutil.rmtree(paths.staging, ignore_errors=True)
        return None
    if current is not None and prepared.set_version < current["set"]:
        raise UpdateRefused(
            f"set {prepared.set_version} is older than the set in force ({current['set']})"
        )
    in_force = current["set"] if current is not None else None
    if in_force != prepared.base_set:
        # Its changes were worked out against another set (a USB apply in between).
        raise UpdateError(
            f"the set in force changed from {prepared.base_set} to {in_force} while set "
            f"{prepared.set_version} was fetched; it will be fetched again at the next sync"
        )
    detail = dict(prepared.detail)
    settings_name = (current or {}).get("settings_file")
    if "settings" in prepared.changed:
        if prepared.settings is not None:
            settings_name = f"settings-{prepared.set_version}.toml"
            # Written and synced before the transaction that names it.
            write_atomic(paths.settings_file(settings_name), prepared.settings)
        else:
            settings_name = None
    detail["settings_file"] = settings_name
    update = trust.UpdateSet(
        set_version=prepared.set_version,
        detail=detail,
        issuers=prepared.issuers,
        roster=prepared.roster,
        revocations=prepared.revocations,
        stack_undo=not pointer.get("confirmed", True),
    )
    try:
        store.apply_update_set(update, now)
    except trust.TrustError as exc:
        raise UpdateRefused(str(exc)) from None
    _write_pointer(paths, store, confirmed=False, previous=pointer)
    _mark_current(store, prepared)
    _tidy(paths)
    shutil.rmtree(paths.staging, ignore_errors=True)
    return AppliedSet(
        set_version=prepared.set_version,
        detail={k: v for k, v in detail.items() if k != "settings_file"},
        changed=tuple(prepared.changed),
        settings_file=paths.settings_file(settings_name) if settings_name else None,
        settings_changed="settings" in prepared.changed,
        bytes_downloaded=prepared.bytes_downloaded,
        apply_s=time.monotonic() - started,
    )


def _mark_current(store: trust.TrustStore, prepared: PreparedSet) -> None:
    if prepared.signed_at is not None:
        store.mark_lists_current((trust.REVOCATIONS, trust.ROSTER), prepared.signed_at)


def _write_pointer(
    paths: UpdatePaths,
    store: trust.TrustStore,
    *,
    confirmed: bool,
    previous: dict[str, Any] | None = None,
    starts: int = 0,
) -> dict[str, Any]:
    applied = store.applied_update_set() or {}
    doc = {
        "set": applied.get("set"),
        "settings": applied.get("settings_file"),
        "settings_sha256": (applied.get("settings") or {}).get("sha256"),
        "confirmed": confirmed,
        "starts": starts,
        "previous_set": (previous or {}).get("set"),
    }
    write_atomic(paths.applied, _json_bytes(doc))
    return doc


def _tidy(paths: UpdatePaths) -> None:
    """Keep the settings files the pointer and the undo may still need; drop the rest."""
    pointer = _read_json(paths.applied) or {}
    keep = {pointer.get("settings")}
    files = sorted(paths.updates.glob("settings-*.toml"), key=lambda p: p.stat().st_mtime)
    keep.update(p.name for p in files[-3:])  # the last good set's file is among these
    for p in files:
        if p.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def begin_start(state_dir: str | Path, store: trust.TrustStore) -> StartNote:
    """Call once at every start, before loading settings: reconcile, and roll back if needed.

    - trust.sqlite is the truth; ``applied.json`` is rewritten from it when a crash fell
      between the transaction and the pointer (its settings file was synced before).
    - a set not yet confirmed whose previous start never reached ``confirm_started`` is
      taken back whole: lists and settings of the last good set return, and its settings
      are remembered as refused so the next refresh does not bring them back.
    """
    paths = UpdatePaths(Path(state_dir))
    applied = store.applied_update_set()
    if applied is None:
        return StartNote(None, None)
    pointer = _read_json(paths.applied)
    name = applied.get("settings_file")
    if name and not _settings_intact(paths, name, applied):
        # Cannot happen with synced writes; if a card was swapped or damaged, go back.
        return _roll_back(paths, store, applied, "its settings file is missing or damaged")
    if pointer is None or pointer.get("set") != applied["set"]:
        pointer = _write_pointer(paths, store, confirmed=False, previous=pointer)
    if not pointer.get("confirmed", False):
        starts = int(pointer.get("starts", 0))
        if starts >= 1:
            return _roll_back(paths, store, applied, "the terminal did not start with it")
        pointer = _write_pointer(
            paths,
            store,
            confirmed=False,
            previous={"set": pointer.get("previous_set")},
            starts=starts + 1,
        )
    settings = paths.settings_file(name) if name else None
    return StartNote(settings, applied["set"])


def _settings_intact(paths: UpdatePaths, name: str, applied: dict[str, Any]) -> bool:
    expected = (applied.get("settings") or {}).get("sha256")
    try:
        data = paths.settings_file(name).read_bytes()
    except OSError:
        return False
    return expected is None or hashlib.sha256(data).hexdigest() == expected


def _roll_back(
    paths: UpdatePaths, store: trust.TrustStore, bad: dict[str, Any], why: str
) -> StartNote:
    bad_set = int(bad["set"])
    digest = (bad.get("settings") or {}).get("sha256")
    if digest:
        refused = _read_json(paths.refused) or {}
        hashes = [*[h for h in refused.get("sha256", []) if h != digest][-9:], digest]
        write_atomic(paths.refused, _json_bytes({"sha256": hashes, "set": bad_set, "why": why}))
    try:
        previous = store.roll_back_update_set()
    except trust.TrustError:
        previous = None
    _write_pointer(paths, store, confirmed=True, previous={"set": bad_set})
    version = previous["set"] if previous else None
    name = previous.get("settings_file") if previous else None
    message = (
        f"update set {bad_set} was taken back because {why}; "
        + (f"the last good set {version} is in force" if version else "no set is in force")
        + ". Tell county IT."
    )
    return StartNote(
        paths.settings_file(name) if name else None,
        version,
        rolled_back_from=bad_set,
        message=message,
    )


def confirm_started(state_dir: str | Path, store: trust.TrustStore) -> None:
    """The daemon is up with the set in force: it becomes the last good set."""
    paths = UpdatePaths(Path(state_dir))
    pointer = _read_json(paths.applied)
    if pointer is not None and pointer.get("confirmed"):
        return
    if store.applied_update_set() is None:
        return
    _write_pointer(paths, store, confirmed=True, previous=pointer)


def effective_settings(local: str | Path | None, note: StartNote) -> config.Settings:
    """The settings in force: embedded defaults, then the local file, then the published set.

    The published file may not name [terminal] id or state_dir (the county refuses to
    sign one that does), so a device keeps its own identity and state directory.
    """
    doc = config.read(local)
    if note.settings_file is not None:
        published = note.settings_file.read_text(encoding="utf-8")
        doc = doc.over(published, f"{note.settings_file} (update set {note.set_version})")
    return config.build(doc)


# ---- status and the one-call path for commands ---------------------------------------


def record_refresh(state_dir: str | Path, outcome: dict[str, Any]) -> None:
    paths = UpdatePaths(Path(state_dir))
    write_atomic(paths.last_refresh, _json_bytes(outcome))


def status(state_dir: str | Path, store: trust.TrustStore, now: int) -> dict[str, Any]:
    """What is in force, whether it is confirmed, and whether updates are stale."""
    paths = UpdatePaths(Path(state_dir))
    applied = store.applied_update_set()
    pointer = _read_json(paths.applied) or {}
    out: dict[str, Any] = {
        "pinned": (paths.tuf / "root.json").is_file(),
        "set": applied["set"] if applied else None,
        "confirmed": bool(pointer.get("confirmed")),
        "settings_file": pointer.get("settings"),
        "last_refresh": _read_json(paths.last_refresh),
        "state": "no updates yet",
    }
    try:
        ts = Metadata.from_file(str(paths.tuf / "timestamp.json"))
        root = Metadata.from_file(str(paths.tuf / "root.json"))
    except Exception:
        return out
    expires = int(ts.signed.expires.timestamp())
    out.update(
        root_version=root.signed.version,
        timestamp_version=ts.signed.version,
        timestamp_expires=expires,
        signed_at=ts.signed.unrecognized_fields.get(SIGNED_AT_FIELD),
    )
    last = out["last_refresh"] or {}
    if now >= expires or last.get("kind") == UpdatesStale.kind:
        out["state"] = "updates stale"
        out["what_to_do"] = (
            "the county's signed timestamp has expired: check the network to the county "
            "server; county IT must keep 'canteen-county serve' (or 'timestamp refresh') running"
        )
    else:
        out["state"] = "current"
    for name in trust.LIST_NAMES:
        info = store.list_info(name)
        out[name] = info.__dict__ if info else None
    return out


def update_once(updater: TerminalUpdater, store: trust.TrustStore, now: int) -> AppliedSet | None:
    """Prepare and apply in the calling thread (commands, tests); records the outcome."""
    state = updater.paths.state
    try:
        prepared = updater.prepare(
            store.applied_update_set(), store.revocation_shard_hashes(), now * 1000
        )
        result = apply(state, store, prepared, now)
    except UpdateError as exc:
        record_refresh(state, {"at": now, "ok": False, "kind": exc.kind, "reason": str(exc)})
        raise
    except trust.TrustError as exc:
        record_refresh(state, {"at": now, "ok": False, "kind": "refused", "reason": str(exc)})
        raise UpdateRefused(str(exc)) from None
    record_refresh(
        state,
        {
            "at": now,
            "ok": True,
            "set": prepared.set_version,
            "applied": result is not None,
            "changed": prepared.changed,
            "bytes": prepared.bytes_downloaded,
        },
    )
    return result


def updater_for_county(
    state_dir: str | Path, limits: UpdateLimits | None = None
) -> TerminalUpdater:
    """The updater for the county server this terminal was provisioned with (mTLS)."""
    from terminal.sync import load_identity

    identity = load_identity(state_dir)
    return TerminalUpdater(
        state_dir,
        identity.canteen,
        base_url=identity.server.rstrip("/") + "/tuf",
        limits=limits,
        ca_file=str(identity.ca_file),
        cert_file=str(identity.cert_file),
        key_file=str(identity.key_file),
    )
