"""`canteen-terminal lists install|show`: the trust lists of a state directory, by hand.

This module owns installing issuer keys, revocations and a card roster from
files (each list whole, before signed updates took over) and showing what is
installed. It parses and prints; terminal/trust.py checks and stores. It
refuses to replace lists under a running daemon (the state lock).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from terminal import config, state, trust
from terminal.commands import cli


def cmd_lists_install(a: argparse.Namespace) -> int:
    settings = config.load(a.config)
    root = state.prepare(a.state if a.state else settings.state_dir)
    now_s = a.now if a.now is not None else cli.wall_ms() // 1000
    # Replacing lists under a running daemon would leave its cached keys and lists stale.
    held = state.lock(
        root.root,
        "canteen-terminal lists install",
        "publish the lists as a signed update (canteen-county publish trust|roster), "
        "which the daemon applies itself",
    )
    store = trust.TrustStore(root.trust)
    done: list[trust.ListInfo] = []
    try:
        if a.issuers:
            entries, header = trust.split_list(trust.read_json_file(a.issuers, "trust"), "trust")
            done.append(store.replace_issuers(trust.parse_issuer_keys(entries), header, now_s))
        if a.revocations:
            doc = trust.read_json_file(a.revocations, "revocation")
            entries, header = trust.split_list(doc, "revocation")
            done.append(store.replace_revocations(trust.parse_revocations(entries), header, now_s))
        if a.roster:
            try:
                text = Path(a.roster).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise cli.CommandError(f"{a.roster}: cannot read the roster CSV: {exc}") from None
            header = trust.ListHeader(a.roster_version, a.roster_issued_at, None)
            done.append(store.replace_roster(trust.parse_roster_csv(text), header, now_s))
    finally:
        store.close()
        held.release()
    if not done:
        raise cli.CommandError("nothing to install: give --issuers, --revocations or --roster")
    for info in done:
        print(json.dumps(info.__dict__))
    return 0


def cmd_lists_show(a: argparse.Namespace) -> int:
    settings = config.load(a.config)
    root = state.prepare(a.state if a.state else settings.state_dir)
    store = trust.TrustStore(root.trust)
    try:
        for name in trust.LIST_NAMES:
            info = store.list_info(name)
            print(json.dumps(info.__dict__ if info else {"name": name, "installed": False}))
    finally:
        store.close()
    return 0


def add_commands(sub: Any) -> None:
    """Add `lists install|show` to canteen-terminal."""
    lists = sub.add_parser("lists", help="install or show the trust lists in a state directory")
    lsub = cli.subcommands(lists, "lists_command", "ACTION")
    p = lsub.add_parser(
        "install",
        help="install issuer keys, revocations or a card roster from files (each list whole)",
    )
    p.add_argument("--state", metavar="DIR", help="state directory (default: from settings)")
    p.add_argument("--issuers", metavar="TRUST.json")
    p.add_argument("--revocations", metavar="REVOKED.json")
    p.add_argument("--roster", metavar="ROSTER.csv")
    p.add_argument("--roster-version", type=int, default=0, metavar="N")
    p.add_argument("--roster-issued-at", type=int, metavar="UNIX_SECONDS")
    p.add_argument("--now", type=int, metavar="UNIX_SECONDS")
    cli.add_config(p)
    p.set_defaults(func=cmd_lists_install)
    p = lsub.add_parser("show", help="version, issue time and size of each list")
    p.add_argument("--state", metavar="DIR")
    cli.add_config(p)
    p.set_defaults(func=cmd_lists_show)
