"""QR token v1 against hostile input: only TokenRejected, the exact code, and quickly.

Many tokens here are signed with the test keys on purpose, so that they pass
every signature and reach the structure and claim-type checks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import cbor2
import pytest
from conftest import examples
from hwsim.wallet import (
    Issuer,
    StaticKeyring,
    credential_claims,
    issue_claims,
    key_from_seed,
    present,
    protected_header,
    qr_text,
    raw_public,
    sign1,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.tokens import (
    MALFORMED,
    UNKNOWN_ISSUER_KEY,
    UNSUPPORTED_ALG,
    SignatureMemo,
    TokenRejected,
    verify_presentation,
)

NOW = 1_790_000_000
ISSUER = Issuer("hn-test", key_from_seed("hostile-issuer"))
HOLDER = key_from_seed("hostile-holder")
KEYRING = StaticKeyring([ISSUER.issuer_key()])
ALL_CODES = {
    "malformed",
    "unsupported_alg",
    "unknown_issuer_key",
    "bad_credential_signature",
    "bad_presentation_signature",
    "credential_expired",
    "credential_not_yet_valid",
    "presentation_stale",
    "presentation_from_future",
    "revoked",
}
TIME_LIMIT_S = 1.0  # generous on purpose: a real problem takes seconds or never ends


def code_of(qr: Any) -> str:
    """The code verify_presentation rejects ``qr`` with, checking it was quick."""
    start = time.perf_counter()
    try:
        verify_presentation(qr, NOW, KEYRING)
    except TokenRejected as rejected:
        code = rejected.code
    else:
        code = "accept"
    assert time.perf_counter() - start < TIME_LIMIT_S
    return code


def good_claims(changes: dict[Any, Any] | None = None) -> dict[Any, Any]:
    claims = credential_claims(
        iss=ISSUER.iss,
        sub="C0001",
        unit="U-1",
        display_name="Test",
        cti=b"\x07" * 12,
        iat=NOW - 100,
        exp=NOW + 100,
        holder_public=raw_public(HOLDER),
    )
    claims.update(changes or {})
    return claims


def with_claims(claims: dict[Any, Any]) -> str:
    """A fully signed token whose credential carries exactly these claims."""
    return present(issue_claims(ISSUER, claims), HOLDER, t=NOW, ctr=1)


def with_claims_bytes(claims: bytes) -> str:
    """A fully signed token whose credential payload is exactly these bytes."""
    credential = sign1(ISSUER.key, protected_header(-8, ISSUER.kid), claims)
    return present(credential, HOLDER, t=NOW, ctr=1)


def with_payload_bytes(payload: bytes, protected: bytes | None = None) -> str:
    """A presentation signed by the holder over exactly these payload bytes."""
    return qr_text(sign1(HOLDER, protected or protected_header(-8), payload))


def credential() -> bytes:
    return issue_claims(ISSUER, good_claims())


def raw_map(pairs: Iterable[tuple[Any, Any]]) -> bytes:
    """A definite-length CBOR map written pair by pair, so keys may repeat."""
    items = list(pairs)
    assert len(items) < 24
    return bytes((0xA0 | len(items),)) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in items)


def test_the_baseline_token_is_accepted() -> None:
    assert code_of(with_claims(good_claims())) == "accept"


# --- text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qr",
    [
        "",
        "CT1",
        "CT1:",
        "ct1:" + with_claims(good_claims())[4:],
        "CT1:" + with_claims(good_claims())[4:].lower(),
        " CT1:" + with_claims(good_claims())[4:],
        "CT1:abc",
        "CT1:中文字",
        "CT1:\x00\x00\x00",
        "CT1:0",  # length 1 mod 3
        "CT1:0000",
        "CT1:::::::",  # ":::" is 91124, above 65535
        "CT1:::",  # a final pair above 255
        # base45's own decoder strips trailing newlines; RFC 9285 has no newline.
        with_claims(good_claims()) + "\n",
        with_claims(good_claims()) + "\n\n",
        "CT1:" + "\n" * 3,
        "CT1:" + "0" * 1197,  # 1201 characters
        "CT1:" + "0" * 100_000,
        "CT1:" + "\U0001f600" * 100_000,
        b"CT1:0000",
        None,
    ],
    ids=lambda q: repr(q)[:30],
)
def test_text_checks(qr: Any) -> None:
    assert code_of(qr) == MALFORMED


def test_longest_allowed_text_is_read_not_refused_for_length() -> None:
    # 1200 characters pass the length check and fail later, still as malformed.
    assert code_of("CT1:" + "0" * 1194) == MALFORMED


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=1500))
def test_random_text(text: str) -> None:
    assert code_of(text) == MALFORMED
    assert code_of("CT1:" + text) == MALFORMED


@settings(max_examples=examples(300), deadline=None)
@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:", max_size=1196))
def test_random_base45_text(text: str) -> None:
    assert code_of("CT1:" + text) == MALFORMED


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=790))
def test_random_bytes(data: bytes) -> None:
    assert code_of(qr_text(data)) == MALFORMED


def test_every_truncation_of_a_valid_token() -> None:
    qr = with_claims(good_claims())
    for n in range(len(qr)):
        assert code_of(qr[:n]) == MALFORMED, n
    raw = sign1(HOLDER, protected_header(-8), cbor2.dumps({1: credential(), 2: NOW, 3: 1}))
    for n in range(len(raw)):
        assert code_of(qr_text(raw[:n])) == MALFORMED, n


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_changed_byte_is_rejected(data: st.DataObject) -> None:
    raw = bytearray(
        sign1(HOLDER, protected_header(-8), cbor2.dumps({1: credential(), 2: NOW, 3: 1}))
    )
    where = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[where]))
    raw[where] = value
    assert code_of(qr_text(bytes(raw))) in ALL_CODES


# --- CBOR ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\x81" * 780 + b"\x00",  # deep nesting
        b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",  # bstr claiming 2^63 bytes
        b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",  # array claiming 2^63 items
        b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",  # map claiming 2^63 pairs
        b"\x84\x40\xa0\x5a\xff\xff\xff\xff",  # payload claiming 4 GiB
        b"\x9f\x40\xa0\x40\x40\xff",  # indefinite array
        b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # just a huge int
        b"\xff",  # a lone break
        b"\x1c",  # reserved additional information
    ],
    ids=lambda r: r[:6].hex(),
)
def test_hostile_cbor_shapes(raw: bytes) -> None:
    assert code_of(qr_text(raw)) == MALFORMED


def presentation_parts(tag: bytes = b"") -> bytes:
    return tag + sign1(HOLDER, protected_header(-8), cbor2.dumps({1: credential(), 2: NOW, 3: 1}))


@pytest.mark.parametrize(
    "tag",
    [
        b"\xd1",  # 17, COSE_Mac0
        b"\xd8\x62",  # 98, COSE_Sign
        b"\xd8\x12",  # 18 in a longer form than needed
        b"\xd2\xd2",  # 18 twice
        b"\xd9\xd9\xf7",  # 55799, self-described CBOR
        b"\xd8\x1c",  # 28, shareable
        b"\xd8\x1e",  # 30, rational
    ],
    ids=lambda t: t.hex(),
)
def test_only_tag_18_on_the_cose_array(tag: bytes) -> None:
    assert code_of(qr_text(presentation_parts(tag))) == MALFORMED


def test_tag_18_is_accepted_on_both_arrays() -> None:
    tagged_credential = issue_claims(ISSUER, good_claims(), tagged=True)
    assert code_of(present(tagged_credential, HOLDER, t=NOW, ctr=1, tagged=True)) == "accept"


def test_trailing_bytes_after_the_presentation() -> None:
    assert code_of(qr_text(presentation_parts() + b"\x00")) == MALFORMED


def test_trailing_bytes_after_a_signed_credential() -> None:
    payload = cbor2.dumps({1: credential() + b"\x00", 2: NOW, 3: 1})
    assert code_of(with_payload_bytes(payload)) == MALFORMED


def test_trailing_bytes_after_signed_claims() -> None:
    assert code_of(with_claims_bytes(cbor2.dumps(good_claims()) + b"\xa0")) == MALFORMED


def test_trailing_bytes_after_the_protected_header() -> None:
    assert code_of(with_payload_bytes(cbor2.dumps({1: credential(), 2: NOW, 3: 1}),
                                      protected_header(-8) + b"\x00")) == MALFORMED  # fmt: skip


def test_duplicate_claim_label() -> None:
    pairs = [*good_claims().items(), (2, "C0002")]
    assert code_of(with_claims_bytes(raw_map(pairs))) == MALFORMED


def test_duplicate_label_in_presentation_payload() -> None:
    payload = raw_map([(1, credential()), (2, NOW), (3, 1), (3, 9)])
    assert code_of(with_payload_bytes(payload)) == MALFORMED


def test_duplicate_alg_in_protected_header() -> None:
    protected = raw_map([(1, -8), (1, -8)])
    payload = cbor2.dumps({1: credential(), 2: NOW, 3: 1})
    assert code_of(with_payload_bytes(payload, protected)) == MALFORMED


def test_bool_label_does_not_pass_for_int_label() -> None:
    # In Python True == 1, so {true: -8} must not be read as {1: -8}.
    payload = cbor2.dumps({1: credential(), 2: NOW, 3: 1})
    assert code_of(with_payload_bytes(payload, raw_map([(True, -8)]))) == MALFORMED
    claims = good_claims()
    del claims[1]
    assert code_of(with_claims_bytes(raw_map([(True, "hn-test"), *claims.items()]))) == MALFORMED


def test_indefinite_length_claims_map() -> None:
    claims = b"\xbf" + cbor2.dumps(good_claims())[1:] + b"\xff"
    assert code_of(with_claims_bytes(claims)) == MALFORMED


def test_indefinite_length_text_in_claims() -> None:
    pairs = [(k, v) for k, v in good_claims().items() if k != 2]
    body = raw_map([*pairs, (2, "x")])
    # Replace the definite text "x" (61 78) with an indefinite one (7f 61 78 ff).
    claims = body.replace(b"\x02\x61\x78", b"\x02\x7f\x61\x78\xff")
    assert code_of(with_claims_bytes(claims)) == MALFORMED


def test_deep_unknown_claim_is_refused_but_shallow_is_ignored() -> None:
    assert code_of(with_claims(good_claims({99: [[[1]]]}))) == "accept"
    deep = b"\x81" * 300 + b"\x00"
    body = cbor2.dumps(good_claims())
    claims = bytes((body[0] + 1,)) + body[1:] + b"\x18\x63" + deep  # one more pair: 99
    assert code_of(with_claims_bytes(claims)) == MALFORMED


# --- claim types (all signed, so only the type check can refuse them) -------------

CNF_OK = {1: 1, -1: 6, -2: raw_public(HOLDER)}


@pytest.mark.parametrize(
    "changes",
    [
        {1: b"hn-test"},  # iss as bytes
        {2: 1},  # sub as int
        {2: None},
        {4: float(NOW + 100)},  # exp as float
        {4: True},  # exp as bool
        {4: 2**64 - 1},  # exp beyond int64
        {4: cbor2.CBORTag(2, b"\x01" + b"\x00" * 9)},  # exp as bignum
        {4: cbor2.CBORTag(1, NOW + 100)},  # exp as epoch-time tag
        {6: str(NOW)},  # iat as text
        {6: cbor2.undefined},
        {7: b"\x00" * 4},  # cti too short
        {7: b"\x00" * 17},  # cti too long
        {7: "0011223344556677"},  # cti as text
        {8: {1: {**CNF_OK, 1: 2}}},  # kty EC2
        {8: {1: {**CNF_OK, -1: 4}}},  # crv X25519
        {8: {1: {**CNF_OK, -1: 7}}},  # crv Ed448
        {8: {1: {**CNF_OK, -2: raw_public(HOLDER)[:31]}}},
        {8: {1: {**CNF_OK, -2: raw_public(HOLDER) + b"\x00"}}},
        {8: {1: {**CNF_OK, -4: b"\x00" * 32}}},  # a private key in the cnf
        {8: {1: {**CNF_OK, 1: True}}},
        {8: {1: CNF_OK, 2: b"kid"}},
        {8: {3: CNF_OK}},  # not a COSE_Key
        {8: [CNF_OK]},
        {-65537: {1: "U-1"}},  # no display name
        {-65537: {1: 5, 2: "Test"}},  # unit as int
        {-65537: {1: "U-1", 2: b"Test"}},
        {-65537: {1: "U-1", 2: "Test", 3: [1, 2]}},  # allowance as list
        {-65537: {1: "U-1", 2: "Test", 3: {1: -1}}},  # negative meals
        {-65537: {1: "U-1", 2: "Test", 3: {2: 1.5}}},  # fractional fen
        {-65537: {1: "U-1", 2: "Test", 3: {1: False}}},
        {-65537: "U-1"},
    ],
    ids=repr,
)
def test_signed_claim_of_wrong_type(changes: dict[Any, Any]) -> None:
    assert code_of(with_claims(good_claims(changes))) == MALFORMED


@pytest.mark.parametrize("label", [1, 2, 4, 6, 7, 8, -65537])
def test_signed_claim_missing(label: int) -> None:
    claims = good_claims()
    del claims[label]
    assert code_of(with_claims(claims)) == MALFORMED


def test_invalid_utf8_in_a_signed_claim() -> None:
    body = cbor2.dumps(good_claims())
    claims = body.replace(b"\x02\x65C0001", b"\x02\x65C\xff001")
    assert claims != body
    assert code_of(with_claims_bytes(claims)) == MALFORMED


def test_unknown_claims_and_labels_are_ignored() -> None:
    claims = good_claims({"note": 1.5})
    claims[99] = cbor2.undefined
    claims[-65537] = {1: "U-1", 2: "Test", 3: {1: 2, 7: "x"}, 9: None}
    assert code_of(with_claims(claims)) == "accept"


@pytest.mark.parametrize(
    "payload",
    [
        {1: "not bytes", 2: NOW, 3: 1},
        {1: b"", 2: NOW, 3: 1},
        {2: NOW, 3: 1},
        {1: "CRED", 3: 1},
        {1: "CRED", 2: NOW},
        {1: "CRED", 2: float(NOW), 3: 1},
        {1: "CRED", 2: True, 3: 1},
        {1: "CRED", 2: NOW, 3: -1},
        {1: "CRED", 2: NOW, 3: False},
        {1: "CRED", 2: NOW, 3: 2**63},
        {1: "CRED", 2: -(2**64), 3: 1},
        {1: cbor2.CBORTag(18, "CRED"), 2: NOW, 3: 1},
    ],
    ids=repr,
)
def test_signed_presentation_payload_of_wrong_type(payload: dict[int, Any]) -> None:
    def fill(value: Any) -> Any:
        if value == "CRED":
            return credential()
        if isinstance(value, cbor2.CBORTag):
            return cbor2.CBORTag(value.tag, fill(value.value))
        return value

    body = {k: fill(v) for k, v in payload.items()}
    assert code_of(with_payload_bytes(cbor2.dumps(body))) == MALFORMED


def test_presentation_payload_not_a_map() -> None:
    assert code_of(with_payload_bytes(cbor2.dumps([credential(), NOW, 1]))) == MALFORMED


def test_largest_counter_is_fine() -> None:
    assert code_of(present(credential(), HOLDER, t=NOW, ctr=2**63 - 1)) == "accept"


# --- COSE headers and structure ----------------------------------------------------


def payload_bytes() -> bytes:
    return cbor2.dumps({1: credential(), 2: NOW, 3: 1})


def test_alg_in_unprotected_header() -> None:
    presentation = sign1(HOLDER, protected_header(-8), payload_bytes(), unprotected={1: -8})
    assert code_of(qr_text(presentation)) == UNSUPPORTED_ALG
    cred = sign1(
        ISSUER.key,
        protected_header(-8, ISSUER.kid),
        cbor2.dumps(good_claims()),
        unprotected={1: -8},
    )
    assert code_of(present(cred, HOLDER, t=NOW, ctr=1)) == UNSUPPORTED_ALG


def test_alg_only_in_unprotected_header() -> None:
    presentation = sign1(HOLDER, b"", payload_bytes(), unprotected={1: -8})
    assert code_of(qr_text(presentation)) == UNSUPPORTED_ALG


@pytest.mark.parametrize("alg", [-7, -35, 0, "EdDSA", -8.0, True, None, b"\xf8", [-8]])
def test_other_algs(alg: Any) -> None:
    protected = cbor2.dumps({1: alg})
    assert code_of(with_payload_bytes(payload_bytes(), protected)) == UNSUPPORTED_ALG
    cred = sign1(ISSUER.key, cbor2.dumps({1: alg, 4: ISSUER.kid}), cbor2.dumps(good_claims()))
    assert code_of(present(cred, HOLDER, t=NOW, ctr=1)) == UNSUPPORTED_ALG


def test_empty_protected_header_has_no_alg() -> None:
    assert code_of(qr_text(sign1(HOLDER, b"", payload_bytes()))) == UNSUPPORTED_ALG
    cred = sign1(ISSUER.key, b"", cbor2.dumps(good_claims()))
    assert code_of(present(cred, HOLDER, t=NOW, ctr=1)) == UNSUPPORTED_ALG


@pytest.mark.parametrize(
    "protected",
    [
        cbor2.dumps(-8),  # not a map
        cbor2.dumps([1, -8]),
        cbor2.dumps({1: -8, 2: [99]}),  # crit
        b"\xa1\x01",  # cut short
    ],
    ids=lambda p: p.hex(),
)
def test_bad_protected_header(protected: bytes) -> None:
    assert code_of(with_payload_bytes(payload_bytes(), protected)) == MALFORMED


def test_credential_kid_must_be_protected_bytes() -> None:
    claims = cbor2.dumps(good_claims())
    no_kid = sign1(ISSUER.key, protected_header(-8), claims, unprotected={4: ISSUER.kid})
    assert code_of(present(no_kid, HOLDER, t=NOW, ctr=1)) == MALFORMED
    text_kid = sign1(ISSUER.key, cbor2.dumps({1: -8, 4: ISSUER.kid.hex()}), claims)
    assert code_of(present(text_kid, HOLDER, t=NOW, ctr=1)) == MALFORMED
    odd_kid = sign1(ISSUER.key, cbor2.dumps({1: -8, 4: b"\x00" * 300}), claims)
    assert code_of(present(odd_kid, HOLDER, t=NOW, ctr=1)) == UNKNOWN_ISSUER_KEY


@pytest.mark.parametrize(
    "parts",
    [
        ["P", {}, "PAYLOAD"],
        ["P", {}, "PAYLOAD", "SIG", b""],
        ["P", [], "PAYLOAD", "SIG"],
        ["P", {}, None, "SIG"],  # detached payload
        [cbor2.dumps({1: -8}).hex(), {}, "PAYLOAD", "SIG"],
        ["P", {}, "PAYLOAD", b"\x00" * 63],
        ["P", {}, "PAYLOAD", b"\x00" * 65],
        {"P": "PAYLOAD"},
    ],
    ids=repr,
)
def test_cose_sign1_shape(parts: Any) -> None:
    protected = protected_header(-8)
    payload = payload_bytes()
    signature = sign1(HOLDER, protected, payload)[-64:]
    names = {"P": protected, "PAYLOAD": payload, "SIG": signature}

    def fill(value: Any) -> Any:
        return names.get(value, value) if isinstance(value, str) else value

    shaped = [fill(p) for p in parts] if isinstance(parts, list) else {protected: payload}
    assert code_of(qr_text(cbor2.dumps(shaped))) == MALFORMED


# --- one memo through hostile input ----------------------------------------------
# The decision worker keeps one SignatureMemo, and with it one CBOR decoder, the
# parsed keys and protected headers, across every code it reads. A hostile code that
# failed halfway through a decode must leave nothing behind that changes a later answer.


def test_a_memo_that_read_hostile_codes_answers_as_a_fresh_one() -> None:
    good = with_claims(good_claims())
    claims = cbor2.dumps(good_claims())
    odd_kid = sign1(ISSUER.key, cbor2.dumps({1: -8, 4: b"\x00" * 300}), claims)
    hostile = [
        qr_text(b"\x81" * 780 + b"\x00"),  # nesting beyond the limit
        qr_text(b"\x81" * 7 + b"\xc1\x00"),  # a tag seven containers down
        qr_text(b"\x84\x40\xa0\x5a\xff\xff\xff\xff"),  # a payload cut short
        qr_text(presentation_parts(b"\xd8\x1c")),  # a shared value
        qr_text(presentation_parts() + b"\x00"),  # trailing bytes
        with_claims_bytes(claims + b"\xa0"),
        with_claims_bytes(b"\xbf\x01\x02\xff"),  # an indefinite map
        with_payload_bytes(payload_bytes(), b"\xa1\x01"),  # a protected header cut short
        with_payload_bytes(payload_bytes(), cbor2.dumps({1: -8, 2: [99]})),  # crit
        qr_text(sign1(HOLDER, b"", payload_bytes())),  # an empty protected header: no alg
        present(odd_kid, HOLDER, t=NOW, ctr=1),  # an unknown kid
        with_claims(good_claims({8: {1: {1: 1, -1: 6, -2: b"\x00" * 32}}})),  # another cnf key
        *(good[:n] for n in range(5, len(good), 37)),
    ]
    fresh = [code_of(qr) for qr in hostile]
    assert "accept" not in fresh, " ".join(fresh)
    memo = SignatureMemo()
    for _ in range(2):  # the second time round, every part of the memo is filled
        for qr, expected in zip(hostile, fresh, strict=True):
            with pytest.raises(TokenRejected) as refused:
                verify_presentation(qr, NOW, KEYRING, memo=memo)
            assert refused.value.code == expected, qr[:40]
            assert verify_presentation(good, NOW, KEYRING, memo=memo).sub == "C0001"
