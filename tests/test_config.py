"""Settings: embedded defaults, overrides, and a clear error for every broken file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from terminal import config
from terminal.commands.main import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "terminal.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load_and_are_ordered() -> None:
    s = config.load()
    assert [m.name for m in s.meals] == ["breakfast", "lunch", "dinner"]
    assert s.window_s == 60 and s.skew_s == 30
    assert s.caps.card_meals_per_day < s.caps.qr_meals_per_day
    assert s.lists.revocation_soft_s < s.lists.revocation_hard_s
    assert s.clock_earliest_s == int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())


def test_override_and_relative_state_dir(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[terminal]
id = "t-42"
state_dir = "var"
[canteen]
units = ["a", "b"]
[[meals]]
name = "lunch"
start = "11:00"
end = "13:00"
price_own_fen = 900
price_visitor_fen = 1200
""",
    )
    s = config.load(path)
    assert s.terminal_id == "t-42"
    assert s.state_dir == tmp_path / "var"
    assert s.units == frozenset({"a", "b"})
    assert [m.name for m in s.meals] == ["lunch"]  # [[meals]] replaces the defaults whole
    assert s.canteen_name == config.load().canteen_name  # untouched options keep defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[caps]\nqr_meals_per_dya = 3\n", "[caps] qr_meals_per_dya: unknown option"),
        ("[cap]\nx = 1\n", "[cap]: unknown section"),
        ("[caps]\nqr_meals_per_day = true\n", "[caps] qr_meals_per_day: must be a whole number"),
        ("[caps]\nqr_meals_per_day = 0\n", "[caps] qr_meals_per_day: must be at least 1"),
        ("[caps]\nunsynced_fen = -5\n", "[caps] unsynced_fen: must be at least 0"),
        ('[tokens]\nwindow_s = "60"\n', "[tokens] window_s: must be a whole number"),
        ('[terminal]\ntimezone = "Mars/Base"\n', "unknown time zone"),
        ('[terminal]\nlanguage = "fr"\n', "must be one of zh, en"),
        ("[lists]\nrevocation_soft_s = 900000\n", "must not be above revocation_hard_s"),
        ('[clock]\nearliest = "yesterday"\n', "[clock] earliest: must be a date"),
        ("this is = = not toml", "not valid TOML"),
        ("meals = []\n", "at least one meal window"),
    ],
)
def test_broken_settings_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "terminal.toml") in str(err.value)


MEAL = """
[[meals]]
name = "{name}"
start = "{start}"
end = "{end}"
price_own_fen = {own}
price_visitor_fen = 100
"""


@pytest.mark.parametrize(
    ("meals", "message"),
    [
        ([("a", "11:00", "13:00", 1), ("b", "12:30", "14:00", 1)], "a (11:00-13:00) overlaps b"),
        ([("a", "13:00", "11:00", 1)], "must be before end"),
        ([("a", "23:00", "23:00", 1)], "must be before end"),
        ([("a", "25:00", "26:00", 1)], "HH:MM"),
        ([("a", "11:00", "12:00", -1)], "price_own_fen: must be at least 0"),
        ([("a", "11:00", "12:00", 1), ("a", "13:00", "14:00", 1)], "used twice"),
    ],
)
def test_bad_meal_windows(
    tmp_path: Path, meals: list[tuple[str, str, str, int]], message: str
) -> None:
    text = "".join(MEAL.format(name=n, start=s, end=e, own=o) for n, s, e, o in meals)
    with pytest.raises(config.ConfigError, match="meals") as err:
        config.load(write(tmp_path, text))
    assert message in str(err.value)


def test_unknown_option_inside_a_meal(tmp_path: Path) -> None:
    text = MEAL.format(name="a", start="11:00", end="12:00", own=1) + "colour = 'red'\n"
    with pytest.raises(config.ConfigError, match=r"\[meals #1\] colour: unknown option"):
        config.load(write(tmp_path, text))


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read the settings file"):
        config.load(tmp_path / "absent.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(config.ConfigError, match="not UTF-8"):
        config.load(bad)


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, '[terminal]\nid = "t-1"\n')
    assert main(["config", "check", str(good)]) == 0
    assert "ok: terminal t-1" in capsys.readouterr().out
    bad = write(tmp_path, "[caps]\nbogus = 1\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("canteen-terminal: error:") and "bogus" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[display]\nstaff_pim = "1234"\n', "[display] staff_pim: unknown option"),
        ("[sync]\ninterval = 5\n", "[sync] interval: unknown option"),
        ('[camera]\ndecoder = "magic"\n', "[camera] decoder: must be one of"),
        ('[reader]\nkind = "usb"\n', "[reader] kind: must be one of"),
        ("[daemon]\nmin_free_mb = 0\n", "[daemon] min_free_mb: must be at least 1"),
        ('[camera]\nwidth = "wide"\n', "[camera] width: must be a whole number"),
    ],
)
def test_config_check_covers_every_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    assert main(["config", "check", str(write(tmp_path, text))]) == 2
    assert message in capsys.readouterr().err


def test_the_example_settings_file_checks(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).parent.parent / "config" / "terminal.example.toml"
    assert main(["config", "check", str(example)]) == 0
    assert "terminal CANTEEN-1" in capsys.readouterr().out
    # It lists every table the defaults have, so an installer sees every option.
    import tomllib

    shown = tomllib.loads(example.read_text(encoding="utf-8"))
    defaults = tomllib.loads(config.default_text())
    assert set(shown) == set(defaults)
    for table, options in defaults.items():
        if isinstance(options, dict):
            assert set(shown[table]) == set(options), table


def test_a_published_file_lies_over_the_local_one(tmp_path: Path) -> None:
    local = write(tmp_path, '[terminal]\nid = "t-7"\nstate_dir = "var"\n')
    doc = config.read(local).over("[tokens]\nwindow_s = 90\n", "published.toml (update set 3)")
    s = config.build(doc)
    assert (s.terminal_id, s.window_s, s.state_dir) == ("t-7", 90, tmp_path / "var")
    assert s.source == f"{local} + published.toml (update set 3)"
    # A problem in the published file names it, not the local one.
    with pytest.raises(config.ConfigError, match=r"^published\.toml \(update set 3\): \[tokns\]"):
        config.read(local).over("[tokns]\nwindow_s = 90\n", "published.toml (update set 3)")
    assert config.load(local) == config.build(config.read(local))


def test_each_part_reads_its_table_from_the_one_loaded_settings(tmp_path: Path) -> None:
    from terminal.display import settings as display
    from terminal.service import settings as sections

    s = config.load(write(tmp_path, '[terminal]\nlanguage = "en"\n[sync]\ninterval_s = 60\n'))
    assert config.sync_settings(s).interval_s == 60
    assert display.from_settings(s).language == "en"
    assert sections.daemon_settings(s).queue_size >= 1
    sections.check_settings(s)


def test_no_private_helper_of_config_is_used_outside_it() -> None:
    root = Path(__file__).parent.parent
    users = []
    for folder in ("terminal", "protocol", "county", "hw-sim/hwsim", "bench"):
        for path in (root / folder).rglob("*.py"):
            if path == root / "terminal" / "config.py":
                continue
            text = path.read_text(encoding="utf-8")
            if "config._" in text or "from terminal.config import _" in text:
                users.append(str(path.relative_to(root)))
    assert users == []
