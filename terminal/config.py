"""Typed settings of the terminal, read from TOML over embedded defaults.

This module owns the settings file: it reads it, checks every option's type,
range and choice, refuses an option it does not know (naming the section and
option), and hands out frozen dataclasses. It never opens a device, the ledger
or the network, and it never guesses: a broken file is a ``ConfigError`` that
says what is wrong and where, and nothing starts with it.

There is one way in: ``load(path)`` (or ``read`` then ``build``, for a
published file laid over the local one) gives one ``Settings``. Each other part
reads its own table from it with ``Settings.section(name)``, as strictly as
the core tables are read here: the screen (``terminal.display.settings``), the
service, camera and reader (``terminal.service.settings``), and the sync
(``sync_settings`` below: its table has no device to depend on).
"""

from __future__ import annotations

import datetime as dt
import itertools
import tomllib
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULTS_RESOURCE = "defaults.toml"
# The tables this module reads itself; every other table belongs to another module.
_CORE_TABLES = ("terminal", "canteen", "meals", "tokens", "caps", "lists", "clock")


class ConfigError(Exception):
    """The settings are unusable; the message names the file, section and option."""


@dataclass(frozen=True)
class MealWindow:
    """One meal service, in the canteen's local time; start inclusive, end exclusive."""

    name: str
    start: dt.time
    end: dt.time
    price_own_fen: int
    price_visitor_fen: int  # a unit not in the directory; the default of every visitor tier
    # The price by the diner's relationship to the canteen (protocol/agencies.py tiers);
    # a tier not set pays price_visitor_fen.
    tier_prices: tuple[tuple[str, int], ...] = ()

    def covers(self, local: dt.time) -> bool:
        return self.start <= local < self.end

    def price_for(self, tier: str) -> int:
        """The price of this meal for a diner of ``tier`` (protocol/agencies.py TIERS)."""
        if tier == "own":
            return self.price_own_fen
        for name, fen in self.tier_prices:
            if name == tier:
                return fen
        return self.price_visitor_fen


# The tiers a meal may price besides own and visitor, each as price_<tier>_fen.
TIER_PRICE_OPTIONS = ("same_level", "higher_level", "lower_level", "other_region")


@dataclass(frozen=True)
class Caps:
    qr_meals_per_day: int
    qr_fen_per_day: int
    card_meals_per_day: int
    card_fen_per_day: int
    unsynced_entries: int
    unsynced_fen: int
    sync_overdue_s: int
    stale_caps_percent: int


@dataclass(frozen=True)
class ListLimits:
    revocation_soft_s: int
    revocation_hard_s: int
    roster_hard_s: int


@dataclass(frozen=True)
class Settings:
    terminal_id: str
    state_dir: Path
    timezone: zoneinfo.ZoneInfo
    language: str
    canteen_id: str
    canteen_name: str
    units: frozenset[str]
    meals: tuple[MealWindow, ...]
    window_s: int
    skew_s: int
    caps: Caps
    lists: ListLimits
    clock_fault_tolerance_s: int
    clock_earliest_s: int
    source: str  # which file(s) the settings came from, for messages
    # Tables read by other modules (camera, reader, daemon, sync, display), already merged
    # over the defaults; each module reads its own with ``section()`` and the same strictness.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)
    # Unit code -> the unit's name, shown to staff instead of the bare code (optional:
    # neither tokens nor the roster carry names; county IT sets them with the settings).
    unit_names: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def section(self, name: str) -> Section:
        """Typed access to one of the other modules' tables; unknown options stay errors."""
        return Section(self.source, name, dict(self.extra.get(name, {})))


class Section:
    """Typed getters over one TOML table that remember which options were read.

    Call ``check_unused()`` after reading: an option nobody read is a typo.
    """

    def __init__(self, origin: str, name: str, data: dict[str, Any]) -> None:
        self.origin = origin
        self.name = name
        self.data = data
        self.used: set[str] = set()

    def _where(self, option: str) -> str:
        return f"{self.origin}: [{self.name}] {option}"

    def _raw(self, option: str) -> Any:
        if option not in self.data:
            raise ConfigError(f"{self._where(option)}: missing; add it to the settings file")
        self.used.add(option)
        return self.data[option]

    def get_str(self, option: str, choices: tuple[str, ...] | None = None) -> str:
        value = self._raw(option)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self._where(option)}: must be a non-empty text, got {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{self._where(option)}: must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def get_int(self, option: str, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._raw(option)
        # TOML booleans are not numbers, whatever Python thinks.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._where(option)}: must be a whole number, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(
                f"{self._where(option)}: must be at least {minimum}{upper}, got {value}"
            )
        return value

    def get_float(self, option: str, minimum: float = 0.0, maximum: float | None = None) -> float:
        value = self._raw(option)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._where(option)}: must be a number, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(
                f"{self._where(option)}: must be at least {minimum}{upper}, got {value}"
            )
        return float(value)

    def get_bool(self, option: str) -> bool:
        value = self._raw(option)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where(option)}: must be true or false, got {value!r}")
        return value

    def get_text(self, option: str) -> str:
        """A text that may be empty (get_str refuses empty texts)."""
        value = self._raw(option)
        if not isinstance(value, str):
            raise ConfigError(f"{self._where(option)}: must be a text, got {value!r}")
        return value

    def get_str_list(self, option: str) -> list[str]:
        value = self._raw(option)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self._where(option)}: must be a list of non-empty texts")
        return list(value)

    def get_name_table(self, option: str, limit: int = 64) -> dict[str, str]:
        """A table of non-empty texts by non-empty key, each at most ``limit`` characters."""
        value = self._raw(option)
        if not isinstance(value, dict):
            raise ConfigError(f'{self._where(option)}: must be a table such as {{ code = "name" }}')
        for key, name in value.items():
            if not isinstance(name, str) or not name.strip() or len(name) > limit:
                raise ConfigError(
                    f"{self._where(option)}: {key}: must be a name of 1 to {limit} characters"
                )
        return dict(value)

    def get_time(self, option: str) -> dt.time:
        value = self.get_str(option)
        try:
            hours, minutes = value.split(":")
            return dt.time(int(hours), int(minutes))
        except ValueError:
            raise ConfigError(
                f"{self._where(option)}: must be a local time as HH:MM, got {value!r}"
            ) from None

    def check_unused(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"{self.origin}: [{self.name}] {unknown[0]}: unknown option; "
                "check its spelling or remove it"
            )


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table; no setting nests deeply.
        raise ConfigError(
            f"{origin}: not valid settings: arrays or tables nested too deep; "
            "no option nests more than two levels"
        ) from None


def _merge(
    defaults: dict[str, Any], override: dict[str, Any], origin: str, meals_by_name: bool = False
) -> dict[str, Any]:
    merged: dict[str, Any] = {
        k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()
    }
    for key, value in override.items():
        if key not in defaults:
            raise ConfigError(
                f"{origin}: [{key}]: unknown section; check its spelling or remove it"
            )
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: [{key}] must be a table")
            merged[key].update(value)
        elif key == "meals":
            merged[key] = _lay_meals(defaults[key] if meals_by_name else [], value, origin)
        else:
            merged[key] = value
    return merged


def _lay_meals(below: Any, over: Any, origin: str) -> Any:
    """[[meals]] of a later file laid over those below it, by name and key by key.

    A meal of the same name takes the later file's options over the earlier ones; a new
    name adds a meal; ``off = true`` removes the meal of that name (a canteen that serves
    no breakfast). The first file that lists meals replaces the embedded demo meals
    (``below`` is then empty); the county's published files merge (docs/settlement.md
    "Prices"). Anything that is not a list of tables is left to the checks in _meals."""
    if not isinstance(below, list) or not isinstance(over, list):
        return over
    merged: list[Any] = [dict(m) if isinstance(m, dict) else m for m in below]
    names = [t.get("name") for t in over if isinstance(t, dict)]
    for table in over:
        if not isinstance(table, dict) or not isinstance(table.get("name"), str):
            merged.append(table)
            continue
        if names.count(table["name"]) > 1:
            merged.append(table)  # one file naming a meal twice: _meals says so
            continue
        table = dict(table)
        off = table.pop("off", False)
        if not isinstance(off, bool):
            raise ConfigError(f"{origin}: [[meals]] {table['name']}: off must be true or false")
        same = [m for m in merged if isinstance(m, dict) and m.get("name") == table["name"]]
        if off:
            merged = [m for m in merged if not any(m is s for s in same)]
        elif same:
            same[0].update(table)
        else:
            merged.append(table)
    return merged


def default_text() -> str:
    return resources.files("terminal").joinpath(DEFAULTS_RESOURCE).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Document:
    """The settings as read, before they are checked: TOML tables merged over the defaults.

    ``origin`` names the file(s) for messages; ``base`` is where a relative state_dir
    is taken from (the folder of the local file).
    """

    data: dict[str, Any] = field(hash=False, compare=False)
    origin: str
    base: Path
    # True once a file listed [[meals]]: later files then merge meals by name instead of
    # replacing the embedded demo meals.
    meals_listed: bool = False

    def over(self, text: str, where: str) -> Document:
        """This document with another settings text laid over it (a published file)."""
        layer = _read_toml(text, where)
        data = _merge(self.data, layer, where, meals_by_name=self.meals_listed)
        listed = self.meals_listed or "meals" in layer
        return Document(data, f"{self.origin} + {where}", self.base, listed)


def read(path: str | Path | None = None) -> Document:
    """The file at ``path`` over the embedded defaults, or the defaults alone; unchecked."""
    origin = "embedded defaults"
    data = _read_toml(default_text(), origin)
    if path is None:
        return Document(data, origin, Path.cwd())
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the settings file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: the settings file is not UTF-8 text") from None
    origin = str(file)
    layer = _read_toml(text, origin)
    return Document(_merge(data, layer, origin), origin, file.resolve().parent, "meals" in layer)


def load(path: str | Path | None = None) -> Settings:
    """Settings from ``path`` over the embedded defaults, or the defaults alone."""
    return build(read(path))


def load_layers(layers: Sequence[tuple[bytes, str]]) -> Settings:
    """Published settings files (bytes, a name for messages), lowest first, laid in that
    order over the embedded defaults as a terminal lays them (the county-wide file, then a
    canteen's own, which may name only what it changes). A ConfigError names the file."""
    doc = read(None)
    for data, origin in layers:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: not UTF-8 text") from None
        doc = doc.over(text, origin)
    return build(doc)


def build(doc: Document) -> Settings:
    """Check the core tables of ``doc``; the other tables are checked by their readers."""
    return _build(doc.data, doc.origin, doc.base)


def _build(data: dict[str, Any], origin: str, base: Path) -> Settings:
    term = Section(origin, "terminal", data["terminal"])
    canteen = Section(origin, "canteen", data["canteen"])
    tokens = Section(origin, "tokens", data["tokens"])
    caps_s = Section(origin, "caps", data["caps"])
    lists_s = Section(origin, "lists", data["lists"])
    clock = Section(origin, "clock", data["clock"])

    tz_name = term.get_str("timezone")
    try:
        timezone = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{origin}: [terminal] timezone: unknown time zone {tz_name!r}; "
            "use a name such as Asia/Shanghai (install the tzdata package if names are missing)"
        ) from None
    state_dir = Path(term.get_str("state_dir"))
    if not state_dir.is_absolute():
        state_dir = base / state_dir

    meals = _meals(data.get("meals"), origin)

    caps = Caps(
        qr_meals_per_day=caps_s.get_int("qr_meals_per_day", 1, 20),
        qr_fen_per_day=caps_s.get_int("qr_fen_per_day", 0, 10_000_000),
        card_meals_per_day=caps_s.get_int("card_meals_per_day", 1, 20),
        card_fen_per_day=caps_s.get_int("card_fen_per_day", 0, 10_000_000),
        unsynced_entries=caps_s.get_int("unsynced_entries", 1, 10_000_000),
        unsynced_fen=caps_s.get_int("unsynced_fen", 0, 1_000_000_000),
        sync_overdue_s=caps_s.get_int("sync_overdue_s", 60, 366 * 86400),
        stale_caps_percent=caps_s.get_int("stale_caps_percent", 0, 100),
    )
    lists = ListLimits(
        revocation_soft_s=lists_s.get_int("revocation_soft_s", 60),
        revocation_hard_s=lists_s.get_int("revocation_hard_s", 60),
        roster_hard_s=lists_s.get_int("roster_hard_s", 60),
    )
    if lists.revocation_soft_s > lists.revocation_hard_s:
        raise ConfigError(
            f"{origin}: [lists] revocation_soft_s: must not be above revocation_hard_s "
            f"({lists.revocation_soft_s} > {lists.revocation_hard_s})"
        )
    earliest_text = clock.get_str("earliest")
    try:
        earliest = dt.datetime.strptime(earliest_text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigError(
            f"{origin}: [clock] earliest: must be a date as YYYY-MM-DD, got {earliest_text!r}"
        ) from None

    settings = Settings(
        terminal_id=term.get_str("id"),
        state_dir=state_dir,
        timezone=timezone,
        language=term.get_str("language", ("zh", "en")),
        canteen_id=canteen.get_str("id"),
        canteen_name=canteen.get_str("name"),
        units=frozenset(canteen.get_str_list("units")),
        meals=meals,
        window_s=tokens.get_int("window_s", 1, 3600),
        skew_s=tokens.get_int("skew_s", 0, 3600),
        caps=caps,
        lists=lists,
        clock_fault_tolerance_s=clock.get_int("fault_tolerance_s", 0, 3600),
        clock_earliest_s=int(earliest.timestamp()),
        source=origin,
        extra={k: v for k, v in data.items() if k not in _CORE_TABLES and isinstance(v, dict)},
        unit_names=canteen.get_name_table("unit_names"),
    )
    for section in (term, canteen, tokens, caps_s, lists_s, clock):
        section.check_unused()
    return settings


def _meals(raw: Any, origin: str) -> tuple[MealWindow, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{origin}: [[meals]]: at least one meal window is needed")
    meals: list[MealWindow] = []
    for index, table in enumerate(raw, start=1):
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [[meals]] #{index}: must be a table")
        section = Section(origin, f"meals #{index}", table)
        meal = MealWindow(
            name=section.get_str("name"),
            start=section.get_time("start"),
            end=section.get_time("end"),
            price_own_fen=section.get_int("price_own_fen", 0, 1_000_000),
            price_visitor_fen=section.get_int("price_visitor_fen", 0, 1_000_000),
            tier_prices=tuple(
                (tier, section.get_int(f"price_{tier}_fen", 0, 1_000_000))
                for tier in TIER_PRICE_OPTIONS
                if f"price_{tier}_fen" in table
            ),
        )
        section.check_unused()
        if meal.start >= meal.end:
            raise ConfigError(
                f"{origin}: [meals #{index}] {meal.name}: start {meal.start:%H:%M} must be before "
                f"end {meal.end:%H:%M} (a window may not cross midnight; split it in two)"
            )
        meals.append(meal)
    names = [m.name for m in meals]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{origin}: [[meals]]: the name {name!r} is used twice")
    ordered = sorted(meals, key=lambda m: m.start)
    for before, after in itertools.pairwise(ordered):
        if after.start < before.end:
            raise ConfigError(
                f"{origin}: [[meals]]: {before.name} ({before.start:%H:%M}-{before.end:%H:%M}) "
                f"overlaps {after.name} ({after.start:%H:%M}-{after.end:%H:%M})"
            )
    return tuple(ordered)


# ---- the [sync] table ----


@dataclass(frozen=True)
class SyncSettings:
    """The [sync] section of the settings (terminal/defaults.toml documents each option)."""

    server: str = ""  # empty: the server stored at provisioning
    interval_s: float = 300
    jitter_s: float = 30
    deadline_s: float = 60
    connect_timeout_s: float = 10
    read_timeout_s: float = 20
    batch_entries: int = 500
    backoff_base_s: float = 5
    backoff_cap_s: float = 900
    offset_record_ms: int = 2000
    clock_tolerance_s: int = 30


def sync_settings(settings: Settings) -> SyncSettings:
    """The [sync] table of ``settings``, checked; an unknown option is an error that names it."""
    origin = settings.source
    s = settings.section("sync")
    result = SyncSettings(
        server=s.get_str("server") if s.data.get("server") else "",
        interval_s=s.get_int("interval_s", 1, 86_400),
        jitter_s=s.get_int("jitter_s", 0, 86_400),
        deadline_s=s.get_int("deadline_s", 1, 3_600),
        connect_timeout_s=s.get_int("connect_timeout_s", 1, 600),
        read_timeout_s=s.get_int("read_timeout_s", 1, 600),
        batch_entries=s.get_int("batch_entries", 1, 2_000),
        backoff_base_s=s.get_int("backoff_base_s", 1, 3_600),
        backoff_cap_s=s.get_int("backoff_cap_s", 1, 86_400),
        offset_record_ms=s.get_int("offset_record_ms", 1, 3_600_000),
        clock_tolerance_s=s.get_int("clock_tolerance_s", 1, 86_400),
    )
    s.used.add("server")
    s.check_unused()
    if result.server and urlsplit(result.server).scheme != "https":
        raise ConfigError(f"{origin}: [sync] server: must be an https:// address")
    if result.jitter_s * 2 > result.interval_s:
        raise ConfigError(
            f"{origin}: [sync] jitter_s: must be at most half of interval_s (a sync starts up "
            "to jitter_s before its interval is over)"
        )
    if result.backoff_base_s > result.backoff_cap_s:
        raise ConfigError(f"{origin}: [sync] backoff_base_s: must not be above backoff_cap_s")
    return result
