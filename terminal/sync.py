"""Upload the ledger to the county server: one sync, applying its answer, and the schedule.

This module owns the upload side of docs/sync-protocol.md: one sync
(``SyncClient.sync_once``: read the unacknowledged entries through its own
read-only SQLite connection, post them in batches over the county link under one
total deadline, check the county's signed time and return a ``SyncResult``), and
the schedule (``SyncSchedule``: one APScheduler 3 job with one custom trigger,
``SyncTrigger``: up to ``jitter_s`` early after a success, capped exponential
backoff with full jitter after failures, at once after a sale (``nudge()``) or
while a backlog remains; its due times kept on the monotonic clock, so a
wall-clock step neither parks it nor makes it spin). The transport, provisioning
and the update fetch are in terminal/link/. It never writes the ledger and never
blocks a decision: the one decision worker owns ledger writes, so the result goes
back through a callback, and the owner of the ledger applies it with
``apply_result`` (mark the acknowledged entries, raise the trusted-time floor,
record the county time when the offset changes materially). In the daemon the
callback puts the result on the decision queue; ``canteen-terminal sync --once``
applies it directly:

    client = SyncClient(ledger_path, load_identity(state_dir), settings)
    result = client.sync_once(time.monotonic() + settings.deadline_s)   # any thread
    applied = apply_result(ledger, checkout.clock, result, wall_ms)     # ledger owner only

The server certificate must chain to the pinned county CA; its validity dates
are checked at the wall clock or at the newest county time this terminal holds
(terminal/link/transport.py, ``ServerCheck``), because a Pi without a real-time
clock may boot a year behind or years ahead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import random
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.chain import HASHED_COLUMNS, checkpoint_message
from protocol.wire import SOFTWARE_MAX_CHARS, STATUS_LISTS
from terminal.config import SyncSettings
from terminal.core.clock import TrustedClock
from terminal.ledger import TIME_SIGNAL, EntryDraft, Ledger, LedgerEntry, load_or_create_signing_key
from terminal.link.provision import CountyIdentity, ca_fingerprint, check_signed_time
from terminal.link.transport import (
    Link,
    LinkError,
    NetworkError,
    NotProvisioned,
    ProtocolError,
    ServerRefused,
    problem_text,
)

log = logging.getLogger(__name__)

# The sync thread shares the interpreter with the decision worker. A thread that wakes
# from an fsync waits for the GIL up to the switch interval while another runs Python:
# Python's 5 ms default showed in the decisions' p99 while a backlog uploaded
# (bench/sync.py); 0.5 ms bounds that wait at a cost that does not show.
SWITCH_INTERVAL_S = 0.0005


def share_the_interpreter() -> None:
    """Shorten the interpreter's switch interval (SWITCH_INTERVAL_S) for the process.

    The daemon calls it once, when its sync thread starts beside the decision worker;
    a one-off command or a test that only builds a client leaves the process as it was.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))


def software_version() -> str:
    """This terminal's software version (the installed distribution's), for its status."""
    try:
        return importlib.metadata.version("canteen-terminal")[:SOFTWARE_MAX_CHARS]
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- errors (the link's, terminal/link/transport.py, and the sync's own) ----------------


class SyncError(LinkError):
    """A sync did not complete for a reason of its own (no ledger, no ledger key, ...)."""

    kind = "sync"


class LedgerKeyMissing(SyncError):
    """The key that signs this ledger's checkpoints is not here: batches cannot be signed."""

    kind = "ledger"


class LedgerUnreadable(SyncError):
    """The ledger could not be read (a SQLite or file error): retry later."""

    kind = "ledger"


# Failures worth a retry after the backoff; any other (a refusal, no identity) waits long.
RETRY_SOON: tuple[type[LinkError], ...] = (
    NetworkError,
    ProtocolError,
    LedgerKeyMissing,
    LedgerUnreadable,
)


def encode_body(doc: Any) -> bytes:
    """A request body as compact JSON; a ``WireBatch`` goes in as the text SQLite built.

    Encoding 500 entries with json.dumps holds the GIL for a millisecond or more in one
    piece, and the decision worker waits for it (bench/sync.py, "decisions while a
    backlog uploads"); the batch's text is spliced in instead.
    """
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, WireBatch):
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    rest = {k: v for k, v in doc.items() if k != "entries"}
    head = json.dumps(rest, separators=(",", ":"), ensure_ascii=False)
    return (head[:-1] + (',"entries":' if rest else '"entries":') + entries.text + "}").encode()


# --- reading the ledger (read-only, never the writer's connection) -----------------------

_SELECT_WIRE = "SELECT " + ", ".join(HASHED_COLUMNS) + ", prev_hash, hash FROM entries"
# One batch as the wire's JSON text (an array of entry arrays), built inside SQLite: the
# sqlite3 module releases the GIL while a statement steps, so the sync thread does not
# hold it for the fetch, the hex and the encoding of every row (issue 12, performance).
_WIRE_JSON = (
    "SELECT json_group_array(json_array("
    + ", ".join(HASHED_COLUMNS)
    + ", lower(hex(prev_hash)), lower(hex(hash)))), count(*), min(seq), max(seq) FROM"
    " (SELECT * FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?)"
)


@dataclass(frozen=True)
class WireBatch:
    """Entries ready for the wire: their JSON text, and the first and last as lists (what
    the batch's checkpoints need). ``len`` and ``[0]`` / ``[-1]`` work as on a list."""

    text: str
    count: int
    first: list[Any] | None
    last: list[Any] | None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> list[Any]:
        row = self.first if index == 0 else self.last if index in (-1, self.count - 1) else None
        if row is None:
            raise IndexError(index)
        return row


EMPTY_BATCH = WireBatch("[]", 0, None, None)
# How far back to look for the last recorded county time; without one in this
# window the next signal is recorded again, so at most one entry per window.
_TIME_SIGNAL_LOOKBACK = 5000


class LedgerReader:
    """A read-only view of a ledger for the sync thread (WAL lets it read beside the writer)."""

    def __init__(self, path: Path) -> None:
        file = path.absolute()
        if not file.is_file():
            raise SyncError(f"no ledger at {file}")
        self.conn = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, isolation_level=None)
        self.conn.execute("PRAGMA query_only=ON")

    def close(self) -> None:
        self.conn.close()

    def terminal_id(self) -> str:
        row = self.conn.execute("SELECT terminal_id FROM meta").fetchone()
        if row is None:
            raise SyncError("the ledger has no terminal identity")
        return str(row[0])

    def last_seq(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0])

    def first_unacked(self) -> int | None:
        row = self.conn.execute("SELECT min(seq) FROM entries WHERE acked_at_ms IS NULL")
        value = row.fetchone()[0]
        return None if value is None else int(value)

    def wire_batch(self, from_seq: int, limit: int, up_to: int) -> WireBatch:
        """Entries ``from_seq`` .. ``up_to`` (at most ``limit``) as a ``WireBatch``, read in
        one snapshot so the text and the end rows agree."""
        self.conn.execute("BEGIN")
        try:
            text, count, low, high = self.conn.execute(
                _WIRE_JSON, (from_seq, up_to, limit)
            ).fetchone()
            if not count:
                return EMPTY_BATCH
            ends = self.batch(low, 1) + self.batch(high, 1)
        finally:
            self.conn.execute("COMMIT")
        return WireBatch(str(text), int(count), ends[0], ends[-1])

    def batch(self, from_seq: int, limit: int) -> list[list[Any]]:
        rows = self.conn.execute(
            _SELECT_WIRE + " WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
        ).fetchall()
        return [[*row[:16], row[16].hex(), row[17].hex()] for row in rows]

    def checkpoints(self, first: int, last: int) -> list[list[Any]]:
        rows = self.conn.execute(
            "SELECT seq, hash, at_ms, signature FROM checkpoints WHERE seq BETWEEN ? AND ?"
            " ORDER BY seq",
            (first, last),
        ).fetchall()
        return [[r[0], r[1].hex(), r[2], r[3].hex()] for r in rows]

    def public_key(self) -> bytes:
        row = self.conn.execute("SELECT public_key FROM meta").fetchone()
        if row is None:
            raise SyncError("the ledger has no terminal identity")
        return bytes(row[0])

    def last_time_signal(self, last_seq: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT detail FROM entries WHERE seq > ? AND kind = ? ORDER BY seq DESC LIMIT 1",
            (last_seq - _TIME_SIGNAL_LOOKBACK, TIME_SIGNAL),
        ).fetchone()
        if row is None:
            return None
        detail = json.loads(row[0])
        return detail if isinstance(detail, dict) else None


# --- one sync ---------------------------------------------------------------------------


@dataclass
class SyncResult:
    """What one sync found out; applied by the ledger's owner with ``apply_result``."""

    terminal_id: str
    started_wall_ms: int
    local_last_seq: int = 0  # the ledger's last entry when the sync read it
    acked_seq: int | None = None  # highest contiguous seq the server holds (never above local)
    sent: int = 0  # entries posted, resent duplicates included
    batches: int = 0
    duplicates: int = 0  # entries the server already held
    gaps: int = 0  # "gap" answers (the server told us where to resume)
    server_ms: int | None = None  # the county's signed time from the last answer
    time_signal: dict[str, Any] | None = None  # signature, nonce, acked mark for the ledger
    offset_ms: int | None = None  # county time minus the local wall clock (midpoint estimate)
    rtt_ms: int | None = None
    last_recorded_offset_ms: int | None = None  # from the newest TIME_SIGNAL entry
    # When the last signed time arrived, by this terminal's monotonic and wall clocks (ms):
    # the anchor a wrong wall clock is replaced by (TrustedClock.take_county_time).
    answer_mono_ms: int | None = None
    answer_wall_ms: int | None = None
    error: str | None = None
    error_kind: str | None = None  # the failure's kind, for logs and JSON
    failure: LinkError | None = None  # what went wrong, matched by class (RETRY_SOON)
    alarm: str | None = None  # the server's alarm when it refused (fork, altered, ...)
    duration_ms: int = 0
    ended_mono: float = 0.0  # time.monotonic() when the sync ended
    details: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the server holds every entry the ledger had when the sync read it."""
        return (
            self.error is None
            and self.acked_seq is not None
            and (self.acked_seq >= self.local_last_seq)
        )

    def summary(self) -> dict[str, Any]:
        return {
            "terminal": self.terminal_id,
            "sent": self.sent,
            "batches": self.batches,
            "acked_seq": self.acked_seq,
            "last_seq": self.local_last_seq,
            "complete": self.complete,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "server_ms": self.server_ms,
            "offset_ms": self.offset_ms,
            "alarm": self.alarm,
            "error_kind": self.error_kind,
            "errors": [self.error] if self.error else [],
            "ms": self.duration_ms,
        }


class SyncClient:
    """Uploads one ledger to the county server; safe to call from any one thread at a time."""

    def __init__(
        self,
        ledger_path: str | Path,
        identity: CountyIdentity,
        settings: SyncSettings | None = None,
        *,
        server: str | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.ledger_path = Path(ledger_path)
        self.identity = identity
        # The ledger key signs a checkpoint over the last entry of every batch; without
        # one the county refuses the batch (docs/sync-protocol.md).
        self._signing_key = signing_key
        self.settings = settings or SyncSettings()
        self.server = (server or self.settings.server or identity.server).rstrip("/")
        self._wall_ms = wall_ms
        ca = x509.load_pem_x509_certificate(identity.ca_file.read_bytes())
        if not ca_fingerprint(ca) == identity.ca_fingerprint:
            raise NotProvisioned(f"{identity.ca_file} does not match the pinned fingerprint")
        self._county_anchor: tuple[int, float] | None = None  # (server_ms, monotonic)
        self._ledger_county_ms: int | None = None
        # One link for this client's exchanges. Each sync starts on a new connection (one
        # pooled from before an outage may be black-holed) and closes it when it ends,
        # unless ``keep_connection``: then a successful sync leaves it open for the update
        # check that follows on ``link`` (the daemon's; the updater closes it).
        self.keep_connection = False
        self.link = Link(
            ca,
            client_cert=(str(identity.cert_file), str(identity.key_file)),
            county_time=self.county_time_ms,
            connect_timeout_s=self.settings.connect_timeout_s,
            read_timeout_s=self.settings.read_timeout_s,
        )
        self._resume_hint: int | None = None  # where the server said to continue
        self._lock = threading.Lock()

    def county_time_ms(self) -> int | None:
        """The newest county time this terminal holds, advanced by the monotonic clock."""
        if self._county_anchor is not None:
            server_ms, at = self._county_anchor
            return server_ms + int((time.monotonic() - at) * 1000)
        known = [self.identity.provisioned_server_ms]
        if self._ledger_county_ms is not None:
            known.append(self._ledger_county_ms)
        return max(known)

    def check_reachable(self, timeout_s: float = 5.0) -> str:
        """GET /v1/health over mTLS with the pinned CA; the server's protocol, or a LinkError."""
        deadline = time.monotonic() + timeout_s
        with self._lock, self.link:
            data = self.link.get_bytes(self.server + "/v1/health", deadline, (timeout_s, timeout_s))
        try:
            return str(json.loads(data)["protocol"])
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("the server's health answer is not the county protocol") from None

    def sync_once(self, deadline: float) -> SyncResult:
        """Upload what the server lacks, until done or ``deadline`` (time.monotonic()).

        Never raises for network, server or data trouble: the result says what
        happened. It does not write the ledger.
        """
        with self._lock:
            started = time.monotonic()
            result = SyncResult(self.identity.terminal_id, self._wall_ms())
            done = False
            try:
                self.link.close()  # never a connection from before this sync
                try:
                    self._sync(result, deadline)
                    done = True
                except (sqlite3.Error, OSError) as exc:
                    raise LedgerUnreadable(f"cannot read the ledger: {exc}") from None
            except LinkError as exc:
                result.failure = exc
                result.error = str(exc)
                result.error_kind = exc.kind
            finally:
                if not (done and self.keep_connection):
                    self.link.close()
            result.ended_mono = time.monotonic()
            result.duration_ms = int((result.ended_mono - started) * 1000)
            return result

    def _sync(self, result: SyncResult, deadline: float) -> None:
        reader = LedgerReader(self.ledger_path)
        try:
            ledger_terminal = reader.terminal_id()
            if ledger_terminal != self.identity.terminal_id:
                raise ServerRefused(
                    f"the ledger belongs to terminal {ledger_terminal!r} but this terminal is "
                    f"provisioned as {self.identity.terminal_id!r}: set [terminal] id to match"
                )
            last = reader.last_seq()
            result.local_last_seq = last
            key = self._ledger_key(reader.public_key())
            signal = reader.last_time_signal(last)
            if signal is not None:
                recorded = signal.get("offset_ms")
                result.last_recorded_offset_ms = recorded if type(recorded) is int else None
                server_ms = signal.get("server_ms")
                if type(server_ms) is int:
                    self._ledger_county_ms = max(self._ledger_county_ms or 0, server_ms)
            about = self.status(last)
            first_unacked = reader.first_unacked()
            start = self._resume_hint or (first_unacked if first_unacked is not None else last + 1)
            url = self.server + "/v1/ledger"
            timeouts = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
            while True:
                rows = (
                    reader.wire_batch(start, self.settings.batch_entries, last)
                    if start <= last
                    else EMPTY_BATCH
                )
                checkpoints = reader.checkpoints(rows[0][0], rows[-1][0]) if rows else []
                if rows and (not checkpoints or checkpoints[-1][0] != rows[-1][0]):
                    checkpoints.append(_batch_checkpoint(key, ledger_terminal, rows[-1]))
                nonce = secrets.token_bytes(16)
                doc = {
                    "nonce": nonce.hex(),
                    "entries": rows,
                    "checkpoints": checkpoints,
                    "status": about,
                }
                sent_wall = self._wall_ms()
                sent_mono = time.monotonic()
                status, answer = self.link.post_json(url, encode_body(doc), deadline, timeouts)
                rtt = int((time.monotonic() - sent_mono) * 1000)
                result.batches += 1
                result.sent += len(rows)
                acked, next_start = self._read_answer(result, status, answer, nonce, last)
                result.rtt_ms = rtt
                result.offset_ms = (result.server_ms or 0) - (sent_wall + rtt // 2)
                result.acked_seq = (
                    acked if result.acked_seq is None else max(result.acked_seq, acked)
                )
                self._resume_hint = next_start
                if next_start > last:
                    return
                if rows and next_start <= start and answer["status"] == "ok":
                    raise ProtocolError(f"the server did not advance past entry {start - 1}")
                start = next_start

        finally:
            reader.close()

    def status(self, last_seq: int) -> dict[str, Any]:
        """What this terminal says about itself with each upload (protocol.wire.parse_status):
        its software version, its newest entry, the update set in force and its lists'
        versions and issue times, read from trust.sqlite beside the ledger (read-only; a
        missing or unreadable file leaves those out). The county keeps the newest."""
        doc: dict[str, Any] = {"software": software_version(), "last_seq": last_seq}
        file = (self.identity.root / "trust.sqlite").absolute()
        if not file.is_file():
            return doc
        try:
            conn = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, timeout=1)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
                if "lists" in tables:
                    doc["lists"] = {
                        name: {"version": version, "issued_at": issued}
                        for name, version, issued in conn.execute(
                            "SELECT name, version, issued_at FROM lists"
                        )
                        if name in STATUS_LISTS
                    }
                if "applied_set" in tables:
                    row = conn.execute("SELECT set_version FROM applied_set WHERE id = 1")
                    found = row.fetchone()
                    if found is not None:
                        doc["update_set"] = int(found[0])
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # the upload matters more than the status: send what is known
        return doc

    def _ledger_key(self, public_key: bytes) -> Ed25519PrivateKey:
        """The private key of this ledger's genesis: the one the county pinned."""
        if self._signing_key is None:
            # The state directory's key, or the one a --ledger FILE keeps beside it.
            for path in (
                self.identity.root / "terminal-key.pem",
                self.ledger_path.with_name(self.ledger_path.name + ".key.pem"),
            ):
                if path.is_file():
                    key = load_or_create_signing_key(path)
                    if key.public_key().public_bytes_raw() == public_key:
                        self._signing_key = key
                        break
        if self._signing_key is None:
            raise LedgerKeyMissing(
                "no ledger key matching this ledger's genesis was found beside it "
                f"({self.identity.root / 'terminal-key.pem'}): batches cannot be signed; "
                "restore the terminal's key from its backup"
            )
        if self._signing_key.public_key().public_bytes_raw() != public_key:
            raise LedgerKeyMissing("the ledger key given does not match this ledger's genesis")
        return self._signing_key

    def _read_answer(
        self, result: SyncResult, status: int, answer: Any, nonce: bytes, last: int
    ) -> tuple[int, int]:
        """(acked seq, where to continue) from one answer, or raise."""
        if status >= 500:
            raise NetworkError(f"the county server failed: {problem_text(answer, status)}")
        if status == 408:
            # The county cut a request that arrived too slowly: the link, not the data.
            raise NetworkError(f"the county server timed out: {problem_text(answer, status)}")
        if status not in (200, 409):
            raise ServerRefused(
                f"the county server refused the upload: {problem_text(answer, status)}"
            )
        if not isinstance(answer, dict):
            raise ProtocolError("the server's answer is not a JSON object")
        acked = answer.get("acked_seq")
        verdict = answer.get("status")
        if type(acked) is not int or acked < 0 or verdict not in ("ok", "gap", "refused"):
            raise ProtocolError("the server's answer lacks a valid status and acknowledged mark")
        server_ms = check_signed_time(
            answer.get("time"), self.identity.terminal_id, acked, nonce, self.identity.time_key
        )
        result.server_ms = server_ms
        result.time_signal = dict(answer["time"])
        result.answer_mono_ms = time.monotonic_ns() // 1_000_000
        result.answer_wall_ms = self._wall_ms()
        self._county_anchor = (server_ms, time.monotonic())
        duplicates = answer.get("duplicates")
        if type(duplicates) is int:
            result.duplicates += duplicates
        if verdict == "refused":
            result.alarm = str(answer.get("alarm"))
            raise ServerRefused(
                f"the server refused the upload ({result.alarm}): {answer.get('problem')}; "
                "keep this terminal's ledger as it is and call county IT"
            )
        if acked > last:
            raise ServerRefused(
                f"the server acknowledges entry {acked} but this ledger ends at {last}: "
                "another ledger was uploaded under this terminal's identity; call county IT"
            )
        if verdict == "gap":
            result.gaps += 1
            if result.gaps > 3:
                raise ProtocolError("the server keeps answering 'gap'")
            result.details.append(str(answer.get("problem")))
        return acked, acked + 1


def _batch_checkpoint(key: Ed25519PrivateKey, terminal_id: str, row: list[Any]) -> list[Any]:
    """A checkpoint over a wire row (the batch's last entry), signed now, not stored.

    The ledger keeps its own checkpoints; this one only tells the county that the
    holder of the pinned ledger key sent the batch, whose entries the chain ties to it.
    """
    seq, at_ms, digest = row[0], row[2], bytes.fromhex(row[17])
    signature = key.sign(checkpoint_message(terminal_id, seq, digest))
    return [seq, row[17], at_ms, signature.hex()]


# --- applying a result (the ledger's owner only) ------------------------------------------


@dataclass(frozen=True)
class AppliedSync:
    marked: int  # entries newly marked acknowledged
    time_entry: LedgerEntry | None  # the TIME_SIGNAL entry recorded, if any


def apply_result(
    ledger: Ledger,
    clock: TrustedClock,
    result: SyncResult,
    wall_ms: int,
    settings: SyncSettings | None = None,
    mono_ms: int | None = None,
) -> AppliedSync:
    """Mark acknowledged entries and take in the county's signed time. Ledger owner only.

    The clock takes the county's time (``TrustedClock.take_county_time``): the
    floor rises to it (or comes down to it from a floor a fast wall clock
    raised), and a wall clock more than ``clock_tolerance_s`` from it is no
    longer trusted. A TIME_SIGNAL entry records the county time, the offset and
    the wall clock's standing (so they survive a restart and reach the county)
    when no county time is recorded yet, when the estimated offset moved by
    ``offset_record_ms`` or more, when the county time is that far ahead of the
    ledger's newest time, when the standing changed, or when the floor came down.
    ``mono_ms`` is the monotonic clock now, in ms (the daemon passes it).
    """
    settings = settings or SyncSettings()
    entry: LedgerEntry | None = None
    changed, lowered = False, None
    floor_before = clock.floor_ms
    if result.server_ms is not None and result.time_signal is not None:
        # The county stamped its time about half a round trip before the answer arrived.
        county_ms = result.server_ms + (result.rtt_ms or 0) // 2
        changed, lowered = clock.take_county_time(
            county_ms,
            result.answer_mono_ms if result.answer_mono_ms is not None else mono_ms,
            result.answer_wall_ms if result.answer_wall_ms is not None else wall_ms,
            settings.clock_tolerance_s * 1000,
        )
    trusted = clock.current(wall_ms, mono_ms)
    marked = 0
    if result.acked_seq is not None and result.acked_seq >= 1:
        marked = ledger.mark_acked(min(result.acked_seq, ledger.last_seq()), trusted)
    if result.server_ms is not None and result.time_signal is not None:
        offset = result.offset_ms if result.offset_ms is not None else 0
        threshold = settings.offset_record_ms
        material = (
            result.last_recorded_offset_ms is None
            or abs(offset - result.last_recorded_offset_ms) >= threshold
            or result.server_ms - floor_before >= threshold
            or changed
            or lowered is not None
        )
        if material:
            signed = result.time_signal
            detail: dict[str, Any] = {
                "server_ms": result.server_ms,
                "offset_ms": offset,
                "rtt_ms": result.rtt_ms,
                "acked_seq": signed.get("acked_seq"),
                "nonce": signed.get("nonce"),
                "signature": signed.get("signature"),
                "wall_ms": wall_ms,
                # What the county reads at intake to keep this terminal's offset.
                "wall_ahead_ms": -offset,
                "clock_trusted": clock.wall_ahead_ms is None,
            }
            if lowered is not None:
                detail["floor_lowered_from_ms"] = lowered
            entry = ledger.append(EntryDraft(kind=TIME_SIGNAL, detail=detail), trusted)
            clock.raise_floor(trusted)
    return AppliedSync(marked, entry)


# --- the schedule -------------------------------------------------------------------------


@dataclass
class ScheduleStats:
    runs: int = 0
    failures: int = 0  # consecutive failures now
    nudges: int = 0
    last_result: SyncResult | None = None
    run_monotonic: list[float] = field(default_factory=list)  # start of each run


class SyncTrigger(BaseTrigger):  # type: ignore[misc]
    """When the next sync starts, from what the last ones found.

    After a success: ``interval_s`` less up to ``jitter_s`` (early, never late, so
    ``interval_s`` is the longest wait between two syncs and a revocation reaches an
    online terminal within one interval; terminals spread out). After failures: a
    full-jitter backoff, uniform in [0, min(backoff_cap_s, backoff_base_s *
    2**(failures-1))]. At once while ``soon`` (a backlog remains, or a sale came
    during the run) and the server is reachable. Each time is relative to the
    moment the scheduler asks, so a wall clock that jumps ten years ahead brings one
    run, not millions; ``SteadyJobStore`` keeps a stepped-back clock from parking it.
    """

    def __init__(self, settings: SyncSettings, stats: ScheduleStats, rng: random.Random) -> None:
        self.settings = settings
        self.stats = stats
        self.rng = rng
        self.soon = False

    def delay(self) -> float:
        failures = self.stats.failures
        if failures:
            cap = min(
                self.settings.backoff_cap_s,
                self.settings.backoff_base_s * 2 ** min(failures - 1, 30),
            )
            return self.rng.uniform(0, cap)
        if self.soon:
            return 0.0
        # Settings made in code skip the loader's check: never less than half the interval.
        interval = self.settings.interval_s
        return max(interval / 2, interval - self.rng.uniform(0, self.settings.jitter_s))

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime:
        # APScheduler asks as it hands a run to its thread, before the outcome is known:
        # a time after that run's deadline, so it never fires into the running sync. The
        # run's end replaces it with ``delay()`` (SyncSchedule._run, job.modify).
        return now + dt.timedelta(seconds=self.settings.deadline_s + self.delay())

    def __str__(self) -> str:
        return "canteen sync"


class SteadyJobStore(BaseJobStore):  # type: ignore[misc]
    """A job store in memory whose due times follow the monotonic clock.

    APScheduler 3 asks its job store which jobs are due and when the next one is,
    in wall-clock time. This store turns each job's next run time into a distance
    on the monotonic clock when the job is stored, and answers in the wall clock of
    the moment it is asked: a wall clock stepped a year back does not park the job
    for a year, and one stepped ahead does not make it due early.
    """

    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[str, tuple[Job, float | None]] = {}

    @staticmethod
    def _due(job: Job) -> float | None:
        if job.next_run_time is None:
            return None  # paused
        wait = (job.next_run_time - dt.datetime.now(dt.UTC)).total_seconds()
        return time.monotonic() + float(wait)

    def lookup_job(self, job_id: str) -> Job | None:
        entry = self._jobs.get(job_id)
        return entry[0] if entry else None

    def get_due_jobs(self, now: dt.datetime) -> list[Job]:
        mono = time.monotonic()
        due = []
        for job, at in self._jobs.values():
            if at is not None and at <= mono:
                # Due by the monotonic clock, whatever the wall clock says now.
                job.next_run_time = min(job.next_run_time, now)
                due.append(job)
        return due

    def get_next_run_time(self) -> dt.datetime | None:
        dues = [at for _job, at in self._jobs.values() if at is not None]
        if not dues:
            return None
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=min(dues) - time.monotonic())

    def get_all_jobs(self) -> list[Job]:
        jobs = [job for job, _at in self._jobs.values()]
        return sorted(jobs, key=lambda j: (j.next_run_time is None, j.next_run_time or 0))

    def add_job(self, job: Job) -> None:
        if job.id in self._jobs:
            raise ConflictingIdError(job.id)
        self._jobs[job.id] = (job, self._due(job))

    def update_job(self, job: Job) -> None:
        if job.id not in self._jobs:
            raise JobLookupError(job.id)
        self._jobs[job.id] = (job, self._due(job))

    def remove_job(self, job_id: str) -> None:
        if self._jobs.pop(job_id, None) is None:
            raise JobLookupError(job_id)

    def remove_all_jobs(self) -> None:
        self._jobs.clear()


class SyncSchedule:
    """Runs ``client.sync_once`` on one APScheduler job and hands each result to ``on_result``.

    One sync runs at a time and missed runs coalesce; ``SyncTrigger``
    says when it runs next. APScheduler asks the trigger as a run starts, before
    its outcome is known, so when the run ends the job's next run time is set
    again from the trigger with the outcome in (``job.modify``). ``nudge()`` asks
    for a run now (after a sale) while the server is reachable.
    """

    JOB_ID = "canteen-sync"

    def __init__(
        self,
        client: SyncClient,
        settings: SyncSettings,
        on_result: Callable[[SyncResult], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.on_result = on_result
        self.rng = rng or random.Random()
        self.stats = ScheduleStats()
        self.trigger = SyncTrigger(settings, self.stats, self.rng)
        self._lock = threading.Lock()
        self._running = False
        self._nudged = False
        self._scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            jobstores={"default": SteadyJobStore()},
            # Two instances: a run due at once may start while the one before is
            # returning; ``_running`` still keeps two syncs from overlapping.
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
        )
        self._job: Job | None = None

    # -- control --

    def start(self, first_delay_s: float | None = None) -> None:
        delay = (
            self.rng.uniform(0, self.settings.jitter_s) if first_delay_s is None else first_delay_s
        )
        self._job = self._scheduler.add_job(
            self._run,
            trigger=self.trigger,
            id=self.JOB_ID,
            next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay),
        )
        self._scheduler.start()

    def stop(self, wait: bool = True) -> None:
        with contextlib.suppress(Exception):  # SchedulerNotRunningError: never started
            self._scheduler.shutdown(wait=wait)

    def nudge(self) -> bool:
        """Sync now (after a sale) if the server is reachable; False when backing off."""
        with self._lock:
            if self.stats.failures:
                return False
            self.stats.nudges += 1
            if self._running:
                self._nudged = True  # the running sync is followed by another at once
                return True
        self._next_run_in(0.0)
        return True

    @property
    def online(self) -> bool:
        return self.stats.runs > 0 and self.stats.failures == 0

    # -- internals --

    def _next_run_in(self, delay: float) -> None:
        if self._job is None:
            return
        with contextlib.suppress(JobLookupError):  # stopped
            self._job.modify(next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay))

    def _run(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
            self._nudged = False
            self.stats.run_monotonic.append(time.monotonic())
        result: SyncResult | None = None
        try:
            result = self.client.sync_once(time.monotonic() + self.settings.deadline_s)
        finally:
            with self._lock:
                self.stats.runs += 1
                if result is None or isinstance(result.failure, RETRY_SOON):
                    self.stats.failures += 1
                elif result.failure is None:
                    self.stats.failures = 0
                else:
                    # Refused by the server (a fork alarm): retrying soon will not help.
                    self.stats.failures = max(self.stats.failures + 1, 8)
                self.stats.last_result = result
            try:
                if result is not None:
                    try:
                        self.on_result(result)
                    except Exception:
                        log.exception("the sync result callback failed")
            finally:
                self._ended(result)

    def _ended(self, result: SyncResult | None) -> None:
        """The run is over: the next one is due when the trigger says, outcome known."""
        with self._lock:
            self._running = False
            self.trigger.soon = self._nudged or (
                result is not None
                and result.failure is None
                and result.acked_seq is not None
                and result.acked_seq < result.local_last_seq
            )
            delay = self.trigger.delay()
        self._next_run_in(delay)
