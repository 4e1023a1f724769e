"""The running daemon takes its lists and settings from county IT's signed updates.

A real county server (mTLS) with a TUF repository; the terminal provisioned and its
update root pinned; the daemon syncs, fetches the signed set, applies it between two
decisions, records it in the ledger and reports it to the county. Then county IT
revokes the card and raises the price: the next swipes are refused, and the next
accepted sale pays the new price, without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from daemonkit import (
    CARD_CADRE,
    CARD_UID,
    ISSUER,
    card_gone,
    updating_daemon,
)
from daemonkit import ledger_entries as entries

from county import updates as cu
from terminal import ledger
from terminal import updates as tu


@pytest.mark.slow
def test_signed_updates_reach_the_running_daemon(tmp_path: Path) -> None:
    roster = (
        "uid,iss,sub,unit,display_name,status\n"
        f"{CARD_UID.hex()},{ISSUER.iss},{CARD_CADRE},own,Card holder,active\n"
        f"0102030405,{ISSUER.iss},K2,own,Second card,active\n"
    )
    with updating_daemon(tmp_path, roster) as run:
        county, reader, d, now = run.county, run.reader, run.daemon, run.now
        state_dir, book = run.state_dir, run.book
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        applied = lambda: [e for e in entries(book) if e["kind"] == "config_applied"]  # noqa: E731
        wait_for(lambda: len(applied()) >= 1, what="the first signed set")
        reader.swipe(CARD_UID)
        wait_for(lambda: d.worker.decisions == 1, what="the first swipe")
        first = [e for e in entries(book) if e["kind"] == "sale"][-1]
        assert (first["verdict"], first["amount_fen"]) == ("accept", 1000), first["reason"]

        # County IT: revoke the first card, and publish a new price for this canteen.
        (tmp_path / "price.toml").write_text(
            '[[meals]]\nname = "allday"\nstart = "00:00"\nend = "23:59"\n'
            "price_own_fen = 1200\nprice_visitor_fen = 1800\n",
            encoding="utf-8",
        )
        with cu.CountyRepository(county.data) as repo:
            repo.revoke([{"kind": "card", "uid": CARD_UID.hex()}], now)
            prices = repo.publish_settings(tmp_path / "price.toml", "c-daemon", now)
        # Two publications, two sets: the daemon may apply the revocation's alone first.
        wait_for(
            lambda: any(e["detail"]["set"] >= prices.snapshot_version for e in applied()),
            what="the set with the revocation and the price",
        )
        wait_for(lambda: card_gone(d.reader, CARD_UID), what="the card to leave the field")
        reader.swipe(CARD_UID)
        wait_for(lambda: d.worker.decisions == 2, what="the revoked card's swipe")
        reader.swipe(bytes.fromhex("0102030405"))
        wait_for(lambda: d.worker.decisions == 3, what="the second card")
        sales = [e for e in entries(book) if e["kind"] == "sale"]
        assert (sales[-2]["verdict"], sales[-2]["reason"]) == ("reject", "card_revoked")
        assert (sales[-1]["verdict"], sales[-1]["amount_fen"]) == ("accept", 1200)
        # The county hears what the terminal applied with the next upload.
        wait_for(
            lambda: any(r["terminal"] == "t-daemon" for r in cu_applied(county.data)),
            what="the applied set reported to the county",
        )
    assert ledger.verify_file(book).ok
    status = tu.UpdatePaths(state_dir).applied
    assert json.loads(status.read_text(encoding="utf-8"))["set"] >= 2


def cu_applied(data: Path) -> list[dict[str, Any]]:
    with cu.CountyRepository(data) as repo:
        return repo.applied()
