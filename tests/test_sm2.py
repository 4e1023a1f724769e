"""protocol/sm2.py: the standard's example, a second implementation, and what must be refused.

The second implementations are tests/sm2ref.py (pure Python, written from the standards)
and the ``openssl`` command line with ``-pkeyopt distid:...`` (another route into the
library, which checks the binding's ID, DER and key handling).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import sm2ref
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import sm2
from protocol.sm2 import DEFAULT_ID, N, P, Sm2PrivateKey, Sm2PublicKey

# GM/T 0003.5-2012 Annex A / GB/T 32918.5-2017 Annex A, as token.md §7.6 prints it.
ANNEX_D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
ANNEX_X = bytes.fromhex("09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020")
ANNEX_Y = bytes.fromhex("CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
ANNEX_ZA = bytes.fromhex("B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3")
ANNEX_E = bytes.fromhex("F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640")
ANNEX_K = 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21
ANNEX_R = bytes.fromhex("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3")
ANNEX_S = bytes.fromhex("B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA")
ANNEX_M = b"message digest"


def test_sm3_standard_examples() -> None:
    # GB/T 32905-2016 Annex A: "abc" and "abcd" sixteen times.
    assert sm2.sm3(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    assert sm2.sm3(b"abcd" * 16).hex() == (
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )
    for data in (b"", b"a" * 55, b"a" * 56, b"a" * 64, bytes(range(256)) * 3):
        assert sm2.sm3(data) == sm2ref.sm3(data)
        # The fallback for a Python whose hashlib has no SM3: libcrypto's EVP_Digest.
        assert sm2._lib.digest_sm3(data) == sm2ref.sm3(data)


def test_annex_a_example() -> None:
    key = Sm2PrivateKey.from_bytes(ANNEX_D)
    point = key.public_key().point
    assert point == b"\x04" + ANNEX_X + ANNEX_Y
    assert sm2.z_a(point) == ANNEX_ZA
    assert sm2.sm3(ANNEX_ZA + ANNEX_M) == ANNEX_E
    # OpenSSL draws its own k, so the published (r, s) is verified, not made; the test's
    # reference makes it with the published k, which checks the reference too.
    assert sm2ref.sign(int.from_bytes(ANNEX_D, "big"), ANNEX_M, ANNEX_K) == ANNEX_R + ANNEX_S
    public = Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    assert public.verify(ANNEX_R + ANNEX_S, ANNEX_M)
    assert not public.verify(ANNEX_R + ANNEX_S, b"message digesT")
    assert not public.verify(ANNEX_R + ANNEX_S, ANNEX_M, uid=b"")  # OpenSSL's default ID
    assert not public.verify(ANNEX_R + ANNEX_S, ANNEX_M, uid=b"ALICE123@YAHOO.COM")


def test_signatures_agree_with_the_reference_both_ways() -> None:
    key = Sm2PrivateKey.generate()
    d = int.from_bytes(key.to_bytes(), "big")
    point = key.public_key().point
    assert sm2ref.public_point(d) == point
    assert sm2.z_a(point, b"ALICE123@YAHOO.COM") == sm2ref.z_a(point, b"ALICE123@YAHOO.COM")
    for message, uid in (
        (b"", DEFAULT_ID),
        (b"x" * 300, DEFAULT_ID),
        (b"m", b"ALICE123@YAHOO.COM"),
    ):
        ours = key.sign(message, uid)
        assert len(ours) == 64
        assert sm2ref.verify(point, ours, message, uid)
        assert not sm2ref.verify(point, ours, message + b".", uid)
        theirs = sm2ref.sign(d, message, 0x1234567 + len(message), uid)
        assert key.public_key().verify(theirs, message, uid)
        assert not key.public_key().verify(theirs, message, b"other" + uid)


def test_each_signature_uses_a_fresh_nonce() -> None:
    key = Sm2PrivateKey.generate()
    first, second = key.sign(b"same"), key.sign(b"same")
    assert first != second
    assert first[:32] != second[:32]  # r differs, so k did
    assert key.public_key().verify(first, b"same") and key.public_key().verify(second, b"same")


def _openssl_verifies(
    tmp_path: Path, point: bytes, signature: bytes, message: bytes, *opts: str
) -> bool:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    der = sm2._der_signature(r, s)
    (tmp_path / "pub.der").write_bytes(sm2._SPKI_PREFIX + point)
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "msg").write_bytes(message)
    done = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "pub.der",
         "-rawin", "-digest", "sm3", "-in", "msg", "-sigfile", "sig.der", *opts],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.returncode == 0 and "Signature Verified Successfully" in done.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command (package openssl)")
def test_openssl_command_line_agrees(tmp_path: Path) -> None:
    key = Sm2PrivateKey.generate()
    point, message = key.public_key().point, b"a Sig_structure"
    signature = key.sign(message)
    distid = "distid:1234567812345678"
    assert _openssl_verifies(tmp_path, point, signature, message, "-pkeyopt", distid)
    assert not _openssl_verifies(tmp_path, point, signature, message + b"!", "-pkeyopt", distid)
    # §7.1's warning, shown: without the ID, OpenSSL uses an empty one and refuses it.
    assert not _openssl_verifies(tmp_path, point, signature, message)
    # And the other way: OpenSSL's own signature, made with the default ID, verifies here.
    (tmp_path / "key.der").write_bytes(sm2._PKCS8_PREFIX + key.to_bytes())
    (tmp_path / "msg").write_bytes(message)
    der = subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-keyform", "DER", "-inkey", "key.der", "-rawin",
         "-digest", "sm3", "-in", "msg", "-pkeyopt", distid],
        cwd=tmp_path, capture_output=True, check=True,
    ).stdout  # fmt: skip
    r, s = sm2._parse_der_signature(der)
    assert key.public_key().verify(r.to_bytes(32, "big") + s.to_bytes(32, "big"), message)


def _annex_signature(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.mark.parametrize(
    ("what", "r", "s"),
    [
        ("r = 0", 0, int.from_bytes(ANNEX_S, "big")),
        ("s = 0", int.from_bytes(ANNEX_R, "big"), 0),
        ("r = n", N, int.from_bytes(ANNEX_S, "big")),
        ("s = n", int.from_bytes(ANNEX_R, "big"), N),
        ("s = 5 + n (5 mod n)", int.from_bytes(ANNEX_R, "big"), 5 + N),
        ("r = 2^256 - 1", 2**256 - 1, int.from_bytes(ANNEX_S, "big")),
        ("r + s = n", int.from_bytes(ANNEX_R, "big"), N - int.from_bytes(ANNEX_R, "big")),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)  # fmt: skip
def test_out_of_range_r_and_s_do_not_verify(what: str, r: int, s: int) -> None:
    public = Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    signature = _annex_signature(r, s)
    assert not public.verify(signature, ANNEX_M), what
    assert not sm2ref.verify(public.point, signature, ANNEX_M), what


def test_r_plus_s_equal_to_n_is_refused_before_the_curve() -> None:
    # With t = (r + s) mod n = 0 the check point is s*G, which an attacker can aim at;
    # the spec makes the signature invalid outright, whatever the curve would say.
    public = Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    for r in (1, int.from_bytes(ANNEX_R, "big"), N - 1):
        assert not public.verify(_annex_signature(r, N - r), ANNEX_M)


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 72, 128])
def test_wrong_length_signatures_do_not_verify(length: int) -> None:
    public = Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    good = ANNEX_R + ANNEX_S
    signature = (good + b"\x00" * 64)[:length]
    assert not public.verify(signature, ANNEX_M)
    # A DER signature (what OpenSSL itself speaks) is not the spec's r || s either.
    der = sm2._der_signature(int.from_bytes(ANNEX_R, "big"), int.from_bytes(ANNEX_S, "big"))
    assert not public.verify(der, ANNEX_M)


def test_verify_never_raises_on_wrong_types() -> None:
    public = Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    good = ANNEX_R + ANNEX_S
    assert not public.verify(bytearray(good), ANNEX_M)  # type: ignore[arg-type]
    assert not public.verify(good.hex(), ANNEX_M)  # type: ignore[arg-type]
    assert not public.verify(good, "message digest")  # type: ignore[arg-type]
    assert not public.verify(good, ANNEX_M, uid=None)  # type: ignore[arg-type]
    assert not public.verify(good, ANNEX_M, uid=b"x" * 8192)


@settings(max_examples=examples(60), deadline=None)
@given(signature=st.binary(min_size=0, max_size=80), flip=st.integers(0, 511))
def test_random_and_bit_flipped_signatures_do_not_verify(signature: bytes, flip: int) -> None:
    public = Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    assert not public.verify(signature, ANNEX_M)
    good = bytearray(ANNEX_R + ANNEX_S)
    good[flip // 8] ^= 1 << (flip % 8)
    assert not public.verify(bytes(good), ANNEX_M)


def _point(x: int, y: int) -> bytes:
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def test_points_not_on_the_curve_are_refused() -> None:
    x, y = int.from_bytes(ANNEX_X, "big"), int.from_bytes(ANNEX_Y, "big")
    assert Sm2PublicKey.from_point(_point(x, y)).point == _point(x, y)
    assert Sm2PublicKey.from_point(_point(x, P - y)).point == _point(x, P - y)  # -Q is a point
    bad = [
        _point(x, y + 1),
        _point(x + 1, y),
        _point(0, 0),  # not the point at infinity's encoding, and not on the curve
        _point(P, y),  # a coordinate >= p is refused, not reduced
        _point(x, P),
        _point(2**256 - 1, 2**256 - 1),
        b"\x02" + ANNEX_X + ANNEX_Y,
        b"\x06" + ANNEX_X + ANNEX_Y,
        b"\x00",
        b"\x02" + ANNEX_X,  # compressed form: the spec allows only 04||x||y
        b"\x03" + ANNEX_X,
        ANNEX_X + ANNEX_Y,  # 64 bytes without the 04
        _point(x, y) + b"\x00",
        b"",
    ]
    for raw in bad:
        with pytest.raises(ValueError, match="SM2 public key"):
            Sm2PublicKey.from_point(raw)
    with pytest.raises(ValueError, match="SM2 public key"):
        Sm2PublicKey.from_point(bytearray(_point(x, y)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SM2 public key"):
        Sm2PublicKey.from_xy(ANNEX_X, (y + 1).to_bytes(32, "big"))
    for x_raw, y_raw in ((ANNEX_X[1:], ANNEX_Y), (ANNEX_X, ANNEX_Y + b"\x00"), (b"", b"")):
        with pytest.raises(ValueError, match="32 bytes"):
            Sm2PublicKey.from_xy(x_raw, y_raw)


def test_private_key_range_and_length() -> None:
    for d in (0, N - 1, N, 2**256 - 1):
        with pytest.raises(ValueError, match=r"\[1, n-2\]"):
            Sm2PrivateKey.from_bytes(d.to_bytes(32, "big"))
    for raw in (b"\x01" * 31, b"\x01" * 33, b""):
        with pytest.raises(ValueError, match="32 bytes"):
            Sm2PrivateKey.from_bytes(raw)
    for d in (1, N - 2):
        key = Sm2PrivateKey.from_bytes(d.to_bytes(32, "big"))
        assert key.to_bytes() == d.to_bytes(32, "big")
        assert key.public_key().point == sm2ref.public_point(d)
        assert key.public_key().verify(key.sign(b"edge"), b"edge")


def test_keys_compare_by_point_and_hide_the_secret() -> None:
    key = Sm2PrivateKey.from_bytes(ANNEX_D)
    assert key.public_key() == Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)
    assert len({key.public_key(), Sm2PublicKey.from_xy(ANNEX_X, ANNEX_Y)}) == 1
    assert ANNEX_D.hex() not in repr(key).lower()


def test_openssl_checks_the_point_too() -> None:
    # Belt and braces: the Python check in from_point runs first, and OpenSSL's own
    # import refuses a point off the curve as well, by either route.
    good = b"\x04" + ANNEX_X + ANNEX_Y
    off = b"\x04" + ANNEX_X + (int.from_bytes(ANNEX_Y, "big") + 1).to_bytes(32, "big")
    for load in (sm2._lib.load_public, lambda p: sm2._lib.load_public_spki(sm2._SPKI_PREFIX + p)):
        key = load(good)
        assert key
        sm2._lib.free_key(key)
        assert load(off) == 0


@pytest.mark.parametrize("uid", [DEFAULT_ID, b"ALICE123@YAHOO.COM", b""])
def test_openssl_whole_verification_agrees(uid: bytes) -> None:
    # verify() computes Z_A and e itself and asks OpenSSL for the curve check only;
    # OpenSSL's own EVP_DigestVerify with the ID set must give the same answers.
    key = Sm2PrivateKey.generate()
    public = key.public_key()
    message = b"Signature1 bytes"
    signature = key.sign(message, uid)
    der = sm2._der_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    for m, u, expected in (
        (message, uid, True),
        (message + b"!", uid, False),
        (message, uid + b"x", False),
    ):
        assert public.verify(signature, m, u) is expected
        assert sm2._lib.verify(public._pkey, der, m, u) is expected


def test_one_key_verifies_from_several_threads_at_once() -> None:
    # ctypes lets go of the GIL during each OpenSSL call, so these calls really overlap;
    # each makes its own OpenSSL context, and the shared key is only read.
    from concurrent.futures import ThreadPoolExecutor

    key = Sm2PrivateKey.generate()
    public = key.public_key()
    messages = [bytes([i]) * (50 + i) for i in range(8)]
    signatures = [key.sign(m) for m in messages]

    def check(i: int) -> tuple[bool, bool]:
        m, s = messages[i % 8], signatures[i % 8]
        return public.verify(s, m), public.verify(s, m + b"!")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(check, range(64)))
    assert results == [(True, False)] * 64
