"""hw-sim card-reader: the terminal's own CardReader reads swipes from the simulated reader
of each kind over a real pty, noise never makes a card, a held card is one swipe, and
unplug/replug recovers. The UIDs come from an hw-sim issuer roster."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from daemonkit import card_gone
from hwsim import population as pop
from hwsim.pn532 import Pn532Emulator, device_frame
from hwsim.reader import (
    ReaderControl,
    ReaderSim,
    ReaderSimError,
    ascii_line,
    noise_bytes,
    rdm6300_frame,
)

from terminal import trust
from terminal.core.events import CardPresented
from terminal.scanner.framing import AsciiLineFramer, Rdm6300Framer
from terminal.scanner.reader import CardReader, ReaderSettings

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0
NOW = 1_790_000_000


def take(q: queue.Queue[CardPresented], n: int) -> list[bytes]:
    return [q.get(timeout=WAIT_S).uid for _ in range(n)]


def roster_uids(tmp: Path, card_type: str, count: int = 4) -> list[bytes]:
    """Card UIDs as the terminal reads them from an hw-sim issuer roster."""
    population = pop.make_population(
        now=NOW, cadres=count, cards_fraction=1.0, card_type=card_type, seed=card_type
    )
    pop.write_population(population, tmp / card_type)
    cards = trust.parse_roster_csv((tmp / card_type / "roster.csv").read_text(encoding="utf-8"))
    return [c.uid for c in cards]


@contextlib.contextmanager
def rig(
    tmp: Path, kind: str, **terminal: object
) -> Iterator[tuple[ReaderSim, CardReader, queue.Queue[CardPresented]]]:
    sim = ReaderSim(kind, tmp / "reader", lifetime_s=120, seed=1).start()
    q: queue.Queue[CardPresented] = queue.Queue()
    settings = ReaderSettings(
        port=str(sim.link),
        kind=kind,
        reopen_backoff_s=0.05,
        reopen_backoff_max_s=0.2,
        pn532_poll_s=0.05,
        pn532_timeout_s=0.2,
        **terminal,  # type: ignore[arg-type]
    )
    reader = CardReader(settings, q)
    reader.start()
    try:
        assert wait_for(lambda: reader.health().up), reader.health()
        yield sim, reader, q
    finally:
        reader.stop()
        sim.stop()


@pytest.mark.parametrize(
    ("kind", "card_type", "terminal"),
    [
        ("rdm6300", "rdm6300", {}),
        ("ascii", "mifare7", {}),
        ("pn532", "mifare4", {}),
        ("pn532", "mifare7", {}),
    ],
)
def test_terminal_reads_roster_cards_from_each_kind(
    tmp_path: Path, kind: str, card_type: str, terminal: dict[str, object]
) -> None:
    uids = roster_uids(tmp_path, card_type)
    with rig(tmp_path, kind, card_leave_s=0.3, **terminal) as (sim, reader, q):
        for uid in uids:
            answer = sim.swipe(uid.hex())
            assert answer["uid"] == uid.hex() and answer.get("read", 1) == 1
            assert take(q, 1) == [uid]
        # Noise alone never makes a card, and a swipe wrapped in noise is read once.
        sim.noise(50_000)
        # No card may come of it: the next swipe is the next card in the queue (the line
        # keeps its order). That swipe is a new one once card_leave_s has passed.
        wait_for(lambda: card_gone(reader, uids[0]), what="the first card to leave")
        sim.swipe(uids[0], noise=300)
        assert take(q, 1) == [uids[0]]
        # Nor a second one from the noise around it: "nothing arrives" has no event, so a
        # short quiet window (longer than card_leave_s, 0.3 s) is the check.
        time.sleep(0.4)
        assert q.empty()
        status = sim.status()
        assert status["plugged"] and status["swipes"] == len(uids) + 1
        # pyserial set the line speed when the terminal opened the port.
        assert status["line_speed"] == reader.settings.effective_baudrate


def test_ascii_decimal_lsb_first(tmp_path: Path) -> None:
    sim = ReaderSim(
        "ascii", tmp_path / "r", ascii_format="dec", ascii_byte_order="lsb_first", lifetime_s=60
    ).start()
    q: queue.Queue[CardPresented] = queue.Queue()
    reader = CardReader(
        ReaderSettings(
            port=str(sim.link),
            kind="ascii",
            ascii_format="dec",
            ascii_byte_order="lsb_first",
            ascii_uid_bytes=4,
        ),
        q,
    )
    reader.start()
    try:
        assert wait_for(lambda: reader.health().up)
        uid = bytes.fromhex("04a1b2c3")
        sim.swipe(uid, noise=40)
        assert take(q, 1) == [uid]
    finally:
        reader.stop()
        sim.stop()


def test_held_card_is_one_swipe(tmp_path: Path) -> None:
    uid = bytes.fromhex("0a1b2c3d4e")
    with rig(tmp_path, "rdm6300", card_leave_s=0.8) as (sim, reader, q):
        assert sim.swipe(uid, repeat=6)["frames"] == 6
        assert take(q, 1) == [uid]
        # Every repeated frame was read, and none became a second swipe.
        wait_for(lambda: reader.health().counters.get("repeats", 0) >= 5, what="the repeats")
        assert q.empty()


def test_pn532_held_card_is_polled_but_one_swipe(tmp_path: Path) -> None:
    uid = bytes.fromhex("04112233445566")
    with rig(tmp_path, "pn532", card_leave_s=0.5) as (sim, _reader, q):
        assert sim.swipe(uid, repeat=5)["read"] == 5
        assert take(q, 1) == [uid]
        # Polled again while held (five reads answered above): a quiet window, as "no second
        # swipe" has no event of its own; shorter than card_leave_s (0.5 s).
        time.sleep(0.3)
        assert q.empty()
        assert sim.emulator is not None and sim.emulator.commands[:3] == [0x14, 0x32, 0x02]


def test_unplug_and_replug_recover(tmp_path: Path) -> None:
    with rig(tmp_path, "rdm6300", card_leave_s=0.0) as (sim, reader, q):
        sim.swipe("0102030405")
        assert take(q, 1) == [bytes.fromhex("0102030405")]
        sim.unplug()
        assert not sim.link.exists()
        assert wait_for(lambda: reader.health().state == "down")
        with pytest.raises(ReaderSimError, match="unplugged"):
            sim.swipe("0102030406")
        sim.replug()
        assert sim.link.is_symlink()
        assert wait_for(lambda: reader.health().up)
        assert reader.health().opens == 2
        sim.swipe("0102030406")
        assert take(q, 1) == [bytes.fromhex("0102030406")]


def test_pn532_unplug_and_replug_recover(tmp_path: Path) -> None:
    uid = bytes.fromhex("04a1b2c3")
    with rig(tmp_path, "pn532", card_leave_s=0.0) as (sim, reader, q):
        sim.unplug()
        assert wait_for(lambda: reader.health().state == "down")
        sim.replug()
        assert wait_for(lambda: reader.health().up)
        assert sim.swipe(uid)["read"] == 1
        assert take(q, 1) == [uid]


def test_uid_lengths_and_control_errors(tmp_path: Path) -> None:
    with ReaderSim("rdm6300", tmp_path / "r", lifetime_s=60) as sim:
        with pytest.raises(ReaderSimError, match="5-byte UIDs"):
            sim.swipe("04a1b2c3")
        with pytest.raises(ReaderSimError, match="not hex"):
            sim.swipe("zz")
        control = ReaderControl(sim.control)
        with pytest.raises(ReaderSimError, match="5-byte UIDs"):
            control.swipe("04a1b2c3")
        with pytest.raises(ReaderSimError, match="unknown command"):
            control.request("explode")
        assert control.status()["kind"] == "rdm6300"
        # A second simulator at the same link is refused while the first answers.
        with pytest.raises(ReaderSimError, match="another simulated reader"):
            ReaderSim("rdm6300", tmp_path / "r").start()
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.ctl").exists()
    with pytest.raises(ReaderSimError, match="no simulated reader answers"):
        ReaderControl(tmp_path / "r.ctl").status()


def test_wire_bytes_match_the_data_sheets() -> None:
    """The simulator's frames, checked with the terminal's pure framers (and by hand)."""
    assert rdm6300_frame(bytes.fromhex("0a1b2c3d4e")) == b"\x020A1B2C3D4E" + b"%02X\x03" % (
        0x0A ^ 0x1B ^ 0x2C ^ 0x3D ^ 0x4E
    )
    assert Rdm6300Framer().feed(rdm6300_frame(bytes.fromhex("0a1b2c3d4e")), 0.0) == [
        bytes.fromhex("0a1b2c3d4e")
    ]
    assert ascii_line(bytes.fromhex("04a1b2c3"), "dec", "lsb_first") == b"3283263748\r\n"
    assert device_frame(b"\x4b\x00") == bytes.fromhex("0000ff03fdd54b00e000")
    emu = Pn532Emulator()
    emu.card = bytes.fromhex("04a1b2c3")
    poll = bytes.fromhex("0000ff04fcd44a0100e100")
    answer = emu.receive(bytes.fromhex("5555") + bytes(14) + poll)
    assert answer.startswith(bytes.fromhex("0000ff00ff00")) and answer.endswith(b"\x00")
    assert bytes.fromhex("04a1b2c3") in answer and emu.card_reads == 1
    import random

    rng = random.Random(3)
    for kind in ("rdm6300", "ascii"):
        framer = Rdm6300Framer() if kind == "rdm6300" else AsciiLineFramer("hex")
        for k in range(200):
            assert framer.feed(noise_bytes(500, kind, rng), k * 0.001) == []


def test_cli_card_reader_serves_swipes_and_stops_on_sigterm(tmp_path: Path) -> None:
    """hw-sim card-reader in its own process, driven by hw-sim card-reader swipe/unplug/replug."""
    link = tmp_path / "canteen-reader"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}")
    cmd = [sys.executable, "-m", "hwsim.cli", "card-reader"]
    server = subprocess.Popen(
        [*cmd, "--kind", "rdm6300", "--link", str(link), "--stop-after", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert wait_for(lambda: Path(f"{link}.ctl").exists())
        q: queue.Queue[CardPresented] = queue.Queue()
        reader = CardReader(
            ReaderSettings(port=str(link), kind="rdm6300", reopen_backoff_s=0.05, card_leave_s=0),
            q,
        )
        reader.start()
        try:
            assert wait_for(lambda: reader.health().up)

            def client(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [*cmd, *args], capture_output=True, text=True, env=env, timeout=30
                )

            done = client("swipe", "--link", str(link), "--uid", "0A:1B:2C:3D:4E", "--noise", "64")
            assert done.returncode == 0, done.stderr
            assert take(q, 1) == [bytes.fromhex("0a1b2c3d4e")]
            assert client("unplug", "--control", f"{link}.ctl").returncode == 0
            assert wait_for(lambda: reader.health().state == "down")
            bad = client("swipe", "--link", str(link), "--uid", "0a1b2c3d4e")
            assert bad.returncode == 2 and "replug" in bad.stderr
            assert client("replug", "--link", str(link)).returncode == 0
            assert wait_for(lambda: reader.health().up)
            assert client("swipe", "--link", str(link), "--uid", "0a1b2c3d4f").returncode == 0
            assert take(q, 1) == [bytes.fromhex("0a1b2c3d4f")]
            status = client("status", "--link", str(link))
            assert '"unplugs": 1' in status.stdout
        finally:
            reader.stop()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=10)
        assert server.returncode == 0, err
        assert "stopped (SIGTERM)" in out
        assert not link.exists() and not Path(f"{link}.ctl").exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
