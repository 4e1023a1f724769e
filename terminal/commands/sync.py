"""`canteen-terminal provision` and `canteen-terminal sync`: the sync commands.

This module owns the two commands that technicians and tests use to join a
terminal to the county server and to sync its ledger: ``provision`` (pin the
county CA from the code, get a client certificate) and ``sync`` (``--once``:
one sync now with a JSON summary line, exit 0 only when the server holds every
entry; without ``--once``: the scheduled sync in the foreground, one JSON line
per sync). It applies results to the ledger from the main thread only, as the
daemon's decision worker would, and holds no sync logic of its own
(terminal/sync.py and terminal/link/ do).
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from terminal import config, ledger, state
from terminal.commands import cli
from terminal.commands.cli import PROG, wall_ms
from terminal.core.clock import TrustedClock
from terminal.link.provision import CountyIdentity, load_identity, provision
from terminal.link.transport import Link, LinkError
from terminal.sync import (
    SyncClient,
    SyncError,
    SyncResult,
    SyncSchedule,
    apply_result,
)


def add_sync_commands(subparsers: Any) -> None:
    """Add `provision` and `sync` to the canteen-terminal command's subparsers."""
    p = subparsers.add_parser(
        "provision",
        help="join the county server: pin its CA from the code, get a client certificate",
        description="Make this terminal's TLS key, check the county CA against the fingerprint "
        "in the one-time code from 'canteen-county terminal add', trade a certificate request "
        "for a client certificate, and store the CA, the certificate and the county's time key "
        "in the state directory.",
    )
    p.add_argument("--state", required=True, metavar="DIR", help="the terminal's state directory")
    p.add_argument("--server", required=True, metavar="URL", help="https://HOST:PORT of the county")
    p.add_argument("--code", required=True, metavar="CODE", help="the one-time provisioning code")
    p.set_defaults(func=cmd_provision)

    p = subparsers.add_parser(
        "sync",
        help="upload the ledger to the county server (--once: one sync, JSON summary)",
        description="With --once: sync now and print one JSON line (entries sent, acknowledged "
        "mark, errors); exit 0 only when the county server holds every entry of the ledger, 1 "
        "otherwise. Without --once: run the scheduled sync in the foreground (interval, jitter, "
        "backoff from [sync] in the settings), one JSON line per sync, until interrupted.",
    )
    p.add_argument("--state", required=True, metavar="DIR", help="the terminal's state directory")
    p.add_argument("--ledger", metavar="FILE", help="the ledger (default: DIR/ledger.sqlite)")
    p.add_argument("--once", action="store_true", help="one sync now, then exit")
    p.add_argument("--server", metavar="URL", help="override the server stored at provisioning")
    cli.add_config(p, "settings file (TOML) over the embedded defaults; its [sync] section is used")
    p.set_defaults(func=cmd_sync)


def cmd_provision(
    a: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        paths = state.prepare(a.state)
        # New keys and a new identity under a running daemon would not be the ones it uses.
        held = state.lock(paths.root, "canteen-terminal provision", "provision another DIR")
        try:
            key = ledger.load_or_create_signing_key(paths.key)
            identity = provision(paths.root, a.server, a.code, key.public_key().public_bytes_raw())
        finally:
            held.release()
        existing = None
        if paths.ledger.exists():
            from terminal.sync import LedgerReader

            reader = LedgerReader(paths.ledger)
            try:
                existing = reader.terminal_id()
            finally:
                reader.close()
    except (LinkError, state.StateError, ledger.LedgerError) as exc:
        return cli.error(exc, err)
    print(
        json.dumps(
            {
                "terminal": identity.terminal_id,
                "canteen": identity.canteen,
                "server": identity.server,
                "ca_fingerprint": identity.ca_fingerprint,
            }
        ),
        file=out,
    )
    pinned = _pin_county_root(paths.root, identity)
    print(f"{PROG}: {pinned}", file=err)
    if existing is not None and existing != identity.terminal_id:
        print(
            f"{PROG}: warning: the ledger in {paths.root} belongs to terminal {existing!r}, but "
            f"the county registered {identity.terminal_id!r}: the server will refuse it",
            file=err,
        )
    return 0


def _pin_county_root(state_dir: Path, identity: CountyIdentity) -> str:
    """Pin the county's signed-update root over the connection just pinned by the CA.

    A county without an update repository yet is no error: the root can be pinned
    later with 'canteen-terminal update pin-root'.
    """
    try:
        from terminal import updates
    except ImportError:
        return "signed updates are not installed: no update root pinned"
    base = identity.server.rstrip("/") + "/tuf/metadata/"
    ca = x509.load_pem_x509_certificate(identity.ca_file.read_bytes())
    link = Link(
        ca,
        client_cert=(str(identity.cert_file), str(identity.key_file)),
        county_time=lambda: identity.provisioned_server_ms,
    )
    try:
        with link:
            for name in ("root.json", "1.root.json"):
                status, data = link.exchange(
                    "GET",
                    base + name,
                    time.monotonic() + 10,
                    max_bytes=updates.UpdateLimits().root_max_bytes,
                )
                if status == 200:
                    digest = updates.pin_root(state_dir, data)
                    return f"county update root pinned (sha256 {digest[:16]}...)"
    except (LinkError, updates.UpdateError) as exc:
        return f"update root not pinned ({exc}); pin it with 'canteen-terminal update pin-root'"
    return "the county publishes no signed updates yet: pin its root later with 'update pin-root'"


def _open_for_apply(ledger_path: Path, state_dir: Path, terminal_id: str) -> ledger.Ledger:
    """The ledger as its writer, with the state directory's pinned key: the one the county
    registered at provisioning, never a second key beside the file."""
    return state.open_ledger(ledger_path, state.StatePaths(state_dir).key, terminal_id, wall_ms())


def cmd_sync(a: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    held: state.StateLock | None = None
    try:
        # A second writer beside the daemon would mark entries and record county times
        # on its own terms: the daemon syncs by itself.
        if Path(a.state).is_dir():  # a mistyped DIR is not created, only not provisioned
            held = state.lock(
                a.state,
                "canteen-terminal sync",
                "let the daemon sync by itself ('canteen-terminal status' shows its last sync)",
            )
        identity = load_identity(a.state)
        loaded = config.load(a.config)
        settings = config.sync_settings(loaded)
        ledger_path = Path(a.ledger) if a.ledger else state.StatePaths(Path(a.state)).ledger
        if not ledger_path.is_file():
            raise SyncError(f"no ledger at {ledger_path}: nothing to sync")
        client = SyncClient(ledger_path, identity, settings, server=a.server)
        book = _open_for_apply(ledger_path, Path(a.state), identity.terminal_id)
    except (LinkError, config.ConfigError, state.StateError, ledger.LedgerError) as exc:
        if held is not None:
            held.release()
        return cli.error(exc, err)
    clock = TrustedClock(
        book.last_time_ms(),
        loaded.clock_fault_tolerance_s * 1000,
        loaded.clock_earliest_s * 1000,
    )
    try:
        if a.once:
            return _sync_once(client, book, clock, settings.deadline_s, out, Path(a.state))
        return _sync_forever(client, book, clock, out, Path(a.state))
    except (ledger.LedgerError, state.StateError) as exc:
        return cli.error(exc, err)
    finally:
        book.close()
        if held is not None:
            held.release()


def _sync_once(
    client: SyncClient,
    book: ledger.Ledger,
    clock: TrustedClock,
    deadline_s: float,
    out: TextIO,
    state_dir: Path,
) -> int:
    deadline = time.monotonic() + deadline_s
    total: dict[str, Any] = {}
    sent = batches = marked = 0
    # A recorded county time is itself a new entry: sync again (within the
    # same deadline) so that it is acknowledged too.
    for _ in range(3):
        result = client.sync_once(deadline)
        applied = apply_result(book, clock, result, wall_ms(), client.settings)
        state.record_acked(state_dir, book)  # the hash the county holds, checked at start
        sent += result.sent
        batches += result.batches
        marked += applied.marked
        total = result.summary()
        if result.error is not None or applied.time_entry is None:
            break
    unacked, _fen = book.unsynced()
    # Complete only when this sync itself heard the server acknowledge everything.
    complete = unacked == 0 and not total["errors"]
    total.update(
        {
            "sent": sent,
            "batches": batches,
            "marked": marked,
            "unacked": unacked,
            "last_seq": book.last_seq(),
            "complete": complete,
        }
    )
    print(json.dumps(total, ensure_ascii=False), file=out, flush=True)
    return 0 if complete else 1


def _sync_forever(
    client: SyncClient, book: ledger.Ledger, clock: TrustedClock, out: TextIO, state_dir: Path
) -> int:
    results: queue.Queue[SyncResult] = queue.Queue()
    schedule = SyncSchedule(client, client.settings, results.put)
    stop = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    schedule.start(first_delay_s=0.0)
    try:
        while not stop:
            try:
                result = results.get(timeout=0.2)
            except queue.Empty:
                continue
            # Applied here, on the one thread that writes the ledger.
            applied = apply_result(book, clock, result, wall_ms(), client.settings)
            state.record_acked(state_dir, book)
            line = result.summary()
            line.update(
                {
                    "marked": applied.marked,
                    "time_recorded": applied.time_entry is not None,
                    # When the sync ended, not when its line is printed: applying a result
                    # on a loaded machine may take longer than the schedule's interval.
                    "monotonic": round(result.ended_mono, 3),
                    "runs": schedule.stats.runs,
                }
            )
            print(json.dumps(line, ensure_ascii=False), file=out, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        # Do not wait for a sync in flight: its result would not be applied anyway.
        schedule.stop(wait=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the sync commands alone (``python -m terminal.commands.sync``)."""
    return cli.standalone(add_sync_commands, argv)


if __name__ == "__main__":
    sys.exit(main())
