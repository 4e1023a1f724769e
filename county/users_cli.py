"""canteen-county user, audit and console: the web console's users, its audit log, and
its own listener (docs/console.md).

- ``user add --role admin|finance|inspector NAME`` prints a one-time password (the user
  chooses a new one at the first login); ``user list``, ``user disable NAME``,
  ``user enable NAME``, ``user reset NAME`` (a new one-time password; sessions end);
- ``audit [--from DATE] [--to DATE] [--user NAME] [--action A]``: the audit log as JSON
  lines, oldest first;
- ``console --data DIR [--database URL] [--host H] [--port N] [--tls-cert F --tls-key F]``:
  the console on its own listener, never the terminals' API.

Every change is written to the audit log as ``cli:<login name>``: the user commands in
their own transaction, and the other county commands that change something (AUDITED:
terminal add, conflicts withdraw, publish, revoke, imports...) once they succeeded,
since add_user_commands is called after every other command is added. Bad input is one
line on standard error, exit status 2, and nothing changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from county.command import (
    PROG,
    CommandError,
    add_data,
    add_database,
    now_ms,
    one_line_errors,
    open_county,
    whole_number,
)
from county.console import audit
from county.console.users import ROLES, UserError
from county.localtime import (
    LocalTimeError,
    add_timezone_option,
    county_zone,
    local_text,
    midnight_ms,
    parse_date,
)


def cli_user() -> str:
    """Who runs the command, as the audit log names them."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:?"


def _print_password(name: str, role: str | None, password: str) -> None:
    what = f"user {name}" + (f" ({role})" if role else "")
    print(f"{what}: one-time password (give it to them; they choose their own at first login):")
    print(password)


@one_line_errors(UserError)
def cmd_user_add(a: argparse.Namespace) -> int:
    from county.console.users import add_user

    db = open_county(a)
    try:
        with db.write() as conn:
            password = add_user(conn, a.name, a.role, now_ms())
            audit.record(
                conn, user=cli_user(), action="user.add", target=a.name,
                detail=f"role {a.role}", at_ms=now_ms(),
            )  # fmt: skip
    finally:
        db.close()
    _print_password(a.name, a.role, password)
    return 0


@one_line_errors(UserError)
def cmd_user_reset(a: argparse.Namespace) -> int:
    from county.console.users import reset_user

    db = open_county(a)
    try:
        with db.write() as conn:
            password = reset_user(conn, a.name)
            audit.record(conn, user=cli_user(), action="user.reset", target=a.name, at_ms=now_ms())
    finally:
        db.close()
    _print_password(a.name, None, password)
    return 0


@one_line_errors(UserError)
def cmd_user_disable(a: argparse.Namespace) -> int:
    from county.console.users import disable_user

    db = open_county(a)
    try:
        with db.write() as conn:
            changed = disable_user(conn, a.name, now_ms())
            if changed:
                audit.record(
                    conn, user=cli_user(), action="user.disable", target=a.name, at_ms=now_ms()
                )
    finally:
        db.close()
    print(
        f"user {a.name} " + ("disabled; its sessions ended" if changed else "was disabled already")
    )
    return 0


@one_line_errors(UserError)
def cmd_user_enable(a: argparse.Namespace) -> int:
    from county.console.users import enable_user

    db = open_county(a)
    try:
        with db.write() as conn:
            changed = enable_user(conn, a.name)
            if changed:
                audit.record(
                    conn, user=cli_user(), action="user.enable", target=a.name, at_ms=now_ms()
                )
    finally:
        db.close()
    print(f"user {a.name} " + ("enabled" if changed else "was not disabled"))
    return 0


def cmd_user_list(a: argparse.Namespace) -> int:
    from county.console.users import list_users

    zone = county_zone(a.timezone)
    db = open_county(a, must_exist=True)
    try:
        with db.read() as conn:
            rows = list_users(conn)
    finally:
        db.close()
    for r in rows:
        doc: dict[str, Any] = {
            "name": r.name,
            "role": r.role,
            "created": local_text(r.created_ms, zone),
            "disabled": local_text(r.disabled_ms, zone) or None,
            "one_time_password": r.one_time,
        }
        print(json.dumps(doc, ensure_ascii=False))
    return 0


@one_line_errors(LocalTimeError)
def cmd_audit(a: argparse.Namespace) -> int:
    zone = county_zone(a.timezone)
    start = midnight_ms(parse_date(a.date_from, "--from"), zone) if a.date_from else None
    end = (
        midnight_ms(parse_date(a.date_to, "--to") + dt.timedelta(days=1), zone)
        if a.date_to
        else None
    )
    if start is not None and end is not None and start >= end:
        raise LocalTimeError(f"--from {a.date_from} is after --to {a.date_to}")
    f = audit.AuditFilter(user=a.user, action=a.action, start_ms=start, end_ms=end)
    db = open_county(a, must_exist=True)
    write = sys.stdout.write
    try:
        with db.read() as conn:
            for row in audit.iter_rows(conn, f):
                row["local_time"] = local_text(row["at_ms"], zone)
                write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        db.close()
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def cmd_console(a: argparse.Namespace) -> int:
    from county.command import store_url
    from county.console.app import ConsoleConfig, ConsoleServer

    if bool(a.tls_cert) != bool(a.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    for f in (a.tls_cert, a.tls_key):
        if f and not Path(f).is_file():
            raise CommandError(f"{f}: no such file")
    zone = county_zone(a.timezone)
    if a.idle_minutes * 60_000 > a.session_hours * 3_600_000:
        raise CommandError("--idle-minutes is longer than --session-hours")
    config = ConsoleConfig(
        data=Path(a.data),
        database_url=store_url(a),
        secure_cookies=a.secure_cookies,
        zone=zone,
        idle_ms=a.idle_minutes * 60_000,
        absolute_ms=a.session_hours * 3_600_000,
    )
    try:
        server = ConsoleServer(
            config,
            a.host,
            a.port,
            tls_cert=Path(a.tls_cert) if a.tls_cert else None,
            tls_key=Path(a.tls_key) if a.tls_key else None,
            log_level=a.log_level,
        )
    except OSError as exc:
        raise CommandError(f"cannot listen on {a.host}:{a.port}: {exc.strerror}") from None
    print(f"{PROG}: console on {server.url}/console (Ctrl+C stops)", flush=True)
    server.run()
    return 0


# The county commands that change something, by their words, and the action each writes
# to the audit log once it succeeded (the user commands above write their own rows, in
# their transaction; terminal retire/replace/recover write theirs in county/replacement.py).
AUDITED: dict[tuple[str, ...], str] = {
    ("terminal", "add"): "terminal.add",
    ("conflicts", "withdraw"): "conflict.withdraw",
    ("conflicts", "confirm"): "conflict.confirm",
    ("alarms", "confirm"): "alarm.confirm",
    ("alarms", "withdraw"): "alarm.withdraw",
    ("issuers", "import"): "issuers.import",
    ("publish", "settings"): "publish.settings",
    ("publish", "trust"): "publish.trust",
    ("publish", "roster"): "publish.roster",
    ("publish", "directory"): "publish.directory",
    ("revoke",): "revoke",
    ("rotate",): "rotate",
    ("agencies", "import"): "agencies.import",
    ("agencies", "publish"): "agencies.publish",
    ("canteens", "import"): "canteens.import",
    ("cadres", "import"): "cadres.import",
}
_TARGETS = ("terminal", "id", "name", "canteen", "part", "role", "file")
_NOT_DETAIL = {"func", "database", "data", "command", "timezone"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _audited(fn: Any, action: str) -> Any:
    def run(a: argparse.Namespace) -> int:
        code = int(fn(a))
        if code == 0:
            _record_command(a, action)
        return code

    run.__name__ = getattr(fn, "__name__", "command")
    return run


def _record_command(a: argparse.Namespace, action: str) -> None:
    """One audit row for a county command that succeeded; a county whose database cannot
    be opened gets one warning line (the change itself is done)."""
    target = next((str(v) for k in _TARGETS if (v := getattr(a, k, None)) not in (None, "")), "")
    detail = {
        k: v
        for k, v in sorted(vars(a).items())
        if k not in _NOT_DETAIL and not k.endswith("_command") and v not in (None, False, [])
        and isinstance(v, str | int | float | bool | list)
    }  # fmt: skip
    try:
        db = open_county(a, must_exist=True)  # never a new empty county for the row
        try:
            with db.write() as conn:
                audit.record(
                    conn, user=cli_user(), action=action, target=target,
                    detail=json.dumps(detail, ensure_ascii=False, default=str), at_ms=now_ms(),
                )  # fmt: skip
        finally:
            db.close()
    except Exception as exc:
        print(f"{PROG}: warning: not written to the audit log: {exc}", file=sys.stderr)


def audit_commands(sub: Any) -> None:
    """Make each command named in AUDITED write its audit row when it succeeds."""
    for words, action in AUDITED.items():
        parser = sub.choices.get(words[0])
        for word in words[1:]:
            parser = _subparsers(parser).get(word) if parser is not None else None
        if parser is None:
            continue  # a command this build does not have
        fn = parser.get_default("func")
        if fn is not None:
            parser.set_defaults(func=_audited(fn, action))


def add_user_commands(sub: Any) -> None:
    p = sub.add_parser("user", help="the web console's users (admin, finance, inspector)")
    usub = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    p = usub.add_parser(
        "add",
        help="add a console user and print a one-time password",
        description="Add a console user with a role and print a one-time password; at the "
        "first login they must choose their own. Roles: admin (everything), finance "
        "(reads, exports), inspector (reads everything, changes nothing).",
    )
    add_data(p)
    add_database(p)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_user_add)
    for action, fn, text in (
        ("disable", cmd_user_disable, "refuse a user's logins and end their sessions"),
        ("enable", cmd_user_enable, "allow a disabled user to log in again"),
        ("reset", cmd_user_reset, "a new one-time password for a user (their sessions end)"),
    ):
        p = usub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        add_data(p)
        add_database(p)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(func=fn)
    p = usub.add_parser("list", help="the console's users as JSON lines")
    add_data(p, required=False)
    add_database(p)
    add_timezone_option(p)
    p.set_defaults(func=cmd_user_list)

    p = sub.add_parser(
        "audit",
        help="the audit log as JSON lines, oldest first",
        description="Print the audit log (logins, logouts, failed logins, password changes and "
        "every change through the console or a county command) as JSON lines, oldest first.",
    )
    add_data(p, required=False)
    add_database(p)
    p.add_argument("--from", dest="date_from", metavar="DATE", help="from this local day on")
    p.add_argument("--to", dest="date_to", metavar="DATE", help="up to this local day, included")
    p.add_argument("--user", metavar="NAME", help="only this user's rows")
    p.add_argument(
        "--action", metavar="ACTION", help="only this action (ending in '.': a prefix, 'user.')"
    )
    add_timezone_option(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "console",
        help="serve the web console for county IT, finance and inspection (its own listener)",
        description="Serve the web console at /console on its own listener: plain HTTP on "
        "127.0.0.1 unless --tls-cert/--tls-key are given. It never serves the terminals' API.",
    )
    add_data(p)
    add_database(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks one)")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="and this private key (PEM)")
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark cookies Secure even over plain HTTP (a TLS proxy in front)",
    )
    p.add_argument(
        "--idle-minutes",
        type=whole_number(1, 24 * 60),
        default=30,
        metavar="N",
        help="a session ends after N minutes without a request (default 30)",
    )
    p.add_argument(
        "--session-hours",
        type=whole_number(1, 7 * 24),
        default=12,
        metavar="H",
        help="and H hours after its login in any case (default 12)",
    )
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    add_timezone_option(p)
    p.set_defaults(func=cmd_console)

    audit_commands(sub)
