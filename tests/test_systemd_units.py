"""The systemd units and the udev rule: systemd-analyze verify, the security exposure, syntax.

``systemd-analyze verify`` runs against a scratch root that holds a stub of the
installed command (/opt/canteen-terminal/.venv/bin/canteen-terminal) and the
host's unit files, so the check does not depend on what is installed here.
``systemd-analyze security --offline=true`` scores canteen-terminal.service,
which must stay at 2.0 or lower (issue 6).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
TERMINAL_UNIT = UNITS / "canteen-terminal.service"
KIOSK_UNIT = UNITS / "canteen-kiosk.service"
RULES = ROOT / "config" / "99-canteen-devices.rules"
INSTALLED_COMMAND = "opt/canteen-terminal/.venv/bin/canteen-terminal"
EXPOSURE_LIMIT = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is missing: apt-get install systemd"
)


def host_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "multi-user.target").exists():
            return candidate
    pytest.skip("no systemd unit directory on this machine: apt-get install systemd")


def scratch_root(tmp_path: Path) -> Path:
    """A root with the host's top-level unit files (copied, links resolved) and a stub command."""
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for entry in host_unit_dir().iterdir():
        # Only plain unit files: the .wants directories hold links that point outside the root.
        if entry.is_file() and not entry.name.startswith("."):
            shutil.copyfile(entry, units / entry.name)
    stub = root / INSTALLED_COMMAND
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return root


def verify(
    root: Path | None, unit: Path, *, user: bool = False
) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on ``unit``: a system unit inside ``root``, a user unit in place.

    The user manager cannot take --root (systemd 252), and needs a runtime directory.
    """
    assert ANALYZE is not None
    env = dict(os.environ)
    command = [ANALYZE, "--user" if user else "--system", "verify", "--man=no", "--generators=no"]
    if root is not None:
        where = root / "etc/systemd/system"
        where.mkdir(parents=True, exist_ok=True)
        installed = where / unit.name
        shutil.copyfile(unit, installed)
        command += [f"--root={root}", str(installed)]
    else:
        command.append(str(unit))
    if user:
        runtime = unit.parent / "run-user"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@needs_analyze
def test_the_terminal_unit_verifies(tmp_path: Path) -> None:
    result = verify(scratch_root(tmp_path), TERMINAL_UNIT)
    assert result.returncode == 0 and complaints(result) == [], complaints(result)


@needs_analyze
def test_verify_would_notice_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "canteen-terminal.service"
    text = TERMINAL_UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    broken.write_text(text)
    result = verify(scratch_root(tmp_path), broken)
    assert any("ProtectSystm" in line for line in complaints(result)), complaints(result)
    root = scratch_root(tmp_path / "missing")
    (root / INSTALLED_COMMAND).unlink()
    result = verify(root, TERMINAL_UNIT)
    assert result.returncode != 0 and "is not executable" in result.stderr


@needs_analyze
def test_the_kiosk_user_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / KIOSK_UNIT.name
    shutil.copyfile(KIOSK_UNIT, unit)
    result = verify(None, unit, user=True)
    assert result.returncode == 0 and complaints(result) == [], complaints(result)
    unit.write_text(KIOSK_UNIT.read_text().replace("Restart=always", "Restrt=always"))
    assert any("Restrt" in line for line in complaints(verify(None, unit, user=True)))


@needs_analyze
def test_the_terminal_unit_exposure_is_at_most_2(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(TERMINAL_UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"canteen-terminal.service exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT, result.stdout


def test_the_terminal_unit_keeps_the_required_settings() -> None:
    text = TERMINAL_UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line)
    )
    required = {
        "Type": "notify",
        "Restart": "always",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "StateDirectory": "canteen-terminal",
        "ConfigurationDirectory": "canteen-terminal",
        "SupplementaryGroups": "dialout video",
    }
    for key, value in required.items():
        assert settings.get(key) == value, key
    assert settings["ExecStart"].startswith("/" + INSTALLED_COMMAND + " run --config ")
    for key in ("WatchdogSec", "StartLimitIntervalSec", "StartLimitBurst"):
        assert key in settings
    allowed = re.findall(r"^DeviceAllow=(\S+) (\w+)$", text, re.M)
    assert {name for name, _ in allowed} <= {
        "char-ttyUSB",
        "char-ttyACM",
        "char-ttyAMA",
        "char-video4linux",
    }
    assert "SystemCallFilter=@system-service" in text


RULE_KEY = re.compile(
    r'^(?P<key>[A-Z_]+)(\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|=|:=)"(?P<value>[^"]*)"$'
)
MATCH_KEYS = {"SUBSYSTEM", "KERNEL", "ATTR", "ATTRS", "DRIVERS", "ENV"}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "TAG"}


def test_the_udev_rule_gives_the_two_stable_names() -> None:
    names: dict[str, int] = {}
    for number, line in enumerate(RULES.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs = [p.strip() for p in line.split(", ")]
        for pair in pairs:
            m = RULE_KEY.match(pair)
            assert m, f"line {number}: cannot read {pair!r}"
            key, op = m["key"], m["op"]
            if op in ("==", "!="):
                assert key in MATCH_KEYS, f"line {number}: {key} is not a match key"
            else:
                assert key in ASSIGN_KEYS, f"line {number}: {key} cannot be assigned"
            if key == "SYMLINK":
                names[m["value"]] = names.get(m["value"], 0) + 1
        assert 'MODE="0660"' in pairs, f"line {number}: devices stay group-only"
    assert set(names) == {"canteen-reader", "canteen-camera"}
    ids = re.findall(r'ATTRS\{idVendor\}=="(\w+)", ATTRS\{idProduct\}=="(\w+)"', RULES.read_text())
    assert {("1a86", "7523"), ("10c4", "ea60"), ("0403", "6001")} <= set(ids)
