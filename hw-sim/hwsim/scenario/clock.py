"""The lunch-rush scenario's clock: simulated Unix time, and the lunch's local times.

This module owns the one clock of a run: ``SimClock``, Unix time that runs
``speed`` times faster than real time and is the wall clock of the terminal
daemon, of the county server and of every phone; where it starts
(``lunch_origin_ms``); and the lunch's local times of day. It never sleeps on
its own account except in ``wait_until``, and it reads nothing but the
computer's clocks.

Clocks and signed updates: every publication is signed at the simulated time
(``SimClock.now_s``), the clock the terminal counts its list ages on, so a list
published at 12:40 simulated is fresh at 12:40 on the terminal. The expiry of
the TUF metadata is checked by python-tuf against the real clock of this
computer. Signed at simulated time s, a role expires at s + its validity (the
timestamp: one day), and the simulated clock never runs behind the real one
(``lunch_origin_ms``: it starts at least a minute ahead), so metadata can only
look *more* valid than it is, never expired. It runs ahead by at most a day and
a minute plus (speed - 1) x the real length of the run (about 1.1 days for a
full run at 30x); TUF has no signing time to refuse from the future, and the
county server's refresher, which re-signs on the real clock, finds more than
half of the timestamp's day left throughout and re-signs nothing.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import zoneinfo

TIMEZONE = "Asia/Shanghai"
ORIGIN = dt.time(11, 25)  # the simulated clock starts here: the terminal opens before lunch
LUNCH_OPENS = dt.time(11, 30)
LUNCH_CLOSES = dt.time(13, 30)


class SimClock:
    """Unix time that runs ``speed`` times faster than real time from ``origin_ms``."""

    def __init__(self, origin_ms: int, speed: float) -> None:
        self.origin_ms = origin_ms
        self.speed = speed
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def now_ms(self) -> int:
        return self.origin_ms + int((time.monotonic() - self._mono0) * self.speed * 1000)

    def now_s(self) -> int:
        return self.now_ms() // 1000

    def of_real(self, unix_s: float) -> int:
        """The simulated ms at a real ``time.time()`` stamp (a camera frame, an event)."""
        return self.origin_ms + int((unix_s - self._wall0) * self.speed * 1000)

    def wait_until(self, sim_ms: int, stop: threading.Event | None = None) -> None:
        real = (sim_ms - self.now_ms()) / (self.speed * 1000)
        if real > 0:
            (stop or threading.Event()).wait(real)


def lunch_origin_ms(now_s: float, tz: str = TIMEZONE) -> int:
    """Unix ms of the next ORIGIN local time at least a minute after ``now_s``.

    The simulated clock never runs behind the real one: certificates, and any
    real time the terminal has seen, stay in its past.
    """
    zone = zoneinfo.ZoneInfo(tz)
    local = dt.datetime.fromtimestamp(now_s + 60, zone)
    origin = local.replace(hour=ORIGIN.hour, minute=ORIGIN.minute, second=0, microsecond=0)
    if origin <= local:
        origin += dt.timedelta(days=1)
    return int(origin.timestamp()) * 1000


def local_time(sim_ms: int, fmt: str = "%H:%M:%S") -> str:
    """The canteen's local time of day at Unix ms ``sim_ms``, for the progress and the report."""
    return dt.datetime.fromtimestamp(sim_ms / 1000, zoneinfo.ZoneInfo(TIMEZONE)).strftime(fmt)


def seconds_between(a: dt.time, b: dt.time) -> int:
    """Seconds from time of day ``a`` to ``b`` (the same day)."""
    return (b.hour - a.hour) * 3600 + (b.minute - a.minute) * 60 + (b.second - a.second)
