"""The plumbing every canteen-terminal command shares: options, errors, exit status.

This module owns what would otherwise be repeated in each command module: the
program name, the ``--config`` option, the wall clock in ms, the usage error
a command raises itself (``CommandError``), and the rule that a library error
becomes one line on standard error (``canteen-terminal: error: ...``) with exit
status 2. It holds no command and no logic a daemon would need.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from terminal import config, ledger, state, trust

PROG = "canteen-terminal"

Command = Callable[[argparse.Namespace], int]
# The errors any command may meet: each is a sentence that says what to do.
LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    config.ConfigError,
    trust.TrustError,
    ledger.LedgerError,
    state.StateError,
)


class CommandError(Exception):
    """A usage problem the command found itself (a missing file, a bad combination)."""


HANDLED: tuple[type[Exception], ...] = (*LIBRARY_ERRORS, CommandError)


def wall_ms() -> int:
    """The wall clock in Unix ms (the trusted time is terminal/core/clock.py's)."""
    return time.time_ns() // 1_000_000


def add_config(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=help or "settings file (TOML) over the embedded defaults; default: the defaults alone",
    )


def error(text: object, err: TextIO | None = None) -> int:
    """One line on standard error; the exit status of a failed command."""
    print(f"{PROG}: error: {text}", file=err if err is not None else sys.stderr)
    return 2


def one_line_errors(
    *errors: type[Exception], also: Callable[[Exception], None] | None = None
) -> Callable[[Command], Command]:
    """Wrap a command: ``errors`` (and the library's) become one line and exit 2.

    ``also`` then runs with the error (a command that prints JSON says so there too).
    """
    caught: tuple[type[Exception], ...] = (*errors, *LIBRARY_ERRORS, CommandError)

    def wrap(fn: Command) -> Command:
        @functools.wraps(fn)
        def run(a: argparse.Namespace) -> int:
            try:
                return fn(a)
            except caught as exc:
                status = error(exc)
                if also is not None:
                    also(exc)
                return status

        return run

    return wrap


def subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    """The subparsers of ``parser``: one of them is required."""
    return parser.add_subparsers(dest=dest, required=True, metavar=metavar)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command, turn a library error into one line."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except HANDLED as exc:
        return error(exc)
    except BrokenPipeError:
        return 0


def standalone(add: Callable[[Any], None], argv: Sequence[str] | None = None) -> int:
    """Run one command group alone (``python -m terminal.commands.sync ...``)."""
    parser = argparse.ArgumentParser(prog=PROG)
    add(subcommands(parser, "command", "COMMAND"))
    return run(parser, argv)
