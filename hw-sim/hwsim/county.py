"""A county server on a bad network: the reference county server behind a fault-injecting proxy.

This module owns breaking the link between a terminal and the county server on
purpose, the way a township network does, and ``hw-sim county``'s server: a
TCP proxy on 127.0.0.1 with latency, connections cut before the request reaches
the server (nothing committed) or after it did (committed, never answered),
stalls in the middle of an answer, answers trickling at a few bytes per
second, and partitions (every connection refused, or black-holed: accepted and
never answered), switched by hand or by a schedule of windows; and
``ServerFaults``, an ASGI wrapper that answers 500 before or after the county
app committed (TLS is end to end, so a 500 cannot be injected from outside).
``CountySim`` puts the reference server (county.app.CountyServer, optionally
on a simulated clock) behind the proxy. Everything listens on loopback only
and stops when asked. It never touches a terminal's files, never changes what
the county server stores, and is never imported by the terminal or the
server: the tests (through tests/faultproxy.py) and the lunch-rush scenario
use it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from county.app import CountyServer
    from county.store import CountyStore

PASS = "pass"
LATENCY = "latency"  # delay every chunk, both ways
CUT_BEFORE = "cut_before"  # close once the client has sent `after` bytes, not forwarding them
CUT_AFTER = "cut_after"  # forward the request, close when the server starts answering
STALL = "stall"  # forward part of the answer, then nothing for stall_s, then close
TRICKLE = "trickle"  # forward the server's bytes at bytes_per_s from the start
REFUSE = "refuse"  # close at once (a partition)
BLACKHOLE = "blackhole"  # accept, read and drop everything, never answer (a partition)

PARTITION_MODES = (REFUSE, BLACKHOLE)


class CountySimError(Exception):
    """The simulated county cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class Fault:
    """What the proxy does to one connection."""

    kind: str = PASS
    latency_s: float = 0.0  # with kind LATENCY: the delay of every chunk
    after: int = 3000  # client bytes that mark "the request is on its way" (beyond the handshake)
    stall_s: float = 5.0
    bytes_per_s: float = 1.0
    delay_s: float = 0.0  # a base delay on every chunk, whatever the kind (hw-sim --latency-ms)


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


def parse_partitions(text: str) -> list[tuple[float, float]]:
    """``"START:END,START:END"`` (seconds from start) as sorted windows; a bad one says why."""
    windows: list[tuple[float, float]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            start_text, end_text = part.split(":")
            start, end = float(start_text), float(end_text)
        except ValueError:
            raise CountySimError(
                f"partition window {part!r} is not START:END in seconds, e.g. 60:120"
            ) from None
        if not 0 <= start < end:
            raise CountySimError(f"partition window {part!r}: need 0 <= START < END")
        windows.append((start, end))
    windows.sort()
    for (_, end), (start, _) in itertools.pairwise(windows):
        if start < end:
            raise CountySimError("partition windows overlap; give each second once")
    return windows


class FaultProxy:
    """Listens on 127.0.0.1 (``port`` 0: any free port) and forwards to ``upstream`` with faults.

    ``plan(n)`` chooses the fault of the n-th connection. ``set_partition``
    switches a partition on or off at any time: while it is on, new
    connections are refused (closed at once) or black-holed (accepted, their
    bytes dropped, never answered), and connections already open stop
    forwarding in the same way.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        plan: Plan | None = None,
        *,
        port: int = 0,
        partition_mode: str = REFUSE,
    ) -> None:
        if partition_mode not in PARTITION_MODES:
            raise CountySimError(f"partition mode must be one of {', '.join(PARTITION_MODES)}")
        self.upstream = upstream
        self.plan: Plan = plan or (lambda _n: Fault())
        self.partition_mode = partition_mode
        try:
            self.listener = socket.create_server(("127.0.0.1", port))
        except OSError as exc:
            raise CountySimError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); is another simulated "
                "county running? choose another --port"
            ) from None
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self.triggered: Counter[str] = Counter()  # faults that actually fired
        self._partitioned = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def partitioned(self) -> bool:
        return self._partitioned.is_set()

    def set_partition(self, on: bool) -> None:
        """Cut the network (``on``) or heal it."""
        if on:
            self._partitioned.set()
        else:
            self._partitioned.clear()

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

    def _black_hole(self, client: socket.socket) -> None:
        """Read and drop until the client gives up or the proxy stops."""
        self._fired(BLACKHOLE)
        client.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    if not client.recv(65536):
                        return
                except TimeoutError:
                    continue
        except OSError:
            return
        finally:
            client.close()

    def _serve(self, client: socket.socket, fault: Fault) -> None:
        if self._partitioned.is_set():
            if self.partition_mode == BLACKHOLE:
                self._black_hole(client)
            else:
                self._fired(REFUSE)
                client.close()
            return
        if fault.kind == REFUSE:
            self._fired(REFUSE)
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self._forward(client, server, fault)

    def _forward(self, client: socket.socket, server: socket.socket, fault: Fault) -> None:
        sent_by_client = 0
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "c2s")
        sel.register(server, selectors.EVENT_READ, "s2c")
        try:
            while not self._stop.is_set():
                if self._partitioned.is_set():
                    # The link went down under an open connection.
                    if self.partition_mode == REFUSE:
                        self._fired(REFUSE)
                        return
                    server.close()
                    sel.close()
                    self._black_hole(client)
                    return
                for key, _ in sel.select(timeout=0.2):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    delay = fault.delay_s + (fault.latency_s if fault.kind == LATENCY else 0.0)
                    if delay:
                        time.sleep(delay)
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
            with contextlib.suppress(Exception):
                sel.close()
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


class PartitionSchedule:
    """Switches a proxy's partition on and off at windows of seconds after ``start()``."""

    def __init__(
        self,
        proxy: FaultProxy,
        windows: Sequence[tuple[float, float]],
        on_change: Callable[[bool, float], None] | None = None,
    ) -> None:
        self.proxy = proxy
        self.windows = list(windows)
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="partition-schedule", daemon=True)
        self.started_at = 0.0

    def start(self) -> PartitionSchedule:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        for start, end in self.windows:
            for at, on in ((start, True), (end, False)):
                if self._stop.wait(max(0.0, self.started_at + at - time.monotonic())):
                    return
                self.proxy.set_partition(on)
                if self.on_change is not None:
                    self.on_change(on, at)


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
    """500 before the commit with probability ``before``, after it with ``after``; seeded."""
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


# --- the simulated county -----------------------------------------------------------------


class _SwappableApp:
    """The ASGI app the server runs, replaceable before it serves (for a simulated clock)."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    def wrap(self, app: ASGIApp) -> ASGIApp:
        self.app = app
        return self

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


def draw_plan(seed: int | None, latency_ms: float, drop: float) -> Plan:
    """Each connection: cut (before or after the server commits, evenly) with probability
    ``drop``, and every chunk delayed by ``latency_ms``."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def plan(_n: int) -> Fault:
        with lock:
            x = rng.random()
            cut = CUT_BEFORE if rng.random() < 0.5 else CUT_AFTER
        return Fault(cut if x < drop else PASS, delay_s=latency_ms / 1000.0)

    return plan


class CountySim:
    """The reference county server (its own port) behind a fault proxy (``url``).

    Terminals are given ``url``. ``data`` is a county data directory (made,
    with a new CA, if it holds none). ``clock`` (Unix ms) replaces the server's
    clock, so a scenario in accelerated time gets county time that runs with
    it. ``partitions`` are windows of seconds after ``start()``;
    ``set_partition`` switches the network by hand.
    """

    def __init__(
        self,
        data: str | Path,
        *,
        port: int = 0,
        latency_ms: float = 0.0,
        drop: float = 0.0,
        error_500: float = 0.0,
        partitions: Sequence[tuple[float, float]] = (),
        partition_mode: str = REFUSE,
        seed: int | None = None,
        clock: Callable[[], int] | None = None,
        on_partition: Callable[[bool, float], None] | None = None,
    ) -> None:
        if latency_ms < 0 or latency_ms > 60_000:
            raise CountySimError("latency must be between 0 and 60000 ms")
        for name, p in (("drop", drop), ("error-500", error_500)):
            if not 0.0 <= p <= 1.0:
                raise CountySimError(f"{name} is a probability between 0 and 1, not {p}")
        if partition_mode not in PARTITION_MODES:
            raise CountySimError(f"partition mode must be one of {', '.join(PARTITION_MODES)}")
        self.data = Path(data)
        self.port = port
        self.latency_ms = latency_ms
        self.drop = drop
        self.error_500 = error_500
        self.partitions = list(partitions)
        self.partition_mode = partition_mode
        self.seed = seed
        self.clock = clock
        self.on_partition = on_partition
        self.created_ca = False
        self.server: CountyServer | None = None
        self.proxy: FaultProxy | None = None
        self.server_faults: ServerFaults | None = None
        self._schedule: PartitionSchedule | None = None
        self._started_at = time.monotonic()

    def start(self) -> CountySim:
        from county import ca
        from county.app import CountyServer, create_app

        if self.server is not None:
            raise CountySimError("this simulated county is already started")
        if not ca.CAPaths(self.data).ca_key.exists():
            ca.init_ca(self.data)
            self.created_ca = True
        holder = _SwappableApp()

        def wrap(app: ASGIApp) -> ASGIApp:
            inner: ASGIApp = holder.wrap(app)
            if self.error_500 > 0:
                seed = None if self.seed is None else self.seed + 1
                plan = random_server_plan(
                    seed or 0, before=self.error_500 / 2, after=self.error_500 / 2
                )
                self.server_faults = ServerFaults(inner, plan)
                return self.server_faults
            return inner

        server = CountyServer(self.data, wrap=wrap)
        if self.clock is not None:
            app = create_app(self.data, server.store, self.clock)
            # The server mounts the update repository on its own app; the swapped one too.
            from county import updates

            updates.mount_repository(app, self.data)
            holder.app = app
        try:
            server.start()
            proxy = FaultProxy(
                ("127.0.0.1", server.port),
                draw_plan(self.seed, self.latency_ms, self.drop),
                port=self.port,
                partition_mode=self.partition_mode,
            ).start()
        except BaseException:
            server.stop()
            raise
        self.server, self.proxy = server, proxy
        self._started_at = time.monotonic()
        if self.partitions:
            self._schedule = PartitionSchedule(proxy, self.partitions, self.on_partition).start()
        return self

    def stop(self) -> None:
        """Stop the schedule, the proxy and the server; safe to call twice."""
        if self._schedule is not None:
            self._schedule.stop()
            self._schedule = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> CountySim:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _running_proxy(self) -> FaultProxy:
        if self.proxy is None:
            raise CountySimError("the simulated county is not running")
        return self.proxy

    def _running_server(self) -> CountyServer:
        if self.server is None:
            raise CountySimError("the simulated county is not running")
        return self.server

    @property
    def url(self) -> str:
        """The address terminals use: the proxy."""
        return self._running_proxy().url

    @property
    def server_url(self) -> str:
        """The county server itself, without faults."""
        return self._running_server().url

    @property
    def store(self) -> CountyStore:
        return self._running_server().store

    @property
    def partitioned(self) -> bool:
        return self.proxy is not None and self.proxy.partitioned

    def set_partition(self, on: bool) -> None:
        """Cut the network between terminals and the server (``on``), or heal it."""
        self._running_proxy().set_partition(on)
        if self.on_partition is not None:
            self.on_partition(on, time.monotonic() - self._started_at)

    def add_terminal(self, terminal_id: str, canteen: str, now_ms: int | None = None) -> str:
        """Register a terminal; its one-time provisioning code."""
        from county.app import new_provisioning_code

        now = now_ms if now_ms is not None else (self.clock or _wall_ms)()
        secret = self.store.add_terminal(terminal_id, canteen, now)
        return new_provisioning_code(self.data, secret)

    def stats(self) -> dict[str, Any]:
        """Connections seen and faults fired so far."""
        fired: Counter[str] = Counter()
        if self.proxy is not None:
            fired.update(self.proxy.triggered)
        if self.server_faults is not None:
            fired.update(self.server_faults.triggered)
        return {
            "connections": self.proxy.connections if self.proxy else 0,
            "partitioned": self.partitioned,
            "faults": dict(fired),
        }


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
