"""The directory an update set installs is the one the counter prices with (issue 15).

The county signs a directory (tests/updateskit.py: a real repository over HTTP), the
terminal installs it with its update set, and the service's ``load_directory`` (what
the decision worker calls at start and the daemon after each applied set) hands it to
a real Checkout, whose sale then records the tier it priced.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from canteenkit import LUNCH, SETTINGS, wallet
from canteenkit import Canteen as Counter
from updateskit import NOW, Canteen, open_canteen

from protocol import agencies
from protocol.agencies import Agency, Directory
from terminal.service.worker import load_directory


@pytest.fixture
def canteen(tmp_path: Path) -> Iterator[Canteen]:
    yield from open_canteen(tmp_path)


def yuhang() -> Directory:
    return Directory(
        [
            Agency("zj", "浙江省人民政府", "province", None, ""),
            Agency("hz", "杭州市人民政府", "city", "zj", ""),
            Agency("yh", "余杭区机关事务管理局", "county", "hz", ""),
            Agency("yh-t1", "仁和街道办事处", "township", "yh", ""),
        ],
        [agencies.Canteen("c1", "余杭区机关食堂", "yh")],
    )


def test_the_installed_directory_prices_the_next_sale(canteen: Canteen) -> None:
    assert load_directory(canteen.state) is None  # nothing installed: own or visitor
    canteen.repo.publish_directory(yuhang(), NOW)
    applied = canteen.update()
    assert applied is not None
    found = load_directory(canteen.state)
    assert found is not None and found.name_of("yh-t1") == "仁和街道办事处"
    assert found.operator_of("c1") == "yh"

    counter = Counter(canteen.state, dataclasses.replace(SETTINGS, canteen_id="c1"))
    try:
        counter.install()
        counter.c.directory = load_directory(canteen.state)
        d = counter.c.present_qr(wallet("T1", unit="yh-t1").draw(LUNCH), LUNCH * 1000)
        assert d.accepted and (d.tier, d.unit_name) == (agencies.LOWER_LEVEL, "仁和街道办事处")
        assert d.entry.detail["tier"] == agencies.LOWER_LEVEL
        # The demo lunch has no lower-level price: the visitor price.
        assert d.entry.amount_fen == 1500
        city = counter.c.present_qr(wallet("T2", unit="hz").draw(LUNCH), LUNCH * 1000)
        assert city.tier == agencies.HIGHER_LEVEL
    finally:
        counter.close()


def test_a_damaged_directory_is_logged_and_prices_as_none(
    canteen: Canteen, caplog: pytest.LogCaptureFixture
) -> None:
    canteen.repo.publish_directory(yuhang(), NOW)
    assert canteen.update() is not None
    installed = list((canteen.state / "updates").glob("directory-*.json"))
    assert len(installed) == 1
    installed[0].write_text('{"agencies": [}', encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="canteen.daemon"):
        assert load_directory(canteen.state) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "canteen.daemon"]
    assert len(lines) == 1 and "agency directory" in lines[0]
    assert "pricing own or visitor" in lines[0]
