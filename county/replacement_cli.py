"""canteen-county terminal retire|replace|recover|retired: replacing a dead terminal.

This module only parses arguments, calls county/replacement.py and prints the result;
the steps a technician follows are in docs/technicians.md ("Replacing a dead
terminal"). Every refusal is one line on standard error with exit status 2, and
changes nothing (a fork found by a recovery keeps its alarm: that is what it is for).
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import Any

from county import ca
from county.command import (
    PROG,
    CommandError,
    add_data,
    add_database,
    now_ms,
    open_county,
    print_json,
)
from county.localtime import LocalTimeError, add_timezone_option
from county.replacement import MAX_RECOVERY_BYTES


def command_user() -> str:
    """Who the audit log names for a county command: the system user running it."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def cmd_terminal_retire(a: argparse.Namespace) -> int:
    from county.replacement import retire

    db = open_county(a)
    try:
        done = retire(db, a.terminal_id, a.reason, user=command_user(), now_ms=now_ms())
    finally:
        db.close()
    print(
        f"terminal {done.terminal_id} at canteen {done.canteen} is retired: {done.reason}. "
        "Its certificate is refused from now on."
    )
    print(f"  a successor for the canteen: {PROG} terminal replace {done.terminal_id} --data DIR")
    return 0


def cmd_terminal_replace(a: argparse.Namespace) -> int:
    from county.app import new_provisioning_code
    from county.replacement import replace_terminal
    from county.storekit import Limits

    data = Path(a.data)
    ca.load_ca_cert(ca.CAPaths(data))  # a code without a CA to pin is useless
    ttl = Limits().code_ttl_ms
    db = open_county(a)
    try:
        done = replace_terminal(
            db, a.old, a.new, a.reason, user=command_user(), now_ms=now_ms(), code_ttl_ms=ttl
        )
    finally:
        db.close()
    if done.retired_now:
        print(f"terminal {done.old.terminal_id} is retired: {done.old.reason}.")
    print(
        f"terminal {done.new_id} at canteen {done.canteen} is registered in place of "
        f"{done.old.terminal_id}."
    )
    print(f'Set [terminal] id = "{done.new_id}" in its settings, then on the terminal run:')
    print(
        "  canteen-terminal provision --state DIR --server URL --code CODE  "
        f"(valid {ttl // 86_400_000} days)"
    )
    print(new_provisioning_code(data, done.secret))
    return 0


def cmd_terminal_recover(a: argparse.Namespace) -> int:
    from county.published import Published
    from county.replacement import recover
    from county.storekit import Limits

    file = Path(a.file)
    if not file.is_file():
        raise CommandError(f"{a.file}: no such file")
    db = open_county(a)
    try:
        done = recover(
            db,
            a.terminal_id,
            file,
            limits=Limits(),
            lists=Published(Path(a.data)),
            user=command_user(),
            now_ms=now_ms(),
        )
    finally:
        db.close()
    print(
        f"terminal {done.terminal_id}: {done.new} new entries taken, {done.known} already held; "
        f"head entry {done.head_seq} (hash {done.head_hash[:16]})"
    )
    return 0


def cmd_terminal_retired(a: argparse.Namespace) -> int:
    from county.localtime import county_zone, local_text
    from county.replacement import history

    db = open_county(a)
    try:
        with db.read() as conn:
            rows = history(conn)
    finally:
        db.close()
    if a.json:
        print_json(rows)
        return 0
    try:
        zone = county_zone(a.timezone)
    except LocalTimeError as exc:
        raise CommandError(str(exc)) from None
    for r in rows:
        successor = f", replaced by {r['replaced_by']}" if r["replaced_by"] else ""
        print(
            f"{r['terminal']} at {r['canteen']}: retired {local_text(r['retired_ms'], zone)}"
            f"{successor}: {r['reason']}"
        )
    if not rows:
        print("no retired terminals")
    return 0


def add_replacement_commands(tsub: Any) -> None:
    """Add retire, replace, recover and retired under `canteen-county terminal`."""
    p = tsub.add_parser(
        "retire",
        help="take a terminal id out of service: its certificate is refused, it is no longer "
        "silent",
        description="Retire a terminal id for good (a dead, lost or stolen device): its client "
        "certificate is refused from now on, it no longer counts as silent, and the id is never "
        "registered again. Its entries stay, and its SD card's ledger can still be recovered.",
    )
    add_data(p)
    add_database(p)
    p.add_argument("terminal_id", metavar="ID", help="the terminal to retire")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, for the record")
    p.set_defaults(func=cmd_terminal_retire)

    p = tsub.add_parser(
        "replace",
        help="register a new terminal at a dead one's canteen and print its provisioning code",
        description="Retire OLD (if it is not yet) and register a new terminal id at OLD's "
        "canteen; print its one-time provisioning code (last line), as 'terminal add' does. "
        "The new device has a new ledger key, so it needs a new id.",
    )
    add_data(p)
    add_database(p)
    p.add_argument("old", metavar="OLD", help="the terminal being replaced")
    p.add_argument("--new", metavar="ID", help="the new terminal's id (default CANTEEN-N)")
    p.add_argument(
        "--reason", metavar="TEXT", help="why OLD is retired, if it is not yet (default replaced)"
    )
    p.set_defaults(func=cmd_terminal_replace)

    p = tsub.add_parser(
        "recover",
        help="take a dead terminal's entries from its recovery file, verified, exactly once",
        description="Verify FILE ('canteen-terminal ledger export --format recovery' on the "
        "old state directory) against the ledger key pinned for ID, then take its entries as "
        "a sync would: those held already are skipped, new ones appended, a different one is a "
        "fork alarm. A file that does not verify changes nothing. At most "
        f"{MAX_RECOVERY_BYTES // 2**20} MiB (export larger ledgers in parts with --from).",
    )
    add_data(p)
    add_database(p)
    p.add_argument("terminal_id", metavar="ID", help="the terminal whose ledger it is")
    p.add_argument("file", metavar="FILE", help="the recovery file")
    p.set_defaults(func=cmd_terminal_recover)

    p = tsub.add_parser("retired", help="retired terminal ids, why, and their successors")
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--json", action="store_true", help="one JSON document")
    add_timezone_option(p)
    p.set_defaults(func=cmd_terminal_retired)
