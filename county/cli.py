"""The canteen-county command: the reference county server and county IT's tools.

Each subcommand parses its arguments, calls county.ca, county.store or
county.app and prints the result: JSON (one document, or one line per item)
for what scripts read, plain lines for people. Every library error becomes one
line on standard error that says what happened and what to do, with exit
status 2. Nothing here holds intake rules or key handling of its own. The update
commands are in county/updates_cli.py, the database's own (db upgrade, status, copy,
verify) in county/db_cli.py; both share county/command.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from county import ca
from county.command import (
    PROG,
    CommandError,
    add_data,
    add_database,
    now_ms,
    print_json,
    run,
    store_url,
    whole_number,
)
from county.db import DatabaseError
from county.reports import DayRange, parse_day
from county.store import CountyStore, StoreError, next_terminal_id


def _store(a: argparse.Namespace) -> CountyStore:
    """The county store of --database URL, else of --data DIR (see command.store_url)."""
    return CountyStore(store_url(a))


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
        secret = store.add_terminal(terminal_id, a.canteen, now_ms())
        days = store.limits.code_ttl_ms // 86_400_000
    finally:
        store.close()
    print(f"terminal {terminal_id} at canteen {a.canteen} is registered.")
    print(f'Set [terminal] id = "{terminal_id}" in its settings, then on the terminal run:')
    print(f"  canteen-terminal provision --state DIR --server URL --code CODE  (valid {days} days)")
    print(new_provisioning_code(data, secret))
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 and at most 3600")
    return value


def _pool_options(p: argparse.ArgumentParser) -> None:
    """serve's bounds on its database connections (county/db/engine.py, PoolLimits;
    docs/county-ops.md, "Connections")."""
    from county.db.engine import PoolLimits

    d = PoolLimits()
    p.add_argument(
        "--pool-size",
        type=whole_number(1),
        default=d.size,
        metavar="N",
        help=f"database connections this process keeps (default {d.size})",
    )
    p.add_argument(
        "--pool-overflow",
        type=whole_number(0),
        default=d.overflow,
        metavar="N",
        help=f"more it may open under load (default {d.overflow})",
    )
    p.add_argument(
        "--pool-timeout",
        type=_seconds,
        default=d.timeout_s,
        metavar="S",
        help="seconds a request waits for a free connection before it is answered 503 "
        f"(default {d.timeout_s:g})",
    )


def cmd_serve(a: argparse.Namespace) -> int:
    from county.app import CountyServer
    from county.db.engine import PoolLimits

    pool = PoolLimits(size=a.pool_size, overflow=a.pool_overflow, timeout_s=a.pool_timeout)
    server = CountyServer(
        Path(a.data), a.host, a.port, database_url=store_url(a), log_level=a.log_level, pool=pool
    )
    print(f"{PROG}: serving on {server.url} (Ctrl+C stops)", flush=True)
    server.run()
    return 0


# The days 'report' covers when neither --from nor --to is given: today and the six
# local days before it (docs/county-ops.md, "Reports").
REPORT_DAYS = 7


def _day_range(a: argparse.Namespace, default_days: int | None = None) -> DayRange:
    """--from/--to as local days at --utc-offset. With ``default_days``, a missing --to is
    today and a missing --from is that many days up to --to; without, a missing bound is
    open. A bad date is a CommandError (one line, exit 2)."""
    first, last = a.date_from, a.date_to
    try:
        DayRange(utc_offset_h=a.utc_offset)  # the offset checked before it is used
        if default_days is not None:
            zone = dt.timezone(dt.timedelta(hours=a.utc_offset))
            if last is None:
                last = dt.datetime.fromtimestamp(now_ms() / 1000, zone).date().isoformat()
            if first is None:
                end = parse_day(last, "--to")
                first = (end - dt.timedelta(days=default_days - 1)).isoformat()
        return DayRange(first, last, a.utc_offset)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def cmd_entries(a: argparse.Namespace) -> int:
    days = _day_range(a)
    store = _store(a)
    encode = json.JSONEncoder(ensure_ascii=False).encode
    write = sys.stdout.write
    try:
        for item in store.iter_entries(a.terminal, days=days, canteen=a.canteen):
            write(encode(item) + "\n")
    finally:
        store.close()
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    days = _day_range(a, REPORT_DAYS)
    store = _store(a)
    try:
        report = store.report(
            now_ms(),
            int(a.silent_hours * 3_600_000),
            a.utc_offset,
            days=days,
            canteen=a.canteen,
        )
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
        for c in report.get("clock_offsets", []):
            if not c["in_tolerance"]:
                ahead = c["ahead_ms"] / 1000
                way = "fast" if ahead > 0 else "slow"
                print(
                    f"clock: {c['terminal']} is {abs(ahead):.0f} s {way} "
                    f"(county time {_local(c['server_ms'], a.utc_offset)})"
                )
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report["alarms_by_kind"].items()))
        print(f"alarms: {report['alarms']}" + (f" ({kinds})" if kinds else ""))
    else:
        print_json(report)
    return 0


def cmd_revocations(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        entries = store.revocations()
    finally:
        store.close()
    # The shape of a terminal revocation list (token.md §5), so
    # 'canteen-terminal lists install --revocations' takes it as it is.
    doc = {"version": len(entries), "issued_at": now_ms() // 1000, "entries": entries}
    print_json(doc)
    return 0


def _local(ms: int | None, utc_offset_h: int) -> str:
    """A time for people: local time of the canteens, to the second."""
    if ms is None:
        return "-"
    zone = dt.timezone(dt.timedelta(hours=utc_offset_h))
    return dt.datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")


def cmd_alarms(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        alarms = store.alarms()
        conflicts = store.conflicts() if not a.text else []
    finally:
        store.close()
    if a.text:
        for x in alarms:
            first = _local(x["first_ms"], a.utc_offset)
            where = f", entry {x['seq']}" if x["seq"] else ""
            times = f", {x['times']} times, last {_local(x['last_ms'], a.utc_offset)}"
            review = ""
            for decided in ("confirmed", "withdrawn"):
                if x[f"{decided}_ms"] is not None:
                    review = (
                        f" [{decided} {_local(x[f'{decided}_ms'], a.utc_offset)} by "
                        f"{x[f'{decided}_by']}: {x[f'{decided}_reason']}]"
                    )
            print(
                f"alarm {x['id']} {x['kind']}: terminal {x['terminal']} at "
                f"{x['canteen'] or '?'}{where}, first {first}"
                f"{times if x['times'] > 1 else ''}: {x['problem']}{review}"
            )
        if not alarms:
            print("no alarms")
        return 0
    for item in alarms:
        print(json.dumps(item, ensure_ascii=False))
    for item in conflicts:
        print(json.dumps({"conflict": item}, ensure_ascii=False))
    return 0


def _conflict_lines(c: dict[str, Any], utc_offset_h: int) -> list[str]:
    who = c["cadre"] + (f" ({c['name']})" if c["name"] else "")
    if c["withdrawn_ms"] is not None:
        by = f" by {c['withdrawn_by']}" if c["withdrawn_by"] else ""
        state = f"WITHDRAWN {_local(c['withdrawn_ms'], utc_offset_h)}{by}: {c['withdrawn_reason']}"
    elif c["confirmed_ms"] is not None:
        state = (
            f"standing, CONFIRMED {_local(c['confirmed_ms'], utc_offset_h)} "
            f"by {c['confirmed_by']}: {c['confirmed_reason']}"
        )
    else:
        state = "standing, not reviewed"
    lines = [
        f"conflict {c['id']} {c['kind']} [{state}]: {who}, unit {c['unit'] or '-'}, "
        f"{c['meal'] or '-'} on {c['day'] or '-'}",
    ]
    for label in ("first", "second"):
        side = c[label]
        lines.append(
            f"  {label:6} {side['method'] or '?':4} at {_local(side['at_ms'], utc_offset_h)}, "
            f"terminal {side['terminal']} ({side['canteen'] or '?'}), entry {side['seq']}, "
            f"hash {(side['hash'] or '?')[:16]}"
        )
    if c["reason"]:
        lines.append(f"  why: {c['reason']}")
    revokes = ", ".join(c["revokes"]) or "nothing"
    lines.append(f"  revokes: {revokes}; found {_local(c['found_ms'], utc_offset_h)}")
    return lines


def cmd_conflicts(a: argparse.Namespace) -> int:
    store = _store(a)
    try:
        found = store.conflicts()
    finally:
        store.close()
    if not a.all:
        found = [c for c in found if c["withdrawn_ms"] is None]
    if a.json:
        for item in found:
            print(json.dumps(item, ensure_ascii=False))
        return 0
    for c in found:
        print("\n".join(_conflict_lines(c, a.utc_offset)))
    if not found:
        print("no standing conflicts" if not a.all else "no conflicts")
    return 0


def cmd_conflicts_withdraw(a: argparse.Namespace) -> int:
    from county import review_cli  # shares county/review.py with the console

    return review_cli.cmd_conflicts_withdraw(a)


def cmd_issuers_import(a: argparse.Namespace) -> int:
    from county.files import read_list_file
    from protocol.lists import TrustError, split_list

    try:
        entries, _ = split_list(read_list_file(a.file, "trust"), "trust")
    except TrustError as exc:
        raise CommandError(str(exc)) from None
    store = _store(a)
    try:
        added = store.add_issuer_keys(entries, now_ms())
        total = store.issuer_key_count()
    except TrustError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(f"{added} issuer key(s) new or changed; the county verifies codes with {total}")
    return 0


def _people(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", action="store_true", help="lines for people instead of JSON")
    p.add_argument("--utc-offset", type=int, default=8, metavar="H", help="local time (+8)")


def _day_options(p: argparse.ArgumentParser, from_help: str, to_help: str) -> None:
    p.add_argument("--from", dest="date_from", metavar="DATE", help=from_help)
    p.add_argument("--to", dest="date_to", metavar="DATE", help=to_help)


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
    add_data(p)
    p.add_argument("--host", action="append", metavar="NAME", help="another server name or IP")
    p.set_defaults(func=cmd_ca_init)

    p = sub.add_parser("terminal", help="register, retire and replace terminals")
    tsub = p.add_subparsers(dest="terminal_command", required=True, metavar="ACTION")
    p = tsub.add_parser(
        "add",
        help="register a terminal and print its one-time provisioning code (last line)",
        description="Register a terminal at a canteen (or renew the code of a registered one) "
        "and print a one-time code: its secret, then the county CA's fingerprint that the "
        "terminal pins.",
    )
    add_data(p)
    add_database(p)
    p.add_argument("--canteen", required=True, metavar="ID", help="the canteen it serves")
    p.add_argument("--terminal", metavar="ID", help="terminal id (default CANTEEN-N)")
    p.set_defaults(func=cmd_terminal_add)
    from county.replacement_cli import add_replacement_commands

    add_replacement_commands(tsub)  # retire, replace, recover, retired

    p = sub.add_parser("serve", help="serve the county API over HTTPS (mTLS)")
    add_data(p)
    add_database(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 picks one)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    _pool_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "entries",
        help="acknowledged entries as JSON lines, by terminal and sequence number",
        description="Stream the acknowledged entries, by terminal and sequence number, one "
        "JSON line each; every entry unless filtered. An entry is on its service day or, "
        "without one, on the local day of its time.",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--terminal", metavar="ID", help="only this terminal's entries")
    p.add_argument("--canteen", metavar="ID", help="only this canteen's entries")
    _day_options(p, "from this local day on (YYYY-MM-DD)", "up to this local day, included")
    p.add_argument(
        "--utc-offset",
        type=int,
        default=8,
        metavar="H",
        help="local time of the canteens, for the days of entries without a service day "
        "(default +8)",
    )
    p.set_defaults(func=cmd_entries)

    p = sub.add_parser(
        "report",
        help="per canteen and day: meals, amounts, refusals, conflicts; silent terminals",
        description="Per canteen and local day of the range: meals, amounts, refusals, "
        f"conflicts; then silent terminals, alarms and clocks. Without --from and --to, the "
        f"last {REPORT_DAYS} local days (today included).",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--canteen", metavar="ID", help="only this canteen")
    _day_options(
        p,
        f"first local day (YYYY-MM-DD; default {REPORT_DAYS - 1} days before --to)",
        "last local day, included (default today)",
    )
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
    add_data(p, required=False)
    add_database(p)
    p.set_defaults(func=cmd_revocations)

    p = sub.add_parser(
        "alarms",
        help="alarms against terminals (forks, tampering, unsigned batches, sales without "
        "evidence), then conflicts, as JSON lines",
    )
    add_data(p, required=False)
    add_database(p)
    _people(p)
    p.set_defaults(func=cmd_alarms)

    p = sub.add_parser(
        "conflicts",
        help="standing conflicts with their evidence, for review; 'withdraw' lifts one",
        description="Each conflict: the cadre, both accepted sales (terminal, canteen, entry, "
        "hash, local time), why it is a conflict and what it revoked.",
    )
    # Not required here: 'conflicts withdraw' takes its own --data after the action.
    p.add_argument("--data", metavar="DIR", help="the county's data directory")
    add_database(p)
    p.add_argument("--all", action="store_true", help="withdrawn conflicts too")
    p.add_argument("--json", action="store_true", help="one JSON document per conflict")
    p.add_argument("--utc-offset", type=int, default=8, metavar="H", help="local time (+8)")
    p.set_defaults(func=cmd_conflicts)
    csub = p.add_subparsers(dest="conflicts_command", metavar="ACTION")
    p = csub.add_parser(
        "withdraw",
        help="withdraw a conflict after review and lift the revocations it alone made",
        description="Mark the conflict withdrawn with a reason (kept for the record) and publish "
        "a signed revocation list without the revocations no other standing conflict holds.",
    )
    add_data(p)
    add_database(p)
    p.add_argument("id", type=int, metavar="ID", help="the conflict's number")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, for the record")
    p.set_defaults(func=cmd_conflicts_withdraw)
    from county.review_cli import add_review_commands

    add_review_commands(sub.choices["alarms"], csub)

    p = sub.add_parser("issuers", help="issuer keys the county verifies phone codes with")
    isub = p.add_subparsers(dest="issuers_command", required=True, metavar="ACTION")
    p = isub.add_parser(
        "import",
        help="add a trust list's keys (publish trust does this by itself)",
        description="Add the keys of a trust list (token.md §5 JSON) to those the county "
        "verifies the signed codes of uploaded QR sales with. 'updates publish trust' does "
        "this by itself; use import where lists reach terminals by USB.",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("file", metavar="FILE", help="the trust list (JSON)")
    p.set_defaults(func=cmd_issuers_import)
    from county.db_cli import add_db_commands
    from county.directory_cli import add_directory_commands
    from county.fleet_cli import add_fleet_commands
    from county.inspection_cli import add_inspection_commands
    from county.reconcile_cli import add_reconcile_commands
    from county.settlement_cli import add_settlement_commands
    from county.updates_cli import add_update_commands
    from county.users_cli import add_user_commands

    add_update_commands(sub)
    add_db_commands(sub)
    add_directory_commands(sub)
    add_settlement_commands(sub)
    add_reconcile_commands(sub)
    add_inspection_commands(sub)
    add_fleet_commands(sub)
    add_user_commands(sub)
    from county.meals_cli import add_meals_command

    add_meals_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv, (ca.CAError, StoreError, DatabaseError, CommandError))


if __name__ == "__main__":
    sys.exit(main())
