"""token.md §7 in protocol/tokens.py: every public vector (v1 and SM2), every mix of
Ed25519 and SM2, and bad §7 input getting the spec's reason, never a traceback.

Tokens are minted by tests/sm2kit.py (a second reading of the spec, with protocol/sm2.py
signing); the vectors were made by another SM2 implementation and checked by a third.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cbor2
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sm2kit import NOW, Key, claims, credential, present, qr, sign1, token

from protocol import sm2, tokens
from protocol.tokens import (
    BAD_CREDENTIAL_SIGNATURE,
    BAD_PRESENTATION_SIGNATURE,
    ED25519_KEY,
    MALFORMED,
    REPLAYED,
    REVOKED,
    SM2_KEY,
    UNKNOWN_ISSUER_KEY,
    UNSUPPORTED_ALG,
    IssuerKey,
    SignatureMemo,
    TokenRejected,
    verify_presentation,
)

DATA = Path(__file__).parent / "data"
VECTOR_FILES = ("vectors-v1.json", "vectors-sm2.json")
VECTORS = {name: json.loads((DATA / name).read_text()) for name in VECTOR_FILES}
ACCEPT = "accept"


class Keyring:
    """Trust entries as §5 and §7.4 give them ("alg" absent means Ed25519)."""

    def __init__(self, entries: Iterable[Mapping[str, Any]], revoked: Iterable[bytes] = ()):
        self.keys: dict[bytes, list[IssuerKey]] = {}
        for e in entries:
            alg = e.get("alg", ED25519_KEY)
            assert alg in (ED25519_KEY, SM2_KEY)
            key = IssuerKey(
                e["iss"], bytes.fromhex(e["kid"]), bytes.fromhex(e["public_key"]), alg=alg
            )
            assert key.kid == hashlib.sha256(key.public_key).digest()[:8]
            self.keys.setdefault(key.kid, []).append(key)
        self.revoked = set(revoked)

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        return self.keys.get(kid, [])

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        return public_key in self.revoked


class Terminal:
    """Steps 1-5 from tokens.py, 6 and 7 as the spec says (test_tokens.VectorTerminal's)."""

    def __init__(
        self,
        trust: Iterable[Mapping[str, Any]],
        revoked: Iterable[Mapping[str, str]] = (),
        window_s: int = 60,
        skew_s: int = 30,
    ) -> None:
        self.window_s, self.skew_s = window_s, skew_s
        self.highest: dict[tuple[str, bytes], int] = {}
        self.revoked: set[tuple[str, ...] | bytes] = set()
        issuer_keys = set()
        for entry in revoked:
            kind = entry["kind"]
            if kind == "credential":
                self.revoked.add(("credential", entry["iss"], entry["cti"]))
            elif kind == "cadre":
                self.revoked.add(("cadre", entry["iss"], entry["sub"]))
            elif kind in ("holder_key", "issuer_key"):
                raw = bytes.fromhex(entry["public_key"])
                assert len(raw) in (32, 65), entry
                if len(raw) == 65:
                    sm2.Sm2PublicKey.from_point(raw)  # §7.4: a point on the curve
                self.revoked.add(raw)
                if kind == "issuer_key":
                    issuer_keys.add(raw)
        self.keyring = Keyring(trust, issuer_keys)
        self.memo = SignatureMemo()

    def scan(self, code: str, now: int) -> str:
        try:
            p = verify_presentation(code, now, self.keyring, self.window_s, self.skew_s, self.memo)
        except TokenRejected as rejected:
            return rejected.code
        if (p.iss, p.cti) in self.highest and p.ctr <= self.highest[(p.iss, p.cti)]:
            return REPLAYED
        if (
            ("credential", p.iss, p.cti.hex()) in self.revoked
            or ("cadre", p.iss, p.sub) in self.revoked
            or p.holder_key in self.revoked
            or p.issuer_key in self.revoked
        ):
            return REVOKED
        self.highest[(p.iss, p.cti)] = p.ctr
        return ACCEPT


def _cases() -> list[Any]:
    return [
        pytest.param(VECTORS[name], case, id=f"{name[:-5]}:{case['name']}")
        for name in VECTOR_FILES
        for case in VECTORS[name]["cases"]
    ]


@pytest.mark.parametrize(("vectors", "case"), _cases())
def test_public_vector(vectors: dict[str, Any], case: dict[str, Any]) -> None:
    terminal = Terminal(
        vectors["trust"], case.get("revoked", ()), vectors["window_s"], vectors["skew_s"]
    )
    for number, step in enumerate(case["steps"]):
        assert terminal.scan(step["qr"], step["now"]) == step["expect"], f"step {number}"


def test_sm2_vector_keys_come_from_their_seeds() -> None:
    sm2_vectors = VECTORS["vectors-sm2.json"]
    issuer, holder = (
        Key.from_sm2_seed("vector-sm2-issuer-1"),
        Key.from_sm2_seed("vector-sm2-holder-1"),
    )
    assert sm2_vectors["trust"][0] == issuer.trust_entry()
    assert sm2_vectors["trust"][1] == Key.from_ed25519_seed("vector-issuer-1").trust_entry()
    by_name = {c["name"]: c for c in sm2_vectors["cases"]}
    revoked_holder = by_name["sm2_holder_key_revoked"]["revoked"][0]["public_key"]
    assert revoked_holder == holder.raw.hex()


def test_sm2_vector_accepted_holds_the_sm2_keys() -> None:
    vectors = VECTORS["vectors-sm2.json"]
    code = vectors["cases"][0]["steps"][0]["qr"]
    p = verify_presentation(code, NOW, Keyring(vectors["trust"]))
    assert p.issuer_key == Key.from_sm2_seed("vector-sm2-issuer-1").raw
    assert p.holder_key == Key.from_sm2_seed("vector-sm2-holder-1").raw
    assert len(p.holder_key) == 65


# --- every mix, minted here ----------------------------------------------------------------

SM2_ISSUER, SM2_HOLDER = Key.from_sm2_seed("kit-sm2-issuer"), Key.from_sm2_seed("kit-sm2-holder")
ED_ISSUER, ED_HOLDER = (
    Key.from_ed25519_seed("kit-ed-issuer"),
    Key.from_ed25519_seed("kit-ed-holder"),
)
KEYRING = Keyring([SM2_ISSUER.trust_entry(), ED_ISSUER.trust_entry()])
MIXES = [
    pytest.param(SM2_ISSUER, SM2_HOLDER, id="sm2-issuer-sm2-holder"),
    pytest.param(SM2_ISSUER, ED_HOLDER, id="sm2-issuer-ed25519-holder"),
    pytest.param(ED_ISSUER, SM2_HOLDER, id="ed25519-issuer-sm2-holder"),
    pytest.param(ED_ISSUER, ED_HOLDER, id="ed25519-issuer-ed25519-holder"),
]


def verdict(code: str, keyring: Any = KEYRING, now: int = NOW) -> str:
    try:
        verify_presentation(code, now, keyring)
    except TokenRejected as rejected:
        return rejected.code
    return ACCEPT


@pytest.mark.parametrize(("issuer", "holder"), MIXES)
def test_every_mix_is_accepted_with_its_keys(issuer: Key, holder: Key) -> None:
    p = verify_presentation(token(issuer, holder), NOW, KEYRING)
    assert (p.issuer_key, p.holder_key, p.sub) == (issuer.raw, holder.raw, "C0001")


@pytest.mark.parametrize(("issuer", "holder"), MIXES)
def test_every_mix_refuses_what_the_spec_refuses(issuer: Key, holder: Key) -> None:
    # Each tampered signature, in the spec's order: credential before presentation.
    cred = credential(issuer, holder)
    bad_cred = bytearray(cred)
    bad_cred[-1] ^= 1  # the last byte of the issuer's signature
    assert verdict(present(holder, bytes(bad_cred))) == BAD_CREDENTIAL_SIGNATURE
    both_bad = present(holder, bytes(bad_cred), signature=b"\x01" * 64)
    assert verdict(both_bad) == BAD_CREDENTIAL_SIGNATURE
    assert verdict(present(holder, cred, signature=b"\x01" * 64)) == BAD_PRESENTATION_SIGNATURE
    # Another holder of the same type signed: the cnf key does not verify it.
    other = (
        Key.from_sm2_seed("other-phone")
        if holder.alg_name == SM2_KEY
        else Key.from_ed25519_seed("other-phone")
    )
    payload = cbor2.dumps({1: cred, 2: NOW - 5, 3: 1})
    assert verdict(present(other, cred)) == BAD_PRESENTATION_SIGNATURE
    assert verdict(qr(sign1(other, payload))) == BAD_PRESENTATION_SIGNATURE
    # Unknown issuer, revoked issuer, stale code: the same codes as v1.
    assert verdict(token(issuer, holder), Keyring([])) == UNKNOWN_ISSUER_KEY
    revoked = Keyring([issuer.trust_entry()], [issuer.raw])
    assert verdict(token(issuer, holder), revoked) == REVOKED
    assert verdict(token(issuer, holder, t=NOW - 200)) == "presentation_stale"
    assert verdict(token(issuer, holder, t=NOW + 200)) == "presentation_from_future"


@pytest.mark.parametrize("alg", [-8, -19])
def test_sm2_holder_under_an_ed25519_alg(alg: int) -> None:
    # An SM2 cnf key under alg -8 / -19: a known alg that does not match the key (§7.3).
    assert verdict(token(SM2_ISSUER, SM2_HOLDER, alg=alg)) == BAD_PRESENTATION_SIGNATURE
    # Even when the "signature" is 64 bytes of an Ed25519 signature by some key.
    fake = Key.from_ed25519_seed("x").sign(b"whatever")
    assert (
        verdict(token(ED_ISSUER, SM2_HOLDER, alg=alg, signature=fake)) == BAD_PRESENTATION_SIGNATURE
    )


def test_ed25519_holder_under_the_sm2_alg() -> None:
    assert verdict(token(SM2_ISSUER, ED_HOLDER, alg=sm2.ALG)) == BAD_PRESENTATION_SIGNATURE


def test_credential_alg_must_match_the_issuer_key() -> None:
    # An SM2 issuer's credential labelled -8, and an Ed25519 issuer's labelled -70001:
    # the key with that kid is of the other algorithm, so none verifies it.
    for issuer, alg in ((SM2_ISSUER, -8), (SM2_ISSUER, -19), (ED_ISSUER, sm2.ALG)):
        cred = credential(issuer, SM2_HOLDER, alg=alg)
        assert verdict(present(SM2_HOLDER, cred)) == BAD_CREDENTIAL_SIGNATURE


def test_an_sm2_key_trusted_as_ed25519_verifies_nothing() -> None:
    # A trust entry whose alg was lost: the 65-byte key under Ed25519 is no key at all,
    # and an Ed25519 key trusted as SM2 neither.
    wrong = [
        IssuerKey("hn-test", SM2_ISSUER.kid, SM2_ISSUER.raw),  # alg defaults to Ed25519
        IssuerKey("hn-test", ED_ISSUER.kid, ED_ISSUER.raw, alg=SM2_KEY),
        IssuerKey("hn-test", SM2_ISSUER.kid, SM2_ISSUER.raw, alg="SM2"),  # not a known alg
    ]
    for key in wrong:
        issuer = SM2_ISSUER if key.kid == SM2_ISSUER.kid else ED_ISSUER
        keyring = _KeyList([key])
        assert verdict(token(issuer, ED_HOLDER), keyring) == BAD_CREDENTIAL_SIGNATURE


class _KeyList:
    def __init__(self, keys: list[IssuerKey]) -> None:
        self.keys = keys

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        return [k for k in self.keys if k.kid == kid]

    def issuer_key_revoked(self, public_key: bytes) -> bool:
        return False


def test_an_ed25519_and_an_sm2_key_may_share_a_kid() -> None:
    # §7.3: each key with the kid is tried, and only the one of the credential's alg counts.
    shared = SM2_ISSUER.kid
    keyring = _KeyList(
        [
            IssuerKey("hn-test", shared, ED_ISSUER.raw),
            IssuerKey("hn-test", shared, SM2_ISSUER.raw, alg=SM2_KEY),
        ]
    )
    ed_cred = sign1(ED_ISSUER, claims(ED_HOLDER.cose_key()), kid=shared)
    assert verdict(present(ED_HOLDER, ed_cred), keyring) == ACCEPT
    assert verdict(token(SM2_ISSUER, ED_HOLDER), keyring) == ACCEPT


@pytest.mark.parametrize("length", [0, 63, 65, 72, 200])
def test_sm2_signature_of_the_wrong_length_does_not_verify(length: int) -> None:
    cred = credential(SM2_ISSUER, SM2_HOLDER)
    good = _presentation_signature(SM2_HOLDER, cred)
    sig = (good + bytes(200))[:length]
    assert verdict(present(SM2_HOLDER, cred, signature=sig)) == BAD_PRESENTATION_SIGNATURE
    bad_cred = credential(SM2_ISSUER, SM2_HOLDER, signature=sig)
    assert verdict(present(SM2_HOLDER, bad_cred)) == BAD_CREDENTIAL_SIGNATURE


def test_ed25519_signature_of_the_wrong_length_is_still_malformed() -> None:
    # v1's rule (§4: sizes), kept: only §7.1 makes SM2's wrong length a bad signature.
    cred = credential(ED_ISSUER, ED_HOLDER)
    assert verdict(present(ED_HOLDER, cred, signature=bytes(65))) == MALFORMED
    assert (
        verdict(present(SM2_HOLDER, credential(ED_ISSUER, SM2_HOLDER, signature=bytes(63))))
        == MALFORMED
    )


def _presentation_signature(holder: Key, cred: bytes) -> bytes:
    payload = cbor2.dumps({1: cred, 2: NOW - 5, 3: 1})
    return cbor2.loads(sign1(holder, payload))[3]  # type: ignore[no-any-return]


@pytest.mark.parametrize("which", ["r", "s"])
@pytest.mark.parametrize("value", ["zero", "n", "n+1", "max"])
def test_sm2_r_or_s_out_of_range(which: str, value: str) -> None:
    number = {"zero": 0, "n": sm2.N, "n+1": sm2.N + 1, "max": 2**256 - 1}[value]
    cred = credential(SM2_ISSUER, SM2_HOLDER)
    good = _presentation_signature(SM2_HOLDER, cred)
    r, s = good[:32], good[32:]
    raw = number.to_bytes(32, "big")
    sig = raw + s if which == "r" else r + raw
    assert verdict(present(SM2_HOLDER, cred, signature=sig)) == BAD_PRESENTATION_SIGNATURE


def test_sm2_r_plus_s_equal_to_n() -> None:
    cred = credential(SM2_ISSUER, SM2_HOLDER)
    r = int.from_bytes(_presentation_signature(SM2_HOLDER, cred)[:32], "big")
    sig = r.to_bytes(32, "big") + (sm2.N - r).to_bytes(32, "big")
    assert verdict(present(SM2_HOLDER, cred, signature=sig)) == BAD_PRESENTATION_SIGNATURE


def test_sm2_signed_with_another_distinguishing_id() -> None:
    for uid in (b"", b"ALICE123@YAHOO.COM"):
        assert verdict(token(SM2_ISSUER, SM2_HOLDER, uid=uid)) == BAD_PRESENTATION_SIGNATURE
        cred = credential(SM2_ISSUER, SM2_HOLDER, uid=uid)
        assert verdict(present(SM2_HOLDER, cred)) == BAD_CREDENTIAL_SIGNATURE


def _cnf_token(cose_key: Any) -> str:
    cred = sign1(SM2_ISSUER, claims(cose_key), kid=SM2_ISSUER.kid)
    return present(SM2_HOLDER, cred)


def _bad_cnf_keys() -> list[Any]:
    x, y = SM2_HOLDER.raw[1:33], SM2_HOLDER.raw[33:]
    off_curve = (int.from_bytes(y, "big") + 1).to_bytes(32, "big")
    p_bytes = sm2.P.to_bytes(32, "big")
    return [
        pytest.param({1: 2, -1: -70001, -2: x, -3: off_curve}, id="point-off-curve"),
        pytest.param({1: 2, -1: -70001, -2: x, -3: p_bytes}, id="y-equal-to-p"),
        pytest.param({1: 2, -1: -70001, -2: bytes(32), -3: bytes(32)}, id="zero-point"),
        pytest.param({1: 2, -1: -70001, -2: x[1:], -3: y}, id="x-31-bytes"),
        pytest.param({1: 2, -1: -70001, -2: x, -3: y + b"\x00"}, id="y-33-bytes"),
        pytest.param({1: 2, -1: -70001, -2: x}, id="no-y"),
        pytest.param({1: 2, -1: -70001, -2: x, -3: True}, id="y-compressed-sign-bit"),
        pytest.param({1: 2, -1: -70001, -2: x, -3: y, 3: -70001}, id="extra-label"),
        pytest.param({1: 2, -1: 1, -2: x, -3: y}, id="crv-P-256"),
        pytest.param({1: 2, -1: -70002, -2: x, -3: y}, id="crv-unknown"),
        pytest.param({1: 2, -1: "-70001", -2: x, -3: y}, id="crv-text"),
        pytest.param({1: 1, -1: -70001, -2: x, -3: y}, id="kty-OKP-crv-sm2"),
        pytest.param({1: 1, -1: -70001, -2: x}, id="kty-OKP-crv-sm2-no-y"),
        pytest.param({1: 3, -1: -70001, -2: x, -3: y}, id="kty-RSA"),
        pytest.param({1: 2, -1: 6, -2: x, -3: y}, id="kty-EC2-crv-ed25519"),
        pytest.param({1: 1, -1: 6, -2: SM2_HOLDER.raw}, id="ed25519-x-65-bytes"),
        pytest.param({1: 2, -1: -70001, -2: int.from_bytes(x, "big"), -3: y}, id="x-int"),
    ]


@pytest.mark.parametrize("cose_key", _bad_cnf_keys())
def test_bad_sm2_cnf_keys_are_malformed(cose_key: Any) -> None:
    assert verdict(_cnf_token(cose_key)) == MALFORMED


def test_good_sm2_cnf_key_through_the_same_helper() -> None:
    # The helper above makes a good token from a good key, so each MALFORMED is the key's.
    assert verdict(_cnf_token(SM2_HOLDER.cose_key())) == ACCEPT


def test_unknown_alg_near_sm2() -> None:
    for alg in (-70002, -70000, 70001, -7):
        assert verdict(token(SM2_ISSUER, SM2_HOLDER, alg=alg)) == UNSUPPORTED_ALG
        cred = credential(SM2_ISSUER, SM2_HOLDER, alg=alg)
        assert verdict(present(SM2_HOLDER, cred)) == UNSUPPORTED_ALG


def test_memo_keeps_both_key_types_and_changes_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = tokens._curve_verifies

    def counting(key: Any, signature: bytes, signed: bytes) -> bool:
        calls.append(type(key).__name__)
        return real(key, signature, signed)

    monkeypatch.setattr(tokens, "_curve_verifies", counting)
    memo = SignatureMemo()
    codes = [
        token(i, h, ctr=n)
        for n, (i, h) in enumerate(
            [(SM2_ISSUER, SM2_HOLDER), (ED_ISSUER, SM2_HOLDER), (SM2_ISSUER, ED_HOLDER)]
        )
    ]
    for code in codes:
        verify_presentation(code, NOW, KEYRING, memo=memo)
    first = len(calls)
    assert sorted(set(calls)) == ["Ed25519PublicKey", "Sm2PublicKey"]
    for code in codes:
        verify_presentation(code, NOW, KEYRING, memo=memo)  # shown again: no curve work
    assert len(calls) == first
    # A tampered SM2 code is refused with the memo as without it.
    cred = credential(SM2_ISSUER, SM2_HOLDER)
    bad = present(SM2_HOLDER, cred, signature=b"\x02" * 64)
    with pytest.raises(TokenRejected, match=BAD_PRESENTATION_SIGNATURE):
        verify_presentation(bad, NOW, KEYRING, memo=memo)
    with pytest.raises(TokenRejected, match=BAD_PRESENTATION_SIGNATURE):
        verify_presentation(bad, NOW, KEYRING, memo=memo)


# --- mutated SM2 tokens: a spec code, never a traceback ------------------------------------

_SEED_TOKENS = [
    token(SM2_ISSUER, SM2_HOLDER),
    token(ED_ISSUER, SM2_HOLDER),
    token(SM2_ISSUER, ED_HOLDER),
]
_SEED_BYTES = [tokens._b45decode(t[4:]) for t in _SEED_TOKENS]
_CODES = {
    tokens.MALFORMED,
    tokens.UNSUPPORTED_ALG,
    tokens.UNKNOWN_ISSUER_KEY,
    tokens.BAD_CREDENTIAL_SIGNATURE,
    tokens.BAD_PRESENTATION_SIGNATURE,
    tokens.CREDENTIAL_EXPIRED,
    tokens.CREDENTIAL_NOT_YET_VALID,
    tokens.PRESENTATION_STALE,
    tokens.PRESENTATION_FROM_FUTURE,
    tokens.REVOKED,
}


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_SEED_BYTES) - 1),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_sm2_tokens_get_a_spec_code(which: int, edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(_SEED_BYTES[which])
    for at, value, how in edits:
        at %= len(data) + 1
        if how == "x" and at < len(data):
            data[at] ^= value or 1
        elif how == "i":
            data.insert(at, value)
        elif at < len(data):
            del data[at]
    try:
        verify_presentation(qr(bytes(data)), NOW, KEYRING)
    except TokenRejected as rejected:
        assert rejected.code in _CODES
