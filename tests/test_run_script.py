"""scripts/run-terminal.sh under SIGTERM, and a start on a port that is taken: real processes.

The script runs from this checkout with CANTEEN_SETUP=skip (as tests/test_main_job.py),
its run directory and ports its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_script_env, wait_for

ROOT = Path(__file__).parent.parent


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def leftovers(marker: Path) -> str:
    return subprocess.run(["pgrep", "-af", str(marker)], capture_output=True, text=True).stdout


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, int], Path]]:
    run = tmp_path / "run"
    env, ports = run_script_env(ROOT, run)
    yield env, ports, run
    # Whatever happened, nothing of this run is left behind.
    for line in leftovers(run).splitlines():
        os.kill(int(line.split()[0]), signal.SIGKILL)


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", "scripts/run-terminal.sh"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # only the test's own SIGTERM reaches the script
    )


def daemon_ready(env: dict[str, str], run: Path) -> bool:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "terminal.commands.main",
            "status",
            "--state",
            str(run / "state"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    ).stdout
    return bool(json.loads(out or "{}").get("state") == "ready")


@pytest.mark.slow
def test_sigterm_to_the_script_stops_every_child_and_frees_every_port(
    setup: tuple[dict[str, str], dict[str, int], Path],
) -> None:
    env, ports, run = setup
    proc = start(env)
    try:
        url = f"http://127.0.0.1:{ports['screen']}/state"
        wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 90, "the screen")
        wait_for(lambda: daemon_ready(env, run), 60, "the daemon to be ready")
        assert not any(port_is_free(p) for p in ports.values())
        proc.send_signal(signal.SIGTERM)  # to the script alone, as `kill PID` or systemd
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "canteen.daemon: stopped" in err.decode(), err.decode()[-2000:]
    assert not leftovers(run), leftovers(run)
    for name, port in ports.items():
        assert port_is_free(port), f"{name} port {port} still taken"

    # The next start on a port another program holds: one line, exit status 2.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["county"]))
        squatter.listen()
        again = start(env)
        out, err = again.communicate(timeout=60)
    assert again.returncode == 2
    text = err.decode()
    assert text.count("\n") == 1 and out == b"", text
    assert f"port {ports['county']}" in text and "CANTEEN_COUNTY_PORT" in text
    assert "Traceback" not in text
    assert not leftovers(run), leftovers(run)


def test_the_daemon_on_a_taken_screen_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = tmp_path / "terminal.toml"
        settings.write_text(
            f'[display]\nport = {port}\nstaff_pin = "1234"\n[daemon]\ncamera = false\n'
            "reader = false\n",
            encoding="utf-8",
        )
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}"}
        result = subprocess.run(
            [sys.executable, "-m", "terminal.commands.main", "run", "--config", str(settings)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("<3>")]
    assert len(errors) == 1, result.stderr
    assert f"port {port}: Address already in use" in errors[0]
    assert "[display] port" in errors[0]
