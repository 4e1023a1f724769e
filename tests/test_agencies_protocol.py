"""protocol/agencies.py: the directory files county IT imports and the price-tier rule.

The tier rule is what the terminal decides offline and what the settlement groups by,
so each relationship the issue names is checked on a small Zhejiang-like directory:
Zhejiang province, Hangzhou and Ningbo cities, Yuhang and Xihu districts of Hangzhou,
bureaus at each level and two townships of Yuhang.
"""

from __future__ import annotations

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import agencies
from protocol.agencies import (
    HIGHER_LEVEL,
    LOWER_LEVEL,
    OTHER_REGION,
    OWN,
    SAME_LEVEL,
    UNLISTED,
    VISITOR,
    DirectoryError,
    parse_agencies_csv,
    parse_canteens_csv,
    parse_directory,
)
from terminal import config

AGENCIES = """code,name,level,parent,finance_account
zj,浙江省人民政府,province,,6222-0001
zj-fin,浙江省财政厅,province,zj,6222-0002
hz,杭州市人民政府,city,zj,6222-0003
hz-fin,杭州市财政局,city,hz,
yh,余杭区人民政府,county,hz,
yh-edu,余杭区教育局,county,yh,
xh,西湖区人民政府,county,hz,
yh-cq,仓前街道办事处,township,yh,
yh-lz,良渚街道办事处,township,yh,
nb,宁波市人民政府,city,zj,
"""
CANTEENS = """canteen,name,operator
yh-canteen,余杭区机关食堂,yh
hz-canteen,杭州市机关食堂,hz
"""


@pytest.fixture(scope="module")
def directory() -> agencies.Directory:
    found = parse_agencies_csv(AGENCIES)
    return agencies.Directory(found.agencies.values(), parse_canteens_csv(CANTEENS, found))


@pytest.mark.parametrize(
    ("diner", "operator", "tier"),
    [
        ("yh", "yh", OWN),
        ("yh-edu", "yh", SAME_LEVEL),  # another county bureau of the same district
        ("yh-cq", "yh-lz", SAME_LEVEL),  # two townships of one district
        ("hz-fin", "yh", HIGHER_LEVEL),  # a city cadre at a district canteen of that city
        ("zj-fin", "yh-cq", HIGHER_LEVEL),  # the province at a township
        ("yh-cq", "yh", LOWER_LEVEL),  # a township cadre at its district's canteen
        ("yh", "hz", LOWER_LEVEL),  # a district cadre at its city's canteen
        ("xh", "yh", OTHER_REGION),  # another district of the same city
        ("nb", "hz", OTHER_REGION),  # another city
        ("yh-cq", "xh", OTHER_REGION),  # a township of another district
        ("not-listed", "yh", UNLISTED),
    ],
)
def test_each_relationship_gets_its_tier(
    directory: agencies.Directory, diner: str, operator: str, tier: str
) -> None:
    assert directory.tier(diner, operator) == tier


def test_own_units_and_unknown_operators(directory: agencies.Directory) -> None:
    assert directory.tier("hz-fin", "yh", own_units={"hz-fin"}) == OWN
    # A canteen whose operator the directory does not know: every listed visitor is foreign.
    assert directory.tier("yh", "ghost") == OTHER_REGION
    assert directory.tier("yh", None) == OTHER_REGION
    assert agencies.no_directory_tier("demo-unit", None, {"demo-unit"}) == OWN
    assert agencies.no_directory_tier("elsewhere", None, {"demo-unit"}) == VISITOR


def test_names_and_operators(directory: agencies.Directory) -> None:
    assert directory.name_of("yh-cq") == "仓前街道办事处"
    assert directory.name_of("nope") is None
    assert directory.operator_of("yh-canteen") == "yh"
    assert directory.operator_of("nope") is None
    assert directory.area("yh-cq") == "yh"
    assert directory.area("hz-fin") == "hz"


def test_the_signed_document_round_trips(directory: agencies.Directory) -> None:
    doc = directory.as_json()
    again = parse_directory({**doc, "version": 3, "issued_at": 1_790_000_000})
    assert again.version == 3
    assert again.issued_at == 1_790_000_000
    assert again.agencies == directory.agencies
    assert again.canteens == directory.canteens
    assert parse_agencies_csv(agencies.agencies_csv(directory)).agencies == directory.agencies


def test_every_bad_row_is_named_and_nothing_is_returned() -> None:
    bad = AGENCIES + (
        "yh,余杭区人民政府,county,hz,\n"  # a duplicate code
        "bad code,名,county,hz,\n"
        "ts,某镇,district,yh,\n"
        "empty,,county,hz,\n"
    )
    with pytest.raises(DirectoryError) as caught:
        parse_agencies_csv(bad, "agencies.csv")
    lines = caught.value.lines
    assert len(lines) == 4
    assert lines[0].startswith("agencies.csv line 12: code 'yh' is already on line 6")
    assert lines[1].startswith("agencies.csv line 13: code 'bad code'")
    assert "level 'district' is not one of province, city, county, township" in lines[2]
    assert lines[3] == "agencies.csv line 15: name is empty"


def test_links_are_checked_whole() -> None:
    with pytest.raises(DirectoryError) as caught:
        parse_agencies_csv(AGENCIES + "a,甲,city,b,\nb,乙,city,a,\n", "f.csv")
    assert caught.value.lines == [
        "f.csv line 12: the parent links go round in a cycle: a -> b -> a"
    ]
    with pytest.raises(DirectoryError) as caught:
        parse_agencies_csv(AGENCIES + "orphan,孤,county,ghost,\n", "f.csv")
    assert caught.value.lines == ["f.csv line 12: parent 'ghost' is not an agency"]
    with pytest.raises(DirectoryError) as caught:
        parse_agencies_csv(AGENCIES + "up,上,province,yh-cq,\n", "f.csv")
    assert "below this agency's level province" in caught.value.lines[0]
    with pytest.raises(DirectoryError, match="its own parent"):
        parse_agencies_csv(AGENCIES + "self,自,city,self,\n")


def test_header_and_shape_errors() -> None:
    with pytest.raises(DirectoryError, match="line 1: the header must be code,name,level"):
        parse_agencies_csv("code,name\nx,y\n")
    with pytest.raises(DirectoryError, match="line 2: wrong number of fields"):
        parse_agencies_csv("code,name,level,parent,finance_account\nx,y,city\n")
    # Excel's byte-order mark is not part of the first column's name.
    assert "zj" in parse_agencies_csv("\ufeff" + AGENCIES).agencies
    with pytest.raises(DirectoryError, match="must be an object with 'agencies'"):
        parse_directory([])


def test_canteens_name_known_operators(directory: agencies.Directory) -> None:
    with pytest.raises(DirectoryError) as caught:
        parse_canteens_csv(CANTEENS + "x,某食堂,ghost\nyh-canteen,again,yh\n", directory, "c.csv")
    assert caught.value.lines == [
        "c.csv line 4: operator 'ghost' is not an agency in the directory",
        "c.csv line 5: canteen 'yh-canteen' is already on line 2",
    ]


@settings(max_examples=examples(60), deadline=None)
@given(
    st.lists(
        st.sampled_from(["zj", "hz", "nb", "yh", "xh", "yh-cq", "yh-lz", "hz-fin"]),
        min_size=2,
        max_size=2,
    )
)
def test_higher_and_lower_mirror_each_other(pair: list[str]) -> None:
    """If A visiting B's canteen is a higher-level visitor, B visiting A's is a lower one."""
    found = parse_agencies_csv(AGENCIES)
    a, b = pair
    there, back = found.tier(a, b), found.tier(b, a)
    mirror = {HIGHER_LEVEL: LOWER_LEVEL, LOWER_LEVEL: HIGHER_LEVEL}
    assert back == mirror.get(there, there)


# ---- prices in the settings ----

COUNTY_WIDE = """
[[meals]]
name = "breakfast"
start = "07:00"
end = "09:00"
price_own_fen = 300
price_visitor_fen = 500

[[meals]]
name = "lunch"
start = "11:30"
end = "13:30"
price_own_fen = 1000
price_visitor_fen = 1500
price_same_level_fen = 1100
price_higher_level_fen = 1200
"""


def test_meal_prices_by_tier_and_key_by_key_overrides() -> None:
    doc = config.read().over(COUNTY_WIDE, "county-wide")
    doc = doc.over('[[meals]]\nname = "lunch"\nprice_own_fen = 900\n', "canteen")
    meals = {m.name: m for m in config.build(doc).meals}
    assert sorted(meals) == ["breakfast", "lunch"]  # the canteen's file kept breakfast
    lunch = meals["lunch"]
    assert lunch.price_for(OWN) == 900
    assert lunch.price_for(SAME_LEVEL) == 1100
    assert lunch.price_for(HIGHER_LEVEL) == 1200
    assert lunch.price_for(LOWER_LEVEL) == 1500  # not set: the visitor price
    assert lunch.price_for(UNLISTED) == 1500
    assert lunch.price_for(VISITOR) == 1500
    off = doc.over('[[meals]]\nname = "breakfast"\noff = true\n', "no breakfast")
    assert [m.name for m in config.build(off).meals] == ["lunch"]


def test_the_first_file_with_meals_replaces_the_demo_meals() -> None:
    only = config.read().over(COUNTY_WIDE, "county-wide")
    assert [m.name for m in config.build(only).meals] == ["breakfast", "lunch"]
    lunch_again = COUNTY_WIDE[COUNTY_WIDE.index('[[meals]]\nname = "lunch"') :]
    with pytest.raises(config.ConfigError, match="used twice"):
        config.build(config.read().over(COUNTY_WIDE + lunch_again, "one file, lunch twice"))
    with pytest.raises(config.ConfigError, match="off must be true or false"):
        config.read().over(COUNTY_WIDE, "a").over('[[meals]]\nname = "lunch"\noff = 1\n', "b")
    with pytest.raises(config.ConfigError, match="price_same_level_fen"):
        config.build(config.read().over(COUNTY_WIDE.replace("1100", "-5"), "neg"))
