"""``hw-sim county history``: two years of a county, with planted batches and anomalies.

This module owns generating a county's past for the console and its finders to be
tested and benched on: an agency directory at four levels, canteens run by agencies,
terminals registered with the county (a ledger key pinned for each), cadres, and
months of daily meals written as real ledger entries (hash-chained per terminal as a
terminal writes them, protocol/chain.py) into either backend (``--data DIR`` for
SQLite, ``--database URL`` for PostgreSQL). The same ``--seed`` gives the same rows
and the same manifest.

What is planted, and only that. Reception batches (at least ``min_people`` cadres
of one visiting agency, not the canteen's operator, at one canteen within
``window_min`` minutes) occur only where planted; ordinary visitors are spaced so
that no batch forms by chance. No cadre eats at two canteens on one local day
unless planted (``multi_canteen_day``); no accepted sale falls outside every meal
window of terminal/defaults.toml unless planted (``off_hours``); no sale falls on a
public holiday unless planted (``holiday``). Repeated batches (``repeat_batches``:
the same agency at the same canteen, 3 within a month) are made of planted batches,
and each of them is also listed in ``batches``.

The manifest (``--manifest FILE``), JSON, exactly what was planted::

    {"seed": int, "months": int, "start": "YYYY-MM-DD", "timezone": "Asia/Shanghai",
     "min_people": 4, "window_min": 15,
     "batches": [{"canteen": str, "unit": str, "start_ms": int, "end_ms": int,
                  "people": int, "cadres": [str, ...]}],
     "anomalies": [
        {"kind": "repeat_batches", "canteen": str, "unit": str, "starts_ms": [int, ...]},
        {"kind": "multi_canteen_day", "cadre": str, "day": "YYYY-MM-DD",
         "canteens": [str, ...]},
        {"kind": "off_hours", "terminal": str, "seq": int, "cadre": str},
        {"kind": "holiday", "terminal": str, "seq": int, "cadre": str,
         "day": "YYYY-MM-DD"}],
     "holidays": ["YYYY-MM-DD", ...]}

Meanings. ``canteen`` is the canteen id (entries.canteen), ``unit`` the agency id
the sale was charged to (entries.unit), ``cadres`` the entries' cadre ids, sorted.
A batch's ``start_ms``/``end_ms`` are the signed times (entries.at_ms) of its first
and last accepted sale; ``people`` is the number of distinct cadres (= len(cadres)).
``starts_ms`` of a repeat are the ``start_ms`` of its batches, in order. ``day`` is
the local date (Asia/Shanghai). ``terminal``/``seq`` name one accepted sale entry.
Only accepted sales (kind 'sale', verdict 'accept') count for every kind; refused
sales are never part of a batch or an anomaly. ``holidays`` are the public holidays
of the generated period; they are also written, one date a line, to
``holidays.txt`` in the county data dir (with ``--data``) and wherever
``--holidays FILE`` says.

Margins the finders may rely on. Outside planted batches, no 4 sale entries (accepted or
refused) of one agency other than the canteen's operator fall within any 30 minutes at
one canteen; a (canteen, agency, day) with a planted batch has no other sale of that
agency there that day; two batches of one agency at one canteen are at least 90 days
apart unless they form a ``repeat_batches`` anomaly (3 batches within 30 days); a
planted batch spans at most 11 minutes. Refused sales occur only in meal windows, at
the cadre's only canteen of the day.

The signed codes. Each accepted QR sale carries a real phone code (the cadre's
credential from the history's issuer, whose key goes into issuer_keys, presented at the
sale's time with the wallet's counter) unless ``--placeholder-codes`` (a fixed text, as
the county-scale bench writes): signing costs about 0.16 ms a code, some ten minutes
for millions of sales on one core. Entries are loaded by hwsim/bulkload.py, not
uploaded: the evidence table is not filled (no conflicts are planted).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hwsim.agencies import MAX_COUNTIES, OFFICE_SERVICES, UNLISTED_UNITS, make_directory
from protocol import issue
from protocol.agencies import COUNTY, TIERS, TOWNSHIP, Canteen, Directory
from protocol.chain import (
    GENESIS,
    GENESIS_PREV_HASH,
    SALE,
    canonical_json,
    checkpoint_message,
    entry_hash,
)

TIMEZONE = "Asia/Shanghai"
UTC8 = dt.timezone(dt.timedelta(hours=8))
MIN_PEOPLE = 4
WINDOW_MIN = 15
ISS = "gov"  # the history's issuing platform
HOLIDAYS_FILE = "holidays.txt"
DAY_MS = 86_400_000
MIN_MS = 60_000
# The terminal's default meal windows (terminal/defaults.toml), local minutes of the day,
# and the prices the county's published settings give each tier (docs/prices.md); a
# tier a meal leaves unset pays the visitor price.
MEALS: dict[str, tuple[int, int]] = {
    "breakfast": (7 * 60, 9 * 60),
    "lunch": (11 * 60 + 30, 13 * 60 + 30),
    "dinner": (17 * 60 + 30, 19 * 60 + 30),
}
PRICES: dict[str, dict[str, int]] = {
    "breakfast": {"own": 300, "visitor": 500},
    "lunch": {
        "own": 1000,
        "same_level": 1200,
        "higher_level": 1300,
        "lower_level": 1100,
        "other_region": 1400,
        "visitor": 1500,
    },
    "dinner": {
        "own": 800,
        "same_level": 900,
        "higher_level": 1000,
        "lower_level": 850,
        "other_region": 1100,
        "visitor": 1200,
    },
    # An off-hours meal: a canteen that served outside every window of the defaults.
    "overtime": {"own": 800, "visitor": 1200},
}
# Share of a home cadre's working days with each meal; weekends, summer and the weeks
# around the Spring Festival lower them.
EAT = {"breakfast": 0.35, "lunch": 0.8, "dinner": 0.25}
WEEKEND = 0.12
SUMMER = 0.8  # 15 July to 31 August
FESTIVAL_DIP = 0.5  # the week before and after the Spring Festival holiday
VISIT_DAY = 0.03  # a home cadre lunches at another canteen of the county
OUTSIDER_DAY = 0.06  # a cadre of an agency without a canteen eats at one
REFUSED = 0.015  # an operator's cadre tries a second lunch: already_served
QR_SHARE = 0.75
# Reception batches a month, per canteen, in the first year; the second year has the
# Rucheng ratio of it (45 batches over three months, then 20).
BATCHES_PER_CANTEEN_MONTH = 2.5
SECOND_YEAR_BATCHES = 20 / 45
# Townships whose work-meal spending falls in the second year (the Anren figure).
FALLING = 0.74
PAIR_GAP_DAYS = 90
SPACING_MS = 30 * MIN_MS  # no 4 sales of a visiting agency at a canteen within this
PLACEHOLDER_CODE = "CT1:" + "X" * 380

# Public holidays (the State Council's announcements; Spring Festival by the lunar new year
# for years not listed). Make-up working weekends are not modelled.
_KNOWN_HOLIDAYS: dict[int, tuple[tuple[str, int], ...]] = {
    2024: (("01-01", 1), ("02-10", 8), ("04-04", 3), ("05-01", 5), ("06-10", 1),
           ("09-15", 3), ("10-01", 7)),
    2025: (("01-01", 1), ("01-28", 8), ("04-04", 3), ("05-01", 5), ("05-31", 3),
           ("10-01", 8)),
    2026: (("01-01", 3), ("02-15", 9), ("04-04", 3), ("05-01", 5), ("06-19", 3),
           ("09-25", 3), ("10-01", 7)),
}  # fmt: skip
_LUNAR_NEW_YEAR = {
    2020: "01-25", 2021: "02-12", 2022: "02-01", 2023: "01-22", 2027: "02-06",
    2028: "01-26", 2029: "02-13", 2030: "02-03", 2031: "01-23", 2032: "02-11",
}  # fmt: skip
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐"
_SURNAMES += "许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志文红玉兰峰斌辉鹏海波宁"


class HistoryError(Exception):
    """Bad options, or a database the history cannot be written into; the message says why."""


def holidays_of(year: int) -> list[dt.date]:
    """The public holidays of ``year``."""
    spans = _KNOWN_HOLIDAYS.get(year)
    if spans is None:
        lny = _LUNAR_NEW_YEAR.get(year)
        spans = (("01-01", 1), ("04-05", 1), ("05-01", 5), ("10-01", 7))
        if lny is not None:
            first = dt.date.fromisoformat(f"{year}-{lny}") - dt.timedelta(days=1)
            spans += ((first.strftime("%m-%d"), 8),)
    out: list[dt.date] = []
    for start, days in spans:
        first = dt.date.fromisoformat(f"{year}-{start}")
        out.extend(first + dt.timedelta(days=k) for k in range(days))
    return sorted(out)


@dataclasses.dataclass(frozen=True)
class Options:
    seed: int = 16
    months: int = 24
    start: dt.date = dt.date(2024, 12, 1)
    canteens: int = 6
    agencies: int = 60
    cadres: int | None = None  # default 50 a canteen
    placeholder_codes: bool = False

    def check(self) -> None:
        if not 1 <= self.months <= 120:
            raise HistoryError(f"--months must be 1 to 120, not {self.months}")
        if not 1 <= self.canteens <= 2000:
            raise HistoryError(f"--canteens must be 1 to 2000, not {self.canteens}")
        if not 40 <= self.agencies <= 700:
            raise HistoryError(f"--agencies must be 40 to 700, not {self.agencies}")
        if self.cadres is not None and not 20 <= self.cadres <= 500_000:
            raise HistoryError(f"--cadres must be 20 to 500000, not {self.cadres}")

    @property
    def cadre_count(self) -> int:
        return self.cadres if self.cadres is not None else 50 * self.canteens


@dataclasses.dataclass
class Cadre:
    no: int
    unit: str
    name: str
    qr: bool
    cadre: str  # as entries name it
    credential: str
    home: int | None  # the canteen index, None for an agency without a canteen
    falling: bool = False  # of a township whose spending falls in the second year
    wallet: issue.Wallet | None = None
    ctr: int = 0


@dataclasses.dataclass
class Sale:
    """One sale entry to write (accepted unless ``reason``)."""

    at_ms: int
    canteen: int
    cadre: int
    meal: str
    reason: str | None = None
    tag: tuple[str, int] | None = None  # ("off_hours"|"holiday", anomaly index)
    terminal: int = -1


@dataclasses.dataclass
class County:
    """What the history is made of, before any entry."""

    options: Options
    directory: Directory
    canteens: list[Canteen]
    terminals: list[list[str]]  # per canteen
    cadres: list[Cadre]
    days: list[dt.date]
    holidays: set[dt.date]
    start_ms: int


_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()
_UTC8_MS = 8 * 3_600_000


def local_ms(day: dt.date, minute: float) -> int:
    """Unix ms of ``minute`` past local midnight of ``day`` (UTC+8, no summer time)."""
    return (day.toordinal() - _EPOCH_DAY) * DAY_MS - _UTC8_MS + int(minute * MIN_MS)


def add_months(day: dt.date, months: int) -> dt.date:
    y, m = divmod(day.month - 1 + months, 12)
    return (
        dt.date(day.year + y, m + 1, 1)
        if day.day > 28
        else day.replace(year=day.year + y, month=m + 1)
    )


def _name(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))


def _directory(seed: int, agencies: int) -> Directory:
    """The generated directory (hw-sim agencies) whose size is nearest ``agencies``."""
    best: Directory | None = None
    for counties in range(2, MAX_COUNTIES + 1):
        d = make_directory(f"history-{seed}", counties).directory
        if best is None or abs(len(d.agencies) - agencies) < abs(len(best.agencies) - agencies):
            best = d
        if len(d.agencies) >= agencies:
            break
    assert best is not None
    return best


def make_county(o: Options) -> County:
    """The directory, canteens, terminals, cadres and calendar of the history."""
    o.check()
    rng = random.Random(f"history/{o.seed}/county")
    d = _directory(o.seed, o.agencies)
    home = next(
        a for a in d.agencies.values() if a.level == COUNTY and a.parent and "-" not in a.code
    )
    bureaus = [a.code for a in d.agencies.values() if a.parent == home.code and a.level == COUNTY]
    towns = [a.code for a in d.agencies.values() if a.parent == home.code and a.level == TOWNSHIP]
    office = f"{home.code}-{OFFICE_SERVICES}"
    operators = [office, *towns, *[b for b in bureaus if b != office]]
    canteens: list[Canteen] = []
    for k in range(o.canteens):
        op = operators[k % len(operators)]
        round_no = k // len(operators)
        base = f"c-{op}" + (f"-{round_no + 1}" if round_no else "")
        if op == office:
            name = f"{home.name.removesuffix('人民政府')}机关食堂"
        else:
            name = f"{d.agencies[op].name.removesuffix('人民政府')}食堂"
        canteens.append(Canteen(base, name + (f"{round_no + 1}号" if round_no else ""), op))
    full = Directory(d.agencies.values(), canteens)
    # Cadres: 85 % eat at their agency's canteen (the county's office canteen is three
    # times a township's), the rest belong to agencies without a canteen here, at least
    # eight each, and to two units no directory lists.
    n = o.cadre_count
    weights = [3.0 if c.operator == office else 1.0 for c in canteens]
    at_home = int(n * 0.85)
    homes = rng.choices(range(len(canteens)), weights, k=at_home)
    homes.sort()
    ops = {c.operator for c in canteens}
    outsiders = [a for a in d.agencies if a not in ops]
    rng.shuffle(outsiders)
    groups = max(1, min(len(outsiders), (n - at_home) // 8))
    outside_units = [*sorted(outsiders[: max(0, groups - 1)]), UNLISTED_UNITS[0]]
    falling_towns = set(towns[::2])
    cadres: list[Cadre] = []
    for i in range(n):
        if i < at_home:
            k = homes[i]
            unit, where = canteens[k].operator, k
        else:
            unit, where = outside_units[(i - at_home) % len(outside_units)], None
        qr = rng.random() < QR_SHARE
        cadre_id = f"{ISS}/c{i:06d}" if qr else f"card/c{i:06d}"
        if qr:
            cti = issue.cti_from_seed(f"history/{o.seed}/cti/{i}")
            credential = f"qr/{ISS}/{cti.hex()}"
        else:
            credential = f"card/{rng.getrandbits(40):010x}"
        cadres.append(
            Cadre(i, unit, _name(rng), qr, cadre_id, credential, where, unit in falling_towns)
        )
    first = o.start
    end = add_months(first, o.months)
    days = [first + dt.timedelta(days=k) for k in range((end - first).days)]
    holidays = {h for y in range(first.year, end.year + 1) for h in holidays_of(y)}
    holidays = {h for h in holidays if first <= h < end}
    terminals = [
        [f"{c.canteen}-t{j + 1}" for j in range(1 + (homes.count(k) > 120))]
        for k, c in enumerate(canteens)
    ]
    return County(o, full, canteens, terminals, cadres, days, holidays, local_ms(first, 0))


# --- what is planted ---------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """The planted batches and anomalies, and what ordinary meals must keep clear of."""

    batches: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    anomalies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sales: dict[int, list[Sale]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    reserved: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (cadre, day)
    blocked: set[tuple[int, str, int]] = dataclasses.field(
        default_factory=set
    )  # (canteen, unit, day)
    pair_days: dict[tuple[int, str], list[int]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )


def _workdays(county: County, lo: int, hi: int) -> list[int]:
    """Day indexes in [lo, hi) that are weekdays and no holiday."""
    return [
        i
        for i in range(max(0, lo), min(hi, len(county.days)))
        if county.days[i].weekday() < 5 and county.days[i] not in county.holidays
    ]


def plan_history(county: County) -> Plan:
    """Every planted item, drawn from the seed."""
    o = county.options
    rng = random.Random(f"history/{o.seed}/plan")
    plan = Plan()
    by_unit: dict[str, list[int]] = defaultdict(list)
    for one in county.cadres:
        by_unit[one.unit].append(one.no)
    big = sorted(u for u, members in by_unit.items() if len(members) >= MIN_PEOPLE)
    n_days = len(county.days)

    def free_pair(k: int, unit: str, days: Sequence[int]) -> bool:
        return all(abs(x - y) >= PAIR_GAP_DAYS for x in plan.pair_days[(k, unit)] for y in days)

    def batch(k: int, unit: str, day: int) -> dict[str, Any] | None:
        members = [c for c in by_unit[unit] if (c, day) not in plan.reserved]
        if len(members) < MIN_PEOPLE or (k, unit, day) in plan.blocked:
            return None
        people = min(len(members), MIN_PEOPLE + int(rng.expovariate(1 / 6)), 40)
        chosen = sorted(rng.sample(members, people))
        meal = "lunch" if rng.random() < 0.8 else "dinner"
        lo, hi = MEALS[meal]
        begin = rng.uniform(lo + 5, hi - 25)
        offsets = sorted(rng.uniform(0, 10) for _ in chosen)
        offsets[0], offsets[-1] = 0.0, max(offsets[-1], 1.0)
        times = [local_ms(county.days[day], begin + off) for off in offsets]
        for t in range(1, len(times)):  # distinct times, one sale after another
            times[t] = max(times[t], times[t - 1] + 1000)
        rng.shuffle(chosen)
        for c, at in zip(chosen, times, strict=True):
            plan.sales[day].append(Sale(at, k, c, meal))
            plan.reserved.add((c, day))
        plan.blocked.add((k, unit, day))
        plan.pair_days[(k, unit)].append(day)
        found = {
            "canteen": county.canteens[k].canteen,
            "unit": unit,
            "start_ms": times[0],
            "end_ms": times[-1],
            "people": len(chosen),
            "cadres": sorted(county.cadres[c].cadre for c in chosen),
        }
        plan.batches.append(found)
        return found

    def visitors(k: int) -> list[str]:
        return [u for u in big if u != county.canteens[k].operator]

    # Repeated batches first: one agency at one canteen three times within a month.
    for _ in range(1 + o.months // 8):
        for _try in range(50):
            first = rng.randrange(max(1, n_days - 30))
            days = _workdays(county, first, first + 30)
            if len(days) < 15:
                continue
            picked = [days[0], days[len(days) // 2], days[-1]]
            k = rng.randrange(len(county.canteens))
            choices = [u for u in visitors(k) if free_pair(k, u, picked)]
            if not choices:
                continue
            unit = rng.choice(choices)
            made = [batch(k, unit, day) for day in picked]
            if any(m is None for m in made):
                continue
            plan.anomalies.append(
                {
                    "kind": "repeat_batches",
                    "canteen": county.canteens[k].canteen,
                    "unit": unit,
                    "starts_ms": [m["start_ms"] for m in made if m is not None],
                }
            )
            break
    # Batches month by month. From the 13th month on, the same month a year before gave
    # the count: 20/45 of what was planted then (the Rucheng figure), whatever capped it
    # (a small county runs out of agency and canteen pairs 90 days apart).
    month_start = 0
    planted: list[int] = []
    for m in range(o.months):
        month_end = (add_months(o.start, m + 1) - o.start).days
        if m < 12:
            rate = BATCHES_PER_CANTEEN_MONTH * len(county.canteens)
        else:
            rate = planted[m - 12] * SECOND_YEAR_BATCHES
        want = int(rate) + (rng.random() < rate - int(rate))
        days = _workdays(county, month_start, month_end)
        count = 0
        for _ in range(want):
            for _try in range(30):
                if not days:
                    break
                day = rng.choice(days)
                k = rng.randrange(len(county.canteens))
                choices = [u for u in visitors(k) if free_pair(k, u, [day])]
                if choices and batch(k, rng.choice(choices), day) is not None:
                    count += 1
                    break
        planted.append(count)
        month_start = month_end
    homed = [c.no for c in county.cadres if c.home is not None]
    work = _workdays(county, 0, n_days)

    def free_day(c: int, day: int, canteens: Sequence[int]) -> bool:
        unit = county.cadres[c].unit
        return (c, day) not in plan.reserved and all(
            (k, unit, day) not in plan.blocked for k in canteens
        )

    # A cadre with meals at two or three canteens on one day.
    for _ in range(2 + o.months // 4):
        if len(county.canteens) < 2:
            break
        for _try in range(50):
            c, day = rng.choice(homed), rng.choice(work)
            home = county.cadres[c].home
            assert home is not None
            others = [k for k in range(len(county.canteens)) if k != home]
            where = [home, *rng.sample(others, min(len(others), rng.choice((1, 1, 2))))]
            if not free_day(c, day, where):
                continue
            meals = ["breakfast", "lunch", "dinner"][-len(where) :]
            for k, meal in zip(where, meals, strict=True):
                lo, hi = MEALS[meal]
                plan.sales[day].append(
                    Sale(local_ms(county.days[day], rng.uniform(lo, hi - 1)), k, c, meal)
                )
            plan.reserved.add((c, day))
            plan.anomalies.append(
                {
                    "kind": "multi_canteen_day",
                    "cadre": county.cadres[c].cadre,
                    "day": county.days[day].isoformat(),
                    "canteens": sorted(county.canteens[k].canteen for k in where),
                }
            )
            break
    # Sales outside every meal window, and on public holidays.
    off_hours = ((9 * 60 + 30, 11 * 60), (14 * 60, 17 * 60), (20 * 60, 22 * 60 + 30))
    holiday_days = [i for i, day in enumerate(county.days) if day in county.holidays]
    for kind, count in (("off_hours", 2 + o.months // 4), ("holiday", 2 + o.months // 4)):
        pool = work if kind == "off_hours" else holiday_days
        for _ in range(count if pool else 0):
            for _try in range(50):
                c, day = rng.choice(homed), rng.choice(pool)
                home = county.cadres[c].home
                assert home is not None
                if not free_day(c, day, [home]):
                    continue
                if kind == "off_hours":
                    lo, hi = rng.choice(off_hours)
                    meal = "overtime"
                else:
                    meal = "lunch"
                    lo, hi = MEALS[meal]
                at = local_ms(county.days[day], rng.uniform(lo, hi - 1))
                index = len(plan.anomalies)
                plan.sales[day].append(Sale(at, home, c, meal, tag=(kind, index)))
                plan.reserved.add((c, day))
                found: dict[str, Any] = {
                    "kind": kind,
                    "terminal": "",
                    "seq": 0,
                    "cadre": county.cadres[c].cadre,
                }
                if kind == "holiday":
                    found["day"] = county.days[day].isoformat()
                plan.anomalies.append(found)
                break
    return plan


# --- the days ----------------------------------------------------------------------------


def _factor(county: County, i: int, festival: set[int]) -> float:
    day = county.days[i]
    f = WEEKEND if day.weekday() >= 5 else 1.0
    if (day.month, day.day) >= (7, 15) and day.month <= 8:
        f *= SUMMER
    if i in festival:
        f *= FESTIVAL_DIP
    return f


def _festival_days(county: County) -> set[int]:
    """Day indexes within a week of a Spring Festival holiday (a run of 7+ holidays in
    January or February)."""
    out: set[int] = set()
    index = {day: i for i, day in enumerate(county.days)}
    for y in range(county.days[0].year, county.days[-1].year + 1):
        spring = [h for h in holidays_of(y) if h.month == 2 or (h.month == 1 and h.day > 3)]
        if not spring:
            continue
        for k in range(-7, (spring[-1] - spring[0]).days + 8):
            i = index.get(spring[0] + dt.timedelta(days=k))
            if i is not None and county.days[i] not in county.holidays:
                out.add(i)
    return out


def _fits(kept: list[int], at: int) -> bool:
    """Whether a sale at ``at`` keeps every SPACING_MS window of ``kept`` (sorted) under 4."""
    pos = bisect.bisect_left(kept, at)
    around = [*kept[max(0, pos - 3) : pos], at, *kept[pos : pos + 3]]
    return all(around[j + 3] - around[j] >= SPACING_MS for j in range(len(around) - 3))


def day_sales(
    county: County, plan: Plan, i: int, rng: random.Random, festival: set[int]
) -> list[Sale]:
    """Every sale of day ``i``, planted and ordinary, in time order."""
    day = county.days[i]
    planted = plan.sales.get(i, [])
    if day in county.holidays:
        return sorted(planted, key=lambda s: (s.at_ms, s.cadre))
    second_year = i >= 365
    base = _factor(county, i, festival)
    n_canteens = len(county.canteens)
    ordinary: list[Sale] = []
    rand, uniform = rng.random, rng.uniform
    for c in county.cadres:
        if (c.no, i) in plan.reserved:
            continue
        f = base * (FALLING if second_year and c.falling else 1.0)
        if c.home is None:
            if rand() < OUTSIDER_DAY * f:
                k = int(rand() * n_canteens)
                lo, hi = MEALS["lunch"]
                ordinary.append(Sale(local_ms(day, uniform(lo, hi - 1)), k, c.no, "lunch"))
            continue
        if n_canteens > 1 and rand() < VISIT_DAY * f:
            k = int(rand() * (n_canteens - 1))
            k += k >= c.home
            lo, hi = MEALS["lunch"]
            ordinary.append(Sale(local_ms(day, uniform(lo, hi - 1)), k, c.no, "lunch"))
            continue
        for meal, p in EAT.items():
            if rand() < p * f:
                lo, hi = MEALS[meal]
                # Most come in the first hour of the window.
                minute = lo + min(hi - lo - 1, rng.triangular(0, hi - lo, (hi - lo) * 0.3))
                at = local_ms(day, minute)
                ordinary.append(Sale(at, c.home, c.no, meal))
                if meal == "lunch" and rand() < REFUSED:
                    later = min(at + int(1 + rand() * 14) * MIN_MS, local_ms(day, hi - 0.5))
                    ordinary.append(Sale(later, c.home, c.no, meal, reason="already_served"))
    # No batch by chance: a visiting agency's sales at a canteen stay spaced.
    kept: dict[tuple[int, str], list[int]] = defaultdict(list)
    for s in planted:
        unit = county.cadres[s.cadre].unit
        if unit != county.canteens[s.canteen].operator:
            bisect.insort(kept[(s.canteen, unit)], s.at_ms)
    out = list(planted)
    ordinary.sort(key=lambda s: (s.at_ms, s.cadre))
    for s in ordinary:
        unit = county.cadres[s.cadre].unit
        if unit != county.canteens[s.canteen].operator:
            if (s.canteen, unit, i) in plan.blocked:
                continue
            times = kept[(s.canteen, unit)]
            if not _fits(times, s.at_ms):
                continue
            bisect.insort(times, s.at_ms)
        out.append(s)
    out.sort(key=lambda s: (s.at_ms, s.cadre, s.reason or ""))
    return out


@dataclasses.dataclass
class Chain:
    terminal: str
    canteen: str
    key: Ed25519PrivateKey
    seq: int = 0
    last_hash: bytes = GENESIS_PREV_HASH
    last_at_ms: int = 0
    last_received_ms: int = 0


def _issuer(seed: int) -> issue.Issuer:
    return issue.Issuer(ISS, issue.key_from_seed(f"history/{seed}/issuer"))


def entry_rows(county: County, plan: Plan, chains: list[list[Chain]]) -> Iterator[tuple[Any, ...]]:
    """Every entry of the history in time order (the genesis of each terminal first), as
    rows of hwsim.bulkload.ENTRY_COLUMNS; fills the manifest's terminal and seq of the
    planted single sales, and each chain's end."""
    o = county.options
    rng = random.Random(f"history/{o.seed}/days")
    rand = rng.random
    ids = random.Random(f"history/{o.seed}/ids")
    festival = _festival_days(county)
    issuer = _issuer(o.seed)
    valid_from = county.start_ms // 1000 - 30 * 86_400
    valid_days = len(county.days) + 90

    def row(ch: Chain, at_ms: int, fields: list[Any], received_ms: int) -> tuple[Any, ...]:
        ch.seq += 1
        hashed = [ch.seq, f"{ids.getrandbits(128):032x}", at_ms, *fields]
        digest = entry_hash(ch.last_hash, hashed)
        out = (ch.terminal, ch.canteen, *hashed, ch.last_hash, digest, received_ms)
        ch.last_hash, ch.last_at_ms, ch.last_received_ms = digest, at_ms, received_ms
        return out

    genesis_ms = county.start_ms - DAY_MS
    tiers: dict[tuple[str, str], str] = {}
    # The detail of an accepted sale without a signed code: its tier (and the placeholder).
    plain = {
        (tier, qr): canonical_json(
            {"tier": tier, **({"qr": PLACEHOLDER_CODE} if qr and o.placeholder_codes else {})}
        )
        for tier in TIERS
        for qr in (False, True)
    }
    for per_canteen in chains:
        for ch in per_canteen:
            detail = canonical_json(
                {
                    "terminal_id": ch.terminal,
                    "public_key": ch.key.public_key().public_bytes_raw().hex(),
                }
            )
            yield row(
                ch, genesis_ms, [GENESIS, *([None] * 9), 0, None, detail], genesis_ms + MIN_MS
            )
    for i, day in enumerate(county.days):
        day_text = day.isoformat()
        for s in day_sales(county, plan, i, rng, festival):
            c = county.cadres[s.cadre]
            canteen = county.canteens[s.canteen]
            per_canteen = chains[s.canteen]
            ch = (
                per_canteen[int(rand() * len(per_canteen))]
                if len(per_canteen) > 1
                else per_canteen[0]
            )
            tier = tiers.get((c.unit, canteen.operator))
            if tier is None:
                tier = tiers[(c.unit, canteen.operator)] = county.directory.tier(
                    c.unit, canteen.operator
                )
            prices = PRICES[s.meal]
            amount = prices.get(tier, prices["visitor"]) if s.reason is None else 0
            text = "{}" if s.reason else plain[(tier, c.qr)]
            ctr: int | None = None
            if c.qr:
                c.ctr += 1
                ctr = c.ctr
                if s.reason is None and not o.placeholder_codes:
                    if c.wallet is None:
                        c.wallet = issue.enrol(
                            issuer, f"c{c.no:06d}", c.unit, c.name,
                            holder_key=issue.key_from_seed(f"history/{o.seed}/holder/{c.no}"),
                            cti=issue.cti_from_seed(f"history/{o.seed}/cti/{c.no}"),
                            now=valid_from, days=valid_days,
                        )  # fmt: skip
                    code = c.wallet.draw(s.at_ms // 1000 - 2, ctr=ctr)
                    text = canonical_json({"tier": tier, "qr": code})
            received = s.at_ms + 5_000 + int(rand() * 295) * 1000
            yield row(
                ch,
                s.at_ms,
                [
                    SALE,
                    "reject" if s.reason else "accept",
                    s.reason,
                    "qr" if c.qr else "card",
                    c.cadre,
                    c.credential,
                    ctr,
                    c.unit,
                    day_text,
                    s.meal,
                    amount,
                    None,
                    text,
                ],
                received,
            )
            if s.tag is not None:
                found = plan.anomalies[s.tag[1]]
                found["terminal"], found["seq"] = ch.terminal, ch.seq


# --- into the database -------------------------------------------------------------------


@dataclasses.dataclass
class Written:
    entries: int
    terminals: int
    seconds: float
    manifest: dict[str, Any]


def manifest_of(county: County, plan: Plan) -> dict[str, Any]:
    o = county.options
    return {
        "seed": o.seed,
        "months": o.months,
        "start": o.start.isoformat(),
        "timezone": TIMEZONE,
        "min_people": MIN_PEOPLE,
        "window_min": WINDOW_MIN,
        "batches": sorted(plan.batches, key=lambda b: (b["start_ms"], b["canteen"], b["unit"])),
        "anomalies": plan.anomalies,
        "holidays": sorted(h.isoformat() for h in county.holidays),
    }


def write_history(options: Options, url: str, show_progress: bool | None = None) -> Written:
    """Generate the history of ``options`` into the (new, empty) county database at ``url``."""
    from sqlalchemy import func, insert, select
    from tqdm import tqdm

    from county import rollups
    from county.conflicts import add_issuer_keys
    from county.db import Database
    from county.db.migrations import prepare
    from county.db.schema import agencies, cadres, checkpoints, entries, terminals
    from county.directory import replace_agencies, replace_canteens
    from hwsim.bulkload import load_entries

    began = time.perf_counter()
    county = make_county(options)
    plan = plan_history(county)
    db = Database(url)
    try:
        prepare(db)
        with db.read() as conn:
            for table in (terminals, entries, agencies):
                if conn.execute(select(func.count()).select_from(table)).scalar_one():
                    raise HistoryError(
                        f"the county database at {db.url} already holds {table.name}: a history "
                        "is written into a new county (an empty --data folder or database)"
                    )
        now = county.start_ms - 2 * DAY_MS
        rng = random.Random(f"history/{options.seed}/accounts")
        with db.write() as conn:
            replace_agencies(conn, county.directory, now)
            replace_canteens(conn, county.canteens, now)
            conn.execute(
                insert(cadres),
                [
                    {
                        "cadre": c.cadre,
                        "unit": c.unit,
                        "name": c.name,
                        "account": "6217" + "".join(str(rng.randrange(10)) for _ in range(15)),
                        "monthly_allowance_fen": 60_000,
                        "imported_ms": now,
                    }
                    for c in county.cadres
                ],
            )
            add_issuer_keys(conn, [_issuer(options.seed).trust_entry()], now)
        chains = [
            [
                Chain(
                    t,
                    county.canteens[k].canteen,
                    issue.key_from_seed(f"history/{options.seed}/ledger/{t}"),
                )
                for t in per_canteen
            ]
            for k, per_canteen in enumerate(county.terminals)
        ]
        on_tty = sys.stderr.isatty() if show_progress is None else show_progress
        with tqdm(
            total=len(county.days), desc="history", unit="day", disable=not on_tty, leave=False
        ) as bar:
            rows = _days_progress(entry_rows(county, plan, chains), bar)
            loader_url = f"sqlite:///{db.sqlite_path}" if db.is_sqlite else url
            count = load_entries(loader_url, rows)
        with db.write() as conn:
            every = [ch for per_canteen in chains for ch in per_canteen]
            conn.execute(
                insert(terminals),
                [
                    {
                        "terminal_id": ch.terminal,
                        "canteen": ch.canteen,
                        "ledger_key": ch.key.public_key().public_bytes_raw(),
                        "registered_ms": now,
                        "provisioned_ms": county.start_ms - DAY_MS,
                        "last_seen_ms": ch.last_received_ms,
                        "acked_seq": ch.seq,
                        "last_hash": ch.last_hash,
                    }
                    for ch in every
                ],
            )
            conn.execute(
                insert(checkpoints),
                [
                    {
                        "terminal": ch.terminal,
                        "seq": ch.seq,
                        "hash": ch.last_hash,
                        "at_ms": ch.last_at_ms,
                        "signature": ch.key.sign(
                            checkpoint_message(ch.terminal, ch.seq, ch.last_hash)
                        ),
                    }
                    for ch in every
                ],
            )
        with db.write() as conn:
            # The summaries the intake keeps as entries arrive (county/rollups.py).
            rollups.rebuild(conn)
    finally:
        db.close()
    return Written(
        count, sum(map(len, chains)), time.perf_counter() - began, manifest_of(county, plan)
    )


def _days_progress(rows: Iterator[tuple[Any, ...]], bar: Any) -> Iterator[tuple[Any, ...]]:
    """``rows``, moving the bar a day at each new local day of the entries."""
    day = None
    for row in rows:
        if row[13] != day and row[13] is not None:
            if day is not None:
                bar.update(1)
            day = row[13]
        yield row
    bar.update(1)


def write_holidays(path: Path, holidays: Sequence[str]) -> None:
    path.write_text("".join(f"{h}\n" for h in holidays), encoding="utf-8")


# --- the command ---------------------------------------------------------------------------


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def run(a: argparse.Namespace) -> int:
    """``hw-sim county history``: the handler hwsim/cli.py calls."""
    from county.db.engine import database_url
    from county.errors import StoreError

    options = Options(
        seed=a.seed,
        months=a.months,
        start=a.start,
        canteens=a.canteens,
        agencies=a.agencies,
        cadres=a.cadres,
        placeholder_codes=a.placeholder_codes,
    )
    options.check()
    if a.database is None and a.data is None:
        raise HistoryError("name the county: --data DIR (SQLite) or --database URL")
    for named in (a.manifest, a.holidays):  # refused before the database is written
        if named and (not Path(named).parent.is_dir() or Path(named).is_dir()):
            raise HistoryError(f"cannot write {named}: no such folder, or it is a folder")
    holiday_files = [Path(a.holidays)] if a.holidays else []
    try:
        if a.data is not None:
            Path(a.data).mkdir(parents=True, exist_ok=True)
            holiday_files.append(Path(a.data) / HOLIDAYS_FILE)
        done = write_history(options, database_url(a.database, a.data))
        holidays = done.manifest["holidays"]
        for file in holiday_files:
            write_holidays(file, holidays)
        if a.manifest:
            Path(a.manifest).write_text(
                json.dumps(done.manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
            )
    except StoreError as exc:
        raise HistoryError(" ".join(str(exc).split())) from None
    except OSError as exc:
        raise HistoryError(f"{exc.filename or 'a file'}: {exc.strerror}") from None
    kinds: dict[str, int] = defaultdict(int)
    for found in done.manifest["anomalies"]:
        kinds[found["kind"]] += 1
    print(
        f"{done.entries:,} entries of {done.terminals} terminals over {options.months} months "
        f"from {options.start} in {done.seconds:.0f} s; planted {len(done.manifest['batches'])} "
        f"batches and anomalies {dict(sorted(kinds.items()))}; {len(holidays)} holidays"
    )
    return 0


HELP = "two years of a county in its database, with planted reception batches and anomalies"
DESCRIPTION = (
    "Generate a county's past into a new county database (--data DIR for SQLite, "
    "--database URL for PostgreSQL at head): an agency directory at four levels, canteens "
    "and their terminals (registered, ledger keys pinned), cadres, and --months of daily "
    "meals with seasons, weekends, holidays, visitors and cross-level prices, written as "
    "hash-chained ledger entries. Reception batches and anomalies (repeated batches, a "
    "cadre at several canteens in a day, sales off-hours and on holidays) are planted at "
    "known times, fewer batches in the second year, and nothing else looks like one; "
    "--manifest writes what was planted, and the public holidays go to DIR/holidays.txt "
    "and --holidays FILE. The same --seed gives the same rows and manifest."
)
CLI_ARGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--months",), {"type": int, "default": 24, "help": "months of history (default 24)"}),
    (("--seed",), {"type": int, "default": 16, "help": "varies everything drawn (default 16)"}),
    (
        ("--start",),
        {
            "type": _date,
            "default": Options.start,
            "metavar": "YYYY-MM-DD",
            "help": "the first local day (default 2024-12-01)",
        },
    ),
    (("--canteens",), {"type": int, "default": 6, "metavar": "N", "help": "canteens (6)"}),
    (
        ("--agencies",),
        {"type": int, "default": 60, "metavar": "N", "help": "about this many agencies (60)"},
    ),
    (
        ("--cadres",),
        {"type": int, "metavar": "N", "help": "cadres (default 50 a canteen)"},
    ),
    (("--manifest",), {"metavar": "FILE", "help": "write what was planted here (JSON)"}),
    (("--holidays",), {"metavar": "FILE", "help": "also write the holidays here"}),
    (
        ("--placeholder-codes",),
        {
            "action": "store_true",
            "help": "a fixed text instead of a signed phone code in each QR sale (millions "
            "of sales: signing costs about 0.16 ms each)",
        },
    ),
    (("--data",), {"metavar": "DIR", "help": "the county data directory (SQLite; made)"}),
    (("--database",), {"metavar": "URL", "help": "postgresql://... or sqlite:///PATH"}),
)
