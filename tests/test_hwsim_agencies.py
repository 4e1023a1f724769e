"""hw-sim agencies: the generated directory has four levels with sound parent links, the files
pass the protocol's own CSV readers, the same seed gives the same bytes, every tier a diner can
have at a county canteen has units to seat, and bad options are one line."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hwsim import agencies as gen
from hwsim.cli import main

from protocol.agencies import (
    CITY,
    COUNTY,
    HIGHER_LEVEL,
    LOWER_LEVEL,
    OTHER_REGION,
    OWN,
    PROVINCE,
    RANK,
    SAME_LEVEL,
    TOWNSHIP,
    UNLISTED,
    parse_agencies_csv,
    parse_canteens_csv,
)


def test_four_levels_and_every_parent_one_level_up_or_the_same() -> None:
    made = gen.make_directory("t", 12)
    d = made.directory
    levels = made.levels()
    assert levels[PROVINCE] == 10  # the government and its nine departments
    assert levels[CITY] == 4 * 10
    assert levels[COUNTY] == 12 * 10
    assert 12 * 6 <= levels[TOWNSHIP] <= 12 * 10
    assert 200 <= len(d.agencies) <= 400
    tops = [a for a in d.agencies.values() if a.parent is None]
    assert [a.code for a in tops] == ["430000"] and tops[0].name == "湖南省人民政府"
    for a in d.agencies.values():
        if a.parent is None:
            continue
        parent = d.agencies[a.parent]
        # A bureau hangs under its own government; a government under the one above.
        assert RANK[a.level] - RANK[parent.level] in (0, 1), (a, parent)
        assert d.ancestors(a.code)[-1] == "430000"
        assert len(a.finance_account) == 19 and a.finance_account.isdigit()
    names = {a.name for a in d.agencies.values()}
    assert "湖南省财政厅" in names
    assert any(n.endswith("县财政局") for n in names)
    assert any(n.endswith("镇人民政府") for n in names)
    assert all(
        a.name.endswith(("乡人民政府", "镇人民政府"))
        for a in d.agencies.values()
        if a.level == TOWNSHIP
    )
    # Every canteen is run by an agency of the directory: governments' office services
    # bureaus, and one township per county.
    operators = Counter(d.agencies[c.operator].level for c in d.canteens.values())
    assert operators == {PROVINCE: 1, CITY: 4, COUNTY: 12, TOWNSHIP: 12}


def test_the_files_pass_the_protocol_readers(tmp_path: Path) -> None:
    made = gen.make_directory("files", 5)
    agencies_file, canteens_file = gen.write_directory(made, tmp_path / "dir")
    parsed = parse_agencies_csv(agencies_file.read_text(encoding="utf-8"), "agencies.csv")
    canteens = parse_canteens_csv(canteens_file.read_text(encoding="utf-8"), parsed)
    assert parsed.agencies == made.directory.agencies
    assert {c.canteen: c for c in canteens} == dict(made.directory.canteens)
    assert canteens_file.read_text(encoding="utf-8").startswith("canteen,name,operator\n")


def test_deterministic_by_seed_and_count() -> None:
    one, again = gen.make_directory("s", 8), gen.make_directory("s", 8)
    assert one.agencies_csv() == again.agencies_csv()
    assert one.canteens_csv() == again.canteens_csv()
    other = gen.make_directory("other", 8)
    assert other.agencies_csv() != one.agencies_csv()
    assert gen.make_directory("s", 9).levels()[COUNTY] == 90


def test_a_county_canteen_seats_every_tier() -> None:
    d = gen.make_directory("tiers", 6).directory
    county_canteen = next(c for c in d.canteens.values() if d.agencies[c.operator].level == COUNTY)
    operator = county_canteen.operator
    gov = d.agencies[operator].parent
    assert gov is not None
    by_tier = gen.units_by_tier(d, operator, [gov])
    assert set(by_tier[OWN]) == {operator, gov}
    for tier in (SAME_LEVEL, HIGHER_LEVEL, LOWER_LEVEL, OTHER_REGION, UNLISTED):
        assert by_tier[tier], tier
    # Each unit sits in the tier Directory.tier gives it, once.
    seated = [u for units in by_tier.values() for u in units]
    assert len(seated) == len(set(seated)) == len(d.agencies) + len(by_tier[UNLISTED])
    for tier, units in by_tier.items():
        for unit in units:
            assert d.tier(unit, operator, [gov]) == tier
    assert {d.agencies[u].level for u in by_tier[LOWER_LEVEL]} == {TOWNSHIP}
    assert {d.agencies[u].level for u in by_tier[HIGHER_LEVEL]} == {PROVINCE, CITY}
    mix = gen.unit_mix(by_tier, (OWN, SAME_LEVEL, UNLISTED), 7, random.Random(1))
    assert [d.tier(u, operator, [gov]) for u in mix] == [
        OWN, SAME_LEVEL, UNLISTED, OWN, SAME_LEVEL, UNLISTED, OWN,
    ]  # fmt: skip
    with pytest.raises(gen.DirectoryGenError, match="no unit of tier visitor"):
        gen.unit_mix(by_tier, ("visitor",), 3, random.Random(1))


def test_the_command_writes_the_files_and_refuses_bad_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agencies", "--out", str(tmp_path), "--seed", "7", "--counties", "3"]) == 0
    out = capsys.readouterr().out
    assert "agencies (" in out and "canteens import" in out
    text = (tmp_path / gen.AGENCIES_FILE).read_text(encoding="utf-8")
    assert text == gen.make_directory("7", 3).agencies_csv()
    for bad in ("1", "37"):
        assert main(["agencies", "--out", str(tmp_path), "--counties", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "between 2 and 36" in err
