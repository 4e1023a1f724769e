"""``canteen-county alarms confirm|withdraw ID --reason TEXT`` and ``canteen-county
conflicts confirm|withdraw ID --reason TEXT``: the review of docs/alarms.md from the
server's shell.

Each command calls county/review.py, the functions the console's alarms page calls, as
``cli:<login name>`` (the audit log's name for the command's user; county/users_cli.py
writes the audit row once the command succeeded). A withdrawn conflict's revocations
are lifted through the signed update repository when the county publishes one (the
console's path too). Bad input is one line on standard error, exit status 2, and
nothing changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from county import review
from county.command import PROG, CommandError, add_data, add_database, now_ms, open_county


def _by() -> str:
    from county.users_cli import cli_user

    return cli_user()


def cmd_decide(a: argparse.Namespace) -> int:
    """alarms confirm|withdraw, conflicts confirm."""
    db = open_county(a, must_exist=True)
    try:
        with db.write() as conn:
            review.decide(conn, a.what, a.id, a.decision, a.reason, _by(), now_ms())
    finally:
        db.close()
    print(f"{a.what} {a.id} {review.DONE[a.decision]}: {a.reason.strip()}")
    if a.what == review.ALARM and a.decision == review.WITHDRAW:
        print("a reviewed note: the terminal's state and its entries are unchanged")
    return 0


def cmd_conflicts_withdraw(a: argparse.Namespace) -> int:
    from county import updates

    db = open_county(a, must_exist=True)
    try:
        try:
            done = review.withdraw_conflict(
                db, Path(a.data) if a.data else None, a.id, a.reason, _by(), now_ms()
            )
        except updates.UpdatesError as exc:
            raise CommandError(f"nothing withdrawn: {exc}") from None
    finally:
        db.close()
    print(f"conflict {a.id} withdrawn: {a.reason.strip()}")
    if not done.lifted:
        print("its revocations stand on another conflict: nothing lifted")
    elif done.version is None:
        print(
            f"lifted {len(done.lifted)} revocation(s); this county publishes no signed updates: "
            f"install the list from '{PROG} revocations' on the terminals"
        )
    else:
        print(
            f"lifted {done.published_lifted} revocation(s) in signed revocation list version "
            f"{done.version}: terminals accept again after their next sync"
        )
        kept = len(done.lifted) - done.published_lifted
        if kept:
            print(
                f"{kept} stay revoked: county IT revoked them by hand ('{PROG} revoke'), and a "
                "withdrawal never lifts those"
            )
    return 0


def _decision_parser(sub: Any, what: str, decision: str, help_: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(decision, help=help_, description=help_)
    add_data(p)
    add_database(p)
    p.add_argument("id", type=int, metavar="ID", help=f"the {what}'s number")
    p.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        help=f"why, for the record (one line, at most {review.MAX_REASON} characters)",
    )
    p.set_defaults(what=what, decision=decision, func=cmd_decide)
    return p


def add_review_commands(alarms: argparse.ArgumentParser, conflicts_sub: Any) -> None:
    """``alarms confirm|withdraw`` under the ``alarms`` parser, ``conflicts confirm``
    beside ``conflicts withdraw`` (``conflicts_sub``: the conflicts parser's actions)."""
    asub = alarms.add_subparsers(dest="alarms_command", metavar="ACTION")
    _decision_parser(
        asub, review.ALARM, review.CONFIRM, "confirm an alarm after review (a reviewed note)"
    )
    _decision_parser(
        asub,
        review.ALARM,
        review.WITHDRAW,
        "withdraw an alarm after review (a reviewed note: it does not undo what the alarm "
        "reports, e.g. a fork stays a fork)",
    )
    _decision_parser(
        conflicts_sub,
        review.CONFLICT,
        review.CONFIRM,
        "confirm a conflict after review: its revocations stay",
    )
