"""README's first command, run as a newcomer would, in a clean checkout of this repository.

The checkout is a fresh `git clone` of HEAD; the set-up step (apt, .venv) is skipped with
CANTEEN_SETUP=skip because .ci/run has just done it from nothing, and the clone runs on
this interpreter with its own source on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import run_script_env, wait_for

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_readme_first_command_sells_a_meal_and_stops_cleanly(tmp_path: Path) -> None:
    if subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True
    ).returncode:
        pytest.skip("not a git checkout")
    clone = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    run = tmp_path / "run"
    env, ports = run_script_env(clone, run)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/run-terminal.sh" in readme
    proc = subprocess.Popen(
        ["bash", "scripts/run-terminal.sh"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{ports['screen']}/state"
        wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60, "the screen")
        status = run / "terminal.toml"
        wait_for(
            lambda: (
                json.loads(
                    subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "terminal.commands.main",
                            "status",
                            "--config",
                            str(status),
                            "--json",
                        ],
                        capture_output=True,
                        text=True,
                        env=env,
                        cwd=clone,
                    ).stdout
                    or "{}"
                ).get("state")
                == "ready"
            ),
            60,
            "the daemon to be ready",
        )
        wallet = sorted((run / "population" / "wallets").iterdir())[0]
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "hwsim.cli",
                "camera",
                "show",
                "--url",
                f"http://127.0.0.1:{ports['camera']}",
                "--wallet",
                str(wallet),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=clone,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        book = run / "state" / "ledger.sqlite"

        def accepted() -> bool:
            out = subprocess.run(
                [sys.executable, "-m", "terminal.commands.main", "ledger", "export", str(book)],
                capture_output=True,
                text=True,
                env=env,
                cwd=clone,
            ).stdout
            entries = [json.loads(line) for line in out.splitlines()]
            return any(e["kind"] == "sale" and e["verdict"] == "accept" for e in entries)

        wait_for(accepted, 30, "the accepted sale in the ledger")

        def uploaded() -> bool:
            out = subprocess.run(
                [sys.executable, "-m", "county.cli", "entries", "--data", str(run / "county")],
                capture_output=True,
                text=True,
                env=env,
                cwd=clone,
            ).stdout
            return any(json.loads(line).get("kind") == "sale" for line in out.splitlines())

        # Nudged after the sale, the terminal uploads it to the local county server.
        wait_for(uploaded, 30, "the sale at the county server")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    text = output.decode(errors="replace")
    assert "show a code:" in text and "swipe a card:" in text
    assert "canteen.daemon: stopped" in text, text[-2000:]
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "terminal.commands.main",
            "ledger",
            "verify",
            str(run / "state" / "ledger.sqlite"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=clone,
    )
    assert verify.returncode == 0, verify.stdout
    leftovers = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left running: {leftovers}"
