"""QR token v1 (shared/spec/token.md, docs/token-format.md): parse and verify a presentation.

Ed25519 and SM2 with SM3 (§7), for issuer and holder keys in any mix; SM2 goes through
protocol/sm2.py.

This module owns steps 1 to 5 of the token checks: the text, strict CBOR and
COSE structure, the issuer key, the credential and presentation signatures, and
freshness. Replay (step 6) and revocation (step 7, except an issuer key that
the revocation list names) need the terminal's memory and are done by the
caller (terminal/core/checkout.py; the county's evidence check too). It never
does I/O, never reads a clock (``now`` is an argument), never signs anything
(protocol/issue.py does), keeps no state between calls (a caller that checks
many codes may pass its own ``SignatureMemo``), and never lets an exception
other than ``TokenRejected`` escape, whatever the QR text holds.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn, Protocol

import base45
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import sm2

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

# A key's algorithm, named as trust entries name it (§7.4): "alg" absent means Ed25519.
ED25519_KEY = "Ed25519"
SM2_KEY = sm2.ALG_NAME  # "SM2-SM3"
KEY_ALGS = (ED25519_KEY, SM2_KEY)


class TokenRejected(Exception):
    """A presentation failed a token check; ``code`` is one of the spec's codes."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class IssuerKey:
    """One trusted issuer public key with its own validity window (Unix seconds).

    ``alg`` is the key's algorithm, ``ED25519_KEY`` (``public_key`` is the raw 32 bytes)
    or ``SM2_KEY`` (the 65-byte point ``04 || x || y``); a key verifies credentials of
    its own algorithm only (§7.3). A key whose bytes are not a key of its ``alg`` verifies
    nothing. ``protocol.lists.issuer_key`` fills ``alg`` from checked trust entries.
    """

    iss: str
    kid: bytes
    public_key: bytes
    not_before: int | None = None
    not_after: int | None = None
    alg: str = ED25519_KEY


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
    holder_key: bytes  # the cnf key raw: 32 bytes Ed25519, or the 65-byte SM2 point (§7.2)
    issuer_key: bytes  # the raw key that verified the credential (32 or 65 bytes, as trusted)


# --- limits -----------------------------------------------------------------

# Our own structures nest at most four containers deep (claims -> cnf ->
# COSE_Key); a little room is left for unknown claims, none for stack abuse.
_MAX_CBOR_DEPTH = 8
# Integers end up in SQLite INTEGER columns (signed 64-bit), so a CBOR uint
# above that range is refused here rather than overflowing in the ledger.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_CTI_MIN, _CTI_MAX = 8, 16
_ED25519_KEY_LEN = 32
_ED25519_SIG_LEN = 64
_ED25519_ALGS = (-8, -19)  # EdDSA and Ed25519 (RFC 9864) both mean Ed25519 here
_ACCEPTED_ALGS = (*_ED25519_ALGS, sm2.ALG)
_SM2_COORD_LEN = 32

# COSE / CWT labels (RFC 9052, RFC 8392, RFC 8747).
_HDR_ALG, _HDR_CRIT, _HDR_KID = 1, 2, 4
_CLAIM_ISS, _CLAIM_SUB, _CLAIM_EXP, _CLAIM_IAT, _CLAIM_CTI, _CLAIM_CNF = 1, 2, 4, 6, 7, 8
_CLAIM_CANTEEN = -65537
_CNF_COSE_KEY = 1
_KEY_KTY, _KEY_CRV, _KEY_X, _KEY_Y = 1, -1, -2, -3
_KTY_OKP, _CRV_ED25519 = 1, 6
_KTY_EC2, _CRV_SM2 = 2, -70001  # §7.2: crv -70001 (private use) is sm2p256v1
_COSE_KEY_LABELS = frozenset((_KEY_KTY, _KEY_CRV, _KEY_X))
_EC2_KEY_LABELS = frozenset((_KEY_KTY, _KEY_CRV, _KEY_X, _KEY_Y))
_CNF_LABELS = frozenset((_CNF_COSE_KEY,))

_TAG18 = b"\xd2"  # tag 18 (COSE_Sign1) in its one-byte preferred form

# --- base45 (RFC 9285) ------------------------------------------------------

_B45_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


def _reject(code: str, detail: str) -> NoReturn:
    raise TokenRejected(code, detail)


def _b45decode(text: str) -> bytes:
    # The base45 package's decoder refuses a length of 1 mod 3, a triple above
    # 65535 and a final pair above 255. It also strips trailing newlines and
    # accepts bytes, which RFC 9285 and our spec do not, so the alphabet is
    # checked here first (in C: a few microseconds for 1,200 characters).
    if not text.isascii() or text.encode("ascii").translate(None, _B45_ALPHABET):
        _reject(MALFORMED, "character outside the base45 alphabet")
    try:
        decoded: bytes = base45.b45decode(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise TokenRejected(MALFORMED, "not base45 as RFC 9285 allows it") from exc
    return decoded


# --- strict CBOR ------------------------------------------------------------


def _no_tag(*_args: object) -> NoReturn:
    raise ValueError("CBOR tag not allowed")


# cbor2 decodes these tags itself before tag_hook could see them; some would
# smuggle an int (bignums 2/3), shared or referenced values (25, 28, 29, 256)
# or a no-op wrapper (55799) past the type checks, so each one is refused.
# Tag 18 never reaches the decoder: it is peeled off by hand, and only from
# the front of a COSE_Sign1.
_SEMANTIC_REFUSED = MappingProxyType(
    dict.fromkeys(
        (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 55799),
        _no_tag,
    )
)


def _decoder() -> cbor2.CBORDecoder:
    """A strict CBOR decoder, pointed at each item in turn by ``_cbor``.

    Building one with these settings (cbor2 checks the tag map against the
    Mapping ABC) costs more than decoding one of our small items, so the
    caller's ``SignatureMemo`` keeps one. It carries no state from one item to
    the next: tags that would (shared values, string references) are refused,
    and cbor2 resets its nesting count on every decode, including one that failed.
    """
    return cbor2.CBORDecoder(
        io.BytesIO(),
        tag_hook=_no_tag,
        semantic_decoders=_SEMANTIC_REFUSED,
        max_depth=_MAX_CBOR_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )


def _cbor(
    decoder: cbor2.CBORDecoder, data: bytes, what: str, *, cose_tag_allowed: bool = False
) -> Any:
    """Decode exactly one strict CBOR item from ``data``; anything else is malformed."""
    fp = io.BytesIO(data)
    if cose_tag_allowed and data[:1] == _TAG18:
        fp.seek(1)
    decoder.fp = fp
    try:
        item = decoder.decode()
    except Exception as exc:  # cbor2 raises several types; all mean "not our CBOR"
        raise TokenRejected(MALFORMED, f"{what}: not strict CBOR") from exc
    if fp.tell() != len(data):
        _reject(MALFORMED, f"{what}: bytes after the CBOR item")
    return item


# --- typed access -----------------------------------------------------------
# cbor2 gives True/False as bool (an int subclass) and 1.0 hashes like 1, so
# every check compares exact types, and a map we read may only have int or
# text keys: otherwise {true: -8} would answer a lookup of label 1.


def _map(value: Any, what: str, part: str = "") -> dict[Any, Any]:
    # ``what`` and ``part`` are joined only for a message: a good code builds no text.
    if type(value) is not dict:
        _reject(MALFORMED, f"{what}{part}: not a map")
    for key in value:
        if type(key) is not int and type(key) is not str:
            _reject(MALFORMED, f"{what}{part}: map label neither int nor text")
    return value


def _int(value: Any, what: str, *, minimum: int = _INT_MIN) -> int:
    if type(value) is not int or not minimum <= value <= _INT_MAX:
        _reject(MALFORMED, f"{what}: not an integer in range")
    return value


def _tstr(value: Any, what: str) -> str:
    if type(value) is not str:
        _reject(MALFORMED, f"{what}: not a text string")
    return value


def _bstr(value: Any, what: str, part: str = "") -> bytes:
    if type(value) is not bytes:
        _reject(MALFORMED, f"{what}{part}: not a byte string")
    return value


def _required(claims: dict[Any, Any], label: int, what: str) -> Any:
    try:
        return claims[label]
    except KeyError:
        _reject(MALFORMED, f"{what}: missing")


class _Sign1(NamedTuple):
    """One COSE_Sign1 taken apart; its payload is not trusted until verified."""

    protected: bytes
    alg: int
    kid: bytes | None
    payload: bytes
    signature: bytes


def _sign1(decoder: cbor2.CBORDecoder, memo: SignatureMemo, data: bytes, what: str) -> _Sign1:
    parts = _cbor(decoder, data, what, cose_tag_allowed=True)
    if type(parts) is not list or len(parts) != 4:
        _reject(MALFORMED, f"{what}: not a COSE_Sign1 array of four")
    protected = _bstr(parts[0], what, " protected header")
    unprotected = _map(parts[1], what, " unprotected header")
    payload = _bstr(parts[2], what, " payload")
    signature = _bstr(parts[3], what, " signature")
    # RFC 9052 encodes an empty protected map as a zero-length bstr; it then
    # simply lacks alg, which is reported as such below.
    header = memo.header(decoder, protected, what) if protected else {}
    alg = header.get(_HDR_ALG)
    # A signature of another length than 64 bytes is malformed, as in v1 (§4: sizes),
    # except under alg -70001: an SM2 signature of the wrong length is one that does not
    # verify (§7.1), found at its step.
    if len(signature) != _ED25519_SIG_LEN and not (type(alg) is int and alg == sm2.ALG):
        _reject(MALFORMED, f"{what}: signature is not 64 bytes")
    if _HDR_ALG in unprotected:
        _reject(UNSUPPORTED_ALG, f"{what}: alg in the unprotected header")
    if type(alg) is not int or alg not in _ACCEPTED_ALGS:
        _reject(UNSUPPORTED_ALG, f"{what}: alg {alg!r:.20} is not -8, -19 or -70001")
    if _HDR_CRIT in header:
        _reject(MALFORMED, f"{what}: critical header parameters are not understood")
    kid = header.get(_HDR_KID)
    if kid is not None:
        kid = _bstr(kid, what, " kid")
    return _Sign1(protected, alg, kid, payload, signature)


def _bstr_head(length: int) -> bytes:
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    return b"\x5a" + length.to_bytes(4, "big")


def _to_be_signed(msg: _Sign1) -> bytes:
    # Sig_structure ["Signature1", protected, h'', payload] written out by hand:
    # same bytes as a deterministic encoder, without building Python objects.
    return b"".join(
        (
            b"\x84\x6aSignature1",
            _bstr_head(len(msg.protected)),
            msg.protected,
            b"\x40",
            _bstr_head(len(msg.payload)),
            msg.payload,
        )
    )


# --- keys and the memo ------------------------------------------------------

# A parsed public key: Ed25519 (cryptography) or SM2 (protocol/sm2.py, OpenSSL).
_Key = Ed25519PublicKey | sm2.Sm2PublicKey


def _public_key(raw: bytes, alg: str) -> _Key | None:
    """The key of ``raw`` under its algorithm, or None when the bytes are no such key."""
    try:
        if alg == ED25519_KEY:
            return Ed25519PublicKey.from_public_bytes(raw)
        if alg == SM2_KEY:
            return sm2.Sm2PublicKey.from_point(raw)
    except (TypeError, ValueError):
        pass
    return None  # a broken trust entry (or an alg nobody knows) can vouch for nothing


def _key_alg_of(cose_alg: int) -> str:
    """The key algorithm a COSE alg of ``_ACCEPTED_ALGS`` is verified with (§7.3)."""
    return SM2_KEY if cose_alg == sm2.ALG else ED25519_KEY


def _curve_verifies(key: _Key, signature: bytes, signed: bytes) -> bool:
    """The curve arithmetic itself: the one place a signature is really checked."""
    if isinstance(key, sm2.Sm2PublicKey):
        return key.verify(signature, signed)  # the default ID (§7.1); never raises
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        return False
    return True


class SignatureMemo:
    """What one caller of ``verify_presentation`` keeps between its calls.

    - The parsed public keys: the issuer keys (few, used on every code) and the
      holder keys (one a cadre, used again at each of that cadre's meals), so
      a key's bytes are turned into a key object once, not on every code (an SM2
      key costs OpenSSL a few hundred microseconds to load, about one verify).
    - The protected headers already decoded (a wallet's presentation header
      and an issuer's credential header are the same on every code), as the
      header map; the checks on its contents still run on every call.
    - A strict CBOR decoder, built once (see ``_decoder``).
    - The signatures already found good, keyed by SHA-256 over (raw key,
      signature, signed bytes): a code shown again (a replay, a screenshot,
      the same code read twice) then skips the curve arithmetic. Raw keys of
      the two algorithms never collide (32 bytes against 65), and a key is only
      asked about a signature of its own algorithm.

    Each entry is a pure function of the bytes it is keyed by, so the memo
    changes no answer; every check still runs in the spec's order at the
    call's own time and trust. Each part is bounded and cleared when full;
    clearing is harmless.

    The decision worker's ``Checkout`` owns one and uses it from that thread
    only; it is not safe to share between threads.
    """

    ISSUER_KEYS_MAX = 64  # a hostile trust update cannot grow it without limit
    HOLDER_KEYS_MAX = 1024  # a canteen's cadres; a flood of new keys only clears it
    HEADERS_MAX = 64
    GOOD_MAX = 1024

    def __init__(self) -> None:
        self.decoder = _decoder()
        self._issuer_keys: dict[tuple[str, bytes], _Key] = {}
        self._holder_keys: dict[tuple[str, bytes], _Key] = {}
        self._headers: dict[bytes, dict[Any, Any]] = {}
        self._good: set[bytes] = set()

    def issuer_key(self, raw: bytes, alg: str = ED25519_KEY) -> _Key | None:
        """The parsed issuer key, or None when the trusted bytes are no key of ``alg``."""
        return _memo_key(self._issuer_keys, raw, alg, self.ISSUER_KEYS_MAX)

    def holder_key(self, raw: bytes, alg: str = ED25519_KEY) -> _Key | None:
        """The parsed cnf key (32 bytes Ed25519 or the 65-byte SM2 point), or None."""
        return _memo_key(self._holder_keys, raw, alg, self.HOLDER_KEYS_MAX)

    def header(self, decoder: cbor2.CBORDecoder, protected: bytes, what: str) -> dict[Any, Any]:
        """The protected header map of a COSE_Sign1 (strict CBOR, int or text labels)."""
        header = self._headers.get(protected)
        if header is None:
            header = _map(
                _cbor(decoder, protected, f"{what} protected header"), what, " protected header"
            )
            if len(self._headers) >= self.HEADERS_MAX:
                self._headers.clear()
            self._headers[protected] = header
        return header

    def verifies(self, key: _Key, raw_key: bytes, msg: _Sign1) -> bool:
        """True when ``msg``'s signature verifies under ``key`` (raw bytes ``raw_key``).

        The caller has already matched ``msg.alg`` to the key's algorithm (§7.3).
        """
        signed = _to_be_signed(msg)
        digest = hashlib.sha256(raw_key + msg.signature + signed).digest()
        if digest in self._good:
            return True
        if not _curve_verifies(key, msg.signature, signed):
            return False
        if len(self._good) >= self.GOOD_MAX:
            self._good.clear()
        self._good.add(digest)
        return True


def _memo_key(
    table: dict[tuple[str, bytes], _Key], raw: bytes, alg: str, limit: int
) -> _Key | None:
    entry = (alg, raw)
    key = table.get(entry)
    if key is None:
        key = _public_key(raw, alg)
        if key is None:
            return None  # not kept: a broken key is refused again, at the same cost
        if len(table) >= limit:
            table.clear()
        table[entry] = key
    return key


def _in_window(key: IssuerKey, now: int) -> bool:
    if key.not_before is not None and now < key.not_before:
        return False
    return key.not_after is None or now < key.not_after


# --- the checks -------------------------------------------------------------


class _Claims(NamedTuple):
    iss: str
    sub: str
    exp: int
    iat: int
    cti: bytes
    holder_key: bytes
    unit: str
    display_name: str
    allowance: Allowance | None


def _cnf_key(cose_key: dict[Any, Any]) -> bytes:
    """The holder key's raw bytes: Ed25519's 32 (§3), or the SM2 point 04||x||y (§7.2).

    Anything else, including an EC2 point that is not on sm2p256v1, is ``malformed``.
    """
    kty, crv = cose_key.get(_KEY_KTY), cose_key.get(_KEY_CRV)
    if type(kty) is int and kty == _KTY_EC2:
        if cose_key.keys() != _EC2_KEY_LABELS:
            _reject(MALFORMED, "cnf key: an EC2 key must be exactly kty, crv, x and y")
        if type(crv) is not int or crv != _CRV_SM2:
            _reject(MALFORMED, "cnf key: an EC2 key on another curve than sm2p256v1 (-70001)")
        x = _bstr(cose_key[_KEY_X], "cnf key x")
        y = _bstr(cose_key[_KEY_Y], "cnf key y")
        if len(x) != _SM2_COORD_LEN or len(y) != _SM2_COORD_LEN:
            _reject(MALFORMED, "cnf key: SM2 x and y must be 32 bytes each")
        if not sm2.on_curve(int.from_bytes(x, "big"), int.from_bytes(y, "big")):
            _reject(MALFORMED, "cnf key: the SM2 point is not on the curve")
        return b"\x04" + x + y
    if cose_key.keys() != _COSE_KEY_LABELS:
        _reject(MALFORMED, "cnf key: must be exactly kty, crv and x")
    if type(kty) is not int or kty != _KTY_OKP or type(crv) is not int or crv != _CRV_ED25519:
        _reject(MALFORMED, "cnf key: not an OKP Ed25519 key nor an EC2 SM2 key")
    holder_key = cose_key[_KEY_X]
    if type(holder_key) is not bytes:
        _bstr(holder_key, "cnf key x")
    if len(holder_key) != _ED25519_KEY_LEN:
        _reject(MALFORMED, "cnf key: x is not 32 bytes")
    return bytes(holder_key)


def _claims(decoder: cbor2.CBORDecoder, payload: bytes) -> _Claims:
    # Each field is read with an inline check of the well-formed case; any other case
    # goes through the helpers, which raise the same first error in the same order.
    claims = _map(_cbor(decoder, payload, "credential claims"), "credential claims")
    get = claims.get
    cti = get(_CLAIM_CTI)
    if type(cti) is not bytes:
        cti = _bstr(_required(claims, _CLAIM_CTI, "cti"), "cti")
    if not _CTI_MIN <= len(cti) <= _CTI_MAX:
        _reject(MALFORMED, "cti: not 8 to 16 bytes")

    cnf = _map(_required(claims, _CLAIM_CNF, "cnf"), "cnf")
    if cnf.keys() != _CNF_LABELS:
        _reject(MALFORMED, "cnf: must hold exactly one COSE_Key")
    holder_key = _cnf_key(_map(cnf[_CNF_COSE_KEY], "cnf key"))

    canteen = _map(_required(claims, _CLAIM_CANTEEN, "canteen"), "canteen")
    allowance = None
    if 3 in canteen:
        cap = _map(canteen[3], "allowance")
        meals, fen = cap.get(1), cap.get(2)
        allowance = Allowance(
            meals_per_day=None if meals is None else _int(meals, "meals per day", minimum=0),
            fen_per_day=None if fen is None else _int(fen, "fen per day", minimum=0),
        )

    iss, sub, exp, iat = get(_CLAIM_ISS), get(_CLAIM_SUB), get(_CLAIM_EXP), get(_CLAIM_IAT)
    unit, name = canteen.get(1), canteen.get(2)
    if not (
        type(iss) is str
        and type(sub) is str
        and type(exp) is int
        and _INT_MIN <= exp <= _INT_MAX
        and type(iat) is int
        and _INT_MIN <= iat <= _INT_MAX
        and type(unit) is str
        and type(name) is str
    ):
        iss = _tstr(_required(claims, _CLAIM_ISS, "iss"), "iss")
        sub = _tstr(_required(claims, _CLAIM_SUB, "sub"), "sub")
        exp = _int(_required(claims, _CLAIM_EXP, "exp"), "exp")
        iat = _int(_required(claims, _CLAIM_IAT, "iat"), "iat")
        unit = _tstr(_required(canteen, 1, "unit"), "unit")
        name = _tstr(_required(canteen, 2, "display name"), "display name")
    return _Claims(iss, sub, exp, iat, cti, holder_key, unit, name, allowance)


def _parse(qr_text: str, memo: SignatureMemo) -> tuple[_Sign1, _Sign1, bytes, _Claims, int, int]:
    """Step 1: the text, strict CBOR and the type of everything; nothing verified yet."""
    if type(qr_text) is not str or len(qr_text) > MAX_QR_TEXT:
        _reject(MALFORMED, "QR text is not text of at most 1200 characters")
    if not qr_text.startswith(PREFIX):
        _reject(MALFORMED, "QR text does not start with CT1:")
    decoder = memo.decoder
    outer = _sign1(decoder, memo, _b45decode(qr_text[len(PREFIX) :]), "presentation")
    body = _map(_cbor(decoder, outer.payload, "presentation payload"), "presentation payload")
    credential = _bstr(_required(body, 1, "credential"), "credential")
    t = _int(_required(body, 2, "t"), "t")
    ctr = _int(_required(body, 3, "ctr"), "ctr", minimum=0)
    inner = _sign1(decoder, memo, credential, "credential")
    if inner.kid is None:
        _reject(MALFORMED, "credential: no kid in the protected header")
    return outer, inner, inner.kid, _claims(decoder, inner.payload), t, ctr


def verify_presentation(
    qr_text: str,
    now: int,
    keyring: IssuerKeyring,
    window_s: int = 60,
    skew_s: int = 30,
    memo: SignatureMemo | None = None,
) -> Presentation:
    """Run token checks 1 to 5 of spec §4 on ``qr_text`` at trusted time ``now``.

    Returns the verified ``Presentation``, or raises ``TokenRejected`` with the
    spec's code for the first check that fails. The caller must still do
    replay (step 6) and revocation of credential, cadre and holder key
    (step 7); an issuer key named by the revocation list is refused here.

    Interpretations of the spec, decided here:

    - Step 1 decodes every layer (presentation, its payload, the credential,
      its claims) and checks every type and size there, so a badly typed
      claim is ``malformed`` whatever the keys. Values are only *used* after
      the signature over them verified. Integers must fit signed 64 bits;
      ``ctr`` and allowance values must be >= 0; a signature under alg -8 or
      -19 must be 64 bytes (under -70001 one of another length just does not
      verify, §7.1). ``cnf`` must be exactly ``{1: {1: 1, -1: 6, -2: x}}`` with
      a 32-byte x, or ``{1: {1: 2, -1: -70001, -2: x, -3: y}}`` with 32-byte x
      and y that are a point of sm2p256v1 (§7.2); a ``crit`` header is
      ``malformed``. The presentation payload ignores unknown keys, the
      canteen claim and allowance ignore unknown labels, like unknown claims.
      Strict CBOR means: one item and no trailing bytes, definite lengths,
      no duplicate labels, at most 8 nested containers, only int or text
      labels in a map that is read, and no tag anywhere except one leading
      tag 18 (written ``0xd2``) on each COSE_Sign1.
    - An empty protected header is read as an empty map, so it lacks alg and
      gets ``unsupported_alg``; a credential without a bstr ``kid`` in its
      protected header is ``malformed``. A ``kid`` of unusual length is just
      looked up (and not found: ``unknown_issuer_key``).
    - Step 2: the candidates are the keys with the credential's ``kid`` whose
      own window covers ``now`` (``not_before <= now < not_after``); none is
      ``unknown_issuer_key``. If every candidate is revoked the answer is
      ``revoked``.
    - Step 3: a key vouches only for its own issuer. A candidate whose
      signature verifies but whose ``iss`` differs from the credential's
      ``iss`` claim is treated like a key that did not verify, so the result
      is ``bad_credential_signature`` (the kid was known; no key *trusted for
      that issuer* verified). A candidate whose ``alg`` is not the one the
      credential's alg means (-8 / -19: Ed25519, -70001: SM2) is skipped like
      one that did not verify (§7.3). Both iat and exp are checked; iat first.
    - Step 4: a presentation alg that does not match the type of the ``cnf``
      key (Ed25519 under -8 / -19, SM2 under -70001) is
      ``bad_presentation_signature`` (§7.3). SM2 signatures are checked with
      the default distinguishing ID ``1234567812345678`` (§7.1).

    ``memo`` is the caller's own ``SignatureMemo`` (the decision worker keeps
    one); without one, nothing is kept past this call.
    """
    if memo is None:
        memo = SignatureMemo()
    # Step 1: text, then strict CBOR and types of every layer.
    outer, inner, kid, claims, t, ctr = _parse(qr_text, memo)

    # Step 2: issuer key.
    candidates = [k for k in keyring.issuer_keys(kid) if _in_window(k, now)]
    if not candidates:
        _reject(UNKNOWN_ISSUER_KEY, f"no trusted issuer key {kid.hex():.32} valid now")
    usable = [k for k in candidates if not keyring.issuer_key_revoked(k.public_key)]
    if not usable:
        _reject(REVOKED, "the issuer key is revoked")

    # Step 3: credential signature, then its validity. A key verifies only credentials
    # of its own algorithm (§7.3).
    issuer_key: IssuerKey | None = None
    credential_alg = _key_alg_of(inner.alg)
    for candidate in usable:
        if candidate.alg != credential_alg:
            continue
        key = memo.issuer_key(candidate.public_key, candidate.alg)
        good = key is not None and memo.verifies(key, candidate.public_key, inner)
        if good and candidate.iss == claims.iss:
            issuer_key = candidate
            break
    if issuer_key is None:
        _reject(BAD_CREDENTIAL_SIGNATURE, "no trusted key of this issuer verifies the credential")
    if claims.iat > now + skew_s:
        _reject(CREDENTIAL_NOT_YET_VALID, "credential issued in the future")
    if now >= claims.exp:
        _reject(CREDENTIAL_EXPIRED, "credential expired")

    # Step 4: presentation signature with the holder's key, under the alg of its type.
    holder_alg = SM2_KEY if len(claims.holder_key) == sm2.POINT_LEN else ED25519_KEY
    if _key_alg_of(outer.alg) != holder_alg:
        _reject(BAD_PRESENTATION_SIGNATURE, f"presentation alg {outer.alg} is not the cnf key's")
    holder = memo.holder_key(claims.holder_key, holder_alg)
    if holder is None:
        _reject(BAD_PRESENTATION_SIGNATURE, f"the cnf key is not a usable {holder_alg} key")
    if not memo.verifies(holder, claims.holder_key, outer):
        _reject(BAD_PRESENTATION_SIGNATURE, "the cnf key does not verify the presentation")

    # Step 5: freshness.
    if t < now - window_s - skew_s:
        _reject(PRESENTATION_STALE, "code drawn too long ago")
    if t > now + skew_s:
        _reject(PRESENTATION_FROM_FUTURE, "code drawn in the future")

    return Presentation(
        iss=claims.iss,
        sub=claims.sub,
        cti=claims.cti,
        ctr=ctr,
        t=t,
        iat=claims.iat,
        exp=claims.exp,
        unit=claims.unit,
        display_name=claims.display_name,
        allowance=claims.allowance,
        holder_key=claims.holder_key,
        issuer_key=issuer_key.public_key,
    )
