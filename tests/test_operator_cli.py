"""What a technician sees from `config check`, `run` and the example settings: real processes."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from conftest import run_terminal as run

ROOT = Path(__file__).parent.parent


def test_a_settings_file_nested_5000_deep_is_one_line_and_exit_2(tmp_path: Path) -> None:
    file = tmp_path / "terminal.toml"
    file.write_text("[canteen]\nunits = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    for args in (("config", "check", str(file)), ("run", "--config", str(file))):
        result = run(*args)
        assert result.returncode == 2, result.stderr[-500:]
        assert result.stderr.count("\n") == 1, result.stderr[-500:]
        assert "nested too deep" in result.stderr and str(file) in result.stderr
        assert "Traceback" not in result.stderr


def _comments_above(lines: list[str], index: int) -> str:
    """The comment lines right above line ``index``."""
    block = []
    for line in reversed(lines[:index]):
        if not line.startswith("#"):
            break
        block.append(line)
    return " ".join(reversed(block))


def test_the_example_settings_show_the_embedded_defaults() -> None:
    defaults = tomllib.loads((ROOT / "terminal" / "defaults.toml").read_text(encoding="utf-8"))
    text = (ROOT / "config" / "terminal.example.toml").read_text(encoding="utf-8")
    example = tomllib.loads(text)
    lines = text.splitlines()
    assert example.keys() == defaults.keys()
    for table, options in defaults.items():
        if not isinstance(options, dict):  # [[meals]]: the embedded windows, as they are
            assert example[table] == options, table
            continue
        assert example[table].keys() == options.keys(), table
        section = lines.index(f"[{table}]")
        for option, default in options.items():
            value = example[table][option]
            if value == default:
                continue
            # A value that differs must say so, and say the default.
            at = next(
                i for i in range(section + 1, len(lines)) if lines[i].startswith(f"{option} =")
            )
            said = _comments_above(lines, at)
            shown = json.dumps(default, ensure_ascii=False)
            assert f"Not the default ({shown}" in said, f"[{table}] {option}: {said!r}"
    # The header's promise: only the two options an installed terminal must set differ.
    assert (
        sum(
            1
            for table, options in defaults.items()
            if isinstance(options, dict)
            for option in options
            if example[table][option] != options[option]
        )
        == 2
    )


def test_config_check_says_what_run_will_find(tmp_path: Path) -> None:
    pty_master, pty_slave = os.openpty()
    reader = os.ttyname(pty_slave)
    try:
        file = tmp_path / "terminal.toml"
        file.write_text(
            '[terminal]\nstate_dir = "new/state"\n[daemon]\ncamera = true\nreader = true\n'
            '[camera]\nsource = "/dev/no-such-camera"\n'
            f'[reader]\nport = "{reader}"\n',
            encoding="utf-8",
        )
        ok = run("config", "check", str(file))
        assert ok.returncode == 0, ok.stderr
        lines = ok.stdout.splitlines()
        assert f"state directory {tmp_path / 'new' / 'state'}: will be created" in lines[1]
        assert lines[2].startswith("  camera /dev/no-such-camera: missing now; `run` starts")
        assert "opens it when it appears" in lines[2]
        assert lines[3] == f"  card reader {reader}: present"
        assert not (tmp_path / "new").exists()  # checking creates nothing

        (tmp_path / "state").mkdir()
        file.write_text(
            file.read_text(encoding="utf-8").replace("new/state", "state"), encoding="utf-8"
        )
        assert "exists, writable" in run("config", "check", str(file)).stdout

        (tmp_path / "afile").write_text("", encoding="utf-8")
        file.write_text(
            file.read_text(encoding="utf-8").replace('"state"', '"afile/state"'),
            encoding="utf-8",
        )
        bad = run("config", "check", str(file))
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.count("\n") == 1
        assert "state_dir" in bad.stderr and "cannot be created" in bad.stderr
        assert "is not a directory" in bad.stderr
        # `run` with the same file stops the same way (one line, exit 2), before any device.
        ran = run("run", "--config", str(file))
        assert ran.returncode == 2 and "cannot create the state directory" in ran.stderr
        assert "Traceback" not in ran.stderr
    finally:
        os.close(pty_master)
        os.close(pty_slave)
