"""The one transport to the county: a requests Session with mTLS, deadlines and one cert check.

This module owns how the terminal talks HTTP(S) to the county server, for the
upload (terminal/sync.py), provisioning (terminal/link/provision.py) and the
signed-update fetch (terminal/link/fetch.py): one ``Link`` holds one requests
``Session`` with the terminal's client certificate; every exchange (connect,
send, answer) ends by one deadline on the monotonic clock, however the server
trickles or stalls; an answer read whole is capped in size; and the server's
certificate is checked by ``ServerCheck`` against the pinned county CA at the
terminal's trusted time, not only at the wall clock. It owns the one error
hierarchy of these exchanges (``LinkError`` and its subclasses, matched by
class; ``kind`` is only for logs and JSON). It never reads the ledger, never
reads a protocol message beyond its HTTP status, bytes and JSON, and never retries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from cryptography import x509
from cryptography.x509 import verification
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection, BaseHTTPSConnection

# Largest answer body ``Link.exchange`` reads: a sync answer is a few hundred bytes.
MAX_ANSWER_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024


# --- errors: one hierarchy, matched by class -----------------------------------------


class LinkError(Exception):
    """An exchange with the county did not complete; ``kind`` names it in logs and JSON."""

    kind = "sync"


class NetworkError(LinkError):
    """The county server could not be reached or the connection broke: retry later."""

    kind = "network"


class DeadlineExceeded(NetworkError):
    """The exchange's deadline passed (a slow or stalling link)."""

    kind = "deadline"


class ServerCertificateRefused(NetworkError):
    """The server's certificate does not chain to the pinned county CA."""

    kind = "tls"


class ServerRefused(LinkError):
    """The server refused the request or the data (fork alarm, altered entries, unknown cert)."""

    kind = "refused"


class ProtocolError(LinkError):
    """The server's answer is malformed or its signed time does not verify."""

    kind = "protocol"


class NotProvisioned(LinkError):
    """The state directory has no county identity: run 'canteen-terminal provision'."""

    kind = "not_provisioned"


def problem_text(answer: Any, status: int) -> str:
    """The county's ``problem`` text of an answer with its HTTP status, for messages."""
    if isinstance(answer, dict) and isinstance(answer.get("problem"), str):
        return f"{answer['problem']} (HTTP {status})"
    return f"HTTP {status}"


# --- the server certificate ------------------------------------------------------------


class ServerCheck:
    """Checks the server certificate against the pinned CA and the connection's host name.

    Python's ssl module checks validity dates only at the wall clock. A Pi without
    a real-time clock may boot a year behind or years ahead, so this accepts a
    chain valid at the wall clock or at ``county_time()`` (the newest county time
    the terminal holds, carried on by the monotonic clock): a terminal whose clock
    stepped can still reach the server that will correct it, and a certificate
    that is expired or not yet valid at both is refused.
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


# --- one exchange's deadline -------------------------------------------------------------


# An error this close to an exchange's deadline is the deadline's (see Link._errors).
_DEADLINE_SLACK_S = 0.05


class _Exchange:
    """One exchange's deadline: when it passes, the Link's sockets are shut down.

    Per-socket timeouts bound each read; a server that sends one byte per second
    never trips them, so this timer ends the whole exchange instead.
    """

    def __init__(self, at_monotonic: float, on_expire: Callable[[], None]) -> None:
        self.at = at_monotonic
        self.expired = False
        self._on_expire = on_expire
        self._timer = threading.Timer(max(0.0, at_monotonic - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def _expire(self) -> None:
        self.expired = True
        self._on_expire()

    def close(self) -> None:
        self._timer.cancel()


# --- urllib3 connections that know their Link --------------------------------------------


class _LinkHTTPConnection(HTTPConnection):
    link: Link | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if self.link is not None:
            self.link._register(sock)
        return sock


class _LinkHTTPSConnection(HTTPSConnection):
    link: Link | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if self.link is not None:
            self.link._register(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        check = self.link.server_check if self.link is not None else None
        if check is not None and self.sock is not None:
            try:
                der = self.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
                check.verify(der, self.host)
            except ServerCertificateRefused:
                self.sock.close()
                raise
            # Verified by ServerCheck, so urllib3 need not warn about an unverified request.
            self.is_verified = True


class _LinkHTTPPool(HTTPConnectionPool):
    ConnectionCls = _LinkHTTPConnection
    link: Link | None = None

    def _new_conn(self) -> BaseHTTPConnection:
        conn = super()._new_conn()
        conn.link = self.link  # type: ignore[attr-defined]
        return conn


class _LinkHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _LinkHTTPSConnection
    link: Link | None = None

    def _new_conn(self) -> BaseHTTPSConnection:
        conn = super()._new_conn()
        conn.link = self.link  # type: ignore[attr-defined]
        return conn


class _LinkAdapter(HTTPAdapter):
    """Pools whose connections register with the Link's exchange and check its server."""

    def __init__(self, link: Link) -> None:
        self.link = link
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self.link.tls is not None:
            kwargs["ssl_context"] = self.link.tls
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _LinkHTTPPool, "https": _LinkHTTPSPool}

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        pool.link = self.link  # type: ignore[attr-defined]
        return pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        if verify is True:
            # system_trust: requests would name its own CA bundle (certifi); with none
            # named, urllib3 loads the system's CAs, which check a mirror as before.
            conn.ca_certs = None
            conn.ca_cert_dir = None


# --- the Link ------------------------------------------------------------------------------


class Answer:
    """An answer whose body is still on the wire; its exchange ends with ``close()``."""

    def __init__(self, link: Link, exchange: _Exchange, response: requests.Response) -> None:
        self._link = link
        self._exchange = exchange
        self._response = response
        self.status = response.status_code

    def read(self, max_bytes: int = MAX_ANSWER_BYTES) -> bytes:
        """The whole body, or ProtocolError when it is larger than ``max_bytes``."""
        with self._link._errors(self._exchange):
            data = self._response.raw.read(max_bytes + 1, decode_content=True)
            if self._exchange.expired:
                raise DeadlineExceeded("the deadline passed during the answer")
        if len(data) > max_bytes:
            raise ProtocolError(f"the server's answer is larger than {max_bytes} bytes")
        return bytes(data)

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (the caller caps it), ending the exchange when done."""
        try:
            while True:
                with self._link._errors(self._exchange):
                    # Decoded as read() is: a gzip-encoded file reaches python-tuf as itself.
                    chunk = self._response.raw.read1(CHUNK_BYTES, decode_content=True)
                    if self._exchange.expired:
                        raise DeadlineExceeded("the deadline passed during the answer")
                if not chunk:
                    return
                self._link.bytes_received += len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()  # an unread body never stays on a pooled connection
        self._link._end(self._exchange)


class Link:
    """One requests Session to the county: mTLS, a deadline per exchange, ServerCheck.

    ``ca`` is the pinned county CA; None only where nothing can be checked yet (the
    CA download at provisioning, which the code's fingerprint checks afterwards),
    for a plain-HTTP address (a test repository), or with ``system_trust`` for a
    repository mirror a technician names (the system's CAs, checked by the ssl
    module at the wall clock; python-tuf verifies what it serves). One exchange at a time: a Link
    belongs to one thread at a time (the sync thread, or one update refresh).

    A connection whose answer was read to its end serves the next exchange (urllib3's
    pool), until ``close()``, which drops it; the Link can be used again afterwards,
    on a new connection. So the exchanges between two ``close()`` calls share one TLS
    handshake: a sync's batches, and the update check the daemon sends on the sync's
    Link before closing it (docs/county-scale.md). An answer closed before its end
    closes its connection: an unread body never stays on a pooled connection.
    """

    def __init__(
        self,
        ca: x509.Certificate | None,
        *,
        client_cert: tuple[str, str] | None = None,
        county_time: Callable[[], int | None] = lambda: None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 20.0,
        system_trust: bool = False,
    ) -> None:
        self.server_check = ServerCheck(ca, county_time) if ca is not None else None
        self.timeouts = (connect_timeout_s, read_timeout_s)
        self.bytes_received = 0
        self._exchange: _Exchange | None = None
        # A duplicate descriptor of every socket this Link opened: the TLS wrapper
        # detaches the original socket object, but shutdown() acts on the socket both
        # share. A pooled connection serves later exchanges, so each deadline shuts
        # them all (an idle one is reopened by urllib3 when it finds it dropped).
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        # ServerCheck verifies the chain and host after the handshake (at the trusted
        # time as well as the wall clock), so the ssl module checks nothing itself. Its
        # context is made once, with the client certificate: left to urllib3, every new
        # connection made a context and loaded the system's whole CA store into it
        # (49 ms of CPU on the x86_64 work machine, by cProfile), for no use.
        self.tls: ssl.SSLContext | None = None
        if not (ca is None and system_trust):
            tls = create_urllib3_context(cert_reqs=ssl.CERT_NONE)
            try:
                if client_cert is not None:
                    tls.load_cert_chain(*client_cert)
                self.tls = tls
            except (OSError, ssl.SSLError):
                pass  # unreadable: each connection fails on it as before, a NetworkError
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies from the environment
        self.session.mount("https://", _LinkAdapter(self))
        self.session.mount("http://", _LinkAdapter(self))
        self.session.verify = ca is None and system_trust
        if client_cert is not None and self.tls is None:
            self.session.cert = client_cert

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def opened(self) -> int:
        """Connections this Link opened since its last ``close()`` (each one handshake)."""
        with self._lock:
            return len(self._socks)

    def close(self) -> None:
        """Drop the pooled connections (a new exchange opens new ones)."""
        self.session.close()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()

    def _register(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self._exchange is not None and self._exchange.expired:
                self._shut(dup)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _expired(self) -> None:
        with self._lock:
            for sock in self._socks:
                self._shut(sock)

    def _end(self, exchange: _Exchange) -> None:
        exchange.close()
        if self._exchange is exchange:
            self._exchange = None

    def open(
        self,
        method: str,
        url: str,
        deadline_at: float,
        *,
        body: bytes | None = None,
        timeouts: tuple[float, float] | None = None,
    ) -> Answer:
        """Send a request; the answer's status is read, its body not yet (close it)."""
        exchange = _Exchange(deadline_at, self._expired)
        self._exchange = exchange
        try:
            remaining = exchange.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("the deadline passed before the request")
            connect, read = timeouts or self.timeouts
            with self._errors(exchange):
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"} if body is not None else None,
                    timeout=(min(connect, remaining), min(read, remaining)),
                    stream=True,
                    allow_redirects=False,
                )
        except BaseException:
            self._end(exchange)
            raise
        return Answer(self, exchange, response)

    def exchange(
        self,
        method: str,
        url: str,
        deadline_at: float,
        *,
        body: bytes | None = None,
        timeouts: tuple[float, float] | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> tuple[int, bytes]:
        """One whole exchange: (HTTP status, body of at most ``max_bytes``)."""
        answer = self.open(method, url, deadline_at, body=body, timeouts=timeouts)
        try:
            return answer.status, answer.read(max_bytes)
        finally:
            answer.close()

    def get_bytes(
        self, url: str, deadline_at: float, timeouts: tuple[float, float] | None = None
    ) -> bytes:
        """GET a small body; any status but 200 is ServerRefused."""
        status, data = self.exchange("GET", url, deadline_at, timeouts=timeouts)
        if status != 200:
            raise ServerRefused(f"GET {url}: HTTP {status}")
        return data

    def post_json(
        self,
        url: str,
        body: bytes,
        deadline_at: float,
        timeouts: tuple[float, float] | None = None,
    ) -> tuple[int, Any]:
        """POST a JSON body (already encoded); (HTTP status, the answer's JSON or None)."""
        status, data = self.exchange("POST", url, deadline_at, body=body, timeouts=timeouts)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            if status >= 500:
                return status, None
            raise ProtocolError(f"the server's answer is not JSON (HTTP {status})") from None

    @contextlib.contextmanager
    def _errors(self, exchange: _Exchange) -> Iterator[None]:
        """Library and socket errors as LinkErrors: the deadline's, the certificate's, or
        the network's."""
        try:
            with warnings.catch_warnings():
                # urllib3 warns on every unverified request; ServerCheck does the checking.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                yield
        except LinkError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # A read timeout capped at the time remaining fires at the deadline, a moment
            # before the timer thread marks the exchange expired: the deadline's, too.
            if exchange.expired or exchange.remaining() <= _DEADLINE_SLACK_S:
                raise DeadlineExceeded(
                    "the deadline passed: the link is too slow or stalled"
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
