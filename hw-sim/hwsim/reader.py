"""The simulated card reader: a pty whose far end behaves as an RDM6300, an ASCII line
reader or a PN532, at a stable path the terminal opens as its [reader] port.

This module owns the reader side of the wire: the pty pair (the slave is
linked at, e.g., /tmp/canteen-reader, like a udev by-id link), the bytes each
reader kind sends for a card (written from the readers' data sheets, not from
the terminal's framing code), noise, a card held on the reader, unplugging
(the pty closes, so the terminal's reads fail as after a USB unplug) and
replugging (a new pty at the same link), and the control socket next to the
link (PATH.ctl) through which `hw-sim card-reader swipe` and tests give
commands. One I/O thread owns the pty file descriptors. It never imports the
terminal, never decides anything about a card, and removes its link and socket
when it stops.

Control protocol (Unix stream socket, owner-only): one JSON object per line in,
one JSON object per line out, e.g. {"cmd": "swipe", "uid": "0a1b2c3d4e",
"noise": 0, "repeat": 1} -> {"ok": true, ...}; commands swipe, noise, unplug,
replug, status; an error is {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import socket
import socketserver
import stat
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwsim.pn532 import Pn532Emulator

RDM6300 = "rdm6300"
ASCII = "ascii"
PN532 = "pn532"
KINDS = (RDM6300, ASCII, PN532)
DEFAULT_LINK = "/tmp/canteen-reader"
# Canonical UID lengths each kind can carry (docs/devices.md).
UID_LENGTHS = {RDM6300: (5,), ASCII: (4, 5, 7, 8, 10), PN532: (4, 7, 10)}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_PENDING = 4 * 1024 * 1024  # bytes waiting for the terminal to read; beyond, dropped
_SPEEDS = {
    getattr(termios, f"B{n}"): n for n in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
}


class ReaderSimError(Exception):
    """A command the simulated reader cannot carry out; the message says why and what to do."""


def control_path(link: str | Path) -> str:
    """The control socket of the reader linked at `link`."""
    return f"{link}.ctl"


def parse_uid(text: str | bytes) -> bytes:
    """UID bytes from hex text (separators ':' '-' ' ' allowed) or bytes as they are."""
    if isinstance(text, bytes):
        return text
    cleaned = text.strip().replace(":", "").replace("-", "").replace(" ", "")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ReaderSimError(f"UID {text!r} is not hex (e.g. 0a1b2c3d4e)") from None


def rdm6300_frame(uid: bytes) -> bytes:
    """RDM6300 (EM4100): STX, 10 hex digits (version byte, 32-bit id), 2 hex of XOR, ETX."""
    check = 0
    for b in uid:
        check ^= b
    return b"\x02" + (uid.hex() + f"{check:02x}").upper().encode("ascii") + b"\x03"


def ascii_line(uid: bytes, fmt: str = "hex", byte_order: str = "msb_first") -> bytes:
    """An ASCII reader's line: the UID in hex (upper case) or zero-padded decimal, CR LF.

    `byte_order` lsb_first prints UID0 last, as many cheap USB readers do.
    """
    raw = uid[::-1] if byte_order == "lsb_first" else uid
    if fmt == "hex":
        text = raw.hex().upper()
    elif fmt == "dec":
        text = str(int.from_bytes(raw, "big")).zfill(len(str(256 ** len(raw) - 1)))
    else:
        raise ReaderSimError(f"ASCII format {fmt!r} is not hex or dec")
    return text.encode("ascii") + b"\r\n"


def noise_bytes(n: int, kind: str, rng: random.Random) -> bytes:
    """`n` bytes of line noise that carry no card for `kind`.

    For an ASCII reader the noise is a garbage line of its own (CR LF ended
    and never all hex), because on a line reader noise glued to a UID spoils
    that UID's line. An RDM6300 reader resynchronises on its next STX, so
    there the noise is plain random bytes. For a PN532 the noise has no 00
    byte: a stray start code (00 FF) would make the terminal wait for a frame
    that never comes and lose the next answer to a timeout, which is what a
    bad cable does but not what a swipe with noise should test (the framing
    tests cover it).
    """
    if n <= 0:
        return b""
    data = bytearray(rng.randbytes(n))
    if kind == PN532:
        data = data.replace(b"\x00", b"\x5a")
    if kind == ASCII:
        for i, b in enumerate(data):
            if b in (0x0A, 0x0D):
                data[i] = 0x7E
        if all(b in _HEX for b in data):
            data[0] = ord("?")
        data += b"\r\n"
    return bytes(data)


@dataclass
class _Job:
    """Work for the I/O thread: bytes to send, or a plug action; done when carried out."""

    action: str  # "write", "unplug", "replug"
    data: bytes = b""
    done: threading.Event | None = None
    error: str | None = None


class _Pty:
    """One pty pair, its slave linked at `link`; the slave is kept open (raw) so the line
    stays up while the terminal closes and reopens it."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        try:
            tty.setraw(self.slave)  # no echo, no line editing, before anyone opens it
            os.set_blocking(self.master, False)
            self.name = os.ttyname(self.slave)
            tmp = link.with_name(f".{link.name}.new{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.name)
            os.replace(tmp, link)
        except BaseException:
            self.close()
            raise

    def speed(self) -> int | None:
        """The baud rate last set on the line (pyserial sets it when the terminal opens it)."""
        try:
            return _SPEEDS.get(termios.tcgetattr(self.slave)[5])
        except (termios.error, OSError):
            return None

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1


class ReaderSim:
    """A simulated card reader of `kind` at `link`, with a control socket at `link`.ctl.

    `start()` makes the pty and link and starts serving; `swipe`, `noise`,
    `unplug`, `replug` and `status` may be called from any thread (the control
    socket calls them too); `stop()` removes everything. With `lifetime_s` it
    stops by itself after that long.
    """

    def __init__(
        self,
        kind: str = RDM6300,
        link: str | Path = DEFAULT_LINK,
        *,
        control: str | Path | None = None,
        ascii_format: str = "hex",
        ascii_byte_order: str = "msb_first",
        frame_interval_s: float = 0.1,
        lifetime_s: float | None = None,
        seed: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ReaderSimError(f"reader kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if ascii_format not in ("hex", "dec"):
            raise ReaderSimError(f"ASCII format must be hex or dec, not {ascii_format!r}")
        if ascii_byte_order not in ("msb_first", "lsb_first"):
            raise ReaderSimError("ASCII byte order must be msb_first or lsb_first")
        self.kind = kind
        self.link = Path(link)
        self.control = Path(control) if control is not None else Path(control_path(link))
        self.ascii_format = ascii_format
        self.ascii_byte_order = ascii_byte_order
        self.frame_interval_s = frame_interval_s
        self.lifetime_s = lifetime_s
        self.emulator = Pn532Emulator() if kind == PN532 else None
        self._rng = random.Random(seed)
        self._pty: _Pty | None = None
        self._jobs: list[_Job] = []
        self._jobs_lock = threading.Lock()
        self._swipe_lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1
        self._pending = bytearray()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._timer: threading.Timer | None = None
        self.counters: dict[str, int] = {
            "swipes": 0,
            "bytes_sent": 0,
            "bytes_dropped": 0,
            "bytes_from_terminal": 0,
            "unplugs": 0,
        }

    # ---- life ----

    def start(self) -> ReaderSim:
        if self._thread is not None:
            raise ReaderSimError("this simulated reader is already started")
        self._claim_paths()
        self._pty = _Pty(self.link)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="hwsim-reader", daemon=True)
        self._thread.start()
        self._serve_control()
        if self.lifetime_s is not None:
            self._timer = threading.Timer(self.lifetime_s, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        """Close the pty, remove the link and the control socket; safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for path in (self.link, self.control):
            with contextlib.suppress(OSError):
                if path.is_symlink() or path.is_socket():
                    path.unlink()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ReaderSim:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopped.is_set()

    def _claim_paths(self) -> None:
        if self.link.exists() and not self.link.is_symlink():
            raise ReaderSimError(
                f"{self.link} exists and is not a link (a real device?); choose another --link"
            )
        if self.control.exists() or self.control.is_symlink():
            if not stat.S_ISSOCK(os.lstat(self.control).st_mode):
                raise ReaderSimError(f"{self.control} exists and is not a socket; remove it")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.control))
                except OSError:
                    self.control.unlink()  # left by a simulator that did not stop cleanly
                else:
                    raise ReaderSimError(
                        f"another simulated reader is running at {self.link} "
                        f"({self.control} answers); stop it or choose another --link"
                    )

    # ---- commands ----

    def swipe(
        self,
        uid: str | bytes,
        *,
        noise: int = 0,
        repeat: int = 1,
        timeout_s: float = 5.0,
    ) -> dict[str, Any]:
        """A card presented: `repeat` frames carrying `uid` (a card held that long), with
        `noise` bytes of line noise before each frame (PN532: before and after).

        RDM6300 and ASCII readers send a frame every `frame_interval_s` while the
        card is held. A PN532 only answers polls: the card stays in the field
        until the terminal's polls have found it `repeat` times, or `timeout_s`
        passes (then "read" in the answer is less than `repeat`: is the
        terminal polling?).
        """
        raw = parse_uid(uid)
        if len(raw) not in UID_LENGTHS[self.kind]:
            lengths = " or ".join(str(n) for n in UID_LENGTHS[self.kind])
            raise ReaderSimError(
                f"a {self.kind} reader gives {lengths}-byte UIDs, and {raw.hex()} has {len(raw)}"
            )
        if not 1 <= repeat <= 1000 or not 0 <= noise <= 1_000_000:
            raise ReaderSimError("repeat must be 1..1000 and noise 0..1000000 bytes")
        self._require_plugged()
        with self._swipe_lock:
            self.counters["swipes"] += 1
            if self.emulator is not None:
                return {"uid": raw.hex(), "read": self._pn532_swipe(raw, noise, repeat, timeout_s)}
            frame = (
                rdm6300_frame(raw)
                if self.kind == RDM6300
                else ascii_line(raw, self.ascii_format, self.ascii_byte_order)
            )
            for k in range(repeat):
                if k:
                    time.sleep(self.frame_interval_s)
                self._submit("write", noise_bytes(noise, self.kind, self._rng) + frame)
            return {"uid": raw.hex(), "frames": repeat}

    def _pn532_swipe(self, uid: bytes, noise: int, repeat: int, timeout_s: float) -> int:
        emulator = self.emulator
        assert emulator is not None
        if noise:
            self._submit("write", noise_bytes(noise, self.kind, self._rng))
        start = emulator.card_reads
        deadline = time.monotonic() + timeout_s
        emulator.card = uid
        try:
            while emulator.card_reads - start < repeat and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            emulator.card = None
        if noise:
            self._submit("write", noise_bytes(noise, self.kind, self._rng))
        return emulator.card_reads - start

    def noise(self, count: int) -> dict[str, Any]:
        """`count` bytes of line noise and no card."""
        if not 0 < count <= 100_000_000:
            raise ReaderSimError("noise must be 1..100000000 bytes")
        self._require_plugged()
        self._submit("write", noise_bytes(count, self.kind, self._rng))
        return {"noise": count}

    def unplug(self) -> dict[str, Any]:
        """Pull the reader's cable: the pty closes and the link goes away."""
        self._require_plugged()
        self._submit("unplug")
        return {"plugged": False}

    def replug(self) -> dict[str, Any]:
        """Plug it back: a new pty at the same link (the terminal reopens it by itself)."""
        if self._stopped.is_set():
            raise ReaderSimError("the simulated reader is stopped")
        if self._pty is None:
            self._submit("replug")
        return {"plugged": True, "tty": self._pty.name if self._pty else None}

    def status(self) -> dict[str, Any]:
        pty = self._pty
        return {
            "kind": self.kind,
            "link": str(self.link),
            "control": str(self.control),
            "plugged": pty is not None,
            "tty": pty.name if pty else None,
            # pyserial sets the speed when the terminal opens the port: a sign it did.
            "line_speed": pty.speed() if pty else None,
            "pn532_commands": len(self.emulator.commands) if self.emulator else None,
            **self.counters,
        }

    # ---- the I/O thread ----

    def _require_plugged(self) -> None:
        if self._stopped.is_set() or self._thread is None:
            raise ReaderSimError("the simulated reader is not running")
        if self._pty is None:
            raise ReaderSimError("the simulated reader is unplugged; replug it first")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _submit(self, action: str, data: bytes = b"", timeout_s: float = 10.0) -> None:
        job = _Job(action, data, threading.Event())
        with self._jobs_lock:
            self._jobs.append(job)
        self._wake()
        assert job.done is not None
        if not job.done.wait(timeout_s):
            raise ReaderSimError(f"the simulated reader did not carry out {action} in time")
        if job.error:
            raise ReaderSimError(job.error)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                pty = self._pty
                readers = [self._wake_r] + ([pty.master] if pty else [])
                writers = [pty.master] if pty and self._pending else []
                try:
                    readable, writable, _ = select.select(readers, writers, [], 0.2)
                except (OSError, ValueError):
                    readable, writable = [], []
                if self._wake_r in readable:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    self._do_jobs()
                pty = self._pty
                if pty is None:
                    continue
                if pty.master in readable:
                    self._from_terminal(pty)
                if pty.master in writable and self._pending:
                    self._flush(pty)
        finally:
            if self._pty is not None:
                self._pty.close()
                self._pty = None
            with self._jobs_lock:
                jobs, self._jobs = self._jobs, []
            for job in jobs:
                job.error = "the simulated reader stopped"
                if job.done:
                    job.done.set()

    def _do_jobs(self) -> None:
        with self._jobs_lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            try:
                self._do(job)
            except OSError as exc:
                job.error = f"{job.action} failed: {exc}"
            if job.done:
                job.done.set()

    def _do(self, job: _Job) -> None:
        if job.action == "write":
            if self._pty is None:
                job.error = "the simulated reader is unplugged; replug it first"
                return
            room = _MAX_PENDING - len(self._pending)
            if len(job.data) > room:
                self.counters["bytes_dropped"] += len(job.data) - max(0, room)
            self._pending += job.data[: max(0, room)]
            self._flush(self._pty)
        elif job.action == "unplug":
            if self._pty is not None:
                self._pty.close()
                self._pty = None
                with contextlib.suppress(OSError):
                    self.link.unlink()
                self.counters["unplugs"] += 1
                self._pending.clear()
        elif job.action == "replug" and self._pty is None:
            if self.emulator is not None:
                self.emulator.reset()
            self._pty = _Pty(self.link)

    def _flush(self, pty: _Pty) -> None:
        while self._pending:
            try:
                n = os.write(pty.master, self._pending[:4096])
            except BlockingIOError:
                return  # the terminal is not reading; the rest waits for select
            except OSError:
                self.counters["bytes_dropped"] += len(self._pending)
                self._pending.clear()
                return
            self.counters["bytes_sent"] += n
            del self._pending[:n]

    def _from_terminal(self, pty: _Pty) -> None:
        try:
            data = os.read(pty.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while nobody has the slave open: nothing to read
        self.counters["bytes_from_terminal"] += len(data)
        if self.emulator is not None and data:
            answer = self.emulator.receive(data)
            if answer:
                self._pending += answer
                self._flush(pty)

    # ---- the control socket ----

    def _serve_control(self) -> None:
        sim = self
        commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "swipe": lambda r: sim.swipe(
                str(r.get("uid", "")),
                noise=int(r.get("noise", 0)),
                repeat=int(r.get("repeat", 1)),
                timeout_s=float(r.get("timeout_s", 5.0)),
            ),
            "noise": lambda r: sim.noise(int(r.get("bytes", 0))),
            "unplug": lambda r: sim.unplug(),
            "replug": lambda r: sim.replug(),
            "status": lambda r: sim.status(),
        }

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    try:
                        request = json.loads(line)
                        if not isinstance(request, dict):
                            raise ValueError("a request is one JSON object per line")
                        command = commands.get(str(request.get("cmd")))
                        if command is None:
                            raise ReaderSimError(
                                f"unknown command {request.get('cmd')!r}; "
                                f"use one of {', '.join(commands)}"
                            )
                        answer: dict[str, Any] = {"ok": True, **command(request)}
                    except (ReaderSimError, ValueError, TypeError) as exc:
                        answer = {"ok": False, "error": str(exc)}
                    self.wfile.write(json.dumps(answer).encode() + b"\n")

        old_umask = os.umask(0o177)  # the socket is the owner's alone
        try:
            server = socketserver.ThreadingUnixStreamServer(str(self.control), Handler)
        finally:
            os.umask(old_umask)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="hwsim-reader-ctl", daemon=True).start()


class ReaderControl:
    """A client of a running simulated reader's control socket (what `hw-sim card-reader
    swipe` uses; the lunch-rush scenario may too)."""

    def __init__(self, control: str | Path, timeout_s: float = 30.0) -> None:
        self.control = str(control)
        self.timeout_s = timeout_s

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            try:
                s.connect(self.control)
            except OSError as exc:
                raise ReaderSimError(
                    f"no simulated reader answers at {self.control} ({exc.strerror or exc}); "
                    "start one with hw-sim card-reader"
                ) from None
            s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        try:
            answer = json.loads(data)
        except ValueError:
            raise ReaderSimError(f"{self.control} gave no answer to {cmd}") from None
        if not answer.get("ok"):
            raise ReaderSimError(str(answer.get("error", "the simulated reader refused")))
        return dict(answer)

    def swipe(self, uid: str, noise: int = 0, repeat: int = 1) -> dict[str, Any]:
        return self.request("swipe", uid=uid, noise=noise, repeat=repeat)

    def noise(self, count: int) -> dict[str, Any]:
        return self.request("noise", bytes=count)

    def unplug(self) -> dict[str, Any]:
        return self.request("unplug")

    def replug(self) -> dict[str, Any]:
        return self.request("replug")

    def status(self) -> dict[str, Any]:
        return self.request("status")
