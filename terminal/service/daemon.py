"""The terminal as a service: threads, the one decision worker, health, systemd notify.

This module owns the wiring of a running terminal. It starts the parts in a
fixed order (state, decision worker, screen, devices, sync), routes every
event through one queue to the one decision worker (the only thread that
touches the ledger and the trust store), shows a verdict only after its entry
is committed, keeps the daemon's state (starting, ready, degraded, stopped)
with a sentence for the person in front of the terminal, speaks systemd's
notify protocol, and stops cleanly on SIGTERM. It never decides a verdict
itself (terminal/core/checkout.py does) and never daemonizes: systemd does that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from terminal import config, ledger, state, trust
from terminal.core import policy
from terminal.core.checkout import Checkout, Decision, ReversalRefused
from terminal.core.desk import DeskClosed
from terminal.core.events import CardPresented, QrPresented
from terminal.display.settings import DisplaySettings
from terminal.display.settings import from_settings as display_settings_from

log = logging.getLogger("canteen.daemon")

STARTING = "starting"
READY = "ready"
DEGRADED = "degraded"
STOPPED = "stopped"

STATUS_SOCKET = "daemon.sock"


# ---- logging for journald ----


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (<3> error .. <7> debug); journald reads it."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self._PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# ---- systemd notify ----


class Notifier:
    """sd_notify over $NOTIFY_SOCKET: a datagram per message; a no-op without systemd.

    Errors are logged once, not swallowed: a watchdog that silently stops
    pinging would make systemd kill a healthy terminal without a word why.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._failed = False
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        if self._sock is None or not self.address:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(text.encode("utf-8"), target)
        except OSError as exc:
            if not self._failed:
                log.error("systemd notify to %s failed: %s", self.address, exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# ---- settings of the daemon itself ----


@dataclass(frozen=True)
class DaemonSettings:
    min_free_mb: int
    queue_size: int
    worker_stall_s: int
    retention_days: int
    camera: bool
    reader: bool


def daemon_settings(settings: config.Settings) -> DaemonSettings:
    section = settings.section("daemon")
    result = DaemonSettings(
        min_free_mb=section.get_int("min_free_mb", 1, 100_000),
        queue_size=section.get_int("queue_size", 1, 100_000),
        worker_stall_s=section.get_int("worker_stall_s", 2, 3600),
        retention_days=section.get_int("retention_days", 7, 36500),
        camera=section.get_bool("camera"),
        reader=section.get_bool("reader"),
    )
    if "check_ahead" in section.data:
        # The check-ahead process was removed in issue 13 (docs/architecture.md, "No
        # check-ahead process"); an old settings file that still sets it is told so.
        raise config.ConfigError(
            f"{settings.source}: [daemon] check_ahead: no longer an option (the check-ahead "
            "process was removed; the decision worker checks every code); remove this line"
        )
    section.check_unused()
    return result


def camera_settings(settings: config.Settings) -> Any:
    from terminal.scanner.camera import CameraSettings

    s = settings.section("camera")
    try:
        result = CameraSettings(
            source=s.get_str("source"),
            width=s.get_int("width", 16, 8192),
            height=s.get_int("height", 16, 8192),
            fps=s.get_int("fps", 1, 240),
            fourcc=s.get_str("fourcc"),
            decoder=s.get_str("decoder", ("zxing", "pyzbar", "opencv", "none")),
            stall_s=s.get_float("stall_s", 0.1, 600),
            same_text_s=s.get_float("same_text_s", 0, 600),
            confirm_s=s.get_float("confirm_s", 0.01, 60),
        )
    except ValueError as exc:
        raise config.ConfigError(f"{settings.source}: [camera]: {exc}") from None
    s.check_unused()
    return result


def reader_settings(settings: config.Settings) -> Any:
    from terminal.scanner.reader import ReaderSettings

    s = settings.section("reader")
    try:
        result = ReaderSettings(
            port=s.get_str("port"),
            kind=s.get_str("kind", ("rdm6300", "ascii", "pn532")),
            ascii_format=s.get_str("ascii_format", ("hex", "dec")),
            ascii_byte_order=s.get_str("ascii_byte_order", ("msb_first", "lsb_first")),
            card_leave_s=s.get_float("card_leave_s", 0, 60),
        )
    except ValueError as exc:
        raise config.ConfigError(f"{settings.source}: [reader]: {exc}") from None
    s.check_unused()
    return result


def display_settings(settings: config.Settings) -> DisplaySettings:
    return display_settings_from(settings)


def sync_settings(settings: config.Settings) -> config.SyncSettings:
    return config.sync_settings(settings)


def check_settings(settings: config.Settings) -> None:
    """Every table of the settings, each by its owner: the first problem is a ConfigError."""
    daemon_settings(settings)
    camera_settings(settings)
    reader_settings(settings)
    display_settings(settings)
    sync_settings(settings)


# ---- work for the decision worker ----


@dataclass
class Job:
    """A function to run on the decision worker (staff actions, sync results, reloads)."""

    fn: Callable[[Checkout], Any]
    reply: Future[Any]


_STOP = object()
# Events decided together and made durable by one commit when a queue has built up.
GROUP_MAX = 32
# Entries the idle audit re-hashes per idle second (about 30 ms of the worker's time).
AUDIT_SLICE = 5000


def _log_failure(what: str) -> Callable[[Future[Any]], None]:
    """A done-callback for jobs nobody waits for: their failures still reach the log."""

    def check(future: Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("%s failed: %s", what, exc)

    return check


def _mono_ms() -> int:
    """The monotonic clock in ms: a wall clock the county found wrong is replaced by the
    county's time carried on by this one (TrustedClock)."""
    return time.monotonic_ns() // 1_000_000


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


class DecisionWorker:
    """The one thread that owns the ledger and the trust store; everything else asks it."""

    def __init__(
        self,
        settings: config.Settings,
        dsettings: DaemonSettings,
        on_decision: Callable[[Decision, Checkout], None],
        wall_ms: Callable[[], int],
        free_mb_gauge: Callable[[Path], float] = free_mb,
    ) -> None:
        self.settings = settings
        self.dsettings = dsettings
        # Free space in MB on the state directory's disk; tests pass a fake one.
        self._free_mb = free_mb_gauge
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=dsettings.queue_size)
        self._on_decision = on_decision
        self._wall_ms = wall_ms
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self.open_error: BaseException | None = None
        self.heartbeat = time.monotonic()
        self.decisions = 0
        self.dropped = 0
        self.disk_low = False
        self.snapshot: dict[str, Any] = {}
        # Names are not in the ledger (only signed codes are); the staff panel's "last
        # charge" shows the name of a sale made since this start.
        self.names: dict[int, str] = {}
        self._last_retain = -3600.0
        # Why the ledger failed its check at start (terminal/state.py check_ledger); while
        # set, the worker never opens the ledger for writing and sells nothing.
        self.ledger_problem: str | None = None
        self.ledger_bad_seq: int | None = None
        # Entries before the start check's mark, re-hashed a slice at a time while idle.
        self._audit: ledger.ChainAudit | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decision-worker", daemon=True)
        self._thread.start()
        # The ledger check at start walks what was appended since the last start (a
        # first start after an upgrade walks the whole chain: docs/ledger.md).
        self._opened.wait(300)
        if self.open_error is not None:
            raise self.open_error

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def put(self, item: Any) -> bool:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning("decision queue full (%d): event dropped", self.queue.maxsize)
            return False
        return True

    def call(self, fn: Callable[[Checkout], Any], timeout_s: float = 10.0) -> Any:
        """Run ``fn(checkout)`` on the worker and wait for its answer (staff actions, sync)."""
        reply: Future[Any] = Future()
        self.queue.put(Job(fn, reply), timeout=timeout_s)
        return reply.result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is None:
            return
        # The sentinel goes behind what is queued: events already taken are decided.
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            check = state.check_ledger(self.settings.state_dir)
        except state.StateError as exc:
            check = ledger.StartCheck(False, str(exc), None, 0, None)
        if not check.ok:
            self._refuse_all(check)
            return
        if check.checked:
            log.info("ledger checked at start: %d entries since the last start", check.checked)
        try:
            book, store = state.open_state(
                self.settings.state_dir, self.settings.terminal_id, self._wall_ms()
            )
            counter = Checkout(self.settings, book, store)
        except BaseException as exc:
            self.open_error = exc
            self._opened.set()
            return
        if check.trusted_to:
            self._audit = ledger.ChainAudit(book, check.trusted_to)
        self._opened.set()
        try:
            self._refresh(counter)
            while True:
                self.heartbeat = time.monotonic()
                try:
                    item = self.queue.get(timeout=1.0)
                except queue.Empty:
                    self._audit_step()
                    self._refresh(counter)
                    self._retain(counter)
                    continue
                if item is _STOP:
                    break
                if isinstance(item, Job):
                    self._run_job(item, counter)
                    continue
                # Group commit: what else is already waiting is decided with this event
                # and made durable by the same fsync; a lone cadre waits for nobody.
                batch, carry = [item], None
                while len(batch) < GROUP_MAX:
                    try:
                        waiting = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(waiting, QrPresented | CardPresented):
                        batch.append(waiting)
                    else:
                        carry = waiting
                        break
                self._decide_group(batch, counter)
                if carry is _STOP:
                    break
                if isinstance(carry, Job):
                    self._run_job(carry, counter)
        finally:
            if self.ledger_problem is None:
                book.close(counter.now(self._wall_ms()))
            else:
                book.close_unsigned()  # a damaged ledger gets no new checkpoint over it
            store.close()

    def _audit_step(self) -> None:
        """Idle: re-hash the next slice of entries the start check trusted from an earlier
        start (about 30 ms a slice); a damaged one stops all writing from then on."""
        audit = self._audit
        if audit is None or not audit.step(AUDIT_SLICE):
            return
        self._audit = None
        if audit.problem is None:
            log.info("ledger audit: the %d entries before the start mark are intact", audit.checked)
            return
        self.ledger_bad_seq, self.ledger_problem = audit.problem
        log.error(
            "ledger audit: %s; not selling, and nothing more is written to %s",
            self.ledger_problem,
            state.LEDGER_FILE,
        )

    def _refuse_all(self, check: ledger.StartCheck) -> None:
        """A ledger that failed its check: record nothing, decide nothing, keep the file as
        it is for county IT, and answer every job with the reason."""
        self.ledger_problem = check.problem or "the ledger failed its check"
        self.ledger_bad_seq = check.first_bad_seq
        log.error(
            "ledger check at start failed: %s; not selling, and %s is kept untouched as evidence",
            self.ledger_problem,
            state.LEDGER_FILE,
        )
        self.snapshot = {"ledger_problem": self.ledger_problem}
        self._opened.set()
        while True:
            self.heartbeat = time.monotonic()
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            if isinstance(item, Job):
                if item.reply.set_running_or_notify_cancel():
                    item.reply.set_exception(NotSelling.because(self.ledger_problem))
                continue
            self.dropped += 1
            log.warning("not decided (the ledger failed its check at start): nothing recorded")

    def _retain(self, counter: Checkout) -> None:
        """Hourly, while idle: remove acknowledged entries older than the retention."""
        if time.monotonic() - self._last_retain < 3600 or self.ledger_problem is not None:
            return
        self._last_retain = time.monotonic()
        now_ms = counter.clock.current(self._wall_ms(), _mono_ms())
        try:
            removed = counter.ledger.prune(
                now_ms - self.dsettings.retention_days * 86_400_000, now_ms
            )
        except ledger.LedgerError as exc:
            log.error("retention: %s", exc)
            return
        if removed:
            log.info(
                "retention: %d acknowledged entries older than %d days removed",
                removed,
                self.dsettings.retention_days,
            )

    def _run_job(self, job: Job, counter: Checkout) -> None:
        if self.ledger_problem is not None:
            # Found damaged after start: nothing more is marked or appended.
            if job.reply.set_running_or_notify_cancel():
                job.reply.set_exception(NotSelling.because(self.ledger_problem))
            return
        if job.reply.set_running_or_notify_cancel():
            try:
                job.reply.set_result(job.fn(counter))
            except BaseException as exc:
                job.reply.set_exception(exc)

    def _decide_group(self, batch: list[Any], counter: Checkout) -> None:
        if self.ledger_problem is not None:
            self.dropped += len(batch)
            log.warning("not decided (the ledger is damaged): nothing recorded")
            return
        # Stop before a write can fail: a ledger entry is either whole or absent.
        self.disk_low = self._free_mb(self.settings.state_dir) < self.dsettings.min_free_mb
        if self.disk_low:
            self.dropped += len(batch)
            log.error(
                "disk nearly full (< %d MB free in %s): not selling; free space or call a "
                "technician",
                self.dsettings.min_free_mb,
                self.settings.state_dir,
            )
            return
        decisions: list[Decision] = []
        try:
            with counter.ledger.group():
                for event in batch:
                    try:
                        if isinstance(event, QrPresented):
                            decisions.append(
                                counter.present_qr(event.text, self._wall_ms(), _mono_ms())
                            )
                        else:
                            decisions.append(
                                counter.present_card(event.uid, self._wall_ms(), _mono_ms())
                            )
                    except ledger.LedgerError as exc:
                        log.error("%s", exc)
        except ledger.LedgerError as exc:
            # Nothing of the group is on disk, so nothing of it may reach the screen.
            log.error("%s (%d decisions not recorded and not shown)", exc, len(decisions))
            return
        for decision in decisions:
            self.decisions += 1
            if decision.accepted and decision.display_name:
                if len(self.names) > 512:
                    self.names.clear()
                self.names[decision.entry.seq] = decision.display_name
        self._refresh(counter)
        for decision in decisions:
            self._on_decision(decision, counter)

    def _refresh(self, counter: Checkout) -> None:
        """A snapshot of what health and the status line need; read by other threads."""
        wall = self._wall_ms()
        now_ms = counter.clock.current(wall, _mono_ms())
        unsynced, unsynced_fen = counter.ledger.unsynced()
        ages = {}
        for name in trust.LIST_NAMES:
            info = counter.trust.list_info(name)
            ages[name] = None if info is None else max(0, now_ms // 1000 - info.issued_at)
        service = policy.service_at(counter.settings, now_ms // 1000)
        self.disk_low = self._free_mb(self.settings.state_dir) < self.dsettings.min_free_mb
        self.snapshot = {
            "unsynced": unsynced,
            "unsynced_fen": unsynced_fen,
            "last_ack_ms": counter.ledger.last_ack_ms(),
            "last_seq": counter.ledger.last_seq(),
            "list_ages_s": ages,
            "clock_trusted": counter.clock.trusted(now_ms) and not counter.clock.in_fault,
            "clock_floor_ms": counter.clock.floor_ms,
            # Wall clock minus the county's time when beyond [sync] clock_tolerance_s, and
            # whether sales may go on (on the county's time carried on by the monotonic clock).
            "clock_ahead_ms": counter.clock.wall_ahead_ms,
            "clock_sells": counter.clock.sells(now_ms),
            "meal": service.meal.name if service else None,
            "price_fen": service.meal.price_own_fen if service else None,
            "price_visitor_fen": service.meal.price_visitor_fen if service else None,
            "free_mb": round(self._free_mb(self.settings.state_dir), 1),
            "disk_low": self.disk_low,
        }


# ---- the staff desk, over the worker ----


class NotSelling(ledger.LedgerError, DeskClosed):
    """A job refused because the ledger failed its check: a ledger error to the sync and
    update paths, and to the screen a staff action refused in one line, not a traceback."""

    @classmethod
    def because(cls, problem: str | None) -> NotSelling:
        return cls(
            f"ledger damaged ({problem or 'it failed its check'}): not selling; keep the "
            "terminal as it is and call county IT"
        )


class WorkerDesk:
    """The screen's StaffDesk, answered by the decision worker (it owns the ledger)."""

    def __init__(self, worker: DecisionWorker, settings: config.Settings, pin: str) -> None:
        self.worker = worker
        self.settings = settings
        self.pin = pin

    def staff_for_pin(self, pin: str) -> str | None:
        from terminal.core.desk import pin_matches

        return "staff" if pin_matches(self.pin, pin) else None

    def last_charge(self) -> Any:
        from terminal.core.desk import Charge

        def find(c: Checkout) -> Any:
            sale = c.ledger.last_sale()
            if sale is None:
                return None
            return Charge(
                seq=sale.seq,
                at_ms=sale.at_ms,
                display_name=self.worker.names.get(sale.seq),
                unit=sale.unit,
                meal=sale.meal,
                amount_fen=sale.amount_fen,
                method=sale.method or "",
                unit_name=c.settings.unit_names.get(sale.unit or ""),
            )

        return self.worker.call(find)

    def reverse(self, sale_seq: int, staff: str, within_s: int) -> Any:
        from terminal.core.desk import Refusal, Reversal

        def undo(c: Checkout) -> Any:
            try:
                entry = c.reverse(sale_seq, self.worker._wall_ms(), within_s, staff)
            except ReversalRefused as refused:
                return Refusal(refused.code, str(refused))
            except ledger.LedgerError as exc:
                return Refusal("no_such_sale", str(exc))
            return Reversal(entry.seq, sale_seq, entry.at_ms, entry.amount_fen, entry.meal)

        return self.worker.call(undo)

    def today_totals(self) -> Any:
        return self.worker.call(lambda c: day_totals(c, self.worker._wall_ms()))

    def day_summary(self) -> Any:
        return self.worker.call(lambda c: day_summary(c, self.worker._wall_ms()))


def _todays_entries(c: Checkout, wall_ms: int) -> tuple[str, int, list[ledger.LedgerEntry]]:
    """(local service day, now ms, that day's entries). An entry with no day of its own (a
    refused code or card: nothing in it named a meal) belongs to the local day of its time."""
    now_ms = c.clock.current(wall_ms, _mono_ms())
    day = policy.local_day(c.settings, now_ms // 1000)
    todays = [
        e
        for e in c.ledger.entries()
        if (e.day or policy.local_day(c.settings, e.at_ms // 1000)) == day
    ]
    return day, now_ms, todays


def _totals_of(c: Checkout, day: str, now_ms: int, entries: list[ledger.LedgerEntry]) -> Any:
    from terminal.core.desk import DayTotals, MealTotal

    rows: dict[str, list[int]] = {m.name: [0, 0, 0, 0, 0] for m in c.settings.meals}
    for e in entries:
        # Every refusal counts: one that named no meal goes in the "" row (docs/technicians.md).
        row = rows.setdefault(e.meal or "", [0, 0, 0, 0, 0])
        if e.kind == ledger.SALE and e.verdict == ledger.ACCEPT:
            row[0] += 1
            row[1] += e.amount_fen
        elif e.kind == ledger.REVERSAL:
            row[2] += 1
            row[3] += e.amount_fen
        elif e.verdict == ledger.REJECT:
            row[4] += 1
    meals = tuple(MealTotal(name, *row) for name, row in rows.items() if name or any(row))
    return DayTotals(day=day, meals=meals, generated_at_ms=now_ms)


def day_totals(c: Checkout, wall_ms: int) -> Any:
    """Totals by meal for the local service day at ``wall_ms`` (the staff panel's figures)."""
    return _totals_of(c, *_todays_entries(c, wall_ms))


def day_summary(c: Checkout, wall_ms: int) -> Any:
    """The end-of-day summary (printed and CSV) for the local service day at ``wall_ms``."""
    from terminal.core.desk import DaySummary

    day, now_ms, todays = _todays_entries(c, wall_ms)
    reasons: dict[str, int] = {}
    for e in todays:
        if e.verdict == ledger.REJECT:
            code = e.reason or "unknown"
            reasons[code] = reasons.get(code, 0) + 1
    s = c.settings
    return DaySummary(
        totals=_totals_of(c, day, now_ms, todays),
        terminal_id=s.terminal_id,
        canteen_id=s.canteen_id,
        canteen_name=s.canteen_name,
        first_seq=todays[0].seq if todays else None,
        last_seq=todays[-1].seq if todays else None,
        refusals_by_reason=dict(sorted(reasons.items())),
        unsynced_entries=c.ledger.unsynced()[0],
    )


# ---- the status socket (canteen-terminal status) ----


class _StatusHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        daemon: Daemon = self.server.daemon  # type: ignore[attr-defined]
        self.wfile.write(json.dumps(daemon.health(), ensure_ascii=False).encode() + b"\n")


class _StatusServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


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


# ---- the daemon ----


class Daemon:
    """A running terminal. ``run()`` blocks until SIGTERM/SIGINT or ``request_stop()``."""

    def __init__(
        self,
        settings: config.Settings,
        *,
        wall_ms: Callable[[], int] | None = None,
        notifier: Notifier | None = None,
        config_path: str | None = None,
        start_note: Any = None,
        state_lock: state.StateLock | None = None,
        free_mb_gauge: Callable[[Path], float] = free_mb,
    ) -> None:
        # A provisioned state directory says who this terminal is: its ids rule over the
        # settings' (docs/ledger.md, "Identity"), so the ledger is the one the county expects.
        settings = state.with_identity(settings)
        self.settings = settings
        # One writer per state directory: taken at start unless `run` took it already.
        self._state_lock = state_lock
        self.config_path = config_path
        self.start_note = start_note  # updates.StartNote: the set in force, a rollback
        self.update_notice: str | None = getattr(start_note, "message", None)
        self.update_state: str | None = None
        check_settings(settings)  # a typo anywhere stops the start, not a later thread
        self.dsettings = daemon_settings(settings)
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.notifier = notifier or Notifier()
        self.state = STARTING
        self.sentence = "The terminal is starting; please wait."
        self.problems: list[str] = []
        self._stop = threading.Event()
        self.worker = DecisionWorker(
            settings, self.dsettings, self._shown, self._wall_ms, free_mb_gauge
        )
        self.camera: Any = None
        self.reader: Any = None
        self.screen: Any = None
        self.sync: Any = None
        self._status_server: _StatusServer | None = None
        self.started_at = time.monotonic()
        self.online: bool | None = None
        self.online_since_ms = self._wall_ms()
        self.sync_note: str | None = None  # why there is no sync (not provisioned)
        self.last_sync: dict[str, Any] | None = None

    # -- parts --

    def _start_parts(self) -> None:
        state.prepare(self.settings.state_dir)
        if self._state_lock is None:
            self._state_lock = state.lock(self.settings.state_dir, state.DAEMON)
        self.worker.start()
        self._start_screen()
        if self.dsettings.camera:
            from terminal.scanner.camera import Camera

            self.camera = Camera(camera_settings(self.settings), self.worker.queue)
            self.camera.start()
        if self.dsettings.reader:
            from terminal.scanner.reader import CardReader

            self.reader = CardReader(reader_settings(self.settings), self.worker.queue)
            self.reader.start()
        self._start_sync()
        self._start_status_socket()

    def _start_sync(self) -> None:
        from terminal import sync

        if self.worker.ledger_problem is not None:
            # Nothing may be marked or added to a ledger kept as evidence.
            self.sync_note = "no sync: the ledger failed its check at start"
            return
        options = sync_settings(self.settings)
        try:
            identity = sync.load_identity(self.settings.state_dir)
        except sync.NotProvisioned as exc:
            self.sync_note = str(exc)
            log.warning("offline only: %s", exc)
            return
        client = sync.SyncClient(
            Path(self.settings.state_dir) / state.LEDGER_FILE,
            identity,
            options,
            wall_ms=self._wall_ms,
        )
        sync.share_the_interpreter()  # decisions wait less for the sync thread's GIL

        def arrived(result: sync.SyncResult) -> None:
            # The sync thread never writes the ledger: the worker applies the answer.
            done: Future[Any] = Future()
            done.add_done_callback(_log_failure("applying the county's answer"))

            def apply(c: Checkout) -> Any:
                applied = sync.apply_result(
                    c.ledger, c.clock, result, self._wall_ms(), options, _mono_ms()
                )
                # The hash the county now holds, kept outside the ledger (checked at start).
                state.record_acked(self.settings.state_dir, c.ledger)
                return applied

            self.worker.put(Job(apply, done))
            online = result.error is None
            if online != self.online:
                self.online = online
                self.online_since_ms = self._wall_ms()
                log.warning(
                    "county server %s", "reachable" if online else f"unreachable: {result.error}"
                )
            self.last_sync = result.summary()
            if online:
                # Expiry is judged on the county's signed time just received, carried on by
                # the monotonic clock: never on a wall clock that may be far behind.
                at_ms = client.county_time_ms() if result.server_ms is not None else None
                self._refresh_updates(at_ms)

        self.sync = sync.SyncSchedule(client, options, arrived)
        self.sync.start(first_delay_s=0.5)
        log.info("syncing with %s every %s s", client.server, options.interval_s)

    # -- signed updates (terminal/updates/, docs/updates.md) --

    def _record_start_note(self) -> None:
        """Up and serving: a rollback goes in the ledger, the set in force becomes last good."""
        try:
            from terminal import updates
        except ImportError:
            return
        note = self.start_note
        state_dir = self.settings.state_dir
        if self.worker.ledger_problem is not None:
            return  # nothing is in force while not selling; the next good start records it

        def record(c: Checkout) -> None:
            draft = note.ledger_draft() if note is not None else None
            if draft is not None:
                at = c.now(self._wall_ms())
                c.ledger.append(draft, at)
                c.clock.raise_floor(at)
            updates.confirm_started(state_dir, c.trust)

        try:
            self.worker.call(record)
        except Exception as exc:
            log.error("recording the update set in force failed: %s", exc)

    def _refresh_updates(self, at_ms: int | None) -> None:
        """In the sync thread, after a sync: fetch and verify a newer set, then let the
        decision worker apply it between two decisions. ``at_ms``: the trusted time that
        judges expiry (None: there is none, and the refresh waits)."""
        from terminal import updates

        state_dir = self.settings.state_dir
        if at_ms is None:
            self.update_state = "waiting for the county's time"
            return
        try:
            # A new client each time: a pooled connection from before an outage may be
            # black-holed and would hold the refresh until its read timeout.
            prepared = updates.updater_for_county(state_dir).prepare_in_force(at_ms)
        except updates.NotPinned:
            self.update_state = "not pinned"
            return
        except updates.UpdateError as exc:
            self.update_state = getattr(exc, "kind", "update")
            log.warning("updates: %s", exc)
            return
        except Exception as exc:  # a damaged state dir, an unexpected library error
            log.error("updates: %s", exc)
            return
        self.update_state = "current"
        done: Future[Any] = Future()
        done.add_done_callback(_log_failure("applying an update set"))
        self.worker.put(Job(lambda c: self._apply_set(c, prepared), done))

    def _apply_set(self, c: Checkout, prepared: Any) -> None:
        from terminal import updates

        now_ms = c.now(self._wall_ms())
        applied = updates.apply(self.settings.state_dir, c.trust, prepared, now_ms // 1000)
        if applied is None:
            return
        c.ledger.append(applied.ledger_draft(), now_ms)
        c.trust.reload()
        log.warning("update set %s applied (%s)", applied.set_version, ", ".join(applied.changed))
        if applied.settings_changed:
            note = updates.StartNote(applied.settings_file, applied.set_version)
            # Prices, meal windows, caps and token limits take effect at the next decision;
            # device, screen and sync settings at the next start (which confirms the set).
            c.settings = updates.effective_settings(self.config_path, note)
            log.warning("settings of update set %s in force for decisions", applied.set_version)

    def _start_screen(self) -> None:
        from terminal.display.server import Screen, session_secret

        dset = display_settings(self.settings)
        self.screen = Screen(
            dset,
            WorkerDesk(self.worker, self.settings, dset.staff_pin),
            secret=session_secret(self.settings.state_dir),
        )
        try:
            self.screen.start()
        except OSError as exc:
            # One line, not a traceback: most often an earlier terminal still holds the port.
            self.screen = None
            raise config.ConfigError(
                f"the screen cannot listen on {dset.host} port {dset.port}: {exc.strerror}; "
                "another program holds it (an earlier terminal still running?): stop it, "
                "or set another [display] port"
            ) from None
        log.info("screen at %s", self.screen.url)

    def _start_status_socket(self) -> None:
        path = Path(self.settings.state_dir) / STATUS_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = _StatusServer(str(path), _StatusHandler)
        server.daemon = self  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, name="status-socket", daemon=True).start()
        self._status_server = server

    # -- decisions reach the screen only here, after the commit --

    def _shown(self, decision: Decision, counter: Checkout) -> None:
        e = decision.entry
        view = {
            "seq": e.seq,
            "verdict": e.verdict,
            "reason": e.reason,
            "display_name": decision.display_name,
            "unit": e.unit,
            "unit_name": counter.settings.unit_names.get(e.unit or ""),
            "meal": e.meal,
            "amount_fen": e.amount_fen,
            "method": e.method,
            "at_ms": e.at_ms,
        }
        log.info(
            "entry %d: %s %s %s",
            e.seq,
            e.method,
            e.verdict,
            e.reason or f"{e.meal} {e.amount_fen} fen",
        )
        if self.screen is not None:
            self.screen.show_decision(view)
        if self.sync is not None and decision.accepted:
            self.sync.nudge()

    # -- health --

    def health(self) -> dict[str, Any]:
        snap = dict(self.worker.snapshot)
        devices = {}
        for part in (self.camera, self.reader):
            if part is not None:
                h = part.health()
                devices[h.device] = {
                    "state": h.state,
                    "detail": h.detail,
                    "last_activity_age_s": h.last_activity_age_s,
                    "opens": h.opens,
                    "counters": dict(h.counters),
                }
                if part is self.camera:
                    # What the camera delivers, not what the settings ask (status, selftest).
                    fps = part.measured_fps()
                    devices[h.device]["fps_measured"] = None if fps is None else round(fps, 1)
                    devices[h.device]["fps_asked"] = part.settings.fps
        return {
            "state": self.state,
            "sentence": self.sentence,
            "problems": list(self.problems),
            "terminal_id": self.settings.terminal_id,
            "canteen": self.settings.canteen_name,
            "screen": self.screen.url if self.screen is not None else None,
            "devices": devices,
            "decisions": self.worker.decisions,
            "dropped_events": self.worker.dropped,
            "queue": self.worker.queue.qsize(),
            "online": self.online,
            "online_since_ms": self.online_since_ms,
            "timezone": self.settings.timezone.key,  # `status` shows times in it
            "sync": self.last_sync,
            "sync_note": self.sync_note,
            "updates": self.update_state,
            "update_notice": self.update_notice,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "ledger_problem": self.worker.ledger_problem,
            **snap,
        }

    def _assess(self) -> None:
        """Work out the state and its sentence from the parts; tell systemd and the screen."""
        problems = []
        if self.worker.ledger_problem is not None:
            at = self.worker.ledger_bad_seq
            problems.append(
                "ledger damaged"
                + (f" at entry {at}" if at is not None else "")
                + ": not selling; keep the terminal as it is and call county IT"
            )
        worker_ok = (
            self.worker.alive()
            and time.monotonic() - self.worker.heartbeat < self.dsettings.worker_stall_s
        )
        if not worker_ok:
            problems.append("the decision worker is stuck: the terminal will restart itself")
        snap = self.worker.snapshot
        if snap.get("disk_low"):
            problems.append("disk nearly full: not selling; free space or call a technician")
        for part, what in ((self.camera, "camera"), (self.reader, "card reader")):
            if part is not None and not part.health().up:
                problems.append(f"{what} down: {part.health().detail}")
        if self.update_notice:
            problems.append(self.update_notice)
        if self.update_state == "stale":
            problems.append("updates stale: the county's signed timestamp expired; call county IT")
        ahead = snap.get("clock_ahead_ms") if snap else None
        if isinstance(ahead, int):
            problems.append(clock_problem(ahead, bool(snap.get("clock_sells"))))
        elif snap and not snap.get("clock_trusted", True):
            problems.append("clock not trusted: connect the network so the time can be set")
        self.problems = problems
        if self._stop.is_set():
            self.state, self.sentence = STOPPED, "The terminal is stopping."
        elif problems:
            self.state = DEGRADED
            self.sentence = "; ".join(problems)
        else:
            self.state = READY
            self.sentence = "Ready: show a meal code or swipe a card."
        devices_alive = all(
            part is None or (part._thread is not None and part._thread.is_alive())
            for part in (self.camera, self.reader)
        )
        if worker_ok and devices_alive:
            self.notifier.send(watchdog=1)
        self.notifier.send(status=f"{self.state}: {self.sentence}")
        if self.screen is not None:
            self.screen.set_status(self._status_view())

    def _status_view(self) -> dict[str, Any]:
        snap = self.worker.snapshot
        ages = [a for a in (snap.get("list_ages_s") or {}).values() if a is not None]
        return {
            "state": self.state,
            "sentence": self.sentence,
            "online": bool(self.online),
            "since_ms": self.online_since_ms,
            "unsynced": snap.get("unsynced", 0),
            "last_sync_ms": snap.get("last_ack_ms"),
            "list_age_s": max(ages) if ages else None,
            "settings_version": None,
            "clock_trusted": bool(snap.get("clock_trusted", False)),
            "canteen_name": self.settings.canteen_name,
            "meal": snap.get("meal"),
            "price_fen": snap.get("price_fen"),
            "price_visitor_fen": snap.get("price_visitor_fen"),
        }

    # -- life cycle --

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        try:
            self._start_parts()
        except state.StateInUse as exc:
            log.error("cannot start: %s: one process at a time may use a state directory", exc)
            self.notifier.send(status=f"cannot start: {exc}")
            return 2
        except (config.ConfigError, state.StateError, ledger.LedgerError, trust.TrustError) as exc:
            log.error("cannot start: %s", exc)
            self.notifier.send(status=f"cannot start: {exc}")
            self._shutdown()
            return 2
        self._record_start_note()
        self._assess()
        self.notifier.send(ready=1, status=f"{self.state}: {self.sentence}")
        log.info("%s: %s", self.state, self.sentence)
        last_state = self.state
        while not self._stop.wait(1.0):
            self._assess()
            if self.state != last_state:
                log.warning("%s: %s", self.state, self.sentence)
                last_state = self.state
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.notifier.send(stopping=1, status="stopping")
        # Devices first: no new events. Then the worker finishes what it holds.
        for part in (self.camera, self.reader):
            if part is not None:
                part.stop(timeout_s=3.0)
        if self.sync is not None:
            with contextlib.suppress(Exception):
                self.sync.stop(wait=False)
        self.worker.stop(timeout_s=10.0)
        if self._status_server is not None:
            self._status_server.shutdown()
            self._status_server.server_close()
            with contextlib.suppress(FileNotFoundError):
                (Path(self.settings.state_dir) / STATUS_SOCKET).unlink()
        self.state = STOPPED
        if self.screen is not None:
            with contextlib.suppress(Exception):
                self.screen.set_status(self._status_view())
            self.screen.stop()
        if self._state_lock is not None:
            self._state_lock.release()  # last: the ledger is closed
        log.info("stopped")
        self.notifier.close()
