"""The canteen's rules: which meal is served now, at what price, and whether to serve.

This module owns step 8 of token.md §4 and the card rules: meal windows and
prices, the price tier (the diner's relationship to the canteen, decided offline from
the credential's unit and the installed agency directory: docs/prices.md), once per
meal window per cadre, the per-cadre daily caps, the
per-terminal offline caps, what stale lists do to the caps, and the reason
codes of the refusals it makes (docs/reasons.md). It is a pure function of its
arguments: the facts it needs (what the ledger says this cadre already had, how
old the lists are) are gathered by the caller and passed in, and time is an
argument. It never reads a clock, a file, a device or the network.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from protocol.agencies import Directory, no_directory_tier
from protocol.tokens import Allowance
from terminal.config import MealWindow, Settings

# Policy reason codes (the token-level codes are in protocol/tokens.py).
CLOCK_UNTRUSTED = "clock_untrusted"
OUTSIDE_MEAL_WINDOW = "outside_meal_window"
ALREADY_SERVED = "already_served"
DAILY_MEAL_CAP = "daily_meal_cap"
DAILY_AMOUNT_CAP = "daily_amount_cap"
OFFLINE_ENTRIES_CAP = "offline_entries_cap"
OFFLINE_AMOUNT_CAP = "offline_amount_cap"
SYNC_OVERDUE = "sync_overdue"
REVOCATION_LIST_STALE = "revocation_list_stale"
ROSTER_STALE = "roster_stale"
CARD_UNKNOWN = "card_unknown"
CARD_REVOKED = "card_revoked"

QR = "qr"
CARD = "card"


@dataclass(frozen=True)
class Diner:
    """Who is paying, as established by a verified token or the card roster."""

    cadre: str  # "iss/sub": the same cadre by QR or by card
    unit: str
    display_name: str
    method: str  # QR or CARD
    allowance: Allowance | None = None


@dataclass(frozen=True)
class Service:
    """The meal being served at a moment: the local service day and the window."""

    day: str  # YYYY-MM-DD, local
    meal: MealWindow


@dataclass(frozen=True)
class Facts:
    """What the ledger and the trust state say, gathered by the caller for one decision."""

    served_this_meal: bool
    day_meals: int  # accepted, not reversed, this service day
    day_fen: int
    unsynced_entries: int
    unsynced_fen: int
    since_ack_s: int  # since the last acknowledged sync, or since the ledger began
    revocation_age_s: int | None  # None: no revocation list installed
    roster_age_s: int | None  # None: no roster installed


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None
    amount_fen: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    # The price tier (protocol/agencies.py TIERS) once the decision reached the price;
    # None for a refusal made before it (outside a window, stale lists, already served).
    tier: str | None = None


def service_at(settings: Settings, now_s: int) -> Service | None:
    """The meal window covering ``now_s`` (UTC seconds) in the canteen's local time."""
    local = dt.datetime.fromtimestamp(now_s, settings.timezone)
    clock = local.time()
    for meal in settings.meals:
        if meal.covers(clock):
            return Service(local.date().isoformat(), meal)
    return None


def local_day(settings: Settings, now_s: int) -> str:
    return dt.datetime.fromtimestamp(now_s, settings.timezone).date().isoformat()


def tier_of(settings: Settings, directory: Directory | None, unit: str) -> str:
    """The price tier of a diner of ``unit`` at this canteen.

    With a directory: its rule (Directory.tier) between the diner's agency and the
    agency that runs this canteen ([canteen] id looked up in the directory's canteens),
    the settings' own units counting as own. Without one: own or visitor, as before
    directories existed."""
    if directory is None:
        return no_directory_tier(unit, None, settings.units)
    return directory.tier(unit, directory.operator_of(settings.canteen_id), settings.units)


def price(meal: MealWindow, tier: str) -> int:
    """What a diner of ``tier`` pays for ``meal``: its tier price, else the visitor price."""
    return meal.price_for(tier)


def _scaled(cap: int, percent: int | None) -> int:
    return cap if percent is None else cap * percent // 100


def decide(
    settings: Settings,
    diner: Diner,
    service: Service | None,
    facts: Facts,
    now_s: int,
    directory: Directory | None = None,
) -> Verdict:
    """The canteen's verdict for a diner whose token or card already passed its checks.

    ``directory`` is the installed agency directory (None: none installed). From the
    price step on, the verdict carries the tier and its detail records it as
    {"tier": ...}, so the county settles each sale at the tier the terminal charged."""
    del now_s  # the facts carry every age; kept so every rule sees the same moment
    if service is None:
        return Verdict(False, OUTSIDE_MEAL_WINDOW)

    caps = settings.caps
    limits = settings.lists
    detail: dict[str, Any] = {}
    lowered: int | None = None
    if diner.method == QR:
        age = facts.revocation_age_s
        if age is None or age > limits.revocation_hard_s:
            return Verdict(False, REVOCATION_LIST_STALE, detail={"list_age_s": age})
        if age > limits.revocation_soft_s:
            lowered = caps.stale_caps_percent
        meals_cap, fen_cap = caps.qr_meals_per_day, caps.qr_fen_per_day
    else:
        age = facts.roster_age_s
        if age is None or age > limits.roster_hard_s:
            return Verdict(False, ROSTER_STALE, detail={"list_age_s": age})
        rev_age = facts.revocation_age_s
        # A card's revocations travel in the revocation list too: an old list lowers card caps.
        if rev_age is None or rev_age > limits.revocation_soft_s:
            lowered = caps.stale_caps_percent
        meals_cap, fen_cap = caps.card_meals_per_day, caps.card_fen_per_day
    if lowered is not None:
        detail["caps_lowered_percent"] = lowered

    if facts.served_this_meal:
        return Verdict(False, ALREADY_SERVED, detail=detail)

    tier = tier_of(settings, directory, diner.unit)
    amount = price(service.meal, tier)
    detail["tier"] = tier
    meals_cap = _scaled(meals_cap, lowered)
    fen_cap = _scaled(fen_cap, lowered)
    if diner.allowance is not None:
        if diner.allowance.meals_per_day is not None:
            meals_cap = min(meals_cap, diner.allowance.meals_per_day)
        if diner.allowance.fen_per_day is not None:
            fen_cap = min(fen_cap, diner.allowance.fen_per_day)
    if facts.day_meals + 1 > meals_cap:
        return Verdict(False, DAILY_MEAL_CAP, detail={**detail, "cap": meals_cap}, tier=tier)
    if facts.day_fen + amount > fen_cap:
        return Verdict(False, DAILY_AMOUNT_CAP, detail={**detail, "cap_fen": fen_cap}, tier=tier)

    if facts.since_ack_s > caps.sync_overdue_s:
        overdue = {**detail, "since_ack_s": facts.since_ack_s}
        return Verdict(False, SYNC_OVERDUE, detail=overdue, tier=tier)
    if facts.unsynced_entries + 1 > _scaled(caps.unsynced_entries, lowered):
        return Verdict(False, OFFLINE_ENTRIES_CAP, detail=detail, tier=tier)
    if facts.unsynced_fen + amount > _scaled(caps.unsynced_fen, lowered):
        return Verdict(False, OFFLINE_AMOUNT_CAP, detail=detail, tier=tier)
    return Verdict(True, None, amount, detail, tier)
