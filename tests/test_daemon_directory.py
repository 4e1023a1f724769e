"""The running daemon prices by the agency directory county IT signs (issue 15).

A real county server (mTLS) with a TUF repository, a provisioned terminal and a real
daemon with a card reader on a pty. Before any directory, a city cadre's card pays the
visitor price; county IT then publishes a directory (this canteen run by a Yuhang
bureau) and tier prices; after the daemon applies that set, without a restart, the same
card pays the higher-level price, the screen names the agency and the tier, and a card
of a unit the directory does not list pays the visitor price with the screen's note.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from daemonkit import ISSUER, card_gone, updating_daemon
from daemonkit import ledger_entries as entries

from county import updates as cu
from protocol.agencies import Agency, Canteen, Directory
from terminal import ledger
from terminal.service import daemon

CITY_CARD = bytes.fromhex("0a0b0c0d0e")
CITY_CARD_2 = bytes.fromhex("0a0b0c0d0f")  # a second city cadre: once a meal per cadre
STRAY_CARD = bytes.fromhex("0102030405")


def shown(d: daemon.Daemon) -> dict[str, Any]:
    """The decision the screen shows now, as the page receives it."""
    assert d.screen is not None
    with urllib.request.urlopen(d.screen.url + "state", timeout=10) as answer:
        return dict(json.loads(answer.read())["decision"])


def directory() -> Directory:
    return Directory(
        [
            Agency("zj", "浙江省人民政府", "province", None, ""),
            Agency("hz", "杭州市人民政府", "city", "zj", ""),
            Agency("hz-finance", "杭州市财政局", "city", "hz", ""),
            Agency("yh", "余杭区机关事务管理局", "county", "hz", ""),
        ],
        [Canteen("c-daemon", "余杭区机关食堂", "yh")],
    )


@pytest.mark.slow
def test_a_published_directory_prices_the_next_swipe(tmp_path: Path) -> None:
    roster = (
        "uid,iss,sub,unit,display_name,status\n"
        f"{CITY_CARD.hex()},{ISSUER.iss},K1,hz-finance,City cadre,active\n"
        f"{CITY_CARD_2.hex()},{ISSUER.iss},K3,hz-finance,City cadre 2,active\n"
        f"{STRAY_CARD.hex()},{ISSUER.iss},K2,visiting-bureau,Stray cadre,active\n"
    )
    with updating_daemon(tmp_path, roster) as run:
        county, reader, d, now = run.county, run.reader, run.daemon, run.now
        book = run.book
        applied = lambda: [e for e in entries(book) if e["kind"] == "config_applied"]  # noqa: E731
        sales = lambda: [e for e in entries(book) if e["kind"] == "sale"]  # noqa: E731
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        wait_for(lambda: len(applied()) >= 1, what="the first signed set")
        reader.swipe(CITY_CARD)
        wait_for(lambda: d.worker.decisions == 1, what="the first swipe")
        first = sales()[-1]
        assert (first["verdict"], first["amount_fen"]) == ("accept", 1500), first["reason"]
        assert first["detail"] == {"tier": "visitor"}
        assert (shown(d)["unit_name"], shown(d)["tier_text"]) == (None, "Visitor")

        # County IT: the directory, and a price per tier for this canteen.
        (tmp_path / "tiers.toml").write_text(
            '[[meals]]\nname = "allday"\nstart = "00:00"\nend = "23:59"\n'
            "price_own_fen = 1000\nprice_higher_level_fen = 1300\nprice_visitor_fen = 1800\n",
            encoding="utf-8",
        )
        with cu.CountyRepository(county.data) as repo:
            repo.publish_directory(directory(), now)
            prices = repo.publish_settings(tmp_path / "tiers.toml", "c-daemon", now)
        # Two publications, two sets: the daemon may apply the directory's alone first.
        wait_for(
            lambda: any(e["detail"]["set"] >= prices.snapshot_version for e in applied()),
            what="the set with the directory and the prices",
        )
        wait_for(lambda: card_gone(d.reader, CITY_CARD), what="the card to leave the field")
        reader.swipe(CITY_CARD_2)
        wait_for(lambda: d.worker.decisions == 2, what="the second city cadre")
        city = sales()[-1]
        assert (city["verdict"], city["amount_fen"]) == ("accept", 1300), city["reason"]
        assert city["detail"] == {"tier": "higher_level"}
        view = shown(d)
        assert (view["unit_name"], view["tier"], view["tier_text"]) == (
            "杭州市财政局",
            "higher_level",
            "Visitor from a higher level",
        )
        assert view["tier_note"] is None

        reader.swipe(STRAY_CARD)
        wait_for(lambda: d.worker.decisions == 3, what="the unlisted unit's card")
        stray = sales()[-1]
        assert (stray["verdict"], stray["amount_fen"]) == ("accept", 1800), stray["reason"]
        assert stray["detail"] == {"tier": "unlisted"}
        view = shown(d)
        assert (view["unit"], view["unit_name"], view["tier"]) == (
            "visiting-bureau",
            None,
            "unlisted",
        )
        assert "not in the agency directory" in view["tier_note"]
    assert ledger.verify_file(book).ok
