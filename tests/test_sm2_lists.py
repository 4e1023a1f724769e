"""SM2 keys in the lists (token.md §7.4): trust entries, revocations, the terminal's trust
store, the county's publishing and revoking, and the county's evidence check.

- a trust entry with "alg": "SM2-SM3" gives an SM2 IssuerKey, in memory and after the
  trust store reads it back; an SM2 key that is not a 65-byte point on the curve, a 65-byte
  key without alg, or any other alg is refused in one line, by `canteen-terminal lists
  install` (nothing installed) and by `canteen-county publish trust` (nothing published);
- holder_key and issuer_key revocations take 32 or 65 bytes, and only those; SM2 ones take
  effect in the terminal's store;
- every case of vectors-sm2.json gets its verdict through the lists parsed from the file's
  own trust and revocation entries and the terminal's trust store;
- the county verifies an SM2 code as evidence with keys read from its issuer_keys table,
  which keeps no algorithm.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import base45
import pytest
from conftest import run_terminal
from hwsim.wallet import make_wallet

from county import conflicts, evidence
from county import updates as cu
from county.cli import main as county_main
from county.store import CountyStore
from protocol import issue
from protocol.lists import TrustError, parse_issuer_keys, parse_revocations, revocation_key
from protocol.tokens import (
    ED25519_KEY,
    PREFIX,
    SM2_KEY,
    TokenRejected,
    verify_presentation,
)
from terminal import trust

NOW = 1_790_000_000
SM2_ISSUER = issue.Issuer("hn-sm2", issue.sm2_key_from_seed("lists-sm2-issuer"))
ED_ISSUER = issue.Issuer("hn-sm2", issue.key_from_seed("lists-ed-issuer"))
VECTORS = Path(__file__).resolve().parent / "data" / "vectors-sm2.json"  # the spec's, copied


def off_curve(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with its point's last bit flipped (off the curve) and the kid to match."""
    point = bytearray(bytes.fromhex(entry["public_key"]))
    point[-1] ^= 1
    return dict(entry, public_key=point.hex(), kid=issue.kid_of(bytes(point)).hex())


def test_sm2_trust_entries_give_sm2_keys() -> None:
    sm2_key, ed_key = parse_issuer_keys([SM2_ISSUER.trust_entry(), ED_ISSUER.trust_entry()])
    assert (sm2_key.alg, sm2_key.public_key, sm2_key.kid) == (
        SM2_KEY,
        SM2_ISSUER.public_key,
        SM2_ISSUER.kid,
    )
    assert ed_key.alg == ED25519_KEY
    explicit = dict(ED_ISSUER.trust_entry(), alg="Ed25519")
    assert parse_issuer_keys([explicit]) == [ed_key]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (off_curve(SM2_ISSUER.trust_entry()), "not on the curve sm2p256v1"),
        (
            dict(SM2_ISSUER.trust_entry(), public_key="05" + SM2_ISSUER.public_key.hex()[2:]),
            "not a 65-byte uncompressed point",
        ),
        (
            dict(SM2_ISSUER.trust_entry(), public_key=ED_ISSUER.public_key.hex()),
            "must be 65 bytes, got 32",
        ),
        ({k: v for k, v in SM2_ISSUER.trust_entry().items() if k != "alg"}, 'add "alg"'),
        (dict(ED_ISSUER.trust_entry(), alg="SM2-SM3"), "must be 65 bytes, got 32"),
        (dict(SM2_ISSUER.trust_entry(), alg="SM2"), "alg must be Ed25519 (or absent) or"),
        (dict(SM2_ISSUER.trust_entry(), alg=None), "not a text"),
        (dict(SM2_ISSUER.trust_entry(), kid=ED_ISSUER.kid.hex()), "is not the kid of"),
    ],
)
def test_a_bad_sm2_trust_entry_is_one_line(entry: dict[str, Any], words: str) -> None:
    with pytest.raises(TrustError) as refused:
        parse_issuer_keys([ED_ISSUER.trust_entry(), entry])
    message = str(refused.value)
    assert message.startswith("trust list entry 1: ") and words in message
    assert "\n" not in message


def test_key_revocations_take_32_or_65_bytes_only() -> None:
    holder = make_wallet(SM2_ISSUER, "s1", "u", "n", now=NOW, alg=SM2_KEY).holder_key
    point = issue.raw_public(holder)
    keys = list(
        parse_revocations(
            [
                {"kind": "holder_key", "public_key": point.hex()},
                {"kind": "issuer_key", "public_key": SM2_ISSUER.public_key.hex()},
                {"kind": "issuer_key", "public_key": ED_ISSUER.public_key.hex()},
            ]
        )
    )
    assert keys == [
        revocation_key("holder_key", point),
        revocation_key("issuer_key", SM2_ISSUER.public_key),
        revocation_key("issuer_key", ED_ISSUER.public_key),
    ]
    bad = {
        "11" * 33: "must be 32 bytes (an Ed25519 key) or 65 bytes (an SM2 point 04||x||y), got 33",
        "11" * 64: "got 64",
        "04" + "11" * 64: "not on the curve",
        "05" + point.hex()[2:]: "not a 65-byte uncompressed point",
        off_curve(SM2_ISSUER.trust_entry())["public_key"]: "not on the curve",
        "zz": "not hex",
    }
    for value, words in bad.items():
        for kind in ("holder_key", "issuer_key"):
            with pytest.raises(TrustError, match="revocation list entry 0: public_key") as e:
                list(parse_revocations([{"kind": kind, "public_key": value}]))
            assert words in str(e.value), (kind, value)


def test_the_trust_store_keeps_sm2_keys_and_revokes_them(tmp_path: Path) -> None:
    header = trust.ListHeader(1, NOW - 60, None)
    store = trust.TrustStore(tmp_path / "trust.sqlite")
    entries = [SM2_ISSUER.trust_entry(), ED_ISSUER.trust_entry()]
    store.replace_issuers(trust.parse_issuer_keys(entries), header, NOW)
    store.replace_revocations([], header, NOW)
    again = trust.TrustStore(tmp_path / "trust.sqlite")  # read back from the file
    try:
        [key] = again.issuer_keys(SM2_ISSUER.kid)
        assert key.alg == SM2_KEY and key.public_key == SM2_ISSUER.public_key
        [key] = again.issuer_keys(ED_ISSUER.kid)
        assert key.alg == ED25519_KEY
        sm2_phone = make_wallet(ED_ISSUER, "s1", "u", "n", now=NOW - 60, alg=SM2_KEY)
        sm2_chain = make_wallet(SM2_ISSUER, "s2", "u", "n", now=NOW - 60, alg=SM2_KEY)
        p = verify_presentation(sm2_phone.draw(NOW), NOW, again)
        assert again.revoked_kind(p) is None
        q = verify_presentation(sm2_chain.draw(NOW), NOW, again)

        # Revoke the SM2 phone key (its 65-byte point) and the SM2 issuer key.
        point = issue.raw_public(sm2_phone.holder_key)
        revoked = [
            {"kind": "holder_key", "public_key": point.hex()},
            {"kind": "issuer_key", "public_key": SM2_ISSUER.public_key.hex()},
        ]
        store.replace_revocations(trust.parse_revocations(revoked), header, NOW)
        p = verify_presentation(sm2_phone.draw(NOW), NOW, again)
        assert again.revoked_kind(p) == "holder_key"
        with pytest.raises(TokenRejected) as refused:
            verify_presentation(sm2_chain.draw(NOW), NOW, again)
        assert refused.value.code == "revoked"
        assert q.issuer_key == SM2_ISSUER.public_key
    finally:
        again.close()
        store.close()


def test_the_sm2_vectors_through_the_lists_and_the_trust_store(tmp_path: Path) -> None:
    if not VECTORS.exists():
        pytest.skip("tests/data/vectors-sm2.json is missing")
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    keys = parse_issuer_keys(doc["trust"])
    assert [k.alg for k in keys] == [SM2_KEY, ED25519_KEY]
    for n, case in enumerate(doc["cases"]):
        store = trust.TrustStore(tmp_path / f"case{n}.sqlite")
        header = trust.ListHeader(1, NOW - 60, None)
        store.replace_issuers(keys, header, NOW)
        store.replace_revocations(parse_revocations(case.get("revoked", [])), header, NOW)
        seen: set[tuple[str, bytes, int]] = set()
        try:
            for step in case["steps"]:
                try:
                    p = verify_presentation(
                        step["qr"], step["now"], store, doc["window_s"], doc["skew_s"]
                    )
                except TokenRejected as rejected:
                    got = rejected.code
                else:
                    if (p.iss, p.cti, p.ctr) in seen:
                        got = "replayed"
                    elif store.revoked_kind(p) is not None:
                        got = "revoked"
                    else:
                        seen.add((p.iss, p.cti, p.ctr))
                        got = "accept"
                assert got == step["expect"], case["name"]
        finally:
            store.close()


def trust_path(state_dir: Path) -> Path:
    from terminal import state

    return Path(state.prepare(state_dir).trust)


# --- the terminal's lists install -------------------------------------------------------------


def test_lists_install_refuses_an_invalid_sm2_point_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps([ED_ISSUER.trust_entry()]), encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([ED_ISSUER.trust_entry(), off_curve(SM2_ISSUER.trust_entry())]),
        encoding="utf-8",
    )
    state = str(tmp_path / "state")
    assert (
        run_terminal("lists", "install", "--state", state, "--issuers", str(good)).returncode == 0
    )
    refused = run_terminal("lists", "install", "--state", state, "--issuers", str(bad))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert (
        "trust list entry 1: public_key" in refused.stderr and "not on the curve" in refused.stderr
    )
    store = trust.TrustStore(trust_path(tmp_path / "state"))
    try:  # the list in force is the good one, whole
        assert store.all_issuer_keys() == parse_issuer_keys([ED_ISSUER.trust_entry()])
    finally:
        store.close()


# --- the county -------------------------------------------------------------------------------


@pytest.fixture(name="initialised", scope="module")
def initialised_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A county data directory with its update repository: made once (it takes seconds)."""
    root = tmp_path_factory.mktemp("initialised")
    cu.init_repository(root / "county", root / "root-keys", int(time.time()))
    return root / "county"


@pytest.fixture(name="county_data")
def county_data_fixture(initialised: Path, tmp_path: Path) -> Path:
    """A copy of the initialised county for one test."""
    shutil.copytree(initialised, tmp_path / "county")
    return tmp_path / "county"


def test_county_publishes_sm2_issuers_and_refuses_bad_ones(
    county_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([off_curve(SM2_ISSUER.trust_entry())]), encoding="utf-8")
    assert county_main(["publish", "trust", "--data", str(county_data), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not on the curve sm2p256v1" in err
    published = county_data / "updates" / "repository" / "targets" / "trust"
    assert not published.exists() or not list(published.iterdir())  # nothing published

    good = tmp_path / "good.json"
    good.write_text(
        json.dumps([ED_ISSUER.trust_entry(), SM2_ISSUER.trust_entry()]), encoding="utf-8"
    )
    assert county_main(["publish", "trust", "--data", str(county_data), str(good)]) == 0
    capsys.readouterr()
    [file] = list(published.iterdir())
    entries = json.loads(file.read_text(encoding="utf-8"))["entries"]
    assert entries[1]["alg"] == "SM2-SM3"  # the published entry says what the key is
    store = CountyStore(county_data / "county.sqlite")
    try:
        assert store.issuer_key_count() == 2  # the county will verify codes with both
    finally:
        store.close()


def test_county_revokes_sm2_keys_by_their_65_byte_point(
    county_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    point = issue.raw_public(issue.sm2_key_from_seed("revoked phone"))
    for kind, value in (
        ("holder_key", point.hex()),
        ("issuer_key", SM2_ISSUER.public_key.hex()),
        ("holder_key", ED_ISSUER.public_key.hex()),  # 32-byte Ed25519 keys as before
    ):
        assert county_main(["revoke", "--data", str(county_data), kind, value]) == 0
        assert json.loads(capsys.readouterr().out)["revocations_added"] == 1
    for value, words in (
        ("11" * 33, "got 33"),
        (point.hex()[:-2] + "00", "not on the curve"),
        ("04" + "00" * 64, "not on the curve"),
    ):
        for kind in ("holder_key", "issuer_key"):
            assert county_main(["revoke", "--data", str(county_data), kind, value]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err, err
    with cu.CountyRepository(county_data) as repo:  # the three good ones, nothing else
        assert repo.revocation_count() == 3


def test_county_issuers_import_takes_sm2_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "county")
    (tmp_path / "county").mkdir()
    CountyStore(tmp_path / "county" / "county.sqlite").close()  # an existing county
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([SM2_ISSUER.trust_entry(), off_curve(SM2_ISSUER.trust_entry())]))
    assert county_main(["issuers", "import", "--data", data, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trust list entry 1: public_key" in err
    store = CountyStore(tmp_path / "county" / "county.sqlite")
    try:
        assert store.issuer_key_count() == 0  # not even the good first entry
    finally:
        store.close()
    good = tmp_path / "good.json"
    good.write_text(json.dumps([SM2_ISSUER.trust_entry(), ED_ISSUER.trust_entry()]))
    assert county_main(["issuers", "import", "--data", data, str(good)]) == 0
    assert "verifies codes with 2" in capsys.readouterr().out


def test_the_county_takes_an_sm2_code_as_evidence(tmp_path: Path) -> None:
    store = CountyStore(tmp_path / "county.sqlite")
    try:
        store.add_issuer_keys([SM2_ISSUER.trust_entry()], int(time.time() * 1000))
        for phone_alg in issue.ALGS:
            wallet = make_wallet(
                SM2_ISSUER, f"s-{phone_alg}", "u1", "国密", now=NOW - 60, alg=phone_alg
            )
            text = wallet.draw(NOW)
            fields = {
                "method": evidence.QR,
                "cadre": f"{wallet.iss}/{wallet.sub}",
                "credential": f"qr/{wallet.iss}/{wallet.cti.hex()}",
                "ctr": 1,
                "unit": "u1",
                "detail": json.dumps({"qr": text}),
                "at_ms": NOW * 1000,
            }
            with store._read() as conn:
                # The county's keyring reads its issuer_keys table, which has no alg column.
                keyring = conflicts.Keyring(conn)
                [raw] = keyring.issuer_keys(SM2_ISSUER.kid)
                assert raw.public_key == SM2_ISSUER.public_key
                proof = evidence.check_sale(fields, keyring)
            assert isinstance(proof, evidence.Proof), proof
            assert (proof.cadre, proof.t) == (fields["cadre"], NOW)
            # One bit of the presentation's signature flipped (its last byte is often 0, so
            # overwriting the last characters with "00" could leave the code as it was).
            raw_code = bytearray(base45.b45decode(text.removeprefix(PREFIX)))
            raw_code[-5] ^= 0x01
            forged = PREFIX + base45.b45encode(bytes(raw_code)).decode()
            tampered = dict(fields, detail=json.dumps({"qr": forged}))
            with store._read() as conn:
                refused = evidence.check_sale(tampered, conflicts.Keyring(conn))
            assert isinstance(refused, str) and "does not verify here" in refused
    finally:
        store.close()
