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
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
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


# ---- the kiosk unit's command, run with the real Chromium (headless) ----

CHROMIUM = Path("/usr/bin/chromium")


def kiosk_command() -> str:
    """The shell script of the kiosk unit's ExecStart, as systemd hands it to /bin/sh.

    Continuation lines are joined and ``$$`` becomes ``$``; the unit's other variables
    are left for the shell, which reads them from the same environment systemd would.
    """
    text = KIOSK_UNIT.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[:2] == ["/bin/sh", "-c"]
    return argv[2].replace("$$", "$")


def run_kiosk(tmp_path: Path, url: str, page: Path) -> subprocess.Popen[str]:
    """The kiosk unit's command, with ``chromium`` a wrapper that adds headless flags."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "chromium"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# No Wayland here: headless, and the rest of the unit's flags as they are.\n"
        'for a; do shift; [ "$a" = --ozone-platform=wayland ] || set -- "$@" "$a"; done\n'
        f'exec {CHROMIUM} --headless=new --no-sandbox --disable-gpu "$@"\n'
    )
    wrapper.chmod(0o755)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "XDG_RUNTIME_DIR": str(runtime),
        "CANTEEN_SCREEN_URL": url,
        "CANTEEN_KIOSK_PAGE": str(page),
    }
    return subprocess.Popen(
        ["/bin/sh", "-c", kiosk_command()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="apt-get install chromium")
@pytest.mark.parametrize("readable", [True, False])
def test_the_kiosk_unit_opens_the_start_page_and_gets_a_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    from displaykit import Kit

    kiosk_dir = tmp_path / "kiosk"
    kiosk_dir.mkdir(mode=0o750)
    monkeypatch.setenv("CANTEEN_KIOSK_DIR", str(kiosk_dir))
    kit = Kit(tmp_path / "state")
    try:
        kit.ready()
        page = kit.screen.kiosk_page
        assert page is not None
        first = page.read_text()
        # Not readable: as for a desktop user left out of group canteen-kiosk.
        proc = run_kiosk(tmp_path, kit.url, page if readable else kiosk_dir / "nothing.html")
        try:
            deadline = time.monotonic() + 60
            while True:
                streams = list(kit.screen._streams)
                if streams:
                    break
                assert proc.poll() is None, "the kiosk command exited"
                assert time.monotonic() < deadline, "Chromium never opened the screen's events"
                time.sleep(0.1)
        finally:
            err = stop(proc)
        # With the start page: the token was used (the page holds a new one) and the page's
        # event stream has the kiosk session. Without: the plain page, and a line that says
        # what to fix.
        assert [s.kiosk for s in streams] == [readable]
        assert (page.read_text() != first) == readable
        assert ("add this user to group canteen-kiosk" in err) != readable, err
    finally:
        kit.close()


# ---- the start page's directory: who may read the kiosk token ----

SYSUSERS = UNITS / "canteen-terminal.sysusers"
TMPFILES = UNITS / "canteen-kiosk.tmpfiles"
KIOSK_DIR = "/run/canteen-kiosk"


def test_the_kiosk_directory_is_the_same_in_every_file() -> None:
    assert "Environment=CANTEEN_KIOSK_DIR=" + KIOSK_DIR in TERMINAL_UNIT.read_text()
    assert "ReadWritePaths=-" + KIOSK_DIR in TERMINAL_UNIT.read_text()
    assert f"Environment=CANTEEN_KIOSK_PAGE={KIOSK_DIR}/start.html" in KIOSK_UNIT.read_text()
    lines = [x for x in TMPFILES.read_text().splitlines() if x and not x.startswith("#")]
    assert lines == [f"d {KIOSK_DIR} 2750 canteen-terminal canteen-kiosk -"]
    assert "g canteen-kiosk -" in SYSUSERS.read_text().splitlines()


def ids(root: Path, table: str, name: str) -> int:
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {table}")


@pytest.mark.skipif(os.geteuid() != 0, reason="makes users and changes owners: needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="apt-get install util-linux")
def test_only_the_kiosk_group_reads_the_start_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from displaykit import Kit

    # The real sysusers and tmpfiles files, applied to a scratch root that other users can
    # walk into as they can into / and /run (pytest's own directories are root's alone).
    root = Path(tempfile.mkdtemp(prefix="canteen-root-"))
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    root.chmod(0o755)
    (root / "etc").mkdir()
    for command in (
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        ["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    daemon_uid = ids(root, "passwd", "canteen-terminal")
    kiosk_gid = ids(root, "group", "canteen-kiosk")
    where = root / KIOSK_DIR.lstrip("/")
    info = where.stat()
    assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)) == (
        daemon_uid,
        kiosk_gid,
        "0o2750",
    )
    # The daemon's user writes there (through the screen server's own code below, as root:
    # the set-group-ID directory gives the file the kiosk's group either way).
    as_daemon = ["setpriv", f"--reuid={daemon_uid}", f"--regid={daemon_uid}", "--clear-groups"]
    assert subprocess.run([*as_daemon, "touch", str(where / "probe")]).returncode == 0
    monkeypatch.setenv("CANTEEN_KIOSK_DIR", str(where))
    kit = Kit(tmp_path / "state")
    try:
        page = kit.screen.kiosk_page
        assert page is not None and page.stat().st_gid == kiosk_gid
        nobody = ["setpriv", "--reuid=65534", "--regid=65534"]
        # A process of another user: cannot list the directory nor read the page.
        for what in (["ls", str(where)], ["cat", str(page)]):
            done = subprocess.run([*nobody, "--clear-groups", *what], capture_output=True)
            assert done.returncode != 0 and b"Permission denied" in done.stderr
        # The kiosk's user, in group canteen-kiosk: reads the token.
        done = subprocess.run(
            [*nobody, f"--groups={kiosk_gid}", "cat", str(page)], capture_output=True, text=True
        )
        assert done.returncode == 0 and "?kiosk=" in done.stdout
    finally:
        kit.close()
