"""`canteen-terminal run`, `status` and `selftest`: the service, started, asked and checked.

This module owns the three service commands: ``run`` (reconcile the applied
update set, then run the daemon until SIGTERM), ``status`` (ask the running
daemon over its status socket, wherever it is, and print its answer in the
canteen's local time) and ``selftest`` (a line per part with what to fix). The
service itself lives in terminal/service/; nothing here holds what the daemon
would need.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from terminal import config, state, trust
from terminal.commands import cli


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
    from terminal.service import status

    places = _status_places(a)
    tried = []
    for root in places:
        try:
            return status.ask_status(root)
        except PermissionError:
            tried.append(f"{root / status.STATUS_SOCKET} (permission denied: use sudo)")
        except (OSError, ValueError) as exc:
            tried.append(f"{root / status.STATUS_SOCKET} ({getattr(exc, 'strerror', exc)})")
    where = "; ".join(tried)
    if a.state or a.config:
        raise cli.CommandError(
            f"no running terminal answers at {where}; "
            "start it with `systemctl start canteen-terminal` or `canteen-terminal run`"
        )
    raise cli.CommandError(
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
    for line in status_lines(health, cli.wall_ms()):
        print(line)
    return 0 if health["state"] == "ready" else 1


def cmd_selftest(a: argparse.Namespace) -> int:
    from terminal.service import selftest

    settings = config.load(a.config)
    if a.state:
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


def add_commands(sub: Any) -> None:
    """Add `run`, `status` and `selftest` to canteen-terminal."""
    p = sub.add_parser(
        "run",
        help="run the terminal daemon (devices, decisions, screen) until SIGTERM",
        description="Run the terminal: camera and card reader, the decision worker, the screen "
        "and the status socket. systemd starts it (systemd/canteen-terminal.service).",
    )
    cli.add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "status",
        help="ask the running daemon how it is (exit 0 only when ready)",
        description="Ask the running daemon over its status socket in the state directory. "
        "With neither flag it looks where systemd's unit keeps it (/etc/canteen-terminal/"
        "terminal.toml, /var/lib/canteen-terminal), in ./state and in ./run-demo/state.",
    )
    cli.add_config(p)
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
    cli.add_config(p)
    p.add_argument("--state", metavar="DIR", help="state directory (default: from settings)")
    p.add_argument("--camera-timeout", type=float, default=5.0, metavar="S")
    p.set_defaults(func=cmd_selftest)
