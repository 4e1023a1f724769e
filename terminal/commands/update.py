"""The technician's update commands for canteen-terminal: apply from a USB copy, status, pin.

This module parses arguments, calls terminal.updates and prints JSON; each
library error becomes one line on standard error with exit status 2. It holds
no verification of its own: a repository copy on a USB stick goes through the
same python-tuf checks against the pinned root as an online refresh. It never
writes the ledger: the daemon records the applied set as a ``config_applied``
entry when it next starts (``begin_start`` then the set in force).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from terminal import config, state, trust, updates
from terminal.commands import cli


def _json_refusal(exc: Exception) -> None:
    """An update error is also a JSON line on standard output, for scripts."""
    if isinstance(exc, updates.UpdateError):
        kind = getattr(exc, "kind", "error")
        print(json.dumps({"ok": False, "kind": kind, "reason": str(exc)}))


_one_line_errors = cli.one_line_errors(updates.UpdateError, also=_json_refusal)


def _state_and_canteen(a: argparse.Namespace) -> tuple[Path, str]:
    settings = config.load(a.config)
    root = state.prepare(a.state if a.state else settings.state_dir).root
    # A provisioned terminal's canteen is the one the county registered it for.
    provisioned = state.identity(root)
    canteen = (
        getattr(a, "canteen", None)
        or (provisioned.canteen_id if provisioned is not None else None)
        or settings.canteen_id
    )
    return root, canteen


def _hold(root: Path, program: str, instead: str) -> state.StateLock:
    """The state directory for this command alone; refused while the daemon runs on it."""
    return state.lock(root, program, instead)


def _print_applied(applied: updates.AppliedSet | None) -> None:
    if applied is None:
        print(json.dumps({"ok": True, "applied": False, "reason": "the set in force is current"}))
        return
    print(
        json.dumps(
            {
                "ok": True,
                "applied": True,
                "set": applied.set_version,
                "changed": list(applied.changed),
                "settings_file": str(applied.settings_file) if applied.settings_file else None,
                "settings_files": [str(f) for f in applied.settings_files],
                "directory_file": str(applied.directory_file) if applied.directory_file else None,
                "bytes": applied.bytes_downloaded,
                "apply_s": round(applied.apply_s, 3),
                "detail": applied.detail,
            },
            ensure_ascii=False,
        )
    )


@_one_line_errors
def cmd_update_apply(a: argparse.Namespace) -> int:
    root, canteen = _state_and_canteen(a)
    held = _hold(
        root,
        "canteen-terminal update apply",
        "let the daemon take the set from the county after its next sync",
    )
    updater = updates.TerminalUpdater(root, canteen, medium=a.dir)
    store = trust.TrustStore(root / "trust.sqlite")
    try:
        _print_applied(updates.update_once(updater, store, int(time.time())))
    finally:
        store.close()
        held.release()
    print("restart the terminal (systemctl restart canteen-terminal) to use it", file=sys.stderr)
    return 0


@_one_line_errors
def cmd_update_fetch(a: argparse.Namespace) -> int:
    root, canteen = _state_and_canteen(a)
    held = _hold(
        root,
        "canteen-terminal update fetch",
        "let the daemon refresh after each sync by itself ('canteen-terminal status' shows it)",
    )
    try:
        return _fetch(a, root, canteen)
    finally:
        held.release()


def _fetch(a: argparse.Namespace, root: Path, canteen: str) -> int:
    if a.server:
        updater = updates.TerminalUpdater(root, canteen, base_url=a.server)
    else:
        try:
            updater = updates.updater_for_county(root)
        except Exception as exc:  # NotProvisioned from terminal.link.provision
            raise updates.UpdateError(str(exc)) from None
    store = trust.TrustStore(root / "trust.sqlite")
    try:
        _print_applied(updates.update_once(updater, store, int(time.time())))
    finally:
        store.close()
    return 0


@_one_line_errors
def cmd_update_status(a: argparse.Namespace) -> int:
    root, _ = _state_and_canteen(a)
    store = trust.TrustStore(root / "trust.sqlite")
    try:
        doc = updates.status(root, store, int(time.time()))
    finally:
        store.close()
    print(json.dumps(doc, ensure_ascii=False, indent=1))
    return 0


@_one_line_errors
def cmd_update_pin_root(a: argparse.Namespace) -> int:
    root, _ = _state_and_canteen(a)
    try:
        data = Path(a.root_json).read_bytes()
    except OSError as exc:
        raise updates.UpdateError(f"{a.root_json}: cannot read: {exc.strerror}") from None
    digest = updates.pin_root(root, data)
    print(json.dumps({"ok": True, "pinned": str(root / "tuf"), "sha256": digest}))
    print("compare the sha256 with the one county IT gives you", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="DIR", help="state directory (default: from settings)")
    cli.add_config(p, "settings file over the embedded defaults")


def add_update_commands(subparsers: Any) -> None:
    """Add 'update apply|fetch|status|pin-root' to canteen-terminal."""
    p = subparsers.add_parser("update", help="signed updates from county IT (TUF)")
    usub = cli.subcommands(p, "update_command", "ACTION")
    p = usub.add_parser(
        "apply",
        help="apply a copy of the county's update repository (USB stick)",
        description="Verify DIR (a copy of the county's updates/repository, or a folder "
        "holding it) against the pinned root exactly as an online update, then apply the "
        "set atomically. Old, mixed, expired or altered copies are refused; nothing changes.",
    )
    p.add_argument("dir", metavar="DIR", help="the repository copy (with metadata/ and targets/)")
    p.add_argument("--canteen", metavar="ID", help="canteen id (default: from settings)")
    _common(p)
    p.set_defaults(func=cmd_update_apply)
    p = usub.add_parser(
        "fetch",
        help="refresh from the county server now (the daemon does this at each sync)",
    )
    p.add_argument("--server", metavar="URL", help="repository URL (default: provisioned)")
    p.add_argument("--canteen", metavar="ID", help="canteen id (default: from settings)")
    _common(p)
    p.set_defaults(func=cmd_update_fetch)
    p = usub.add_parser(
        "status",
        help="the set in force, whether confirmed, its settings and directory, and freshness",
    )
    _common(p)
    p.set_defaults(func=cmd_update_status)
    p = usub.add_parser(
        "pin-root",
        help="pin the county's root metadata (at provisioning, once)",
        description="Pin ROOT.json as the trust anchor of updates. Compare the printed "
        "sha256 with the one 'canteen-county updates init' printed.",
    )
    p.add_argument("root_json", metavar="ROOT.json")
    _common(p)
    p.set_defaults(func=cmd_update_pin_root)
