"""SM2 issuers and phones (token.md §7): issuing, hw-sim issuer --alg, and a real daemon.

- protocol/issue.py builds what vectors-sm2.json holds: the seeded keys and kids, the
  credentials' protected headers and claims byte for byte, and every part an Ed25519 key
  signed exactly (SM2 signatures take a fresh nonce, so those are checked by verifying);
- every mix of issuer and phone algorithm verifies, a wallet file keeps its phone key's
  algorithm, and a phone that signs with another distinguishing ID is refused;
- `hw-sim issuer --alg sm2|mixed` makes SM2 issuers and SM2 wallets whose lists install
  with the terminal's parsers; bad options are one line;
- an SM2 issuer published by county IT reaches a running daemon through signed updates,
  its codes are accepted (SM2 and mixed chains), the county takes them as evidence, and
  revoking an SM2 holder key and then the SM2 issuer key takes effect on that daemon.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import base45
import cbor2
import pytest
from conftest import wait_for
from hwsim import population as pop
from hwsim.cli import main as hw_sim
from hwsim.phone import load_wallet
from hwsim.wallet import StaticKeyring, Wallet, make_wallet

from protocol import issue, sm2
from protocol.tokens import (
    BAD_PRESENTATION_SIGNATURE,
    SM2_KEY,
    TokenRejected,
    verify_presentation,
)
from terminal import trust

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "data" / "vectors-sm2.json"  # the spec's, copied into the project
NOW = 1_790_000_000


def vectors() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.skip("tests/data/vectors-sm2.json is missing")
    return dict(json.loads(VECTORS.read_text(encoding="utf-8")))


def case(doc: dict[str, Any], name: str) -> str:
    return str(next(c for c in doc["cases"] if c["name"] == name)["steps"][0]["qr"])


def opened(qr: str) -> tuple[list[Any], dict[int, Any], list[Any]]:
    """A code's presentation COSE_Sign1, its payload, and its credential's COSE_Sign1."""
    outer = cbor2.loads(base45.b45decode(qr[4:]))
    body = cbor2.loads(outer[2])
    return outer, body, cbor2.loads(body[1])


SM2_ISSUER = issue.Issuer("hn-test", issue.sm2_key_from_seed("vector-sm2-issuer-1"))
ED_ISSUER = issue.Issuer("hn-test", issue.key_from_seed("vector-issuer-1"))
SM2_HOLDER = issue.sm2_key_from_seed("vector-sm2-holder-1")
ED_HOLDER = issue.key_from_seed("vector-holder-1")


def vector_credential(issuer: issue.Issuer, holder: issue.SigningKey, like: list[Any]) -> bytes:
    """The vectors' credential, issued again by protocol/issue.py with the claims ``like``
    (a vector credential's COSE_Sign1) holds."""
    claims = cbor2.loads(like[2])
    return issue.issue_credential(
        issuer,
        sub=claims[2],
        unit=claims[-65537][1],
        display_name=claims[-65537][2],
        cti=claims[7],
        iat=claims[6],
        exp=claims[4],
        holder_public=issue.raw_public(holder),
    )


def test_seeded_keys_and_kids_are_the_vectors() -> None:
    doc = vectors()
    sm2_entry, ed_entry = doc["trust"]
    assert SM2_ISSUER.trust_entry() == sm2_entry  # "alg": "SM2-SM3", 65-byte point, its kid
    assert ED_ISSUER.trust_entry() == ed_entry  # no alg: an Ed25519 entry reads as in v1
    holder = next(c for c in doc["cases"] if c["name"] == "sm2_holder_key_revoked")
    assert issue.raw_public(SM2_HOLDER).hex() == holder["revoked"][0]["public_key"]
    assert SM2_ISSUER.issuer_key().alg == SM2_KEY and len(SM2_ISSUER.public_key) == 65


def test_credentials_and_presentations_rebuild_the_vectors() -> None:
    doc = vectors()
    keyring = StaticKeyring.from_trust_entries(doc["trust"])
    # SM2 issuer, SM2 holder: headers and payloads byte for byte; the signatures verify.
    outer, body, cred = opened(case(doc, "sm2_issuer_sm2_holder"))
    mine = cbor2.loads(vector_credential(SM2_ISSUER, SM2_HOLDER, cred))
    assert mine[0] == cred[0] == cbor2.dumps({1: -70001, 4: SM2_ISSUER.kid})
    assert mine[2] == cred[2]  # the claims, cnf the EC2 key {1: 2, -1: -70001, -2: x, -3: y}
    point = SM2_HOLDER.public_key().point
    assert cbor2.loads(mine[2])[8] == {1: {1: 2, -1: -70001, -2: point[1:33], -3: point[33:]}}
    assert mine[3] != cred[3] and len(mine[3]) == 64  # a fresh nonce: another r || s
    text = issue.present(cbor2.dumps(mine), SM2_HOLDER, t=body[2], ctr=body[3])
    mine_outer, _, _ = opened(text)
    assert mine_outer[0] == outer[0] == cbor2.dumps({1: -70001})
    p = verify_presentation(text, NOW, keyring)
    assert (p.sub, p.holder_key, p.issuer_key) == (
        "C0002",
        SM2_HOLDER.public_key().point,
        SM2_ISSUER.public_key,
    )
    # Ed25519 issuer, SM2 holder: the Ed25519-signed credential is the vector's, exactly.
    _, body, cred = opened(case(doc, "ed25519_issuer_sm2_holder"))
    assert vector_credential(ED_ISSUER, SM2_HOLDER, cred) == body[1]
    # SM2 issuer, Ed25519 holder: the phone's presentation of the vector's credential is
    # the vector's code, exactly (alg -8); and again under alg -70001 (the vector of a
    # key used under another key's alg).
    qr = case(doc, "sm2_issuer_ed25519_holder")
    _, body, cred = opened(qr)
    assert issue.present(body[1], ED_HOLDER, t=body[2], ctr=body[3]) == qr
    wrong = issue.present(body[1], ED_HOLDER, t=body[2], ctr=body[3], alg=-70001)
    assert wrong == case(doc, "alg_sm2_with_ed25519_cnf_key")
    rebuilt = cbor2.loads(vector_credential(SM2_ISSUER, ED_HOLDER, cred))
    assert rebuilt[:3] == cred[:3]


def test_every_mix_verifies_and_a_wallet_keeps_its_algorithm(tmp_path: Path) -> None:
    for issuer_alg in issue.ALGS:
        issuer = issue.Issuer("hn-mix", issue.signing_key_from_seed(f"i/{issuer_alg}", issuer_alg))
        keyring = StaticKeyring([issuer.issuer_key()])
        for phone_alg in issue.ALGS:
            wallet = make_wallet(issuer, "s1", "u1", "混合", now=NOW - 60, alg=phone_alg)
            back = Wallet.from_json(wallet.to_json())
            assert back.holder_alg == phone_alg
            assert ("holder_alg" in json.loads(wallet.to_json())) == (phone_alg == SM2_KEY)
            p = verify_presentation(back.draw(NOW), NOW, keyring)
            assert len(p.holder_key) == (65 if phone_alg == SM2_KEY else 32)
            assert len(p.issuer_key) == (65 if issuer_alg == SM2_KEY else 32)
            header = cbor2.loads(opened(back.draw(NOW))[0][0])
            assert header == {1: -70001 if phone_alg == SM2_KEY else -8}


def test_a_phone_with_another_distinguishing_id_is_refused() -> None:
    wallet = make_wallet(SM2_ISSUER, "s1", "u1", "n", now=NOW - 60, alg=SM2_KEY)
    keyring = StaticKeyring([SM2_ISSUER.issuer_key()])
    good = issue.present(wallet.credential, wallet.holder_key, t=NOW, ctr=1)
    assert verify_presentation(good, NOW, keyring).ctr == 1
    other = issue.present(
        wallet.credential, wallet.holder_key, t=NOW, ctr=2, sm2_uid=b"ALICE123@YAHOO.COM"
    )
    with pytest.raises(TokenRejected) as refused:
        verify_presentation(other, NOW, keyring)
    assert refused.value.code == BAD_PRESENTATION_SIGNATURE


# --- hw-sim issuer --alg ----------------------------------------------------------------------


def keyring_from(folder: Path) -> StaticKeyring:
    entries, _ = trust.split_list(trust.read_json_file(folder / "trust.json", "trust"), "trust")
    return StaticKeyring(trust.parse_issuer_keys(entries))


def test_hw_sim_issuer_makes_sm2_issuers_and_wallets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sm2"
    args = ["--cadres", "6", "--seed", "s", "--now", str(NOW - 86_400)]
    assert hw_sim(["issuer", "--out", str(out), "--alg", "sm2", "--issuer-keys", "2", *args]) == 0
    assert "2 key(s) (2 SM2-SM3), 6 SM2 phone(s)" in capsys.readouterr().out
    entries = json.loads((out / "trust.json").read_text(encoding="utf-8"))
    assert [e["alg"] for e in entries] == ["SM2-SM3", "SM2-SM3"]
    assert all(len(bytes.fromhex(e["public_key"])) == 65 for e in entries)
    keyring = keyring_from(out)  # the terminal's own parser takes the list
    for path in sorted((out / "wallets").glob("*.json")):
        wallet = load_wallet(path)
        assert wallet.holder_alg == SM2_KEY
        assert verify_presentation(wallet.draw(NOW), NOW, keyring).sub == wallet.sub
    back = pop.read_population(out)  # issuer-keys.json keeps each key's algorithm
    assert [i.alg for i in back.issuers] == [SM2_KEY, SM2_KEY]
    assert back.trust_entries() == entries

    mixed = tmp_path / "mixed"
    code = hw_sim(
        [
            "issuer",
            "--out",
            str(mixed),
            "--alg",
            "mixed",
            "--issuer-keys",
            "2",
            "--sm2-share",
            "0.5",
            *args,
            "--cadres",
            "8",
        ]
    )
    assert code == 0
    summary = json.loads((mixed / "population.json").read_text(encoding="utf-8"))
    assert [k["alg"] for k in summary["issuer_keys"]] == ["Ed25519", "SM2-SM3"]
    assert summary["sm2_phones"] == 4  # half of each key's four cadres
    keyring = keyring_from(mixed)
    chains = set()
    for c in summary["cadres"]:
        wallet = load_wallet(mixed / c["wallet"])
        p = verify_presentation(wallet.draw(NOW), NOW, keyring)
        chains.add((len(p.issuer_key), len(p.holder_key)))
        assert c["phone_alg"] == wallet.holder_alg
    assert chains == {(32, 32), (32, 65), (65, 32), (65, 65)}  # every mix


def test_hw_sim_issuer_bad_alg_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert hw_sim(["issuer", "--out", str(tmp_path / "a"), "--alg", "mixed"]) == 2
    err = capsys.readouterr().err
    assert "--issuer-keys 2 or more" in err and err.count("\n") == 1
    assert hw_sim(["issuer", "--out", str(tmp_path / "b"), "--sm2-share", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--sm2-share" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_hw_sim_phone_draws_from_an_sm2_wallet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hwsim.phone import WalletError

    out = tmp_path / "sim"
    args = ["--alg", "sm2", "--cadres", "1", "--now", str(NOW - 86_400)]
    assert hw_sim(["issuer", "--out", str(out), *args]) == 0
    path = out / "wallets" / "s000001.json"
    capsys.readouterr()
    assert hw_sim(["phone", "--wallet", str(path), "--now", str(NOW)]) == 0
    text = capsys.readouterr().out.strip().splitlines()[0]
    p = verify_presentation(text, NOW, keyring_from(out))
    assert (p.ctr, len(p.holder_key)) == (1, 65)
    assert load_wallet(path).ctr == 1  # the counter was saved
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["holder_alg"] = "RSA"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(WalletError, match="not a wallet file"):
        load_wallet(path)


# --- through the county to a running daemon -------------------------------------------------


def present(run: Any, text: str, decisions: int) -> dict[str, Any]:
    """Show ``text`` to the daemon's decision worker; its ledger entry once decided."""
    from daemonkit import ledger_entries

    from terminal.core.events import QrPresented

    run.daemon.worker.put(QrPresented(text, 0.0))
    wait_for(lambda: run.daemon.worker.decisions == decisions, what=f"decision {decisions}")
    return [e for e in ledger_entries(run.book) if e["kind"] == "sale"][-1]


@pytest.mark.slow
def test_an_sm2_issuer_published_by_the_county_reaches_a_daemon(tmp_path: Path) -> None:
    from daemonkit import ISSUER, ledger_entries, updating_daemon

    from county import updates as cu
    from county.store import BAD_EVIDENCE

    sm2_issuer = issue.Issuer(ISSUER.iss, issue.sm2_key_from_seed("daemon-sm2-issuer"))
    minted = int(time.time()) - 3600
    wallets = {
        "sm2/sm2": make_wallet(sm2_issuer, "M1", "own", "国密一", now=minted, alg=SM2_KEY),
        "ed25519/sm2": make_wallet(ISSUER, "M2", "own", "国密二", now=minted, alg=SM2_KEY),
        "sm2/ed25519": make_wallet(sm2_issuer, "M3", "own", "国密三", now=minted),
        "sm2/sm2 later": make_wallet(sm2_issuer, "M4", "own", "国密四", now=minted, alg=SM2_KEY),
    }
    with updating_daemon(tmp_path, "uid,iss,sub,unit,display_name,status\n") as run:
        county, book = run.county, run.book

        def applied() -> int:
            return sum(e["kind"] == "config_applied" for e in ledger_entries(book))

        wait_for(lambda: applied() >= 1, what="the first signed set")
        # County IT adds the SM2 issuer key beside the Ed25519 one and publishes the list.
        trust_file = tmp_path / "trust-sm2.json"
        trust_file.write_text(
            json.dumps([ISSUER.trust_entry(), sm2_issuer.trust_entry()]), encoding="utf-8"
        )
        with cu.CountyRepository(county.data) as repo:
            repo.publish_trust(trust_file, int(time.time()))
        wait_for(lambda: applied() >= 2, what="the trust list with the SM2 key")
        store = trust.TrustStore(run.state_dir / "trust.sqlite")
        try:
            [key] = store.issuer_keys(sm2_issuer.kid)
            assert (key.alg, key.public_key) == (SM2_KEY, sm2_issuer.public_key)
        finally:
            store.close()
        n = 0
        for chain in ("sm2/sm2", "ed25519/sm2", "sm2/ed25519"):
            n += 1
            sale = present(run, wallets[chain].draw(int(time.time())), n)
            assert (sale["verdict"], sale["reason"]) == ("accept", None), (chain, sale)

        # Revoke the SM2 phone key of M1 (its 65-byte point): M1's next code is refused.
        holder = issue.raw_public(wallets["sm2/sm2"].holder_key)
        with cu.CountyRepository(county.data) as repo:
            repo.revoke([{"kind": "holder_key", "public_key": holder.hex()}], int(time.time()))
        wait_for(lambda: applied() >= 3, what="the holder key revocation")
        n += 1
        sale = present(run, wallets["sm2/sm2"].draw(int(time.time())), n)
        assert (sale["verdict"], sale["reason"]) == ("reject", "revoked")
        n += 1
        sale = present(run, wallets["sm2/sm2 later"].draw(int(time.time())), n)
        assert sale["verdict"] == "accept"  # another phone of the same issuer still eats

        # Revoke the SM2 issuer key itself: every credential it signed is refused.
        with cu.CountyRepository(county.data) as repo:
            repo.revoke(
                [{"kind": "issuer_key", "public_key": sm2_issuer.public_key.hex()}],
                int(time.time()),
            )
        wait_for(lambda: applied() >= 4, what="the issuer key revocation")
        n += 1
        sale = present(run, wallets["sm2/ed25519"].draw(int(time.time())), n)
        assert (sale["verdict"], sale["reason"]) == ("reject", "revoked")
        n += 1
        sale = present(run, wallets["ed25519/sm2"].draw(int(time.time())), n)
        assert sale["verdict"] == "reject" and sale["reason"] == "already_served"

        # The county took the SM2 sales in and verified them again as evidence.
        wait_for(
            lambda: (
                county.store.terminal("t-daemon") is not None
                and county.store.terminal("t-daemon").acked_seq >= len(ledger_entries(book))
            ),
            what="the county to hold every entry",
        )
        assert [a for a in county.store.alarms() if a["kind"] == BAD_EVIDENCE] == []
        assert county.store.issuer_key_count() == 2


def test_sm2_module_is_the_one_used() -> None:
    # The issuing side and the verifier go through the one SM2 module (protocol/sm2.py).
    assert issue.SM2_ALG == sm2.ALG == -70001 and issue.SM2 == sm2.ALG_NAME
