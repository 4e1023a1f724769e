"""QR token v1: the public vectors, the wallet that mints tokens, and the issuer-key rules.

Hostile inputs live in test_tokens_hostile.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import examples
from hwsim.wallet import (
    Issuer,
    StaticKeyring,
    Wallet,
    issue_credential,
    key_from_seed,
    kid_of,
    make_wallet,
    present,
    raw_public,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.tokens import (
    BAD_CREDENTIAL_SIGNATURE,
    BAD_PRESENTATION_SIGNATURE,
    CREDENTIAL_EXPIRED,
    CREDENTIAL_NOT_YET_VALID,
    PRESENTATION_FROM_FUTURE,
    PRESENTATION_STALE,
    REPLAYED,
    REVOKED,
    UNKNOWN_ISSUER_KEY,
    Allowance,
    IssuerKey,
    Presentation,
    SignatureMemo,
    TokenRejected,
    verify_presentation,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "vectors-v1.json").read_text())
NOW = 1_790_000_000
ACCEPT = "accept"


class VectorTerminal:
    """Steps 1-5 from tokens.py, plus an honest stand-in for steps 6 and 7.

    Replay memory is the highest accepted ctr per (iss, cti); revocation is
    checked in the spec's order: credential, cadre, holder key, issuer key.
    The issuer key is also given to the keyring, because tokens.py refuses a
    revoked issuer key at step 2 already.
    """

    def __init__(
        self,
        trust: Iterable[Mapping[str, Any]],
        revoked: Iterable[Mapping[str, str]] = (),
        window_s: int = 60,
        skew_s: int = 30,
    ) -> None:
        self.window_s, self.skew_s = window_s, skew_s
        self.highest_ctr: dict[tuple[str, bytes], int] = {}
        self.credentials: set[tuple[str, bytes]] = set()
        self.cadres: set[tuple[str, str]] = set()
        self.holder_keys: set[bytes] = set()
        self.issuer_keys: set[bytes] = set()
        for entry in revoked:
            kind = entry["kind"]
            if kind == "credential":
                self.credentials.add((entry["iss"], bytes.fromhex(entry["cti"])))
            elif kind == "cadre":
                self.cadres.add((entry["iss"], entry["sub"]))
            elif kind == "holder_key":
                self.holder_keys.add(bytes.fromhex(entry["public_key"]))
            elif kind == "issuer_key":
                self.issuer_keys.add(bytes.fromhex(entry["public_key"]))
            elif kind != "card":  # cards are not tokens
                raise AssertionError(f"unknown revocation kind {kind!r}")
        self.keyring = StaticKeyring.from_trust_entries(trust, revoked=self.issuer_keys)

    def scan(self, qr: str, now: int) -> str:
        try:
            p = verify_presentation(qr, now, self.keyring, self.window_s, self.skew_s)
        except TokenRejected as rejected:
            return rejected.code
        memory_key = (p.iss, p.cti)
        if memory_key in self.highest_ctr and p.ctr <= self.highest_ctr[memory_key]:
            return REPLAYED
        if (
            (p.iss, p.cti) in self.credentials
            or (p.iss, p.sub) in self.cadres
            or p.holder_key in self.holder_keys
            or p.issuer_key in self.issuer_keys
        ):
            return REVOKED
        self.highest_ctr[memory_key] = p.ctr
        return ACCEPT


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_public_vector(case: dict[str, Any]) -> None:
    terminal = VectorTerminal(
        VECTORS["trust"], case.get("revoked", ()), VECTORS["window_s"], VECTORS["skew_s"]
    )
    for number, step in enumerate(case["steps"]):
        assert terminal.scan(step["qr"], step["now"]) == step["expect"], f"step {number}"


def test_vector_harness_checks_holder_and_issuer_key_revocation() -> None:
    valid = VECTORS["cases"][0]["steps"][0]["qr"]
    holder = raw_public(key_from_seed("vector-holder-1")).hex()
    by_holder = VectorTerminal(VECTORS["trust"], [{"kind": "holder_key", "public_key": holder}])
    assert by_holder.scan(valid, NOW) == REVOKED
    issuer = VECTORS["trust"][0]["public_key"]
    by_issuer = VectorTerminal(VECTORS["trust"], [{"kind": "issuer_key", "public_key": issuer}])
    assert by_issuer.scan(valid, NOW) == REVOKED


# --- the wallet mints what the vectors hold -----------------------------------


def vector_issuer(n: int) -> Issuer:
    return Issuer("hn-test", key_from_seed(f"vector-issuer-{n}"))


def test_seeds_reproduce_vector_trust_keys() -> None:
    assert [vector_issuer(1).trust_entry(), vector_issuer(2).trust_entry()] == VECTORS["trust"]
    assert kid_of(vector_issuer(1).public_key) == bytes.fromhex(VECTORS["trust"][0]["kid"])


def test_wallet_reproduces_the_valid_vector_byte_for_byte() -> None:
    holder = key_from_seed("vector-holder-1")
    credential = issue_credential(
        vector_issuer(1),
        sub="C0001",
        unit="U-431000-01",
        display_name="Test Cadre",
        cti=bytes.fromhex("00112233445566778899aabb"),
        iat=1_789_913_600,
        exp=1_790_518_400,
        holder_public=raw_public(holder),
    )
    wallet = Wallet("hn-test", "C0001", "U-431000-01", "Test Cadre", b"", credential, holder)
    assert wallet.draw(1_789_999_995) == VECTORS["cases"][0]["steps"][0]["qr"]


@pytest.fixture
def issuer() -> Issuer:
    return Issuer("hn-chenzhou", key_from_seed("test-issuer-chenzhou"))


@pytest.fixture
def keyring(issuer: Issuer) -> StaticKeyring:
    return StaticKeyring([issuer.issuer_key()])


def test_wallet_code_verifies_and_carries_every_field(
    issuer: Issuer, keyring: StaticKeyring
) -> None:
    wallet = make_wallet(
        issuer, "C0042", "U-431002-07", "李四", now=NOW - 100, days=30, allowance=(2, 3000)
    )
    p = verify_presentation(wallet.draw(NOW - 5), NOW, keyring)
    assert p == Presentation(
        iss="hn-chenzhou",
        sub="C0042",
        cti=wallet.cti,
        ctr=1,
        t=NOW - 5,
        iat=NOW - 100,
        exp=NOW - 100 + 30 * 86_400,
        unit="U-431002-07",
        display_name="李四",
        allowance=Allowance(2, 3000),
        holder_key=raw_public(wallet.holder_key),
        issuer_key=issuer.public_key,
    )


def test_wallet_counter_and_json_round_trip(issuer: Issuer, keyring: StaticKeyring) -> None:
    wallet = make_wallet(issuer, "C1", "U1", "Zhang San", now=NOW, seed="phone-1")
    assert [verify_presentation(wallet.draw(NOW), NOW, keyring).ctr for _ in range(3)] == [1, 2, 3]
    assert verify_presentation(wallet.draw(NOW, ctr=1), NOW, keyring).ctr == 1
    assert wallet.ctr == 3
    again = Wallet.from_json(wallet.to_json())
    assert again.to_json() == wallet.to_json()
    assert verify_presentation(again.draw(NOW), NOW, keyring).ctr == 4


def test_seeded_wallets_repeat_and_unseeded_differ(issuer: Issuer) -> None:
    a = make_wallet(issuer, "C1", "U1", "n", now=NOW, seed="s")
    b = make_wallet(issuer, "C1", "U1", "n", now=NOW, seed="s")
    c = make_wallet(issuer, "C1", "U1", "n", now=NOW)
    assert a.credential == b.credential and a.cti == b.cti
    assert c.cti != a.cti


@pytest.mark.parametrize(
    ("allowance", "expected"),
    [
        (None, None),
        ((None, None), Allowance(None, None)),
        ((3, None), Allowance(3, None)),
        ((None, 0), Allowance(None, 0)),
    ],
)
def test_allowance_is_optional_in_parts(
    issuer: Issuer,
    keyring: StaticKeyring,
    allowance: tuple[int | None, int | None] | None,
    expected: Allowance | None,
) -> None:
    wallet = make_wallet(issuer, "C1", "U1", "n", now=NOW, allowance=allowance)
    assert verify_presentation(wallet.draw(NOW), NOW, keyring).allowance == expected


@pytest.mark.parametrize("tagged_credential", [False, True])
@pytest.mark.parametrize("tagged_presentation", [False, True])
@pytest.mark.parametrize("alg", [-8, -19])
def test_both_algs_and_tag_choices_verify(
    issuer: Issuer,
    keyring: StaticKeyring,
    alg: int,
    tagged_credential: bool,
    tagged_presentation: bool,
) -> None:
    holder = key_from_seed("holder")
    credential = issue_credential(
        issuer,
        sub="C1",
        unit="U1",
        display_name="n",
        cti=b"\x01" * 8,
        iat=NOW,
        exp=NOW + 1,
        holder_public=raw_public(holder),
        alg=alg,
        tagged=tagged_credential,
    )
    qr = present(credential, holder, t=NOW, ctr=0, alg=alg, tagged=tagged_presentation)
    assert verify_presentation(qr, NOW, keyring).ctr == 0


# --- the time checks at their edges -------------------------------------------


def rejected(qr: str, now: int, keyring: StaticKeyring, **kw: Any) -> str:
    with pytest.raises(TokenRejected) as info:
        verify_presentation(qr, now, keyring, **kw)
    return info.value.code


def test_credential_validity_edges(issuer: Issuer, keyring: StaticKeyring) -> None:
    wallet = make_wallet(issuer, "C1", "U1", "n", now=NOW, days=1)
    exp = NOW + 86_400
    assert verify_presentation(wallet.draw(exp - 1), exp - 1, keyring)
    assert rejected(wallet.draw(exp), exp, keyring) == CREDENTIAL_EXPIRED
    # iat may be up to skew ahead of the terminal's clock, not one second more.
    assert verify_presentation(wallet.draw(NOW - 30), NOW - 30, keyring)
    assert rejected(wallet.draw(NOW - 31), NOW - 31, keyring) == CREDENTIAL_NOT_YET_VALID
    assert verify_presentation(wallet.draw(NOW - 10), NOW - 10, keyring, skew_s=10)


def test_freshness_edges(issuer: Issuer, keyring: StaticKeyring) -> None:
    wallet = make_wallet(issuer, "C1", "U1", "n", now=NOW - 1000)
    assert verify_presentation(wallet.draw(NOW - 90), NOW, keyring)
    assert rejected(wallet.draw(NOW - 91), NOW, keyring) == PRESENTATION_STALE
    assert verify_presentation(wallet.draw(NOW + 30), NOW, keyring)
    assert rejected(wallet.draw(NOW + 31), NOW, keyring) == PRESENTATION_FROM_FUTURE
    assert rejected(wallet.draw(NOW - 11), NOW, keyring, window_s=5, skew_s=5) == (
        PRESENTATION_STALE
    )


# --- issuer keys -----------------------------------------------------------------


def windowed(issuer: Issuer, not_before: int | None, not_after: int | None) -> StaticKeyring:
    key = IssuerKey(issuer.iss, issuer.kid, issuer.public_key, not_before, not_after)
    return StaticKeyring([key])


def test_issuer_key_validity_window(issuer: Issuer) -> None:
    qr = make_wallet(issuer, "C1", "U1", "n", now=NOW - 100).draw(NOW)
    assert verify_presentation(qr, NOW, windowed(issuer, NOW, NOW + 1))
    assert rejected(qr, NOW, windowed(issuer, NOW + 1, None)) == UNKNOWN_ISSUER_KEY
    assert rejected(qr, NOW, windowed(issuer, None, NOW)) == UNKNOWN_ISSUER_KEY
    assert rejected(qr, NOW, windowed(issuer, NOW - 10, NOW - 5)) == UNKNOWN_ISSUER_KEY


def test_unknown_kid(issuer: Issuer) -> None:
    qr = make_wallet(issuer, "C1", "U1", "n", now=NOW).draw(NOW)
    assert rejected(qr, NOW, StaticKeyring()) == UNKNOWN_ISSUER_KEY


def test_two_trusted_keys_sharing_a_kid_are_each_tried(issuer: Issuer) -> None:
    other = Issuer(issuer.iss, key_from_seed("other key of the same issuer"))
    twin = IssuerKey(issuer.iss, issuer.kid, other.public_key)  # a forced kid collision
    qr = make_wallet(issuer, "C1", "U1", "n", now=NOW).draw(NOW)
    for keys in ([twin, issuer.issuer_key()], [issuer.issuer_key(), twin]):
        assert verify_presentation(qr, NOW, StaticKeyring(keys)).issuer_key == issuer.public_key
    assert rejected(qr, NOW, StaticKeyring([twin])) == BAD_CREDENTIAL_SIGNATURE


def test_revoked_issuer_key(issuer: Issuer) -> None:
    qr = make_wallet(issuer, "C1", "U1", "n", now=NOW).draw(NOW)
    keyring = StaticKeyring([issuer.issuer_key()], revoked=[issuer.public_key])
    assert rejected(qr, NOW, keyring) == REVOKED
    # Outside its window the key is simply not a candidate.
    outside = IssuerKey(issuer.iss, issuer.kid, issuer.public_key, not_after=NOW)
    assert rejected(qr, NOW, StaticKeyring([outside], [issuer.public_key])) == UNKNOWN_ISSUER_KEY


def test_revoked_twin_does_not_block_the_good_key(issuer: Issuer) -> None:
    other = Issuer(issuer.iss, key_from_seed("revoked twin"))
    twin = IssuerKey(issuer.iss, issuer.kid, other.public_key)
    qr = make_wallet(issuer, "C1", "U1", "n", now=NOW).draw(NOW)
    keyring = StaticKeyring([twin, issuer.issuer_key()], revoked=[other.public_key])
    assert verify_presentation(qr, NOW, keyring).issuer_key == issuer.public_key
    # The good key revoked instead: the twin is tried and cannot verify.
    keyring = StaticKeyring([twin, issuer.issuer_key()], revoked=[issuer.public_key])
    assert rejected(qr, NOW, keyring) == BAD_CREDENTIAL_SIGNATURE


def test_a_key_vouches_only_for_its_own_issuer(issuer: Issuer) -> None:
    # The key is trusted for hn-chenzhou; a credential it signs for another
    # issuer id must not be accepted under that id.
    rogue = Issuer("hn-changsha", issuer.key)
    qr = make_wallet(rogue, "C1", "U1", "n", now=NOW).draw(NOW)
    assert rejected(qr, NOW, StaticKeyring([issuer.issuer_key()])) == BAD_CREDENTIAL_SIGNATURE
    assert verify_presentation(qr, NOW, StaticKeyring([rogue.issuer_key()])).iss == "hn-changsha"


def test_presentation_signed_by_another_phone(issuer: Issuer, keyring: StaticKeyring) -> None:
    wallet = make_wallet(issuer, "C1", "U1", "n", now=NOW)
    thief = Wallet(**{**vars(wallet), "holder_key": key_from_seed("someone else")})
    assert rejected(thief.draw(NOW), NOW, keyring) == BAD_PRESENTATION_SIGNATURE


# --- property: any sane wallet verifies and round-trips ---------------------------

names = st.text(max_size=20)
uint63 = st.integers(min_value=0, max_value=2**63 - 1)


@settings(max_examples=examples(150), deadline=None)
@given(
    iss=names,
    sub=names,
    unit=names,
    display_name=names,
    cti=st.binary(min_size=8, max_size=16),
    ctr=uint63,
    age=st.integers(min_value=-90, max_value=30),
    allowance=st.none() | st.tuples(st.none() | uint63, st.none() | uint63),
    alg=st.sampled_from([-8, -19]),
    tagged=st.booleans(),
)
def test_any_valid_wallet_verifies(
    iss: str,
    sub: str,
    unit: str,
    display_name: str,
    cti: bytes,
    ctr: int,
    age: int,
    allowance: tuple[int | None, int | None] | None,
    alg: int,
    tagged: bool,
) -> None:
    issuer = Issuer(iss, key_from_seed("property issuer"))
    holder = key_from_seed("property holder")
    credential = issue_credential(
        issuer,
        sub=sub,
        unit=unit,
        display_name=display_name,
        cti=cti,
        iat=NOW - 10,
        exp=NOW + 10,
        holder_public=raw_public(holder),
        allowance=allowance,
        alg=alg,
        tagged=tagged,
    )
    wallet = Wallet(iss, sub, unit, display_name, cti, credential, holder)
    qr = wallet.draw(NOW + age, ctr=ctr, alg=alg, tagged=not tagged)
    p = verify_presentation(qr, NOW, StaticKeyring([issuer.issuer_key()]))
    assert (p.iss, p.sub, p.unit, p.display_name, p.cti, p.ctr, p.t) == (
        iss,
        sub,
        unit,
        display_name,
        cti,
        ctr,
        NOW + age,
    )
    assert p.allowance == (None if allowance is None else Allowance(*allowance))
    assert Wallet.from_json(wallet.to_json()).draw(NOW + age, ctr=ctr, alg=alg) == (
        wallet.draw(NOW + age, ctr=ctr, alg=alg)
    )


# --- the caller's memo (protocol/tokens.py SignatureMemo) ------------------------------
# (speed figures live in bench/core.py, not in timed tests)


@pytest.fixture
def curve_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The signatures whose curve arithmetic ran, in order."""
    from protocol import tokens

    seen: list[bytes] = []
    real = tokens._curve_verifies

    def counting(key: Any, signature: bytes, signed: bytes) -> bool:
        seen.append(signature)
        return real(key, signature, signed)

    monkeypatch.setattr(tokens, "_curve_verifies", counting)
    return seen


def test_a_memo_changes_no_answer(issuer: Issuer, keyring: StaticKeyring) -> None:
    memo = SignatureMemo()
    wallet = make_wallet(issuer, "P1", "U1", "n", now=NOW - 100)
    qr = wallet.draw(NOW)
    assert verify_presentation(qr, NOW, keyring, memo=memo).sub == "P1"
    # Both signatures are in the memo now, yet every rule still applies at each call's
    # own time and trust.
    assert verify_presentation(qr, NOW, keyring, memo=memo).sub == "P1"
    assert rejected(qr, NOW + 200, keyring, memo=memo) == PRESENTATION_STALE
    assert rejected(qr, NOW, StaticKeyring(), memo=memo) == UNKNOWN_ISSUER_KEY
    assert rejected(qr, NOW, windowed(issuer, NOW + 1, None), memo=memo) == UNKNOWN_ISSUER_KEY
    revoked = StaticKeyring([issuer.issuer_key()], revoked=[issuer.public_key])
    assert rejected(qr, NOW, revoked, memo=memo) == REVOKED
    # The credential is in the memo; a presentation signed by another key is not.
    thief = Wallet(**{**vars(wallet), "holder_key": key_from_seed("thief")})
    assert rejected(thief.draw(NOW), NOW, keyring, memo=memo) == BAD_PRESENTATION_SIGNATURE


def test_the_memo_spares_the_curve_only_for_the_same_bytes(
    issuer: Issuer, keyring: StaticKeyring, curve_checks: list[bytes]
) -> None:
    memo = SignatureMemo()
    wallet = make_wallet(issuer, "P2", "U1", "n", now=NOW - 100)
    qr = wallet.draw(NOW)
    verify_presentation(qr, NOW, keyring, memo=memo)
    assert len(curve_checks) == 2  # the credential's and the presentation's
    verify_presentation(qr, NOW, keyring, memo=memo)
    assert len(curve_checks) == 2  # the same code again: both found in the memo
    verify_presentation(wallet.draw(NOW), NOW, keyring, memo=memo)
    assert len(curve_checks) == 3  # a new code: only its presentation is new
    # Without a memo nothing is kept from one call to the next.
    verify_presentation(qr, NOW, keyring)
    verify_presentation(qr, NOW, keyring)
    assert len(curve_checks) == 7


def test_a_rogue_key_in_the_memo_does_not_vouch_for_another_key(issuer: Issuer) -> None:
    memo = SignatureMemo()
    rogue = Issuer(issuer.iss, key_from_seed("rogue"))
    # The rogue's code carries the real issuer's kid but the rogue's signature.
    fake = Issuer(issuer.iss, rogue.key)
    qr = make_wallet(fake, "R1", "U1", "n", now=NOW).draw(NOW)
    rogue_ring = StaticKeyring([IssuerKey(issuer.iss, fake.kid, rogue.public_key)])
    assert verify_presentation(qr, NOW, rogue_ring, memo=memo).sub == "R1"
    twin = StaticKeyring([IssuerKey(issuer.iss, fake.kid, issuer.public_key)])
    assert rejected(qr, NOW, twin, memo=memo) == BAD_CREDENTIAL_SIGNATURE


def test_the_memo_stays_bounded(issuer: Issuer, keyring: StaticKeyring) -> None:
    class Small(SignatureMemo):
        ISSUER_KEYS_MAX = 2
        GOOD_MAX = 5

    memo = Small()
    for i in range(6):
        qr = make_wallet(issuer, f"B{i}", "U1", "n", now=NOW - 100).draw(NOW)
        assert verify_presentation(qr, NOW, keyring, memo=memo).sub == f"B{i}"
        assert len(memo._good) <= 5
    for i in range(4):
        other = Issuer(f"hn-{i}", key_from_seed(f"other-{i}"))
        qr = make_wallet(other, "K", "U1", "n", now=NOW - 100).draw(NOW)
        verify_presentation(qr, NOW, StaticKeyring([other.issuer_key()]), memo=memo)
        assert len(memo._issuer_keys) <= 2


def test_the_token_modules_keep_no_mutable_state(issuer: Issuer, keyring: StaticKeyring) -> None:
    from protocol import issue, tokens

    mutable = (dict, list, set, bytearray)
    for module in (tokens, issue):
        found = [
            name
            for name, value in vars(module).items()
            if isinstance(value, mutable) and not name.startswith("__")
        ]
        assert not found, (module.__name__, sorted(found))
    # The refused-tag table is a read-only view, and the same after codes were checked.
    table = dict(tokens._SEMANTIC_REFUSED)
    for _ in range(3):
        qr = make_wallet(issuer, "S1", "U1", "n", now=NOW - 100).draw(NOW)
        verify_presentation(qr, NOW, keyring)
        rejected("CT1:" + qr[4:].lower(), NOW, keyring)
    assert dict(tokens._SEMANTIC_REFUSED) == table
