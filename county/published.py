"""What county IT published, as the intake checks evidence against it: meal windows and cards.

A terminal writes every field of its own entries, the meal's name and the card's
holder included. What the county published to the terminals says what those
fields must be: the settings in force for a canteen give its meal windows, so a
sale's meal must be the one served at the sale's time (for a QR sale that time
is tied to the phone's signature, so a terminal cannot relabel a breakfast code
"lunch"); the roster says whose a card is, so a card sale must name the card's
holder. This module reads the county's own signed repository (DATA/updates),
once per publication, and answers those two questions; it never decides what is
evidence (county/evidence.py does) and never writes anything.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from protocol.layout import ROSTER_TARGET, settings_target
from protocol.lists import TrustError, parse_roster_csv
from terminal import config
from terminal.core import policy

log = logging.getLogger("canteen.county.published")

# A sale's time and its meal window may disagree by this much at a window's edge: the
# terminal judged the window at its own time, the county at the entry's.
EDGE_S = 600


@dataclass
class _View:
    stamp: tuple[int, int] | None
    settings: dict[str | None, config.Settings | None] = field(default_factory=dict)
    roster: dict[bytes, str] | None = None
    roster_read: bool = False


class Published:
    """The repository in ``data``/updates as the intake needs it; safe from any thread."""

    def __init__(self, data: str | Path) -> None:
        self.data = Path(data)
        self._lock = threading.Lock()
        self._view = _View(None)

    def _current(self) -> _View:
        from county.updates import RepoPaths

        stamp_file = RepoPaths(self.data).metadata / "timestamp.json"
        try:
            st = stamp_file.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._view.stamp:
            self._view = _View(stamp)  # a new publication: read again as asked
        return self._view

    def _target_file(self, path: str) -> Path | None:
        from county.updates import CountyRepository, RepoPaths, UpdatesError

        paths = RepoPaths(self.data)
        if not (paths.metadata / "timestamp.json").is_file():
            return None  # this county publishes nothing: nothing to judge by
        try:
            with CountyRepository(self.data) as repo:
                info = repo.target_info(path)
        except (UpdatesError, OSError, ValueError) as exc:
            log.warning("published %s cannot be read: %s", path, exc)
            return None
        if info is None:
            return None
        directory, _, base = path.rpartition("/")
        return paths.targets / directory / f"{info.hashes['sha256']}.{base}"

    def _settings(self, view: _View, canteen: str) -> config.Settings | None:
        if canteen not in view.settings:
            found: config.Settings | None = None
            for target in (settings_target(canteen), settings_target(None)):
                file = self._target_file(target)
                if file is None:
                    continue
                try:
                    doc = tomllib.loads(file.read_text(encoding="utf-8"))
                    # Only windows the county published are known here; a terminal's
                    # local file may set others, which the county cannot judge by.
                    found = config.load(file) if "meals" in doc else None
                except (OSError, ValueError, RecursionError, config.ConfigError) as exc:
                    log.warning("published settings %s cannot be read: %s", file, exc)
                break  # a canteen's own file wins over the file for all
            view.settings[canteen] = found
        return view.settings[canteen]

    def meals_near(self, canteen: str, at_s: int) -> set[tuple[str, str]] | None:
        """(day, meal) the canteen serves within EDGE_S of ``at_s``; None when the county
        published no meal windows for it."""
        with self._lock:
            settings = self._settings(self._current(), canteen)
        if settings is None:
            return None
        found = set()
        for s in (at_s - EDGE_S, at_s, at_s + EDGE_S):
            service = policy.service_at(settings, s)
            if service is not None:
                found.add((service.day, service.meal.name))
        return found

    def meal_windows(self, canteen: str) -> tuple[config.MealWindow, ...] | None:
        """The meal windows the county published for ``canteen`` (its own settings file
        when there is one, else the file for all canteens), in the file's order; None when
        the county published no meal windows for it (as meals_near)."""
        with self._lock:
            settings = self._settings(self._current(), canteen)
        return None if settings is None else settings.meals

    def card_holder(self, uid: bytes) -> tuple[bool, str | None]:
        """(a roster is published, the cadre it gives this card to or None)."""
        with self._lock:
            view = self._current()
            if not view.roster_read:
                view.roster_read = True
                file = self._target_file(ROSTER_TARGET)
                if file is not None:
                    try:
                        cards = parse_roster_csv(file.read_text(encoding="utf-8"))
                        view.roster = {c.uid: c.cadre for c in cards}
                    except (OSError, ValueError, TrustError) as exc:
                        log.warning("published roster %s cannot be read: %s", file, exc)
            roster = view.roster
        if roster is None:
            return False, None
        return True, roster.get(uid)


__all__ = ["EDGE_S", "Published"]
