"""The lunch-rush scenario's plan: the canteen, the options, who comes when and what goes wrong.

This module owns the lunch as planned, before anything runs: the canteen's
fixed facts (its ids, its lunch prices by price tier before and after the
settings change, the token window of its terminal), its place in the agency
directory the county publishes (``Seating``: a generated directory of a few
hundred agencies, the county agency that runs the canteen and its own units),
the ``Options`` of a run, the seeded cast (a population of cadres with phone
wallets and cards, of the canteen's own agency and of agencies at the same
level, higher, lower, from other counties and cities, and of units the
directory does not know, their issuer keys and phone keys Ed25519 or SM2 in a
mix (``sm2_share``, token.md §7); and the outsiders: expired and forged
credentials, unknown cards), the arrivals at the counter
(cadres paying by QR code or card, and hostile presentations: replayed and
forged codes, revoked and expired credentials, second meals, cards lost or not
in the roster) and the world events (a network outage in the middle, a
settings change and a revocation that county IT publishes). The same options
and origin give the same plan. It starts nothing, reads no clock and touches
no file.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from hwsim import agencies as gen
from hwsim import population as pop
from hwsim.scenario.clock import LUNCH_CLOSES, LUNCH_OPENS
from hwsim.wallet import (
    DAY_S,
    Issuer,
    SigningKey,
    Wallet,
    cose_alg,
    credential_claims,
    make_wallet,
    present,
    protected_header,
    raw_public,
    sign1,
    signing_key_from_seed,
)
from protocol.agencies import (
    COUNTY,
    HIGHER_LEVEL,
    LOWER_LEVEL,
    OTHER_REGION,
    OWN,
    SAME_LEVEL,
    UNLISTED,
    VISITOR,
    Canteen,
    Directory,
)
from terminal.config import MealWindow

FIRST_ARRIVAL_S = 60.0  # simulated seconds after the lunch opens
TERMINAL_ID = "t-lunch"
CANTEEN_ID = "c-lunch"
CANTEEN_NAME = "午餐高峰机关食堂"
# The lunch's price for each tier (fen), every one different, and different again after the
# settings change, so a sale charged at the wrong tier or under the wrong settings shows.
# A unit the directory does not know pays the visitor price.
PRICES_BEFORE = {
    OWN: 1000,
    LOWER_LEVEL: 1100,
    SAME_LEVEL: 1200,
    HIGHER_LEVEL: 1300,
    OTHER_REGION: 1400,
    VISITOR: 1500,
}
PRICES_AFTER = {
    OWN: 1050,
    LOWER_LEVEL: 1150,
    SAME_LEVEL: 1250,
    HIGHER_LEVEL: 1350,
    OTHER_REGION: 1450,
    VISITOR: 1600,
}
PRICED_TIERS = (SAME_LEVEL, HIGHER_LEVEL, LOWER_LEVEL, OTHER_REGION)  # price_<tier>_fen
# The diners' tiers, cadre after cadre (repeated): every ten cadres hold every tier, four
# of them the canteen's own agency.
TIER_PATTERN = (
    OWN,
    SAME_LEVEL,
    OWN,
    HIGHER_LEVEL,
    OTHER_REGION,
    OWN,
    LOWER_LEVEL,
    UNLISTED,
    SAME_LEVEL,
    OWN,
)
DIRECTORY_COUNTIES = 12  # about 260 agencies at four levels
WINDOW_S = 60  # [tokens] window_s and skew_s of the scenario's terminal (the defaults)
SKEW_S = 30
SAME_TEXT_S = 0.8  # [camera] same_text_s: a replay must be out of view this long first
MAX_SPEED = 60.0  # above this a code drawn, rendered and shown is older than its freshness

FIRST_MEAL = "first_meal"
REVOKED_LATER = "revoked_after_publication"
HOSTILE_KINDS = (
    "replay",
    "second_meal",
    "revoked",
    "forged_key",
    "unknown_card",
    "expired",
    "second_meal_card",
    "forged_credential",
    "lost_card",
    "forged_presentation",
)
CARD_KINDS = frozenset({"unknown_card", "second_meal_card", "lost_card"})

OUTAGE_START = "outage_start"
OUTAGE_END = "outage_end"
SETTINGS = "settings"
REVOCATION = "revocation"


class ScenarioError(Exception):
    """The scenario cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Options:
    """How the lunch is played. ``shortened()`` gives the CI run."""

    out: Path
    cadres: int = 300  # presentations at the counter, hostile ones included
    speed: float = 30.0  # simulated seconds per real second
    seed: str = "lunch-rush"
    outage_s: float = 600.0  # simulated seconds of network partition, in the middle
    # The network comes back only once this many cadres were served while it was down (a
    # queue running late on a loaded computer must not let the outage pass unseen).
    min_offline: int = 3
    qr_share: float = 0.7
    hostile_share: float = 0.05
    hold_s: float = 0.35  # real seconds a phone stays in view (the verdict comes in ~0.1 s)
    gap_s: float = 0.1  # real seconds of empty counter between two phones
    partition_mode: str = "blackhole"
    short: bool = False
    # The share of cadres whose phone key is SM2 (token.md §7). Between 0 and 1 the issuer
    # has two keys, Ed25519 and SM2, and cadres alternate over them, so every mix of issuer
    # and phone algorithm comes to the counter; 0 is all Ed25519, 1 all SM2.
    sm2_share: float = 0.3

    @classmethod
    def shortened(cls, out: Path, **changes: Any) -> Options:
        """The CI run: 40 presentations (every hostile kind once), a two-minute outage."""
        return dataclasses.replace(cls(out=out, cadres=40, outage_s=120.0, short=True), **changes)

    def check(self) -> None:
        if not 30 <= self.cadres <= 2000:
            raise ScenarioError("--cadres must be between 30 and 2000")
        if not 1 <= self.speed <= MAX_SPEED:
            raise ScenarioError(
                f"--speed must be between 1 and {MAX_SPEED:g}: a phone code is fresh for "
                f"{WINDOW_S + SKEW_S} simulated seconds, and drawing, rendering and showing it "
                "takes about a real second"
            )
        if self.outage_s < 0:
            raise ScenarioError("the outage cannot be negative")
        if self.min_offline < 0:
            raise ScenarioError("min_offline cannot be negative")
        if not 0.0 <= self.sm2_share <= 1.0:
            raise ScenarioError("--sm2-share must be between 0 and 1")

    @property
    def span_s(self) -> float:
        """Simulated seconds over which cadres arrive (about one every 20 s on average)."""
        return max(600.0, self.cadres * 20.0)


# --- the canteen in the agency directory ---------------------------------------------------


def lunch_window(prices: dict[str, int]) -> MealWindow:
    """The lunch as the terminal's settings give it, for the model's prices: own, visitor
    and each priced tier (MealWindow.price_for gives every other tier the visitor price)."""
    return MealWindow(
        "lunch",
        LUNCH_OPENS,
        LUNCH_CLOSES,
        prices[OWN],
        prices[VISITOR],
        tuple((tier, prices[tier]) for tier in PRICED_TIERS),
    )


@dataclass(frozen=True)
class Seating:
    """The canteen in the directory the county publishes: the directory (the generated
    agencies and canteens, this canteen among them), the county agency that runs the
    canteen, and the units its settings count as its own."""

    directory: Directory
    operator: str
    own_units: tuple[str, ...]

    def tier(self, unit: str) -> str:
        """The tier a diner of ``unit`` pays here, by the protocol's rule (Directory.tier)."""
        return self.directory.tier(unit, self.operator, self.own_units)

    def units_by_tier(self) -> dict[str, list[str]]:
        return gen.units_by_tier(self.directory, self.operator, self.own_units)


def make_seating(seed: str) -> Seating:
    """The scenario's directory from ``seed``: this canteen is run by the office services
    bureau of the first county (in directory order), whose government's cadres count as
    its own too."""
    made = gen.make_directory(f"lunch-rush/{seed}", DIRECTORY_COUNTIES)
    agencies = made.directory.agencies
    operator = next(
        c.operator for c in made.directory.canteens.values() if agencies[c.operator].level == COUNTY
    )
    government = agencies[operator].parent
    assert government is not None
    directory = Directory(
        agencies.values(),
        [*made.directory.canteens.values(), Canteen(CANTEEN_ID, CANTEEN_NAME, operator)],
    )
    return Seating(directory, operator, (operator, government))


# --- the plan ------------------------------------------------------------------------------


@dataclass
class Arrival:
    """One presentation at the counter."""

    n: int
    at_s: float  # simulated seconds after the lunch opens
    method: str  # qr or card
    kind: str  # FIRST_MEAL, REVOKED_LATER or one of HOSTILE_KINDS
    who: str  # the cadre's sub, or a label for outsiders
    ref: int | None = None  # the arrival a replay or a second meal repeats


@dataclass(frozen=True)
class WorldEvent:
    at_s: float
    kind: str  # outage_start, outage_end, settings, revocation


@dataclass
class Cast:
    """Everyone who comes to the counter, and the lists the terminal starts with."""

    population: pop.Population
    honest_qr: list[str]
    honest_card: list[str]
    revoked_at_start: list[str]  # credentials on the terminal's first revocation list
    lost_cards: list[str]  # cards marked lost in the roster
    victims: list[str]  # cadres whose credential a thief presents with another phone key
    outsiders: dict[str, Wallet] = field(default_factory=dict)  # expired, forged key
    forged_texts: dict[str, Callable[[int], str]] = field(default_factory=dict)
    unknown_uids: dict[str, bytes] = field(default_factory=dict)

    def cadre(self, sub: str) -> pop.Cadre:
        return self.population.by_sub(sub)


@dataclass
class Plan:
    arrivals: list[Arrival]
    events: list[WorldEvent]
    cast: Cast
    revoke_subs: list[str]  # credentials revoked by the publication
    revoke_uids: list[str]  # cards (hex) revoked by the publication
    seating: Seating

    def timeline(self) -> list[Arrival | WorldEvent]:
        items: list[Arrival | WorldEvent] = [*self.arrivals, *self.events]
        # Events first at equal times, so a presentation at the same second sees them.
        return sorted(items, key=lambda i: (i.at_s, isinstance(i, Arrival)))


def make_plan(opts: Options, origin_s: int) -> Plan:
    """The seeded lunch: who comes when, how they pay, what goes wrong, and when."""
    rng = random.Random(f"lunch-rush/{opts.seed}/{opts.cadres}/{opts.short}")
    total = opts.cadres
    hostile = [
        HOSTILE_KINDS[i % len(HOSTILE_KINDS)]
        for i in range(max(len(HOSTILE_KINDS), round(total * opts.hostile_share)))
    ]
    honest = total - len(hostile)
    hostile_cards = sum(k in CARD_KINDS for k in hostile)
    honest_card = max(3, round(total * (1 - opts.qr_share)) - hostile_cards)
    honest_qr = honest - honest_card
    n_revoked = hostile.count("revoked")
    n_lost = hostile.count("lost_card")
    n_victims = hostile.count("forged_presentation")
    people = honest + n_revoked + n_victims + n_lost + 8
    seating = make_seating(opts.seed)
    units_rng = random.Random(f"lunch-rush/{opts.seed}/units")
    units = gen.unit_mix(seating.units_by_tier(), TIER_PATTERN, people, units_rng)
    population = pop.make_population(
        now=origin_s - DAY_S,
        cadres=people,
        units=units,
        cards_fraction=min(1.0, (honest_card + n_lost + 4) / people),
        seed=f"lunch-rush/{opts.seed}",
        **population_algs(opts.sm2_share),
    )
    holders = [c.sub for c in population.cards()]
    rng.shuffle(holders)
    others = [c.sub for c in population.cadres if c.card_uid is None]
    rng.shuffle(others)
    if len(holders) < honest_card + n_lost or len(others) < honest_qr + n_revoked + n_victims:
        raise ScenarioError("the population is too small for this plan; use more --cadres")
    lost = holders[honest_card : honest_card + n_lost]
    for sub in lost:
        population.by_sub(sub).card_status = "lost"
    cast = Cast(
        population=population,
        honest_qr=others[:honest_qr],
        honest_card=holders[:honest_card],
        revoked_at_start=others[honest_qr : honest_qr + n_revoked],
        lost_cards=lost,
        victims=others[honest_qr + n_revoked : honest_qr + n_revoked + n_victims],
    )
    _make_outsiders(cast, hostile, origin_s, opts.seed, rng, seating.own_units[0])

    # The order at the counter: honest first meals shuffled, hostile ones slotted in.
    order = [_Slot(i, "qr", FIRST_MEAL, sub) for i, sub in enumerate(cast.honest_qr)]
    order += [
        _Slot(len(order) + i, "card", FIRST_MEAL, sub) for i, sub in enumerate(cast.honest_card)
    ]
    rng.shuffle(order)
    taken = {"revoked": 0, "lost_card": 0, "forged_presentation": 0}
    used: set[int] = set()
    for kind in hostile:
        slot_id = len(order)
        if kind in ("replay", "second_meal", "second_meal_card"):
            method = "card" if kind == "second_meal_card" else "qr"
            candidates = [
                i
                for i, o in enumerate(order)
                if o.method == method and o.kind == FIRST_MEAL and o.id not in used
            ]
            if not candidates:
                raise ScenarioError("no first meal to repeat; use more --cadres")
            # Early enough in the lunch that the repeat can come later.
            i = rng.choice(candidates[: max(1, len(candidates) * 2 // 3)])
            first = order[i]
            used.add(first.id)
            # A replay: the next person in line shows a photo of the code just used.
            at = i + 1 if kind == "replay" else rng.randint(min(i + 5, len(order)), len(order))
            order.insert(at, _Slot(slot_id, method, kind, first.who, first.id))
            continue
        if kind in taken:
            pool = {
                "revoked": cast.revoked_at_start,
                "lost_card": cast.lost_cards,
                "forged_presentation": cast.victims,
            }[kind]
            who = pool[taken[kind]]
            taken[kind] += 1
        else:
            who = f"{kind}-{sum(o.kind == kind for o in order) + 1}"
        method = "card" if kind in CARD_KINDS else "qr"
        order.insert(rng.randint(0, len(order)), _Slot(slot_id, method, kind, who))

    # Rush-hour arrival times: most cadres between a quarter past and half past twelve.
    span = opts.span_s
    times = sorted(rng.triangular(0.0, span, span * 0.35) for _ in order)
    position = {o.id: n for n, o in enumerate(order)}
    arrivals = [
        Arrival(
            n,
            FIRST_ARRIVAL_S + t,
            o.method,
            o.kind,
            o.who,
            None if o.ref is None else position[o.ref],
        )
        for n, (t, o) in enumerate(zip(times, order, strict=True))
    ]
    mid = FIRST_ARRIVAL_S + span / 2
    settings_at = FIRST_ARRIVAL_S + span * 0.3
    revocation_at = FIRST_ARRIVAL_S + span * 0.7
    events = [
        WorldEvent(settings_at, SETTINGS),
        WorldEvent(mid - opts.outage_s / 2, OUTAGE_START),
        WorldEvent(mid + opts.outage_s / 2, OUTAGE_END),
        WorldEvent(revocation_at, REVOCATION),
    ]
    # One QR credential and one card revoked by the publication: cadres who come after it.
    referenced = {a.ref for a in arrivals if a.ref is not None}
    revoke_subs: list[str] = []
    revoke_uids: list[str] = []
    for method in ("qr", "card"):
        later = [
            a
            for a in arrivals
            if a.kind == FIRST_MEAL
            and a.method == method
            and a.at_s > revocation_at + 30
            and a.n not in referenced
        ]
        if not later:
            raise ScenarioError("nobody comes after the revocation; use more --cadres")
        chosen = rng.choice(later)
        chosen.kind = REVOKED_LATER
        if method == "qr":
            revoke_subs.append(chosen.who)
        else:
            uid = cast.cadre(chosen.who).card_uid
            assert uid is not None
            revoke_uids.append(uid.hex())
    return Plan(arrivals, events, cast, revoke_subs, revoke_uids, seating)


def population_algs(sm2_share: float) -> dict[str, Any]:
    """make_population's key options for a lunch with this share of SM2 phones."""
    if sm2_share <= 0.0:
        return {"alg": "ed25519", "issuer_keys": 1, "sm2_share": 0.0}
    if sm2_share >= 1.0:
        return {"alg": "sm2", "issuer_keys": 1, "sm2_share": 1.0}
    return {"alg": "mixed", "issuer_keys": 2, "sm2_share": sm2_share}


def code_text(plan: Plan, a: Arrival, t: int, seed: str) -> str:
    """The text of the code QR arrival ``a`` shows, drawn at phone time ``t`` (a new code
    from the cadre's wallet; an outsider's or a forger's; a thief's presentation of a
    victim's credential). A replay shows its first code again: the caller keeps it."""
    cast = plan.cast
    if a.kind in ("forged_key", "expired"):
        return cast.outsiders[a.who].draw(t)
    if a.kind == "forged_credential":
        return cast.forged_texts[a.who](t)
    if a.kind == "forged_presentation":
        wallet = cast.cadre(a.who).wallet
        # The thief's phone key is of the victim's algorithm: only the key is wrong.
        thief = signing_key_from_seed(f"lunch-rush/{seed}/thief/{a.n}", wallet.holder_alg)
        return present(wallet.credential, thief, t=t, ctr=wallet.ctr + 1)
    return cast.cadre(a.who).wallet.draw(t)


def unit_of(plan: Plan, a: Arrival) -> str | None:
    """The diner's agency as the credential or the roster gives it (None for outsiders)."""
    if a.kind in ("forged_key", "expired", "forged_credential", "unknown_card"):
        return None
    return plan.cast.cadre(a.who).unit


@dataclass(frozen=True)
class _Slot:
    id: int
    method: str
    kind: str
    who: str
    ref: int | None = None  # the slot id a repeat repeats


def _make_outsiders(
    cast: Cast, hostile: list[str], origin_s: int, seed: str, rng: random.Random, own_unit: str
) -> None:
    issuers = cast.population.issuers
    issuer = issuers[0]

    def forger_of(i: int) -> tuple[Issuer, Issuer]:
        # The i-th forgery copies the last trusted key first (SM2 in a mixed lunch), then
        # the others in turn, with a forger's key of the same algorithm.
        copied = issuers[-i % len(issuers)]
        key = signing_key_from_seed(f"lunch-rush/{seed}/forger/{i}", copied.alg)
        return copied, Issuer(copied.iss, key)

    for i in range(1, hostile.count("expired") + 1):
        cast.outsiders[f"expired-{i}"] = make_wallet(
            issuer,
            f"x-expired-{i}",
            own_unit,
            "过期证",
            now=origin_s - 3 * DAY_S,
            days=1,
            seed=f"lunch-rush/{seed}/expired/{i}",
            alg=issuer.alg,
        )
    for i in range(1, hostile.count("forged_key") + 1):
        _, forger = forger_of(i)
        cast.outsiders[f"forged_key-{i}"] = make_wallet(
            forger,
            f"x-forged-{i}",
            own_unit,
            "伪造者",
            now=origin_s - DAY_S,
            seed=f"lunch-rush/{seed}/forged-key/{i}",
            alg=forger.alg,
        )
    for i in range(1, hostile.count("forged_credential") + 1):
        # The trusted issuer's kid on claims the forger signed himself, under its alg.
        copied, forger = forger_of(i)
        holder = signing_key_from_seed(f"lunch-rush/{seed}/forged-credential/{i}", copied.alg)
        claims = credential_claims(
            iss=copied.iss,
            sub=f"x-forged-credential-{i}",
            unit=own_unit,
            display_name="冒名者",
            cti=rng.randbytes(12),
            iat=origin_s - DAY_S,
            exp=origin_s + 300 * DAY_S,
            holder_public=raw_public(holder),
        )
        header = protected_header(cose_alg(forger.key), copied.kid)
        credential = sign1(forger.key, header, cbor2.dumps(claims))

        def forged(t: int, credential: bytes = credential, holder: SigningKey = holder) -> str:
            return present(credential, holder, t=t, ctr=1)

        cast.forged_texts[f"forged_credential-{i}"] = forged
    for i in range(1, hostile.count("unknown_card") + 1):
        uid = rng.randbytes(5)
        known = {c.card_uid for c in cast.population.cards()}
        while uid in known:
            uid = rng.randbytes(5)
        cast.unknown_uids[f"unknown_card-{i}"] = uid
