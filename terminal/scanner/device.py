"""What every device thread shares: its health board, reopen backoff and presence filter.

This module owns the small pieces both device threads (camera, card reader)
use the same way: a thread-safe health board that a device thread writes and
the daemon reads as a `DeviceHealth` snapshot, the reopen backoff after an
unplug, and the rule that one thing held in front of a device is one
presentation (`PresenceFilter`). It never opens a device, never imports a
device library and never touches the event queue, the ledger or the policy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UP = "up"
DOWN = "down"
STARTING = "starting"
STOPPED = "stopped"


@dataclass(frozen=True)
class DeviceHealth:
    """A snapshot of one device for the daemon's health page and the staff screen."""

    device: str  # "camera" or "reader" (the name given to the device thread)
    state: str  # UP, DOWN, STARTING or STOPPED
    detail: str  # one sentence: what is happening and, when down, what to do
    since_s: float  # seconds in this state
    last_activity_age_s: float | None  # seconds since the last frame / answer; None if never
    opens: int  # successful opens since start (1 = never replugged)
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.state == UP


class HealthBoard:
    """The device thread writes here; `snapshot` may be called from any thread."""

    def __init__(self, device: str, now: float) -> None:
        self._device = device
        self._lock = threading.Lock()
        self._state = STARTING
        self._detail = "starting"
        self._since = now
        self._last_activity: float | None = None
        self._opens = 0
        self._counters: dict[str, int] = {}

    def set_state(self, state: str, detail: str, now: float) -> None:
        with self._lock:
            if state != self._state:
                self._since = now
            if state == UP and self._state != UP:
                self._opens += 1
            self._state = state
            self._detail = detail

    def activity(self, now: float) -> None:
        with self._lock:
            self._last_activity = now

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def snapshot(self, now: float, stall_s: float | None = None) -> DeviceHealth:
        """The current state; an UP device with no activity for `stall_s` is reported DOWN.

        The stall check is done here, not only in the device thread, because a
        thread blocked inside a driver read cannot report that it is stuck.
        """
        with self._lock:
            state, detail, since = self._state, self._detail, self._since
            age = None if self._last_activity is None else max(0.0, now - self._last_activity)
            if (
                stall_s is not None
                and state == UP
                and (age if age is not None else now - since) > stall_s
            ):
                quiet = age if age is not None else now - since
                state = DOWN
                detail = (
                    f"no frame for {quiet:.1f} s: check the {self._device} cable; "
                    "it is reopened automatically"
                )
            return DeviceHealth(
                device=self._device,
                state=state,
                detail=detail,
                since_s=max(0.0, now - since),
                last_activity_age_s=age,
                opens=self._opens,
                counters=dict(self._counters),
            )


def start_thread(
    current: threading.Thread | None, run: Callable[[], None], name: str
) -> threading.Thread:
    """Start a device's own thread (a daemon thread named after the device), once."""
    if current is not None:
        raise RuntimeError(f"{name} already started")
    thread = threading.Thread(target=run, name=f"{name}-thread", daemon=True)
    thread.start()
    return thread


def stop_thread(
    thread: threading.Thread | None, stop: threading.Event, name: str, timeout_s: float
) -> None:
    """Ask a device's thread to end and wait for it; say so when it does not end in time."""
    stop.set()
    if thread is not None:
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("%s: thread did not end within %.1f s", name, timeout_s)


class Backoff:
    """Delays between reopen attempts: first, doubled each failure, capped; reset when healthy."""

    def __init__(self, first_s: float, max_s: float) -> None:
        if first_s <= 0 or max_s < first_s:
            raise ValueError("backoff needs 0 < first_s <= max_s")
        self._first = first_s
        self._max = max_s
        self._next = first_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._max, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self._first


class PresenceFilter:
    """One presentation per presence: a key seen again within `hold_s` of its last sighting
    is the same presentation (a QR code still in view, a card still on the reader).

    Every sighting refreshes the key, so a card resting on a reader that repeats
    its frame counts once, and counts again only after it has been absent for
    `hold_s`. Memory is bounded: stale keys are pruned and at most `max_keys`
    are kept (the oldest are forgotten first).
    """

    def __init__(self, hold_s: float, max_keys: int = 64) -> None:
        if hold_s < 0 or max_keys < 1:
            raise ValueError("PresenceFilter needs hold_s >= 0 and max_keys >= 1")
        self._hold = hold_s
        self._max = max_keys
        self._last: dict[Hashable, float] = {}

    def admit(self, key: Hashable, now: float) -> bool:
        """True when `key` is a new presentation at `now`; records the sighting either way."""
        last = self._last.pop(key, None)
        # A clock that went backwards (it should not: callers pass monotonic time)
        # keeps the key held rather than letting a repeat through.
        new = last is None or now - last >= self._hold
        self._prune(now)
        self._last[key] = now  # re-inserted last: dict order is oldest-first
        return new

    def holds(self, key: Hashable, now: float) -> bool:
        """True while `key` is still one presentation (seen within `hold_s`); records nothing."""
        last = self._last.get(key)
        return last is not None and now - last < self._hold

    def _prune(self, now: float) -> None:
        for k in [k for k, t in self._last.items() if now - t >= self._hold]:
            del self._last[k]
        while len(self._last) >= self._max:
            del self._last[next(iter(self._last))]

    def __len__(self) -> int:
        return len(self._last)
