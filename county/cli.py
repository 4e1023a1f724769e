"""The canteen-county command: the reference county server and county IT's tools.

Each subcommand parses its arguments, calls county.ca, county.store or
county.app and prints the result: JSON (one document, or one line per item)
for what scripts read, plain lines for people. Every library error becomes one
line on standard error that says what happened and what to do, with exit
status 2. Nothing here holds intake rules or key handling of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from county import ca
from county.store import CountyStore, StoreError, database_path, next_terminal_id

PROG = "canteen-county"
DB_FILE = "county.sqlite"


class CommandError(Exception):
    """A usage problem found by the command itself."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _db(a: argparse.Namespace) -> Path:
    url = getattr(a, "database", None)
    if url:
        return database_path(url)
    data = Path(a.data)
    path = data / DB_FILE
    if not data.is_dir():
        raise CommandError(f"{data}: no such county data directory; run '{PROG} ca init' first")
    return path


def _store(a: argparse.Namespace) -> CountyStore:
    return CountyStore(_db(a))


def cmd_ca_init(a: argparse.Namespace) -> int:
    paths = ca.init_ca(Path(a.data), tuple(a.host or ()))
    cert = ca.load_ca_cert(paths)
    extra = "".join(", " + h for h in a.host or ())
    print(f"county CA:          {paths.ca_cert}")
    print(f"server certificate: {paths.server_cert} (127.0.0.1, localhost{extra})")
    print(f"time-signing key:   {paths.time_key}")
    print(f"CA fingerprint:     {ca.ca_fingerprint(cert)}")
    return 0


def cmd_terminal_add(a: argparse.Namespace) -> int:
    from county.app import new_provisioning_code

    data = Path(a.data)
    ca.load_ca_cert(ca.CAPaths(data))  # a code without a CA to pin is useless
    store = _store(a)
    try:
        terminal_id = a.terminal or next_terminal_id(store, a.canteen)
        secret = store.add_terminal(terminal_id, a.canteen, _now_ms())
        days = store.limits.code_ttl_ms // 86_400_000
    finally:
        store.close()
    print(f"terminal {terminal_id} at canteen {a.canteen} is registered.")
    print(f'Set [terminal] id = "{terminal_id}" in its settings, then on the terminal run:')
    print(f"  canteen-terminal provision --state DIR --server URL --code CODE  (valid {days} days)")
    print(new_provisioning_code(data, secret))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from county.app import CountyServer

    server = CountyServer(
        Path(a.data), a.host, a.port, database_url=a.database, log_level=a.log_level
    )
    print(f"{PROG}: serving on {server.url} (Ctrl+C stops)", flush=True)
    server.run()
    return 0


def cmd_entries(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        for item in store.iter_entries(a.terminal):
            print(json.dumps(item, ensure_ascii=False))
    finally:
        store.close()
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        report = store.report(_now_ms(), int(a.silent_hours * 3_600_000), a.utc_offset)
    finally:
        store.close()
    if a.text:
        for d in report["days"]:
            refusals = ", ".join(f"{k} {v}" for k, v in sorted(d["refusals"].items())) or "none"
            print(
                f"{d['canteen']} {d['day']}: {d['meals']} meals, {d['amount_fen'] / 100:.2f} yuan, "
                f"refusals: {refusals}, conflicts: {d['conflicts']}"
            )
        for unit, kinds in sorted(report["conflicts_by_unit"].items()):
            print(
                f"conflicts of unit {unit or '(none)'}: "
                + ", ".join(f"{k} {v}" for k, v in kinds.items())
            )
        for t in report["terminals_not_heard_from"]:
            print(f"not heard from: {t['terminal']} at {t['canteen']} (acked to {t['acked_seq']})")
        print(f"alarms: {report['alarms']}")
    else:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


def cmd_revocations(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        entries = store.revocations()
    finally:
        store.close()
    # The shape of a terminal revocation list (token.md §5), so
    # 'canteen-terminal lists install --revocations' takes it as it is.
    doc = {"version": len(entries), "issued_at": _now_ms() // 1000, "entries": entries}
    print(json.dumps(doc, ensure_ascii=False, indent=1))
    return 0


def cmd_alarms(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        for item in store.alarms():
            print(json.dumps(item, ensure_ascii=False))
        for item in store.conflicts():
            print(json.dumps({"conflict": item}, ensure_ascii=False))
    finally:
        store.close()
    return 0


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the county's data directory")


def _database(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database",
        metavar="URL",
        help="database URL (default sqlite:///DIR/county.sqlite; only sqlite:/// is supported)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reference county server for canteen terminals: ledger intake over mTLS, "
        "provisioning, reports and conflict revocations.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ca", help="the county certificate authority")
    csub = p.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    p = csub.add_parser(
        "init",
        help="make the county CA, the server certificate and the time-signing key",
        description="Make the county CA, an HTTPS certificate for 127.0.0.1, localhost and any "
        "--host, and the Ed25519 key that signs the server's time. Refuses to replace a CA.",
    )
    _data(p)
    p.add_argument("--host", action="append", metavar="NAME", help="another server name or IP")
    p.set_defaults(func=cmd_ca_init)

    p = sub.add_parser("terminal", help="register terminals")
    tsub = p.add_subparsers(dest="terminal_command", required=True, metavar="ACTION")
    p = tsub.add_parser(
        "add",
        help="register a terminal and print its one-time provisioning code (last line)",
        description="Register a terminal at a canteen (or renew the code of a registered one) "
        "and print a one-time code: its secret, then the county CA's fingerprint that the "
        "terminal pins.",
    )
    _data(p)
    _database(p)
    p.add_argument("--canteen", required=True, metavar="ID", help="the canteen it serves")
    p.add_argument("--terminal", metavar="ID", help="terminal id (default CANTEEN-N)")
    p.set_defaults(func=cmd_terminal_add)

    p = sub.add_parser("serve", help="serve the county API over HTTPS (mTLS)")
    _data(p)
    _database(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 picks one)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("entries", help="every acknowledged entry as a JSON line")
    _data(p)
    _database(p)
    p.add_argument("--terminal", metavar="ID", help="only this terminal's entries")
    p.set_defaults(func=cmd_entries)

    p = sub.add_parser(
        "report",
        help="per canteen and day: meals, amounts, refusals, conflicts; silent terminals",
    )
    _data(p)
    _database(p)
    p.add_argument(
        "--silent-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="list terminals not heard from for this long (default 24)",
    )
    p.add_argument(
        "--utc-offset",
        type=int,
        default=8,
        metavar="H",
        help="local time of the canteens, for entries without a service day (default +8)",
    )
    p.add_argument("--text", action="store_true", help="lines for people instead of JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "revocations",
        help="credential revocations made from conflicts, as a revocation list (JSON)",
    )
    _data(p)
    _database(p)
    p.set_defaults(func=cmd_revocations)

    p = sub.add_parser("alarms", help="fork and tamper alarms, then conflicts, as JSON lines")
    _data(p)
    _database(p)
    p.set_defaults(func=cmd_alarms)
    from county.updates_cli import add_update_commands

    add_update_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ca.CAError, StoreError, CommandError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
