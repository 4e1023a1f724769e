"""The agency directory as a signed update (issue 15): the county signs it as a target
of its own, the terminal checks it, installs it with the set and keeps the last good
one when a directory is refused."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from updateskit import NOW, Canteen, open_canteen

from county import updates as cu
from county.updates_cli import add_update_commands as add_county
from protocol.agencies import Agency, Directory, parse_directory
from protocol.agencies import Canteen as Dining
from protocol.layout import DIRECTORY_TARGET
from terminal import updates as tu
from terminal.commands.update import add_update_commands as add_terminal


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


def publish_raw_directory(c: Canteen, doc: object) -> None:
    """Sign a directory document as the county's repository would, past its checks (a
    damaged or hostile publication that still verifies under the county's keys)."""
    data = json.dumps(doc, ensure_ascii=False).encode()
    with c.repo._locked():
        c.repo._publish(c.now, top={DIRECTORY_TARGET: (data, {"version": 99, "issued_at": NOW})})


# ---- the terminal installs it ----------------------------------------------------------


def test_terminal_installs_the_directory_with_the_set(canteen: Canteen) -> None:
    c = canteen
    assert tu.installed_directory(c.state) is None
    c.repo.publish_directory(directory(), NOW)
    applied = c.update()
    assert applied is not None and "directory" in applied.changed
    assert applied.directory_file == c.state / "updates" / f"directory-{applied.set_version}.json"
    installed = tu.installed_directory(c.state)
    assert installed is not None and installed.version == 1
    assert installed.name_of("yh-t1") == "仁和街道"
    assert installed.tier("hz", installed.operator_of("c1")) == "higher_level"
    status = tu.status(c.state, c.store, NOW)
    assert status["directory"] == {
        "version": 1,
        "issued_at": NOW,
        "file": applied.directory_file.name,
    }
    # A set that changes something else keeps the directory in force, without a download.
    c.settings(900)
    again = c.update()
    assert again is not None and "directory" not in again.changed
    installed = tu.installed_directory(tu.UpdatePaths(c.state))
    assert installed is not None and installed.version == 1
    # A new directory replaces it.
    c.repo.publish_directory(directory(Agency("yh-t2", "良渚街道", "township", "yh", "")), NOW)
    assert c.update() is not None
    installed = tu.installed_directory(c.state)
    assert installed is not None and installed.version == 2
    assert installed.name_of("yh-t2") == "良渚街道"


def test_a_broken_directory_is_refused_whole_and_the_set_in_force_kept(
    canteen: Canteen,
) -> None:
    c = canteen
    c.repo.publish_directory(directory(), NOW)
    good = c.update()
    assert good is not None
    rows = [a.as_json() for a in directory().agencies.values()]
    # A cycle in the parent links, and a parent that is not an agency.
    cycle = [{**r, "parent": "yh-t1"} if r["code"] == "zj" else r for r in rows]
    for doc in (
        {"version": 99, "agencies": cycle, "canteens": []},
        {"version": 99, "agencies": [*rows, {**rows[-1], "code": "x", "parent": "no"}]},
        {"version": 99, "agencies": "not a list"},
    ):
        publish_raw_directory(c, doc)
        with pytest.raises(tu.UpdateRefused) as refused:
            c.update()
        assert "\n" not in str(refused.value) and DIRECTORY_TARGET in str(refused.value)
        assert tu.status(c.state, c.store, NOW)["set"] == good.set_version
        installed = tu.installed_directory(c.state)
        assert installed is not None and installed.version == 1
    # Not JSON at all.
    with c.repo._locked():
        c.repo._publish(c.now, top={DIRECTORY_TARGET: (b"\xff{", {"version": 100})})
    with pytest.raises(tu.UpdateRefused, match="not JSON"):
        c.update()
    # Nested deeper than the JSON decoder goes: still one line, not a RecursionError.
    with c.repo._locked():
        c.repo._publish(c.now, top={DIRECTORY_TARGET: (b"[" * 200_000, {"version": 101})})
    with pytest.raises(tu.UpdateRefused, match="not JSON"):
        c.update()
    installed = tu.installed_directory(c.state)
    assert installed is not None and installed.version == 1


def test_a_directory_over_the_terminal_cap_is_not_downloaded(canteen: Canteen) -> None:
    c = canteen
    c.repo.publish_directory(directory(), NOW)
    with pytest.raises(tu.UpdateRefused, match="above this terminal's cap"):
        c.update(directory_max_bytes=64)
    assert tu.installed_directory(c.state) is None


def test_a_usb_copy_carries_the_directory(canteen: Canteen) -> None:
    c = canteen
    c.repo.publish_directory(directory(), NOW)
    updater = tu.TerminalUpdater(c.state, "c1", medium=c.repo.paths.root / "repository")
    applied = tu.update_once(updater, c.store, NOW)
    assert applied is not None and "directory" in applied.changed
    installed = tu.installed_directory(c.state)
    assert installed is not None and installed.operator_of("c1") == "yh"


def test_a_damaged_directory_file_takes_the_set_back_at_start(canteen: Canteen) -> None:
    c = canteen
    c.settings(800)
    c.update()
    tu.begin_start(c.state, c.store)
    tu.confirm_started(c.state, c.store)
    c.repo.publish_directory(directory(), NOW)
    applied = c.update()
    assert applied is not None and applied.directory_file is not None
    applied.directory_file.write_text("{}")
    with pytest.raises(tu.UpdateError, match="damaged"):
        tu.installed_directory(c.state)
    note = tu.begin_start(c.state, c.store)
    assert note.rolled_back_from == applied.set_version
    assert note.message is not None and "agency directory" in note.message
    assert tu.installed_directory(c.state) is None


# ---- settings in layers ------------------------------------------------------------------

COUNTY_WIDE = """
[[meals]]
name = "breakfast"
start = "06:30"
end = "08:30"
price_own_fen = 300
price_visitor_fen = 600

[[meals]]
name = "lunch"
start = "11:30"
end = "13:30"
price_own_fen = 800
price_visitor_fen = 1500
price_higher_level_fen = 1200

[[meals]]
name = "dinner"
start = "17:30"
end = "19:00"
price_own_fen = 700
price_visitor_fen = 1400
"""

LUNCH_ONLY = """
[[meals]]
name = "lunch"
price_own_fen = 900
"""

NO_BREAKFAST = """
[[meals]]
name = "breakfast"
off = true
"""


def publish(c: Canteen, text: str, canteen: str | None, name: str) -> cu.Publication:
    path = c.tmp / name
    path.write_text(text)
    return c.repo.publish_settings(path, canteen, c.now)


def meals_in_force(c: Canteen) -> dict[str, tuple[int, int, int]]:
    """The meals a start of the terminal has (the start is confirmed, as a daemon that
    came up confirms it): name -> own, visitor and higher-level price."""
    note = tu.begin_start(c.state, c.store)
    settings = tu.effective_settings(None, note)
    tu.confirm_started(c.state, c.store)
    return {
        m.name: (m.price_own_fen, m.price_visitor_fen, m.price_for("higher_level"))
        for m in settings.meals
    }


def test_a_canteen_file_changes_only_what_it_names(canteen: Canteen) -> None:
    c = canteen
    publish(c, COUNTY_WIDE, None, "all.toml")
    publish(c, LUNCH_ONLY, "c1", "c1.toml")
    applied = c.update()
    assert applied is not None and "settings" in applied.changed
    assert [f.name for f in applied.settings_files] == [
        f"settings-{applied.set_version}-all.toml",
        f"settings-{applied.set_version}-own.toml",
    ]
    assert meals_in_force(c) == {
        "breakfast": (300, 600, 600),
        "lunch": (900, 1500, 1200),  # the canteen's own price, the county's other prices
        "dinner": (700, 1400, 1400),
    }
    layers = applied.detail["settings"]["layers"]
    assert [layer["target"] for layer in layers] == [
        "settings/all.toml",
        "settings/canteen/c1.toml",
    ]
    status = tu.status(c.state, c.store, NOW)
    assert status["settings_files"] == [f.name for f in applied.settings_files]
    # The daemon builds its note from the set's own file: both layers still come.
    note = tu.StartNote(applied.settings_file, applied.set_version)
    assert note.settings_files == applied.settings_files

    # A canteen file that turns breakfast off removes breakfast only.
    publish(c, NO_BREAKFAST, "c1", "c1-off.toml")
    assert c.update() is not None
    assert meals_in_force(c) == {"lunch": (800, 1500, 1200), "dinner": (700, 1400, 1400)}
    # Another canteen's terminal has the county-wide file alone, all three meals.
    other = tu.TerminalUpdater(c.state, "c2", base_url=c.server.url, limits=c.limits)
    assert tu.update_once(other, c.store, NOW) is not None
    assert set(meals_in_force(c)) == {"breakfast", "lunch", "dinner"}


def test_a_new_county_wide_file_reaches_a_canteen_with_its_own(canteen: Canteen) -> None:
    c = canteen
    publish(c, COUNTY_WIDE, None, "all.toml")
    publish(c, LUNCH_ONLY, "c1", "c1.toml")
    c.update()
    publish(c, COUNTY_WIDE.replace("price_own_fen = 700", "price_own_fen = 750"), None, "a2.toml")
    applied = c.update()
    assert applied is not None and "settings" in applied.changed
    assert meals_in_force(c)["dinner"][0] == 750 and meals_in_force(c)["lunch"][0] == 900


def test_county_checks_a_canteen_file_over_the_county_wide_one(canteen: Canteen) -> None:
    c = canteen
    # No county-wide file: a lunch without a window is refused, over the defaults.
    with pytest.raises(cu.SettingsRefused, match="start") as refused:
        publish(c, LUNCH_ONLY, "c1", "c1.toml")
    assert "\n" not in str(refused.value) and "Nothing published" in str(refused.value)
    publish(c, COUNTY_WIDE, None, "all.toml")
    publish(c, LUNCH_ONLY, "c1", "c1.toml")  # accepted now: it names only lunch's price
    # Still refused with one line: a negative price, a window that overlaps.
    for bad in (
        LUNCH_ONLY.replace("900", "-5"),
        '[[meals]]\nname = "lunch"\nstart = "08:00"\n',
    ):
        with pytest.raises(cu.SettingsRefused) as refused:
            publish(c, bad, "c1", "bad.toml")
        assert "\n" not in str(refused.value)
    # A county-wide file that would leave c1's partial lunch without a window is refused.
    without_lunch = COUNTY_WIDE.split('[[meals]]\nname = "lunch"')[0]
    before = c.repo.timestamp().signed.version
    with pytest.raises(cu.SettingsRefused, match="canteen c1's own file"):
        publish(c, without_lunch, None, "all2.toml")
    assert c.repo.timestamp().signed.version == before


def test_a_layered_set_that_stops_the_terminal_goes_back_whole(canteen: Canteen) -> None:
    c = canteen
    publish(c, COUNTY_WIDE, None, "all.toml")
    good = c.update()
    assert good is not None
    tu.begin_start(c.state, c.store)
    tu.confirm_started(c.state, c.store)
    publish(c, LUNCH_ONLY, "c1", "c1.toml")
    bad = c.update()
    assert bad is not None and len(bad.settings_files) == 2
    tu.begin_start(c.state, c.store)  # the start with it never confirms ...
    note = tu.begin_start(c.state, c.store)
    assert note.rolled_back_from == bad.set_version
    assert note.settings_files == good.settings_files
    assert set(meals_in_force(c)) == {"breakfast", "lunch", "dinner"}
    assert meals_in_force(c)["lunch"][0] == 800
    # The same pair of files is not applied again; a changed canteen file is.
    with pytest.raises(tu.UpdateRefused, match="stopped this terminal from starting"):
        c.update()
    publish(c, LUNCH_ONLY.replace("900", "950"), "c1", "c1b.toml")
    assert c.update() is not None and meals_in_force(c)["lunch"][0] == 950


def test_a_missing_layer_file_takes_the_set_back_at_start(canteen: Canteen) -> None:
    c = canteen
    publish(c, COUNTY_WIDE, None, "all.toml")
    c.update()
    tu.begin_start(c.state, c.store)
    tu.confirm_started(c.state, c.store)
    publish(c, LUNCH_ONLY, "c1", "c1.toml")
    applied = c.update()
    assert applied is not None
    applied.settings_files[0].unlink()  # the county-wide layer beneath the canteen's
    note = tu.begin_start(c.state, c.store)
    assert note.rolled_back_from == applied.set_version
    assert note.message is not None and "settings file is missing or damaged" in note.message


# ---- the commands ------------------------------------------------------------------------


def run(add: Any, prog: str, *args: str) -> int:
    p = argparse.ArgumentParser(prog=prog)
    add(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(args)
    return int(a.func(a))


@pytest.mark.slow  # the whole path by command: county IT's publication to a USB apply
def test_publish_directory_command_to_a_terminal_by_usb(
    canteen: Canteen, capsys: pytest.CaptureFixture[str]
) -> None:
    c = canteen
    data = str(c.data)
    bad = c.tmp / "bad.json"
    rows = [a.as_json() for a in directory().agencies.values()]
    bad.write_text(
        json.dumps(
            {
                "agencies": [*rows, {**rows[0], "code": "x1", "level": "village"}],
                "canteens": [{"canteen": "c9", "name": "无主食堂", "operator": "nobody"}],
            }
        )
    )
    assert run(add_county, "canteen-county", "publish", "directory", "--data", data, str(bad)) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "level 'village'" in err[0] and "nothing published" in err[1]
    for text in ("{", "[" * 200_000):
        bad.write_text(text)
        args = ("publish", "directory", "--data", data, str(bad))
        assert run(add_county, "canteen-county", *args) == 2
        assert len(capsys.readouterr().err.splitlines()) == 1
    assert c.repo.target_info(DIRECTORY_TARGET) is None

    good = c.tmp / "directory.json"
    good.write_text(json.dumps(directory().as_json(), ensure_ascii=False))
    assert run(add_county, "canteen-county", "publish", "directory", "--data", data, str(good)) == 0
    assert json.loads(capsys.readouterr().out)["changed_targets"] == 1

    usb = c.tmp / "usb"
    shutil.copytree(c.repo.paths.root / "repository", usb / "repository")
    args = ("--state", str(c.state), "--canteen", "c1")
    assert run(add_terminal, "canteen-terminal", "update", "apply", str(usb), *args) == 0
    applied = json.loads(capsys.readouterr().out)
    assert "directory" in applied["changed"] and applied["directory_file"].endswith(".json")
    assert run(add_terminal, "canteen-terminal", "update", "status", *args[:2]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["directory"]["version"] == 1 and status["directory"]["issued_at"] is not None


def test_tidy_keeps_each_kept_set_whole(tmp_path: Path) -> None:
    from terminal.updates.apply import _tidy, json_bytes

    paths = tu.UpdatePaths(tmp_path)
    paths.updates.mkdir(parents=True)
    names = ["settings-2-all.toml", "settings-2-own.toml", "directory-2.json"]
    names += [f"settings-{n}.toml" for n in (3, 4, 5, 6)] + ["directory-6.json"]
    names += [f"directory-{n}.json" for n in (7, 8, 9)]
    for name in names:
        (paths.updates / name).write_text("x")
    pointer = {
        "set": 9,
        "settings": "settings-2-own.toml",
        "settings_files": ["settings-2-all.toml", "settings-2-own.toml"],
        "directory": "directory-2.json",
    }
    paths.applied.write_bytes(json_bytes(pointer))
    _tidy(paths, keep={"settings-3.toml"})
    left = sorted(p.name for p in paths.updates.iterdir() if p.name != "applied.json")
    assert left == sorted(
        [
            "settings-2-all.toml",  # the set in force, both layers
            "settings-2-own.toml",
            "directory-2.json",
            "settings-3.toml",  # the set before it
            "settings-4.toml",  # the last three of each kind
            "settings-5.toml",
            "settings-6.toml",
            "directory-7.json",
            "directory-8.json",
            "directory-9.json",
        ]
    )
