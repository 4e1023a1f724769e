"""The agency directory as a signed update (issue 15): the county signs it as a target
of its own, the terminal checks it, installs it with the set and keeps the last good
one when a directory is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from updateskit import NOW, Canteen, open_canteen

from county import updates as cu
from protocol.agencies import Agency, Directory, parse_directory
from protocol.agencies import Canteen as Dining
from protocol.layout import DIRECTORY_TARGET


@pytest.fixture
def canteen(tmp_path: Path) -> Iterator[Canteen]:
    yield from open_canteen(tmp_path)


def directory(*extra: Agency) -> Directory:
    """A province, a city, a county with a township, and canteen c1 run by the county."""
    agencies = [
        Agency("zj", "浙江省", "province", None, "ACC-ZJ"),
        Agency("hz", "杭州市", "city", "zj", "ACC-HZ"),
        Agency("yh", "余杭区", "county", "hz", "ACC-YH"),
        Agency("yh-t1", "仁和街道", "township", "yh", "ACC-T1"),
        *extra,
    ]
    return Directory(agencies, [Dining("c1", "余杭区机关食堂", "yh")])


def published(c: Canteen) -> bytes:
    info = c.repo.target_info(DIRECTORY_TARGET)
    assert info is not None
    folder, _, base = DIRECTORY_TARGET.rpartition("/")
    return (c.repo.paths.targets / folder / f"{info.hashes['sha256']}.{base}").read_bytes()


# ---- the county signs it -------------------------------------------------------------


def test_county_signs_the_directory_with_the_next_version(canteen: Canteen) -> None:
    c = canteen
    first = c.repo.publish_directory(directory(), NOW)
    assert first.targets == [DIRECTORY_TARGET]
    doc = json.loads(published(c))
    assert doc["version"] == 1 and doc["issued_at"] == NOW
    parsed = parse_directory(doc)
    assert parsed.name_of("yh") == "余杭区" and parsed.operator_of("c1") == "yh"
    info = c.repo.target_info(DIRECTORY_TARGET)
    assert info is not None and info.custom == {"version": 1, "issued_at": NOW}

    c.repo.publish_directory(directory(Agency("yh-t2", "良渚街道", "township", "yh", "")), NOW + 5)
    again = parse_directory(json.loads(published(c)))
    assert again.version == 2 and again.issued_at == NOW + 5
    assert again.name_of("yh-t2") == "良渚街道"


def test_county_refuses_a_directory_that_does_not_check(canteen: Canteen) -> None:
    c = canteen
    before = c.repo.timestamp().signed.version
    # Built by hand, past the CSV checks: a parent that is not an agency.
    bad = directory(Agency("lost", "无主单位", "township", "nowhere", ""))
    with pytest.raises(cu.UpdatesError, match="parent 'nowhere' is not an agency"):
        c.repo.publish_directory(bad, NOW)
    assert c.repo.timestamp().signed.version == before
    assert c.repo.target_info(DIRECTORY_TARGET) is None
