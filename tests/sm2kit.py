"""§7 tokens for the tests, minted here from the spec and not by protocol/issue.py.

Written straight from token.md §2, §3 and §7 with cbor2, cryptography and protocol/sm2.py
signing, so the verifier is checked against a second reading of the spec and any alg, key
or signature can be put where the spec forbids it. ``Key`` pairs a private key with its
algorithm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import base45
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import sm2
from protocol.tokens import ED25519_KEY, SM2_KEY, IssuerKey

NOW = 1_790_000_000
EDDSA = -8


@dataclass(frozen=True)
class Key:
    private: Ed25519PrivateKey | sm2.Sm2PrivateKey

    @classmethod
    def from_ed25519_seed(cls, seed: str) -> Key:
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest()))

    @classmethod
    def from_sm2_seed(cls, seed: str) -> Key:
        """d = SHA-256(seed) mod (n-2) + 1, as vectors-sm2.json's seeds_note says."""
        d = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big") % (sm2.N - 2) + 1
        return cls(sm2.Sm2PrivateKey.from_bytes(d.to_bytes(32, "big")))

    @property
    def alg_name(self) -> str:
        return SM2_KEY if isinstance(self.private, sm2.Sm2PrivateKey) else ED25519_KEY

    @property
    def cose_alg(self) -> int:
        return sm2.ALG if isinstance(self.private, sm2.Sm2PrivateKey) else EDDSA

    @property
    def raw(self) -> bytes:
        """32 bytes Ed25519, or the 65-byte SM2 point."""
        if isinstance(self.private, sm2.Sm2PrivateKey):
            return self.private.public_key().point
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def kid(self) -> bytes:
        return hashlib.sha256(self.raw).digest()[:8]

    def cose_key(self) -> dict[int, Any]:
        raw = self.raw
        if len(raw) == sm2.POINT_LEN:
            return {1: 2, -1: -70001, -2: raw[1:33], -3: raw[33:]}
        return {1: 1, -1: 6, -2: raw}

    def sign(self, data: bytes, uid: bytes = sm2.DEFAULT_ID) -> bytes:
        if isinstance(self.private, sm2.Sm2PrivateKey):
            return self.private.sign(data, uid)
        return self.private.sign(data)

    def issuer_key(self, iss: str = "hn-test") -> IssuerKey:
        return IssuerKey(iss, self.kid, self.raw, alg=self.alg_name)

    def trust_entry(self, iss: str = "hn-test") -> dict[str, Any]:
        entry = {"iss": iss, "kid": self.kid.hex(), "public_key": self.raw.hex()}
        if self.alg_name == SM2_KEY:
            entry["alg"] = SM2_KEY
        return entry


def to_be_signed(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign1(
    key: Key,
    payload: bytes,
    *,
    alg: int | None = None,
    kid: bytes | None = None,
    uid: bytes = sm2.DEFAULT_ID,
    signature: bytes | None = None,
) -> bytes:
    """A COSE_Sign1 over ``payload``; ``alg`` defaults to the key's, ``signature`` overrides."""
    header: dict[int, Any] = {1: key.cose_alg if alg is None else alg}
    if kid is not None:
        header[4] = kid
    protected = cbor2.dumps(header)
    if signature is None:
        signature = key.sign(to_be_signed(protected, payload), uid)
    return cbor2.dumps([protected, {}, payload, signature])


def claims(holder_cose_key: dict[int, Any], iss: str = "hn-test", sub: str = "C0001") -> bytes:
    return cbor2.dumps(
        {
            1: iss,
            2: sub,
            4: NOW + 7 * 86400,
            6: NOW - 86400,
            7: bytes.fromhex("00112233445566778899aabb"),
            8: {1: holder_cose_key},
            -65537: {1: "U-431000-01", 2: "Test Cadre"},
        }
    )


def credential(issuer: Key, holder: Key, **sign1_args: Any) -> bytes:
    return sign1(issuer, claims(holder.cose_key()), kid=issuer.kid, **sign1_args)


def qr(presentation: bytes) -> str:
    return "CT1:" + base45.b45encode(presentation).decode("ascii")


def token(
    issuer: Key, holder: Key, *, t: int = NOW - 5, ctr: int = 1, **presentation_args: Any
) -> str:
    """The QR text of a presentation of a fresh credential, both signed as the spec says
    unless ``presentation_args`` (alg, uid, signature) say otherwise."""
    payload = cbor2.dumps({1: credential(issuer, holder), 2: t, 3: ctr})
    return qr(sign1(holder, payload, **presentation_args))


def present(
    holder: Key, credential_bytes: bytes, *, t: int = NOW - 5, ctr: int = 1, **args: Any
) -> str:
    payload = cbor2.dumps({1: credential_bytes, 2: t, 3: ctr})
    return qr(sign1(holder, payload, **args))
