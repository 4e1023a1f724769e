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


# (the group's adder, optional): in the order of `--help`. An optional group needs libraries
# a core install may lack (requests and APScheduler for the sync, python-tuf for updates,
# OpenCV for scan-image); without them it is left out.
GROUPS: tuple[tuple[Callable[[], AddCommands], bool], ...] = (
    (_group("terminal.commands.verify_token", "add_commands"), False),
    (_group("terminal.commands.ledger", "add_commands"), False),
    (_group("terminal.commands.lists", "add_commands"), False),
    (_group("terminal.commands.config", "add_commands"), False),
    (_group("terminal.commands.service", "add_commands"), False),
    (lambda: add_demo, False),
    (_group("terminal.commands.sync", "add_sync_commands"), True),
    (_group("terminal.commands.update", "add_update_commands"), True),
    (_group("terminal.commands.scan", "add_scan_image"), True),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Canteen one-card terminal: offline QR and card decisions, ledger, tools.",
    )
    sub = cli.subcommands(parser, "command", "COMMAND")
    for adder, optional in GROUPS:
        try:
            add = adder()
        except ImportError:
            if not optional:
                raise
            continue  # its libraries are missing: the core commands still work
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
