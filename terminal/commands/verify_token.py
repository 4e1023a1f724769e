"""`canteen-terminal verify-token`: QR token texts checked as the counter would, a JSON line each.

This module owns the verify-token command: which ledger and which trust lists
the texts are checked against (a scratch state directory, a terminal's own
with --state, or a ledger file), and printing each verdict only after its
entry is committed. The checks themselves are the decision core's
(``Checkout.verify_token``: token steps 1 to 7, no meal policy).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from terminal import config, state, trust
from terminal.commands import cli


def _load_trust_files(
    store: trust.TrustStore, trust_file: str, revoked_file: str | None, now_s: int
) -> None:
    entries, header = trust.split_list(trust.read_json_file(trust_file, "trust"), "trust")
    store.replace_issuers(trust.parse_issuer_keys(entries), header, now_s)
    if revoked_file is not None:
        doc = trust.read_json_file(revoked_file, "revocation")
        entries, header = trust.split_list(doc, "revocation")
        store.replace_revocations(trust.parse_revocations(entries), header, now_s)


def _qr_texts(args: Sequence[str]) -> Iterator[str]:
    if args:
        yield from args
        return
    for line in sys.stdin:
        text = line.rstrip("\r\n")
        if text:
            yield text


def cmd_verify_token(a: argparse.Namespace) -> int:
    from terminal.core.checkout import Checkout  # the token stack loads only when it is needed

    settings = config.load(a.config)
    window = a.window if a.window is not None else settings.window_s
    skew = a.skew if a.skew is not None else settings.skew_s
    settings = dataclasses.replace(settings, window_s=window, skew_s=skew)
    fixed_ms = a.now * 1000 if a.now is not None else None
    start_ms = fixed_ms if fixed_ms is not None else cli.wall_ms()

    with tempfile.TemporaryDirectory(prefix="verify-token-") as scratch:
        ledger_path, key_path, home = _token_ledger(a, scratch)
        held = None
        if home is not None:
            # This ledger is a terminal's: its replay memory counts for the daemon too.
            held = state.lock(
                home,
                "canteen-terminal verify-token",
                "leave out --state and --ledger to check codes against a scratch ledger",
            )
            settings = state.with_identity(dataclasses.replace(settings, state_dir=home))
        if a.trust is None:
            # The terminal's own applied lists: what it would decide (read, never replaced).
            if a.state is None:
                raise cli.CommandError("give --trust TRUST.json, or --state DIR of a terminal")
            if a.revoked is not None:
                raise cli.CommandError(
                    "--revoked needs --trust; with --state alone the "
                    "terminal's own revocation list is used"
                )
            lists = Path(a.state) / state.TRUST_FILE
            if not lists.is_file():
                raise cli.CommandError(f"{lists}: no lists installed in this state directory")
            store = trust.TrustStore(lists)
        else:
            store = trust.TrustStore(":memory:")
        book = state.open_ledger(ledger_path, key_path, settings.terminal_id, start_ms)
        try:
            if a.trust is not None:
                _load_trust_files(store, a.trust, a.revoked, start_ms // 1000)
            counter = Checkout(settings, book, store)
            for text in _qr_texts(a.qr):
                wall = fixed_ms if fixed_ms is not None else cli.wall_ms()
                decision = counter.verify_token(text, wall)
                # Printed only now: the entry is committed and fsynced.
                print(json.dumps(decision.as_json(), ensure_ascii=False), flush=True)
        finally:
            store.close()
            book.close()
            if held is not None:
                held.release()
    return 0


def _token_ledger(a: argparse.Namespace, scratch: str) -> tuple[Path, Path, Path | None]:
    """(ledger file, key file, the state directory it belongs to or None) for verify-token.

    A terminal's ledger is signed with that terminal's pinned key, never a second one:
    with --state DIR, DIR's key signs whatever ledger is written (DIR/ledger.sqlite,
    or FILE of --ledger), and a --ledger FILE inside a state directory belongs to that
    directory. Only a FILE outside any state directory is a stand-alone ledger with its
    own key beside it (FILE.key.pem), for trying codes out; the county accepts none of
    those (docs/ledger.md, "Identity").
    """
    if a.state is not None:
        root = state.prepare(a.state)
        return (Path(a.ledger) if a.ledger else root.ledger), root.key, root.root
    if a.ledger is not None:
        ledger_path = Path(a.ledger)
        home = state.StatePaths(ledger_path.parent)
        if home.key.exists() or home.identity.exists():
            return ledger_path, home.key, home.root
        return ledger_path, ledger_path.with_name(ledger_path.name + ".key.pem"), None
    root = state.prepare(scratch)
    return root.ledger, root.key, None


def add_commands(sub: Any) -> None:
    """Add `verify-token` to canteen-terminal."""
    p = sub.add_parser(
        "verify-token",
        help="check QR token texts (token checks only, no meal policy); one JSON line each",
        description="Check QR token v1 texts against a trust list and print one JSON line per "
        "text: verdict, reason, iss, sub, cti, ctr. Texts come from the arguments, or one per "
        "line from standard input.",
    )
    p.add_argument(
        "--trust",
        metavar="TRUST.json",
        help="issuer trust list (default with --state: the terminal's own applied lists)",
    )
    p.add_argument("--revoked", metavar="REVOKED.json", help="revocation list")
    p.add_argument("--now", type=int, metavar="UNIX_SECONDS", help="time to check at")
    p.add_argument("--window", type=int, metavar="S", help="freshness window (default 60)")
    p.add_argument("--skew", type=int, metavar="S", help="allowed clock skew (default 30)")
    p.add_argument("--state", metavar="DIR", help="keep the replay memory in this directory")
    p.add_argument("--ledger", metavar="FILE", help="record each verdict in this ledger")
    cli.add_config(p)
    p.add_argument("qr", nargs="*", metavar="QR", help="QR texts (default: standard input)")
    p.set_defaults(func=cmd_verify_token)
