"""`canteen-terminal ledger verify|export|stats`: a ledger file, read only.

This module owns the ledger command group: it parses the arguments, calls the
ledger's audit functions and prints their result. It never writes a ledger
and holds no check of its own (terminal/ledger.py does them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from terminal import ledger
from terminal.commands import cli


def cmd_ledger_verify(a: argparse.Namespace) -> int:
    pinned = bytes.fromhex(a.key) if a.key else None
    report = ledger.verify_file(a.file, public_key=pinned)
    if a.json:
        print(json.dumps(report.__dict__, default=str))
    elif report.ok:
        print(f"{a.file}: ok: {report.entries} entries, {report.checkpoints} checkpoints verified")
    else:
        print(f"{a.file}: BAD at entry {report.first_bad_seq}: {report.problem}")
    return 0 if report.ok else 1


def cmd_ledger_export(a: argparse.Namespace) -> int:
    if a.format == "recovery":
        return _export_recovery(a)
    if a.key or a.from_seq is not None:
        raise cli.CommandError("--key and --from go with --format recovery")
    if a.output:
        with open(a.output, "w", encoding="utf-8", newline="") as out:
            ledger.export_file(a.file, a.format, out)
    else:
        ledger.export_file(a.file, a.format, sys.stdout)
    return 0


def _export_recovery(a: argparse.Namespace) -> int:
    """The file county IT takes a dead terminal's entries from (docs/technicians.md)."""
    from terminal.ledger_recovery import export_recovery

    if not a.output:
        raise cli.CommandError("--format recovery needs --output FILE (the file to hand over)")
    tmp = f"{a.output}.part"
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        count, last = export_recovery(a.file, out, a.key, a.from_seq)
    os.replace(tmp, a.output)
    print(f"{a.output}: {count} entries, up to entry {last}, signed by the terminal's key")
    return 0


def cmd_ledger_stats(a: argparse.Namespace) -> int:
    stats = ledger.stats_file(a.file)
    if a.json:
        print(json.dumps(stats, ensure_ascii=False, default=str))
    else:
        for key, value in stats.items():
            print(f"{key}: {value}")
    return 0


def add_commands(sub: Any) -> None:
    """Add `ledger verify|export|stats` to canteen-terminal."""
    led = sub.add_parser("ledger", help="verify, export or summarise a ledger file (read-only)")
    lsub = cli.subcommands(led, "ledger_command", "ACTION")
    p = lsub.add_parser(
        "verify",
        help="check the hash chain, signed checkpoints and SQLite integrity",
        description="Exit 0 when the ledger verifies; 1 naming the first bad entry otherwise.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key", metavar="HEX", help="pin the terminal's checkpoint public key")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_ledger_verify)
    p = lsub.add_parser(
        "export",
        help="write every entry as CSV or JSON lines, or a recovery file for the county",
        description="csv and jsonl are for people and scripts. recovery is the file county IT "
        "takes a dead terminal's entries from ('canteen-county terminal recover'): every entry "
        "with its hashes and the ledger's signed checkpoints, the last entry signed with the "
        "terminal's key (terminal-key.pem beside the ledger, or --key).",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=("csv", "jsonl", "recovery"), default="jsonl")
    p.add_argument("--output", "-o", metavar="OUT", help="write here instead of standard output")
    p.add_argument("--key", metavar="FILE", help="recovery: the terminal's key file")
    p.add_argument(
        "--from",
        dest="from_seq",
        type=int,
        metavar="SEQ",
        help="recovery: start at this entry (default the first)",
    )
    p.set_defaults(func=cmd_ledger_export)
    p = lsub.add_parser("stats", help="entries by kind and reason, amounts, unsynced count")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print as one JSON object")
    p.set_defaults(func=cmd_ledger_stats)
