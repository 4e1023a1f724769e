"""Self-test for technicians: one line per part, each with what to fix.

This module owns `canteen-terminal selftest`: it checks the settings, the state
directory and free disk, the terminal's key, the ledger, the trust lists, the
clock, the camera, the card reader and the county server (over mTLS, when the
terminal is provisioned), without changing anything a running daemon relies on: the ledger is
opened read-only, the devices are opened briefly and released. It never sells,
never writes the ledger and never installs anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terminal import config, ledger, state, trust
from terminal.core.clock import TrustedClock

OK = "ok"
WARN = "warn"
FAIL = "fail"


@dataclass(frozen=True)
class Check:
    part: str
    result: str  # OK, WARN or FAIL
    detail: str  # what was seen and, unless OK, what to do

    def line(self) -> str:
        return f"{self.result.upper():4} {self.part:<10} {self.detail}"


def _state(settings: config.Settings, min_free_mb: int) -> list[Check]:
    root = Path(settings.state_dir)
    if not root.exists():
        return [Check("state", WARN, f"{root} does not exist yet; the first start creates it")]
    if not os.access(root, os.W_OK):
        return [
            Check("state", FAIL, f"{root} is not writable: fix its owner (systemd: StateDirectory)")
        ]
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize / (1024 * 1024)
    disk = Check("disk", OK, f"{free:.0f} MB free in {root}")
    if free < min_free_mb:
        disk = Check(
            "disk",
            FAIL,
            f"only {free:.0f} MB free (selling stops below {min_free_mb} MB): "
            "free space or replace the SD card",
        )
    elif free < 4 * min_free_mb:
        disk = Check("disk", WARN, f"{free:.0f} MB free: plan to free space soon")
    return [Check("state", OK, f"{root} is writable"), disk]


def _key(settings: config.Settings) -> Check:
    path = Path(settings.state_dir) / state.KEY_FILE
    if not path.exists():
        return Check("key", WARN, f"{path} is missing; the first start creates it")
    try:
        ledger.load_or_create_signing_key(path)
    except ledger.LedgerError as exc:
        return Check("key", FAIL, f"{exc}; restore the key from the backup or re-provision")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("key", WARN, f"{path} has mode {mode:o}; run chmod 600 on it")
    return Check("key", OK, f"{path} loads")


def _ledger(settings: config.Settings) -> tuple[Check, int]:
    path = Path(settings.state_dir) / state.LEDGER_FILE
    if not path.exists():
        return Check("ledger", WARN, f"{path} is missing; the first start creates it"), 0
    report = ledger.verify_file(path)
    if not report.ok:
        return (
            Check(
                "ledger",
                FAIL,
                f"entry {report.first_bad_seq}: {report.problem}; "
                "keep the file as evidence and call county IT",
            ),
            0,
        )
    stats = ledger.stats_file(path)
    last = int(stats.get("last_ms") or 0)
    return Check(
        "ledger",
        OK,
        f"{report.entries} entries verify, {stats.get('unacked', '?')} not yet acknowledged",
    ), last


def _lists(settings: config.Settings, now_s: int) -> list[Check]:
    path = Path(settings.state_dir) / state.TRUST_FILE
    if not path.exists():
        return [
            Check(
                "lists",
                FAIL,
                "no trust lists installed: provision the terminal or run "
                "`canteen-terminal lists install`",
            )
        ]
    store = trust.TrustStore(path)
    checks = []
    try:
        limits = {
            trust.ISSUERS: None,
            trust.REVOCATIONS: settings.lists.revocation_hard_s,
            trust.ROSTER: settings.lists.roster_hard_s,
        }
        for name, hard in limits.items():
            info = store.list_info(name)
            if info is None:
                checks.append(Check(name, FAIL, "not installed: connect to the county server"))
                continue
            age = now_s - info.issued_at
            text = f"version {info.version}, {info.count} entries, {age // 3600} h old"
            if hard is not None and age > hard:
                checks.append(
                    Check(
                        name,
                        FAIL,
                        f"{text}: too old, payments of this kind stop; "
                        "connect to the county server",
                    )
                )
            elif name == trust.REVOCATIONS and age > settings.lists.revocation_soft_s:
                checks.append(Check(name, WARN, f"{text}: caps are lowered until it is fresh"))
            else:
                checks.append(Check(name, OK, text))
    finally:
        store.close()
    return checks


def _clock(settings: config.Settings, wall_ms: int, floor_ms: int) -> Check:
    # The same clock and the same fault rule as the decision worker's (terminal/core/clock.py).
    clock = TrustedClock(
        floor_ms, settings.clock_fault_tolerance_s * 1000, settings.clock_earliest_s * 1000
    )
    if not clock.plausible(wall_ms):
        return Check(
            "clock",
            FAIL,
            "the system clock is before the earliest plausible date: "
            "connect the network (NTP) or set the time",
        )
    if clock.wall_behind(wall_ms):
        behind = (floor_ms - wall_ms) / 1000
        return Check(
            "clock",
            FAIL,
            f"the system clock is {behind:.0f} s behind the ledger's newest "
            "entry: the terminal uses the ledger's time; fix NTP",
        )
    return Check("clock", OK, "the system clock is plausible and not behind the ledger")


def _camera(settings: config.Settings, timeout_s: float) -> Check:
    try:
        from terminal.scanner.camera import URL, V4L2, open_capture, source_kind
        from terminal.scanner.qr import make_decoder
        from terminal.service.settings import camera_settings
    except ImportError as exc:
        return Check(
            "camera", FAIL, f"the camera stack cannot load ({exc}); reinstall the terminal"
        )
    cam = camera_settings(settings)
    try:
        make_decoder(cam.decoder)
    except Exception as exc:  # a missing shared library shows up here
        return Check("camera", FAIL, f"decoder {cam.decoder}: {exc}")
    try:
        cap, described = open_capture(cam)
    except Exception as exc:
        return Check("camera", FAIL, f"{cam.source}: {exc}; check the cable and the udev name")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok, frame = cap.read()
            if ok and frame is not None:
                h, w = frame.shape[:2]
                if source_kind(cam.source) not in (V4L2, URL):
                    # A file or folder plays at the pace the settings ask: nothing to measure.
                    return Check("camera", OK, f"{described}: a {w}x{h} frame read")
                rate = _frame_rate(cap, min(RATE_S, max(0.5, deadline - time.monotonic())))
                return Check(
                    "camera",
                    OK if rate is not None else WARN,
                    f"{described}: a {w}x{h} frame read; "
                    + (
                        f"{rate:.1f} frames/s measured (settings ask {cam.fps})"
                        if rate is not None
                        else "then no more frames: check the light and the cable"
                    ),
                )
        return Check(
            "camera",
            FAIL,
            f"{described}: opened but no frame in {timeout_s:.0f} s; replug the camera",
        )
    finally:
        cap.release()


RATE_S = 2.0  # how long the camera check counts frames after the first


def _frame_rate(cap: Any, seconds: float) -> float | None:
    """Frames per second the camera delivers, counted for ``seconds``; None if fewer than 2."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ok, frame = cap.read()
        if ok and frame is not None:
            times.append(time.monotonic())
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def _reader(settings: config.Settings) -> Check:
    try:
        import serial

        from terminal.service.settings import reader_settings
    except ImportError as exc:
        return Check("reader", FAIL, f"pyserial cannot load ({exc}); reinstall the terminal")
    rs = reader_settings(settings)
    try:
        port = serial.serial_for_url(
            rs.port, baudrate=rs.effective_baudrate, timeout=0.2, exclusive=rs.exclusive
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        text = str(exc)
        if "lock" in text.lower() or "busy" in text.lower():
            return Check("reader", OK, f"{rs.port} is in use (by the running terminal, usually)")
        return Check("reader", FAIL, f"{rs.port}: {text}; check the cable and the udev name")
    port.close()
    return Check("reader", OK, f"{rs.port} opens at {rs.effective_baudrate} baud ({rs.kind})")


def _county(settings: config.Settings, timeout_s: float) -> Check:
    try:
        from terminal import sync
        from terminal.link.provision import load_identity
        from terminal.link.transport import LinkError, NotProvisioned
        from terminal.service.settings import sync_settings
    except ImportError as exc:
        return Check("county", FAIL, f"the sync stack cannot load ({exc}); reinstall the terminal")
    try:
        identity = load_identity(settings.state_dir)
    except NotProvisioned as exc:
        return Check("county", WARN, f"{exc}; until then the terminal works offline only")
    try:
        client = sync.SyncClient(
            Path(settings.state_dir) / state.LEDGER_FILE, identity, sync_settings(settings)
        )
        protocol = client.check_reachable(timeout_s)
    except LinkError as exc:
        return Check(
            "county",
            FAIL,
            f"{identity.server}: {exc}; check the network, or call "
            "county IT if the certificate is refused",
        )
    return Check("county", OK, f"{client.server} answers over mTLS (protocol {protocol})")


def run_checks(
    settings: config.Settings,
    *,
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    camera_timeout_s: float = 5.0,
    parts: tuple[str, ...] = (
        "state",
        "key",
        "ledger",
        "lists",
        "clock",
        "camera",
        "reader",
        "county",
    ),
) -> list[Check]:
    from terminal.service.settings import daemon_settings

    dset = daemon_settings(settings)
    now = wall_ms()
    checks: list[Check] = []
    floor = 0
    if "state" in parts:
        checks += _state(settings, dset.min_free_mb)
    if "key" in parts:
        checks.append(_key(settings))
    if "ledger" in parts:
        check, floor = _ledger(settings)
        checks.append(check)
    if "lists" in parts:
        checks += _lists(settings, now // 1000)
    if "clock" in parts:
        checks.append(_clock(settings, now, floor))
    if "camera" in parts and dset.camera:
        checks.append(_camera(settings, camera_timeout_s))
    if "reader" in parts and dset.reader:
        checks.append(_reader(settings))
    if "county" in parts:
        checks.append(_county(settings, camera_timeout_s))
    return checks
