"""One writer per state directory, and a provisioned directory knows who it is (issue 12,
points 3 and 4).

Point 3: with a real daemon running on a state directory, every command that would write
there (verify-token --state, sync --once, lists install, update apply and fetch, a second
`run`) refuses in one line that says what to do instead, exit status 2, and changes
nothing; once the daemon stops, the same command works.

Point 4: a terminal provisioned by `canteen-terminal provision` against a real county
server, then `verify-token --state DIR` on a valid code without any settings file: the
ledger is the provisioned terminal's, signed with its pinned key, and `sync --once` gets
every entry accepted by the county (no bad_genesis).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for
from countykit import County
from daemonkit import ISSUER, install_lists, wallet, write_settings

from terminal import config, ledger, state
from terminal.commands import update as update_cli
from terminal.service import daemon

ROOT = Path(__file__).parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terminal.commands.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def assert_refused(done: subprocess.CompletedProcess[str], state_dir: Path, instead: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert f"the terminal daemon is running on {state_dir}" in line
    assert "stop it first (systemctl stop canteen-terminal)" in line and instead in line


@pytest.mark.slow
def test_commands_refuse_a_state_directory_the_daemon_holds(tmp_path: Path) -> None:
    settings_path = write_settings(tmp_path, reader_port=None, camera_source=None)
    state_dir = tmp_path / "state"
    install_lists(state_dir)
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(
        json.dumps({"version": 9, "issued_at": int(time.time()), "entries": [ISSUER.trust_entry()]})
    )
    code = wallet("lock").draw(int(time.time()))
    d = daemon.Daemon(config.load(settings_path), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False})
    thread.start()
    try:
        wait_for(lambda: d.state == daemon.READY, what="ready")
        seq_before = daemon.ask_status(state_dir)["last_seq"]
        lists_before = (state_dir / state.TRUST_FILE).read_bytes()

        assert_refused(cli("verify-token", "--state", str(state_dir), code), state_dir, "scratch")
        # A --ledger inside the state directory is that terminal's ledger: the same rule.
        assert_refused(
            cli(
                "verify-token",
                "--trust",
                str(trust_file),
                "--ledger",
                str(state_dir / state.LEDGER_FILE),
                code,
            ),
            state_dir,
            "scratch",
        )
        assert_refused(cli("sync", "--once", "--state", str(state_dir)), state_dir, "by itself")
        assert_refused(
            cli("lists", "install", "--state", str(state_dir), "--issuers", str(trust_file)),
            state_dir,
            "signed update",
        )
        assert_refused(
            cli("update", "apply", str(tmp_path), "--state", str(state_dir)),
            state_dir,
            "next sync",
        )
        assert_refused(cli("update", "fetch", "--state", str(state_dir)), state_dir, "by itself")
        assert_refused(
            cli(
                "provision",
                "--state",
                str(state_dir),
                "--server",
                "https://127.0.0.1:9",
                "--code",
                "00-" + "a" * 26,
            ),
            state_dir,
            "another DIR",
        )
        second = cli("run", "--config", str(settings_path))
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
        assert "the terminal daemon is running on" in second.stderr

        assert daemon.ask_status(state_dir)["last_seq"] == seq_before
        assert (state_dir / state.TRUST_FILE).read_bytes() == lists_before
        assert d.state == daemon.READY  # the refused second `run` left the first alone
    finally:
        d.request_stop()
        thread.join(20)
    assert not thread.is_alive()
    # The daemon gone, the directory is free again.
    done = cli("verify-token", "--state", str(state_dir), "--config", str(settings_path), code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "accept"


def test_a_command_holding_the_directory_keeps_the_daemon_out(tmp_path: Path) -> None:
    settings_path = write_settings(tmp_path, reader_port=None, camera_source=None)
    held = state.lock(tmp_path / "state", "canteen-terminal sync")
    try:
        d = daemon.Daemon(config.load(settings_path), notifier=daemon.Notifier(""))
        assert d.run(install_signals=False) == 2
    finally:
        held.release()
    assert not (tmp_path / "state" / state.LEDGER_FILE).exists()


@pytest.mark.slow
def test_a_provisioned_state_directory_gives_every_command_its_identity(
    tmp_path: Path, county: County
) -> None:
    state_dir = tmp_path / "state"
    code = county.code("t-north-7", "c-north")
    done = cli("provision", "--state", str(state_dir), "--server", county.url, "--code", code)
    assert done.returncode == 0, done.stderr
    install_lists(state_dir)

    # No settings file: the embedded defaults name `demo-terminal`; the directory says otherwise.
    qr = wallet("ident").draw(int(time.time()))
    done = cli("verify-token", "--state", str(state_dir), qr)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "accept"
    book = state_dir / state.LEDGER_FILE
    assert ledger.stats_file(book)["terminal_id"] == "t-north-7"
    assert not list(state_dir.glob("*.key.pem")), "no second key beside the ledger"
    pinned = ledger.load_or_create_signing_key(state_dir / state.KEY_FILE).public_key()
    assert ledger.verify_file(book, public_key=pinned.public_bytes_raw()).ok

    done = cli("sync", "--once", "--state", str(state_dir))
    assert done.returncode == 0, (done.stdout, done.stderr)
    summary = json.loads(done.stdout)
    assert summary["complete"] is True and not summary["errors"], summary
    held = list(county.store.iter_entries("t-north-7"))
    assert any(e.get("kind") == ledger.TOKEN_CHECK for e in held)
    acked = json.loads((state_dir / state.ACKED_FILE).read_text())
    assert acked["seq"] == summary["last_seq"]

    # `update apply` (USB) takes the canteen from the directory too, not `demo-canteen`.
    args = argparse.Namespace(config=None, state=str(state_dir), canteen=None)
    assert update_cli._state_and_canteen(args) == (state_dir, "c-north")


def test_settings_naming_another_terminal_are_corrected_with_a_warning(
    tmp_path: Path, county: County, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    code = county.code("t-south-2", "c-south")
    done = cli("provision", "--state", str(state_dir), "--server", county.url, "--code", code)
    assert done.returncode == 0, done.stderr
    named = config.load(None)
    quiet = state.with_identity(dataclasses.replace(named, state_dir=state_dir))
    assert quiet.terminal_id == "t-south-2" and not caplog.records  # defaults: nothing to say
    wrong = dataclasses.replace(named, state_dir=state_dir, terminal_id="t-old-1")
    with caplog.at_level("WARNING"):
        fixed = state.with_identity(wrong)
    assert (fixed.terminal_id, fixed.canteen_id) == ("t-south-2", "c-south")
    [line] = [r.getMessage() for r in caplog.records]
    assert "t-old-1" in line and "t-south-2" in line and "correct [terminal] id" in line
