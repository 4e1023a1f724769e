"""What a technician sees from `config check`, `run` and the example settings: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "hw-sim"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "terminal.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


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
