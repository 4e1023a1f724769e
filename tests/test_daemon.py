"""The daemon for real: a card reader on a pty, systemd's notify socket, SIGTERM, a full disk."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import run_terminal, wait_for
from daemonkit import CARD_UID, ReaderPty, install_lists, write_settings

from terminal import config, ledger
from terminal.service import daemon

ROOT = Path(__file__).parent.parent


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that collects every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def seen(self, key: str, value: str | None = None) -> bool:
        return any(key in m and (value is None or m[key] == value) for m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def start_daemon(
    settings_path: Path,
    notify: NotifySocket | None,
    free_mb_gauge: Callable[[Path], float] = daemon.free_mb,
) -> tuple[daemon.Daemon, threading.Thread]:
    settings = config.load(settings_path)
    notifier = daemon.Notifier(str(notify.path)) if notify else daemon.Notifier("")
    d = daemon.Daemon(settings, notifier=notifier, free_mb_gauge=free_mb_gauge)
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    return d, thread


def test_notify_protocol_and_a_swipe_end_to_end(tmp_path: Path, reader: ReaderPty) -> None:
    path = write_settings(tmp_path, reader_port=reader.path, camera_source=None)
    install_lists(tmp_path / "state")
    notify = NotifySocket(tmp_path / "notify.sock")
    d, thread = start_daemon(path, notify)
    try:
        wait_for(lambda: notify.seen("READY", "1"), what="READY=1")
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        wait_for(lambda: notify.seen("WATCHDOG", "1"), what="a watchdog ping")
        reader.swipe()
        wait_for(lambda: d.worker.decisions == 1, what="the swipe's decision")
        wait_for(lambda: d.health()["state"] == "ready", what="ready after the swipe")
        assert d.health()["unsynced"] == 2  # genesis and the sale
        assert any(m.get("STATUS", "").startswith("ready:") for m in notify.messages)
        answer = daemon.ask_status(tmp_path / "state")
        assert answer["decisions"] == 1 and answer["devices"]["reader"]["state"] == "up"
    finally:
        d.request_stop()
        thread.join(15)
        notify.close()
    assert not thread.is_alive()
    assert notify.seen("STOPPING", "1")
    book = tmp_path / "state" / "ledger.sqlite"
    report = ledger.verify_file(book)
    assert report.ok, report.problem
    stats = ledger.stats_file(book)
    assert stats["entries"] == 2
    exported = []
    with open(tmp_path / "export.jsonl", "w", encoding="utf-8") as out:
        ledger.export_file(book, "jsonl", out)
    exported = [json.loads(x) for x in (tmp_path / "export.jsonl").read_text().splitlines()]
    sale = exported[-1]
    assert (sale["kind"], sale["verdict"], sale["credential"]) == (
        "sale",
        "accept",
        "card/" + CARD_UID.hex(),
    )
    assert not (tmp_path / "state" / daemon.STATUS_SOCKET).exists()


def test_watchdog_stops_when_the_worker_is_stuck(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path, reader_port=None, camera_source=None, daemon_options="worker_stall_s = 2"
    )
    install_lists(tmp_path / "state")
    notify = NotifySocket(tmp_path / "notify.sock")
    d, thread = start_daemon(path, notify)
    release = threading.Event()
    try:
        wait_for(lambda: notify.seen("READY", "1"), what="READY=1")
        # A job that never ends: the worker stops beating.
        d.worker.put(daemon.Job(lambda _c: release.wait(60), Future()))
        wait_for(lambda: "stuck" in d.sentence, what="the stuck worker to be noticed")
        assert d.state == daemon.DEGRADED
        # From the round that found it stuck on, status updates go on, without a ping.
        count = len(notify.messages)
        wait_for(
            lambda: any("STATUS" in m for m in notify.messages[count:]),
            what="the next status update",
        )
        later = notify.messages[count:]
        assert not any("WATCHDOG" in m for m in later), "no watchdog pings while stuck"
        assert d.state == daemon.DEGRADED and "stuck" in d.sentence
    finally:
        release.set()
        d.request_stop()
        thread.join(15)
        notify.close()


def test_status_command_asks_the_running_daemon(tmp_path: Path, reader: ReaderPty) -> None:
    path = write_settings(tmp_path, reader_port=reader.path, camera_source=None)
    install_lists(tmp_path / "state")
    not_running = run_terminal("status", "--config", str(path))
    assert not_running.returncode == 2 and "no running terminal answers" in not_running.stderr
    d, thread = start_daemon(path, None)
    try:
        wait_for(lambda: d.state == daemon.READY, what="ready")
        out = run_terminal("status", "--config", str(path), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state"] == "ready"
        human = run_terminal("status", "--config", str(path))
        # Not provisioned: the first line says the terminal works offline only.
        assert human.returncode == 0 and human.stdout.startswith("ready, offline only: ")
        assert "reader: up" in human.stdout
    finally:
        d.request_stop()
        thread.join(15)


# A whole daemon (or a county server and a terminal's sync): 5-9 s, in the second step.
@pytest.mark.slow
def test_sigterm_mid_decisions_leaves_whole_entries(tmp_path: Path, reader: ReaderPty) -> None:
    path = write_settings(tmp_path, reader_port=reader.path, camera_source=None)
    install_lists(tmp_path / "state")
    book = tmp_path / "state" / "ledger.sqlite"
    # SIGTERM at once, after the first decision, and half-way through the stream.
    for round_no, decided in enumerate((0, 1, 20)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "terminal.commands.main", "run", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            wait_for(lambda: (tmp_path / "state" / daemon.STATUS_SOCKET).exists(), what="socket")
            wait_for(
                lambda: daemon.ask_status(tmp_path / "state")["devices"]["reader"]["state"] == "up",
                what="reader up",
            )
            # A stream of distinct cards (unknown ones are refused, and each refusal is an entry).
            for i in range(40):
                reader.swipe(bytes([round_no, 0, 0, 0, i]))
            wait_for(
                lambda n=decided: daemon.ask_status(tmp_path / "state")["decisions"] >= n,
                what=f"{decided} decisions",
                every_s=0.005,
            )
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
            assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err.decode()
        assert b"stopped" in err
        report = ledger.verify_file(book)
        assert report.ok, report.problem
    stats = ledger.stats_file(book)
    assert stats["entries"] >= 4  # genesis and at least some decisions


def test_disk_nearly_full_stops_selling_before_any_write(tmp_path: Path, reader: ReaderPty) -> None:
    # The disk gauge is injected: 40 MB free against a floor of 50 MB, whatever this
    # machine's disk holds.
    path = write_settings(
        tmp_path,
        reader_port=reader.path,
        camera_source=None,
        daemon_options="min_free_mb = 50",
    )
    install_lists(tmp_path / "state")
    gauged: list[Path] = []

    def nearly_full(where: Path) -> float:
        gauged.append(where)
        return 40.0

    d, thread = start_daemon(path, None, nearly_full)
    try:
        wait_for(lambda: d.reader is not None and d.reader.health().up, what="reader up")
        before = d.worker.snapshot.get("last_seq")
        reader.swipe()
        wait_for(lambda: d.worker.dropped >= 1, what="the swipe to be turned away")
        wait_for(lambda: d.state == daemon.DEGRADED, what="degraded")
        assert "disk nearly full" in d.sentence
        assert d.worker.decisions == 0
        assert d.worker.snapshot.get("last_seq") == before
        assert Path(gauged[-1]) == d.settings.state_dir
    finally:
        d.request_stop()
        thread.join(15)
    assert ledger.stats_file(tmp_path / "state" / "ledger.sqlite")["entries"] == 1  # genesis


def test_a_broken_settings_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nqueue_sise = 5\n", encoding="utf-8")
    out = run_terminal("run", "--config", str(bad))
    assert out.returncode == 2
    assert "queue_sise: unknown option" in out.stderr


def test_selftest_says_what_to_fix(tmp_path: Path, reader: ReaderPty) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(frames / "0001.png"), np.zeros((120, 160, 3), dtype=np.uint8))
    path = write_settings(tmp_path, reader_port=reader.path, camera_source=str(frames))
    fresh = run_terminal("selftest", "--config", str(path), "--camera-timeout", "3")
    assert fresh.returncode == 1  # no lists yet
    assert "FAIL lists" in fresh.stdout and "lists install" in fresh.stdout
    assert "WARN ledger" in fresh.stdout  # not created until the first start
    install_lists(tmp_path / "state")
    d, thread = start_daemon(path, None)
    try:
        wait_for(lambda: d.state == daemon.READY, what="ready")
    finally:
        d.request_stop()
        thread.join(15)
    good = run_terminal("selftest", "--config", str(path), "--camera-timeout", "3")
    assert good.returncode == 0, good.stdout
    for part in (
        "state",
        "disk",
        "key",
        "ledger",
        "issuers",
        "revocations",
        "roster",
        "clock",
        "camera",
        "reader",
        "county",
    ):
        assert any(line.split()[1] == part for line in good.stdout.splitlines()), part
    assert "160x120 frame read" in good.stdout
    assert "WARN county" in good.stdout and "not provisioned" in good.stdout  # offline only
    broken = path.read_text(encoding="utf-8").replace(reader.path, "/dev/no-such-reader")
    path.write_text(broken, encoding="utf-8")
    bad = run_terminal("selftest", "--config", str(path), "--camera-timeout", "3")
    assert bad.returncode == 1 and "FAIL reader" in bad.stdout and "check the cable" in bad.stdout


def test_a_backlog_is_decided_in_groups_and_each_verdict_follows_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from daemonkit import wallet

    from protocol import tokens
    from terminal.core.events import QrPresented

    # Every signature check that finds no earlier answer does the curve arithmetic; the
    # worker's memo answers the replay, so each code's two signatures are checked once.
    curve_checks: list[bytes] = []
    real_verifies = tokens._curve_verifies

    def counting(key: Any, signature: bytes, signed: bytes) -> bool:
        curve_checks.append(signature)
        return real_verifies(key, signature, signed)

    monkeypatch.setattr(tokens, "_curve_verifies", counting)

    path = write_settings(tmp_path, reader_port=None, camera_source=None)
    install_lists(tmp_path / "state")
    settings = config.load(path)
    book = tmp_path / "state" / "ledger.sqlite"
    seen: list[int] = []
    durable_when_shown: list[bool] = []

    def shown(decision: object, _counter: object) -> None:
        seq = decision.entry.seq  # type: ignore[attr-defined]
        other = sqlite3.connect(f"file:{book}?mode=ro", uri=True)
        try:
            row = other.execute("SELECT 1 FROM entries WHERE seq = ?", (seq,)).fetchone()
        finally:
            other.close()
        durable_when_shown.append(row is not None)
        seen.append(seq)

    worker = daemon.DecisionWorker(
        settings,
        daemon.DaemonSettings(1, 500, 60, 180, False, False),
        shown,
        lambda: time.time_ns() // 1_000_000,
    )
    codes = [wallet(f"G{i}").draw(int(time.time())) for i in range(80)]
    for code in codes:
        worker.put(QrPresented(code, 0.0))
    worker.put(QrPresented(codes[0], 0.0))  # a replay inside the backlog
    worker.start()
    wait_for(lambda: len(seen) == 81, what="every decision shown")
    worker.stop()
    assert all(durable_when_shown), "a verdict was shown before its entry was on disk"
    assert seen == sorted(seen) and len(set(seen)) == 81
    stats = ledger.stats_file(book)
    assert stats["by_verdict"]["accept"] == 80
    assert stats["by_reason"] == {"replayed": 1}
    assert ledger.verify_file(book).ok
    # 80 codes, two signatures each; the replay's were found in the memo.
    assert len(curve_checks) == len(set(curve_checks)) == 160


def test_an_old_settings_file_with_check_ahead_still_starts_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The check-ahead process was removed (docs/architecture.md). A terminal upgraded with
    # the line still in /etc must start: the option is ignored, with one warning line.
    path = write_settings(
        tmp_path, reader_port=None, camera_source=None, daemon_options="check_ahead = true"
    )
    with caplog.at_level(logging.WARNING, logger="canteen.daemon"):
        daemon.daemon_settings(config.load(path))
    lines = [r.getMessage() for r in caplog.records if "check_ahead" in r.getMessage()]
    assert len(lines) == 1 and "no longer an option and is ignored" in lines[0]
    # Any other unknown option is still refused, in one line.
    typo = write_settings(
        tmp_path, reader_port=None, camera_source=None, daemon_options="check_ahed = true"
    )
    with pytest.raises(config.ConfigError, match="check_ahed: unknown option"):
        daemon.daemon_settings(config.load(typo))


def test_the_worker_prunes_acknowledged_entries_past_the_retention(tmp_path: Path) -> None:
    import sqlite3

    from terminal import state
    from terminal.ledger import ACCEPT, SALE, EntryDraft

    path = write_settings(
        tmp_path, reader_port=None, camera_source=None, daemon_options="retention_days = 30"
    )
    install_lists(tmp_path / "state")
    settings = config.load(path)
    now_ms = time.time_ns() // 1_000_000
    old = now_ms - 200 * 86_400_000
    paths = state.prepare(tmp_path / "state")
    book = state.open_ledger(paths.ledger, paths.key, settings.terminal_id, old)
    for i in range(150):
        book.append(EntryDraft(kind=SALE, verdict=ACCEPT, cadre=f"i/{i}", amount_fen=1), old + i)
    book.mark_acked(140, old + 1000)  # the last ten were never acknowledged
    book.close()
    worker = daemon.DecisionWorker(
        settings,
        daemon.daemon_settings(settings),
        lambda *_: None,
        lambda: time.time_ns() // 1_000_000,
    )
    worker.start()

    def pruned() -> int | None:
        conn = sqlite3.connect(f"file:{paths.ledger}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT up_to_seq FROM pruned").fetchone()
        finally:
            conn.close()
        return None if row is None else int(row[0])

    wait_for(lambda: pruned() is not None, what="the retention to run")
    worker.stop()
    assert pruned() == 128  # the last checkpoint before the first unacknowledged entry
    report = ledger.verify_file(paths.ledger)
    assert report.ok, report.problem
    stats = ledger.stats_file(paths.ledger)
    assert stats["unacked"] >= 10  # nothing unsent was removed
