"""The lunch-rush scenario's expected-verdict model: what each presentation must get.

This module owns the rules as the scenario knows them, applied presentation by
presentation in the order they reach the counter: the fixed refusals of the
hostile kinds, once per lunch for each cadre, the price tier of each diner at
this canteen (the protocol's rule, Directory.tier, on the directory the county
published) and that tier's price in the settings in force
(MealWindow.price_for), the credentials and cards revoked so far, and the
replay shown at the edge of its freshness (where two refusals are both
right). ``Lunch`` tells it when a
publication is in force; it reads no clock, no terminal and no file, and it
never looks at what the terminal decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwsim.scenario.plan import (
    PRICES_BEFORE,
    SKEW_S,
    WINDOW_S,
    Arrival,
    Cast,
    Seating,
    lunch_window,
)

ACCEPT = "accept"
REJECT = "reject"

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


@dataclass(frozen=True)
class Expected:
    verdict: str
    reason: str | None = None
    amount_fen: int | None = None
    # Other reasons that are right too: a replay shown right at the end of its freshness
    # may be refused as stale before the replay check is reached.
    also: tuple[str, ...] = ()
    tier: str | None = None  # an accepted sale's price tier (protocol/agencies.py TIERS)


class LunchModel:
    """The rules as the scenario knows them, applied presentation by presentation, in order."""

    def __init__(self, cast: Cast, speed: float, seating: Seating) -> None:
        self.cast = cast
        self.speed = speed
        self.seating = seating
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
        tier = self.seating.tier(self.cast.cadre(sub).unit)
        return Expected(ACCEPT, None, lunch_window(self.prices).price_for(tier), tier=tier)

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
