"""Shared parts of the update tests: a county repository, a real HTTP server, a terminal.

The server is uvicorn on 127.0.0.1 serving the county repository through
``county.updates.mount_repository``, with an ASGI layer in front that a test can
tell to answer one path differently (old bytes, an endless body, a trickle).
It stops when the test ends and, whatever happens, after ``LIFETIME_S``.

No tests and no fixtures live here: each update test module's ``canteen`` fixture is
``open_canteen``. It never touches a terminal's state outside the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from conftest import wait_for
from countykit import copy_county
from fastapi import FastAPI

from county import updates as cu
from terminal import trust
from terminal import updates as tu

NOW = int(time.time())  # python-tuf checks expiry against the real clock
LIFETIME_S = 120.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SETTINGS = """
[[meals]]
name = "lunch"
start = "11:30"
end = "13:30"
price_own_fen = {price}
price_visitor_fen = 1500
"""


class Overrides:
    """Path -> what to answer instead of the repository's file."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.answers: dict[str, Any] = {}
        self.requests: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            self.requests.append(path)
            answer = self.answers.get(path)
            if answer is not None:
                await answer(send)
                return
        await self.app(scope, receive, send)


def fixed(body: bytes) -> Callable[[Send], Awaitable[None]]:
    async def answer(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return answer


def endless(chunk: bytes = b"A" * 65536, limit: int = 8 * 1024 * 1024) -> Any:
    """A body that never ends (bounded here so the server itself stops)."""

    async def answer(send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sent = 0
        try:
            while sent < limit:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                await asyncio.sleep(0)
        except Exception:
            return
        await send({"type": "http.response.body", "body": b""})

    return answer


def trickle(body: bytes, every_s: float = 0.05) -> Any:
    """The right bytes, one at a time: each read is quick, the whole is endless."""

    async def answer(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        try:
            for i in range(len(body)):
                await send(
                    {"type": "http.response.body", "body": body[i : i + 1], "more_body": True}
                )
                await asyncio.sleep(every_s)
        except Exception:
            return
        await send({"type": "http.response.body", "body": b""})

    return answer


class RepoServer:
    def __init__(self, data: Path) -> None:
        app = FastAPI()
        cu.mount_repository(app, data)
        self.overrides = Overrides(app)
        self.sock = socket.socket()
        # Accepted sockets inherit this on Linux; without it every small answer waits
        # ~40 ms for a delayed ACK (Nagle), and a first load of 4,096 shards takes minutes.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.overrides,
                log_level="error",
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=1,
            )
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.timer = threading.Timer(LIFETIME_S, self.stop)
        self.timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tuf"

    def start(self) -> RepoServer:
        self.thread.start()
        self.timer.start()
        wait_for(lambda: self.server.started, 10, "the repository server to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.timer.cancel()
        if threading.current_thread() is not self.thread:
            self.thread.join(10)
        self.sock.close()


@dataclass
class Canteen:
    """One county repository, its server and one terminal's state directory."""

    tmp: Path
    repo: cu.CountyRepository
    server: RepoServer
    state: Path
    store: trust.TrustStore
    now: int = NOW
    limits: tu.UpdateLimits = field(default_factory=tu.UpdateLimits)

    @property
    def data(self) -> Path:
        return self.repo.paths.data

    @property
    def root_keys(self) -> Path:
        return self.tmp / "root-keys"

    def meta(self, name: str) -> Path:
        return self.repo.paths.metadata / name

    def updater(self, **limits: Any) -> tu.TerminalUpdater:
        lim = tu.UpdateLimits(**{**self.limits.__dict__, **limits})
        return tu.TerminalUpdater(self.state, "c1", base_url=self.server.url, limits=lim)

    def update(self, **limits: Any) -> tu.AppliedSet | None:
        return tu.update_once(self.updater(**limits), self.store, self.now)

    def settings(self, price: int, canteen: str | None = None) -> cu.Publication:
        path = self.tmp / f"settings-{price}.toml"
        path.write_text(SETTINGS.format(price=price))
        return self.repo.publish_settings(path, canteen, self.now)

    def in_force(self) -> dict[str, Any]:
        """What the terminal decides with: set, price in the settings file, revocations."""
        applied = self.store.applied_update_set()
        pointer = json.loads((self.state / "updates" / "applied.json").read_text())
        price = None
        if pointer["settings"]:
            text = (self.state / "updates" / pointer["settings"]).read_text()
            price = int(text.split("price_own_fen = ")[1].split()[0])
        return {
            "set": applied["set"] if applied else None,
            "pointer": pointer["set"],
            "price": price,
            "revocations": self.store.revocation_count(),
        }


def revoked_cadre(store: trust.TrustStore, iss: str, sub: str) -> bool:
    key = trust.revocation_key("cadre", iss, sub)
    return store._db.execute("SELECT 1 FROM revocations WHERE k = ?", (key,)).fetchone() is not None


_TEMPLATE: dict[str, Path] = {}


def make_canteen(tmp: Path) -> Canteen:
    # One repository is made per session (4,096 shard files take seconds) and copied.
    if "dir" not in _TEMPLATE:
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="county-template-"))
        cu.init_repository(base / "county", base / "root-keys", NOW)
        atexit.register(shutil.rmtree, base, True)
        _TEMPLATE["dir"] = base
    copy_county(_TEMPLATE["dir"] / "county", tmp / "county")
    shutil.copytree(_TEMPLATE["dir"] / "root-keys", tmp / "root-keys")
    repo = cu.CountyRepository(tmp / "county")
    server = RepoServer(tmp / "county").start()
    state = tmp / "state"
    state.mkdir()
    tu.pin_root(state, (repo.paths.metadata / "1.root.json").read_bytes())
    store = trust.TrustStore(state / "trust.sqlite")
    return Canteen(tmp, repo, server, state, store)


def open_canteen(tmp_path: Path) -> Iterator[Canteen]:
    """The body of each test file's ``canteen`` fixture: everything stops afterwards."""
    c = make_canteen(tmp_path)
    try:
        yield c
    finally:
        c.server.stop()
        c.store.close()
        c.repo.close()
