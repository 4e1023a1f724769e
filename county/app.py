"""The county server's HTTPS API and the uvicorn server that carries it.

This module owns the HTTP surface of docs/sync-protocol.md: the CA download
and the one request allowed without a client certificate (provisioning), the
ledger upload answered with the acknowledged mark and the server's signed time,
and mapping each TLS client certificate to its terminal. uvicorn does not hand
the peer certificate to the app, so a small h11 protocol subclass reads it off
the TLS transport once per connection and puts it in the ASGI scope as the
ASGI TLS extension (``scope["extensions"]["tls"]``). It never holds intake
rules (the store does) and never reads certificates from headers, which any
client could forge. It also owns what a hostile client can make the server do
before any rule applies (docs/sync-protocol.md, "Hostile input"): every body is
capped before it is read, malformed input is a one-line 400 and never a 500,
and slow handshakes, headers and bodies are cut after a timeout.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import logging
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import h11
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from county import ca
from county.db.engine import Database, PoolLimits
from county.intake import SEEN_STEP_MS
from county.store import (
    GAP,
    OK,
    BatchInvalid,
    CountyStore,
    DatabaseUnavailable,
    IntakeResult,
    Limits,
    ProvisionRefused,
    StoreError,
)
from protocol.wire import PROTOCOL_VERSION, StatusInvalid, parse_status, time_message

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost the server before any API rule applies."""

    # Bytes of a provisioning request: a code, a CSR and two hex keys take about 1 KiB.
    provision_body_bytes: int = 64 * 1024
    # Bytes of a body on any other path but the ledger upload (capped by the store's
    # Limits.max_body_bytes): no other endpoint takes a body at all.
    other_body_bytes: int = 64 * 1024
    # Seconds for the TLS handshake, and again for the TLS close (waiting for the
    # client's close_notify): asyncio's defaults are 60 and 30, and uvicorn passes none.
    tls_timeout_s: float = 10.0
    # Seconds from the end of the handshake (or a keep-alive request's first byte) to
    # the end of the request headers, which a terminal sends in one write.
    header_timeout_s: float = 10.0
    # Seconds from the end of the headers to the end of the body: a 500-entry batch
    # (about 250 KB) needs 8 KB/s, and the terminal's whole sync has 60 s.
    body_timeout_s: float = 30.0


# --- hostile input: capped bodies, one-line problems ------------------------------------


class BodyCap:
    """ASGI middleware: every request body is capped before the app reads it.

    A declared Content-Length above the path's cap is answered 413 without reading a
    byte; a chunked (or undeclared) body is cut as soon as it passes the cap. Any
    answer sent before the body was read to its end closes the connection, so the
    server never reads the rest of an unwanted body just to throw it away.
    """

    def __init__(self, app: ASGIApp, cap_for: Callable[[str], int]) -> None:
        self.app = app
        self.cap_for = cap_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap_for(scope["path"])
        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value)  # h11 refused anything but digits already
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared > cap:
            await _too_large(cap)(scope, receive, send)
            return
        body_pending = chunked or bool(declared)
        received = 0
        cut = False
        answered = False

        async def capped_receive() -> MutableMapping[str, Any]:
            nonlocal received, body_pending, cut, answered
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_pending = False
                if received > cap:
                    # The app never sees the excess; it sees the client leave.
                    cut = True
                    if not answered:
                        answered = True
                        await _too_large(cap)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def closing_send(message: MutableMapping[str, Any]) -> None:
            nonlocal answered
            if cut:
                return  # the 413 went out instead
            if message["type"] == "http.response.start":
                answered = True
                if body_pending:
                    headers = list(message.get("headers", []))
                    headers.append((b"connection", b"close"))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, capped_receive, closing_send)
        except ClientDisconnect:
            return  # cut at the cap, or the client left: nobody to answer


def _too_large(cap: int) -> JSONResponse:
    return _problem(413, f"the request body is larger than {cap} bytes", {"Connection": "close"})


class Malformed(Exception):
    """A request body that is not what the endpoint takes (HTTP 400, one line)."""


# SQLite and CBOR hold signed 64-bit integers; a bigger one can only be an attack or a bug.
_INT64 = range(-(2**63), 2**63)


def json_object(raw: bytes, content_type: str | None, what: str) -> dict[str, Any]:
    """A JSON object from a request body, or Malformed with a line a person can act on."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        shown = media[:40] or "no Content-Type"
        raise Malformed(f"{what} must be sent as application/json, not {shown}")
    if not raw.strip():
        raise Malformed(f"{what} is empty")

    def no_constant(name: str) -> Any:
        raise Malformed(f"{what} holds {name}, which JSON does not allow")

    try:
        doc = json.loads(raw, parse_constant=no_constant)
    except RecursionError:
        raise Malformed(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise Malformed(f"{what} is not JSON: {exc.msg} at byte {exc.pos}") from None
    except ValueError:  # not UTF-8, or an integer of thousands of digits
        raise Malformed(f"{what} is not JSON in UTF-8 with integers of sane size") from None
    if not isinstance(doc, dict):
        raise Malformed(f"{what} must be a JSON object, not {type(doc).__name__}")
    # One pass without recursion (a document nested just under the parser's limit
    # would overflow a recursive walk): every text must be storable (no lone
    # surrogates, no NUL) and every integer fit 64 bits.
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise Malformed(f"{what} holds text that is not valid Unicode") from None
            if "\x00" in item:
                # PostgreSQL cannot store U+0000 in text (SQLite could): refused on both
                # backends alike before anything is written, a 400 and never a 500
                # that tells the terminal to retry the batch for ever.
                raise Malformed(f"{what} holds a NUL character (U+0000) in a text")
        elif type(item) is int and item not in _INT64:
            raise Malformed(f"{what} holds an integer beyond 64 bits (over 2^63 - 1)")
    return doc


# --- the peer certificate ------------------------------------------------------------


class _WithPeerCert:
    """ASGI wrapper that adds the connection's client certificate to every scope."""

    def __init__(self, app: ASGIApp, der: bytes | None) -> None:
        self.app = app
        self.der = der

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chain = []
        if self.der is not None:
            chain.append(ssl.DER_cert_to_PEM_cert(self.der))
        extensions = scope.setdefault("extensions", {})
        extensions["tls"] = {"client_cert_chain": chain, "client_cert_der": self.der}
        await self.app(scope, receive, send)


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the verified client certificate of the TLS connection,
    and deadlines for a request's headers and body (HttpLimits).

    uvicorn itself times out only an idle keep-alive connection: a client that sends
    one header byte now and then, or a body byte now and then, holds its connection
    (and a file descriptor) forever. Here the headers must be complete within
    ``header_timeout_s`` of the handshake or of the next request's first byte, and
    the body within ``body_timeout_s`` of the headers; a request too slow is answered
    408 if nothing was answered yet, and the connection is closed.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    # The TCP connection under TLS (set by tls_server_protocol), for a prompt close at a stop.
    tcp_transport: asyncio.Transport | None = None
    _deadline: asyncio.TimerHandle | None = None
    _phase = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        base = self.__dict__.setdefault("_base_app", self.app)
        ssl_object = transport.get_extra_info("ssl_object")
        # asyncio calls connection_made only after the TLS handshake, and the
        # context verified any certificate against the county CA by then.
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app = _WithPeerCert(base, der)
        self._start("headers")

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._start("headers")  # the first byte of the next request on this connection
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()  # a pipelined request may have begun

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server is stopping: an idle keep-alive connection is closed at once. Its
        TLS close alone would wait for the client's close_notify, which a terminal's
        pooled connection, read by nobody, never sends: every stop and restart waited
        out the whole graceful-shutdown time (2 s) for it. So, once the TLS close has
        queued our close_notify, the TCP connection under it is closed too: what is
        still buffered there (the end of the last answer, the close_notify) is sent
        first, and nothing waits for the client. A request in progress is answered and
        then closed, as uvicorn does; so is a connection whose answer is still waiting
        in the TLS layer itself."""
        idle = self.cycle is None or self.cycle.response_complete
        # Read before uvicorn's close below: asyncio's TLS transport, closed a second time
        # (one already closing, after a "Connection: close" answer), lets go of its state.
        transport = self.transport
        pending = 0 if transport.is_closing() else transport.get_write_buffer_size()
        super().shutdown()
        tcp = self.tcp_transport
        if idle and pending == 0 and tcp is not None:
            tcp.close()

    def _follow(self) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._start("body")
        elif state is not h11.IDLE:
            self._stop()  # the request is in (or the connection is over)

    def _start(self, phase: str) -> None:
        self._stop()
        self._phase = phase
        timeout = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
        self._deadline = self.loop.call_later(timeout, self._too_slow)

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = ""

    def _too_slow(self) -> None:
        phase, self._deadline = self._phase, None
        if self.transport.is_closing():
            return
        cycle = self.cycle if phase == "body" else None
        if cycle is None or not cycle.response_started:
            timeout = (
                self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
            )
            body = json.dumps(
                {"problem": f"the request {phase} took longer than {timeout:g} s"}
            ).encode()
            # Written past h11, which cannot answer a request it has not seen whole.
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
            )
            if cycle is not None:
                # What uvicorn does when the client leaves: the app's receive() says
                # so and anything it still sends is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
        self.transport.close()

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[PeerCertH11Protocol]:
        return type("CountyH11Protocol", (cls,), {"limits": limits})


def tls_server_protocol(
    protocol_class: type[PeerCertH11Protocol], ctx: ssl.SSLContext
) -> Callable[..., asyncio.BaseProtocol]:
    """A protocol factory that runs TLS itself around ``protocol_class``, with deadlines.

    loop.create_server takes ssl_handshake_timeout, but uvicorn does not pass it, so
    a client could hold a connection for 60 s per handshake it never finishes. This
    is what create_server(ssl=ctx) builds inside (asyncio's SSLProtocol around the
    HTTP protocol, created on each accepted socket), with the timeouts set."""
    timeout = protocol_class.limits.tls_timeout_s

    def make(**kwargs: Any) -> asyncio.BaseProtocol:
        http = protocol_class(**kwargs)
        tls = _ServerTls(
            asyncio.get_running_loop(),
            http,
            ctx,
            None,  # type: ignore[arg-type]  # no waiter: nobody awaits the handshake
            server_side=True,
            ssl_handshake_timeout=timeout,  # type: ignore[arg-type]  # a float, as asyncio's own
            ssl_shutdown_timeout=timeout,
        )
        tls.http = http
        return tls

    return make


class _ServerTls(asyncio.sslproto.SSLProtocol):
    """asyncio's TLS protocol, which tells the HTTP protocol inside it the TCP transport
    underneath (PeerCertH11Protocol.shutdown closes it at a stop)."""

    http: PeerCertH11Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.http is not None and isinstance(transport, asyncio.Transport):
            self.http.tcp_transport = transport
        super().connection_made(transport)


def peer_cert_der(request: Request) -> bytes | None:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    der = tls.get("client_cert_der")
    return der if isinstance(der, bytes) else None


# --- API models (responses are built by hand; these give the OpenAPI description) -------


class SignedTime(BaseModel):
    terminal: str
    server_ms: int
    acked_seq: int
    nonce: str
    signature: str


class BatchAnswer(BaseModel):
    protocol: int
    status: str
    acked_seq: int
    resume_from: int
    accepted: int
    duplicates: int
    alarm: str | None
    problem: str | None
    time: SignedTime


class BatchRequest(BaseModel):
    nonce: str
    entries: list[list[Any]]
    checkpoints: list[list[Any]]


class ProvisionRequest(BaseModel):
    code: str
    csr: str
    ledger_key: str
    nonce: str = ""


class ProvisionAnswer(BaseModel):
    protocol: int
    terminal_id: str
    canteen: str
    certificate: str
    ca: str
    time_key: str
    time: SignedTime


class Problem(BaseModel):
    problem: str


@dataclass
class CountyKeys:
    paths: ca.CAPaths
    time_key_public: bytes
    ca_pem: bytes

    @classmethod
    def load(cls, data: Path) -> CountyKeys:
        paths = ca.CAPaths(data)
        time_key = ca.load_time_key(paths)
        cert = ca.load_ca_cert(paths)
        return cls(
            paths,
            time_key.public_key().public_bytes_raw(),
            cert.public_bytes(serialization.Encoding.PEM),
        )


def _problem(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"problem": text}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it grows past ``limit`` (an endless body).

    BodyCap has refused a larger declared length already; this stops a chunked one."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _text(doc: dict[str, Any], name: str, default: str | None = None) -> str:
    value = doc.get(name, default)
    if not isinstance(value, str):
        raise Malformed(f"{name} must be a string" if name in doc else f"{name} is missing")
    return value


def create_app(
    data: Path,
    store: CountyStore,
    clock: Callable[[], int] = wall_ms,
    http_limits: HttpLimits | None = None,
) -> FastAPI:
    """The county API over ``store``, signing time with the key in ``data``."""
    keys = CountyKeys.load(data)
    time_key = ca.load_time_key(keys.paths)
    limits = http_limits or HttpLimits()
    # A terminal's status and sync history: written as often as its last_seen_ms.
    seen = FleetNotes(SEEN_STEP_MS)
    app = FastAPI(
        title="canteen county server",
        version=str(PROTOCOL_VERSION),
        description="Ledger intake and terminal provisioning; see docs/sync-protocol.md.",
    )

    def cap_for(path: str) -> int:
        if path == "/v1/ledger":
            return store.limits.max_body_bytes
        if path == "/v1/provision":
            return limits.provision_body_bytes
        return limits.other_body_bytes

    app.add_middleware(BodyCap, cap_for=cap_for)

    async def server_failed(_request: Request, exc: Exception) -> Response:
        # A bug, not the client's fault: one line, no traceback to the client (the log
        # has it). Malformed input must never get here: a 5xx makes a terminal retry.
        return _problem(
            500, f"the county server failed on this request ({type(exc).__name__}); see its log"
        )

    app.add_exception_handler(Exception, server_failed)

    async def database_unavailable(_request: Request, exc: Exception) -> Response:
        # The database cannot answer now (busy, restarting, no free connection): nothing
        # was written, and the terminal retries the same request later.
        return _unavailable(exc)

    # Any request that reaches the store: provisioning, the certificate lookup, intake.
    app.add_exception_handler(DatabaseUnavailable, database_unavailable)

    def signed_time(terminal_id: str, acked: int, nonce: bytes) -> dict[str, Any]:
        now = clock()
        signature = time_key.sign(time_message(terminal_id, now, acked, nonce))
        return {
            "terminal": terminal_id,
            "server_ms": now,
            "acked_seq": acked,
            "nonce": nonce.hex(),
            "signature": signature.hex(),
        }

    @app.get("/v1/health", response_model=dict[str, Any])
    def health() -> dict[str, Any]:
        return {"ok": True, "protocol": PROTOCOL_VERSION}

    @app.get("/v1/ca.pem", response_class=PlainTextResponse)
    def ca_pem() -> Response:
        """The county CA certificate; the terminal checks it against its provisioning code."""
        return Response(keys.ca_pem, media_type="application/x-pem-file")

    @app.post(
        "/v1/provision",
        response_model=ProvisionAnswer,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ProvisionRequest.model_json_schema()}},
            }
        },
        responses={403: {"model": Problem}, 400: {"model": Problem}, 413: {"model": Problem}},
    )
    async def provision(request: Request) -> Any:
        """Trade a one-time code and a CSR for a client certificate (no client cert needed)."""
        # Parsed by hand, not by pydantic, so the body is capped before it is read:
        # anyone may call this endpoint, with no certificate.
        raw = await _read_body(request, limits.provision_body_bytes)
        if raw is None:
            return _too_large(limits.provision_body_bytes)
        try:
            doc = json_object(raw, request.headers.get("content-type"), "the request")
            code = _text(doc, "code")
            csr = _text(doc, "csr")
            ledger_key_hex = _text(doc, "ledger_key")
            nonce_hex = _text(doc, "nonce", "")
        except Malformed as exc:
            return _problem(400, str(exc))
        try:
            ledger_key = bytes.fromhex(ledger_key_hex)
            nonce = bytes.fromhex(nonce_hex)
            if len(ledger_key) != 32 or len(nonce) > 64:
                raise ValueError
        except ValueError:
            return _problem(
                400,
                "ledger_key must be 32 bytes of hex (the terminal's Ed25519 key), "
                "nonce at most 64 bytes of hex",
            )
        now = clock()
        try:
            term = await run_in_threadpool(store.redeem_code, code, ledger_key, now)
            cert = await run_in_threadpool(
                ca.issue_terminal_cert, keys.paths, csr.encode(), term.terminal_id
            )
            der = cert.public_bytes(serialization.Encoding.DER)
            await run_in_threadpool(
                store.bind_certificate,
                code,
                term.terminal_id,
                ca.cert_sha256(der),
                ledger_key,
                now,
            )
        except ProvisionRefused as exc:
            return _problem(403, str(exc))
        except ca.CAError as exc:
            return _problem(400, str(exc))
        return {
            "protocol": PROTOCOL_VERSION,
            "terminal_id": term.terminal_id,
            "canteen": term.canteen,
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca": keys.ca_pem.decode(),
            "time_key": keys.time_key_public.hex(),
            "time": signed_time(term.terminal_id, 0, nonce),
        }

    @app.post(
        "/v1/ledger",
        response_model=BatchAnswer,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": BatchRequest.model_json_schema()}},
            }
        },
        responses={
            400: {"model": Problem},
            401: {"model": Problem},
            409: {"model": BatchAnswer, "description": "refused: fork or altered entries"},
            413: {"model": Problem},
            503: {"model": Problem},
        },
    )
    async def ledger(request: Request) -> Response:
        """Upload a batch of ledger entries; answers the acknowledged mark and signed time."""
        der = peer_cert_der(request)
        if der is None:
            return _problem(401, "a client certificate is required: provision this terminal")
        # A database read: in the thread pool, so the event loop (every other connection's
        # handshakes and bodies) never waits on the database.
        who = await run_in_threadpool(store.terminal_for_cert, ca.cert_sha256(der))
        if who is None:
            # A retired terminal's certificate is revoked: 403 with why (county/replacement.py).
            from county.replacement import refusal_for_cert

            retired = await run_in_threadpool(refusal_for_cert, store.db, ca.cert_sha256(der))
            if retired is not None:
                return _problem(403, retired)
            return _problem(401, "this certificate is not (or no longer) a provisioned terminal")
        terminal_id = who[0]
        raw = await _read_body(request, store.limits.max_body_bytes)
        if raw is None:
            return _too_large(store.limits.max_body_bytes)
        # Parsed by hand, not by pydantic: a batch is thousands of small arrays.
        try:
            doc = json_object(raw, request.headers.get("content-type"), "the batch")
            # What the terminal says about itself (optional: an older terminal sends none).
            reported = parse_status(doc["status"]) if doc.get("status") is not None else None
        except Malformed as exc:
            return _problem(400, str(exc))
        except StatusInvalid as exc:
            return _problem(400, f"the batch's {exc}")
        try:
            # One trip to the thread pool: the intake (its clock offsets included, in
            # one transaction), what config_applied entries say the terminal runs, and
            # the terminal's status and sync history for the fleet.
            result = await run_in_threadpool(
                _take_batch, data, store, terminal_id, doc, clock(), reported, seen
            )
        except BatchInvalid as exc:
            return _problem(400, str(exc))
        except DatabaseUnavailable as exc:
            return _unavailable(exc)
        except StoreError as exc:
            return _problem(401, str(exc))
        nonce = bytes.fromhex(doc.get("nonce", "")) if isinstance(doc, dict) else b""
        answer = {
            "protocol": PROTOCOL_VERSION,
            "status": result.status,
            "acked_seq": result.acked_seq,
            "resume_from": result.resume_from,
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "alarm": result.alarm,
            "problem": result.problem,
            "time": signed_time(terminal_id, result.acked_seq, nonce),
        }
        status = 200 if result.status in (OK, GAP) else 409
        return JSONResponse(answer, status_code=status)

    return app


def _unavailable(exc: Exception) -> Response:
    """503 with Retry-After: the county database cannot answer now; try again."""
    line = " ".join(str(exc).split())
    return _problem(503, f"the county database is busy: {line}", {"Retry-After": "5"})


def _take_batch(
    data: Path,
    store: CountyStore,
    terminal_id: str,
    doc: Any,
    now_ms: int,
    status: dict[str, Any] | None = None,
    seen: FleetNotes | None = None,
) -> IntakeResult:
    """One upload batch through the store's intake, then its config_applied entries noted.

    With ``seen``: the terminal's status and a line of its sync history are written in
    the intake's own write transaction (one commit a sync, as before); an empty batch
    answered from a read (county/intake.py, ``answer_empty``) writes them in a small
    transaction of their own, and only when ``FleetNotes`` says they are due."""
    if seen is None:
        result = store.intake(terminal_id, doc, now_ms)
    else:
        result = _intake_noting(store, terminal_id, doc, now_ms, status, seen)
    if result.status in (OK, GAP):
        _record_applied_sets(data, terminal_id, doc)
    return result


def _intake_noting(
    store: CountyStore,
    terminal_id: str,
    doc: Any,
    now_ms: int,
    status: dict[str, Any] | None,
    seen: FleetNotes,
) -> IntakeResult:
    """``CountyStore.intake`` (county/store.py) with the fleet's note in its transaction."""
    from county import intake

    if isinstance(doc, dict) and doc.get("entries") == []:
        with store.db.read() as conn:
            answer = intake.answer_empty(conn, store.limits, terminal_id, doc, now_ms)
        if answer is not None:
            if seen.due(terminal_id, now_ms, status, answer):
                try:
                    with store.db.write() as conn:
                        seen.write(conn, terminal_id, now_ms, status, answer)
                    seen.remember(terminal_id, now_ms, status)
                except Exception as exc:  # the answer stands: only the note is lost
                    log.warning("terminal %s: its status was not kept: %s", terminal_id, exc)
            return answer
    checked = intake.check_alone(doc, store.limits)  # before this process's writer turn
    with store.db.write() as conn:
        result = intake.take(conn, store.limits, store.lists, terminal_id, doc, now_ms, checked)
        noted = seen.due(terminal_id, now_ms, status, result)
        if noted:
            seen.write(conn, terminal_id, now_ms, status, result)
    if noted:
        seen.remember(terminal_id, now_ms, status)
    return result


class FleetNotes:
    """When a terminal's status and sync history (county/fleet.py) are written.

    An upload that stored, refused or held entries is one line of history, and the
    status with it; an empty upload (a terminal with nothing new, every sync interval)
    writes nothing, unless its status changed since this process last wrote it or that
    was ``heartbeat_ms`` ago."""

    def __init__(self, heartbeat_ms: int) -> None:
        self.heartbeat_ms = heartbeat_ms
        self._last: dict[str, tuple[dict[str, Any] | None, int]] = {}

    def due(
        self,
        terminal_id: str,
        now_ms: int,
        status: dict[str, Any] | None,
        result: IntakeResult,
    ) -> bool:
        if result.accepted or result.duplicates or result.status != OK:
            return True
        last = self._last.get(terminal_id)
        return last is None or last[0] != status or not 0 <= now_ms - last[1] < self.heartbeat_ms

    def write(
        self,
        conn: Any,
        terminal_id: str,
        now_ms: int,
        status: dict[str, Any] | None,
        result: IntakeResult,
    ) -> None:
        from county import fleet

        fleet.note_upload(
            conn,
            terminal_id,
            now_ms,
            status=status,
            outcome=result.status,
            accepted=result.accepted,
            duplicates=result.duplicates,
            acked_seq=result.acked_seq,
            alarm=result.alarm,
        )

    def remember(self, terminal_id: str, now_ms: int, status: dict[str, Any] | None) -> None:
        self._last[terminal_id] = (status, now_ms)


def _record_applied_sets(data: Path, terminal_id: str, doc: Any) -> None:
    """Each config_applied entry in an accepted batch tells county IT what this terminal runs."""
    from county import updates

    if not updates.RepoPaths(data).metadata.is_dir():
        return  # this county publishes no updates
    rows = doc.get("entries") if isinstance(doc, dict) else None
    for row in rows or []:
        # Wire rows are the ledger's hashed columns in order: [3] kind, [2] at_ms, [15] detail.
        if not isinstance(row, list) or len(row) < 16 or row[3] != "config_applied":
            continue
        try:
            detail = json.loads(row[15])
            updates.record_applied(data, terminal_id, detail, int(row[2]))
        except (ValueError, TypeError, RecursionError, OSError, sqlite3.Error):
            continue  # the entry itself is stored; only the report line is lost


# --- TLS and the server --------------------------------------------------------------


def server_ssl_context(paths: ca.CAPaths) -> ssl.SSLContext:
    """TLS 1.2+ with the county server certificate; client certificates optional, verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(paths.server_cert, paths.server_key)
    ctx.load_verify_locations(paths.ca_cert)
    # Optional, not required: provisioning comes before the terminal has one.
    # Every other endpoint refuses a request without one.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # No session tickets (measured in docs/county-scale.md, "Session resumption"): a
    # resumed session saves the server little of a connection's cost (the terminal's
    # update check rides its sync's connection instead), skips the client certificate's
    # chain and validity check, and its tickets, sent after the handshake, are bytes a
    # proxy that counts them would take for the answer.
    ctx.num_tickets = 0
    return ctx


class CountyServer:
    """uvicorn serving the county API on a socket it binds itself (port 0: any free port)."""

    def __init__(
        self,
        data: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        database_url: str | None = None,
        limits: Limits | None = None,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
        log_level: str = "warning",
        refresh_interval_s: float = 60.0,
        http_limits: HttpLimits | None = None,
        pool: PoolLimits | None = None,
    ) -> None:
        self.data = Path(data)
        self.database_url = database_url
        # The embedded SQLite file in the data directory, or the database the URL names.
        db: Database | Path | str = ca_db_path(self.data) if database_url is None else database_url
        # Pool limits given (serve's --pool-size/--pool-overflow/--pool-timeout): the server
        # opens the database with them itself, and closes it after the store.
        self._db: Database | None = None
        if pool is not None:
            busy_ms = (limits or Limits()).busy_timeout_ms
            url = db if isinstance(db, str) and "://" in db else f"sqlite:///{db}"
            db = self._db = Database(url, replace(pool, busy_timeout_ms=busy_ms))
        from county.published import Published

        self.store = CountyStore(db, limits, Published(self.data))
        self.store.db.checkpoint_in_background()  # SQLite only (county/db/engine.py)
        self.http_limits = http_limits or HttpLimits()
        fastapi_app = create_app(self.data, self.store, http_limits=self.http_limits)
        # Signed updates (docs/updates.md): the TUF repository, served read-only.
        from county import updates

        updates.mount_repository(fastapi_app, self.data)
        self._stop_refresher: Callable[[], None] | None = None
        self.refresh_interval_s = refresh_interval_s
        app: ASGIApp = fastapi_app
        if wrap is not None:
            app = wrap(app)
        paths = ca.CAPaths(self.data)
        ctx = server_ssl_context(paths)
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            # TLS is in the protocol factory (no ssl_* options here), for its deadlines.
            http=tls_server_protocol(  # type: ignore[arg-type]
                PeerCertH11Protocol.with_limits(self.http_limits), ctx
            ),
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(self.config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small answers must not wait for a delayed ACK (about 40 ms each, per request).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((host, port))
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until interrupted (SIGINT/SIGTERM in the main thread)."""
        self._start_refresher()
        try:
            self.server.run(sockets=[self.sock])
        finally:
            if self._stop_refresher is not None:
                self._stop_refresher()
            self.store.close()
            if self._db is not None:
                self._db.close()

    def start(self, timeout: float = 10.0) -> CountyServer:
        """Serve in a background thread; return once it accepts connections."""
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            daemon=True,
            name="county-server",
        )
        self._thread.start()
        self._start_refresher()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the county server did not start")
            time.sleep(0.01)
        return self

    def _start_refresher(self) -> None:
        """Re-sign the timestamp before it expires and publish conflicts' revocations."""
        from county import updates

        if self._stop_refresher is None and updates.RepoPaths(self.data).metadata.is_dir():
            self._stop_refresher = updates.start_timestamp_refresher(
                self.data, self.refresh_interval_s, database_url=self.database_url
            )

    def stop(self) -> None:
        if self._stop_refresher is not None:
            self._stop_refresher()
            self._stop_refresher = None
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
        self.store.close()
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> CountyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DB_FILE = "county.sqlite"


def ca_db_path(data: Path) -> Path:
    return data / DB_FILE


def database_url_path(url: str) -> Path:
    from county.store import database_path

    return database_path(url)


def new_provisioning_code(data: Path, secret_hex: str) -> str:
    """The code a technician types: the secret, then the CA fingerprint the terminal pins."""
    cert = ca.load_ca_cert(ca.CAPaths(data))
    return f"{secret_hex}-{ca.ca_fingerprint(cert)[: ca.CODE_FINGERPRINT_CHARS]}"


def certificate_fingerprint_pem(pem: bytes) -> str:
    return ca.ca_fingerprint(x509.load_pem_x509_certificate(pem))


__all__ = [
    "CountyServer",
    "PeerCertH11Protocol",
    "create_app",
    "new_provisioning_code",
    "server_ssl_context",
]
