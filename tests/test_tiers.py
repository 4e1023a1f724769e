"""Price tiers decided offline at the counter: a real Checkout, real codes, a real ledger.

The canteen here is Yuhang district's office-services canteen (operator `yh-office`, a
county-level agency under Yuhang district, which is under Hangzhou city, under Zhejiang
province). Each diner's unit stands in one relationship to it; the verdict's price, its
tier and the tier recorded in the committed sale are read back from the ledger file.
docs/prices.md tells the same story with the same agencies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from canteenkit import LUNCH, Canteen, at, wallet

from protocol import agencies
from protocol.agencies import Agency, Directory
from terminal import config, trust
from terminal.core import policy

SETTINGS_TOML = """
[terminal]
state_dir = "state"

[canteen]
id = "yh-canteen"
name = "余杭区机关食堂"
# The canteen's own file may list further own units beside the operator.
units = ["yh-canteen-staff"]
unit_names = { "yh-canteen-staff" = "食堂职工", "yh-office" = "settings name, not shown" }

[[meals]]
name = "breakfast"  # no tier prices: every visitor tier pays price_visitor_fen
start = "07:00"
end = "09:00"
price_own_fen = 300
price_visitor_fen = 500

[[meals]]
name = "lunch"
start = "11:30"
end = "13:30"
price_own_fen = 1000
price_same_level_fen = 1200
price_higher_level_fen = 1300
price_lower_level_fen = 1100
price_other_region_fen = 1800
price_visitor_fen = 2000

[[meals]]
name = "dinner"  # only some tiers priced: the others pay price_visitor_fen
start = "17:30"
end = "19:30"
price_own_fen = 800
price_same_level_fen = 900
price_visitor_fen = 1600
"""


def zhejiang() -> Directory:
    """Zhejiang province, Hangzhou and Ningbo cities, Yuhang and Xihu districts."""

    def a(code: str, name: str, level: str, parent: str | None) -> Agency:
        return Agency(code, name, level, parent, f"acct-{code}")

    return Directory(
        [
            a("zj-gov", "浙江省人民政府", "province", None),
            a("zj-finance", "浙江省财政厅", "province", "zj-gov"),
            a("hz-gov", "杭州市人民政府", "city", "zj-gov"),
            a("hz-finance", "杭州市财政局", "city", "hz-gov"),
            a("yh-gov", "余杭区人民政府", "county", "hz-gov"),
            a("yh-office", "余杭区机关事务管理局", "county", "yh-gov"),
            a("yh-edu", "余杭区教育局", "county", "yh-gov"),
            a("yh-liangzhu", "良渚街道办事处", "township", "yh-gov"),
            a("xh-gov", "西湖区人民政府", "county", "hz-gov"),
            a("nb-gov", "宁波市人民政府", "city", "zj-gov"),
            a("nb-yinzhou", "鄞州区人民政府", "county", "nb-gov"),
        ],
        [agencies.Canteen("yh-canteen", "余杭区机关食堂", "yh-office")],
        version=3,
        issued_at=LUNCH - 86400,
    )


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    file = tmp_path / "terminal.toml"
    file.write_text(SETTINGS_TOML, encoding="utf-8")
    return config.load(file)


@pytest.fixture
def yuhang(tmp_path: Path, settings: config.Settings) -> Iterator[Canteen]:
    place = Canteen(tmp_path / "state", settings)
    place.install()
    place.c.directory = zhejiang()
    yield place
    place.close()


def sell(place: Canteen, sub: str, unit: str, when: int = LUNCH) -> tuple[int, str | None, str]:
    """(amount charged, tier, verdict) of one code, as the committed ledger holds them."""
    d = place.c.present_qr(wallet(sub, unit=unit).draw(when), when * 1000)
    stored = place.c.ledger.entry(d.entry.seq)
    assert stored is not None and stored.hash == d.entry.hash
    assert d.tier == stored.detail.get("tier")
    return stored.amount_fen, stored.detail.get("tier"), stored.verdict


@pytest.mark.parametrize(
    ("unit", "tier", "fen"),
    [
        ("yh-office", agencies.OWN, 1000),  # the canteen's operator
        ("yh-canteen-staff", agencies.OWN, 1000),  # listed own in [canteen] units
        ("yh-edu", agencies.SAME_LEVEL, 1200),  # another Yuhang bureau
        ("hz-finance", agencies.HIGHER_LEVEL, 1300),  # Hangzhou city, above Yuhang
        ("zj-finance", agencies.HIGHER_LEVEL, 1300),  # Zhejiang province
        ("yh-liangzhu", agencies.LOWER_LEVEL, 1100),  # a Yuhang township
        ("xh-gov", agencies.OTHER_REGION, 1800),  # Xihu: another district of Hangzhou
        ("nb-yinzhou", agencies.OTHER_REGION, 1800),  # another city's district
        ("not-in-directory", agencies.UNLISTED, 2000),  # the visitor price
    ],
)
def test_each_relationship_pays_its_tier_and_the_sale_records_it(
    yuhang: Canteen, unit: str, tier: str, fen: int
) -> None:
    assert sell(yuhang, "C1", unit) == (fen, tier, "accept")
    # And again after a restart: the tier came from the directory, not from memory.
    yuhang.restart()
    yuhang.c.directory = zhejiang()
    assert sell(yuhang, "C2", unit, at("18:00"))[1] == tier


def test_a_meal_without_a_tier_price_charges_the_visitor_price(yuhang: Canteen) -> None:
    breakfast = at("08:00")
    assert sell(yuhang, "B1", "yh-edu", breakfast) == (500, agencies.SAME_LEVEL, "accept")
    assert sell(yuhang, "B2", "hz-finance", breakfast) == (500, agencies.HIGHER_LEVEL, "accept")
    assert sell(yuhang, "B3", "yh-office", breakfast) == (300, agencies.OWN, "accept")
    dinner = at("18:00")
    assert sell(yuhang, "D1", "yh-edu", dinner) == (900, agencies.SAME_LEVEL, "accept")
    assert sell(yuhang, "D2", "yh-liangzhu", dinner) == (1600, agencies.LOWER_LEVEL, "accept")


def test_the_decision_names_the_agency_from_the_directory(yuhang: Canteen) -> None:
    d = yuhang.c.present_qr(wallet("N1", unit="hz-finance").draw(LUNCH), LUNCH * 1000)
    assert (d.unit_name, d.tier) == ("杭州市财政局", agencies.HIGHER_LEVEL)
    # The directory's name wins over the settings' unit_names; those name what it lacks.
    own = yuhang.c.present_qr(wallet("N2", unit="yh-office").draw(LUNCH), LUNCH * 1000)
    assert own.unit_name == "余杭区机关事务管理局"
    staff = yuhang.c.present_qr(wallet("N3", unit="yh-canteen-staff").draw(LUNCH), LUNCH * 1000)
    assert staff.unit_name == "食堂职工"
    stray = yuhang.c.present_qr(wallet("N4", unit="stray-unit").draw(LUNCH), LUNCH * 1000)
    assert (stray.unit_name, stray.tier, stray.entry.amount_fen) == (
        None,
        agencies.UNLISTED,
        2000,
    )


def test_cards_are_priced_by_the_same_rule(tmp_path: Path, settings: config.Settings) -> None:
    card = trust.RosterCard(b"\x0a\x1b\x2c\x3d", "hn-test", "K1", "yh-liangzhu", "卡一", "active")
    place = Canteen(tmp_path / "cards", settings)
    try:
        place.install(cards=[card])
        place.c.directory = zhejiang()
        d = place.c.present_card(card.uid, LUNCH * 1000)
        assert d.accepted and (d.tier, d.entry.amount_fen) == (agencies.LOWER_LEVEL, 1100)
        assert d.entry.detail == {"tier": agencies.LOWER_LEVEL}
        assert d.unit_name == "良渚街道办事处"
    finally:
        place.close()


def test_without_a_directory_it_is_own_or_visitor_as_before(
    tmp_path: Path, settings: config.Settings
) -> None:
    place = Canteen(tmp_path / "none", settings)
    try:
        place.install()
        assert place.c.directory is None
        # The operator is unknown without a directory: only [canteen] units are own.
        assert sell(place, "V1", "yh-canteen-staff") == (1000, agencies.OWN, "accept")
        assert sell(place, "V2", "yh-edu") == (2000, agencies.VISITOR, "accept")
        assert sell(place, "V3", "yh-office") == (2000, agencies.VISITOR, "accept")
    finally:
        place.close()


def test_the_embedded_demo_settings_keep_their_two_prices(canteen: Canteen) -> None:
    assert sell(canteen, "O1", "own") == (1000, agencies.OWN, "accept")
    assert sell(canteen, "O2", "elsewhere") == (1500, agencies.VISITOR, "accept")


def test_refusals_before_the_price_have_no_tier(yuhang: Canteen) -> None:
    early = at("10:00")
    outside = yuhang.c.present_qr(wallet("R1", unit="yh-edu").draw(early), early * 1000)
    assert outside.reason == policy.OUTSIDE_MEAL_WINDOW and outside.tier is None
    assert "tier" not in outside.entry.detail
    w = wallet("R2", unit="hz-finance")
    assert yuhang.c.present_qr(w.draw(LUNCH), LUNCH * 1000).accepted
    again = yuhang.c.present_qr(w.draw(LUNCH + 5), (LUNCH + 5) * 1000)
    assert again.reason == policy.ALREADY_SERVED and again.tier is None
    assert "tier" not in again.entry.detail


def test_a_daily_amount_cap_refusal_records_the_tier(
    tmp_path: Path, settings: config.Settings
) -> None:
    tight = dataclasses.replace(
        settings, caps=dataclasses.replace(settings.caps, qr_fen_per_day=1500)
    )
    place = Canteen(tmp_path / "tight", tight)
    try:
        place.install()
        place.c.directory = zhejiang()
        d = place.c.present_qr(wallet("T1", unit="xh-gov").draw(LUNCH), LUNCH * 1000)
        assert (d.reason, d.tier) == (policy.DAILY_AMOUNT_CAP, agencies.OTHER_REGION)
        assert d.entry.detail["tier"] == agencies.OTHER_REGION
        assert d.entry.amount_fen == 0
    finally:
        place.close()


def test_a_canteen_the_directory_does_not_list_treats_listed_visitors_as_other_region(
    yuhang: Canteen,
) -> None:
    yuhang.c.directory = Directory(zhejiang().agencies.values(), [], version=4)
    assert sell(yuhang, "X1", "yh-edu") == (1800, agencies.OTHER_REGION, "accept")
    assert sell(yuhang, "X2", "yh-canteen-staff") == (1000, agencies.OWN, "accept")
    assert sell(yuhang, "X3", "unknown-unit") == (2000, agencies.UNLISTED, "accept")
