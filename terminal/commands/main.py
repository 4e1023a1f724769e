"""The canteen-terminal command: a thin layer over the library for technicians and tests.

Each subcommand parses its arguments, calls the library and prints the result;
every library error becomes one line on standard error that says what happened
and what to do, with exit status 2. Nothing here holds logic that the daemon
would need too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from terminal import config, ledger, state, trust

PROG = "canteen-terminal"


class CommandError(Exception):
    """A usage problem the command found itself (a missing file, a bad combination)."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (TOML) over the embedded defaults; default: the defaults alone",
    )


# ---- verify-token ----


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
    settings = _replace_settings(settings, window_s=window, skew_s=skew)
    fixed_ms = a.now * 1000 if a.now is not None else None
    start_ms = fixed_ms if fixed_ms is not None else _wall_ms()

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
            settings = _identified(settings, home)
        if a.trust is None:
            # The terminal's own applied lists: what it would decide (read, never replaced).
            if a.state is None:
                raise CommandError("give --trust TRUST.json, or --state DIR of a terminal")
            if a.revoked is not None:
                raise CommandError(
                    "--revoked needs --trust; with --state alone the "
                    "terminal's own revocation list is used"
                )
            lists = Path(a.state) / state.TRUST_FILE
            if not lists.is_file():
                raise CommandError(f"{lists}: no lists installed in this state directory")
            store = trust.TrustStore(lists)
        else:
            store = trust.TrustStore(":memory:")
        book = state.open_ledger(ledger_path, key_path, settings.terminal_id, start_ms)
        try:
            if a.trust is not None:
                _load_trust_files(store, a.trust, a.revoked, start_ms // 1000)
            counter = Checkout(settings, book, store)
            for text in _qr_texts(a.qr):
                wall = fixed_ms if fixed_ms is not None else _wall_ms()
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


def _identified(settings: config.Settings, root: Path) -> config.Settings:
    """The settings with the ids of a provisioned state directory (terminal and canteen)."""
    return state.with_identity(_replace_settings(settings, state_dir=root))


def _replace_settings(s: config.Settings, **changes: Any) -> config.Settings:
    import dataclasses

    return dataclasses.replace(s, **changes)


# ---- ledger ----


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
    if a.output:
        with open(a.output, "w", encoding="utf-8", newline="") as out:
            ledger.export_file(a.file, a.format, out)
    else:
        ledger.export_file(a.file, a.format, sys.stdout)
    return 0


def cmd_ledger_stats(a: argparse.Namespace) -> int:
    stats = ledger.stats_file(a.file)
    if a.json:
        print(json.dumps(stats, ensure_ascii=False, default=str))
    else:
        for key, value in stats.items():
            print(f"{key}: {value}")
    return 0


# ---- lists (installing trust lists by hand, before signed updates) ----


def cmd_lists_install(a: argparse.Namespace) -> int:
    settings = config.load(a.config)
    root = state.prepare(a.state if a.state else settings.state_dir)
    now_s = a.now if a.now is not None else _wall_ms() // 1000
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
                raise CommandError(f"{a.roster}: cannot read the roster CSV: {exc}") from None
            header = trust.ListHeader(a.roster_version, a.roster_issued_at, None)
            done.append(store.replace_roster(trust.parse_roster_csv(text), header, now_s))
    finally:
        store.close()
        held.release()
    if not done:
        raise CommandError("nothing to install: give --issuers, --revocations or --roster")
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


# ---- config ----


def cmd_config_check(a: argparse.Namespace) -> int:
    from terminal.service import daemon

    s = config.load(a.file)
    daemon.check_settings(s)  # camera, reader, daemon, display and sync tables too
    # What `run` needs beyond the file: a state directory it can use, and the devices.
    state_line = _state_dir_line(a.file, s.state_dir)
    dset = daemon.daemon_settings(s)
    devices = []
    if dset.camera:
        devices.append(_device_line("camera", daemon.camera_settings(s).source))
    if dset.reader:
        devices.append(_device_line("card reader", daemon.reader_settings(s).port))
    meals = ", ".join(f"{m.name} {m.start:%H:%M}-{m.end:%H:%M}" for m in s.meals)
    print(f"{a.file}: ok: terminal {s.terminal_id}, canteen {s.canteen_id}, meals {meals}")
    for line in (state_line, *devices):
        print(f"  {line}")
    return 0


def _state_dir_line(file: str, root: Path) -> str:
    """Whether `run` can use or create the state directory; a CommandError when it cannot."""
    if root.exists():
        if not root.is_dir():
            raise CommandError(f"{file}: [terminal] state_dir {root}: not a directory")
        if os.access(root, os.W_OK | os.X_OK):
            return f"state directory {root}: exists, writable"
        if root == SYSTEMD_STATE:
            return f"state directory {root}: exists, owned by the service's user (systemd)"
        raise CommandError(
            f"{file}: [terminal] state_dir {root}: not writable by this user; "
            "run the terminal as its owner or choose another state_dir"
        )
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return f"state directory {root}: will be created at the first start"
    if root == SYSTEMD_STATE:
        return f"state directory {root}: systemd creates it for the service (StateDirectory)"
    why = "not a directory" if not parent.is_dir() else "not writable by this user"
    raise CommandError(
        f"{file}: [terminal] state_dir {root}: cannot be created: {parent} is {why}; "
        "choose another state_dir, or create it for the user that runs the terminal"
    )


def _device_line(what: str, where: str) -> str:
    """Whether a device path is there now; `run` opens a missing one when it appears."""
    if where.isdigit():
        where = f"/dev/video{where}"  # OpenCV's camera index
    if not where.startswith("/"):
        return (
            f"{what} {where}: not a device path; `run` connects to it and retries until it answers"
        )
    if Path(where).exists():
        return f"{what} {where}: present"
    return (
        f"{what} {where}: missing now; `run` starts without it, says so in `status`, and "
        "opens it when it appears (check the cable and the udev rule, docs/install.md)"
    )


def cmd_run(a: argparse.Namespace) -> int:
    from terminal.service import daemon

    daemon.setup_logging()
    local = config.load(a.config)
    # One writer per state directory, from before the update set is reconciled.
    held = state.lock(local.state_dir, state.DAEMON)
    note = None
    settings = local
    try:
        from terminal import updates
    except ImportError:  # python-tuf missing: run on the local settings alone
        updates = None  # type: ignore[assignment]
    if updates is not None:
        # Before anything else reads settings: reconcile the applied update set, and go
        # back to the last good set when the previous start with a new one failed.
        store = trust.TrustStore(state.prepare(local.state_dir).trust)
        try:
            note = updates.begin_start(local.state_dir, store)
        finally:
            store.close()
        settings = updates.effective_settings(a.config, note)
    return daemon.Daemon(settings, config_path=a.config, start_note=note, state_lock=held).run()


# Where systemd's unit reads the settings (systemd/canteen-terminal.service), and the
# state directory it gives the daemon: `status` looks there when no flag names a terminal.
SYSTEMD_CONFIG = Path("/etc/canteen-terminal/terminal.toml")
SYSTEMD_STATE = Path("/var/lib/canteen-terminal")
DEMO_STATE = Path("run-demo/state")  # scripts/run-terminal.sh, run from the checkout


def _status_places(a: argparse.Namespace) -> list[Path]:
    """State directories to ask, in order: what the flags name, else the usual places."""
    if a.state:
        return [Path(a.state)]
    if a.config:
        return [config.load(a.config).state_dir]
    places = []
    if SYSTEMD_CONFIG.is_file():
        # Unreadable as this user: the unit's state directory is still tried.
        with contextlib.suppress(config.ConfigError):
            places.append(config.load(SYSTEMD_CONFIG).state_dir)
    places += [config.load().state_dir, SYSTEMD_STATE, DEMO_STATE.resolve()]
    return list(dict.fromkeys(p.resolve() for p in places))


def _ask_daemon(a: argparse.Namespace) -> dict[str, Any]:
    from terminal.service import daemon

    places = _status_places(a)
    tried = []
    for root in places:
        try:
            return daemon.ask_status(root)
        except PermissionError:
            tried.append(f"{root / daemon.STATUS_SOCKET} (permission denied: use sudo)")
        except (OSError, ValueError) as exc:
            tried.append(f"{root / daemon.STATUS_SOCKET} ({getattr(exc, 'strerror', exc)})")
    where = "; ".join(tried)
    if a.state or a.config:
        raise CommandError(
            f"no running terminal answers at {where}; "
            "start it with `systemctl start canteen-terminal` or `canteen-terminal run`"
        )
    raise CommandError(
        f"no running terminal answers at {where}; if one runs, name it with "
        "--config FILE (the settings it runs with) or --state DIR (its state directory)"
    )


def _when(ms: object, now_ms: int, tz: Any) -> str:
    """A Unix-ms time as the canteen's local time and its age: `2026-12-02 12:01:05 (4 min ago)`."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "never"
    import datetime as dt

    local = dt.datetime.fromtimestamp(ms / 1000, tz)
    return f"{local:%Y-%m-%d %H:%M:%S} ({_age((now_ms - ms) / 1000)} ago)"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


def _county_line(health: dict[str, Any], now_ms: int, tz: Any) -> tuple[str, str]:
    """(a word for the first line, the county line) from what the daemon knows of its county."""
    online = health.get("online")
    since = _when(health.get("online_since_ms"), now_ms, tz)
    if health.get("sync_note"):
        return "offline only", f"county: not syncing: {health['sync_note']}"
    if online is True:
        return "online", f"county: online since {since}"
    if online is False:
        errors = (health.get("sync") or {}).get("errors") or []
        why = f": {errors[0]}" if errors else ""
        return "OFFLINE", f"county: unreachable since {since}{why}"
    return "county not reached yet", "county: no sync finished yet since the start"


def status_lines(health: dict[str, Any], now_ms: int) -> list[str]:
    """What `status` prints: times in the canteen's local time, with their ages."""
    import zoneinfo

    try:
        tz: Any = zoneinfo.ZoneInfo(str(health.get("timezone")))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = None  # an older daemon: this machine's local time
    net, county = _county_line(health, now_ms, tz)
    lines = [
        f"{health['state']}, {net}: {health['sentence']}",
        f"  terminal {health['terminal_id']} at {health['canteen']}; screen {health['screen']}",
        f"  {county}",
    ]
    for name, dev in health.get("devices", {}).items():
        age = dev.get("last_activity_age_s")
        age_text = "never" if age is None else f"{age:.1f} s ago"
        rate = ""
        if "fps_measured" in dev:
            fps = dev["fps_measured"]
            got = "no frames coming" if fps is None else f"{fps:.1f} frames/s measured"
            rate = f", {got} (settings ask {dev.get('fps_asked')})"
        lines.append(f"  {name}: {dev['state']} (last activity {age_text}{rate}): {dev['detail']}")
    lines.append(
        f"  ledger: {health.get('last_seq')} entries, {health.get('unsynced')} unsynced; "
        f"last acknowledged sync: {_when(health.get('last_ack_ms'), now_ms, tz)}"
    )
    ages = health.get("list_ages_s") or {}
    lists = ", ".join(
        f"{name} {'missing' if age is None else _age(age) + ' old'}" for name, age in ages.items()
    )
    clock = "trusted" if health.get("clock_trusted") else "NOT trusted"
    lines.append(f"  lists: {lists or 'unknown'}; clock {clock}")
    lines.append(
        f"  free disk: {health.get('free_mb')} MB; decisions this run: {health.get('decisions')}; "
        f"up {_age(float(health.get('uptime_s') or 0))}"
    )
    return lines


def cmd_status(a: argparse.Namespace) -> int:
    health = _ask_daemon(a)
    if a.json:
        print(json.dumps(health, ensure_ascii=False))
        return 0
    for line in status_lines(health, _wall_ms()):
        print(line)
    return 0 if health["state"] == "ready" else 1


def cmd_selftest(a: argparse.Namespace) -> int:
    from terminal.service import selftest

    settings = config.load(a.config)
    if a.state:
        import dataclasses

        settings = dataclasses.replace(settings, state_dir=Path(a.state))
    checks = selftest.run_checks(settings, camera_timeout_s=a.camera_timeout)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if c.result == selftest.FAIL]
    print(
        f"{len(checks) - len(failed)} of {len(checks)} parts fine"
        if not failed
        else f"{len(failed)} of {len(checks)} parts need attention"
    )
    return 1 if failed else 0


def cmd_demo(a: argparse.Namespace) -> int:
    from terminal.commands.demo import run_demo

    if a.state is None:
        return run_demo(a.state, a.config)
    held = state.lock(
        a.state, "canteen-terminal demo", "leave out --state: the demo runs in a temporary one"
    )
    try:
        return run_demo(a.state, a.config)
    finally:
        held.release()


# ---- wiring ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Canteen one-card terminal: offline QR and card decisions, ledger, tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _add_config(p)
    p.add_argument("qr", nargs="*", metavar="QR", help="QR texts (default: standard input)")
    p.set_defaults(func=cmd_verify_token)

    led = sub.add_parser("ledger", help="verify, export or summarise a ledger file (read-only)")
    lsub = led.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    p = lsub.add_parser(
        "verify",
        help="check the hash chain, signed checkpoints and SQLite integrity",
        description="Exit 0 when the ledger verifies; 1 naming the first bad entry otherwise.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key", metavar="HEX", help="pin the terminal's checkpoint public key")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_ledger_verify)
    p = lsub.add_parser("export", help="write every entry as CSV or JSON lines")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    p.add_argument("--output", "-o", metavar="OUT", help="write here instead of standard output")
    p.set_defaults(func=cmd_ledger_export)
    p = lsub.add_parser("stats", help="entries by kind and reason, amounts, unsynced count")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print as one JSON object")
    p.set_defaults(func=cmd_ledger_stats)

    lists = sub.add_parser("lists", help="install or show the trust lists in a state directory")
    lsub = lists.add_subparsers(dest="lists_command", required=True, metavar="ACTION")
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
    _add_config(p)
    p.set_defaults(func=cmd_lists_install)
    p = lsub.add_parser("show", help="version, issue time and size of each list")
    p.add_argument("--state", metavar="DIR")
    _add_config(p)
    p.set_defaults(func=cmd_lists_show)

    p = sub.add_parser("config", help="check a settings file")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = csub.add_parser("check", help="load a settings file and report the first problem")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_config_check)

    p = sub.add_parser(
        "run",
        help="run the terminal daemon (devices, decisions, screen) until SIGTERM",
        description="Run the terminal: camera and card reader, the decision worker, the screen "
        "and the status socket. systemd starts it (systemd/canteen-terminal.service).",
    )
    _add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "status",
        help="ask the running daemon how it is (exit 0 only when ready)",
        description="Ask the running daemon over its status socket in the state directory. "
        "With neither flag it looks where systemd's unit keeps it (/etc/canteen-terminal/"
        "terminal.toml, /var/lib/canteen-terminal), in ./state and in ./run-demo/state.",
    )
    _add_config(p)
    p.add_argument(
        "--state",
        metavar="DIR",
        help="state directory (default: from --config or the usual places)",
    )
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "selftest",
        help="check settings, disk, key, ledger, lists, clock, camera and reader; a line each",
        description="For technicians: checks each part and says what to fix. Changes nothing; "
        "exit 1 when a part fails.",
    )
    _add_config(p)
    p.add_argument("--state", metavar="DIR", help="state directory (default: from settings)")
    p.add_argument("--camera-timeout", type=float, default=5.0, metavar="S")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser(
        "demo",
        help="run the decision core on a small built-in canteen and print every decision",
    )
    p.add_argument("--state", metavar="DIR", help="keep the demo's state here (default: temp)")
    _add_config(p)
    p.set_defaults(func=cmd_demo)

    try:
        from terminal.commands.sync import add_sync_commands
    except ImportError:  # requests / APScheduler missing: the core commands still work
        pass
    else:
        add_sync_commands(sub)

    try:
        from terminal.commands.update import add_update_commands
    except ImportError:  # python-tuf missing: the core commands still work
        pass
    else:
        add_update_commands(sub)

    try:
        from terminal.commands.scan import add_scan_image
    except ImportError:  # the camera stack is optional for the core commands
        pass
    else:
        add_scan_image(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (
        config.ConfigError,
        trust.TrustError,
        ledger.LedgerError,
        state.StateError,
        CommandError,
    ) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
