"""The one decision worker: the only thread that touches the ledger and the trust store.

This module owns the worker thread (``DecisionWorker``): the ledger check at
start, one queue of events and jobs, group commit (the waiting events decided
in order inside one ledger transaction and one fsync), the free-disk stop,
the idle audit and retention, and the health snapshot other threads read. It
also owns the staff desk answered by the worker (``WorkerDesk``), the day's
totals and summary, and loading the installed agency directory into the
checkout (``load_directory``: at start, and again after each update set). It
never decides a verdict itself (Checkout does), never shows one (the daemon's
callback does, after the commit), and starts no device, screen or sync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.agencies import Directory
from terminal import config, ledger, state, trust
from terminal.core import policy
from terminal.core.checkout import Checkout, Decision, ReversalRefused
from terminal.core.desk import DeskClosed
from terminal.core.events import CardPresented, QrPresented
from terminal.service.settings import DaemonSettings

# The worker's lines belong to the daemon's log (journald shows them as canteen.daemon).
log = logging.getLogger("canteen.daemon")


# The checkout the service runs: over the SQLite ledger and trust store.
TerminalCheckout = Checkout[ledger.Ledger, trust.TrustStore]


@dataclass
class Job:
    """A function to run on the decision worker (staff actions, sync results, reloads)."""

    fn: Callable[[TerminalCheckout], Any]
    reply: Future[Any]


_STOP = object()
# Events decided together and made durable by one commit when a queue has built up.
GROUP_MAX = 32
# Entries the idle audit re-hashes per idle second (about 30 ms of the worker's time).
AUDIT_SLICE = 5000


def log_failure(what: str) -> Callable[[Future[Any]], None]:
    """A done-callback for jobs nobody waits for: their failures still reach the log."""

    def check(future: Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("%s failed: %s", what, exc)

    return check


def mono_ms() -> int:
    """The monotonic clock in ms: a wall clock the county found wrong is replaced by the
    county's time carried on by this one (TrustedClock)."""
    return time.monotonic_ns() // 1_000_000


def load_directory(state_dir: Path) -> Directory | None:
    """The agency directory installed with the update set in force, or None.

    terminal/updates installs the signed directory target and reads it back
    (``installed_directory``: None while no set has brought one); then prices are own
    or visitor. A directory that cannot be read is logged and treated as none (the
    start takes such a set back; after an update it should not happen): visitors pay
    the visitor price until a good one arrives, and sales go on."""
    try:
        from terminal import updates
    except ImportError:  # a build without the update client (python-tuf): no directory
        return None
    try:
        return updates.installed_directory(state_dir)
    except updates.UpdateError as exc:
        log.error("agency directory: %s; pricing own or visitor until a good one arrives", exc)
        return None


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


class DecisionWorker:
    """The one thread that owns the ledger and the trust store; everything else asks it."""

    def __init__(
        self,
        settings: config.Settings,
        dsettings: DaemonSettings,
        on_decision: Callable[[Decision, TerminalCheckout], None],
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

    def call(self, fn: Callable[[TerminalCheckout], Any], timeout_s: float = 10.0) -> Any:
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
            counter.directory = load_directory(self.settings.state_dir)
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

    def _retain(self, counter: TerminalCheckout) -> None:
        """Hourly, while idle: remove acknowledged entries older than the retention."""
        if time.monotonic() - self._last_retain < 3600 or self.ledger_problem is not None:
            return
        self._last_retain = time.monotonic()
        now_ms = counter.clock.current(self._wall_ms(), mono_ms())
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

    def _run_job(self, job: Job, counter: TerminalCheckout) -> None:
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

    def _decide_group(self, batch: list[Any], counter: TerminalCheckout) -> None:
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
                                counter.present_qr(event.text, self._wall_ms(), mono_ms())
                            )
                        else:
                            decisions.append(
                                counter.present_card(event.uid, self._wall_ms(), mono_ms())
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

    def _refresh(self, counter: TerminalCheckout) -> None:
        """A snapshot of what health and the status line need; read by other threads."""
        wall = self._wall_ms()
        now_ms = counter.clock.current(wall, mono_ms())
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
        from terminal.core.desk import charge_of

        def find(c: TerminalCheckout) -> Any:
            sale = c.ledger.last_sale()
            if sale is None:
                return None
            name = self.worker.names.get(sale.seq)
            return charge_of(sale, name, c.settings.unit_names, c.directory)

        return self.worker.call(find)

    def reverse(self, sale_seq: int, staff: str, within_s: int) -> Any:
        from terminal.core.desk import Refusal, Reversal

        def undo(c: TerminalCheckout) -> Any:
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


def _todays_entries(c: TerminalCheckout, wall_ms: int) -> tuple[str, int, list[ledger.LedgerEntry]]:
    """(local service day, now ms, that day's entries). An entry with no day of its own (a
    refused code or card: nothing in it named a meal) belongs to the local day of its time."""
    now_ms = c.clock.current(wall_ms, mono_ms())
    day = policy.local_day(c.settings, now_ms // 1000)
    todays = [
        e
        for e in c.ledger.entries()
        if (e.day or policy.local_day(c.settings, e.at_ms // 1000)) == day
    ]
    return day, now_ms, todays


def _totals_of(
    c: TerminalCheckout, day: str, now_ms: int, entries: list[ledger.LedgerEntry]
) -> Any:
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


def day_totals(c: TerminalCheckout, wall_ms: int) -> Any:
    """Totals by meal for the local service day at ``wall_ms`` (the staff panel's figures)."""
    return _totals_of(c, *_todays_entries(c, wall_ms))


def day_summary(c: TerminalCheckout, wall_ms: int) -> Any:
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
