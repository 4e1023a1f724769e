"""QR token v1, the issuing side: keys, credentials, presentations and their QR text.

This module owns making token bytes the way docs/token-format.md describes them:
the spec's kid and seeded keys, an issuer's trust entry, credential claims, the
COSE_Sign1 an issuer or a phone signs, a presentation and its ``CT1:`` text, and
a wallet that draws codes with its counter. It is pure: every key, seed and time
is an argument, nothing is random, and nothing is read, written or kept outside
the objects it returns. Its lower-level pieces (``sign1``, ``protected_header``,
``issue_claims``, ``present``) sign whatever they are given, so tests can build
hostile tokens that pass signatures; nothing here reads or checks a code
(protocol/tokens.py does). The terminal uses it only in its demo command; the
simulator (hwsim) and the tests build their tokens with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import base45
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol.tokens import PREFIX, IssuerKey

DAY_S = 86_400
CANTEEN_CLAIM = -65537


# --- keys -------------------------------------------------------------------


def key_from_seed(seed: str) -> Ed25519PrivateKey:
    """The Ed25519 key whose private bytes are SHA-256 of the UTF-8 seed (the vectors' rule)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode("utf-8")).digest())


def cti_from_seed(seed: str) -> bytes:
    """A seeded credential id: the first 12 bytes of SHA-256 of ``"cti:" + seed``."""
    return hashlib.sha256(f"cti:{seed}".encode()).digest()[:12]


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key of a private or public Ed25519 key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw()


def kid_of(public_key_raw: bytes) -> bytes:
    """The spec's kid: the first 8 bytes of SHA-256 of the raw public key."""
    return hashlib.sha256(public_key_raw).digest()[:8]


@dataclass
class Issuer:
    """An issuing platform (a city or county one-card platform) and one of its keys."""

    iss: str
    key: Ed25519PrivateKey
    not_before: int | None = None
    not_after: int | None = None

    @property
    def public_key(self) -> bytes:
        return raw_public(self.key)

    @property
    def kid(self) -> bytes:
        return kid_of(self.public_key)

    def trust_entry(self) -> dict[str, Any]:
        """This key as a §5 trust-list entry (JSON-ready)."""
        entry: dict[str, Any] = {
            "iss": self.iss,
            "kid": self.kid.hex(),
            "public_key": self.public_key.hex(),
        }
        if self.not_before is not None:
            entry["not_before"] = self.not_before
        if self.not_after is not None:
            entry["not_after"] = self.not_after
        return entry

    def issuer_key(self) -> IssuerKey:
        """This key as the terminal's trusted ``IssuerKey``."""
        return IssuerKey(self.iss, self.kid, self.public_key, self.not_before, self.not_after)


# --- COSE ---------------------------------------------------------------------


def protected_header(alg: int = -8, kid: bytes | None = None) -> bytes:
    """The encoded protected header ``{1: alg}`` or ``{1: alg, 4: kid}``."""
    header: dict[int, Any] = {1: alg}
    if kid is not None:
        header[4] = kid
    return cbor2.dumps(header)


def sign1(
    key: Ed25519PrivateKey,
    protected: bytes,
    payload: bytes,
    *,
    unprotected: Mapping[Any, Any] | None = None,
    tagged: bool = False,
) -> bytes:
    """A COSE_Sign1 over exactly these protected and payload bytes, signed with ``key``."""
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    parts = [protected, dict(unprotected or {}), payload, key.sign(to_be_signed)]
    return cbor2.dumps(cbor2.CBORTag(18, parts) if tagged else parts)


def qr_text(presentation: bytes) -> str:
    """The QR text for presentation bytes: ``CT1:`` and base45."""
    encoded: bytes = base45.b45encode(presentation)
    return PREFIX + encoded.decode("ascii")


# --- credentials and presentations --------------------------------------------


def credential_claims(
    *,
    iss: str,
    sub: str,
    unit: str,
    display_name: str,
    cti: bytes,
    iat: int,
    exp: int,
    holder_public: bytes,
    allowance: tuple[int | None, int | None] | None = None,
) -> dict[int, Any]:
    """The CWT claims set of a credential, in the label order the vectors use."""
    canteen: dict[int, Any] = {1: unit, 2: display_name}
    if allowance is not None:
        meals, fen = allowance
        cap: dict[int, int] = {}
        if meals is not None:
            cap[1] = meals
        if fen is not None:
            cap[2] = fen
        canteen[3] = cap
    return {
        1: iss,
        2: sub,
        4: exp,
        6: iat,
        7: cti,
        8: {1: {1: 1, -1: 6, -2: holder_public}},
        CANTEEN_CLAIM: canteen,
    }


def issue_claims(
    issuer: Issuer, claims: Mapping[Any, Any], *, alg: int = -8, tagged: bool = False
) -> bytes:
    """A credential over any claims map (tests use it to sign badly typed claims)."""
    return sign1(
        issuer.key, protected_header(alg, issuer.kid), cbor2.dumps(dict(claims)), tagged=tagged
    )


def issue_credential(
    issuer: Issuer,
    *,
    sub: str,
    unit: str,
    display_name: str,
    cti: bytes,
    iat: int,
    exp: int,
    holder_public: bytes,
    allowance: tuple[int | None, int | None] | None = None,
    alg: int = -8,
    tagged: bool = False,
) -> bytes:
    """The credential bytes an issuer hands to a cadre's phone."""
    claims = credential_claims(
        iss=issuer.iss,
        sub=sub,
        unit=unit,
        display_name=display_name,
        cti=cti,
        iat=iat,
        exp=exp,
        holder_public=holder_public,
        allowance=allowance,
    )
    return issue_claims(issuer, claims, alg=alg, tagged=tagged)


def present(
    credential: bytes,
    holder_key: Ed25519PrivateKey,
    *,
    t: int,
    ctr: int,
    alg: int = -8,
    tagged: bool = False,
) -> str:
    """The QR text a phone draws: its presentation of ``credential`` at time ``t``."""
    payload = cbor2.dumps({1: credential, 2: t, 3: ctr})
    return qr_text(sign1(holder_key, protected_header(alg), payload, tagged=tagged))


# --- wallets ----------------------------------------------------------------


@dataclass
class Wallet:
    """A cadre's phone: one credential, its holder key and the code counter."""

    iss: str
    sub: str
    unit: str
    display_name: str
    cti: bytes
    credential: bytes
    holder_key: Ed25519PrivateKey
    ctr: int = 0

    def draw(self, t: int, ctr: int | None = None, alg: int = -8, tagged: bool = False) -> str:
        """Draw a QR text at phone time ``t``.

        Without ``ctr`` the wallet's own counter goes up by one and is used, as
        a phone does. An explicit ``ctr`` is for tests that replay or go back;
        it leaves the wallet's counter alone.
        """
        if ctr is None:
            self.ctr += 1
            ctr = self.ctr
        return present(self.credential, self.holder_key, t=t, ctr=ctr, alg=alg, tagged=tagged)

    def to_json(self) -> str:
        """The wallet as JSON text with hex byte fields (the holder key included)."""
        holder = self.holder_key.private_bytes_raw()
        return json.dumps(
            {
                "iss": self.iss,
                "sub": self.sub,
                "unit": self.unit,
                "display_name": self.display_name,
                "cti": self.cti.hex(),
                "credential": self.credential.hex(),
                "holder_key": holder.hex(),
                "ctr": self.ctr,
            },
            ensure_ascii=False,
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Wallet:
        """A wallet back from ``to_json`` text."""
        data = json.loads(text)
        return cls(
            iss=data["iss"],
            sub=data["sub"],
            unit=data["unit"],
            display_name=data["display_name"],
            cti=bytes.fromhex(data["cti"]),
            credential=bytes.fromhex(data["credential"]),
            holder_key=Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["holder_key"])),
            ctr=int(data["ctr"]),
        )


def enrol(
    issuer: Issuer,
    sub: str,
    unit: str,
    display_name: str,
    *,
    holder_key: Ed25519PrivateKey,
    cti: bytes,
    now: int,
    days: int = 365,
    allowance: tuple[int | None, int | None] | None = None,
) -> Wallet:
    """Enrol a cadre: a credential valid from ``now`` for ``days`` days, on a phone
    that holds ``holder_key``."""
    credential = issue_credential(
        issuer,
        sub=sub,
        unit=unit,
        display_name=display_name,
        cti=cti,
        iat=now,
        exp=now + days * DAY_S,
        holder_public=raw_public(holder_key),
        allowance=allowance,
    )
    return Wallet(issuer.iss, sub, unit, display_name, cti, credential, holder_key)
