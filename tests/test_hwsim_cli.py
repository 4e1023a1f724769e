"""hw-sim's command line: every command and action explains itself, and usage errors are short."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hwsim.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every (sub)command: its argv path, its parser and the one-line help its parent gives."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from commands(sub, (*path, name))


ALL = list(commands(build_parser()))


def test_the_command_table_is_the_parser() -> None:
    top = {path[0] for path, _, _ in ALL}
    assert (
        top
        == {c.name for c in COMMANDS}
        == {
            "issuer",
            "phone",
            "camera",
            "card-reader",
            "county",
            "agencies",
            "scenario",
        }
    )
    actions = {path for path, _, _ in ALL if len(path) == 2}
    assert actions == {(c.name, a.name) for c in COMMANDS for a in c.actions}
    assert actions == {
        ("camera", "show"),
        ("camera", "status"),
        ("card-reader", "swipe"),
        ("card-reader", "noise"),
        ("card-reader", "unplug"),
        ("card-reader", "replug"),
        ("card-reader", "status"),
        ("county", "history"),
    }


@pytest.mark.parametrize("path", [p for p, _, _ in ALL], ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    parser_help = {p: h for p, _, h in ALL}[path]
    assert parser_help and len(parser_help) > 20, f"{path}: no one-line help"
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hw-sim {' '.join(path)}")
    for action in {p: s for p, s, _ in ALL}[path]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{path}: {action.option_strings} has no help"


def test_top_level_help_and_usage_errors() -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    run = [sys.executable, "-m", "hwsim.cli"]
    top = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert top.returncode == 0
    for name in ("issuer", "phone", "camera", "card-reader", "docs/technicians.md"):
        assert name in top.stdout
    none = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert none.returncode == 2 and "COMMAND" in none.stderr
    bad = subprocess.run(
        [*run, "camera", "--size", "huge"], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr


@pytest.mark.parametrize("action", ["swipe", "noise", "unplug", "replug", "status"])
def test_a_reader_action_without_a_reader_is_one_line(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--uid", "0a1b2c3d4e"] if action == "swipe" else []
    missing = str(tmp_path / "no-reader.ctl")
    assert main(["card-reader", action, "--control", missing, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hw-sim: error:") and err.count("\n") == 1, err
