"""Revocations as the county means them (issue 12, points 7 and 8).

A cadre revocation refuses that cadre's phone codes and their canteen cards alike;
a refused code that verified keeps who it was (cadre, credential, counter) in its
ledger entry, while a code that did not verify still records only its digest.
Real tokens, a real trust store and a real ledger file, read back after a restart.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from canteenkit import ISSUER, LUNCH, Canteen, wallet
from conftest import wait_for
from daemonkit import CARD_CADRE, CARD_UID, ReaderPty, install_lists, write_settings
from daemonkit import ISSUER as DAEMON_ISSUER

from protocol import tokens
from terminal import config, ledger, trust
from terminal.core import policy
from terminal.service import daemon

CARD = trust.RosterCard(b"\x21\x22\x23\x24", ISSUER.iss, "K7", "own", "card seven", "active")
OTHER = trust.RosterCard(b"\x31\x32\x33\x34", ISSUER.iss, "K8", "own", "card eight", "active")


@pytest.fixture
def canteen_cards() -> list[trust.RosterCard]:
    """The cards of this module's canteen (the `canteen` fixture is in conftest.py)."""
    return [CARD, OTHER]


def test_a_revoked_cadre_is_refused_by_card_as_well_as_by_code(canteen: Canteen) -> None:
    code_wallet = wallet("K7")  # the same cadre (hn-test/K7) holds a phone and a card
    # Served once this lunch by card; the refusals below come before the meal rule.
    assert canteen.c.present_card(CARD.uid, LUNCH * 1000).accepted
    canteen.install(
        cards=[CARD, OTHER], revoked=[{"kind": "cadre", "iss": ISSUER.iss, "sub": "K7"}], version=2
    )
    canteen.restart()
    card = canteen.c.present_card(CARD.uid, LUNCH * 1000)
    assert not card.accepted and card.reason == tokens.REVOKED
    assert card.entry.cadre == "hn-test/K7" and card.entry.credential == "card/21222324"
    assert card.entry.detail == {"card_status": "active", "revoked": "cadre"}
    code = canteen.c.present_qr(code_wallet.draw(LUNCH), LUNCH * 1000)
    assert code.reason == tokens.REVOKED
    # Another cadre's card in the same roster still sells.
    assert canteen.c.present_card(OTHER.uid, LUNCH * 1000).accepted
    # Revoking the other cadre refuses the other card at once (no restart needed).
    canteen.install(
        cards=[CARD, OTHER], revoked=[{"kind": "cadre", "iss": ISSUER.iss, "sub": "K8"}], version=3
    )
    assert canteen.c.present_card(OTHER.uid, LUNCH * 1000 + 60_000).reason == tokens.REVOKED


def test_a_verified_refusal_keeps_who_tried_and_an_unverified_one_keeps_nothing(
    canteen: Canteen,
) -> None:
    w = wallet("R9")
    canteen.install(
        cards=[CARD, OTHER],
        revoked=[{"kind": "credential", "iss": ISSUER.iss, "cti": w.cti.hex()}],
        version=2,
    )
    text = w.draw(LUNCH)
    revoked = canteen.c.present_qr(text, LUNCH * 1000)
    forged = canteen.c.present_qr(text[:-6] + "AAAAAA", LUNCH * 1000 + 1)
    canteen.restart()
    e = canteen.c.ledger.entry(revoked.entry.seq)
    assert e is not None and (e.verdict, e.reason) == ("reject", tokens.REVOKED)
    assert e.cadre == "hn-test/R9" and e.credential == f"qr/hn-test/{w.cti.hex()}"
    assert e.ctr == w.ctr and e.unit == "own"
    assert e.detail["revoked"] == "credential" and "qr" not in e.detail
    assert len(e.detail["qr_sha256"]) == 32 and e.detail["qr_length"] == len(text)
    assert revoked.display_name == "cadre R9"  # the screen may name the verified cadre

    f = canteen.c.ledger.entry(forged.entry.seq)
    assert f is not None and f.verdict == "reject" and f.reason != tokens.REVOKED
    assert (f.cadre, f.credential, f.ctr, f.unit) == (None, None, None, None)
    assert set(f.detail) == {"qr_sha256", "qr_length"}
    # A refused credential never counts as accepted: its counter is not replay memory,
    # and the cadre has not been served.
    assert canteen.c.ledger.highest_ctr(e.credential) is None
    assert not canteen.c.ledger.served("hn-test/R9", "2026-11-26", "lunch")
    assert ledger.verify_file(canteen.root / "ledger.sqlite").ok


def test_a_replayed_code_keeps_the_cadre_it_proves(canteen: Canteen) -> None:
    w = wallet("R10")
    first = w.draw(LUNCH)
    assert canteen.c.present_qr(first, LUNCH * 1000).accepted
    again = canteen.c.present_qr(first, LUNCH * 1000 + 5000)
    assert again.reason == tokens.REPLAYED
    assert again.entry.cadre == "hn-test/R10" and again.entry.detail["highest_ctr"] == w.ctr
    assert again.entry.method == policy.QR


def test_a_running_daemon_refuses_a_revoked_cadres_swiped_card(tmp_path: Path) -> None:
    """Through the real reader path: a pty card reader, the daemon, its ledger."""
    state_dir = tmp_path / "state"
    install_lists(state_dir)
    store = trust.TrustStore(state_dir / "trust.sqlite")
    try:
        header = trust.ListHeader(2, int(time.time()) - 60, None)
        revoked = [{"kind": "cadre", "iss": DAEMON_ISSUER.iss, "sub": CARD_CADRE}]
        store.replace_revocations(trust.parse_revocations(revoked), header, int(time.time()))
    finally:
        store.close()
    reader = ReaderPty()
    settings = write_settings(tmp_path, reader_port=reader.path, camera_source=None)
    d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        reader.swipe(CARD_UID)
        wait_for(lambda: d.worker.decisions == 1, what="the swipe")
    finally:
        d.request_stop()
        thread.join(15)
        reader.close()
    book = ledger.Ledger.open(
        state_dir / "ledger.sqlite",
        terminal_id="t-daemon",
        signing_key=ledger.load_or_create_signing_key(state_dir / "terminal-key.pem"),
        now_ms=time.time_ns() // 1_000_000,
    )
    try:
        sale = [e for e in book.entries() if e.kind == "sale"][-1]
    finally:
        book.close()
    assert (sale.verdict, sale.reason) == ("reject", tokens.REVOKED)
    assert sale.cadre == f"{DAEMON_ISSUER.iss}/{CARD_CADRE}"
    assert sale.detail["revoked"] == "cadre"
