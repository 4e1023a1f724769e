"""The canteen-terminal command: the table of command groups, and its entry point.

This module owns only the wiring: which command groups make up
canteen-terminal, in which order they appear in ``--help``, and which of them
are optional (a group whose libraries are not installed is left out and the
others still work). Each group lives in its own module beside this one; the
shared plumbing (``--config``, one-line errors, exit 2) is terminal/commands/cli.py.
Nothing here holds logic that the daemon would need too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from terminal import state
from terminal.commands import cli
from terminal.commands.cli import PROG, CommandError  # noqa: F401  (the names tests and tools use)


def cmd_demo(a: argparse.Namespace) -> int:
    from terminal.commands.demo import run_demo

    if a.state is None:
        return run_demo(a.state, a.config)
    held = state.lock(
        a.state, "canteen-terminal demo", "leave out --state: the demo runs in a temporary one"
    )
    try:
        return run_demo(a.state, a.config)
    finally:
        held.release()


def add_demo(sub: Any) -> None:
    """Add `demo` (terminal/commands/demo.py) to canteen-terminal."""
    p = sub.add_parser(
        "demo",
        help="run the decision core on a small built-in canteen and print every decision",
    )
    p.add_argument("--state", metavar="DIR", help="keep the demo's state here (default: temp)")
    cli.add_config(p)
    p.set_defaults(func=cmd_demo)


AddCommands = Callable[[Any], None]


def _group(module: str, name: str) -> Callable[[], AddCommands]:
    """The function that adds a group's commands, imported only when the parser is built."""
    return lambda: cast(AddCommands, getattr(importlib.import_module(module), name))


# (the group's adder, optional, the commands it adds): in the order of `--help`. An optional
# group needs libraries a core install may lack (requests and APScheduler for the sync,
# python-tuf for updates, OpenCV for scan-image); without them it is left out. The commands
# each group adds are named here so that a run of one command imports its group alone: the
# sync, update and scan modules bring requests, APScheduler, python-tuf and OpenCV, about
# 0.6 s of CPU at every start that `ledger verify` or `verify-token` never uses
# (tests/test_cli.py checks the names against what each group adds).
GROUPS: tuple[tuple[Callable[[], AddCommands], bool, tuple[str, ...]], ...] = (
    (_group("terminal.commands.verify_token", "add_commands"), False, ("verify-token",)),
    (_group("terminal.commands.ledger", "add_commands"), False, ("ledger",)),
    (_group("terminal.commands.lists", "add_commands"), False, ("lists",)),
    (_group("terminal.commands.config", "add_commands"), False, ("config",)),
    (_group("terminal.commands.service", "add_commands"), False, ("run", "status", "selftest")),
    (lambda: add_demo, False, ("demo",)),
    (_group("terminal.commands.sync", "add_sync_commands"), True, ("provision", "sync")),
    (_group("terminal.commands.update", "add_update_commands"), True, ("update",)),
    (_group("terminal.commands.scan", "add_scan_image"), True, ("scan-image",)),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, only the group that adds that command (the same
    parser for that command's arguments, its help and its errors)."""
    return _build(command)[0]


def _build(command: str | None) -> tuple[argparse.ArgumentParser, int]:
    """The parser of every group, or of ``command``'s alone, and how many groups it has."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Canteen one-card terminal: offline QR and card decisions, ledger, tools.",
    )
    sub = cli.subcommands(parser, "command", "COMMAND")
    added = 0
    for adder, optional, names in GROUPS:
        if command is not None and command not in names:
            continue
        try:
            add = adder()
        except ImportError:
            if not optional:
                raise
            continue  # its libraries are missing: the core commands still work
        add(sub)
        added += 1
    return parser, added


def _parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: its command's group alone when the first word names one;
    otherwise (no command, --help, a misspelt command, a group whose libraries are missing)
    the whole table, so the usage and the list of choices are the same as ever."""
    command = argv[0] if argv else None
    if command is not None and any(command in names for _, _, names in GROUPS):
        parser, added = _build(command)
        if added:
            return parser
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return cli.run(_parser_for(words), words)


if __name__ == "__main__":
    sys.exit(main())
