"""Card reader: pure framing with every chunking, noise, and the real reader thread over ptys.

The frames are built here independently of terminal/scanner/framing.py (from
the reader data sheets), and the PN532 at the far end of a pty is the hardware
simulator's emulator (hw-sim/hwsim/pn532.py, written from NXP's manual), so the
code under test is never checked against itself.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import random
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import examples, wait_for
from daemonkit import card_gone
from hwsim.pn532 import Pn532Emulator
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from terminal.core.events import CardPresented
from terminal.scanner.device import PresenceFilter
from terminal.scanner.framing import (
    PN532_ACK,
    AsciiLineFramer,
    BadUid,
    Pn532FrameParser,
    Pn532Session,
    Rdm6300Framer,
    canonical_uid,
    decimal_width,
    parse_uid_text,
    pn532_command,
    uid_hex,
)
from terminal.scanner.reader import CardLink, CardReader, ReaderSettings

WAIT_S = 10.0  # generous bound for anything that crosses threads


# --- frames as the readers send them (independent of the code under test) -----


def rdm6300_frame(uid5: bytes, *, lower: bool = False) -> bytes:
    x = 0
    for b in uid5:
        x ^= b
    body = (uid5.hex() + f"{x:02x}").upper()
    if lower:
        body = body.lower()
    return b"\x02" + body.encode() + b"\x03"


def pn532_response(data: bytes) -> bytes:
    """PN532 to host: 00 00 FF LEN LCS D5 data DCS 00."""
    body = b"\xd5" + data
    return (
        bytes([0, 0, 0xFF, len(body), (0x100 - len(body)) & 0xFF])
        + body
        + bytes([(0x100 - sum(body) & 0xFF) & 0xFF, 0])
    )


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


uid5s = st.binary(min_size=5, max_size=5)
mifare_uids = st.one_of(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=7, max_size=7),
    st.binary(min_size=10, max_size=10),
)


# --- UID normalisation -------------------------------------------------------------


def test_uid_rules() -> None:
    assert canonical_uid(bytes.fromhex("04a1b2c3")) == bytes.fromhex("04a1b2c3")
    assert canonical_uid(bytes.fromhex("c3b2a104"), "lsb_first") == bytes.fromhex("04a1b2c3")
    assert parse_uid_text(b"04A1B2C3") == bytes.fromhex("04a1b2c3")
    assert parse_uid_text(b"04a1b2c3") == bytes.fromhex("04a1b2c3")
    # A decimal reader printing the 4-byte UID reversed, zero-padded to 10 digits.
    printed = str(int.from_bytes(bytes.fromhex("c3b2a104"), "big")).zfill(10).encode()
    assert parse_uid_text(printed, "dec", "lsb_first", 4) == bytes.fromhex("04a1b2c3")
    assert decimal_width(4) == 10 and decimal_width(7) == 17
    assert uid_hex(bytes.fromhex("04A1B2C3")) == "04a1b2c3"
    for bad, fmt in [
        (b"04A1B2C", "hex"),  # odd
        (b"04A1B2", "hex"),  # 3 bytes
        (b"04A1B2G3", "hex"),
        (b"", "hex"),
        (b"7", "dec"),  # a stray digit is not a card
        (b"4294967296", "dec"),  # too big for 4 bytes
        (b"12345678x0", "dec"),
    ]:
        with pytest.raises(BadUid):
            parse_uid_text(bad, fmt)


@given(uid=st.sampled_from([4, 5, 7, 8, 10]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_uid_text_round_trip(uid: bytes) -> None:
    assert parse_uid_text(uid.hex().encode()) == uid
    assert parse_uid_text(uid[::-1].hex().upper().encode(), "hex", "lsb_first") == uid
    dec = str(int.from_bytes(uid, "big")).zfill(decimal_width(len(uid))).encode()
    assert parse_uid_text(dec, "dec", "msb_first", len(uid)) == uid


# --- RDM6300 ---------------------------------------------------------------------------


@given(
    uids=st.lists(uid5s, min_size=1, max_size=6),
    junk=st.lists(st.binary(max_size=40), min_size=7, max_size=7),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    lower=st.booleans(),
)
def test_rdm6300_any_chunking_any_junk(
    uids: list[bytes], junk: list[bytes], cuts: list[int], lower: bool
) -> None:
    probe = Rdm6300Framer()
    assume(not probe.feed(b"".join(junk), 0.0))  # junk that happens to hold a frame is not junk
    stream = b"".join(j + rdm6300_frame(u, lower=lower) for j, u in zip(junk, uids, strict=False))
    framer = Rdm6300Framer(gap_s=0.1)
    got: list[bytes] = []
    for k, chunk in enumerate(chunked(stream, cuts)):
        got += framer.feed(chunk, k * 0.001)
    assert got == uids
    assert framer.accepted == len(uids)


def test_rdm6300_bad_frames_dropped_counted_and_resync() -> None:
    good = bytes.fromhex("0a00b1c2d3")
    f = Rdm6300Framer(gap_s=0.1)
    bad_sum = bytearray(rdm6300_frame(good))
    bad_sum[11:13] = b"00" if bad_sum[11:13] != b"00" else b"11"
    t = 0.0
    for frame, reason in [
        (bytes(bad_sum), "checksum"),
        (rdm6300_frame(good)[:-3] + b"\x03", "length"),  # short
        (rdm6300_frame(good)[:-1] + b"A\x03", "length"),  # long
        (rdm6300_frame(good)[:5] + b"G" + rdm6300_frame(good)[6:], "not_hex"),
        (rdm6300_frame(good)[:7], "truncated"),  # cut off, then a new STX
    ]:
        t += 0.01
        assert f.feed(frame, t) == [], reason
        t += 0.01
        assert f.feed(rdm6300_frame(good), t) == [good], reason
        assert f.drops[reason] >= 1, (reason, f.drops)
    # A quiet gap inside a frame: the first half is dropped, the next frame is fine.
    frame = rdm6300_frame(good)
    assert f.feed(frame[:6], 10.0) == []
    assert f.feed(frame[6:], 10.5) == []
    assert f.drops["gap"] == 1
    assert f.feed(frame, 10.51) == [good]


# --- ASCII line readers ----------------------------------------------------------------


@given(
    uids=st.lists(mifare_uids, min_size=1, max_size=6),
    endings=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n"]), min_size=6, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    order=st.sampled_from(["msb_first", "lsb_first"]),
    upper=st.booleans(),
)
def test_ascii_hex_any_chunking(
    uids: list[bytes], endings: list[bytes], cuts: list[int], order: str, upper: bool
) -> None:
    def printed(u: bytes) -> bytes:
        text = (u[::-1] if order == "lsb_first" else u).hex()
        return (text.upper() if upper else text).encode()

    stream = b"".join(printed(u) + e for u, e in zip(uids, endings, strict=False))
    framer = AsciiLineFramer("hex", order, max_line=32)
    got: list[bytes] = []
    for k, chunk in enumerate(chunked(stream, cuts)):
        got += framer.feed(chunk, k * 0.001)
    assert got == uids


@given(
    values=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_ascii_decimal_any_chunking(values: list[int], cuts: list[int]) -> None:
    stream = b"".join(str(v).zfill(10).encode() + b"\r\n" for v in values)
    framer = AsciiLineFramer("dec", "lsb_first", uid_bytes=4)
    got: list[bytes] = []
    for k, chunk in enumerate(chunked(stream, cuts)):
        got += framer.feed(chunk, k * 0.001)
    assert got == [v.to_bytes(4, "big")[::-1] for v in values]


def test_ascii_bad_lines_dropped_and_bounded() -> None:
    f = AsciiLineFramer("hex", max_line=32)
    good = b"04A1B2C3\r\n"
    assert f.feed(b"hello\r\n" + good, 0.0) == [bytes.fromhex("04a1b2c3")]
    assert f.drops["bad_uid"] == 1
    # An endless line never grows the buffer past max_line, and is dropped whole.
    for k in range(1000):
        assert f.feed(b"0123456789ABCDEF" * 64, 0.001 * k) == []
    assert len(f._line) <= 32
    assert f.feed(b"\n" + good, 1.0) == [bytes.fromhex("04a1b2c3")]
    assert f.drops["overlong"] == 1
    # A gap in the middle of a line drops it.
    assert f.feed(b"04A1", 5.0) == []
    assert f.feed(b"B2C3\r\n", 6.0) == []
    assert f.drops["gap"] == 1
    assert f.feed(good, 6.01) == [bytes.fromhex("04a1b2c3")]


# --- noise ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_megabytes_of_noise_give_no_card() -> None:
    """10 MB of random bytes in random chunks: zero cards from every framer.

    Expected false accepts per byte offset, from the frame structure alone:
    RDM6300 (STX, 12 hex, ETX, XOR) about 1e-20; ASCII hex (a whole line of
    8+ hex digits between line endings) about 2e-13; ASCII decimal (exactly
    10 digits) about 5e-19; PN532 (start code, LCS, DCS, TFI D5 and the right
    response code while a poll is outstanding) about 1e-14. Over 1e7 offsets
    the expected count is below 1e-5 for every framer.
    """
    rng = random.Random(20240611)
    data = rng.randbytes(10 * 1024 * 1024)
    framers: dict[str, Rdm6300Framer | AsciiLineFramer] = {
        "rdm6300": Rdm6300Framer(),
        "ascii-hex": AsciiLineFramer("hex"),
        "ascii-dec": AsciiLineFramer("dec", uid_bytes=4),
    }
    session = Pn532Session()
    session.start(0.0)
    session._sent = bytes([0x4A, 0x01, 0x00])  # a poll outstanding the whole time
    session._acked = True
    pn532_uids: list[bytes] = []
    got = {name: 0 for name in framers}
    i, t = 0, 0.0
    while i < len(data):
        n = rng.randint(1, 4096)
        chunk = data[i : i + n]
        i += n
        t += 0.001
        for name, framer in framers.items():
            got[name] += len(framer.feed(chunk, t))
        session._deadline = t + 1.0
        pn532_uids += session.on_bytes(chunk, t)[1]
    assert got == {"rdm6300": 0, "ascii-hex": 0, "ascii-dec": 0}
    assert pn532_uids == []
    # The framers did look at the noise: they dropped many would-be frames.
    assert sum(framers["rdm6300"].drops.values()) > 10_000
    assert sum(framers["ascii-hex"].drops.values()) > 10_000


# --- presence (a card held on the reader is one swipe) -------------------------------


@given(
    sightings=st.lists(
        st.tuples(st.sampled_from([b"A", b"B", b"C"]), st.floats(min_value=0, max_value=3)),
        max_size=60,
    )
)
def test_presence_filter_matches_model(sightings: list[tuple[bytes, float]]) -> None:
    hold = 1.0
    f = PresenceFilter(hold)
    last: dict[bytes, float] = {}
    now = 0.0
    for key, dt in sightings:
        now += dt
        expect = key not in last or now - last[key] >= hold
        last[key] = now
        assert f.admit(key, now) == expect


def test_presence_filter_memory_is_bounded() -> None:
    f = PresenceFilter(10.0, max_keys=16)
    for k in range(10_000):
        assert f.admit(k, k * 0.001)
        assert len(f) <= 16


# --- PN532 framing and session (pure) -------------------------------------------------


def test_pn532_command_frames_are_well_formed() -> None:
    frame = pn532_command(bytes([0x4A, 0x01, 0x00]))
    assert frame == bytes.fromhex("0000ff04fcd44a0100e100")
    assert bytes.fromhex("0000ff00ff00") == PN532_ACK


@given(
    uid=mifare_uids,
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=20),
    noise=st.binary(max_size=20),
)
def test_pn532_parser_any_chunking(uid: bytes, cuts: list[int], noise: bytes) -> None:
    ack = bytes([0, 0, 0xFF, 0x00, 0xFF, 0x00])
    answer = pn532_response(bytes([0x4B, 0x01, 0x01, 0x00, 0x44, 0x00, len(uid)]) + uid)
    stream = noise.replace(b"\xff", b"\xfe") + ack + answer + b"\x00\x00" + ack
    p = Pn532FrameParser()
    frames = []
    for k, chunk in enumerate(chunked(stream, cuts)):
        frames += p.parse(chunk, k * 0.001)
    kinds = [f.kind for f in frames]
    assert kinds == ["ack", "response", "ack"]
    assert frames[1].data[7:] == uid


def test_pn532_parser_drops_bad_frames() -> None:
    p = Pn532FrameParser()
    good = pn532_response(b"\x4b\x00")
    bad_lcs = bytearray(good)
    bad_lcs[4] ^= 1
    bad_dcs = bytearray(good)
    bad_dcs[-2] ^= 1
    host_echo = pn532_command(b"\x4a\x01\x00")
    frames = p.parse(bytes(bad_lcs) + bytes(bad_dcs) + host_echo + good, 0.0)
    assert [f.kind for f in frames] == ["response"]
    assert p.drops["lcs"] == 1 and p.drops["dcs"] == 1 and p.drops["tfi"] == 1
    error = p.parse(bytes([0, 0, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00]), 0.1)
    assert [f.kind for f in error] == ["error"]
    assert p.parse(bytes([0, 0, 0xFF, 0xFF, 0x00, 0x00]), 0.2)[0].kind == "nack"
    # Noise without a start code does not pile up.
    for k in range(100):
        p.parse(b"\x01\x02\x03" * 100, 1.0 + k * 0.001)
    assert len(p._buf) <= p.MAX_BUFFER


def run_session(
    session: Pn532Session,
    emu: Pn532Emulator,
    until: float,
    *,
    step: float = 0.01,
    cuts: list[int] | None = None,
) -> list[bytes]:
    """Drive the pure session against the emulator in simulated time."""
    uids: list[bytes] = []
    t = 0.0
    pending = session.start(t)
    rng = random.Random(len(cuts or []))
    while t < until:
        answer = emu.receive(pending) if pending else b""
        pending = b""
        pieces = chunked(answer, cuts or []) if answer else []
        for piece in pieces:
            t += rng.choice([0.0, 0.001])
            write, got = session.on_bytes(piece, t)
            pending += write
            uids += got
        t += step
        pending += session.tick(t)
    return uids


@given(
    uid=mifare_uids,
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    faults=st.lists(st.sampled_from(["nack", "error", "bad_dcs"]), max_size=4),
)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_pn532_session_reads_card_through_faults(
    uid: bytes, cuts: list[int], faults: list[str]
) -> None:
    emu = Pn532Emulator()
    emu.card = uid
    emu.faults = list(faults)
    session = Pn532Session(poll_s=0.05, timeout_s=0.1, max_failures=3)
    uids = run_session(session, emu, 3.0, cuts=cuts)
    assert uids and set(uids) == {uid}
    assert session.ready
    assert session.firmware == (0x32, 0x01, 0x06)
    assert list(dict.fromkeys(emu.commands))[:3] == [0x14, 0x32, 0x02]


def test_pn532_session_no_card_no_uid_and_silence_restarts() -> None:
    emu = Pn532Emulator()
    session = Pn532Session(poll_s=0.05, timeout_s=0.1, max_failures=3)
    assert run_session(session, emu, 1.0) == []
    assert session.ready and emu.commands.count(0x4A) > 5
    emu.silent = True
    session2 = Pn532Session(poll_s=0.05, timeout_s=0.1, max_failures=3)
    assert run_session(session2, emu, 2.0) == []
    assert not session2.ready
    assert session2.events["timeout"] >= 3 and session2.events["restart"] >= 1


# --- the real reader thread over ptys -------------------------------------------------


class PtyPlug:
    """A serial device on a pty, reachable at a stable symlink (like /dev/serial/by-id/...).

    `unplug` closes our side, so the reader's reads fail as after a USB unplug;
    `plug` makes a new pty and points the symlink at it, as udev does.
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self._slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self._slave = os.openpty()
        tmp = self.link.with_suffix(".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(self._slave))
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self._slave = -1

    def write(self, data: bytes, chunks: int = 1, pause_s: float = 0.0) -> None:
        rng = random.Random(len(data) * 31 + chunks)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(chunks - 1))
        for piece in chunked(data, cuts):
            os.write(self.master, piece)
            if pause_s:
                time.sleep(pause_s)

    def read_available(self, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self.master, 4096)
        except OSError:
            return b""


@contextlib.contextmanager
def running_reader(
    settings: ReaderSettings,
) -> Iterator[tuple[CardReader, queue.Queue[CardPresented]]]:
    q: queue.Queue[CardPresented] = queue.Queue()
    reader = CardReader(settings, q)
    reader.start()
    try:
        yield reader, q
    finally:
        reader.stop()
        assert reader.health().state == "stopped"


def sightings(reader: CardReader) -> int:
    """Cards the reader has read so far, new ones and repeats."""
    counters = reader.health().counters
    return counters.get("cards", 0) + counters.get("repeats", 0)


def take(q: queue.Queue[CardPresented], n: int) -> list[bytes]:
    return [q.get(timeout=WAIT_S).uid for _ in range(n)]


@pytest.fixture()
def plug(tmp_path: Path) -> Iterator[PtyPlug]:
    p = PtyPlug(tmp_path / "reader")
    yield p
    p.unplug()


def test_rdm6300_over_pty_chunked_held_and_left(plug: PtyPlug) -> None:
    settings = ReaderSettings(port=str(plug.link), kind="rdm6300", card_leave_s=1.0)
    with running_reader(settings) as (reader, q):
        assert wait_for(lambda: reader.health().up)
        uids = [bytes([0x0A, 1, 2, 3, k]) for k in range(5)]
        for k, uid in enumerate(uids):
            plug.write(rdm6300_frame(uid), chunks=1 + k * 3, pause_s=0.001)
        assert take(q, 5) == uids
        # A card held on the reader repeats its frame every 50 ms: one swipe.
        held = bytes.fromhex("1122334455")
        for n in range(12):
            plug.write(rdm6300_frame(held))
            # Each frame read on its own, as the reader sends them 50 ms apart.
            wait_for(lambda n=n: sightings(reader) >= 5 + n + 1, what="the frame read")
        assert take(q, 1) == [held]
        # Gone for longer than card_leave_s, then back: a new swipe.
        wait_for(lambda: card_gone(reader, held), what="card_leave_s to pass")
        plug.write(rdm6300_frame(held))
        assert take(q, 1) == [held]
        # Noise and broken frames never become cards.
        plug.write(random.Random(7).randbytes(200_000), chunks=50)
        plug.write(rdm6300_frame(held)[:-3] + b"\x03")
        sentinel = bytes.fromhex("99aabbccdd")
        plug.write(b"\x03\x03" + rdm6300_frame(sentinel))
        assert take(q, 1) == [sentinel]
        h = reader.health()
        assert h.counters["cards"] == 8 and h.counters["repeats"] >= 5
        assert h.counters["dropped_length"] >= 1


@given(
    uids=st.lists(uid5s, min_size=1, max_size=4, unique=True),
    cuts=st.lists(st.integers(min_value=0, max_value=100), max_size=12),
)
@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rdm6300_over_pty_every_chunking(uids: list[bytes], cuts: list[int]) -> None:
    rig = _pty_rig()
    plug, _reader, q = rig
    stream = b"".join(rdm6300_frame(u) for u in uids)
    for piece in chunked(stream, cuts):
        os.write(plug.master, piece)
    assert take(q, len(uids)) == uids
    assert q.empty()


_RIG: tuple[PtyPlug, CardReader, queue.Queue[CardPresented]] | None = None


def _pty_rig() -> tuple[PtyPlug, CardReader, queue.Queue[CardPresented]]:
    """One reader on one pty for all hypothesis examples (threads are too slow to make 25
    times); card_leave_s = 0 so that a UID repeated across examples still counts."""
    global _RIG
    if _RIG is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="canteen-pty-"))
        plug = PtyPlug(folder / "reader")
        q: queue.Queue[CardPresented] = queue.Queue()
        reader = CardReader(
            ReaderSettings(port=str(plug.link), kind="rdm6300", card_leave_s=0.0), q
        )
        reader.start()
        assert wait_for(lambda: reader.health().up)
        _RIG = (plug, reader, q)
    return _RIG


@pytest.fixture(autouse=True, scope="module")
def _close_rig() -> Iterator[None]:
    yield
    global _RIG
    if _RIG is not None:
        _RIG[1].stop()
        _RIG[0].unplug()
        _RIG = None


def test_unplug_and_replug(plug: PtyPlug) -> None:
    settings = ReaderSettings(
        port=str(plug.link), kind="rdm6300", reopen_backoff_s=0.05, reopen_backoff_max_s=0.2
    )
    with running_reader(settings) as (reader, q):
        assert wait_for(lambda: reader.health().up)
        plug.write(rdm6300_frame(b"\x01\x02\x03\x04\x05"))
        assert take(q, 1) == [b"\x01\x02\x03\x04\x05"]
        plug.unplug()
        assert wait_for(lambda: reader.health().state == "down")
        h = reader.health()
        assert "check the reader's USB cable" in h.detail
        # Several reopen attempts fail meanwhile.
        wait_for(lambda: reader.health().counters.get("open_failures", 0) >= 3, what="retries")
        assert reader.health().state == "down"
        plug.plug()
        assert wait_for(lambda: reader.health().up)
        assert reader.health().opens == 2
        plug.write(rdm6300_frame(b"\x01\x02\x03\x04\x06"))
        assert take(q, 1) == [b"\x01\x02\x03\x04\x06"]


def test_port_is_exclusive(plug: PtyPlug) -> None:
    settings = ReaderSettings(port=str(plug.link), kind="rdm6300")
    with running_reader(settings) as (first, _q1):
        # The second reader starts only once the first holds the port: otherwise
        # which of the two wins the lock is a race, not what this test is about.
        assert wait_for(lambda: first.health().up)
        with running_reader(settings) as (second, _q2):
            assert wait_for(lambda: second.health().counters.get("open_failures", 0) >= 1)
            assert not second.health().up
            assert "cannot open card reader port" in second.health().detail
            assert first.health().up


def test_ascii_decimal_reader_over_pty(plug: PtyPlug) -> None:
    settings = ReaderSettings(
        port=str(plug.link),
        kind="ascii",
        ascii_format="dec",
        ascii_byte_order="lsb_first",
        ascii_uid_bytes=4,
    )
    with running_reader(settings) as (reader, q):
        assert wait_for(lambda: reader.health().up)
        uid = bytes.fromhex("04a1b2c3")
        printed = str(int.from_bytes(uid[::-1], "big")).zfill(10).encode()
        plug.write(b"garbage\r\n" + b"7\r\n" + printed + b"\r\n", chunks=6)
        assert take(q, 1) == [uid]
        assert reader.health().counters["dropped_bad_uid"] == 2


def test_socket_url_reader() -> None:
    """The same reader over socket:// (pyserial's URL handlers): a ser2net-style bridge."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    settings = ReaderSettings(port=f"socket://127.0.0.1:{port}", kind="rdm6300")
    with running_reader(settings) as (reader, q):
        conn, _ = server.accept()
        # pyserial empties the input at open: send only once the port is up.
        assert wait_for(lambda: reader.health().up)
        uid = bytes.fromhex("0a0b0c0d0e")
        conn.sendall(rdm6300_frame(uid))
        assert take(q, 1) == [uid]
        conn.close()
        server.close()
        assert wait_for(lambda: not reader.health().up)


class EmulatorPump:
    """Serves the emulator on the pty master, answering in small random pieces."""

    def __init__(self, plug: PtyPlug, emu: Pn532Emulator) -> None:
        self.plug = plug
        self.emu = emu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(5)
        while not self._stop.is_set():
            if self.plug.master < 0:
                time.sleep(0.01)
                continue
            data = self.plug.read_available(0.02)
            if not data:
                continue
            answer = self.emu.receive(data)
            cuts = [rng.randrange(len(answer) + 1) for _ in range(rng.randint(0, 4))]
            for piece in chunked(answer, cuts):
                with contextlib.suppress(OSError):
                    os.write(self.plug.master, piece)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)


def test_pn532_over_pty(plug: PtyPlug) -> None:
    emu = Pn532Emulator()
    pump = EmulatorPump(plug, emu)
    settings = ReaderSettings(
        port=str(plug.link),
        kind="pn532",
        pn532_poll_s=0.05,
        pn532_timeout_s=0.2,
        card_leave_s=0.5,
    )
    try:
        with running_reader(settings) as (reader, q):
            assert wait_for(lambda: reader.health().up)
            assert q.empty()
            uid7 = bytes.fromhex("04112233445566")
            emu.card = uid7
            assert take(q, 1) == [uid7]
            # Still on the reader: polled again and again, one swipe.
            polled = reader.health().counters["frames"]
            wait_for(lambda: reader.health().counters["frames"] >= polled + 8, what="polls")
            assert q.empty()
            emu.card = None
            wait_for(lambda: card_gone(reader, uid7), what="card_leave_s to pass")
            emu.faults = ["bad_dcs", "nack", "error"]
            emu.card = uid7
            assert take(q, 1) == [uid7]
            # The module stops answering: the port is still open but health says down.
            emu.silent = True
            assert wait_for(lambda: reader.health().state == "down")
            assert "PN532 does not answer" in reader.health().detail
            emu.silent = False
            assert wait_for(lambda: reader.health().up)
            h = reader.health()
            assert h.counters["pn532_timeout"] >= 3 and h.counters["pn532_restart"] >= 1
            assert h.counters["dropped_dcs"] >= 1 and h.counters["pn532_nack"] >= 1
    finally:
        pump.stop()


def test_reader_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        ReaderSettings(kind="wiegand")
    with pytest.raises(ValueError, match="ascii_uid_bytes"):
        ReaderSettings(ascii_uid_bytes=3)
    assert ReaderSettings(kind="pn532").effective_baudrate == 115200
    assert ReaderSettings(kind="rdm6300").effective_baudrate == 9600
    assert CardLink(ReaderSettings(kind="rdm6300")).opened(0.0) == b""
