"""A small pure-Python SM2/SM3 reference, for the tests only: the second implementation.

Written from GB/T 32905-2016 (SM3) and GB/T 32918.2-2016 (SM2 signatures) with nothing
shared with protocol/sm2.py but the curve constants, so a fault in OpenSSL's binding (the
ID, the DER conversion, the point encoding) shows up as a disagreement. Slow (milliseconds
a signature) and not constant-time: never use it outside tests.
"""

from __future__ import annotations

import struct

P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
G = (
    0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)
DEFAULT_ID = b"1234567812345678"

Point = tuple[int, int] | None  # None is the point at infinity

# --- SM3 --------------------------------------------------------------------------------

_IV = (
    0x7380166F,
    0x4914B2B9,
    0x172442D7,
    0xDA8A0600,
    0xA96F30BC,
    0x163138AA,
    0xE38DEE4D,
    0xB0FB0E4E,
)
_M32 = 0xFFFFFFFF


def _rotl(x: int, n: int) -> int:
    n %= 32
    return ((x << n) | (x >> (32 - n))) & _M32


def _p0(x: int) -> int:
    return x ^ _rotl(x, 9) ^ _rotl(x, 17)


def _p1(x: int) -> int:
    return x ^ _rotl(x, 15) ^ _rotl(x, 23)


def _compress(v: list[int], block: bytes) -> list[int]:
    w = list(struct.unpack(">16I", block))
    for j in range(16, 68):
        w.append(_p1(w[j - 16] ^ w[j - 9] ^ _rotl(w[j - 3], 15)) ^ _rotl(w[j - 13], 7) ^ w[j - 6])
    w1 = [w[j] ^ w[j + 4] for j in range(64)]
    a, b, c, d, e, f, g, h = v
    for j in range(64):
        t = 0x79CC4519 if j < 16 else 0x7A879D8A
        ss1 = _rotl((_rotl(a, 12) + e + _rotl(t, j)) & _M32, 7)
        ss2 = ss1 ^ _rotl(a, 12)
        if j < 16:
            ff, gg = a ^ b ^ c, e ^ f ^ g
        else:
            ff, gg = (a & b) | (a & c) | (b & c), (e & f) | (~e & g)
        tt1 = (ff + d + ss2 + w1[j]) & _M32
        tt2 = (gg + h + ss1 + w[j]) & _M32
        a, b, c, d = tt1, a, _rotl(b, 9), c
        e, f, g, h = _p0(tt2), e, _rotl(f, 19), g
    return [x ^ y for x, y in zip((a, b, c, d, e, f, g, h), v, strict=True)]


def sm3(data: bytes) -> bytes:
    length = len(data) * 8
    padded = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + length.to_bytes(8, "big")
    v = list(_IV)
    for at in range(0, len(padded), 64):
        v = _compress(v, padded[at : at + 64])
    return struct.pack(">8I", *v)


# --- the curve --------------------------------------------------------------------------


def add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def mul(k: int, point: Point) -> Point:
    result: Point = None
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def public_point(d: int) -> bytes:
    q = mul(d, G)
    assert q is not None
    return b"\x04" + q[0].to_bytes(32, "big") + q[1].to_bytes(32, "big")


def z_a(point: bytes, uid: bytes = DEFAULT_ID) -> bytes:
    curve = b"".join(v.to_bytes(32, "big") for v in (A, B, G[0], G[1]))
    return sm3((len(uid) * 8).to_bytes(2, "big") + uid + curve + point[1:])


def sign(d: int, message: bytes, k: int, uid: bytes = DEFAULT_ID) -> bytes:
    """GB/T 32918.2 §6.1 with the caller's k (the tests' fixed nonces)."""
    e = int.from_bytes(sm3(z_a(public_point(d), uid) + message), "big")
    kg = mul(k, G)
    assert kg is not None
    r = (e + kg[0]) % N
    s = pow(1 + d, -1, N) * (k - r * d) % N
    assert r != 0 and r + k != N and s != 0, "pick another k"
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(point: bytes, signature: bytes, message: bytes, uid: bytes = DEFAULT_ID) -> bool:
    """GB/T 32918.2 §7.1."""
    if len(signature) != 64 or len(point) != 65 or point[0] != 4:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    t = (r + s) % N
    if t == 0:
        return False
    q = (int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big"))
    e = int.from_bytes(sm3(z_a(point, uid) + message), "big")
    xy = add(mul(s, G), mul(t, q))
    return xy is not None and (e + xy[0]) % N == r
