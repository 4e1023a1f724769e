"""hw-sim county: the fault proxy's faults and its partition schedule over real connections, and
the reference county server behind it reached by a real terminal's sync."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from hwsim import cli
from hwsim.county import (
    BLACKHOLE,
    CUT_BEFORE,
    REFUSE,
    CountySim,
    CountySimError,
    Fault,
    FaultProxy,
    draw_plan,
    parse_partitions,
)

from terminal import state
from terminal.config import SyncSettings
from terminal.ledger import load_or_create_signing_key
from terminal.link.provision import provision
from terminal.sync import SyncClient

# --- an upstream that echoes, and counts what reached it --------------------------------


class Echo:
    def __init__(self) -> None:
        self.received = bytearray()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    outer.received += data
                    self.request.sendall(data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="echo")
def echo_fixture() -> Iterator[Echo]:
    e = Echo()
    try:
        yield e
    finally:
        e.close()


def roundtrip(port: int, data: bytes = b"hello", timeout: float = 2.0) -> bytes:
    """Send ``data`` and read until as many bytes came back, EOF or timeout: what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        try:
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            pass
        return got


def test_clean_link_forwards_both_ways(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port)) as proxy:
        assert roundtrip(proxy.port) == b"hello"
        assert proxy.connections == 1


def test_latency_delays_every_chunk(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), lambda _n: Fault(delay_s=0.15)) as proxy:
        t0 = time.monotonic()
        assert roundtrip(proxy.port) == b"hello"
        # One delay on the way in, one on the way back.
        assert time.monotonic() - t0 >= 0.3


def test_cut_before_the_request_reaches_the_server(echo: Echo) -> None:
    plan = lambda _n: Fault(CUT_BEFORE, after=100)  # noqa: E731
    with FaultProxy(("127.0.0.1", echo.port), plan) as proxy:
        assert roundtrip(proxy.port, b"x" * 10) == b"x" * 10  # under the mark: forwarded
        assert roundtrip(proxy.port, b"y" * 200) == b""  # the request: cut, nothing forwarded
        assert proxy.triggered[CUT_BEFORE] == 1
    assert b"y" not in echo.received


def test_drawn_drops_follow_the_probability(echo: Echo) -> None:
    plan = draw_plan(seed=3, latency_ms=0, drop=0.5)
    kinds = [plan(n).kind for n in range(400)]
    assert 150 < sum(k != "pass" for k in kinds) < 250
    assert {"cut_before", "cut_after", "pass"} == set(kinds)
    assert all(k == "pass" for k in (draw_plan(1, 0, 0.0)(n).kind for n in range(50)))


def test_refusing_partition_closes_new_and_open_connections(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), partition_mode=REFUSE) as proxy:
        open_conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        open_conn.sendall(b"a")
        assert open_conn.recv(10) == b"a"
        proxy.set_partition(True)
        t0 = time.monotonic()
        assert roundtrip(proxy.port) == b""
        assert time.monotonic() - t0 < 1.0  # refused at once, no waiting
        # The open connection is closed by the proxy: its next read ends (or is reset).
        with contextlib.suppress(ConnectionResetError):
            assert open_conn.recv(10) == b""
        with pytest.raises((ConnectionResetError, BrokenPipeError, AssertionError)):
            open_conn.sendall(b"b")
            assert open_conn.recv(10) != b""
        open_conn.close()
        proxy.set_partition(False)
        assert roundtrip(proxy.port) == b"hello"
        assert proxy.triggered[REFUSE] >= 1


def test_black_hole_accepts_and_never_answers(echo: Echo) -> None:
    with FaultProxy(("127.0.0.1", echo.port), partition_mode=BLACKHOLE) as proxy:
        proxy.set_partition(True)
        t0 = time.monotonic()
        assert roundtrip(proxy.port, b"lost", timeout=0.6) == b""
        assert time.monotonic() - t0 >= 0.5  # the client waited for its own timeout
        proxy.set_partition(False)
        assert roundtrip(proxy.port) == b"hello"
    assert b"lost" not in echo.received


def test_partition_schedule_in_seconds_from_start(echo: Echo) -> None:
    changes: list[tuple[bool, float]] = []
    sim_proxy = FaultProxy(("127.0.0.1", echo.port)).start()
    from hwsim.county import PartitionSchedule

    schedule = PartitionSchedule(
        sim_proxy, parse_partitions("0.4:0.9"), lambda on, at: changes.append((on, at))
    ).start()
    try:
        assert roundtrip(sim_proxy.port) == b"hello"
        wait_for(lambda: sim_proxy.partitioned, 5, "the partition at 0.4 s", every_s=0.01)
        assert roundtrip(sim_proxy.port) == b""
        wait_for(lambda: not sim_proxy.partitioned, 5, "the end at 0.9 s", every_s=0.01)
        assert roundtrip(sim_proxy.port) == b"hello"
    finally:
        schedule.stop()
        sim_proxy.stop()
    assert changes == [(True, 0.4), (False, 0.9)]


def test_partition_windows_are_checked() -> None:
    assert parse_partitions("60:120, 10:20") == [(10.0, 20.0), (60.0, 120.0)]
    assert parse_partitions("") == []
    for bad in ("10", "20:10", "a:b", "0:30,20:40", "-1:5"):
        with pytest.raises(CountySimError):
            parse_partitions(bad)


# --- the county behind the proxy, reached by a terminal -----------------------------------

FAST = SyncSettings(
    interval_s=1,
    jitter_s=0,
    deadline_s=3,
    connect_timeout_s=1,
    read_timeout_s=1,
    batch_entries=200,
    backoff_base_s=1,
    backoff_cap_s=1,
)


def provisioned(sim: CountySim, root: Path, now_ms: int) -> Path:
    paths = state.prepare(root)
    key = load_or_create_signing_key(paths.key)
    code = sim.add_terminal("t-sim", "c-sim")
    provision(paths.root, sim.url, code, key.public_key().public_bytes_raw())
    state.open_ledger(paths.ledger, paths.key, "t-sim", now_ms).close()
    return paths.root


def test_county_behind_the_proxy_with_a_simulated_clock(tmp_path: Path) -> None:
    # County time runs a day ahead of this computer's clock: the signed time says so.
    ahead_ms = 86_400_000

    def clock() -> int:
        return time.time_ns() // 1_000_000 + ahead_ms

    with CountySim(tmp_path / "county", clock=clock, partition_mode=BLACKHOLE) as sim:
        assert sim.created_ca
        root = provisioned(sim, tmp_path / "t", clock())
        from terminal.link.provision import load_identity

        client = SyncClient(root / "ledger.sqlite", load_identity(root), FAST, wall_ms=clock)
        result = client.sync_once(time.monotonic() + 5)
        assert result.complete, result.summary()
        assert result.server_ms is not None and result.server_ms > clock() - 60_000
        assert [e["seq"] for e in sim.store.iter_entries("t-sim")] == [1]

        sim.set_partition(True)
        t0 = time.monotonic()
        down = client.sync_once(time.monotonic() + 2)
        assert down.error is not None and not down.complete
        assert time.monotonic() - t0 >= 0.9  # black-holed: it waited for its timeouts
        sim.set_partition(False)
        assert client.sync_once(time.monotonic() + 5).complete
        assert sim.stats()["faults"].get(BLACKHOLE, 0) >= 1


def test_uploads_answered_500(tmp_path: Path) -> None:
    with CountySim(tmp_path / "county", error_500=1.0, seed=5) as sim:
        root = provisioned(sim, tmp_path / "t", time.time_ns() // 1_000_000)
        from terminal.link.provision import load_identity

        client = SyncClient(root / "ledger.sqlite", load_identity(root), FAST)
        failed = client.sync_once(time.monotonic() + 5)
        assert failed.error is not None and "500" in failed.error
        assert sim.server_faults is not None
        fired = sim.server_faults.triggered
        assert fired["500_before"] + fired["500_after"] == 1


def test_cli_help_explains_it_for_a_technician(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["county", "--help"])
    out = capsys.readouterr().out
    for word in ("--latency-ms", "--drop", "--error-500", "--partition", "blackhole", "Ctrl-C"):
        assert word in out


def test_cli_runs_a_partition_schedule_and_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["county", "--data", str(tmp_path / "c"), "--partition", "0.2:0.4", "--stop-after", "0.8"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "county server at https://127.0.0.1:" in out
    assert "network DOWN" in out and "network back" in out
    assert "stopped (--stop-after)" in out


def test_cli_bad_partition_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["county", "--data", str(tmp_path / "c"), "--partition", "9:3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hw-sim: error: partition window") and err.count("\n") == 1
