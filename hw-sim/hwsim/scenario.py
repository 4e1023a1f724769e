"""The lunch-rush scenario: a whole lunch at one canteen in accelerated time, end to end.

This module owns playing a lunch against a real terminal: a simulated clock
that runs ``speed`` times faster than real time and is the wall clock of the
terminal daemon, of the county server and of every phone; a seeded plan of
arrivals (cadres paying by QR code or card, and hostile presentations:
replayed and forged codes, revoked and expired credentials, second meals,
cards lost or not in the roster), a network outage in the middle (the county
proxy partitioned), a settings change and a revocation that county IT
publishes during the run as signed updates (``county.updates``: the county's
TUF repository, served by the county server at /tuf, fetched and applied by the
running daemon between two decisions); presenting each arrival through the
real devices (phones through CameraSim to the daemon's camera, cards through
ReaderSim to its reader);
the model that says what each presentation must get; and collecting what
happened (verdicts from the screen's event stream, the ledger, the county's
copy, samples of the queue and the backlog) into one ``RunRecord``.
``hwsim.scenario_report`` checks that record and draws its report and chart.
It runs everything on 127.0.0.1 in a folder of its own, stops everything it
started, and never reaches into the terminal's files while the daemon runs:
it talks to the daemon only as a device, a screen client, or through the
decision worker's job queue (to read which update set is in force).

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

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import random
import threading
import time
import urllib.request
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hwsim import population as pop
from hwsim.wallet import (
    DAY_S,
    Issuer,
    Wallet,
    credential_claims,
    key_from_seed,
    make_wallet,
    present,
    protected_header,
    raw_public,
    sign1,
)
from terminal.core.checkout import card_ref, credential_ref
from terminal.ledger import LedgerEntry

log = logging.getLogger("hwsim.scenario")

TIMEZONE = "Asia/Shanghai"
ORIGIN = dt.time(11, 25)  # the simulated clock starts here: the terminal opens before lunch
LUNCH_OPENS = dt.time(11, 30)
LUNCH_CLOSES = dt.time(13, 30)
FIRST_ARRIVAL_S = 60.0  # simulated seconds after the lunch opens
TERMINAL_ID = "t-lunch"
CANTEEN_ID = "c-lunch"
OWN_UNITS = pop.DEFAULT_UNITS[:3]
PRICES_BEFORE = (1000, 1500)  # lunch: own units, visitors (fen)
PRICES_AFTER = (1200, 1600)  # after the settings change
WINDOW_S = 60  # [tokens] window_s and skew_s of the scenario's terminal (the defaults)
SKEW_S = 30
SAME_TEXT_S = 0.8  # [camera] same_text_s: a replay must be out of view this long first
MAX_SPEED = 60.0  # above this a code drawn, rendered and shown is older than its freshness

ACCEPT = "accept"
REJECT = "reject"

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
# What each hostile presentation must get; the others depend on the state of the lunch.
FIXED_REASON = {
    "revoked": "revoked",
    "forged_key": "unknown_issuer_key",
    "forged_credential": "bad_credential_signature",
    "forged_presentation": "bad_presentation_signature",
    "expired": "credential_expired",
    "unknown_card": "card_unknown",
    "lost_card": "card_revoked",
}


# The longest (real seconds) the outage waits for the queue, whatever goes wrong.
OUTAGE_WAIT_S = 120.0


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

    @property
    def span_s(self) -> float:
        """Simulated seconds over which cadres arrive (about one every 20 s on average)."""
        return max(600.0, self.cadres * 20.0)


# --- the simulated clock -------------------------------------------------------------------


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


OUTAGE_START = "outage_start"
OUTAGE_END = "outage_end"
SETTINGS = "settings"
REVOCATION = "revocation"


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
    population = pop.make_population(
        now=origin_s - DAY_S,
        cadres=people,
        units=pop.DEFAULT_UNITS,
        cards_fraction=min(1.0, (honest_card + n_lost + 4) / people),
        seed=f"lunch-rush/{opts.seed}",
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
    _make_outsiders(cast, hostile, origin_s, opts.seed, rng)

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
    return Plan(arrivals, events, cast, revoke_subs, revoke_uids)


@dataclass(frozen=True)
class _Slot:
    id: int
    method: str
    kind: str
    who: str
    ref: int | None = None  # the slot id a repeat repeats


def _make_outsiders(
    cast: Cast, hostile: list[str], origin_s: int, seed: str, rng: random.Random
) -> None:
    issuer = cast.population.issuers[0]
    forger = Issuer(issuer.iss, key_from_seed(f"lunch-rush/{seed}/forger"))
    for i in range(1, hostile.count("expired") + 1):
        cast.outsiders[f"expired-{i}"] = make_wallet(
            issuer,
            f"x-expired-{i}",
            pop.DEFAULT_UNITS[0],
            "过期证",
            now=origin_s - 3 * DAY_S,
            days=1,
            seed=f"lunch-rush/{seed}/expired/{i}",
        )
    for i in range(1, hostile.count("forged_key") + 1):
        cast.outsiders[f"forged_key-{i}"] = make_wallet(
            forger,
            f"x-forged-{i}",
            pop.DEFAULT_UNITS[0],
            "伪造者",
            now=origin_s - DAY_S,
            seed=f"lunch-rush/{seed}/forged-key/{i}",
        )
    for i in range(1, hostile.count("forged_credential") + 1):
        # The trusted issuer's kid on claims the forger signed himself.
        holder = key_from_seed(f"lunch-rush/{seed}/forged-credential/{i}")
        claims = credential_claims(
            iss=issuer.iss,
            sub=f"x-forged-credential-{i}",
            unit=OWN_UNITS[0],
            display_name="冒名者",
            cti=rng.randbytes(12),
            iat=origin_s - DAY_S,
            exp=origin_s + 300 * DAY_S,
            holder_public=raw_public(holder),
        )
        credential = sign1(forger.key, protected_header(-8, issuer.kid), cbor2.dumps(claims))

        def forged(
            t: int, credential: bytes = credential, holder: Ed25519PrivateKey = holder
        ) -> str:
            return present(credential, holder, t=t, ctr=1)

        cast.forged_texts[f"forged_credential-{i}"] = forged
    for i in range(1, hostile.count("unknown_card") + 1):
        uid = rng.randbytes(5)
        known = {c.card_uid for c in cast.population.cards()}
        while uid in known:
            uid = rng.randbytes(5)
        cast.unknown_uids[f"unknown_card-{i}"] = uid


# --- what each presentation must get -------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    verdict: str
    reason: str | None = None
    amount_fen: int | None = None
    # Other reasons that are right too: a replay shown right at the end of its freshness
    # may be refused as stale before the replay check is reached.
    also: tuple[str, ...] = ()


class LunchModel:
    """The rules as the scenario knows them, applied presentation by presentation, in order."""

    def __init__(self, cast: Cast, speed: float) -> None:
        self.cast = cast
        self.speed = speed
        self.prices = PRICES_BEFORE
        self.served: set[str] = set()
        self.revoked_subs: set[str] = set(cast.revoked_at_start)
        self.revoked_uids: set[bytes] = set()
        self.ambiguous = 0

    def publish(self, subs: list[str], uids: list[str]) -> None:
        self.revoked_subs.update(subs)
        self.revoked_uids.update(bytes.fromhex(u) for u in uids)

    def _meal(self, sub: str) -> Expected:
        if sub in self.served:
            return Expected(REJECT, "already_served")
        self.served.add(sub)
        unit = self.cast.cadre(sub).unit
        own, visitor = self.prices
        return Expected(ACCEPT, None, own if unit in OWN_UNITS else visitor)

    def expect(self, a: Arrival, code_age_s: float | None) -> Expected:
        """What arrival ``a`` must get; ``code_age_s``: its code's age when it came into view."""
        if a.kind in FIXED_REASON:
            return Expected(REJECT, FIXED_REASON[a.kind])
        if a.kind == "replay":
            limit = WINDOW_S + SKEW_S
            assert code_age_s is not None
            decode_allowance = 0.25 * self.speed  # first frame in view to the decision
            if code_age_s >= limit:
                return Expected(REJECT, "presentation_stale")
            if code_age_s + decode_allowance < limit:
                return Expected(REJECT, "replayed")
            self.ambiguous += 1
            return Expected(REJECT, "replayed", also=("presentation_stale",))
        if a.method == "card":
            uid = self.cast.cadre(a.who).card_uid
            if uid in self.revoked_uids:
                return Expected(REJECT, "card_revoked")
            return self._meal(a.who)
        if a.who in self.revoked_subs:
            return Expected(REJECT, "revoked")
        return self._meal(a.who)


# --- the terminal under test -----------------------------------------------------------------


def settings_text(
    camera_url: str,
    reader_link: str,
    prices: tuple[int, int],
    speed: float,
    state_dir: str = "state",
) -> str:
    """The canteen's settings: a real day of meal windows, the simulators as devices, fast sync."""
    units = ", ".join(f'"{u}"' for u in OWN_UNITS)
    meals = meals_text(prices)
    return f"""# Written by hw-sim scenario lunch-rush.
[terminal]
id = "{TERMINAL_ID}"
state_dir = "{state_dir}"
timezone = "{TIMEZONE}"
language = "en"

[canteen]
id = "{CANTEEN_ID}"
name = "Lunch-rush canteen"
units = [{units}]

{meals}
[tokens]
window_s = {WINDOW_S}
skew_s = {SKEW_S}

[display]
port = 0
staff_pin = "2468"

[daemon]
camera = true
reader = true

[camera]
source = "{camera_url}"
fps = 15
same_text_s = {SAME_TEXT_S}

[reader]
port = "{reader_link}"
kind = "rdm6300"
card_leave_s = 0.5

# Real seconds: the sync runs on the real clock of this computer.
[sync]
interval_s = 2
jitter_s = 1
deadline_s = 4
connect_timeout_s = 2
read_timeout_s = 2
backoff_base_s = 1
backoff_cap_s = 2
# The clock offset's noise (half a round trip) is multiplied by the speed: record the
# county's time when it moved as much as 2 s would at real speed.
offset_record_ms = {int(2000 * speed)}
"""


def meals_text(prices: tuple[int, int]) -> str:
    """The canteen's meal windows and prices: in the local settings, and what county IT
    publishes to change the lunch prices (a published [[meals]] replaces them all)."""
    return f"""[[meals]]
name = "breakfast"
start = "07:00"
end = "09:00"
price_own_fen = 300
price_visitor_fen = 500

[[meals]]
name = "lunch"
start = "{LUNCH_OPENS:%H:%M}"
end = "{LUNCH_CLOSES:%H:%M}"
price_own_fen = {prices[0]}
price_visitor_fen = {prices[1]}

[[meals]]
name = "dinner"
start = "17:30"
end = "19:30"
price_own_fen = 800
price_visitor_fen = 1200
"""


class ScreenStream:
    """The screen's server-sent events as a page receives them: decisions, with arrival times."""

    def __init__(self, url: str) -> None:
        self.decisions: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._resp = urllib.request.urlopen(url.rstrip("/") + "/events", timeout=600)
        self._thread = threading.Thread(target=self._read, name="scenario-screen", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event = ""
        try:
            for raw in self._resp:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "decision":
                    arrived = time.time()
                    with self._cond:
                        self.decisions.append((arrived, json.loads(line[5:])))
                        self._cond.notify_all()
        except (OSError, ValueError):
            return

    def wait_for(self, index: int, timeout_s: float) -> tuple[float, dict[str, Any]] | None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.decisions) > index, timeout_s):
                return None
            return self.decisions[index]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._resp.close()


class RunningTerminal:
    """The real daemon in a thread, on the simulated clock, and a screen client reading it."""

    def __init__(self, settings_path: Path, clock: SimClock) -> None:
        from terminal import config
        from terminal.service import daemon

        # config_path: an applied settings set is merged over this file, live.
        self.daemon = daemon.Daemon(
            config.load(settings_path),
            wall_ms=clock.now_ms,
            notifier=daemon.Notifier(""),
            config_path=str(settings_path),
        )
        self.thread = threading.Thread(
            target=self.daemon.run, kwargs={"install_signals": False}, name="scenario-daemon"
        )
        self.stream: ScreenStream | None = None
        self.read_index = 0  # decisions of this stream already matched

    def start(self, timeout_s: float = 60.0) -> RunningTerminal:
        self.thread.start()
        d = self.daemon
        _wait(
            lambda: (
                d.screen is not None
                and d.camera is not None
                and d.camera.health().up
                and d.reader is not None
                and d.reader.health().up
            ),
            timeout_s,
            "the terminal's screen, camera and card reader",
            lambda: not self.thread.is_alive(),
        )
        self.stream = ScreenStream(d.screen.url)
        return self

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        if self.stream is not None:
            self.stream.close()
        if self.thread.is_alive():
            raise ScenarioError("the terminal daemon did not stop within 30 s")


def _wait(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    failed: Callable[[], bool] = lambda: False,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if failed():
            raise ScenarioError(f"gave up waiting for {what}: it stopped (see daemon.log)")
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out waiting for {what} (see daemon.log)")
        time.sleep(0.05)


# --- the record of a run --------------------------------------------------------------------


@dataclass
class RunRecord:
    """Everything a run produced that the checks and the report read; saved as run.json."""

    options: dict[str, Any]
    origin_ms: int
    presentations: list[dict[str, Any]] = field(default_factory=list)
    extra_decisions: list[dict[str, Any]] = field(default_factory=list)
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)
    county_entries: list[dict[str, Any]] = field(default_factory=list)
    ledger_verify: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    outage: dict[str, Any] = field(default_factory=dict)
    ambiguous: int = 0
    real_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the run itself went wrong

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        return cls(**json.loads(text))


class _Monitor:
    """Samples the queue, the terminal's backlog and the county's mark every 100 ms."""

    def __init__(self, clock: SimClock, county: Any, holder: dict[str, RunningTerminal]) -> None:
        self.clock = clock
        self.county = county
        self.holder = holder
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scenario-monitor", daemon=True)

    def start(self) -> _Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def county_acked(self) -> int:
        term = self.county.store.terminal(TERMINAL_ID)
        return int(term.acked_seq) if term is not None else 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            term = self.holder.get("terminal")
            snap = dict(term.daemon.worker.snapshot) if term is not None else {}
            queue = term.daemon.worker.queue.qsize() if term is not None else None
            self.samples.append(
                {
                    "real": time.time(),
                    "sim_ms": self.clock.now_ms(),
                    "queue": queue,
                    "unsynced": snap.get("unsynced"),
                    "last_seq": snap.get("last_seq"),
                    "county_acked": self.county_acked(),
                    "partitioned": self.county.partitioned,
                }
            )


# --- playing the lunch ----------------------------------------------------------------------


def _install_lists(state_dir: Path, cast: Cast, now: int) -> None:
    """The terminal's first lists, as 'canteen-terminal lists install' loads them."""
    from terminal import state, trust

    store = trust.TrustStore(state.prepare(state_dir).trust)
    try:
        header = trust.ListHeader(1, now - 60, None)
        store.replace_issuers(trust.parse_issuer_keys(cast.population.trust_entries()), header, now)
        revoked = [_credential_revocation(cast.cadre(sub).wallet) for sub in cast.revoked_at_start]
        store.replace_revocations(trust.parse_revocations(revoked), header, now)
        roster = trust.parse_roster_csv(cast.population.roster_csv())
        store.replace_roster(roster, header, now)
    finally:
        store.close()


def _credential_revocation(wallet: Wallet) -> dict[str, Any]:
    return {"kind": "credential", "iss": wallet.iss, "cti": wallet.cti.hex()}


def _init_updates(out: Path, county_data: Path, cast: Cast, now: int) -> int:
    """County IT's update repository, before the county server starts (it serves it at /tuf
    and starts its timestamp refresher only if it exists): the root keys in a folder of
    their own, and the first signed lists, the same the terminal is installed with.
    Returns the update set they make."""
    from county import updates as cu

    cu.init_repository(county_data, out / "county-root-keys-OFFLINE", now)
    trust_file = out / "published-trust.json"
    trust_file.write_text(json.dumps(cast.population.trust_entries()), encoding="utf-8")
    roster_file = out / "published-roster.csv"
    roster_file.write_text(cast.population.roster_csv(), encoding="utf-8")
    with cu.CountyRepository(county_data) as repo:
        pub = repo.publish_trust(trust_file, now)
        pub = repo.publish_roster(roster_file, now)
        if cast.revoked_at_start:
            pub = repo.revoke(
                [_credential_revocation(cast.cadre(s).wallet) for s in cast.revoked_at_start], now
            )
    return int(pub.snapshot_version)


def _serve_updates(county: Any) -> None:
    """Make sure the county serves its update repository at /tuf.

    CountyServer mounts it on the app it builds; CountySim with a ``clock`` swaps in an
    app of its own (``create_app`` on the simulated clock) that has no /tuf mount, so the
    repository is mounted on that app here, once, before any terminal asks for it."""
    from county import updates as cu

    app = getattr(getattr(county.server, "config", None), "app", None)
    app = getattr(app, "app", app)  # hwsim.county's swappable holder, around the clock's app
    routes = getattr(app, "routes", None)
    if routes is None or not hasattr(app, "mount"):
        raise ScenarioError("cannot reach the simulated county's app to serve /tuf")
    if not any(getattr(r, "path", "") == "/tuf/metadata" for r in routes):
        cu.mount_repository(app, county.data)


def _provision(county: Any, state_dir: Path, clock: SimClock) -> None:
    from county import updates as cu
    from terminal import state, sync
    from terminal import updates as tu
    from terminal.ledger import load_or_create_signing_key

    paths = state.prepare(state_dir)
    key = load_or_create_signing_key(paths.key)
    code = county.add_terminal(TERMINAL_ID, CANTEEN_ID, clock.now_ms())
    sync.provision(paths.root, county.url, code, key.public_key().public_bytes_raw())
    # The county's update root, pinned as 'canteen-terminal provision' pins it.
    tu.pin_root(state_dir, (cu.RepoPaths(county.data).metadata / "1.root.json").read_bytes())


@contextlib.contextmanager
def _daemon_log(path: Path) -> Iterator[None]:
    """The daemon's log lines go to a file in the run's folder, not over the report."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
        handler.close()


class Lunch:
    """One run of the scenario: set up the canteen, play the plan, collect the record."""

    def __init__(self, opts: Options, progress: Callable[[str], None] = lambda _s: None) -> None:
        opts.check()
        self.opts = opts
        self.progress = progress
        self.out = Path(opts.out)
        self.origin_ms = lunch_origin_ms(time.time())
        self.plan = make_plan(opts, self.origin_ms // 1000)
        self.record = RunRecord(
            options={k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
            origin_ms=self.origin_ms,
        )
        self.model = LunchModel(self.plan.cast, opts.speed)
        self._texts: dict[int, tuple[str, int, float]] = {}  # arrival -> (text, t, in view until)
        self._holder: dict[str, RunningTerminal] = {}
        self._last_seq = 0
        # Presentations made while the county was partitioned, and whether the queue is done.
        self._offline = threading.Condition()
        self._offline_count = 0
        self._queue_done = False
        self._update_pending = False  # published, and the queue waits until it is in force

    # -- the whole run --

    def run(self) -> RunRecord:
        from hwsim.camera import CameraSim
        from hwsim.county import CountySim
        from hwsim.reader import ReaderSim

        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with _daemon_log(self.out / "daemon.log"):
            clock = SimClock(self.origin_ms, self.opts.speed)
            self.clock = clock
            first_set = _init_updates(self.out, self.out / "county", self.plan.cast, clock.now_s())
            county = CountySim(
                self.out / "county",
                clock=clock.now_ms,
                partition_mode=self.opts.partition_mode,
                seed=0,
            ).start()
            _serve_updates(county)
            camera = CameraSim(
                port=0,
                fps=15,
                size=(960, 540),
                hold_s=self.opts.hold_s,
                gap_s=self.opts.gap_s,
                seed=7,
                lifetime_s=7200,
            ).start()
            reader = ReaderSim("rdm6300", self.out / "reader", lifetime_s=7200).start()
            self.county, self.camera, self.reader = county, camera, reader
            monitor: _Monitor | None = None
            try:
                state_dir = self.out / "state"
                _provision(county, state_dir, clock)
                _install_lists(state_dir, self.plan.cast, clock.now_s())
                self.settings_path = self.out / "terminal.toml"
                self.settings_path.write_text(
                    settings_text(camera.url, str(reader.link), PRICES_BEFORE, self.opts.speed),
                    encoding="utf-8",
                )
                self._start_terminal()
                # The first signed set (the same lists) is in force before the lunch opens.
                first = self._wait_applied(first_set, "the first signed update set")
                self._event("first_set", **first)
                monitor = _Monitor(clock, county, self._holder).start()
                self._play()
                self._drain(monitor)
            finally:
                if monitor is not None:
                    monitor.stop()
                    self.record.samples = monitor.samples
                term = self._holder.pop("terminal", None)
                if term is not None:
                    term.stop()
                    self._collect_unmatched(term)
                camera.stop()
                reader.stop()
            try:
                self._final_sync(state_dir)
                self._collect(state_dir)
            finally:
                county.stop()
        self.record.ambiguous = self.model.ambiguous
        self.record.real_seconds = round(time.monotonic() - started, 1)
        (self.out / "run.json").write_text(self.record.to_json(), encoding="utf-8")
        return self.record

    def _start_terminal(self) -> None:
        term = RunningTerminal(self.settings_path, self.clock).start()
        self._holder["terminal"] = term

    def _event(self, kind: str, **extra: Any) -> None:
        self.record.events.append(
            {"kind": kind, "sim_ms": self.clock.now_ms(), "real": time.time(), **extra}
        )

    # -- the timeline --

    def _play(self) -> None:
        opened_ms = self.origin_ms + _seconds_between(ORIGIN, LUNCH_OPENS) * 1000
        self.opened_ms = opened_ms
        total = len(self.plan.arrivals)
        stop = threading.Event()
        outage = threading.Thread(target=self._outage, args=(stop,), name="scenario-outage")
        outage.start()
        try:
            for item in self.plan.timeline():
                self.clock.wait_until(opened_ms + int(item.at_s * 1000))
                if isinstance(item, WorldEvent):
                    self._world(item)
                    continue
                self._present(item)
                done = item.n + 1
                if done % 25 == 0 or done == total:
                    now = self._local(self.clock.now_ms())
                    self.progress(f"  {done}/{total} presented, simulated {now}")
            with self._offline:
                self._queue_done = True
                self._offline.notify_all()
            outage.join()  # a lunch shorter than its outage still ends with the network back
        finally:
            stop.set()
            with self._offline:
                self._offline.notify_all()
            outage.join()

    def _local(self, sim_ms: int) -> str:
        zone = zoneinfo.ZoneInfo(TIMEZONE)
        return dt.datetime.fromtimestamp(sim_ms / 1000, zone).strftime("%H:%M:%S")

    def _outage(self, stop: threading.Event) -> None:
        """The network goes down and comes back on the simulated clock, whoever is at the
        counter, with two exceptions that keep the outage meaningful when the cadres' queue
        runs late (a loaded computer, a slow update):

        - it does not start while a published update is still on its way to the terminal
          (the queue waits for it, and would wait for the whole outage);
        - it lasts at least its planned length and ends only once ``min_offline`` cadres
          were served offline, the queue is done, or the queue is waiting for an update.

        The record keeps the real times, so the report gives the outage as it was."""
        when = {e.kind: e.at_s for e in self.plan.events}
        if OUTAGE_START not in when or OUTAGE_END not in when:
            return
        self.clock.wait_until(self.opened_ms + int(when[OUTAGE_START] * 1000), stop)
        with self._offline:
            self._offline.wait_for(
                lambda: stop.is_set() or not self._update_pending, timeout=OUTAGE_WAIT_S
            )
        if stop.is_set():
            return
        started_ms = self.clock.now_ms()
        self._partition(True)
        planned_end = self.opened_ms + int(when[OUTAGE_END] * 1000)
        self.clock.wait_until(max(planned_end, started_ms + int(self.opts.outage_s * 1000)), stop)
        with self._offline:
            self._offline.wait_for(
                lambda: (
                    stop.is_set()
                    or self._queue_done
                    or self._update_pending
                    or self._offline_count >= self.opts.min_offline
                ),
                timeout=OUTAGE_WAIT_S,
            )
        self._partition(False)  # even when stopping: the lunch ends with the network back

    def _partition(self, down: bool) -> None:
        self.county.set_partition(down)
        term = self._holder.get("terminal")
        last = term.daemon.worker.snapshot.get("last_seq") if term is not None else None
        self._event(OUTAGE_START if down else OUTAGE_END, last_seq=last)
        what = "network down (county partitioned)" if down else "network back"
        self.progress(f"  {self._local(self.clock.now_ms())} {what}")

    def _world(self, event: WorldEvent) -> None:
        with self._offline:
            self._update_pending = True
            self._offline.notify_all()  # an outage waiting to end must see the queue wait
        try:
            if event.kind == SETTINGS:
                self._change_settings()
            elif event.kind == REVOCATION:
                self._publish_revocation()
        finally:
            with self._offline:
                self._update_pending = False
                self._offline.notify_all()

    def _publish(self, publish: Callable[[Any, int], Any]) -> tuple[int, int, float, int]:
        """County IT publishes one signed change, signed at the simulated time; the set it
        makes, the simulated and real time of the publication, and the revocation count."""
        from county import updates as cu

        now = self.clock.now_s()
        with cu.CountyRepository(self.county.data) as repo:
            pub = publish(repo, now)
            count = repo.revocation_count()
        return int(pub.snapshot_version), self.clock.now_ms(), time.time(), count

    def _wait_applied(self, set_version: int, what: str) -> dict[str, Any]:
        """Wait until the daemon has applied update set ``set_version`` or a later one (it
        fetches after each sync and applies between two decisions): the next cadre is served
        under it. Nobody is presented meanwhile; the queue runs late if it takes long. While
        the county is partitioned the wait goes on: the set comes after the network."""
        term = self._holder["terminal"]
        t0 = time.monotonic()
        deadline = t0 + 60
        while True:
            applied = term.daemon.worker.call(lambda c: c.trust.applied_update_set())
            if applied is not None and int(applied["set"]) >= set_version:
                return {
                    "set": int(applied["set"]),
                    "wait_real_s": round(time.monotonic() - t0, 2),
                    "applied_seen_sim_ms": self.clock.now_ms(),
                }
            if self.county.partitioned:
                deadline = time.monotonic() + 60
            if time.monotonic() > deadline or not term.thread.is_alive():
                self.record.problems.append(
                    f"{what} (update set {set_version}) was not applied within 60 real s"
                )
                return {"set": None, "wait_real_s": round(time.monotonic() - t0, 2)}
            time.sleep(0.05)

    def _change_settings(self) -> None:
        """Lunch prices change: county IT publishes this canteen's new [[meals]] as a signed
        settings update; the daemon applies it between two decisions, without a restart."""
        file = self.out / "published-settings-v2.toml"
        file.write_text(
            "# Published by county IT for this canteen (hw-sim scenario lunch-rush).\n"
            + meals_text(PRICES_AFTER),
            encoding="utf-8",
        )
        set_version, sim_ms, real, _ = self._publish(
            lambda repo, now: repo.publish_settings(file, CANTEEN_ID, now)
        )
        self.progress(
            f"  {self._local(sim_ms)} settings published (lunch {PRICES_AFTER[0]} / "
            f"{PRICES_AFTER[1]} fen), update set {set_version}"
        )
        applied = self._wait_applied(set_version, "the settings change")
        self.model.prices = PRICES_AFTER
        self.record.events.append(
            {
                "kind": SETTINGS,
                "sim_ms": sim_ms,
                "real": real,
                "published_set": set_version,
                "prices": list(PRICES_AFTER),
                **applied,
            }
        )
        self.progress(
            f"  {self._local(self.clock.now_ms())} settings set {applied['set']} in force "
            f"{applied['wait_real_s']:.1f} real s after publication"
        )

    def _publish_revocation(self) -> None:
        """County IT revokes one credential and one card (token-format.md §5 entries) through
        the signed revocation shards; the daemon applies them between two decisions."""
        entries = [
            *(
                _credential_revocation(self.plan.cast.cadre(s).wallet)
                for s in self.plan.revoke_subs
            ),
            *({"kind": "card", "uid": u} for u in self.plan.revoke_uids),
        ]
        (self.out / "published-revocations.json").write_text(
            json.dumps(entries, indent=1), encoding="utf-8"
        )
        set_version, sim_ms, real, count = self._publish(
            lambda repo, now: repo.revoke(entries, now)
        )
        self.progress(
            f"  {self._local(sim_ms)} revocation published ({len(entries)} new, {count} in "
            f"all), update set {set_version}"
        )
        applied = self._wait_applied(set_version, "the revocation")
        self.model.publish(self.plan.revoke_subs, self.plan.revoke_uids)
        self.record.events.append(
            {
                "kind": REVOCATION,
                "sim_ms": sim_ms,
                "real": real,
                "published_set": set_version,
                "entries": len(entries),
                "revocations": count,
                **applied,
            }
        )
        self.progress(
            f"  {self._local(self.clock.now_ms())} revocation set {applied['set']} in force "
            f"{applied['wait_real_s']:.1f} real s after publication"
        )

    # -- one presentation --

    def _text_for(self, a: Arrival, t: int) -> str:
        cast = self.plan.cast
        if a.kind in ("forged_key", "expired"):
            return cast.outsiders[a.who].draw(t)
        if a.kind == "forged_credential":
            return cast.forged_texts[a.who](t)
        if a.kind == "forged_presentation":
            wallet = cast.cadre(a.who).wallet
            thief = key_from_seed(f"lunch-rush/{self.opts.seed}/thief/{a.n}")
            return present(wallet.credential, thief, t=t, ctr=wallet.ctr + 1)
        return cast.cadre(a.who).wallet.draw(t)

    def _present(self, a: Arrival) -> None:
        term = self._holder["terminal"]
        code_age: float | None = None
        if a.method == "qr":
            if a.kind == "replay":
                assert a.ref is not None and a.ref in self._texts
                text, t, out_of_view = self._texts[a.ref]
                # The camera ignores a text seen again within same_text_s of its last sighting.
                time.sleep(max(0.0, out_of_view + SAME_TEXT_S + 0.3 - time.time()))
            else:
                t = self.clock.now_s()
                text = self._text_for(a, t)
            answer = self.camera.show(text, wait=True, timeout_s=60)
            shown = float(answer["started_at"])
            self._texts[a.n] = (text, t, shown + self.opts.hold_s)
            code_age = (self.clock.of_real(shown) - t * 1000) / 1000
            marks = qr_marks(text, self._wallet_of(a))
        else:
            uid = (
                self.plan.cast.unknown_uids[a.who]
                if a.kind == "unknown_card"
                else self.plan.cast.cadre(a.who).card_uid
            )
            assert uid is not None
            shown = time.time()
            self.reader.swipe(uid)
            marks = {("credential", card_ref(uid))}
        offline = self.county.partitioned
        if offline:
            with self._offline:
                self._offline_count += 1
                self._offline.notify_all()
        expected = self.model.expect(a, code_age)
        row: dict[str, Any] = {
            "n": a.n,
            "kind": a.kind,
            "method": a.method,
            "who": a.who,
            "ref": a.ref,
            "planned_sim_ms": self.opened_ms + int(a.at_s * 1000),
            "presented_sim_ms": self.clock.of_real(shown),
            "presented_real": shown,
            "code_age_s": code_age,
            "offline": offline,
            "expected_verdict": expected.verdict,
            "expected_reason": expected.reason,
            "expected_amount_fen": expected.amount_fen,
            "expected_also": list(expected.also),
            "seq": None,
            "verdict": None,
            "reason": None,
            "amount_fen": None,
            "decision_method": None,
            "latency_ms": None,
        }
        got = self._decision_for(term, a.n, marks, timeout_s=10.0)
        if got is not None:
            arrived, view = got
            row.update(
                seq=view.get("seq"),
                verdict=view.get("verdict"),
                reason=view.get("reason"),
                amount_fen=view.get("amount_fen"),
                decision_method=view.get("method"),
                latency_ms=round((arrived - shown) * 1000, 1),
                decided_sim_ms=self.clock.of_real(arrived),
            )
        self.record.presentations.append(row)

    def _wallet_of(self, a: Arrival) -> Wallet | None:
        """The real wallet behind a QR presentation (None for outsiders and forgeries)."""
        if a.kind in ("forged_key", "expired", "forged_credential"):
            return None
        return self.plan.cast.cadre(a.who).wallet

    def _decision_for(
        self, term: RunningTerminal, n: int, marks: set[tuple[str, str]], timeout_s: float
    ) -> tuple[float, dict[str, Any]] | None:
        """The decision the terminal made for presentation ``n``: the next one on the screen
        stream whose ledger entry carries one of the presentation's ``marks`` (the code's
        text or digest, the credential, the card). Any other decision that comes meanwhile
        (a code the camera misread, a swipe nobody made) is recorded as one no presentation
        asked for, so that one stray verdict is one failure and does not shift the rest."""
        assert term.stream is not None
        deadline = time.monotonic() + timeout_s
        while True:
            got = term.stream.wait_for(term.read_index, max(0.0, deadline - time.monotonic()))
            if got is None:
                return None
            term.read_index += 1
            seq = got[1].get("seq") or 0
            if seq <= self._last_seq:  # a screen that connects is shown the last verdict again
                continue
            self._last_seq = seq
            entry = _read_entry(term, seq)
            if entry is not None and entry_marks(entry) & marks:
                return got
            self.record.extra_decisions.append({"real": got[0], **got[1], "while_presenting": n})

    def _collect_unmatched(self, term: RunningTerminal) -> None:
        if term.stream is None:
            return
        for arrived, view in term.stream.decisions[term.read_index :]:
            if (view.get("seq") or 0) > self._last_seq:
                self.record.extra_decisions.append({"real": arrived, **view})
        term.read_index = len(term.stream.decisions)

    # -- after the last cadre --

    def _drain(self, monitor: _Monitor) -> None:
        """Wait until the county holds everything the terminal wrote (or 60 real seconds)."""
        term = self._holder["terminal"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = term.daemon.worker.snapshot
            last = snap.get("last_seq") or 0
            if snap.get("unsynced") == 0 and monitor.county_acked() >= last:
                self._event("drained", last_seq=last)
                return
            time.sleep(0.2)
        self.record.problems.append(
            "the terminal's backlog did not reach the county within 60 s after the last cadre"
        )

    def _final_sync(self, state_dir: Path) -> None:
        """Entries written while the daemon stopped (none expected) are uploaded once more,
        without touching the ledger, so the county comparison covers the whole ledger."""
        from terminal import sync

        identity = sync.load_identity(state_dir)
        client = sync.SyncClient(
            state_dir / "ledger.sqlite",
            identity,
            sync.SyncSettings(deadline_s=10, connect_timeout_s=3, read_timeout_s=5),
            wall_ms=self.clock.now_ms,
        )
        result = client.sync_once(time.monotonic() + 10)
        if not result.complete:
            self.record.problems.append(f"the final sync did not complete: {result.error}")

    def _collect(self, state_dir: Path) -> None:
        import io

        from terminal import ledger

        book = state_dir / "ledger.sqlite"
        report = ledger.verify_file(book)
        self.record.ledger_verify = {
            "ok": report.ok,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "problem": report.problem,
        }
        out = io.StringIO()
        ledger.export_file(book, "jsonl", out)
        self.record.ledger_entries = [json.loads(line) for line in out.getvalue().splitlines()]
        self.record.county_entries = list(self.county.store.iter_entries(TERMINAL_ID))
        start = next((e for e in self.record.events if e["kind"] == OUTAGE_START), None)
        end = next((e for e in self.record.events if e["kind"] == OUTAGE_END), None)
        if start is not None and end is not None:
            self.record.outage = {
                "start_sim_ms": start["sim_ms"],
                "end_sim_ms": end["sim_ms"],
                "start_real": start["real"],
                "end_real": end["real"],
                "last_seq_at_end": end.get("last_seq"),
            }


def qr_marks(text: str, wallet: Wallet | None) -> set[tuple[str, str]]:
    """What a ledger entry for this code carries: the text itself (an accepted sale), its
    digest (a refusal before the credential is trusted), or the credential (a verified code
    refused for a reason of its own, such as a second meal)."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
    marks: set[tuple[str, str]] = {("qr", text), ("qr_sha256", digest)}
    if wallet is not None:
        marks.add(("credential", credential_ref(wallet.iss, wallet.cti)))
    return marks


def _read_entry(term: RunningTerminal, seq: int) -> LedgerEntry | None:
    """Entry ``seq`` as the decision worker sees it (read between two decisions)."""
    found: LedgerEntry | None = term.daemon.worker.call(lambda c: c.ledger.entry(seq))
    return found


def entry_marks(entry: LedgerEntry) -> set[tuple[str, str]]:
    detail = entry.detail
    marks: set[tuple[str, str]] = {(k, str(detail[k])) for k in ("qr", "qr_sha256") if k in detail}
    if entry.credential:
        marks.add(("credential", str(entry.credential)))
    return marks


def _seconds_between(a: dt.time, b: dt.time) -> int:
    return (b.hour - a.hour) * 3600 + (b.minute - a.minute) * 60 + (b.second - a.second)
