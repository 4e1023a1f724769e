"""hw-sim issuer and hw-sim phone: the files load with the terminal's own parsers, the
wallets' codes verify with the terminal's own verifier, and a phone's counter only goes up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from hwsim import population as pop
from hwsim.cli import main
from hwsim.phone import WalletError, draw_code, load_wallet
from hwsim.wallet import StaticKeyring

from protocol.tokens import verify_presentation
from terminal import trust
from terminal.scanner.qr import decode_frame, make_decoder

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_790_000_000


def keyring_from(folder: Path) -> StaticKeyring:
    entries, _ = trust.split_list(trust.read_json_file(folder / "trust.json", "trust"), "trust")
    return StaticKeyring(trust.parse_issuer_keys(entries))


def hw_sim(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """hw-sim in a child process, as a technician runs it."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    return subprocess.run(
        [sys.executable, "-m", "hwsim.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=check,
    )


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("issuer") / "sim"
    code = main(
        [
            "issuer",
            "--out",
            str(out),
            "--cadres",
            "40",
            "--units",
            "own,cz-health",
            "cz-water",
            "--card-type",
            "mixed",
            "--issuer-keys",
            "2",
            "--seed",
            "t1",
            "--now",
            str(NOW - 86_400),
        ]
    )
    assert code == 0
    return out


def test_issuer_files_load_with_the_terminal_parsers(issued: Path) -> None:
    entries, header = trust.split_list(
        trust.read_json_file(issued / "trust.json", "trust"), "trust"
    )
    keys = trust.parse_issuer_keys(entries)
    assert len(keys) == 2 and {k.iss for k in keys} == {"hn-sim"}
    assert header.version == 0  # a bare section 5 array
    revoked, _ = trust.split_list(trust.read_json_file(issued / "revoked.json", "revocation"), "r")
    assert list(trust.parse_revocations(revoked)) == []
    cards = trust.parse_roster_csv((issued / "roster.csv").read_text(encoding="utf-8"))
    assert len(cards) == 12  # 30% of 40
    assert len({c.uid for c in cards}) == 12
    assert {len(c.uid) for c in cards} <= {4, 5, 7}
    assert all(c.status == "active" and c.iss == "hn-sim" for c in cards)
    summary = json.loads((issued / "population.json").read_text(encoding="utf-8"))
    assert summary["cadre_count"] == 40 and summary["card_count"] == 12
    assert set(summary["units"]) == {"own", "cz-health", "cz-water"}
    by_sub = {c["sub"]: c for c in summary["cadres"]}
    for card in cards:
        assert by_sub[card.sub]["card_uid"] == card.uid.hex()
        assert by_sub[card.sub]["display_name"] == card.display_name
    # Private material is the owner's alone.
    assert (issued / "issuer-keys.json").stat().st_mode & 0o077 == 0
    assert (issued / "wallets" / "s000001.json").stat().st_mode & 0o077 == 0


def test_every_wallet_draws_codes_that_verify(issued: Path) -> None:
    keyring = keyring_from(issued)
    kids = set()
    for path in sorted((issued / "wallets").glob("*.json")):
        wallet = load_wallet(path)
        p = verify_presentation(wallet.draw(NOW), NOW + 1, keyring)
        assert (p.iss, p.sub, p.unit, p.display_name) == (
            "hn-sim",
            wallet.sub,
            wallet.unit,
            wallet.display_name,
        )
        assert len(p.display_name) in (2, 3) and all(
            "\u4e00" <= ch <= "\u9fff" for ch in p.display_name
        )
        kids.add(p.issuer_key)
    assert len(kids) == 2  # cadres are spread over both issuer keys


def test_same_seed_same_files_other_seed_other_keys(tmp_path: Path) -> None:
    args = ["--cadres", "7", "--seed", "s", "--now", str(NOW), "--card-type", "mifare7"]
    assert main(["issuer", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["issuer", "--out", str(tmp_path / "b"), *args]) == 0
    for name in ("trust.json", "roster.csv", "population.json", "wallets/s000007.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = pop.make_population(now=NOW, cadres=7, seed="other")
    assert other.trust_entries() != json.loads((tmp_path / "a" / "trust.json").read_text())
    back = pop.read_population(tmp_path / "a")
    assert [c.sub for c in back.cadres] == [f"s{n:06d}" for n in range(1, 8)]
    assert back.trust_entries() == json.loads((tmp_path / "a" / "trust.json").read_text())
    assert all(len(c.card_uid) == 7 and c.card_uid[0] == 4 for c in back.cards())


def test_card_types_and_fractions() -> None:
    for card_type, length in (("rdm6300", 5), ("mifare4", 4), ("mifare7", 7)):
        p = pop.make_population(now=NOW, cadres=100, cards_fraction=0.25, card_type=card_type)
        assert len(p.cards()) == 25
        assert {len(c.card_uid or b"") for c in p.cards()} == {length}
    assert pop.make_population(now=NOW, cadres=10, cards_fraction=0.0).cards() == []
    assert len(pop.make_population(now=NOW, cadres=10, cards_fraction=1.0).cards()) == 10
    for bad in (
        {"cards_fraction": 1.5},
        {"card_type": "wiegand"},
        {"units": []},
        {"issuer_keys": 0},
        {"cadres": -1},
    ):
        with pytest.raises(pop.PopulationError):
            pop.make_population(now=NOW, **bad)  # type: ignore[arg-type]


def test_issuer_refuses_to_overwrite_without_force(
    issued: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["issuer", "--out", str(issued), "--cadres", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hw-sim: error:") and "--force" in err and err.count("\n") == 1


def test_phone_counter_goes_up_across_runs(issued: Path) -> None:
    wallet = issued / "wallets" / "s000003.json"
    keyring = keyring_from(issued)
    counters = []
    for k in range(3):
        text = hw_sim("phone", "--wallet", str(wallet), "--now", str(NOW + k)).stdout.strip()
        p = verify_presentation(text, NOW + k, keyring)
        counters.append(p.ctr)
        assert p.t == NOW + k
    assert counters == sorted(set(counters)) and counters[0] >= 1
    assert load_wallet(wallet).ctr == counters[-1]
    assert json.loads(wallet.read_text(encoding="utf-8"))["ctr"] == counters[-1]


def test_phone_draws_in_parallel_never_share_a_counter(issued: Path) -> None:
    wallet = issued / "wallets" / "s000004.json"
    keyring = keyring_from(issued)
    got: list[int] = []
    lock = threading.Lock()

    def draw() -> None:
        for _ in range(10):
            text, _w = draw_code(wallet, NOW)
            ctr = verify_presentation(text, NOW, keyring).ctr
            with lock:
                got.append(ctr)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and len(set(got)) == 40
    assert load_wallet(wallet).ctr == max(got)


def test_phone_pictures_decode_to_a_verifying_code(issued: Path, tmp_path: Path) -> None:
    wallet = issued / "wallets" / "s000005.json"
    keyring = keyring_from(issued)
    decoder = make_decoder("zxing")
    png, frame = tmp_path / "phone.png", tmp_path / "frame.jpg"
    hw_sim("phone", "--wallet", str(wallet), "--now", str(NOW), "--png", str(png))
    hw_sim("phone", "--wallet", str(wallet), "--now", str(NOW), "--frame", str(frame))
    screen = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert screen.shape[2] == 4  # transparent outside the phone
    # As a monitor would show it: the phone over a grey desk.
    alpha = screen[:, :, 3:4].astype(np.float32) / 255
    shown = (screen[:, :, :3] * alpha + 128 * (1 - alpha)).astype(np.uint8)
    texts = decode_frame(decoder, shown) + decode_frame(decoder, cv2.imread(str(frame)))
    assert [verify_presentation(t, NOW, keyring).ctr for t in texts] == [1, 2]


def test_phone_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phone", "--wallet", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the wallet" in err and err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(WalletError, match="not a wallet file"):
        load_wallet(bad)
