"""The terminal's one trusted time: the wall clock, checked against the county and the ledger.

This module owns ``TrustedClock``: the floor (the newest ledger time, raised by
every entry and by the county's signed times), the clock-fault check (a wall
clock behind the floor beyond the tolerance), and the wall clock's standing
against the county's signed time. Every part that needs "the time now" asks
this object, so the fault check and the county's verdict on the wall clock
apply everywhere. It is pure: no I/O, no clock of its own; the wall and
monotonic times are arguments (Unix ms and monotonic ms).
"""

from __future__ import annotations


class TrustedClock:
    """The terminal's time: the wall clock, checked against the county and the ledger.

    A Pi has no real-time clock and may boot with a clock in the past; a wall
    clock behind the floor is a clock fault, recorded once per episode, and the
    floor is used instead. The floor rises with every ledger entry and with
    signed times from the county server.

    Each sync also judges the wall clock against the county's signed time
    (``take_county_time``). Beyond the tolerance (``[sync] clock_tolerance_s``)
    the wall clock is not trusted, fast or slow, and the time is the county's
    signed time carried on by the monotonic clock, which a wrong or stepping
    wall clock cannot move. Without such a time in this run (after a restart)
    nothing is sold until the next sync. docs/sync-protocol.md, "Terminal
    behaviour", says why.
    """

    def __init__(self, floor_ms: int, tolerance_ms: int, earliest_ms: int) -> None:
        self.floor_ms = floor_ms
        self.tolerance_ms = tolerance_ms
        self.earliest_ms = earliest_ms
        self.in_fault = False
        # Wall clock minus county time at the last check, when beyond the tolerance;
        # None while within it (or never checked).
        self.wall_ahead_ms: int | None = None
        # (county ms, monotonic ms, wall ms) at the last verified county time of this run.
        self._county: tuple[int, int | None, int] | None = None

    def county_now(self, wall_ms: int, mono_ms: int | None = None) -> int | None:
        """The county's time now, from its last signed time, or None without one this run.

        Carried on by the monotonic clock; a caller without one (a staff action, the
        closing checkpoint) gets the wall clock's elapsed time, which is the same
        unless the wall clock stepped since.
        """
        if self._county is None:
            return None
        server_ms, mono_at, wall_at = self._county
        if mono_ms is not None and mono_at is not None:
            elapsed = mono_ms - mono_at
        else:
            elapsed = wall_ms - wall_at
        return server_ms + max(0, elapsed)

    def wall_behind(self, wall_ms: int) -> bool:
        """True when ``wall_ms`` is behind the floor by more than the tolerance (a clock fault)."""
        return wall_ms + self.tolerance_ms < self.floor_ms

    def plausible(self, ms: int) -> bool:
        """True when ``ms`` is not before the earliest plausible date ([clock] earliest)."""
        return ms >= self.earliest_ms

    def current(self, wall_ms: int, mono_ms: int | None = None) -> int:
        """The trusted time now, without starting a clock fault (screens, status)."""
        if self.wall_ahead_ms is not None:
            # The county showed the wall clock wrong: it is not read at all. With no county
            # time this run the floor stands still, and sells() refuses.
            county = self.county_now(wall_ms, mono_ms)
            return self.floor_ms if county is None else max(county, self.floor_ms)
        # A wall clock behind the floor (a fault or not) gives the floor.
        return max(wall_ms, self.floor_ms)

    def read(self, wall_ms: int, mono_ms: int | None = None) -> tuple[int, bool]:
        """(trusted ms, True when this reading starts a new clock fault)."""
        now_ms = self.current(wall_ms, mono_ms)
        if self.wall_ahead_ms is not None:
            return now_ms, False
        if self.wall_behind(wall_ms):
            started = not self.in_fault
            self.in_fault = True
            return now_ms, started
        self.in_fault = False
        return now_ms, False

    def raise_floor(self, ms: int) -> None:
        self.floor_ms = max(self.floor_ms, ms)

    def take_county_time(
        self, server_ms: int, mono_ms: int | None, wall_ms: int, tolerance_ms: int
    ) -> tuple[bool, int | None]:
        """Take a verified county time, received at ``mono_ms`` / ``wall_ms``.

        Returns (the wall clock's standing changed, the floor before it was lowered
        or None). A floor more than the tolerance above the county's time was
        raised by a wall clock that ran ahead: the county's signed time is the
        better witness, so the floor comes down to it.
        """
        ahead = wall_ms - server_ms
        was_off = self.wall_ahead_ms is not None
        self.wall_ahead_ms = ahead if abs(ahead) > tolerance_ms else None
        self._county = (server_ms, mono_ms, wall_ms)
        lowered: int | None = None
        if self.floor_ms > server_ms + tolerance_ms:
            lowered, self.floor_ms = self.floor_ms, server_ms
            self.in_fault = False
        else:
            self.raise_floor(server_ms)
        return was_off != (self.wall_ahead_ms is not None), lowered

    def restore(self, wall_ahead_ms: int | None, floor_ms: int | None = None) -> None:
        """At start: the standing the last recorded county time gave the wall clock, and
        the floor from that entry on (a floor the county lowered stays lowered)."""
        self.wall_ahead_ms = wall_ahead_ms
        if floor_ms is not None:
            self.floor_ms = floor_ms

    def trusted(self, now_ms: int) -> bool:
        """True when the time is plausible and the wall clock agrees with the county's."""
        return self.plausible(now_ms) and self.wall_ahead_ms is None

    def sells(self, now_ms: int) -> bool:
        """True when a sale may be decided at ``now_ms``: a plausible time, and either a
        wall clock that agrees with the county or a county time received this run."""
        return self.plausible(now_ms) and (self.wall_ahead_ms is None or self._county is not None)
