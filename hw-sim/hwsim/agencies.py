"""A simulated agency directory: a province, its cities, counties and townships, and canteens.

This module owns `hw-sim agencies`'s output and the directory the lunch-rush
scenario publishes: a few hundred agencies at the four levels of
protocol/agencies.py (one province government and its departments, a few city
governments and their bureaus, counties and districts under them with their
bureaus, townships under each county), with Chinese names (湖南省, 郴州市,
汝城县, 汝城县财政局, 某某镇人民政府), administrative-division codes (430000,
431000, 431026, 431026101, and a bureau's short suffix: 431026-cz) and a
finance account each; and the canteens, each run by an operator agency (a
government's office services bureau, or a township government). The same seed
and county count give the same files, byte for byte.

It also sorts a directory's agencies by the price tier a diner of each would
pay at one canteen (``units_by_tier``), with Directory.tier itself: the
scenario uses it to seat cadres of every tier at its counter. It reads no clock
and writes only the two files it is asked to, through the CSV formats
protocol.agencies reads; it checks nothing the protocol does not (the files it
writes pass parse_agencies_csv and parse_canteens_csv, and the tests say so).
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hwsim.population import write_text_atomic
from protocol.agencies import (
    CANTEEN_COLUMNS,
    CITY,
    COUNTY,
    LEVELS,
    OWN,
    PROVINCE,
    TIERS,
    TOWNSHIP,
    UNLISTED,
    VISITOR,
    Agency,
    Canteen,
    Directory,
    agencies_csv,
)

AGENCIES_FILE = "agencies.csv"
CANTEENS_FILE = "canteens.csv"
DEFAULT_COUNTIES = 12
MAX_COUNTIES = 36  # four cities with at least nine counties each
MAX_CITIES = 4

# Hunan, four of its cities and their counties and districts, with division codes.
_PROVINCE = ("430000", "湖南省")
_CITIES: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "431000",
        "郴州市",
        (
            ("431002", "北湖区"),
            ("431003", "苏仙区"),
            ("431021", "桂阳县"),
            ("431022", "宜章县"),
            ("431023", "永兴县"),
            ("431024", "嘉禾县"),
            ("431025", "临武县"),
            ("431026", "汝城县"),
            ("431027", "桂东县"),
            ("431028", "安仁县"),
            ("431081", "资兴市"),
        ),
    ),
    (
        "430400",
        "衡阳市",
        (
            ("430405", "珠晖区"),
            ("430406", "雁峰区"),
            ("430407", "石鼓区"),
            ("430408", "蒸湘区"),
            ("430412", "南岳区"),
            ("430421", "衡阳县"),
            ("430422", "衡南县"),
            ("430423", "衡山县"),
            ("430424", "衡东县"),
            ("430426", "祁东县"),
            ("430481", "耒阳市"),
            ("430482", "常宁市"),
        ),
    ),
    (
        "431100",
        "永州市",
        (
            ("431102", "零陵区"),
            ("431103", "冷水滩区"),
            ("431122", "东安县"),
            ("431123", "双牌县"),
            ("431124", "道县"),
            ("431125", "江永县"),
            ("431126", "宁远县"),
            ("431127", "蓝山县"),
            ("431128", "新田县"),
            ("431181", "祁阳市"),
        ),
    ),
    (
        "430200",
        "株洲市",
        (
            ("430202", "荷塘区"),
            ("430203", "芦淞区"),
            ("430204", "石峰区"),
            ("430211", "天元区"),
            ("430212", "渌口区"),
            ("430223", "攸县"),
            ("430224", "茶陵县"),
            ("430225", "炎陵县"),
            ("430281", "醴陵市"),
        ),
    ),
)

# Departments of the province, and bureaus of a city or county government: code suffix and
# name. Office services (机关事务) run the governments' canteens.
OFFICE_SERVICES = "jgsw"
_PROVINCE_DEPARTMENTS = (
    ("czt", "财政厅"),
    ("jyt", "教育厅"),
    ("wjw", "卫生健康委员会"),
    ("jtt", "交通运输厅"),
    ("slt", "水利厅"),
    ("nynct", "农业农村厅"),
    ("mzt", "民政厅"),
    ("zrzyt", "自然资源厅"),
    (OFFICE_SERVICES, "机关事务管理局"),
)
_BUREAUS = (
    ("cz", "财政局"),
    ("jy", "教育局"),
    ("wjj", "卫生健康局"),
    ("jt", "交通运输局"),
    ("sl", "水利局"),
    ("nync", "农业农村局"),
    ("mz", "民政局"),
    ("zrzy", "自然资源局"),
    (OFFICE_SERVICES, "机关事务服务中心"),
)
# Characters township names are made of (two each), and how many townships a county has.
_PLACE = "城关马桥热水土桥文明延寿三江口大坪井坡暖水泉水濠头卢阳集益岭秀南洞永丰"
_PLACE += "白石青山龙潭石门金溪杨梅黄沙长乐新市太平观音福田荷花梅田东风西岭"
TOWNSHIPS_PER_COUNTY = (6, 10)


class DirectoryGenError(Exception):
    """Bad generator options or an unwritable output folder; the message says which."""


@dataclass(frozen=True)
class Made:
    """A generated directory and what it holds, level by level."""

    directory: Directory
    seed: str
    counties: int

    def levels(self) -> dict[str, int]:
        count = Counter(a.level for a in self.directory.agencies.values())
        return {level: count[level] for level in LEVELS}

    def canteens_csv(self) -> str:
        """The canteens as county IT imports them (header canteen,name,operator)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CANTEEN_COLUMNS)
        for c in self.directory.canteens.values():
            writer.writerow((c.canteen, c.name, c.operator))
        return out.getvalue()

    def agencies_csv(self) -> str:
        return agencies_csv(self.directory)


def _account(rng: random.Random) -> str:
    """A 19-digit settlement account number at a state bank's county branch."""
    return "6217" + "".join(str(rng.randrange(10)) for _ in range(15))


def _townships(rng: random.Random, county_code: str) -> list[tuple[str, str]]:
    count = rng.randint(*TOWNSHIPS_PER_COUNTY)
    names: list[str] = []
    while len(names) < count:
        name = rng.choice(_PLACE) + rng.choice(_PLACE)
        if name[0] != name[1] and name not in names:
            names.append(name)
    out = []
    for i, name in enumerate(names, start=1):
        kind = "乡" if rng.random() < 0.3 else "镇"
        out.append((f"{county_code}{100 + i}", f"{name}{kind}人民政府"))
    return out


def make_directory(seed: str = "hw-sim", counties: int = DEFAULT_COUNTIES) -> Made:
    """A province with ``counties`` counties (and districts) over up to four cities.

    Every government has its bureaus (departments, for the province), every county six
    to ten townships; each government's office services bureau runs a canteen, and each
    county's first township runs one of its own. The seed chooses the cities, the
    counties, the townships' names and the accounts; the same seed and count give the
    same directory, in the same order."""
    if not 2 <= counties <= MAX_COUNTIES:
        raise DirectoryGenError(
            f"the number of counties must be between 2 and {MAX_COUNTIES}, not {counties}"
        )
    rng = random.Random(f"hw-sim/{seed}/agencies/{counties}")
    agencies: list[Agency] = []
    canteens: list[Canteen] = []

    def add(code: str, name: str, level: str, parent: str | None) -> str:
        agencies.append(Agency(code, name, level, parent, _account(rng)))
        return code

    def government(code: str, name: str, level: str, parent: str | None) -> str:
        """A government, its bureaus, and the canteen its office services bureau runs."""
        gov = add(code, f"{name}人民政府", level, parent)
        bureaus = _PROVINCE_DEPARTMENTS if level == PROVINCE else _BUREAUS
        for suffix, bureau in bureaus:
            add(f"{code}-{suffix}", f"{name}{bureau}", level, gov)
        canteens.append(Canteen(f"c-{code}", f"{name}机关食堂", f"{code}-{OFFICE_SERVICES}"))
        return gov

    province = government(*_PROVINCE, PROVINCE, None)
    cities = rng.sample(range(len(_CITIES)), min(MAX_CITIES, counties))
    cities.sort()
    per_city = [counties // len(cities) + (i < counties % len(cities)) for i in range(len(cities))]
    for index, n in zip(cities, per_city, strict=True):
        city_code, city_name, city_counties = _CITIES[index]
        city = government(city_code, city_name, CITY, province)
        chosen = sorted(rng.sample(range(len(city_counties)), n))
        for k in chosen:
            county_code, county_name = city_counties[k]
            county = government(county_code, county_name, COUNTY, city)
            for i, (code, name) in enumerate(_townships(rng, county_code)):
                add(code, name, TOWNSHIP, county)
                if i == 0:
                    town = name.removesuffix("人民政府")
                    canteens.append(Canteen(f"c-{code}", f"{county_name}{town}食堂", code))
    return Made(Directory(agencies, canteens), seed, counties)


def write_directory(made: Made, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the agencies and canteens CSV files into ``out_dir`` (made if missing)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / AGENCIES_FILE, made.agencies_csv())
        write_text_atomic(out / CANTEENS_FILE, made.canteens_csv())
    except OSError as exc:
        raise DirectoryGenError(f"cannot write into {out}: {exc.strerror}") from None
    return out / AGENCIES_FILE, out / CANTEENS_FILE


# --- who pays which tier at one canteen ---------------------------------------------------

# Codes no generated directory holds: a neighbouring province's bureaus, for diners the
# installed directory does not know (they pay the visitor price, and the screen says so).
UNLISTED_UNITS = ("440100-cz", "440100-jy", "450100-sl", "gd-audit")


def units_by_tier(
    directory: Directory, operator: str, own_units: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Each tier a diner can have at a canteen run by ``operator`` (with ``own_units``),
    and the units of that tier, in directory order: every agency of the directory, the
    own units, and UNLISTED_UNITS (no directory installed has no place here: VISITOR
    is left empty)."""
    own = list(dict.fromkeys([operator, *own_units]))
    out: dict[str, list[str]] = {tier: [] for tier in TIERS}
    for code in directory.agencies:
        out[directory.tier(code, operator, own)].append(code)
    for code in own:
        if code not in out[OWN]:
            out[OWN].append(code)
    out[UNLISTED] = [u for u in UNLISTED_UNITS if u not in directory.agencies]
    out[VISITOR] = []
    return out


def unit_mix(
    by_tier: dict[str, list[str]], pattern: Sequence[str], length: int, rng: random.Random
) -> list[str]:
    """``length`` units following ``pattern`` (tiers, repeated), each drawn from its tier:
    every run of len(pattern) cadres holds every tier of the pattern."""
    missing = sorted({t for t in pattern if not by_tier.get(t)})
    if missing:
        raise DirectoryGenError(f"the directory has no unit of tier {', '.join(missing)}")
    return [rng.choice(by_tier[pattern[i % len(pattern)]]) for i in range(length)]
