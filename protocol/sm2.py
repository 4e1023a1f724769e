"""SM2 signatures with SM3 (GB/T 32918.2-2016, GB/T 32905-2016), as token.md §7 uses them.

The one SM2/SM3 module of the project: the token checks, the issuing tools, the simulator
and the county all go through it. The curve arithmetic is Debian's OpenSSL 3 libcrypto
(``libcrypto.so.3``, package libssl3, which every Debian 12 and Raspberry Pi OS Bookworm
system has because Python itself links it), reached with ctypes through the EVP API; the
choice and its measurements are in docs/token-format.md ("The SM2 implementation").

What is done here rather than in OpenSSL, so that the rules are this project's and not a
library default:

- the distinguishing ID is always given: signing sets it on OpenSSL's context
  (``EVP_PKEY_CTX_set1_id``; OpenSSL 3.0 would use an empty one otherwise and make
  signatures nobody else verifies, §7.1); verifying computes Z_A here (kept per key for the
  default ID) and e = SM3(Z_A || M) with hashlib, and asks OpenSSL only for the curve
  check of (r, s) against e (``EVP_PKEY_verify``): as fast as OpenSSL's own
  ``EVP_DigestVerify`` with the ID set (``_LibCrypto.verify``, which the tests check it
  against), with fewer calls and no ID state in OpenSSL's context;
- a signature is 64 bytes ``r || s``; its length, ``1 <= r, s <= n-1`` and
  ``(r + s) mod n != 0`` are checked before OpenSSL sees it, and a signature that fails
  any of them is simply one that does not verify (``verify`` returns False, never raises);
- a public key is the 65-byte uncompressed point ``0x04 || x || y`` with ``x, y < p`` on the
  curve, checked here (OpenSSL checks it again when it loads the key).

Pure computation: no file, device, network or clock. ``Sm2PrivateKey.generate`` takes d
from ``secrets``; each signature's k comes from OpenSSL's random generator. The objects
hold OpenSSL keys; they are immutable and may be shared between threads (each call makes
and frees its own OpenSSL contexts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import secrets
from typing import Any, Final

DEFAULT_ID: Final = b"1234567812345678"  # GB/T 35276-2017, token.md §7.1
POINT_LEN: Final = 65
SIGNATURE_LEN: Final = 64
ALG: Final = -70001  # COSE alg, token.md §7.1
ALG_NAME: Final = "SM2-SM3"

# sm2p256v1 (GB/T 32918.5-2017), token.md §7.1.
P: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B: Final = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX: Final = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY: Final = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

_CURVE_BYTES: Final = b"".join(v.to_bytes(32, "big") for v in (A, B, GX, GY))
_UID_MAX: Final = 8191  # ENTL is two bytes of bits

# DER prefixes: SubjectPublicKeyInfo and PKCS#8 for id-ecPublicKey on the SM2 curve
# (OID 1.2.156.10197.1.301), so OpenSSL 3 loads the key as an SM2 key.
_ALGORITHM_ID: Final = bytes.fromhex("301306072a8648ce3d020106082a811ccf5501822d")
_SPKI_PREFIX: Final = bytes.fromhex("3059") + _ALGORITHM_ID + bytes.fromhex("034200")
_PKCS8_PREFIX: Final = (
    bytes.fromhex("3041020100") + _ALGORITHM_ID + bytes.fromhex("0427302502010104") + b"\x20"
)


def sm3(data: bytes) -> bytes:
    """SM3 of ``data`` (GB/T 32905-2016): 32 bytes."""
    return _SM3(data)


def z_a(point: bytes, uid: bytes = DEFAULT_ID) -> bytes:
    """Z_A of GB/T 32918.2-2016 for the 65-byte public point and distinguishing ID ``uid``."""
    if len(point) != POINT_LEN or point[0] != 4:
        raise ValueError("SM2 public key: not a 65-byte uncompressed point")
    if len(uid) > _UID_MAX:
        raise ValueError("SM2 distinguishing ID: longer than 8191 bytes")
    entl = (len(uid) * 8).to_bytes(2, "big")
    return sm3(entl + uid + _CURVE_BYTES + point[1:])


def on_curve(x: int, y: int) -> bool:
    """True when (x, y) is an affine point of sm2p256v1 with coordinates below p."""
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


class Sm2PublicKey:
    """An SM2 public key: a point on sm2p256v1, checked when it is made."""

    __slots__ = ("_pkey", "_point", "_za")

    def __init__(self, point: bytes, pkey: int) -> None:
        # Use from_point or from_xy; this takes an OpenSSL key it then owns.
        self._point = point
        self._pkey = pkey
        self._za = z_a(point)  # for the default ID, which nearly every call uses

    @classmethod
    def from_point(cls, raw: bytes) -> Sm2PublicKey:
        """The key of a 65-byte ``0x04 || x || y``; ValueError unless that point is on the curve."""
        if type(raw) is not bytes or len(raw) != POINT_LEN or raw[0] != 4:
            raise ValueError("SM2 public key: not a 65-byte uncompressed point 04||x||y")
        if not on_curve(int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")):
            raise ValueError("SM2 public key: the point is not on the curve sm2p256v1")
        pkey = _lib.load_public(raw)
        if not pkey:
            raise ValueError("SM2 public key: refused by libcrypto")
        return cls(raw, pkey)

    @classmethod
    def from_xy(cls, x: bytes, y: bytes) -> Sm2PublicKey:
        """The key of big-endian 32-byte x and y (a COSE EC2 key); ValueError likewise."""
        if type(x) is not bytes or type(y) is not bytes or len(x) != 32 or len(y) != 32:
            raise ValueError("SM2 public key: x and y must be 32 bytes each")
        return cls.from_point(b"\x04" + x + y)

    @property
    def point(self) -> bytes:
        """The 65-byte uncompressed point."""
        return self._point

    def verify(self, signature: bytes, message: bytes, uid: bytes = DEFAULT_ID) -> bool:
        """True when ``signature`` (64 bytes r||s) is this key's SM2 signature of ``message``.

        False, never an exception, for anything else: a wrong length or type, r or s
        outside [1, n-1], (r + s) mod n = 0, or a signature that does not verify.
        """
        if type(signature) is not bytes or len(signature) != SIGNATURE_LEN:
            return False
        if type(message) is not bytes or type(uid) is not bytes or len(uid) > _UID_MAX:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < N and 0 < s < N) or (r + s) % N == 0:
            return False
        za = self._za if uid == DEFAULT_ID else z_a(self._point, uid)
        return _lib.verify_digest(self._pkey, _der_signature(r, s), sm3(za + message))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sm2PublicKey) and other._point == self._point

    def __hash__(self) -> int:
        return hash(self._point)

    def __repr__(self) -> str:
        return f"Sm2PublicKey({self._point.hex()})"

    def __del__(self) -> None:
        pkey, self._pkey = getattr(self, "_pkey", 0), 0
        if pkey and _lib is not None:
            _lib.free_key(pkey)


class Sm2PrivateKey:
    """An SM2 private key d in [1, n-2], with its public point."""

    __slots__ = ("_d", "_pkey", "_public")

    def __init__(self, d: bytes, pkey: int, public: Sm2PublicKey) -> None:
        # Use generate or from_bytes.
        self._d = d
        self._pkey = pkey
        self._public = public

    @classmethod
    def generate(cls) -> Sm2PrivateKey:
        """A new key from the operating system's randomness."""
        return cls.from_bytes((secrets.randbelow(N - 2) + 1).to_bytes(32, "big"))

    @classmethod
    def from_bytes(cls, d: bytes) -> Sm2PrivateKey:
        """The key of 32 big-endian bytes; ValueError unless 1 <= d <= n-2 (GB/T 32918.1)."""
        if type(d) is not bytes or len(d) != 32:
            raise ValueError("SM2 private key: not 32 bytes")
        if not 1 <= int.from_bytes(d, "big") <= N - 2:
            raise ValueError("SM2 private key: not in [1, n-2]")
        pkey = _lib.load_private(_PKCS8_PREFIX + d)
        if not pkey:
            raise ValueError("SM2 private key: refused by libcrypto")
        try:
            public = Sm2PublicKey.from_point(_lib.public_point(pkey))
        except ValueError:
            _lib.free_key(pkey)
            raise
        return cls(d, pkey, public)

    def to_bytes(self) -> bytes:
        """d as 32 big-endian bytes (a secret)."""
        return self._d

    def public_key(self) -> Sm2PublicKey:
        return self._public

    def sign(self, message: bytes, uid: bytes = DEFAULT_ID) -> bytes:
        """The 64-byte SM2 signature r||s of ``message``, with a fresh random k (OpenSSL's)."""
        if len(uid) > _UID_MAX:
            raise ValueError("SM2 distinguishing ID: longer than 8191 bytes")
        r, s = _parse_der_signature(_lib.sign(self._pkey, message, uid))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"Sm2PrivateKey(public={self._public.point.hex()})"

    def __del__(self) -> None:
        pkey, self._pkey = getattr(self, "_pkey", 0), 0
        if pkey and _lib is not None:
            _lib.free_key(pkey)


# --- DER signatures (ECDSA-Sig-Value: SEQUENCE { INTEGER r, INTEGER s }) ----------------


def _der_int(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # a leading 0 when the top bit
    return bytes((2, len(body))) + body


def _der_signature(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return bytes((0x30, len(body))) + body  # at most 70 bytes: short-form lengths


def _parse_der_signature(der: bytes) -> tuple[int, int]:
    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        raise RuntimeError("libcrypto returned an SM2 signature that is not DER")
    values: list[int] = []
    at = 2
    for _ in range(2):
        if der[at] != 2:
            raise RuntimeError("libcrypto returned an SM2 signature that is not DER")
        length = der[at + 1]
        values.append(int.from_bytes(der[at + 2 : at + 2 + length], "big"))
        at += 2 + length
    if at != len(der):
        raise RuntimeError("libcrypto returned an SM2 signature that is not DER")
    return values[0], values[1]


# --- libcrypto through ctypes -----------------------------------------------------------


class _OsslParam(ctypes.Structure):
    """OpenSSL 3's OSSL_PARAM (openssl/core.h)."""

    _fields_ = (
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    )


_OSSL_PARAM_UTF8_STRING: Final = 4
_OSSL_PARAM_OCTET_STRING: Final = 5
_UNMODIFIED: Final = ctypes.c_size_t(-1).value  # OSSL_PARAM_UNMODIFIED
_EVP_PKEY_PUBLIC_KEY: Final = 0x86  # OSSL_KEYMGMT_SELECT_ALL_PARAMETERS | PUBLIC_KEY
_SM2_GROUP_NAME: Final = ctypes.c_char_p(b"SM2")  # kept alive: params point into it
_SM2_GROUP: Final = ctypes.cast(_SM2_GROUP_NAME, ctypes.c_void_p).value


class _LibCrypto:
    """The few EVP calls SM2 needs, from OpenSSL 3's libcrypto."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        c_void_p, c_int, c_long, c_size_t = (
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_long,
            ctypes.c_size_t,
        )
        buf = ctypes.c_char_p

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype, f.argtypes = restype, argtypes
            return f

        self.d2i_PUBKEY = fn("d2i_PUBKEY", c_void_p, c_void_p, ctypes.POINTER(buf), c_long)
        self.d2i_AutoPrivateKey = fn(
            "d2i_AutoPrivateKey", c_void_p, c_void_p, ctypes.POINTER(buf), c_long
        )
        self.EVP_PKEY_free = fn("EVP_PKEY_free", None, c_void_p)
        self.EVP_PKEY_get_octet_string_param = fn(
            "EVP_PKEY_get_octet_string_param",
            c_int,
            c_void_p,
            buf,
            buf,
            c_size_t,
            ctypes.POINTER(c_size_t),
        )
        self.EVP_PKEY_is_a = fn("EVP_PKEY_is_a", c_int, c_void_p, buf)
        self.EVP_PKEY_CTX_new_from_name = fn(
            "EVP_PKEY_CTX_new_from_name", c_void_p, c_void_p, buf, buf
        )
        self.EVP_PKEY_fromdata_init = fn("EVP_PKEY_fromdata_init", c_int, c_void_p)
        self.EVP_PKEY_fromdata = fn(
            "EVP_PKEY_fromdata", c_int, c_void_p, ctypes.POINTER(c_void_p), c_int, c_void_p
        )
        self.EVP_MD_CTX_new = fn("EVP_MD_CTX_new", c_void_p)
        self.EVP_MD_CTX_free = fn("EVP_MD_CTX_free", None, c_void_p)
        self.EVP_MD_CTX_set_pkey_ctx = fn("EVP_MD_CTX_set_pkey_ctx", None, c_void_p, c_void_p)
        self.EVP_PKEY_CTX_new = fn("EVP_PKEY_CTX_new", c_void_p, c_void_p, c_void_p)
        self.EVP_PKEY_CTX_free = fn("EVP_PKEY_CTX_free", None, c_void_p)
        self.EVP_PKEY_CTX_set1_id = fn("EVP_PKEY_CTX_set1_id", c_int, c_void_p, buf, c_int)
        self.EVP_MD_fetch = fn("EVP_MD_fetch", c_void_p, c_void_p, buf, buf)
        self.EVP_DigestVerifyInit = fn(
            "EVP_DigestVerifyInit", c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p
        )
        self.EVP_DigestVerify = fn(
            "EVP_DigestVerify", c_int, c_void_p, buf, c_size_t, buf, c_size_t
        )
        self.EVP_PKEY_verify_init = fn("EVP_PKEY_verify_init", c_int, c_void_p)
        self.EVP_PKEY_verify = fn("EVP_PKEY_verify", c_int, c_void_p, buf, c_size_t, buf, c_size_t)
        self.EVP_DigestSignInit = fn(
            "EVP_DigestSignInit", c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p
        )
        self.EVP_DigestSign = fn(
            "EVP_DigestSign", c_int, c_void_p, buf, ctypes.POINTER(c_size_t), buf, c_size_t
        )
        self.EVP_Digest = fn(
            "EVP_Digest",
            c_int,
            buf,
            c_size_t,
            buf,
            ctypes.POINTER(ctypes.c_uint),
            c_void_p,
            c_void_p,
        )
        self.ERR_clear_error = fn("ERR_clear_error", None)
        # Fetched once and kept for the process (OpenSSL 3 fetches cost more than a digest).
        self.sm3_md = self.EVP_MD_fetch(None, b"SM3", None)
        if not self.sm3_md:
            raise ImportError("libcrypto has no SM3 (OpenSSL 3 built without SM2/SM3?)")

    def load_public(self, point: bytes) -> int:
        """An SM2 EVP_PKEY of the 65-byte point (0 if OpenSSL refuses it), by
        EVP_PKEY_fromdata: about a quarter of d2i_PUBKEY's time, whose decoder framework
        is slow in OpenSSL 3.0 (docs/token-format.md)."""
        data = ctypes.create_string_buffer(point, len(point))
        params = (_OsslParam * 3)(
            _OsslParam(b"group", _OSSL_PARAM_UTF8_STRING, _SM2_GROUP, len(b"SM2"), _UNMODIFIED),
            _OsslParam(
                b"pub", _OSSL_PARAM_OCTET_STRING, ctypes.addressof(data), len(point), _UNMODIFIED
            ),
            _OsslParam(None, 0, None, 0, 0),
        )
        ctx = self.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
        if not ctx:
            raise MemoryError("libcrypto: no SM2 key context")
        pkey = ctypes.c_void_p()
        try:
            if self.EVP_PKEY_fromdata_init(ctx) != 1 or (
                self.EVP_PKEY_fromdata(ctx, ctypes.byref(pkey), _EVP_PKEY_PUBLIC_KEY, params) != 1
            ):
                pkey.value = None
        finally:
            self.EVP_PKEY_CTX_free(ctx)
        return self._sm2_or_nothing(pkey.value)

    def load_public_spki(self, spki: bytes) -> int:
        """The same key from a DER SubjectPublicKeyInfo (the slower route; for the tests)."""
        ptr = ctypes.c_char_p(spki)
        pkey = self.d2i_PUBKEY(None, ctypes.byref(ptr), len(spki))
        return self._sm2_or_nothing(pkey)

    def load_private(self, pkcs8: bytes) -> int:
        ptr = ctypes.c_char_p(pkcs8)
        pkey = self.d2i_AutoPrivateKey(None, ctypes.byref(ptr), len(pkcs8))
        return self._sm2_or_nothing(pkey)

    def _sm2_or_nothing(self, pkey: int | None) -> int:
        if not pkey:
            self.ERR_clear_error()
            return 0
        if self.EVP_PKEY_is_a(pkey, b"SM2") != 1:  # an SM2 key, not a plain EC one
            self.EVP_PKEY_free(pkey)
            return 0
        return pkey

    def free_key(self, pkey: int) -> None:
        self.EVP_PKEY_free(pkey)

    def public_point(self, pkey: int) -> bytes:
        out = ctypes.create_string_buffer(POINT_LEN)
        length = ctypes.c_size_t(0)
        if not self.EVP_PKEY_get_octet_string_param(pkey, b"pub", out, POINT_LEN, length):
            self.ERR_clear_error()
            raise ValueError("SM2 private key: libcrypto gave no public point")
        return out.raw[: length.value]

    def _contexts(self, pkey: int, uid: bytes) -> tuple[int, int]:
        mctx = self.EVP_MD_CTX_new()
        pctx = self.EVP_PKEY_CTX_new(pkey, None)
        if not mctx or not pctx or self.EVP_PKEY_CTX_set1_id(pctx, uid, len(uid)) != 1:
            self._free_contexts(mctx, pctx)
            raise MemoryError("libcrypto: no SM2 context")
        self.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
        return mctx, pctx

    def _free_contexts(self, mctx: int | None, pctx: int | None) -> None:
        # The digest context does not own a context given to it by set_pkey_ctx.
        if mctx:
            self.EVP_MD_CTX_free(mctx)
        if pctx:
            self.EVP_PKEY_CTX_free(pctx)

    def verify_digest(self, pkey: int, der: bytes, e: bytes) -> bool:
        """OpenSSL's SM2 check of a DER signature against e = SM3(Z_A || M)."""
        pctx = self.EVP_PKEY_CTX_new(pkey, None)
        if not pctx:
            raise MemoryError("libcrypto: no SM2 context")
        try:
            good = (
                self.EVP_PKEY_verify_init(pctx) == 1
                and self.EVP_PKEY_verify(pctx, der, len(der), e, len(e)) == 1
            )
        finally:
            self.EVP_PKEY_CTX_free(pctx)
        if not good:
            self.ERR_clear_error()
        return bool(good)

    def verify(self, pkey: int, der: bytes, message: bytes, uid: bytes) -> bool:
        """OpenSSL's whole SM2 verification of ``message`` (Z_A and e too), with ``uid`` set.

        Not on the token path (``Sm2PublicKey.verify`` computes e itself); the tests and
        the bench use it as OpenSSL's own figure and answer."""
        mctx, pctx = self._contexts(pkey, uid)
        try:
            good = (
                self.EVP_DigestVerifyInit(mctx, None, self.sm3_md, None, pkey) == 1
                and self.EVP_DigestVerify(mctx, der, len(der), message, len(message)) == 1
            )
        finally:
            self._free_contexts(mctx, pctx)
        if not good:
            self.ERR_clear_error()
        return bool(good)

    def sign(self, pkey: int, message: bytes, uid: bytes) -> bytes:
        mctx, pctx = self._contexts(pkey, uid)
        try:
            out = ctypes.create_string_buffer(80)
            length = ctypes.c_size_t(len(out))
            if (
                self.EVP_DigestSignInit(mctx, None, self.sm3_md, None, pkey) != 1
                or self.EVP_DigestSign(mctx, out, ctypes.byref(length), message, len(message)) != 1
            ):
                self.ERR_clear_error()
                raise RuntimeError("libcrypto: SM2 signing failed")
        finally:
            self._free_contexts(mctx, pctx)
        return out.raw[: length.value]

    def digest_sm3(self, data: bytes) -> bytes:
        out = ctypes.create_string_buffer(32)
        if self.EVP_Digest(data, len(data), out, None, self.sm3_md, None) != 1:
            raise RuntimeError("libcrypto: SM3 failed")
        return out.raw


def _load() -> _LibCrypto:
    # The soname first; find_library (which runs ldconfig) only when that fails.
    errors = []
    for name in ("libcrypto.so.3", None):
        name = name or ctypes.util.find_library("crypto")
        if not name:
            continue
        try:
            return _LibCrypto(ctypes.CDLL(name))
        except (OSError, AttributeError, ImportError) as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError(
        "protocol.sm2 needs OpenSSL 3's libcrypto.so.3 (Debian package libssl3): "
        + "; ".join(errors or ["not found"])
    )


_lib: Final = _load()


def _sm3_of(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


# Python's own hashlib has SM3 when it is built on OpenSSL 3 (Debian's python3 is);
# otherwise the same libcrypto does it.
_SM3: Final = _sm3_of if "sm3" in hashlib.algorithms_available else _lib.digest_sm3
