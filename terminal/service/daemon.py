"""The terminal as a service: start the parts, keep the state, stop cleanly.

This module owns the wiring of a running terminal. It starts the parts in a
fixed order (state, decision worker, screen, devices, sync, status socket),
routes every event through one queue to the one decision worker
(terminal/service/worker.py, the only thread that touches the ledger and the
trust store), shows a verdict only after its entry is committed, keeps the
daemon's state (starting, ready, degraded, stopped) with a sentence for the
person in front of the terminal, tells systemd (terminal/service/notify.py),
and stops cleanly on SIGTERM. It never decides a verdict itself
(terminal/core/checkout.py does) and never daemonizes: systemd does that.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terminal import config, ledger, state, trust
from terminal.core.checkout import Decision

# Names other modules and tests reach through this module: re-exported explicitly.
from terminal.service.notify import JournalFormatter as JournalFormatter
from terminal.service.notify import Notifier as Notifier
from terminal.service.notify import setup_logging as setup_logging
from terminal.service.settings import DaemonSettings as DaemonSettings
from terminal.service.settings import camera_settings as camera_settings
from terminal.service.settings import check_settings as check_settings
from terminal.service.settings import daemon_settings as daemon_settings
from terminal.service.settings import display_settings as display_settings
from terminal.service.settings import reader_settings as reader_settings
from terminal.service.settings import sync_settings as sync_settings
from terminal.service.status import STATUS_SOCKET as STATUS_SOCKET
from terminal.service.status import StatusSocket
from terminal.service.status import ask_status as ask_status
from terminal.service.status import clock_problem as clock_problem
from terminal.service.worker import AUDIT_SLICE as AUDIT_SLICE
from terminal.service.worker import GROUP_MAX as GROUP_MAX
from terminal.service.worker import DecisionWorker as DecisionWorker
from terminal.service.worker import Job as Job
from terminal.service.worker import NotSelling as NotSelling
from terminal.service.worker import TerminalCheckout, log_failure, mono_ms
from terminal.service.worker import WorkerDesk as WorkerDesk
from terminal.service.worker import day_summary as day_summary
from terminal.service.worker import day_totals as day_totals
from terminal.service.worker import free_mb as free_mb
from terminal.service.worker import load_directory as load_directory

if TYPE_CHECKING:
    from terminal.link.transport import Link

log = logging.getLogger("canteen.daemon")


def decision_view(decision: Decision) -> dict[str, Any]:
    """What the screen is sent of a committed decision (terminal/display/views.py
    DecisionView): the entry's facts, the cadre's name, the agency's name (the directory's,
    else [canteen] unit_names) and the price tier charged."""
    e = decision.entry
    return {
        "seq": e.seq,
        "verdict": e.verdict,
        "reason": e.reason,
        "display_name": decision.display_name,
        "unit": e.unit,
        "unit_name": decision.unit_name,
        "tier": decision.tier,
        "meal": e.meal,
        "amount_fen": e.amount_fen,
        "method": e.method,
        "at_ms": e.at_ms,
    }


STARTING = "starting"
READY = "ready"
DEGRADED = "degraded"
STOPPED = "stopped"


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
        self._status_socket: StatusSocket | None = None
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
        from terminal.link.provision import load_identity
        from terminal.link.transport import NotProvisioned

        if self.worker.ledger_problem is not None:
            # Nothing may be marked or added to a ledger kept as evidence.
            self.sync_note = "no sync: the ledger failed its check at start"
            return
        options = sync_settings(self.settings)
        try:
            identity = load_identity(self.settings.state_dir)
        except NotProvisioned as exc:
            self.sync_note = str(exc)
            log.warning("offline only: %s", exc)
            return
        client = sync.SyncClient(
            Path(self.settings.state_dir) / state.LEDGER_FILE,
            identity,
            options,
            wall_ms=self._wall_ms,
        )
        # The update check after a sync rides the sync's connection: one TLS handshake a
        # sync instead of one for each (docs/county-scale.md).
        client.keep_connection = True
        sync.share_the_interpreter()  # decisions wait less for the sync thread's GIL

        def arrived(result: sync.SyncResult) -> None:
            # The sync thread never writes the ledger: the worker applies the answer.
            done: Future[Any] = Future()
            done.add_done_callback(log_failure("applying the county's answer"))

            def apply(c: TerminalCheckout) -> Any:
                applied = sync.apply_result(
                    c.ledger, c.clock, result, self._wall_ms(), options, mono_ms()
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
                self._refresh_updates(at_ms, client.link)
            client.link.close()  # the sync's connection, kept for the refresh, ends here

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

        def record(c: TerminalCheckout) -> None:
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

    def _refresh_updates(self, at_ms: int | None, link: Link | None = None) -> None:
        """In the sync thread, after a sync: fetch and verify a newer set, then let the
        decision worker apply it between two decisions. ``at_ms``: the trusted time that
        judges expiry (None: there is none, and the refresh waits); ``link``: the sync's,
        whose connection the refresh rides."""
        from terminal import updates

        state_dir = self.settings.state_dir
        if at_ms is None:
            self.update_state = "waiting for the county's time"
            return
        try:
            # A new client each time, on the connection the sync has just used (never one
            # from before an outage: it may be black-holed and hold the refresh until its
            # read timeout).
            prepared = updates.updater_for_county(state_dir, link=link).prepare_in_force(at_ms)
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
        done.add_done_callback(log_failure("applying an update set"))
        self.worker.put(Job(lambda c: self._apply_set(c, prepared), done))

    def _apply_set(self, c: TerminalCheckout, prepared: Any) -> None:
        from terminal import updates

        now_ms = c.now(self._wall_ms())
        applied = updates.apply(self.settings.state_dir, c.trust, prepared, now_ms // 1000)
        if applied is None:
            return
        c.ledger.append(applied.ledger_draft(), now_ms)
        c.trust.reload()
        log.warning("update set %s applied (%s)", applied.set_version, ", ".join(applied.changed))
        # The agency directory of the new set prices the next decision (docs/prices.md).
        c.directory = load_directory(self.settings.state_dir)
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
        self._status_socket = StatusSocket(self.settings.state_dir, self.health)
        self._status_socket.start()

    # -- decisions reach the screen only here, after the commit --

    def _shown(self, decision: Decision, counter: TerminalCheckout) -> None:
        e = decision.entry
        view = decision_view(decision)
        log.info(
            "entry %d: %s %s %s",
            e.seq,
            e.method,
            e.verdict,
            e.reason or f"{e.meal} {e.amount_fen} fen ({decision.tier})",
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
        if self._status_socket is not None:
            self._status_socket.stop()
        self.state = STOPPED
        if self.screen is not None:
            with contextlib.suppress(Exception):
                self.screen.set_status(self._status_view())
            self.screen.stop()
        if self._state_lock is not None:
            self._state_lock.release()  # last: the ledger is closed
        log.info("stopped")
        self.notifier.close()
