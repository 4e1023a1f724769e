"""The lunch-rush scenario's canteen: the real terminal under test, and everything it starts with.

This module owns setting up the canteen before the lunch: the terminal's
settings (a real day of meal windows, the lunch priced by tier, the simulators
as its devices, a fast sync), its provisioning with the county and its first
trust lists, county IT's signed update repository (its first set: the trust
list, the roster, the revocations and the agency directory) and its /tuf
mount on the simulated county, the
daemon's log file; and running the real terminal daemon in a thread on the
simulated clock with a screen client that reads its server-sent events as a
page would (``RunningTerminal``, ``ScreenStream``). Everything listens on
127.0.0.1 in the run's folder. Once the daemon runs, nothing here reaches
into the terminal's files: the daemon is talked to as a device, a screen
client, or through the decision worker's job queue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hwsim.scenario.clock import LUNCH_CLOSES, LUNCH_OPENS, TIMEZONE, SimClock
from hwsim.scenario.plan import (
    CANTEEN_ID,
    PRICED_TIERS,
    SAME_TEXT_S,
    SKEW_S,
    TERMINAL_ID,
    WINDOW_S,
    Cast,
    ScenarioError,
)
from hwsim.wallet import Wallet
from protocol.agencies import OWN, VISITOR, Directory

# --- the terminal's settings -----------------------------------------------------------------


def settings_text(
    camera_url: str,
    reader_link: str,
    prices: dict[str, int],
    speed: float,
    own_units: tuple[str, ...],
    state_dir: str = "state",
) -> str:
    """The canteen's settings: a real day of meal windows, the simulators as devices, fast sync."""
    units = ", ".join(f'"{u}"' for u in own_units)
    meals = meals_text(prices)
    return f"""# Written by hw-sim scenario lunch-rush.
[terminal]
id = "{TERMINAL_ID}"
state_dir = "{state_dir}"
timezone = "{TIMEZONE}"
language = "en"

[canteen]
id = "{CANTEEN_ID}"
name = "Lunch-rush canteen"
units = [{units}]

{meals}
[tokens]
window_s = {WINDOW_S}
skew_s = {SKEW_S}

[display]
port = 0
staff_pin = "2468"

[daemon]
camera = true
reader = true

[camera]
source = "{camera_url}"
fps = 15
same_text_s = {SAME_TEXT_S}

[reader]
port = "{reader_link}"
kind = "rdm6300"
card_leave_s = 0.5

# Real seconds: the sync runs on the real clock of this computer.
[sync]
interval_s = 2
jitter_s = 1
deadline_s = 4
connect_timeout_s = 2
read_timeout_s = 2
backoff_base_s = 1
backoff_cap_s = 2
# The clock offset's noise (half a round trip) is multiplied by the speed: record the
# county's time when it moved as much as 2 s would at real speed.
offset_record_ms = {int(2000 * speed)}
"""


def meals_text(prices: dict[str, int]) -> str:
    """The canteen's meal windows and prices: in the local settings, and what county IT
    publishes to change the lunch prices. Lunch has a price for every tier (``prices``);
    breakfast and dinner only own and visitor, so every visiting tier pays the visitor
    price there."""
    tiers = "".join(f"price_{tier}_fen = {prices[tier]}\n" for tier in PRICED_TIERS)
    return f"""[[meals]]
name = "breakfast"
start = "07:00"
end = "09:00"
price_own_fen = 300
price_visitor_fen = 500

[[meals]]
name = "lunch"
start = "{LUNCH_OPENS:%H:%M}"
end = "{LUNCH_CLOSES:%H:%M}"
price_own_fen = {prices[OWN]}
price_visitor_fen = {prices[VISITOR]}
{tiers}
[[meals]]
name = "dinner"
start = "17:30"
end = "19:30"
price_own_fen = 800
price_visitor_fen = 1200
"""


# --- the terminal under test ----------------------------------------------------------------


class ScreenStream:
    """The screen's server-sent events as a page receives them: decisions, with arrival times."""

    def __init__(self, url: str, timeout_s: float = 600) -> None:
        self.decisions: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._resp = urllib.request.urlopen(url.rstrip("/") + "/events", timeout=timeout_s)
        self._thread = threading.Thread(target=self._read, name="scenario-screen", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event = ""
        try:
            for raw in self._resp:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "decision":
                    arrived = time.time()
                    with self._cond:
                        self.decisions.append((arrived, json.loads(line[5:])))
                        self._cond.notify_all()
        except (OSError, ValueError):
            return

    def wait_for(self, index: int, timeout_s: float) -> tuple[float, dict[str, Any]] | None:
        """Decision number ``index`` (from 0) with its arrival time, or None at the timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.decisions) > index, timeout_s):
                return None
            return self.decisions[index]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._resp.close()


class RunningTerminal:
    """The real daemon in a thread, on the simulated clock, and a screen client reading it."""

    def __init__(self, settings_path: Path, clock: SimClock) -> None:
        from terminal import config
        from terminal.service import daemon

        # config_path: an applied settings set is merged over this file, live.
        self.daemon = daemon.Daemon(
            config.load(settings_path),
            wall_ms=clock.now_ms,
            notifier=daemon.Notifier(""),
            config_path=str(settings_path),
        )
        self.thread = threading.Thread(
            target=self.daemon.run, kwargs={"install_signals": False}, name="scenario-daemon"
        )
        self.stream: ScreenStream | None = None
        self.read_index = 0  # decisions of this stream already matched

    def start(self, timeout_s: float = 60.0) -> RunningTerminal:
        self.thread.start()
        d = self.daemon
        wait_ready(
            lambda: (
                d.screen is not None
                and d.camera is not None
                and d.camera.health().up
                and d.reader is not None
                and d.reader.health().up
            ),
            timeout_s,
            "the terminal's screen, camera and card reader",
            lambda: not self.thread.is_alive(),
        )
        self.stream = ScreenStream(d.screen.url)
        return self

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        if self.stream is not None:
            self.stream.close()
        if self.thread.is_alive():
            raise ScenarioError("the terminal daemon did not stop within 30 s")


def wait_ready(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    failed: Callable[[], bool] = lambda: False,
) -> None:
    """Poll ``ready`` until it holds; ScenarioError once ``failed`` holds or time is up."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if failed():
            raise ScenarioError(f"gave up waiting for {what}: it stopped (see daemon.log)")
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out waiting for {what} (see daemon.log)")
        time.sleep(0.05)


# --- before the daemon starts ----------------------------------------------------------------


def install_lists(state_dir: Path, cast: Cast, now: int) -> None:
    """The terminal's first lists, as 'canteen-terminal lists install' loads them."""
    from terminal import state, trust

    store = trust.TrustStore(state.prepare(state_dir).trust)
    try:
        header = trust.ListHeader(1, now - 60, None)
        store.replace_issuers(trust.parse_issuer_keys(cast.population.trust_entries()), header, now)
        revoked = [credential_revocation(cast.cadre(sub).wallet) for sub in cast.revoked_at_start]
        store.replace_revocations(trust.parse_revocations(revoked), header, now)
        roster = trust.parse_roster_csv(cast.population.roster_csv())
        store.replace_roster(roster, header, now)
    finally:
        store.close()


def credential_revocation(wallet: Wallet) -> dict[str, Any]:
    return {"kind": "credential", "iss": wallet.iss, "cti": wallet.cti.hex()}


def init_updates(out: Path, county_data: Path, cast: Cast, directory: Directory, now: int) -> int:
    """County IT's update repository, before the county server starts (it serves it at /tuf
    and starts its timestamp refresher only if it exists): the root keys in a folder of
    their own, the first signed lists, the same the terminal is installed with, and the
    agency directory (only ever installed from a signed set). Returns the update set they
    make."""
    from county import updates as cu

    cu.init_repository(county_data, out / "county-root-keys-OFFLINE", now)
    trust_file = out / "published-trust.json"
    trust_file.write_text(json.dumps(cast.population.trust_entries()), encoding="utf-8")
    roster_file = out / "published-roster.csv"
    roster_file.write_text(cast.population.roster_csv(), encoding="utf-8")
    with cu.CountyRepository(county_data) as repo:
        pub = repo.publish_trust(trust_file, now)
        pub = repo.publish_roster(roster_file, now)
        if cast.revoked_at_start:
            pub = repo.revoke(
                [credential_revocation(cast.cadre(s).wallet) for s in cast.revoked_at_start], now
            )
        pub = repo.publish_directory(directory, now)
    (out / "published-directory.json").write_text(
        json.dumps(directory.as_json(), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return int(pub.snapshot_version)


def serve_updates(county: Any) -> None:
    """Make sure the county serves its update repository at /tuf.

    CountyServer mounts it on the app it builds; CountySim with a ``clock`` swaps in an
    app of its own (``create_app`` on the simulated clock) that has no /tuf mount, so the
    repository is mounted on that app here, once, before any terminal asks for it."""
    from county import updates as cu

    app = getattr(getattr(county.server, "config", None), "app", None)
    app = getattr(app, "app", app)  # hwsim.county's swappable holder, around the clock's app
    routes = getattr(app, "routes", None)
    if routes is None or not hasattr(app, "mount"):
        raise ScenarioError("cannot reach the simulated county's app to serve /tuf")
    if not any(getattr(r, "path", "") == "/tuf/metadata" for r in routes):
        cu.mount_repository(app, county.data)


def provision(county: Any, state_dir: Path, clock: SimClock) -> None:
    from county import updates as cu
    from terminal import state
    from terminal import updates as tu
    from terminal.ledger import load_or_create_signing_key
    from terminal.link.provision import provision as provision_terminal

    paths = state.prepare(state_dir)
    key = load_or_create_signing_key(paths.key)
    code = county.add_terminal(TERMINAL_ID, CANTEEN_ID, clock.now_ms())
    provision_terminal(paths.root, county.url, code, key.public_key().public_bytes_raw())
    # The county's update root, pinned as 'canteen-terminal provision' pins it.
    tu.pin_root(state_dir, (cu.RepoPaths(county.data).metadata / "1.root.json").read_bytes())


@contextlib.contextmanager
def daemon_log(path: Path) -> Iterator[None]:
    """The daemon's log lines go to a file in the run's folder, not over the report."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
        handler.close()
