"""The card reader thread: a serial port to de-duplicated CardPresented events.

This module owns the card reader's port: opening it with pyserial's
serial_for_url (a device path, a pty, loop:// or socket://; exclusive where
the platform supports it), running pyserial's ReaderThread with a framing
Protocol for the configured reader kind (RDM6300, ASCII line reader, or PN532
over HSU), putting one `CardPresented` on the event queue per card placed on
the reader, and reopening with backoff after an unplug. Byte-level framing is
in terminal/scanner/framing.py and is pure. This module never decides anything
about a card (the roster lookup is the decision worker's), never touches the
ledger, the policy or the display, and never blocks the queue's consumer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial
from serial.threaded import Protocol, ReaderThread

from terminal.core.events import CardPresented
from terminal.scanner.device import (
    DOWN,
    STARTING,
    STOPPED,
    UP,
    Backoff,
    DeviceHealth,
    HealthBoard,
    PresenceFilter,
    start_thread,
    stop_thread,
)
from terminal.scanner.framing import (
    UID_LENGTHS,
    AsciiLineFramer,
    Framer,
    Pn532Session,
    Rdm6300Framer,
)

log = logging.getLogger(__name__)

RDM6300 = "rdm6300"
ASCII = "ascii"
PN532 = "pn532"
READER_KINDS: tuple[str, ...] = (RDM6300, ASCII, PN532)
_DEFAULT_BAUD = {RDM6300: 9600, ASCII: 9600, PN532: 115200}


@dataclass(frozen=True)
class ReaderSettings:
    """Card reader settings. The port is a pyserial URL, so one setting moves the
    terminal between real hardware and the simulator."""

    port: str = "/dev/ttyUSB0"  # /dev/serial/by-id/..., a pty path, loop://, socket://host:port
    kind: str = RDM6300  # rdm6300 | ascii | pn532
    baudrate: int | None = None  # None: the kind's usual (rdm6300/ascii 9600, pn532 115200)
    ascii_format: str = "hex"  # ascii readers: hex | dec (dec: zero-padded to full width)
    ascii_byte_order: str = "msb_first"  # ascii readers: msb_first (UID0 printed first) | lsb_first
    ascii_uid_bytes: int = 4  # ascii dec: how many bytes the printed number stands for
    max_line_bytes: int = 32  # ascii: longer lines are dropped whole
    inter_byte_gap_s: float = 0.1  # a quiet gap this long inside a frame drops it
    card_leave_s: float = 0.8  # the card must be absent this long before it counts again
    reopen_backoff_s: float = 0.5  # first wait before reopening; doubles per failure
    reopen_backoff_max_s: float = 10.0
    pn532_poll_s: float = 0.15  # pause between InListPassiveTarget polls
    pn532_timeout_s: float = 0.5  # ACK and answer deadline per PN532 command
    exclusive: bool = True  # lock the port (POSIX) so no other program reads our cards

    def __post_init__(self) -> None:
        problems = []
        if not self.port:
            problems.append("port is empty")
        if self.kind not in READER_KINDS:
            problems.append(f"kind must be one of {', '.join(READER_KINDS)}, not {self.kind!r}")
        if self.baudrate is not None and self.baudrate <= 0:
            problems.append("baudrate must be > 0")
        if self.ascii_format not in ("hex", "dec"):
            problems.append(f"ascii_format must be hex or dec, not {self.ascii_format!r}")
        if self.ascii_byte_order not in ("msb_first", "lsb_first"):
            problems.append("ascii_byte_order must be msb_first or lsb_first")
        if self.ascii_uid_bytes not in UID_LENGTHS:
            problems.append(f"ascii_uid_bytes must be one of {sorted(UID_LENGTHS)}")
        if not 8 <= self.max_line_bytes <= 4096:
            problems.append("max_line_bytes must be between 8 and 4096")
        if self.inter_byte_gap_s <= 0 or self.card_leave_s < 0:
            problems.append("inter_byte_gap_s must be > 0 and card_leave_s >= 0")
        if not 0 < self.reopen_backoff_s <= self.reopen_backoff_max_s:
            problems.append("need 0 < reopen_backoff_s <= reopen_backoff_max_s")
        if self.pn532_poll_s <= 0 or self.pn532_timeout_s <= 0:
            problems.append("pn532_poll_s and pn532_timeout_s must be > 0")
        if problems:
            raise ValueError("reader settings: " + "; ".join(problems))

    @property
    def effective_baudrate(self) -> int:
        return self.baudrate if self.baudrate is not None else _DEFAULT_BAUD[self.kind]


class CardLink:
    """One reader kind's conversation over an open port, independent of threads:
    `opened` gives bytes to write first, `received` turns bytes into (bytes to
    write, UIDs), `tick` gives bytes to write on a timer. Thread-safe."""

    def __init__(self, settings: ReaderSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._framer: Rdm6300Framer | AsciiLineFramer | None = None
        self._session: Pn532Session | None = None
        if settings.kind == RDM6300:
            self._framer = Rdm6300Framer(settings.inter_byte_gap_s)
        elif settings.kind == ASCII:
            self._framer = AsciiLineFramer(
                settings.ascii_format,
                settings.ascii_byte_order,
                settings.ascii_uid_bytes,
                settings.max_line_bytes,
                settings.inter_byte_gap_s,
            )
        else:
            self._session = Pn532Session(
                settings.pn532_poll_s, settings.pn532_timeout_s, gap_s=settings.inter_byte_gap_s
            )

    @property
    def needs_ticks(self) -> bool:
        return self._session is not None

    def opened(self, now: float) -> bytes:
        with self._lock:
            return self._session.start(now) if self._session is not None else b""

    def received(self, data: bytes, now: float) -> tuple[bytes, list[bytes]]:
        with self._lock:
            if self._session is not None:
                return self._session.on_bytes(data, now)
            assert self._framer is not None
            return b"", self._framer.feed(data, now)

    def tick(self, now: float) -> bytes:
        with self._lock:
            return self._session.tick(now) if self._session is not None else b""

    def last_answer_at(self) -> float | None:
        """When the PN532 last answered a command; None for readers that only talk."""
        with self._lock:
            return self._session.last_answer_at if self._session is not None else None

    def answering(self) -> bool:
        """False while a PN532 has not (yet, or any longer) answered its set-up."""
        with self._lock:
            return self._session is None or self._session.ready

    def counters(self) -> dict[str, int]:
        with self._lock:
            framer: Framer
            if self._framer is not None:
                framer = self._framer
            else:
                assert self._session is not None
                framer = self._session.parser
            out = {f"dropped_{k}": v for k, v in framer.drops.items()}
            out["frames"] = framer.accepted
            out["noise_bytes"] = framer.noise_bytes
            if self._session is not None:
                out.update({f"pn532_{k}": v for k, v in self._session.events.items()})
            return out


class _PortProtocol(Protocol):  # type: ignore[misc]
    """pyserial's framing Protocol: hands bytes to the CardLink and UIDs to the reader."""

    def __init__(
        self,
        link: CardLink,
        on_uids: Callable[[list[bytes], float], None],
        clock: Callable[[], float],
    ) -> None:
        self._link = link
        self._on_uids = on_uids
        self._clock = clock
        self.transport: ReaderThread | None = None
        self.lost: BaseException | None = None
        self.closed = threading.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        first = self._link.opened(self._clock())
        if first:
            transport.write(first)

    def data_received(self, data: bytes) -> None:
        now = self._clock()
        write, uids = self._link.received(data, now)
        if write and self.transport is not None:
            self.transport.write(write)
        if uids:
            self._on_uids(uids, now)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc
        self.closed.set()


def _factory(protocol: _PortProtocol) -> Callable[[], _PortProtocol]:
    return lambda: protocol


class _PortThread(ReaderThread):  # type: ignore[misc]
    """pyserial's ReaderThread, with one fix: an unplugged device can fail inside
    ``in_waiting`` with a bare OSError (EIO), which the stock loop does not catch,
    so the thread died without ever calling connection_lost. Here every I/O
    error ends the loop the same way and the protocol always hears of it."""

    def run(self) -> None:
        if not hasattr(self.serial, "cancel_read"):
            self.serial.timeout = 1
        self.protocol = self.protocol_factory()
        try:
            self.protocol.connection_made(self)
        except Exception as e:
            self.alive = False
            self.protocol.connection_lost(e)
            self._connection_made.set()
            return
        self._connection_made.set()
        error: BaseException | None = None
        while self.alive and self.serial.is_open:
            try:
                data = self.serial.read(self.serial.in_waiting or 1)
            except (serial.SerialException, OSError) as e:
                error = e
                break
            if not data:
                continue
            try:
                self.protocol.data_received(data)
            except Exception as e:
                error = e
                break
        self.alive = False
        self.protocol.connection_lost(error)
        self.protocol = None


class CardReader:
    """Owns the card reader's serial port and its ReaderThread; puts CardPresented on `events`.

    start() returns at once; a supervising thread opens the port, reopens it
    with backoff after an unplug, drives the PN532's timers, and runs until
    stop(). health() may be called from any thread.
    """

    def __init__(
        self,
        settings: ReaderSettings,
        events: queue.Queue[Any],
        *,
        name: str = "reader",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.name = name
        self._events = events
        self._clock = clock
        self._board = HealthBoard(name, clock())
        self._presence = PresenceFilter(settings.card_leave_s)
        self._presence_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: CardLink | None = None

    def start(self) -> None:
        self._thread = start_thread(self._thread, self._run, self.name)

    def stop(self, timeout_s: float = 5.0) -> None:
        stop_thread(self._thread, self._stop, self.name, timeout_s)

    def health(self) -> DeviceHealth:
        snap = self._board.snapshot(self._clock())
        link = self._link
        if link is None:
            return snap
        counters = dict(snap.counters)
        counters.update(link.counters())
        state, detail = snap.state, snap.detail
        if state == UP and not link.answering():
            state = DOWN
            detail = (
                f"port {self.settings.port} is open but the PN532 does not answer: "
                "check its wiring and that its mode switches select HSU (UART)"
            )
        return DeviceHealth(
            snap.device, state, detail, snap.since_s, snap.last_activity_age_s, snap.opens, counters
        )

    def _on_uids(self, uids: list[bytes], now: float) -> None:
        self._board.activity(now)
        for uid in uids:
            with self._presence_lock:
                new = self._presence.admit(uid, now)
            if not new:
                self._board.count("repeats")
                continue
            try:
                self._events.put_nowait(CardPresented(uid=uid, seen_at=now, source=self.name))
                self._board.count("cards")
            except queue.Full:
                log.warning("%s: event queue full; a card was dropped", self.name)
                self._board.count("queue_full")

    def _open(self) -> Any:
        s = self.settings
        return serial.serial_for_url(
            s.port, baudrate=s.effective_baudrate, timeout=None, exclusive=s.exclusive
        )

    def _run(self) -> None:
        s = self.settings
        backoff = Backoff(s.reopen_backoff_s, s.reopen_backoff_max_s)
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as e:
                delay = backoff.next_delay()
                self._down(
                    f"cannot open card reader port {s.port} ({e}): check the reader's USB cable; "
                    f"retrying in {delay:.1f} s",
                    "open_failures",
                )
                self._stop.wait(delay)
                continue
            link = CardLink(s)
            protocol = _PortProtocol(link, self._on_uids, self._clock)
            thread = _PortThread(port, _factory(protocol))
            thread.name = f"{self.name}-serial"
            opened_at = self._clock()
            self._link = link
            self._board.set_state(
                STARTING if link.needs_ticks else UP,
                f"{s.kind} reader on {s.port} at {s.effective_baudrate} baud",
                opened_at,
            )
            log.info("%s: opened %s (%s, %d baud)", self.name, s.port, s.kind, s.effective_baudrate)
            thread.start()
            self._supervise(link, protocol, thread)
            try:
                thread.close()
            except (serial.SerialException, OSError) as e:
                log.debug("%s: closing %s: %s", self.name, s.port, e)
            if self._stop.is_set():
                break
            if self._clock() - opened_at >= s.reopen_backoff_max_s:
                backoff.reset()
            delay = backoff.next_delay()
            self._down(
                f"card reader on {s.port} was lost ({protocol.lost or 'port closed'}): "
                f"check the reader's USB cable; reopening in {delay:.1f} s",
                "reopens",
            )
            self._stop.wait(delay)
        self._board.set_state(STOPPED, "stopped", self._clock())

    def _supervise(self, link: CardLink, protocol: _PortProtocol, thread: _PortThread) -> None:
        s = self.settings
        while not self._stop.is_set() and not protocol.closed.is_set():
            if link.needs_ticks:
                now = self._clock()
                out = link.tick(now)
                if out:
                    try:
                        thread.write(out)
                    except (serial.SerialException, OSError) as e:
                        protocol.lost = e
                        return
                answered = link.last_answer_at()
                if answered is not None:
                    self._board.activity(answered)
                if link.answering():
                    self._board.set_state(UP, f"PN532 reader on {s.port}", now)
                protocol.closed.wait(0.01)
            else:
                protocol.closed.wait(0.2)

    def _down(self, detail: str, counter: str) -> None:
        log.warning("%s: %s", self.name, detail)
        self._board.count(counter)
        self._board.set_state(DOWN, detail, self._clock())
