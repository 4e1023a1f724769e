"""The simulator's wallets: cadres enrolled on new phones, and a static keyring.

This module owns what the simulator, the tests and the benchmarks add to the
issuing side of QR token v1 (protocol/issue.py, which it re-exports for them):
``make_wallet`` enrols a cadre on a phone with a random (or seeded) holder key
and credential id, and ``StaticKeyring`` is a fixed set of trusted keys to
verify against. The token bytes themselves are built in protocol/issue.py. It
must never be imported by the terminal: the terminal only verifies, and nothing
here is hardened against hostile input.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.issue import (
    CANTEEN_CLAIM,
    DAY_S,
    Issuer,
    Wallet,
    credential_claims,
    cti_from_seed,
    enrol,
    issue_claims,
    issue_credential,
    key_from_seed,
    kid_of,
    present,
    protected_header,
    qr_text,
    raw_public,
    sign1,
)
from protocol.tokens import IssuerKey

__all__ = [
    "CANTEEN_CLAIM",
    "DAY_S",
    "Issuer",
    "StaticKeyring",
    "Wallet",
    "credential_claims",
    "issue_claims",
    "issue_credential",
    "key_from_seed",
    "kid_of",
    "make_wallet",
    "present",
    "protected_header",
    "qr_text",
    "raw_public",
    "sign1",
]


def make_wallet(
    issuer: Issuer,
    sub: str,
    unit: str,
    display_name: str,
    *,
    now: int,
    days: int = 365,
    allowance: tuple[int | None, int | None] | None = None,
    seed: str | None = None,
) -> Wallet:
    """Enrol a cadre: a credential valid from ``now`` for ``days`` days, on a new phone.

    With a ``seed`` the holder key is ``key_from_seed(seed)`` and the cti is the
    first 12 bytes of SHA-256 of ``"cti:" + seed``, so the same seed gives the
    same wallet; without one both are random.
    """
    if seed is None:
        holder_key = Ed25519PrivateKey.generate()
        cti = secrets.token_bytes(12)
    else:
        holder_key = key_from_seed(seed)
        cti = cti_from_seed(seed)
    return enrol(
        issuer,
        sub,
        unit,
        display_name,
        holder_key=holder_key,
        cti=cti,
        now=now,
        days=days,
        allowance=allowance,
    )


# --- a keyring to verify against ----------------------------------------------


class StaticKeyring:
    """A fixed set of trusted issuer keys and revoked issuer keys (tests, benches, sim).

    The terminal's real keyring is its trust state; this one only satisfies
    the ``IssuerKeyring`` protocol.
    """

    def __init__(self, keys: Iterable[IssuerKey] = (), revoked: Iterable[bytes] = ()) -> None:
        self._by_kid: dict[bytes, list[IssuerKey]] = {}
        for key in keys:
            self._by_kid.setdefault(key.kid, []).append(key)
        self._revoked = set(revoked)

    @classmethod
    def from_trust_entries(
        cls, entries: Iterable[Mapping[str, Any]], revoked: Iterable[bytes] = ()
    ) -> StaticKeyring:
        """A keyring from §5 trust-list entries (hex fields)."""
        keys = [
            IssuerKey(
                iss=entry["iss"],
                kid=bytes.fromhex(entry["kid"]),
                public_key=bytes.fromhex(entry["public_key"]),
                not_before=entry.get("not_before"),
                not_after=entry.get("not_after"),
            )
            for entry in entries
        ]
        return cls(keys, revoked)

    def revoke(self, public_key: bytes) -> None:
        self._revoked.add(public_key)

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        return self._by_kid.get(kid, ())

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        return public_key in self._revoked
