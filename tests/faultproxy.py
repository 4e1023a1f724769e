"""A fault-injecting TCP proxy on 127.0.0.1, and an ASGI wrapper that answers 500.

This module owns breaking the link between a terminal and the county server
on purpose, the way a township network does: latency, a connection cut before
the request reaches the server (nothing committed) or after it did (committed,
never answered), a stall in the middle of an answer, an answer trickling at a
few bytes per second, and a partition (connections refused). Traffic is TLS
end to end, so the proxy sees only bytes; it triggers on how many bytes the
client has sent, which separates the handshake from a batch upload. HTTP 500s
cannot be injected into TLS from outside, so ``ServerFaults`` wraps the real
county app and answers 500 before or after the app committed. The tests and
hw-sim use both; nothing here is imported by the terminal or the server.
"""

from __future__ import annotations

import contextlib
import json
import random
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

PASS = "pass"
LATENCY = "latency"  # delay every chunk, both ways
CUT_BEFORE = "cut_before"  # close once the client has sent `after` bytes, not forwarding them
CUT_AFTER = "cut_after"  # forward the request, close when the server starts answering
STALL = "stall"  # forward part of the answer, then nothing for stall_s, then close
TRICKLE = "trickle"  # forward the server's bytes at bytes_per_s from the start
REFUSE = "refuse"  # close at once (a partition)


@dataclass(frozen=True)
class Fault:
    kind: str = PASS
    latency_s: float = 0.0
    after: int = 3000  # client bytes that mark "the request is on its way" (beyond the handshake)
    stall_s: float = 5.0
    bytes_per_s: float = 1.0


Plan = Callable[[int], Fault]


def random_plan(seed: int, weights: dict[str, float], **fault_args: Any) -> Plan:
    """A plan drawing each connection's fault from ``weights`` (kind -> weight), seeded."""
    rng = random.Random(seed)
    kinds = list(weights)
    lock = threading.Lock()

    def plan(_n: int) -> Fault:
        with lock:
            kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        return Fault(kind, **fault_args)

    return plan


class FaultProxy:
    """Listens on 127.0.0.1 (any free port) and forwards to ``upstream`` with faults."""

    def __init__(self, upstream: tuple[str, int], plan: Plan | None = None) -> None:
        self.upstream = upstream
        self.plan: Plan = plan or (lambda _n: Fault())
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.triggered: Counter[str] = Counter()  # faults that actually fired
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._accept.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # Wake accept() by connecting to ourselves, then close.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._accept.join(5)
        self.listener.close()
        for t in list(self._threads):
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._stop.is_set():
                client.close()
                return
            with self._lock:
                n = self.connections
                self.connections += 1
                self._threads = [t for t in self._threads if t.is_alive()]
            fault = self.plan(n)
            t = threading.Thread(target=self._serve, args=(client, fault), daemon=True)
            self._threads.append(t)
            t.start()

    def _fired(self, kind: str) -> None:
        with self._lock:
            self.triggered[kind] += 1

    def _serve(self, client: socket.socket, fault: Fault) -> None:
        if fault.kind == REFUSE:
            self._fired(REFUSE)
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        sent_by_client = 0
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "c2s")
        sel.register(server, selectors.EVENT_READ, "s2c")
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if fault.kind == LATENCY and fault.latency_s:
                        time.sleep(fault.latency_s)
                    if key.data == "c2s":
                        if fault.kind == CUT_BEFORE and sent_by_client + len(data) >= fault.after:
                            self._fired(CUT_BEFORE)
                            return
                        sent_by_client += len(data)
                        server.sendall(data)
                        continue
                    # Server to client.
                    request_sent = sent_by_client >= fault.after
                    if fault.kind == CUT_AFTER and request_sent:
                        self._fired(CUT_AFTER)
                        return
                    if fault.kind == STALL and request_sent:
                        self._fired(STALL)
                        client.sendall(data[: max(1, len(data) // 2)])
                        self._stop.wait(fault.stall_s)
                        return
                    if fault.kind == TRICKLE:
                        self._fired(TRICKLE)
                        for i in range(len(data)):
                            client.sendall(data[i : i + 1])
                            if self._stop.wait(1.0 / fault.bytes_per_s):
                                return
                        continue
                    client.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


# --- 500s from inside the server --------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

FAIL_BEFORE = "500_before"  # answer 500 without running the app: nothing committed
FAIL_AFTER = "500_after"  # run the app (it commits), then answer 500 instead of its answer


class ServerFaults:
    """ASGI wrapper for the county app: 500s on ledger uploads, chosen by ``plan``."""

    def __init__(self, app: ASGIApp, plan: Callable[[int], str]) -> None:
        self.app = app
        self.plan = plan
        self.requests = 0
        self.triggered: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/v1/ledger":
            await self.app(scope, receive, send)
            return
        with self._lock:
            n = self.requests
            self.requests += 1
        choice = self.plan(n)
        if choice == FAIL_BEFORE:
            self.triggered[choice] += 1
            while (await receive()).get("more_body"):
                pass
            await _answer_500(send)
            return
        if choice == FAIL_AFTER:
            self.triggered[choice] += 1

            async def swallow(_message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
            await _answer_500(send)
            return
        await self.app(scope, receive, send)


async def _answer_500(send: Callable[[Message], Awaitable[None]]) -> None:
    body = json.dumps({"problem": "injected server failure"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def random_server_plan(seed: int, before: float, after: float) -> Callable[[int], str]:
    rng = random.Random(seed)
    lock = threading.Lock()

    def plan(_n: int) -> str:
        with lock:
            x = rng.random()
        if x < before:
            return FAIL_BEFORE
        if x < before + after:
            return FAIL_AFTER
        return PASS

    return plan
