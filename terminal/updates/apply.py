"""Signed updates from county IT: verify one set with python-tuf, apply it atomically, roll back.

This module owns the terminal's TUF client state in ``STATE/tuf/`` (the root
pinned at provisioning, then whatever verified), the fetch of one update set
(the county-wide settings and this canteen's own, the issuer trust list, the card
roster, the agency directory and the changed revocation shards) under size caps
and one total deadline, through terminal/link/fetch.py (the county link) or from
a USB copy; the checks python-tuf does not know about (a shard's entries hash to
that shard, shard and entry counts match the index, the settings layers pass the
terminal's own loader laid in order, the directory passes
protocol.agencies.parse_directory); and the atomic apply: the set's settings and
directory files are written first (temp file, fsync, rename, fsync of the
directory), then one trust.sqlite transaction replaces the lists and shards and
records the set, and last ``updates/applied.json`` names the set and its files.
``roll_back`` takes a set back whole (the start-up marker in
terminal/updates/marker.py decides when). It never decides a verdict,
never writes the ledger (it returns what the daemon records as
``config_applied``) and never trusts a byte that python-tuf has not verified
against the pinned root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from tuf.api import exceptions as tuf_errors
from tuf.api._payload import (  # re-exported by tuf.api.metadata, not to mypy
    SuccinctRoles,
    TargetFile,
)
from tuf.api.metadata import Metadata
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

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
    layers_digest,
    settings_target,
    shard_bytes,
    shard_of,
    shard_target,
)
from terminal import config, trust
from terminal.durable import write_atomic
from terminal.ledger import CONFIG_APPLIED, EntryDraft
from terminal.link.fetch import DirectoryFetcher, LinkFetcher
from terminal.link.transport import Link

# Files in the terminal's state directory.
TUF_DIR = "tuf"
UPDATES_DIR = "updates"
APPLIED_FILE = "applied.json"
LAST_REFRESH_FILE = "last-refresh.json"
REFUSED_FILE = "refused-settings.json"
UNRECORDED_FILE = "unrecorded.json"


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
    # 100,000 agencies and canteens (protocol.agencies.MAX_ROWS each) at ~150 bytes a row.
    directory_max_bytes: int = DIRECTORY_MAX_BYTES
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


# ---- files --------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn or damaged pointer is treated as absent and rebuilt
    return doc if isinstance(doc, dict) else None


def json_bytes(doc: Any) -> bytes:
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
    def unrecorded(self) -> Path:
        """A set applied by a command (USB medium or ``update fetch``) while the daemon
        was stopped, which the daemon records in the ledger at its next start."""
        return self.updates / UNRECORDED_FILE

    @property
    def trust(self) -> Path:
        return self.state / "trust.sqlite"

    @property
    def lock(self) -> Path:
        return self.state / TUF_DIR / ".lock"

    def settings_file(self, name: str) -> Path:
        return self.updates / name

    def directory_file(self, name: str) -> Path:
        return self.updates / name


# The files one set's settings are written to, in the updates folder: the county-wide
# published file alone as settings-SET.toml; when the canteen has its own file too, that
# one as settings-SET-own.toml over the county-wide one as settings-SET-all.toml. The name
# of the set's own file says whether a layer lies beneath it, so a note made from that
# name alone (the daemon's, after a live apply) lays both.
OWN_SUFFIX = "-own.toml"
UNDER_SUFFIX = "-all.toml"


def settings_names(set_version: int, layers: int) -> list[str]:
    """The file names of a set's settings layers, lowest first (``layers`` is 1 or 2)."""
    if layers == 2:
        return [f"settings-{set_version}{UNDER_SUFFIX}", f"settings-{set_version}{OWN_SUFFIX}"]
    return [f"settings-{set_version}.toml"]


def layered_settings(top: Path | None) -> tuple[Path, ...]:
    """The published settings files of the set whose own file is ``top``, lowest first:
    the county-wide file beneath it when the set had both, then ``top``."""
    if top is None:
        return ()
    if top.name.startswith("settings-") and top.name.endswith(OWN_SUFFIX):
        return (top.with_name(top.name[: -len(OWN_SUFFIX)] + UNDER_SUFFIX), top)
    return (top,)


def installed_directory(state: str | Path | UpdatePaths) -> Directory | None:
    """The agency directory of the update set in force, or None when no set brought one.

    Read from the file ``updates/applied.json`` names, checked against the hash the set
    recorded and with protocol.agencies.parse_directory; a missing or damaged file is an
    ``UpdateError`` (``begin_start`` takes such a set back before the daemon loads it)."""
    paths = state if isinstance(state, UpdatePaths) else UpdatePaths(Path(state))
    pointer = read_json(paths.applied) or {}
    name = pointer.get("directory")
    if not isinstance(name, str) or not name:
        return None
    file = paths.directory_file(name)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UpdateError(f"{file}: the installed agency directory cannot be read: {exc}") from None
    expected = pointer.get("directory_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise UpdateError(f"{file}: the installed agency directory is damaged (hash differs)")
    return _directory(data, str(file), UpdateError)


def _directory(data: bytes, where: str, error: type[UpdateError]) -> Directory:
    """The directory in ``data``, or ``error`` with one line (the first problem, and how
    many more there are)."""
    try:
        return parse_directory(json.loads(data), where)
    except (ValueError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the decoder goes; no directory is.
        raise error(f"{where}: not JSON: {exc}") from None
    except DirectoryError as exc:
        if not exc.lines:
            raise error(f"{where}: not a usable agency directory") from None
        more = len(exc.lines) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise error(f"{exc.lines[0]}{tail}") from None


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
    settings: bytes | None = None  # this canteen's own file, or the county-wide one alone
    settings_under: bytes | None = None  # the county-wide file beneath the canteen's own
    directory: bytes | None = None  # the agency directory's signed bytes, already checked
    issuers: tuple[list[Any], trust.ListHeader] | None = None
    roster: tuple[list[trust.RosterCard], trust.ListHeader] | None = None
    revocations: trust.ShardedRevocations | None = None
    bytes_downloaded: int = 0
    base_set: int | None = None  # the set in force when it was prepared (changes are relative)
    shards_looked_up: int = 0  # revocation shards whose signed hash was read (see _revocations)


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
    directory_file: Path | None = None

    @property
    def settings_files(self) -> tuple[Path, ...]:
        """The set's published settings files, lowest layer first."""
        return layered_settings(self.settings_file)

    def ledger_draft(self) -> EntryDraft:
        return EntryDraft(
            kind=CONFIG_APPLIED,
            detail={"set": self.set_version, "changed": list(self.changed), **self.detail},
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
        link: Link | None = None,
    ) -> None:
        """``link``: a Link to the county to fetch through (the sync's, whose connection
        the refresh then rides: docs/county-scale.md), instead of one of its own; the
        refresh closes it either way."""
        if (base_url is None) == (medium is None):
            raise ValueError("give exactly one of base_url and medium")
        self.paths = UpdatePaths(Path(state_dir))
        self.canteen_id = canteen_id
        self.limits = limits or UpdateLimits()
        self.fetcher: LinkFetcher | DirectoryFetcher
        self.link: Link | None = None
        self._at_ms: int | None = None
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
            ca = None
            if ca_file:
                ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
            # The county's certificate is checked at the wall clock or at the trusted
            # time the refresh judges expiry at (a Pi may boot far behind); a mirror
            # named without the county CA by the system's CAs.
            self.link = link or Link(
                ca,
                system_trust=ca is None,
                client_cert=(cert_file, key_file or cert_file) if cert_file else None,
                county_time=lambda: self._at_ms,
                connect_timeout_s=self.limits.connect_timeout_s,
                read_timeout_s=self.limits.read_timeout_s,
            )
            self.fetcher = LinkFetcher(
                self.link,
                self.limits.deadline_s,
                (self.limits.connect_timeout_s, self.limits.read_timeout_s),
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
            self._at_ms = at_ms
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
            finally:
                if self.link is not None:
                    self.link.close()  # no pooled connection outlives the refresh

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
        refused = read_json(self.paths.refused) or {}

        # Settings in layers: the file for all canteens, then this canteen's own over it
        # (either may be missing); the terminal lays them over its local file in that order.
        layers = [
            found
            for found in (
                updater.get_targetinfo(settings_target(None)),
                updater.get_targetinfo(settings_target(self.canteen_id)),
            )
            if found is not None
        ]
        if layers:
            top = layers[-1]
            digest = layers_digest([_target_hash(i) for i in layers])
            detail["settings"] = {
                "target": top.path,
                "sha256": digest,
                "version": top.custom.get("version"),
                "layers": [
                    {
                        "target": i.path,
                        "sha256": _target_hash(i),
                        "version": i.custom.get("version"),
                    }
                    for i in layers
                ],
            }
            if digest in refused.get("sha256", []):
                named = " + ".join(i.path for i in layers)
                raise UpdateRefused(
                    f"set {prepared.set_version}: its settings ({named}, {digest[:12]}) "
                    "stopped this terminal from starting before; waiting for new settings"
                )
            if (applied.get("settings") or {}).get("sha256") != digest:
                texts = [
                    (self._download(updater, i, self.limits.settings_max_bytes), i.path)
                    for i in layers
                ]
                check_settings_layers(texts)
                prepared.settings = texts[-1][0]
                prepared.settings_under = texts[0][0] if len(texts) == 2 else None
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

        info = updater.get_targetinfo(DIRECTORY_TARGET)
        if info is not None:
            issued = info.custom.get("issued_at")
            detail["directory"] = {
                "sha256": _target_hash(info),
                "version": info.custom.get("version"),
                "issued_at": issued if isinstance(issued, int) else None,
            }
            if (applied.get("directory") or {}).get("sha256") != _target_hash(info):
                data = self._download(updater, info, self.limits.directory_max_bytes)
                _directory(data, info.path, UpdateRefused)  # refused whole: the old one stays
                prepared.directory = data
                prepared.changed.append("directory")
        elif applied.get("directory"):
            detail["directory"] = None
            prepared.changed.append("directory")

        info = updater.get_targetinfo(INDEX_TARGET)
        if info is not None:
            detail["revocations"] = {
                "sha256": _target_hash(info),
                "version": info.custom.get("version"),
                "count": info.custom.get("count"),
            }
            bins = _bin_versions(snapshot)
            detail["revocations"]["bins"] = bins
            before = applied.get("revocations") or {}
            same_index = before.get("sha256") == _target_hash(info)
            if not same_index or not shard_hashes:
                kept = before.get("bins")
                settled = set()
                if shard_hashes and isinstance(kept, list) and len(kept) == len(bins):
                    pairs = zip(_BINS_NAMES, kept, bins, strict=True)
                    settled = {name for name, a, b in pairs if a == b}
                prepared.revocations, prepared.shards_looked_up = self._revocations(
                    updater, info, shard_hashes, settled
                )
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
        self,
        updater: Updater,
        index_info: TargetFile,
        have: dict[str, str],
        settled: set[str],
    ) -> tuple[trust.ShardedRevocations, int]:
        """The shards that differ from ``have`` (the hashes in force), fetched and parsed,
        and how many shards were looked up.

        ``settled`` names the bins whose version is the one the shards in force came
        from (the snapshot signs each bin's version, and a bin of a given version is the
        file this terminal verified then): their shards are in force as signed, and are
        not looked up again. Looking up all 4,096 shards meant verifying all 64 bins and
        walking the delegations 4,096 times for each new revocation, which changes one
        bin: a prepare after one revocation took 0.33 s of CPU on the x86_64 work machine,
        0.13 s now."""
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
        looked_up = 0
        for shard in all_shards():
            target = shard_target(shard)
            if shard in have and _BINS.get_role_for_target(target) in settled:
                continue
            looked_up += 1
            info = updater.get_targetinfo(target)
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
        revocations = trust.ShardedRevocations(
            header=header, shard_count=shards, count=count, shards=changed, whole=not have
        )
        return revocations, looked_up


# The delegated roles that list the revocation shards (the county's succinct delegation).
_BINS = SuccinctRoles([], 1, BIN_BITS, BIN_PREFIX)
_BINS_NAMES = list(_BINS.get_roles())


def _bin_versions(snapshot: Metadata[Any]) -> list[int]:
    """The version the snapshot signs for each bin, in bin order (0 for one not listed)."""
    meta = snapshot.signed.meta
    return [
        int(meta[f"{name}.json"].version) if f"{name}.json" in meta else 0 for name in _BINS_NAMES
    ]


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
    check_settings_layers([(data, origin)])


def check_settings_layers(layers: list[tuple[bytes, str]]) -> None:
    """Published settings files, lowest first, must load with this terminal's loader when
    laid in that order over its embedded defaults (the county-wide file, then this
    canteen's own: a canteen file may name only the options it changes)."""
    try:
        config.load_layers(layers)
    except config.ConfigError as exc:
        raise UpdateRefused(f"settings refused: {exc}") from None


# ---- apply and start -----------------------------------------------------------------


def apply(
    state_dir: str | Path, store: trust.TrustStore, prepared: PreparedSet, now: int
) -> AppliedSet | None:
    """Apply a prepared set atomically (the trust store's owner calls this); None: no change."""
    paths = UpdatePaths(Path(state_dir))
    started = time.monotonic()
    pointer = read_json(paths.applied) or {}
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
    settings_names_now = (current or {}).get("settings_files")
    if "settings" in prepared.changed:
        if prepared.settings is not None:
            layers = [d for d in (prepared.settings_under, prepared.settings) if d is not None]
            settings_names_now = settings_names(prepared.set_version, len(layers))
            # Written and synced before the transaction that names them.
            for name, data in zip(settings_names_now, layers, strict=True):
                write_atomic(paths.settings_file(name), data)
            settings_name = settings_names_now[-1]
        else:
            settings_name = settings_names_now = None
    detail["settings_file"] = settings_name
    detail["settings_files"] = settings_names_now
    directory_name = (current or {}).get("directory_file")
    if "directory" in prepared.changed:
        if prepared.directory is not None:
            directory_name = f"directory-{prepared.set_version}.json"
            write_atomic(paths.directory_file(directory_name), prepared.directory)
        else:
            directory_name = None
    detail["directory_file"] = directory_name
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
    write_pointer(paths, store, confirmed=False, previous=pointer)
    _mark_current(store, prepared)
    _tidy(paths, keep=_files_of(current or {}))
    shutil.rmtree(paths.staging, ignore_errors=True)
    return AppliedSet(
        set_version=prepared.set_version,
        detail={k: v for k, v in detail.items() if k not in _FILE_KEYS},
        changed=tuple(prepared.changed),
        settings_file=paths.settings_file(settings_name) if settings_name else None,
        settings_changed="settings" in prepared.changed,
        bytes_downloaded=prepared.bytes_downloaded,
        apply_s=time.monotonic() - started,
        directory_file=paths.directory_file(directory_name) if directory_name else None,
    )


# Keys of an applied set's detail that name files in this terminal's state directory.
_FILE_KEYS = ("settings_file", "settings_files", "directory_file")


def _files_of(applied: dict[str, Any]) -> set[str]:
    """The names of the files in the updates folder that an applied set uses."""
    names = {applied.get("settings_file"), applied.get("directory_file")}
    names.update(applied.get("settings_files") or ())
    return {n for n in names if isinstance(n, str)}


def _mark_current(store: trust.TrustStore, prepared: PreparedSet) -> None:
    if prepared.signed_at is not None:
        store.mark_lists_current((trust.REVOCATIONS, trust.ROSTER), prepared.signed_at)


def write_pointer(
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
        "settings_files": applied.get("settings_files"),
        "settings_sha256": (applied.get("settings") or {}).get("sha256"),
        "directory": applied.get("directory_file"),
        "directory_sha256": (applied.get("directory") or {}).get("sha256"),
        "confirmed": confirmed,
        "starts": starts,
        "previous_set": (previous or {}).get("set"),
    }
    write_atomic(paths.applied, json_bytes(doc))
    return doc


def _tidy(paths: UpdatePaths, keep: set[str] | None = None) -> None:
    """Keep the settings and directory files the pointer, the set before it (``keep``)
    and the undo may still need; drop the rest."""
    pointer = read_json(paths.applied) or {}
    wanted = set(keep or ())
    wanted.update(n for n in (pointer.get("settings"), pointer.get("directory")) if n)
    wanted.update(pointer.get("settings_files") or ())
    kinds = (
        [p for p in paths.updates.glob("settings-*.toml") if not p.name.endswith(UNDER_SUFFIX)],
        list(paths.updates.glob(f"settings-*{UNDER_SUFFIX}")),
        list(paths.updates.glob("directory-*.json")),
    )
    for files in kinds:
        files.sort(key=_set_of_file)
        wanted.update(p.name for p in files[-3:])  # the last good set's files are among these
    # A canteen's own file that is kept keeps the county-wide file beneath it.
    wanted.update(p.name for n in list(wanted) for p in layered_settings(paths.updates / n))
    for files in kinds:
        for p in files:
            if p.name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


def _set_of_file(path: Path) -> tuple[int, float]:
    """The set a settings or directory file was written for (files sort by it)."""
    digits = path.name.split("-")[1].split(".")[0]
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return (int(digits) if digits.isdigit() else -1, mtime)


def roll_back(
    paths: UpdatePaths, store: trust.TrustStore, bad: dict[str, Any], why: str
) -> tuple[int | None, Path | None, str]:
    """Take set ``bad`` back whole: (the set now in force, its settings file, a message).

    The last good set's lists and settings return, and the bad set's settings are
    remembered as refused so that the next refresh does not bring them back.
    """
    bad_set = int(bad["set"])
    digest = (bad.get("settings") or {}).get("sha256")
    if digest:
        refused = read_json(paths.refused) or {}
        hashes = [*[h for h in refused.get("sha256", []) if h != digest][-9:], digest]
        write_atomic(paths.refused, json_bytes({"sha256": hashes, "set": bad_set, "why": why}))
    try:
        previous = store.roll_back_update_set()
    except trust.TrustError:
        previous = None
    write_pointer(paths, store, confirmed=True, previous={"set": bad_set})
    version = previous["set"] if previous else None
    name = previous.get("settings_file") if previous else None
    message = (
        f"update set {bad_set} was taken back because {why}; "
        + (f"the last good set {version} is in force" if version else "no set is in force")
        + ". Tell county IT."
    )
    return version, paths.settings_file(name) if name else None, message


def updater_for_county(
    state_dir: str | Path, limits: UpdateLimits | None = None, link: Link | None = None
) -> TerminalUpdater:
    """The updater for the county server this terminal was provisioned with (mTLS);
    ``link``: the sync's Link, to ride its connection (``TerminalUpdater``)."""
    from terminal.link.provision import load_identity

    identity = load_identity(state_dir)
    return TerminalUpdater(
        state_dir,
        identity.canteen,
        base_url=identity.server.rstrip("/") + "/tuf",
        limits=limits,
        ca_file=str(identity.ca_file),
        cert_file=str(identity.cert_file),
        key_file=str(identity.key_file),
        link=link,
    )
