"""The simulator's wallets: cadres enrolled on new phones, and a static keyring.

This module owns what the simulator, the tests and the benchmarks add to the
issuing side of QR token v1 (protocol/issue.py, which it re-exports for them):
``make_wallet`` enrols a cadre on a phone with a random (or seeded) holder key,
Ed25519 or SM2 (token.md §7), and credential id, and ``StaticKeyring`` is a fixed
set of trusted keys to verify against. The token bytes themselves are built in protocol/issue.py. It
must never be imported by the terminal: the terminal only verifies, and nothing
here is hardened against hostile input.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from protocol.issue import (
    ALGS,
    CANTEEN_CLAIM,
    DAY_S,
    ED25519,
    SM2,
    Issuer,
    SigningKey,
    Wallet,
    alg_name,
    cose_alg,
    credential_claims,
    cti_from_seed,
    enrol,
    generate_key,
    issue_claims,
    issue_credential,
    key_from_private_bytes,
    key_from_seed,
    kid_of,
    present,
    private_bytes,
    protected_header,
    qr_text,
    raw_public,
    sign1,
    signing_key_from_seed,
    sm2_key_from_seed,
)
from protocol.lists import issuer_key
from protocol.tokens import IssuerKey

__all__ = [
    "ALGS",
    "CANTEEN_CLAIM",
    "DAY_S",
    "ED25519",
    "SM2",
    "Issuer",
    "SigningKey",
    "StaticKeyring",
    "Wallet",
    "alg_name",
    "cose_alg",
    "credential_claims",
    "generate_key",
    "issue_claims",
    "issue_credential",
    "key_from_private_bytes",
    "key_from_seed",
    "kid_of",
    "make_wallet",
    "present",
    "private_bytes",
    "protected_header",
    "qr_text",
    "raw_public",
    "sign1",
    "signing_key_from_seed",
    "sm2_key_from_seed",
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
    alg: str = ED25519,
) -> Wallet:
    """Enrol a cadre: a credential valid from ``now`` for ``days`` days, on a new phone
    whose holder key is of algorithm ``alg`` (``ED25519`` or ``SM2``; the issuer's key
    may be either).

    With a ``seed`` the holder key is ``signing_key_from_seed(seed, alg)`` and the cti
    is the first 12 bytes of SHA-256 of ``"cti:" + seed``, so the same seed gives the
    same wallet (an SM2 credential's signature differs, its nonce is fresh); without
    one both are random.
    """
    holder_key: SigningKey
    if seed is None:
        holder_key = generate_key(alg)
        cti = secrets.token_bytes(12)
    else:
        holder_key = signing_key_from_seed(seed, alg)
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
        """A keyring from §5 trust-list entries (hex fields; an SM2 key is its 65-byte point)."""
        keys = [
            issuer_key(
                entry["iss"],
                bytes.fromhex(entry["kid"]),
                bytes.fromhex(entry["public_key"]),
                entry.get("not_before"),
                entry.get("not_after"),
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
