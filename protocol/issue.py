"""QR token v1, the issuing side: keys, credentials, presentations and their QR text.

This module owns making token bytes the way docs/token-format.md describes them:
the spec's kid and seeded keys, an issuer's trust entry, credential claims, the
COSE_Sign1 an issuer or a phone signs, a presentation and its ``CT1:`` text, and
a wallet that draws codes with its counter. Every key is an Ed25519 key or an
SM2 key (token.md §7, protocol/sm2.py), for the issuer and the phone alike and in
any mix: the key's type gives its COSE alg (-8 or -70001), its raw public form
(32 bytes or the 65-byte point), its kid, its trust entry and the ``cnf`` COSE_Key
(OKP Ed25519 or EC2 on sm2p256v1). It is pure: every key, seed and time is an
argument, and nothing is read, written or kept outside the objects it returns;
the only randomness is the fresh nonce of each SM2 signature (§7.1), so an SM2
signature differs from one call to the next while an Ed25519 one does not. Its
lower-level pieces (``sign1``, ``protected_header``, ``issue_claims``,
``present``) sign whatever they are given, so tests can build hostile tokens that
pass signatures; nothing here reads or checks a code (protocol/tokens.py does).
The terminal uses it only in its demo command; the simulator (hwsim) and the
tests build their tokens with it.
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

from protocol import lists, sm2
from protocol.tokens import PREFIX, IssuerKey

DAY_S = 86_400
CANTEEN_CLAIM = -65537

# The algorithm names of trust entries and wallet files (token.md §7.4).
ED25519 = "Ed25519"
SM2 = sm2.ALG_NAME  # "SM2-SM3"
ALGS = (ED25519, SM2)
EDDSA_ALG = -8  # the COSE alg an Ed25519 key signs under by default (-19 means the same)
SM2_ALG = sm2.ALG  # -70001
_ED25519_KEY_LEN = 32
# n of sm2p256v1 (token.md §7.1): seeded SM2 keys are d = SHA-256(seed) mod (n-2) + 1.
_SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123

# A private key of either algorithm, and a public one.
SigningKey = Ed25519PrivateKey | sm2.Sm2PrivateKey
PublicKey = Ed25519PublicKey | sm2.Sm2PublicKey


# --- keys -------------------------------------------------------------------


def key_from_seed(seed: str) -> Ed25519PrivateKey:
    """The Ed25519 key whose private bytes are SHA-256 of the UTF-8 seed (the vectors' rule)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode("utf-8")).digest())


def sm2_key_from_seed(seed: str) -> sm2.Sm2PrivateKey:
    """The SM2 key d = SHA-256(UTF-8 seed) mod (n-2) + 1 (vectors-sm2.json's rule)."""
    digest = int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest(), "big")
    return sm2.Sm2PrivateKey.from_bytes((digest % (_SM2_N - 2) + 1).to_bytes(32, "big"))


def signing_key_from_seed(seed: str, alg: str = ED25519) -> SigningKey:
    """The seeded key of algorithm ``alg`` (``ED25519`` or ``SM2``)."""
    if alg == SM2:
        return sm2_key_from_seed(seed)
    if alg == ED25519:
        return key_from_seed(seed)
    raise ValueError(f"key algorithm {alg!r} is not {ED25519} or {SM2}")


def generate_key(alg: str = ED25519) -> SigningKey:
    """A new random key of algorithm ``alg``."""
    if alg == SM2:
        return sm2.Sm2PrivateKey.generate()
    if alg == ED25519:
        return Ed25519PrivateKey.generate()
    raise ValueError(f"key algorithm {alg!r} is not {ED25519} or {SM2}")


def private_bytes(key: SigningKey) -> bytes:
    """The private key's raw bytes: the Ed25519 seed, or SM2's d (32 bytes either way)."""
    if isinstance(key, sm2.Sm2PrivateKey):
        return key.to_bytes()
    return key.private_bytes_raw()


def key_from_private_bytes(raw: bytes, alg: str = ED25519) -> SigningKey:
    """A key back from ``private_bytes`` and its algorithm name (ValueError if not one)."""
    if alg == SM2:
        return sm2.Sm2PrivateKey.from_bytes(raw)
    if alg == ED25519:
        return Ed25519PrivateKey.from_private_bytes(raw)
    raise ValueError(f"key algorithm {alg!r} is not {ED25519} or {SM2}")


def cti_from_seed(seed: str) -> bytes:
    """A seeded credential id: the first 12 bytes of SHA-256 of ``"cti:" + seed``."""
    return hashlib.sha256(f"cti:{seed}".encode()).digest()[:12]


def raw_public(key: SigningKey | PublicKey) -> bytes:
    """The raw public key: 32 bytes for Ed25519, the 65-byte point 04||x||y for SM2."""
    if isinstance(key, sm2.Sm2PrivateKey):
        return key.public_key().point
    if isinstance(key, sm2.Sm2PublicKey):
        return key.point
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw()


def alg_name(key: SigningKey) -> str:
    """``ED25519`` or ``SM2``: the key's algorithm as trust entries and wallets name it."""
    return SM2 if isinstance(key, sm2.Sm2PrivateKey) else ED25519


def cose_alg(key: SigningKey) -> int:
    """The COSE alg this key signs under: -8 (EdDSA) or -70001 (SM2-SM3)."""
    return SM2_ALG if isinstance(key, sm2.Sm2PrivateKey) else EDDSA_ALG


def kid_of(public_key_raw: bytes) -> bytes:
    """The spec's kid: the first 8 bytes of SHA-256 of the raw public key (32 or 65 bytes)."""
    return hashlib.sha256(public_key_raw).digest()[:8]


def holder_cose_key(holder_public: bytes) -> dict[int, Any]:
    """The ``cnf`` COSE_Key of a raw holder key: OKP Ed25519 ``{1: 1, -1: 6, -2: x}`` for
    32 bytes, EC2 sm2p256v1 ``{1: 2, -1: -70001, -2: x, -3: y}`` for a 65-byte point.

    Any other length is taken as Ed25519 bytes as they are, so tests can put a key of
    the wrong size in a credential."""
    if len(holder_public) == sm2.POINT_LEN and holder_public[:1] == b"\x04":
        return {1: 2, -1: SM2_ALG, -2: holder_public[1:33], -3: holder_public[33:]}
    return {1: 1, -1: 6, -2: holder_public}


@dataclass
class Issuer:
    """An issuing platform (a city or county one-card platform) and one of its keys."""

    iss: str
    key: SigningKey
    not_before: int | None = None
    not_after: int | None = None

    @property
    def public_key(self) -> bytes:
        return raw_public(self.key)

    @property
    def kid(self) -> bytes:
        return kid_of(self.public_key)

    @property
    def alg(self) -> str:
        """``ED25519`` or ``SM2``."""
        return alg_name(self.key)

    def trust_entry(self) -> dict[str, Any]:
        """This key as a §5 trust-list entry (JSON-ready); an SM2 key carries
        ``"alg": "SM2-SM3"`` (§7.4), an Ed25519 key no alg, as in v1."""
        entry: dict[str, Any] = {
            "iss": self.iss,
            "kid": self.kid.hex(),
            "public_key": self.public_key.hex(),
        }
        if self.alg == SM2:
            entry["alg"] = SM2
        if self.not_before is not None:
            entry["not_before"] = self.not_before
        if self.not_after is not None:
            entry["not_after"] = self.not_after
        return entry

    def issuer_key(self) -> IssuerKey:
        """This key as the terminal's trusted ``IssuerKey``."""
        return lists.issuer_key(
            self.iss, self.kid, self.public_key, self.not_before, self.not_after
        )


# --- COSE ---------------------------------------------------------------------


def protected_header(alg: int = EDDSA_ALG, kid: bytes | None = None) -> bytes:
    """The encoded protected header ``{1: alg}`` or ``{1: alg, 4: kid}``."""
    header: dict[int, Any] = {1: alg}
    if kid is not None:
        header[4] = kid
    return cbor2.dumps(header)


def sign1(
    key: SigningKey,
    protected: bytes,
    payload: bytes,
    *,
    unprotected: Mapping[Any, Any] | None = None,
    tagged: bool = False,
    sm2_uid: bytes = sm2.DEFAULT_ID,
) -> bytes:
    """A COSE_Sign1 over exactly these protected and payload bytes, signed with ``key``
    (Ed25519, or SM2 with SM3 and distinguishing ID ``sm2_uid``, whatever the header says)."""
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    if isinstance(key, sm2.Sm2PrivateKey):
        signature = key.sign(to_be_signed, sm2_uid)
    else:
        signature = key.sign(to_be_signed)
    parts = [protected, dict(unprotected or {}), payload, signature]
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
    """The CWT claims set of a credential, in the label order the vectors use; the
    ``cnf`` key is the COSE_Key of ``holder_public`` (32 bytes Ed25519, 65 bytes SM2)."""
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
        8: {1: holder_cose_key(holder_public)},
        CANTEEN_CLAIM: canteen,
    }


def issue_claims(
    issuer: Issuer, claims: Mapping[Any, Any], *, alg: int | None = None, tagged: bool = False
) -> bytes:
    """A credential over any claims map (tests use it to sign badly typed claims); the
    alg in its header is the issuer key's own unless ``alg`` says otherwise."""
    header_alg = cose_alg(issuer.key) if alg is None else alg
    return sign1(
        issuer.key,
        protected_header(header_alg, issuer.kid),
        cbor2.dumps(dict(claims)),
        tagged=tagged,
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
    alg: int | None = None,
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
    holder_key: SigningKey,
    *,
    t: int,
    ctr: int,
    alg: int | None = None,
    tagged: bool = False,
    sm2_uid: bytes = sm2.DEFAULT_ID,
) -> str:
    """The QR text a phone draws: its presentation of ``credential`` at time ``t``, under
    the holder key's own alg (-8 or -70001) unless ``alg`` says otherwise."""
    payload = cbor2.dumps({1: credential, 2: t, 3: ctr})
    header = protected_header(cose_alg(holder_key) if alg is None else alg)
    return qr_text(sign1(holder_key, header, payload, tagged=tagged, sm2_uid=sm2_uid))


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
    holder_key: SigningKey
    ctr: int = 0

    @property
    def holder_alg(self) -> str:
        """``ED25519`` or ``SM2``: the phone key's algorithm."""
        return alg_name(self.holder_key)

    def draw(
        self, t: int, ctr: int | None = None, alg: int | None = None, tagged: bool = False
    ) -> str:
        """Draw a QR text at phone time ``t``.

        Without ``ctr`` the wallet's own counter goes up by one and is used, as
        a phone does. An explicit ``ctr`` is for tests that replay or go back;
        it leaves the wallet's counter alone. The alg is the holder key's own
        unless ``alg`` says otherwise.
        """
        if ctr is None:
            self.ctr += 1
            ctr = self.ctr
        return present(self.credential, self.holder_key, t=t, ctr=ctr, alg=alg, tagged=tagged)

    def to_json(self) -> str:
        """The wallet as JSON text with hex byte fields (the holder key included); an SM2
        holder key is marked ``"holder_alg": "SM2-SM3"`` (absent means Ed25519)."""
        doc: dict[str, Any] = {
            "iss": self.iss,
            "sub": self.sub,
            "unit": self.unit,
            "display_name": self.display_name,
            "cti": self.cti.hex(),
            "credential": self.credential.hex(),
            "holder_key": private_bytes(self.holder_key).hex(),
            "ctr": self.ctr,
        }
        if self.holder_alg == SM2:
            doc["holder_alg"] = SM2
        return json.dumps(doc, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Wallet:
        """A wallet back from ``to_json`` text (ValueError, KeyError or TypeError if not one)."""
        data = json.loads(text)
        return cls(
            iss=data["iss"],
            sub=data["sub"],
            unit=data["unit"],
            display_name=data["display_name"],
            cti=bytes.fromhex(data["cti"]),
            credential=bytes.fromhex(data["credential"]),
            holder_key=key_from_private_bytes(
                bytes.fromhex(data["holder_key"]), data.get("holder_alg", ED25519)
            ),
            ctr=int(data["ctr"]),
        )


def enrol(
    issuer: Issuer,
    sub: str,
    unit: str,
    display_name: str,
    *,
    holder_key: SigningKey,
    cti: bytes,
    now: int,
    days: int = 365,
    allowance: tuple[int | None, int | None] | None = None,
) -> Wallet:
    """Enrol a cadre: a credential valid from ``now`` for ``days`` days, on a phone
    that holds ``holder_key`` (Ed25519 or SM2, whatever the issuer's key is)."""
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
