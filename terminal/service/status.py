"""The daemon's status socket, the client that asks it, and the clock's sentence.

This module owns ``DIR/daemon.sock`` (``StatusSocket``: one JSON line of the
daemon's health per connection, on its own thread), ``ask_status`` (what
`canteen-terminal status` calls), and ``clock_problem`` (the sentence for a
wall clock the county's signed time found wrong). It never works out the
health itself: the daemon hands it a function that does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUS_SOCKET = "daemon.sock"


class _StatusHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        health: Callable[[], dict[str, Any]] = self.server.health  # type: ignore[attr-defined]
        self.wfile.write(json.dumps(health(), ensure_ascii=False).encode() + b"\n")


class _StatusServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class StatusSocket:
    """``DIR/daemon.sock``: answers each connection with ``health()`` as one JSON line."""

    def __init__(self, state_dir: Path, health: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(state_dir) / STATUS_SOCKET
        self._health = health
        self._server: _StatusServer | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = _StatusServer(str(self.path), _StatusHandler)
        server.health = self._health  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, name="status-socket", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def clock_problem(ahead_ms: int, sells: bool) -> str:
    """The state's sentence for a wall clock the county's signed time found wrong."""
    size = round(abs(ahead_ms) / 1000)
    if size >= 3600:
        h, m = divmod(round(size / 60), 60)
        amount = f"{h} h {m} min"
    else:
        amount = f"{size // 60} min {size % 60} s" if size >= 60 else f"{size} s"
    way = "fast" if ahead_ms > 0 else "slow"
    if sells:
        return (
            f"clock not trusted: {amount} {way} by the county's time; selling on the "
            "county's time; a technician should set the system clock (NTP)"
        )
    return (
        f"clock not trusted: {amount} {way} by the county's time at the last sync; not "
        "selling until the next sync: connect the network"
    )


def ask_status(state_dir: Path, timeout_s: float = 3.0) -> dict[str, Any]:
    """What the running daemon says about itself, over its status socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(state_dir / STATUS_SOCKET))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer
