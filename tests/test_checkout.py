"""The decision core end to end: real tokens, a real trust store, a real ledger file.

Every verdict here is read back from the committed ledger, and every rule that
needs memory is shown to hold across a restart (closing and reopening the files).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from canteenkit import ISSUER, LUNCH, SETTINGS, Canteen, at, wallet

from protocol import tokens
from terminal import ledger, state, trust
from terminal.core import policy
from terminal.core.checkout import ReversalRefused


def test_accept_is_committed_with_price_meal_and_the_signed_code(canteen: Canteen) -> None:
    w = wallet("C1")
    code = w.draw(LUNCH)
    d = canteen.c.present_qr(code, LUNCH * 1000)
    assert d.accepted and d.display_name == "cadre C1"
    stored = canteen.c.ledger.entry(d.entry.seq)
    assert stored is not None and stored.hash == d.entry.hash
    assert (stored.kind, stored.verdict, stored.meal, stored.day) == (
        "sale",
        "accept",
        "lunch",
        "2026-11-26",
    )
    assert (stored.amount_fen, stored.cadre, stored.ctr) == (1000, "hn-test/C1", w.ctr)
    assert stored.detail["qr"] == code  # the county can re-verify every accepted sale
    visitor = canteen.c.present_qr(wallet("V1", unit="elsewhere").draw(LUNCH), LUNCH * 1000)
    assert visitor.accepted and visitor.entry.amount_fen == 1500


def test_token_refusals_record_no_unverified_data(canteen: Canteen) -> None:
    forged = "CT1:" + "A" * 300
    d = canteen.c.present_qr(forged, LUNCH * 1000)
    assert not d.accepted and d.reason == tokens.MALFORMED
    e = d.entry
    assert e.cadre is None and e.credential is None and "qr" not in e.detail
    assert e.detail["qr_length"] == len(forged) and len(e.detail["qr_sha256"]) == 32


def test_replay_and_counter_rules_hold_across_restart(canteen: Canteen) -> None:
    w = wallet("C2")
    first = w.draw(LUNCH)
    assert canteen.c.present_qr(first, LUNCH * 1000).accepted
    canteen.restart()
    assert canteen.c.present_qr(first, LUNCH * 1000 + 1000).reason == tokens.REPLAYED
    older = w.draw(LUNCH, ctr=w.ctr - 1)
    assert canteen.c.present_qr(older, LUNCH * 1000 + 2000).reason == tokens.REPLAYED


def test_once_per_meal_window_by_qr_or_card_across_restart(canteen: Canteen) -> None:
    card = trust.RosterCard(b"\x0a\x1b\x2c\x3d", "hn-test", "C3", "own", "cadre C3", "active")
    canteen.install(cards=[card], version=2)
    w = wallet("C3")
    assert canteen.c.present_card(card.uid, LUNCH * 1000).accepted
    canteen.restart()
    again = canteen.c.present_qr(w.draw(LUNCH + 5), (LUNCH + 5) * 1000)
    assert again.reason == policy.ALREADY_SERVED
    assert canteen.c.present_card(card.uid, (LUNCH + 9) * 1000).reason == policy.ALREADY_SERVED
    dinner = at("18:00")
    canteen.install(issued_at=dinner - 60, cards=[card], version=3)
    assert canteen.c.present_qr(w.draw(dinner), dinner * 1000).accepted


def test_outside_meal_window(canteen: Canteen) -> None:
    t = at("15:00")
    d = canteen.c.present_qr(wallet("C4").draw(t), t * 1000)
    assert d.reason == policy.OUTSIDE_MEAL_WINDOW
    assert d.entry.meal is None and d.entry.day == "2026-11-26"


def test_revocations_of_every_kind(canteen: Canteen) -> None:
    ws = [wallet(f"R{i}") for i in range(4)]
    revoked = [
        {"kind": "credential", "iss": "hn-test", "cti": ws[0].cti.hex()},
        {"kind": "cadre", "iss": "hn-test", "sub": "R1"},
        {
            "kind": "holder_key",
            "public_key": ws[2].holder_key.public_key().public_bytes_raw().hex(),
        },
    ]
    canteen.install(revoked=revoked, version=2)
    for w in ws[:3]:
        assert canteen.c.present_qr(w.draw(LUNCH), LUNCH * 1000).reason == tokens.REVOKED
    assert canteen.c.present_qr(ws[3].draw(LUNCH), LUNCH * 1000).accepted
    canteen.install(
        revoked=[{"kind": "issuer_key", "public_key": ISSUER.public_key.hex()}], version=3
    )
    assert canteen.c.present_qr(ws[3].draw(LUNCH + 1), LUNCH * 1000 + 1000).reason == tokens.REVOKED


def test_card_path(canteen: Canteen) -> None:
    active = trust.RosterCard(b"\1\2\3\4", "hn-test", "K1", "own", "card one", "active")
    lost = trust.RosterCard(b"\5\6\7\x08", "hn-test", "K2", "own", "card two", "lost")
    blocked_by_list = trust.RosterCard(
        b"\x09\x0a\x0b\x0c", "hn-test", "K3", "own", "card 3", "active"
    )
    canteen.install(
        cards=[active, lost, blocked_by_list],
        version=2,
        revoked=[{"kind": "card", "uid": "090a0b0c"}],
    )
    assert canteen.c.present_card(b"\xde\xad\xbe\xef", LUNCH * 1000).reason == policy.CARD_UNKNOWN
    d = canteen.c.present_card(lost.uid, LUNCH * 1000)
    assert d.reason == policy.CARD_REVOKED and d.entry.detail == {"card_status": "lost"}
    assert canteen.c.present_card(blocked_by_list.uid, LUNCH * 1000).reason == policy.CARD_REVOKED
    ok = canteen.c.present_card(active.uid, LUNCH * 1000)
    assert ok.accepted and ok.entry.method == "card" and ok.entry.credential == "card/01020304"


def test_card_caps_are_lower_than_qr(canteen: Canteen) -> None:
    card = trust.RosterCard(b"\1\1\1\1", "hn-test", "K9", "own", "k", "active")
    canteen.install(cards=[card], version=2)
    meals = [at("08:00"), at("12:00"), at("18:00")]
    verdicts = []
    for t in meals:
        canteen.install(issued_at=t - 60, cards=[card], version=2)
        verdicts.append(canteen.c.present_card(card.uid, t * 1000).reason)
    assert verdicts == [None, None, policy.DAILY_MEAL_CAP]  # card cap 2 a day
    w = wallet("Q9")
    qr = []
    for t in [at("08:00", 27), at("12:00", 27), at("18:00", 27)]:
        canteen.install(issued_at=t - 60, cards=[card], version=2)
        qr.append(canteen.c.present_qr(w.draw(t), t * 1000).reason)
    assert qr == [None, None, None]  # QR cap 3 a day


def test_credential_allowance_caps_the_day(canteen: Canteen) -> None:
    w = wallet("A1", allowance=(1, None))
    b = at("08:00")
    canteen.install(issued_at=b - 60, version=1)
    assert canteen.c.present_qr(w.draw(b), b * 1000).accepted
    assert canteen.c.present_qr(w.draw(LUNCH), LUNCH * 1000).reason == policy.DAILY_MEAL_CAP


def test_stale_revocation_list_refuses_qr(canteen: Canteen) -> None:
    old = LUNCH - SETTINGS.lists.revocation_hard_s - 1
    canteen.install(issued_at=old, version=1)
    d = canteen.c.present_qr(wallet("S1").draw(LUNCH), LUNCH * 1000)
    assert d.reason == policy.REVOCATION_LIST_STALE


def test_offline_entry_cap_then_ack_frees_it(tmp_path: Path) -> None:
    tight = dataclasses.replace(
        SETTINGS, caps=dataclasses.replace(SETTINGS.caps, unsynced_entries=6)
    )
    place = Canteen(tmp_path / "s", tight)
    place.install()
    try:
        # genesis + 5 sales are 6 unacknowledged entries: the 6th cadre is refused.
        results = [
            place.c.present_qr(wallet(f"O{i}").draw(LUNCH), LUNCH * 1000).reason for i in range(6)
        ]
        assert results == [None] * 5 + [policy.OFFLINE_ENTRIES_CAP]
        place.c.ledger.mark_acked(place.c.ledger.last_seq(), LUNCH * 1000)
        assert place.c.present_qr(wallet("O9").draw(LUNCH), LUNCH * 1000).accepted
    finally:
        place.close()


def test_sync_overdue_counts_from_the_ledger_start(tmp_path: Path) -> None:
    place = Canteen(tmp_path / "s")
    try:
        # The ledger began a day before LUNCH; sync_overdue_s (3 days) later it is overdue.
        t = at("12:00", day=29) + 60
        place.install(issued_at=t - 60)
        d = place.c.present_qr(wallet("Y1").draw(t), t * 1000)
        assert d.reason == policy.SYNC_OVERDUE
    finally:
        place.close()


def test_clock_behind_the_floor_is_a_fault_and_the_floor_is_used(canteen: Canteen) -> None:
    w = wallet("T1")
    assert canteen.c.present_qr(w.draw(LUNCH), LUNCH * 1000).accepted
    canteen.restart()
    behind = (LUNCH - 3600) * 1000  # the Pi booted with an old clock
    d = canteen.c.present_qr(w.draw(LUNCH + 1), behind)
    assert d.entry.at_ms == LUNCH * 1000  # never below the newest recorded time
    faults = [e for e in canteen.c.ledger.entries() if e.kind == ledger.CLOCK_FAULT]
    assert len(faults) == 1 and faults[0].detail["behind_ms"] == 3600 * 1000
    canteen.c.present_qr(w.draw(LUNCH + 2), behind + 1000)  # same episode: no second fault
    assert sum(e.kind == ledger.CLOCK_FAULT for e in canteen.c.ledger.entries()) == 1


def test_clock_before_the_earliest_date_refuses(tmp_path: Path) -> None:
    place = Canteen.__new__(Canteen)
    place.root, place.settings, place.counter = tmp_path / "s", SETTINGS, None
    place.open(0)  # a fresh ledger on a Pi that believes it is 1970
    try:
        d = place.c.present_qr(wallet("E1").draw(LUNCH), 5_000)
        assert d.reason == policy.CLOCK_UNTRUSTED
        card = place.c.present_card(b"\1\2\3\4", 6_000)
        assert card.reason == policy.CLOCK_UNTRUSTED
    finally:
        place.close()


def test_reversal_frees_the_meal_and_is_a_new_entry(canteen: Canteen) -> None:
    w = wallet("U1")
    sale = canteen.c.present_qr(w.draw(LUNCH), LUNCH * 1000)
    rev = canteen.c.reverse(sale.entry.seq, LUNCH * 1000 + 60_000, within_s=600, staff="cashier-1")
    assert rev.kind == ledger.REVERSAL and rev.ref_seq == sale.entry.seq
    assert rev.amount_fen == sale.entry.amount_fen
    stored = canteen.c.ledger.entry(sale.entry.seq)
    assert stored is not None and stored.hash == sale.entry.hash  # the sale itself is untouched
    with pytest.raises(ReversalRefused, match="already reversed"):
        canteen.c.reverse(sale.entry.seq, LUNCH * 1000 + 70_000, within_s=600, staff="cashier-1")
    assert canteen.c.present_qr(w.draw(LUNCH + 90), (LUNCH + 90) * 1000).accepted
    with pytest.raises(ReversalRefused, match="not an accepted sale"):
        canteen.c.reverse(rev.seq, (LUNCH + 100) * 1000, within_s=600, staff="x")
    late = canteen.c.present_qr(wallet("U2").draw(LUNCH + 100), (LUNCH + 100) * 1000)
    with pytest.raises(ReversalRefused, match="older than 10 minutes"):
        canteen.c.reverse(late.entry.seq, (LUNCH + 800) * 1000, within_s=600, staff="x")


def test_the_written_ledger_verifies(canteen: Canteen) -> None:
    for i in range(5):
        canteen.c.present_qr(wallet(f"L{i}").draw(LUNCH), LUNCH * 1000)
    canteen.c.present_qr("garbage", LUNCH * 1000)
    path = canteen.root / state.LEDGER_FILE
    canteen.close()
    report = ledger.verify_file(path)
    assert report.ok, report.problem
    assert report.entries == 7
