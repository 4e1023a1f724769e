"""QR token v1 (docs/token-format.md): parse and verify a cadre's presentation.

This module owns steps 1 to 5 of the token checks: the text, strict CBOR and
COSE structure, the issuer key, the credential and presentation signatures, and
freshness. Replay (step 6) and revocation (step 7) need the terminal's memory
and are done by the caller (terminal/checkout.py). It never does I/O, never
reads a clock (``now`` is an argument) and never lets an exception other than
``TokenRejected`` escape, whatever the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Token-level reason codes, fixed by the spec (§4).
MALFORMED = "malformed"
UNSUPPORTED_ALG = "unsupported_alg"
UNKNOWN_ISSUER_KEY = "unknown_issuer_key"
BAD_CREDENTIAL_SIGNATURE = "bad_credential_signature"
BAD_PRESENTATION_SIGNATURE = "bad_presentation_signature"
CREDENTIAL_EXPIRED = "credential_expired"
CREDENTIAL_NOT_YET_VALID = "credential_not_yet_valid"
PRESENTATION_STALE = "presentation_stale"
PRESENTATION_FROM_FUTURE = "presentation_from_future"
REPLAYED = "replayed"
REVOKED = "revoked"

MAX_QR_TEXT = 1200
PREFIX = "CT1:"


class TokenRejected(Exception):
    """A presentation failed a token check; ``code`` is one of the spec's codes."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class IssuerKey:
    """One trusted issuer public key with its own validity window (Unix seconds)."""

    iss: str
    kid: bytes
    public_key: bytes  # raw 32-byte Ed25519
    not_before: int | None = None
    not_after: int | None = None


class IssuerKeyring(Protocol):
    """What the token checks need from the trust state."""

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        """Every trusted key with this kid (two keys may share a kid)."""
        ...

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        """True when the revocation list names this issuer key."""
        ...


@dataclass(frozen=True)
class Allowance:
    """The issuer's offline cap for this credential; None means no cap from the issuer."""

    meals_per_day: int | None = None
    fen_per_day: int | None = None


@dataclass(frozen=True)
class Presentation:
    """A presentation that passed steps 1 to 5: every field comes from verified bytes."""

    iss: str
    sub: str
    cti: bytes
    ctr: int
    t: int
    iat: int
    exp: int
    unit: str
    display_name: str
    allowance: Allowance | None
    holder_key: bytes  # raw 32-byte Ed25519 cnf key
    issuer_key: bytes  # raw 32-byte Ed25519 key that verified the credential
