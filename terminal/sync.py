"""Upload the ledger to the county server: identity, one sync, and the schedule.

This module owns the terminal side of docs/sync-protocol.md: provisioning
(a TLS key, a CSR traded for a client certificate, the county CA and time key
pinned in the state directory), one sync (``SyncClient.sync_once``: read the
unacknowledged entries through its own read-only SQLite connection, post them
in batches over mTLS under one total deadline, check the county's signed time
and return a ``SyncResult``), and the schedule (``SyncSchedule``: an APScheduler
3.x job with jitter, coalescing, one instance, capped exponential backoff with
full jitter, ``nudge()`` after a sale, and a monotonic guard against wall-clock
steps). It never writes the ledger and never blocks a decision: the one decision
worker owns ledger writes, so the result goes back through a callback, and the
owner of the ledger applies it with ``apply_result`` (mark the acknowledged
entries, raise the trusted-time floor, record the county time when the offset
changes materially). In the daemon the callback puts the result on the decision
queue; ``canteen-terminal sync --once`` applies it directly:

    client = SyncClient(ledger_path, load_identity(state_dir), settings)
    result = client.sync_once(time.monotonic() + settings.deadline_s)   # any thread
    applied = apply_result(ledger, checkout.clock, result, wall_ms)     # ledger owner only

The server certificate must chain to the pinned county CA; its validity dates
are checked at the wall clock or at the newest county time this terminal holds,
because a Pi without a real-time clock may boot a year behind or years ahead.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import random
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from protocol.chain import HASHED_COLUMNS, checkpoint_message
from protocol.wire import PROTOCOL_VERSION, TIME_DOMAIN, time_message  # noqa: F401
from terminal.config import SyncSettings
from terminal.core.clock import TrustedClock
from terminal.durable import fsync_dir as _fsync_dir
from terminal.durable import write_atomic as _write_atomic
from terminal.ledger import TIME_SIGNAL, EntryDraft, Ledger, LedgerEntry, load_or_create_signing_key

log = logging.getLogger(__name__)


# Files in the terminal's state directory (terminal/state.py owns the rest).
IDENTITY_FILE = "county.json"
CA_FILE = "county-ca.pem"
CERT_FILE = "sync-cert.pem"
TLS_KEY_FILE = "sync-key.pem"

# Largest answer body the terminal reads: an answer is a few hundred bytes.
MAX_ANSWER_BYTES = 64 * 1024

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


# --- errors ------------------------------------------------------------------------


class SyncError(Exception):
    """A sync did not complete; ``kind`` says which kind of trouble, for logs and JSON."""

    kind = "sync"


class LedgerKeyMissing(SyncError):
    """The key that signs this ledger's checkpoints is not here: batches cannot be signed."""

    kind = "ledger"


class NetworkError(SyncError):
    """The county server could not be reached or the connection broke: retry later."""

    kind = "network"


class DeadlineExceeded(NetworkError):
    """The sync's total deadline passed (a slow or stalling link)."""

    kind = "deadline"


class ServerCertificateRefused(NetworkError):
    """The server's certificate does not chain to the pinned county CA."""

    kind = "tls"


class ServerRefused(SyncError):
    """The server refused the request or the data (fork alarm, altered entries, unknown cert)."""

    kind = "refused"


class ProtocolError(SyncError):
    """The server's answer is malformed or its signed time does not verify."""

    kind = "protocol"


class NotProvisioned(SyncError):
    """The state directory has no county identity: run 'canteen-terminal provision'."""

    kind = "not_provisioned"


# --- identity (what provisioning stores) ----------------------------------------------


@dataclass(frozen=True)
class CountyIdentity:
    """The terminal's county identity, pinned in its state directory at provisioning."""

    root: Path
    server: str
    terminal_id: str
    canteen: str
    time_key: bytes  # the county's Ed25519 time-signing public key (raw)
    ca_fingerprint: str
    provisioned_server_ms: int  # county time at provisioning: a lower bound for cert checks

    @property
    def ca_file(self) -> Path:
        return self.root / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.root / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.root / TLS_KEY_FILE


def load_identity(state_dir: str | Path) -> CountyIdentity:
    root = Path(state_dir)
    try:
        doc = json.loads((root / IDENTITY_FILE).read_text(encoding="utf-8"))
        identity = CountyIdentity(
            root=root,
            server=str(doc["server"]),
            terminal_id=str(doc["terminal_id"]),
            canteen=str(doc["canteen"]),
            time_key=bytes.fromhex(doc["time_key"]),
            ca_fingerprint=str(doc["ca_fingerprint"]),
            provisioned_server_ms=int(doc["provisioned_server_ms"]),
        )
    except FileNotFoundError:
        raise NotProvisioned(
            f"{root}: this terminal is not provisioned: run 'canteen-terminal provision "
            f"--state {root} --server URL --code CODE' with a code from county IT"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise NotProvisioned(
            f"{root / IDENTITY_FILE} is damaged ({exc}): provision the terminal again"
        ) from None
    for path in (identity.ca_file, identity.cert_file, identity.key_file):
        if not path.is_file():
            raise NotProvisioned(f"{path} is missing: provision the terminal again")
    return identity


def ca_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case base32 of SHA-256 over the CA's DER (a provisioning code carries a prefix)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def parse_code(code: str) -> tuple[str, str]:
    """(secret hex, CA fingerprint prefix) of a provisioning code ``SECRET-FINGERPRINT``."""
    secret, sep, fingerprint = code.strip().lower().partition("-")
    if not sep or len(fingerprint) < 26 or not secret:
        raise ServerRefused(
            "the provisioning code is malformed: copy the whole last line of "
            "'canteen-county terminal add' (two parts joined by '-')"
        )
    try:
        bytes.fromhex(secret)
    except ValueError:
        raise ServerRefused(
            "the provisioning code is malformed: its first part is not hex"
        ) from None
    return secret, fingerprint


def provision(
    state_dir: str | Path,
    server: str,
    code: str,
    ledger_public_key: bytes,
    *,
    timeout_s: float = 30.0,
) -> CountyIdentity:
    """Pin the county CA from the code, trade a CSR for a client certificate, store it all.

    The code carries a fingerprint of the county CA, so the first connection
    can be unauthenticated: the CA downloaded over it is kept only if its
    fingerprint matches, and the provisioning request itself is then sent over
    TLS verified against that CA.
    """
    root = Path(state_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if urlsplit(server).scheme != "https":
        raise ServerRefused(f"server {server!r}: must be an https:// address")
    secret, fingerprint = parse_code(code)
    deadline = time.monotonic() + timeout_s
    base = server.rstrip("/")

    with _Transport(verify=False, cert=None, ca_verifier=None) as http:
        pem = http.get_bytes(base + "/v1/ca.pem", deadline, (timeout_s, timeout_s))
    try:
        ca = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ServerCertificateRefused("the server did not send a county CA certificate") from None
    if not ca_fingerprint(ca).startswith(fingerprint):
        raise ServerCertificateRefused(
            "the server's county CA does not match the provisioning code: this is not "
            "your county's server (or the code is mistyped); nothing was stored"
        )

    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canteen terminal")]))
        .sign(tls_key, hashes.SHA256())
    )
    nonce = secrets.token_bytes(16)
    body = {
        "code": secret,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "ledger_key": ledger_public_key.hex(),
        "nonce": nonce.hex(),
    }
    verifier = ServerVerifier(ca, lambda: None)
    with _Transport(verify=True, cert=None, ca_verifier=verifier) as http:
        status, answer = http.post_json(
            base + "/v1/provision", body, deadline, (timeout_s, timeout_s)
        )
    if status != 200:
        raise ServerRefused(f"provisioning refused: {_problem_text(answer, status)}")
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        time_key = bytes.fromhex(answer["time_key"])
        terminal_id = str(answer["terminal_id"])
        canteen = str(answer["canteen"])
        signed = answer["time"]
        server_ms = _check_time(signed, terminal_id, 0, nonce, time_key)
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"the provisioning answer is malformed: {exc}") from None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != tls_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ProtocolError("the server sent a certificate for another key")

    _write_atomic(
        root / TLS_KEY_FILE,
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_atomic(root / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
    _write_atomic(root / CA_FILE, ca.public_bytes(serialization.Encoding.PEM))
    doc = {
        "server": base,
        "terminal_id": terminal_id,
        "canteen": canteen,
        "time_key": time_key.hex(),
        "ca_fingerprint": ca_fingerprint(ca),
        "provisioned_server_ms": server_ms,
    }
    # The identity file last: its presence means every other file is in place.
    _write_atomic(root / IDENTITY_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    _fsync_dir(root)
    return load_identity(root)


def _problem_text(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("problem"), str):
        return f"{answer['problem']} (HTTP {status})"
    return f"HTTP {status}"


def _check_time(
    signed: Any, terminal_id: str, acked: int | None, nonce: bytes, time_key: bytes
) -> int:
    """The county's server_ms from a signed time, or ProtocolError."""
    if not isinstance(signed, dict):
        raise ProtocolError("the answer has no signed time")
    server_ms = signed.get("server_ms")
    signed_acked = signed.get("acked_seq")
    if type(server_ms) is not int or type(signed_acked) is not int:
        raise ProtocolError("the signed time is malformed")
    if signed.get("terminal") != terminal_id or signed.get("nonce") != nonce.hex():
        raise ProtocolError("the signed time is for another terminal or request (a replay?)")
    if acked is not None and signed_acked != acked:
        raise ProtocolError("the signed time covers another acknowledged mark")
    try:
        Ed25519PublicKey.from_public_bytes(time_key).verify(
            bytes.fromhex(str(signed.get("signature"))),
            time_message(terminal_id, server_ms, signed_acked, nonce),
        )
    except (InvalidSignature, ValueError):
        raise ProtocolError(
            "the county's time signature does not verify with the pinned time key"
        ) from None
    return server_ms


# --- the transport: requests over mTLS, one total deadline ----------------------------


class ServerVerifier:
    """Checks the server certificate against the pinned CA and the connection's host name.

    Python's ssl module checks validity dates only at the wall clock; this
    accepts a chain valid at the wall clock or at ``county_time()`` (the newest
    county time the terminal holds), so a terminal whose clock stepped can
    still reach the server that will correct it.
    """

    def __init__(self, ca: x509.Certificate, county_time: Callable[[], int | None]) -> None:
        self.store = verification.Store([ca])
        self.county_time = county_time

    def verify(self, der: bytes | None, host: str) -> None:
        if der is None:
            raise ServerCertificateRefused("the server sent no certificate")
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            raise ServerCertificateRefused("the server's certificate is unreadable") from None
        try:
            subject: x509.verification.Subject = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            subject = x509.DNSName(host)
        times = [dt.datetime.now(dt.UTC)]
        county_ms = self.county_time()
        if county_ms is not None:
            times.append(dt.datetime.fromtimestamp(county_ms / 1000, dt.UTC))
        last: Exception | None = None
        for at in times:
            try:
                verifier = (
                    verification.PolicyBuilder()
                    .store(self.store)
                    .time(at)
                    .build_server_verifier(subject)
                )
                verifier.verify(leaf, [])
                return
            except verification.VerificationError as exc:
                last = exc
        raise ServerCertificateRefused(
            f"the server's certificate does not chain to the pinned county CA for {host} "
            f"({last}); refusing to talk to it"
        )


class _Deadline:
    """Shuts the sockets of one sync down when its total deadline passes.

    Per-socket timeouts bound each read; a server that sends one byte per
    second never trips them, so this timer ends the whole exchange instead.
    """

    def __init__(self, at_monotonic: float) -> None:
        self.at = at_monotonic
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, at_monotonic - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def register(self, sock: socket.socket) -> None:
        # A duplicate descriptor: the TLS wrapper detaches the original socket
        # object, but shutdown() acts on the socket both descriptors share.
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                self._shut(dup)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shut(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()


_current = threading.local()


class _DeadlineHTTPSConnection(HTTPSConnection):
    """urllib3's HTTPS connection, registered with the sync's deadline and host-checked by us."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        deadline: _Deadline | None = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.register(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        verifier: ServerVerifier | None = getattr(_current, "verifier", None)
        if verifier is not None and self.sock is not None:
            try:
                der = self.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
                verifier.verify(der, self.host)
            except ServerCertificateRefused:
                self.sock.close()
                raise
            # Verified by us, so urllib3 need not warn about an unverified request.
            self.is_verified = True


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": HTTPConnectionPool,
            "https": _DeadlinePool,
        }


_DeadlinePool = _DeadlineHTTPSPool


class _Transport:
    """One requests session for one sync: client certificate, pinned CA, total deadline."""

    def __init__(
        self,
        *,
        verify: bool,
        cert: tuple[str, str] | None,
        ca_verifier: ServerVerifier | None,
    ) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies from the environment
        self.session.mount("https://", _DeadlineAdapter(max_retries=0))
        # The chain and host are checked by ServerVerifier after the handshake
        # (with a county-time fallback), so the ssl module checks nothing itself.
        self.session.verify = False
        if cert is not None:
            self.session.cert = cert
        self.verifier = ca_verifier if verify else None

    def __enter__(self) -> _Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def _request(
        self,
        method: str,
        url: str,
        deadline_at: float,
        timeouts: tuple[float, float],
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        deadline = _Deadline(deadline_at)
        _current.deadline = deadline
        _current.verifier = self.verifier
        try:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("the sync deadline passed before the request")
            timeout = (min(timeouts[0], remaining), min(timeouts[1], remaining))
            with warnings_silenced():
                resp = self.session.request(
                    method,
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"} if body is not None else None,
                    timeout=timeout,
                    stream=True,
                    allow_redirects=False,
                )
                try:
                    data = resp.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
                    if len(data) > MAX_ANSWER_BYTES:
                        raise ProtocolError(
                            f"the server's answer is larger than {MAX_ANSWER_BYTES} bytes"
                        )
                finally:
                    resp.close()
            if deadline.expired:
                raise DeadlineExceeded("the sync deadline passed during the answer")
            return resp.status_code, data
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired:
                raise DeadlineExceeded(
                    "the sync deadline passed: the link is too slow or stalled"
                ) from None
            cause: BaseException | None = exc
            while cause is not None:
                if isinstance(cause, ServerCertificateRefused):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
                if cause is exc:
                    break
            text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise NetworkError(f"cannot reach the county server: {text}") from None
        finally:
            _current.deadline = None
            _current.verifier = None
            deadline.close()

    def get_bytes(self, url: str, deadline_at: float, timeouts: tuple[float, float]) -> bytes:
        status, data = self._request("GET", url, deadline_at, timeouts)
        if status != 200:
            raise ServerRefused(f"GET {url}: HTTP {status}")
        return data

    def post_json(
        self, url: str, doc: Any, deadline_at: float, timeouts: tuple[float, float]
    ) -> tuple[int, Any]:
        body = encode_body(doc)
        status, data = self._request("POST", url, deadline_at, timeouts, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            if status >= 500:
                return status, None
            raise ProtocolError(f"the server's answer is not JSON (HTTP {status})") from None


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    """urllib3 warns on every unverified request; ServerVerifier does the verification."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        yield


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
    error_kind: str | None = None
    alarm: str | None = None  # the server's alarm when it refused (fork, altered, ...)
    duration_ms: int = 0
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
        self.verifier = ServerVerifier(ca, self.county_time_ms)
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
        """GET /v1/health over mTLS with the pinned CA; the server's protocol, or a SyncError."""
        deadline = time.monotonic() + timeout_s
        cert = (str(self.identity.cert_file), str(self.identity.key_file))
        with _Transport(verify=True, cert=cert, ca_verifier=self.verifier) as http:
            data = http.get_bytes(self.server + "/v1/health", deadline, (timeout_s, timeout_s))
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
            try:
                self._sync(result, deadline)
            except SyncError as exc:
                result.error = str(exc)
                result.error_kind = exc.kind
            except (sqlite3.Error, OSError) as exc:
                result.error = f"cannot read the ledger: {exc}"
                result.error_kind = "ledger"
            result.duration_ms = int((time.monotonic() - started) * 1000)
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
            first_unacked = reader.first_unacked()
            start = self._resume_hint or (first_unacked if first_unacked is not None else last + 1)
            url = self.server + "/v1/ledger"
            timeouts = (self.settings.connect_timeout_s, self.settings.read_timeout_s)
            cert = (str(self.identity.cert_file), str(self.identity.key_file))
            with _Transport(verify=True, cert=cert, ca_verifier=self.verifier) as http:
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
                    doc = {"nonce": nonce.hex(), "entries": rows, "checkpoints": checkpoints}
                    sent_wall = self._wall_ms()
                    sent_mono = time.monotonic()
                    status, answer = http.post_json(url, doc, deadline, timeouts)
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
            raise NetworkError(f"the county server failed: {_problem_text(answer, status)}")
        if status == 408:
            # The county cut a request that arrived too slowly: the link, not the data.
            raise NetworkError(f"the county server timed out: {_problem_text(answer, status)}")
        if status not in (200, 409):
            raise ServerRefused(
                f"the county server refused the upload: {_problem_text(answer, status)}"
            )
        if not isinstance(answer, dict):
            raise ProtocolError("the server's answer is not a JSON object")
        acked = answer.get("acked_seq")
        verdict = answer.get("status")
        if type(acked) is not int or acked < 0 or verdict not in ("ok", "gap", "refused"):
            raise ProtocolError("the server's answer lacks a valid status and acknowledged mark")
        server_ms = _check_time(
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


class _SyncTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires ``delay()`` seconds after it is asked: relative, so wall-clock steps cannot
    pile up missed runs (a ten-year jump forward gives one run, not millions)."""

    def __init__(self, delay: Callable[[], float]) -> None:
        self._delay = delay

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime:
        return now + dt.timedelta(seconds=self._delay())

    def __str__(self) -> str:
        return "canteen sync"


@dataclass
class ScheduleStats:
    runs: int = 0
    failures: int = 0  # consecutive failures now
    guard_kicks: int = 0  # times the monotonic guard had to start an overdue sync
    nudges: int = 0
    last_result: SyncResult | None = None
    run_monotonic: list[float] = field(default_factory=list)  # start of each run


class SyncSchedule:
    """Runs ``client.sync_once`` on an APScheduler job and hands each result to ``on_result``.

    The job has one instance at a time and coalesces missed runs. After a
    success the next run is ``interval_s`` less up to ``jitter_s`` away (so
    ``interval_s`` is the longest wait between two syncs, and a revocation
    reaches an online terminal within one interval); after
    failures it is a full-jitter backoff, uniform in
    [0, min(backoff_cap_s, backoff_base_s * 2**(failures-1))]. ``nudge()`` asks
    for a run now (after a sale) while the server is reachable. A guard thread
    waits on the monotonic clock and starts a run that is overdue by its
    monotonic due time, so a wall clock stepping back a year cannot park the
    job for a year.
    """

    JOB_ID = "canteen-sync"

    def __init__(
        self,
        client: SyncClient,
        settings: SyncSettings,
        on_result: Callable[[SyncResult], None],
        *,
        rng: random.Random | None = None,
        guard_period_s: float | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.on_result = on_result
        self.rng = rng or random.Random()
        self.stats = ScheduleStats()
        self._guard_period = guard_period_s or max(0.05, min(5.0, settings.interval_s / 8))
        self._lock = threading.Lock()
        self._running = False
        self._nudged = False
        self._due_mono = 0.0
        self._stop = threading.Event()
        self._scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._guard = threading.Thread(target=self._guard_loop, name="sync-guard", daemon=True)

    # -- control --

    def start(self, first_delay_s: float | None = None) -> None:
        delay = (
            self.rng.uniform(0, self.settings.jitter_s) if first_delay_s is None else first_delay_s
        )
        self._due_mono = time.monotonic() + delay
        self._scheduler.add_job(
            self._run,
            trigger=_SyncTrigger(self._fallback_delay),
            id=self.JOB_ID,
            next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay),
        )
        self._scheduler.start()
        self._guard.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._scheduler.shutdown(wait=wait)
        if self._guard.is_alive():
            self._guard.join(5)

    def nudge(self) -> bool:
        """Sync now (after a sale) if the server is reachable; False when backing off."""
        with self._lock:
            if self.stats.failures:
                return False
            self.stats.nudges += 1
            if self._running:
                self._nudged = True  # the running sync reschedules at once when it ends
                return True
        self._run_soon(0.0)
        return True

    @property
    def online(self) -> bool:
        return self.stats.runs > 0 and self.stats.failures == 0

    # -- internals --

    def _fallback_delay(self) -> float:
        # Used by the trigger after each submission; _run replaces it with the
        # real next time once the outcome is known.
        # Early, never late: terminals spread out, and none waits longer than interval_s
        # (settings made in code skip the loader's check: never less than half of it).
        interval = self.settings.interval_s
        return max(interval / 2, interval - self.rng.uniform(0, self.settings.jitter_s))

    def _next_delay(self) -> float:
        if self.stats.failures:
            cap = min(
                self.settings.backoff_cap_s,
                self.settings.backoff_base_s * 2 ** min(self.stats.failures - 1, 30),
            )
            return self.rng.uniform(0, cap)
        return self._fallback_delay()

    def _run_soon(self, delay: float) -> None:
        with self._lock:
            self._due_mono = time.monotonic() + delay
        with contextlib.suppress(Exception):  # JobLookupError after stop()
            self._scheduler.modify_job(
                self.JOB_ID, next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            )

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
                self._running = False
                self.stats.runs += 1
                if result is None or result.error_kind in (
                    "network",
                    "deadline",
                    "tls",
                    "protocol",
                    "ledger",
                ):
                    self.stats.failures += 1
                elif result.error is None:
                    self.stats.failures = 0
                else:
                    # Refused by the server (a fork alarm): retrying soon will not help.
                    self.stats.failures = max(self.stats.failures + 1, 8)
                self.stats.last_result = result
                more = self._nudged or (
                    result is not None
                    and result.error is None
                    and result.acked_seq is not None
                    and result.acked_seq < result.local_last_seq
                )
                delay = 0.0 if more and not self.stats.failures else self._next_delay()
            self._run_soon(delay)
        if result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("the sync result callback failed")

    def _guard_loop(self) -> None:
        slack = max(0.25, self.settings.interval_s * 0.1)
        while not self._stop.wait(self._guard_period):
            with self._lock:
                overdue = not self._running and time.monotonic() > self._due_mono + slack
            if overdue:
                self.stats.guard_kicks += 1
                self._run_soon(0.0)
