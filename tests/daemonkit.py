"""Helpers that set up a real terminal for daemon tests: settings, lists, a card reader pty.

It never waits by itself (`wait_for` is in conftest.py); it starts a daemon only in
`updating_daemon` (a daemon behind a county with signed updates), and stops it there.

The daemon reads the wall clock, so the settings put the canteen in a time zone
where it is midday now and one meal window spans the whole day: tests then never
depend on the hour at which they run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet

from terminal import state, trust

ISSUER = Issuer("hn-daemon", key_from_seed("daemon-test-issuer"))
CARD_UID = bytes.fromhex("0a1b2c3d4e")  # RDM6300: version byte + 32-bit id
CARD_CADRE = "K1"
PIN = "2468"
# A [sync] section for a daemon with a county in the test: a sync every second.
SYNC = """
[sync]
interval_s = 1
jitter_s = 0
deadline_s = 5
connect_timeout_s = 2
read_timeout_s = 2
backoff_base_s = 1
backoff_cap_s = 2
"""
# The same for the update tests: the default timeouts and a 10 s deadline.
UPDATES_SYNC = """
[sync]
interval_s = 1
jitter_s = 0
deadline_s = 10
backoff_base_s = 1
backoff_cap_s = 2
"""


def midday_zone() -> str:
    """An Etc/GMT zone in which the local hour now is about 12."""
    hour = dt.datetime.now(dt.UTC).hour
    offset = 12 - hour  # local = UTC + offset
    offset = max(-12, min(14, offset))
    # Etc/GMT-8 is UTC+8: the sign is inverted in these names.
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


def write_settings(
    tmp: Path,
    *,
    reader_port: str | None,
    camera_source: str | None,
    daemon_options: str = "",
    extra: str = "",
) -> Path:
    path = tmp / "terminal.toml"
    camera = f'[camera]\nsource = "{camera_source}"\nfps = 10\n' if camera_source else ""
    reader = f'[reader]\nport = "{reader_port}"\nkind = "rdm6300"\n' if reader_port else ""
    path.write_text(
        f"""
[terminal]
id = "t-daemon"
state_dir = "state"
timezone = "{midday_zone()}"
language = "en"

[canteen]
id = "c-daemon"
name = "Test canteen"
units = ["own"]

[[meals]]
name = "allday"
start = "00:00"
end = "23:59"
price_own_fen = 1000
price_visitor_fen = 1500

[display]
port = 0
staff_pin = "{PIN}"

[daemon]
camera = {"true" if camera_source else "false"}
reader = {"true" if reader_port else "false"}
{daemon_options}

{camera}
{reader}
{extra}
""",
        encoding="utf-8",
    )
    return path


def install_lists(state_dir: Path, now: int | None = None) -> None:
    now = now if now is not None else int(time.time())
    paths = state.prepare(state_dir)
    store = trust.TrustStore(paths.trust)
    header = trust.ListHeader(1, now - 60, None)
    store.replace_issuers(trust.parse_issuer_keys([ISSUER.trust_entry()]), header, now)
    store.replace_revocations([], header, now)
    card = trust.RosterCard(CARD_UID, ISSUER.iss, CARD_CADRE, "own", "Card holder", "active")
    store.replace_roster([card], header, now)
    store.close()


def install_sim_lists(folder: Path, state_dir: Path, now: int) -> None:
    """What 'canteen-terminal lists install' does with hw-sim issuer's files in ``folder``."""
    store = trust.TrustStore(state.prepare(state_dir).trust)
    try:
        entries, header = trust.split_list(trust.read_json_file(folder / "trust.json", "t"), "t")
        store.replace_issuers(trust.parse_issuer_keys(entries), header, now)
        entries, header = trust.split_list(trust.read_json_file(folder / "revoked.json", "r"), "r")
        store.replace_revocations(trust.parse_revocations(entries), header, now)
        roster = trust.parse_roster_csv((folder / "roster.csv").read_text(encoding="utf-8"))
        store.replace_roster(roster, trust.ListHeader(1, now - 60, None), now)
    finally:
        store.close()


def wallet(sub: str) -> Wallet:
    return make_wallet(ISSUER, sub, "own", f"Cadre {sub}", now=int(time.time()) - 3600)


def card_gone(reader: Any, uid: bytes) -> bool:
    """True once the card reader no longer counts ``uid`` as still on it: its card_leave_s
    has passed since the last sighting, so the next swipe is a new presentation."""
    with reader._presence_lock:
        return not reader._presence.holds(uid, reader._clock())


def rdm6300_frame(uid5: bytes) -> bytes:
    """STX, 10 hex digits (version + id), 2 hex digits of XOR checksum, ETX."""
    check = 0
    for b in uid5:
        check ^= b
    return b"\x02" + uid5.hex().upper().encode() + f"{check:02X}".encode() + b"\x03"


class ReaderPty:
    """The far end of a card reader: the daemon opens the slave path, we write frames."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the line stays up until close()

    def swipe(self, uid5: bytes = CARD_UID) -> None:
        os.write(self.master, rdm6300_frame(uid5))

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


def ledger_entries(book: Path) -> list[dict[str, Any]]:
    """Every entry of the ledger at ``book``, as `canteen-terminal ledger export` writes them."""
    from terminal import ledger

    out = book.with_suffix(".jsonl")
    with open(out, "w", encoding="utf-8") as f:
        ledger.export_file(book, "jsonl", f)
    return [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]


@dataclass
class UpdatingDaemon:
    """A running daemon of terminal t-daemon at canteen c-daemon, its card reader pty and the
    county whose signed updates (trust list and roster published at ``now``) it follows."""

    county: Any  # countykit.RunningCounty
    reader: ReaderPty
    daemon: Any  # terminal.service.daemon.Daemon
    state_dir: Path
    now: int

    @property
    def book(self) -> Path:
        return self.state_dir / "ledger.sqlite"


@contextlib.contextmanager
def updating_daemon(tmp_path: Path, roster_csv: str) -> Iterator[UpdatingDaemon]:
    """Start a county with signed updates (ISSUER's trust list and ``roster_csv``, published
    before the daemon starts), provision a terminal, pin the county's root, and run its
    daemon in a thread; everything is stopped on the way out. It does not wait for the
    daemon: the test waits on what it needs (conftest.wait_for)."""
    from countykit import make_county, provision_terminal

    from county import updates as cu
    from terminal import config
    from terminal.service import daemon

    now = int(time.time())
    county = make_county(tmp_path)
    cu.init_repository(county.data, tmp_path / "root-keys", now)
    (tmp_path / "trust.json").write_text(json.dumps([ISSUER.trust_entry()]), encoding="utf-8")
    (tmp_path / "roster.csv").write_text(roster_csv, encoding="utf-8")
    with cu.CountyRepository(county.data) as repo:
        repo.publish_trust(tmp_path / "trust.json", now)
        repo.publish_roster(tmp_path / "roster.csv", now)
    county.start()
    reader = ReaderPty()
    settings_path = write_settings(
        tmp_path, reader_port=reader.path, camera_source=None, extra=UPDATES_SYNC
    )
    state_dir = tmp_path / "state"
    provision_terminal(county, state_dir, "t-daemon", "c-daemon")
    county.pin_root(state_dir)
    d = daemon.Daemon(
        config.load(settings_path), notifier=daemon.Notifier(""), config_path=str(settings_path)
    )
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        yield UpdatingDaemon(county, reader, d, state_dir, now)
    finally:
        d.request_stop()
        thread.join(15)
        county.stop()
        reader.close()
