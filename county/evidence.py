"""What the county accepts as proof that a cadre ate: the checks behind every conflict.

This module owns one judgement: is an accepted sale, as a terminal uploaded it,
evidence the county may act on? A QR sale is evidence only when the phone's
signed code kept in its ``detail`` verifies again here (credential under an
issuer key the county knows and that was valid at the sale's time, the
presentation under the credential's holder key) and names the same cadre,
credential, counter and unit as the entry. A terminal can write any field of
its own entries, so without this check a stolen terminal could name any
cadre's credential and get that cadre revoked. A card sale carries no
signature of the cadre: it is evidence about the card only, and the conflicts
it takes part in revoke the card, never the cadre's phone credential.

It is pure: no database, network or clock. The store hands it the entry's
fields and a keyring, and records what it says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from protocol import tokens
from protocol.lists import TrustError, parse_revocations
from protocol.tokens import IssuerKey, TokenRejected

QR = "qr"
CARD = "card"

# A code's own time ``t`` (the phone's, signed) must lie within this of the sale's
# time. An honest terminal accepts a code only within its freshness window of its
# own trusted time, which is the entry's time (60 s + 30 s skew by default), so
# its sales always pass; a terminal that re-used a code it once saw cannot move
# it to another hour, where it could make a cadre's other meal look like a second.
EVIDENCE_CLOCK_S = 600


class Keyring(Protocol):
    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]: ...


class Lists(Protocol):
    """What county IT published (county/published.py)."""

    def meals_near(self, canteen: str, at_s: int) -> set[tuple[str, str]] | None: ...

    def card_holder(self, uid: bytes) -> tuple[bool, str | None]: ...


class Unjudged(str):
    """A sale the county has nothing to judge by (no roster published for a card):
    neither evidence nor a fault of the terminal."""


@dataclass(frozen=True)
class Proof:
    """An accepted sale the county verified: who ate, by which means."""

    method: str  # QR or CARD
    cadre: str
    credential: str
    name: str | None = None  # the display name the issuer signed (QR only)
    t: int = 0  # when it happened: the phone's signed time (QR), the entry's time (card)
    issuer_key: bytes | None = None  # the raw issuer key the code verified with (QR only)


class _AtTheTime:
    """The county's keys for token checks: a key revoked since still proves older sales.

    The keyring gives each key its algorithm already (county/conflicts.py's Keyring
    reads the issuer_keys table through protocol.lists.issuer_key), so SM2 codes
    verify here as on a terminal."""

    def __init__(self, keys: Keyring) -> None:
        self.keys = keys

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        return self.keys.issuer_keys(kid)

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        return False


def check_sale(
    fields: Mapping[str, Any], keys: Keyring, canteen: str = "", lists: Lists | None = None
) -> Proof | str:
    """The proof in one accepted sale (ledger field names) at ``canteen``, or one line
    saying why not (an ``Unjudged`` line when the county has nothing to judge it by)."""
    proof = _proof(fields, keys, lists)
    if isinstance(proof, str) or lists is None:
        return proof
    # The meal's name is the terminal's word: it must be the meal the canteen serves at
    # the sale's time, as county IT published the windows (a QR sale's time is tied to
    # the phone's signature, so a breakfast code cannot become "lunch").
    served = lists.meals_near(canteen, int(fields["at_ms"]) // 1000)
    claimed = (fields.get("day"), fields.get("meal"))
    if served is not None and claimed not in served:
        shown = ", ".join(f"{m} on {d}" for d, m in sorted(served)) or "no meal"
        return (
            f"the entry says {claimed[1]} on {claimed[0]}, but at its time canteen "
            f"{canteen} serves {shown}"
        )
    return proof


def _proof(fields: Mapping[str, Any], keys: Keyring, lists: Lists | None) -> Proof | str:
    method = fields.get("method")
    cadre = fields.get("cadre")
    credential = fields.get("credential")
    if not isinstance(cadre, str) or not isinstance(credential, str):
        return "the accepted sale names no cadre or credential"
    if method == CARD:
        if not credential.startswith("card/"):
            return f"a card sale must name a card credential, not {credential[:60]!r}"
        try:
            # A UID the terminals' revocation list would refuse could never be revoked,
            # and one such entry would stop the whole list from being published.
            list(parse_revocations([{"kind": "card", "uid": credential[5:]}]))
        except TrustError:
            return f"{credential[:60]!r} is not a card UID (4 to 10 bytes of hex)"
        roster, holder = (
            (False, None) if lists is None else lists.card_holder(bytes.fromhex(credential[5:]))
        )
        if not roster:
            return Unjudged("no card roster is published: the county cannot tell whose card")
        if holder != cadre:
            return (
                f"card {credential[5:]} belongs to {holder or 'nobody'} in the published "
                f"roster, not to {cadre[:60]}"
            )
        return Proof(CARD, cadre, credential, None, int(fields["at_ms"]) // 1000)
    if method != QR:
        return f"an accepted sale by {str(method)[:20]!r} is neither a QR code nor a card"
    try:
        detail = json.loads(fields.get("detail") or "{}")
    except (ValueError, RecursionError):
        return "the sale's detail is not JSON the county can read"
    text = detail.get("qr") if isinstance(detail, dict) else None
    if not isinstance(text, str):
        return "the QR sale does not keep the phone's signed code"
    at_s = int(fields["at_ms"]) // 1000
    try:
        # Freshness as token.md step 5 reads it: stale when t < now - window - skew, from
        # the future when t > now + skew; so no window and a skew of EVIDENCE_CLOCK_S
        # is exactly "within EVIDENCE_CLOCK_S of the entry's time, either way".
        p = tokens.verify_presentation(text, at_s, _AtTheTime(keys), 0, EVIDENCE_CLOCK_S)
    except TokenRejected as rejected:
        return f"the phone's signed code does not verify here ({rejected.code})"
    signed_cadre = f"{p.iss}/{p.sub}"
    signed_credential = f"qr/{p.iss}/{p.cti.hex()}"
    signed: dict[str, object] = {
        "cadre": signed_cadre,
        "credential": signed_credential,
        "ctr": p.ctr,
        "unit": p.unit,
    }
    for name, value in signed.items():
        if fields.get(name) != value:
            return (
                f"the entry's {name} {str(fields.get(name))[:60]!r} is not the one the phone "
                f"signed ({str(value)[:60]!r})"
            )
    return Proof(QR, signed_cadre, signed_credential, p.display_name, p.t, p.issuer_key)


__all__ = ["CARD", "EVIDENCE_CLOCK_S", "QR", "Keyring", "Lists", "Proof", "Unjudged", "check_sale"]
