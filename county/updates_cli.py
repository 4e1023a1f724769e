"""County IT's update commands for canteen-county: keys, publishing, revoking, rotating.

This module only parses arguments, calls county.updates and prints the result
(JSON for scripts, with a line for people on standard error where it helps).
Each command turns the library's errors into one line on standard error that
says what happened and what to do, with exit status 2, so it works the same
whether or not the main command knows these errors. It holds no repository
logic and never touches keys itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from county import updates
from county.command import (
    PROG,
    add_data,
    add_database,
    given_database,
    now_s,
    one_line_errors,
    print_json,
)
from county.files import read_list_file
from protocol.agencies import DirectoryError, parse_directory
from protocol.lists import TrustError, split_list
from terminal import config

KINDS = {
    "credential": ("ISS", "CTI_HEX"),
    "cadre": ("ISS", "SUB"),
    "card": ("UID_HEX",),
    "holder_key": ("PUBLIC_KEY_HEX",),
    "issuer_key": ("PUBLIC_KEY_HEX",),
}

# Each command turns these into one line by itself (see the module's docstring).
_one_line_errors = one_line_errors(updates.UpdatesError, TrustError, config.ConfigError)


def _default_root_keys(data: str) -> Path:
    return Path(data.rstrip("/") + "-" + updates.ROOT_KEYS_DIR)


@_one_line_errors
def cmd_init(a: argparse.Namespace) -> int:
    root_keys = Path(a.root_keys) if a.root_keys else _default_root_keys(a.data)
    print_json(updates.init_repository(a.data, root_keys, now_s()))
    print(
        f"WARNING: {root_keys} holds the 3 root keys (2 sign). Copy them to offline media, "
        "keep the copies apart, and delete them from this server; 'rotate' needs two of "
        "them back (--root-keys). Give terminals root.json (root_sha256 above) at provisioning.",
        file=sys.stderr,
    )
    return 0


@_one_line_errors
def cmd_renew_root(a: argparse.Namespace) -> int:
    root_keys = Path(a.root_keys) if a.root_keys else _default_root_keys(a.data)
    with updates.CountyRepository(a.data) as repo:
        print_json(repo.renew_root(now_s(), root_keys))
    return 0


@_one_line_errors
def cmd_status(a: argparse.Namespace) -> int:
    with updates.CountyRepository(a.data) as repo:
        print_json(repo.status())
    return 0


@_one_line_errors
def cmd_publish_settings(a: argparse.Namespace) -> int:
    with updates.CountyRepository(a.data) as repo:
        pub = repo.publish_settings(a.file, None if a.all else a.canteen, now_s())
    print_json(pub.summary())
    return 0


@_one_line_errors
def cmd_publish_trust(a: argparse.Namespace) -> int:
    with updates.CountyRepository(a.data, given_database(a)) as repo:
        print_json(repo.publish_trust(a.file, now_s()).summary())
    return 0


@_one_line_errors
def cmd_publish_roster(a: argparse.Namespace) -> int:
    with updates.CountyRepository(a.data) as repo:
        print_json(repo.publish_roster(a.file, now_s()).summary())
    return 0


@_one_line_errors
def cmd_publish_directory(a: argparse.Namespace) -> int:
    try:
        doc = json.loads(Path(a.file).read_bytes())
    except OSError as exc:
        raise updates.UpdatesError(f"{a.file}: cannot read: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the decoder
        raise updates.UpdatesError(f"{a.file}: not JSON: {exc}; nothing published") from None
    try:
        directory = parse_directory(doc, a.file)
    except DirectoryError as exc:
        # One line per problem, as 'agencies import' reports a CSV's bad rows.
        for line in exc.lines:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        print(f"{PROG}: error: {a.file}: nothing published", file=sys.stderr)
        return 2
    with updates.CountyRepository(a.data) as repo:
        print_json(repo.publish_directory(directory, now_s()).summary())
    return 0


def _revocation_entries(a: argparse.Namespace) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    if a.kind == "file":
        if len(a.values) != 1:
            raise updates.UpdatesError("revoke file takes one JSON file (token.md §5 entries)")
        listed, _ = split_list(read_list_file(a.values[0], "revocation"), "revocation")
        return list(listed)  # each entry is checked by revoke before anything is signed
    names = KINDS[a.kind]
    if len(a.values) != len(names):
        raise updates.UpdatesError(
            f"revoke {a.kind} takes {' '.join(names)}; got {len(a.values)} value(s)"
        )
    v = a.values
    if a.kind == "credential":
        entries.append({"kind": "credential", "iss": v[0], "cti": v[1]})
    elif a.kind == "cadre":
        entries.append({"kind": "cadre", "iss": v[0], "sub": v[1]})
    elif a.kind == "card":
        entries.append({"kind": "card", "uid": v[0]})
    else:
        entries.append({"kind": a.kind, "public_key": v[0]})
    return entries


@_one_line_errors
def cmd_revoke(a: argparse.Namespace) -> int:
    if a.kind == "conflicts":
        pub = updates.publish_conflict_revocations(a.data, now_s(), given_database(a))
    else:
        entries = _revocation_entries(a)
        with updates.CountyRepository(a.data) as repo:
            pub = repo.revoke(entries, now_s())
    print_json(pub.summary())
    return 0


@_one_line_errors
def cmd_rotate(a: argparse.Namespace) -> int:
    root_keys = Path(a.root_keys) if a.root_keys else _default_root_keys(a.data)
    with updates.CountyRepository(a.data) as repo:
        print_json(repo.rotate(a.role, now_s(), root_keys))
    return 0


@_one_line_errors
def cmd_timestamp_refresh(a: argparse.Namespace) -> int:
    with updates.CountyRepository(a.data) as repo:
        renewed = repo.refresh(now_s(), force=a.force)
        ts = repo.timestamp()
    print_json(
        {"renewed": renewed, "timestamp": ts.signed.version, "expires": str(ts.signed.expires)}
    )
    return 0


@_one_line_errors
def cmd_applied(a: argparse.Namespace) -> int:
    from county import fleet
    from county.command import open_county

    updates.CountyRepository(a.data).close()  # a county without a repository: one line
    db = open_county(a)
    try:
        with db.read() as conn:
            report = fleet.applied_report(conn, Path(a.data))
    finally:
        db.close()
    if a.text:
        # Current means the content the terminal runs is what the county publishes now
        # (docs/fleet.md), whatever the set numbers: a rotate re-signs the same content.
        current = report["county_set"]
        for row in report["terminals"]:
            if row["state"] == "current":
                standing = "current"
            elif row["state"] == "behind":
                standing = f"behind on {', '.join(row['differs'])} (county is at {current})"
            else:
                standing = f"unknown (county is at {current})"
            print(
                f"{row['terminal']}: set {row['set']}, {standing}, "
                f"applied at {row['applied_at_ms']}"
            )
    else:
        print_json(report)
    return 0


def _root_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root-keys",
        metavar="DIR",
        help="the offline root keys (default: DIR-updates-root-keys-OFFLINE beside --data)",
    )


def add_update_commands(subparsers: Any) -> None:
    """Add updates, publish, revoke, rotate, timestamp and applied to canteen-county."""
    p = subparsers.add_parser("updates", help="the signed update repository (TUF)")
    usub = p.add_subparsers(dest="updates_command", required=True, metavar="ACTION")
    p = usub.add_parser(
        "init",
        help="make the root (2 of 3 offline keys), targets, snapshot and timestamp keys",
        description="Create the update repository in DIR/updates with version 1 of every role "
        "and an empty revocation list. The three root keys go to a separate directory that "
        "must be taken offline.",
    )
    add_data(p)
    _root_keys(p)
    p.set_defaults(func=cmd_init)
    p = usub.add_parser(
        "renew-root",
        help="re-sign the root with the same offline keys and a new expiry (yearly)",
        description="A new root version with the same keys, valid 365 days, signed by two of "
        "the offline root keys. An expired root stops every terminal's updates.",
    )
    add_data(p)
    _root_keys(p)
    p.set_defaults(func=cmd_renew_root)
    p = usub.add_parser("status", help="versions, expiry and what is listed")
    add_data(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "publish", help="sign and publish settings, trust list, roster or agency directory"
    )
    psub = p.add_subparsers(dest="publish_command", required=True, metavar="WHAT")
    p = psub.add_parser(
        "settings",
        help="settings (TOML) for one canteen or all, validated before signing",
        description="Check FILE with the terminal's own settings loader (types, ranges, meal "
        "windows that do not overlap, prices not negative); an invalid file is refused with "
        "the line and reason and nothing is published. A canteen's own file is laid over the "
        "--all file key by key ([[meals]] by name): it is checked over the published --all "
        "file and may name only what it changes.",
    )
    add_data(p)
    p.add_argument("file", metavar="FILE", help="the settings file (TOML)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--canteen", metavar="ID", help="for this canteen only")
    who.add_argument(
        "--all", action="store_true", help="for every canteen (under each canteen's own file)"
    )
    p.set_defaults(func=cmd_publish_settings)
    p = psub.add_parser(
        "trust",
        help='the issuer trust list (token.md §5 JSON; an SM2 key\'s entry has "alg": "SM2-SM3")',
    )
    add_data(p)
    add_database(p)  # the county database records the list's issuer keys
    p.add_argument("file", metavar="TRUST.json")
    p.set_defaults(func=cmd_publish_trust)
    p = psub.add_parser("roster", help="the card roster (CSV uid,iss,sub,unit,display_name,status)")
    add_data(p)
    p.add_argument("file", metavar="ROSTER.csv")
    p.set_defaults(func=cmd_publish_roster)
    p = psub.add_parser(
        "directory",
        help="the agency directory document (JSON: agencies and canteens)",
        description="Check FILE (the directory document as terminals install it: agencies, "
        "canteens; its version and issued_at are replaced) as a terminal does and sign it as "
        "the next directory version. "
        "County IT normally publishes with 'canteen-county agencies import', which does this "
        "from the county database; this command republishes a saved document.",
    )
    add_data(p)
    p.add_argument("file", metavar="DIRECTORY.json")
    p.set_defaults(func=cmd_publish_directory)

    p = subparsers.add_parser(
        "revoke",
        help="revoke a credential, cadre, card, holder key or issuer key; publishes at once",
        description="KIND and values: credential ISS CTI_HEX | cadre ISS SUB | card UID_HEX | "
        "holder_key PUBLIC_KEY_HEX | issuer_key PUBLIC_KEY_HEX | file REVOCATIONS.json | "
        "conflicts (every credential the county found in a conflict). A PUBLIC_KEY_HEX is "
        "an Ed25519 key (64 hex digits) or an SM2 key, the 65-byte point 04||x||y (130 hex "
        "digits, token.md section 7); anything else is refused. Only the shards that "
        "change are published.",
    )
    add_data(p)
    add_database(p)  # where 'revoke conflicts' reads the conflicts
    p.add_argument("kind", choices=(*KINDS, "file", "conflicts"), metavar="KIND")
    p.add_argument("values", nargs="*", metavar="VALUE")
    p.set_defaults(func=cmd_revoke)

    p = subparsers.add_parser(
        "rotate",
        help="new keys for a role (root, targets, snapshot, timestamp, bins)",
        description="Replace a role's keys. Every role but bins changes the root, which two "
        "of the offline root keys must sign (--root-keys); rotating root makes three new ones.",
    )
    add_data(p)
    _root_keys(p)
    p.add_argument("role", choices=updates.ROLES, metavar="ROLE")
    p.set_defaults(func=cmd_rotate)

    p = subparsers.add_parser("timestamp", help="re-sign the timestamp (the server does it too)")
    tsub = p.add_subparsers(dest="timestamp_command", required=True, metavar="ACTION")
    p = tsub.add_parser(
        "refresh", help="re-sign online roles near expiry (timestamp, snapshot, targets, bins)"
    )
    add_data(p)
    p.add_argument("--force", action="store_true", help="re-sign even if not near expiry")
    p.set_defaults(func=cmd_timestamp_refresh)

    p = subparsers.add_parser(
        "applied",
        help="what each terminal last reported applying, and whether it is current",
        description="A terminal is current when the content of the set it applied (settings "
        "for its canteen, trust list, roster, directory, revocations) is what the county "
        "publishes now, whatever the set numbers (docs/fleet.md).",
    )
    add_data(p)
    add_database(p)  # each terminal's canteen (its settings) is in the county database
    p.add_argument("--text", action="store_true", help="lines for people instead of JSON")
    p.set_defaults(func=cmd_applied)
