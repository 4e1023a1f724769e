"""Card reader framing: bytes from a serial port in, canonical card UIDs out. Pure code.

This module owns the byte-level protocols of the supported readers and the
card UID normalisation rule. Each framer is fed bytes in whatever chunks the
port delivers, with the arrival time, and returns the UIDs of complete,
checked frames. Bad bytes never become a card: a wrong checksum, a wrong
length, a non-hex or non-digit character, an over-long line, or a gap inside
a frame longer than the set time drops the frame, counts it under a reason in
`drops`, and the framer resynchronises on the next start byte. Buffers are
bounded. It never opens a port, never reads a clock, never imports a device
library and never decides anything about a card.

Canonical UID bytes (what the roster and the revocation list compare):

- ISO 14443-A (Mifare) cards: the UID bytes in the order the card sends them
  in anticollision, UID0 first (the PN532's NFCID1 order); 4, 7 or 10 bytes.
  Cascade tags (0x88) are not part of the UID.
- EM4100 / 125 kHz (RDM6300): the 5 data bytes as sent, version (customer)
  byte first, then the 32-bit id, most significant byte first.
- ASCII line readers print a UID as hex or zero-padded decimal; the reader's
  byte order setting says whether it prints UID0 first (``msb_first``) or
  last (``lsb_first``), and the framer turns it into the order above.

A UID is written in hex, lowercase, without separators, in files and logs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Lengths a canonical UID may have: ISO 14443-A single/double/triple size,
# EM4100, and 8 bytes (ISO 15693 / some readers' padded output).
UID_LENGTHS = frozenset({4, 5, 7, 8, 10})

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_DEC_DIGITS = frozenset(b"0123456789")
_LINE_END = re.compile(rb"[\r\n]")


class BadUid(ValueError):
    """Text that is not a card UID in the expected format."""


def uid_hex(uid: bytes) -> str:
    """The written form of a canonical UID: lowercase hex, no separators."""
    return uid.hex()


def canonical_uid(raw: bytes, byte_order: str = "msb_first") -> bytes:
    """Canonical UID bytes from bytes a reader gave in `byte_order`; BadUid if impossible."""
    if byte_order not in ("msb_first", "lsb_first"):
        raise BadUid(f"byte order {byte_order!r} is not msb_first or lsb_first")
    if len(raw) not in UID_LENGTHS:
        raise BadUid(f"a card UID has {sorted(UID_LENGTHS)} bytes, not {len(raw)}")
    return bytes(reversed(raw)) if byte_order == "lsb_first" else bytes(raw)


def decimal_width(uid_bytes: int) -> int:
    """Digits in the zero-padded decimal form of a `uid_bytes`-byte UID (4 bytes: 10)."""
    return len(str(256**uid_bytes - 1))


def parse_uid_text(
    text: bytes, fmt: str = "hex", byte_order: str = "msb_first", uid_bytes: int = 4
) -> bytes:
    """A reader's printed UID (no line ending) to canonical bytes; BadUid if it is not one.

    ``hex``: an even number of hex digits, either case. ``dec``: exactly
    `decimal_width(uid_bytes)` digits, zero-padded, as common readers print
    them; a shorter number is refused because a stray digit on the line must
    not become a card.
    """
    if fmt == "hex":
        if not text or any(c not in _HEX_DIGITS for c in text):
            raise BadUid("not hex digits")
        if len(text) % 2:
            raise BadUid("odd number of hex digits")
        raw = bytes.fromhex(text.decode("ascii"))
    elif fmt == "dec":
        if not text or any(c not in _DEC_DIGITS for c in text):
            raise BadUid("not decimal digits")
        if len(text) != decimal_width(uid_bytes):
            raise BadUid(f"decimal UID needs exactly {decimal_width(uid_bytes)} digits")
        value = int(text)
        if value >= 256**uid_bytes:
            raise BadUid(f"decimal UID too large for {uid_bytes} bytes")
        raw = value.to_bytes(uid_bytes, "big")
    else:
        raise BadUid(f"UID format {fmt!r} is not hex or dec")
    return canonical_uid(raw, byte_order)


class Framer:
    """Base of the card framers: drop counters and the gap rule. Subclasses add
    ``feed(data, now) -> list[bytes]`` (UIDs) or, for the PN532, ``parse``."""

    def __init__(self, gap_s: float) -> None:
        if gap_s <= 0:
            raise ValueError("gap_s must be > 0")
        self.gap_s = gap_s
        self.drops: Counter[str] = Counter()  # reason -> frames dropped
        self.accepted = 0  # frames accepted
        self.noise_bytes = 0  # bytes outside any frame
        self._last_byte_at: float | None = None

    def _gap(self, now: float) -> bool:
        """Records a chunk's arrival; True if the quiet time before it exceeds gap_s."""
        last, self._last_byte_at = self._last_byte_at, now
        return last is not None and now - last > self.gap_s


class Rdm6300Framer(Framer):
    """RDM6300 / EM4100 125 kHz: STX, 10 hex (version + 32-bit id), 2 hex XOR checksum, ETX.

    The frame structure does the work against noise: random bytes would need
    STX, 12 hex digits, ETX at the right places and a matching checksum, about
    1e-20 per byte offset, so 10 MB of noise gives no card (measured: none).
    """

    STX = 0x02
    ETX = 0x03
    BODY = 12  # hex digits between STX and ETX

    def __init__(self, gap_s: float = 0.1) -> None:
        super().__init__(gap_s)
        self._body: bytearray | None = None  # None: hunting for STX

    def feed(self, data: bytes, now: float) -> list[bytes]:
        if self._gap(now) and self._body is not None:
            self.drops["gap"] += 1
            self._body = None
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            body = self._body
            if body is None:
                # Hunting: skip to the next STX at C speed (noise is most bytes).
                j = data.find(self.STX, i)
                if j < 0:
                    self.noise_bytes += n - i
                    break
                self.noise_bytes += j - i
                self._body = bytearray()
                i = j + 1
                continue
            b = data[i]
            i += 1
            if b == self.STX:
                self.drops["truncated"] += 1
                self._body = bytearray()
            elif b == self.ETX:
                self._body = None
                uid = self._finish(body)
                if uid is not None:
                    out.append(uid)
            elif b not in _HEX_DIGITS:
                self.drops["not_hex"] += 1
                self._body = None
            elif len(body) >= self.BODY:
                self.drops["length"] += 1
                self._body = None
            else:
                body.append(b)
        return out

    def _finish(self, body: bytearray) -> bytes | None:
        if len(body) != self.BODY:
            self.drops["length"] += 1
            return None
        raw = bytes.fromhex(body.decode("ascii"))
        data, checksum = raw[:5], raw[5]
        x = 0
        for b in data:
            x ^= b
        if x != checksum:
            self.drops["checksum"] += 1
            return None
        self.accepted += 1
        return data


class AsciiLineFramer(Framer):
    """ASCII line readers: the UID as hex or decimal digits, ending in CR and/or LF.

    A line is everything between two line endings (or after a quiet gap), so
    noise next to a UID spoils the line instead of being skipped over; decimal
    UIDs must have their full zero-padded width, so a stray digit is never a
    card. Lines longer than `max_line` are dropped whole.
    """

    def __init__(
        self,
        fmt: str = "hex",
        byte_order: str = "msb_first",
        uid_bytes: int = 4,
        max_line: int = 32,
        gap_s: float = 0.1,
    ) -> None:
        super().__init__(gap_s)
        if fmt not in ("hex", "dec"):
            raise ValueError(f"ASCII reader format {fmt!r} is not hex or dec")
        if byte_order not in ("msb_first", "lsb_first"):
            raise ValueError(f"byte order {byte_order!r} is not msb_first or lsb_first")
        if uid_bytes not in UID_LENGTHS:
            raise ValueError(f"uid_bytes must be one of {sorted(UID_LENGTHS)}")
        if max_line < 8:
            raise ValueError("max_line must be at least 8")
        self.fmt = fmt
        self.byte_order = byte_order
        self.uid_bytes = uid_bytes
        self.max_line = max_line
        self._line = bytearray()
        self._overlong = False

    def feed(self, data: bytes, now: float) -> list[bytes]:
        if self._gap(now):
            if self._line or self._overlong:
                self.drops["gap"] += 1
            self._line.clear()
            self._overlong = False
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            m = _LINE_END.search(data, i)
            j = m.start() if m else n
            if j > i and not self._overlong:
                # Whole segments at a time: bounded by max_line, never by the input.
                if len(self._line) + (j - i) > self.max_line:
                    self.drops["overlong"] += 1
                    self._line.clear()
                    self._overlong = True
                else:
                    self._line += data[i:j]
            if m is None:
                break
            if self._line and not self._overlong:
                uid = self._finish(bytes(self._line))
                if uid is not None:
                    out.append(uid)
            self._line.clear()
            self._overlong = False
            i = j + 1
        return out

    def _finish(self, line: bytes) -> bytes | None:
        try:
            uid = parse_uid_text(line, self.fmt, self.byte_order, self.uid_bytes)
        except BadUid:
            self.drops["bad_uid"] += 1
            return None
        self.accepted += 1
        return uid


# --- PN532 over HSU (UART) -------------------------------------------------

PN532_HOST_TFI = 0xD4
PN532_DEVICE_TFI = 0xD5
PN532_ERROR_TFI = 0x7F
PN532_ACK = bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00])
PN532_NACK = bytes([0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00])
# HSU wake-up: the 0x55 sync bytes and a long run of zeros before the first command.
PN532_WAKEUP = bytes([0x55, 0x55]) + bytes(14)

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A


def pn532_command(data: bytes) -> bytes:
    """A host-to-PN532 normal information frame carrying `data` (command code first)."""
    if not 1 <= len(data) <= 254:
        raise ValueError("a normal PN532 frame carries 1 to 254 data bytes")
    body = bytes([PN532_HOST_TFI]) + data
    length = len(body)
    dcs = (-sum(body)) & 0xFF
    return bytes([0x00, 0x00, 0xFF, length, (-length) & 0xFF]) + body + bytes([dcs, 0x00])


@dataclass(frozen=True)
class Pn532Frame:
    """One frame from the PN532: an ACK, a NACK, an error frame, or a response."""

    kind: str  # "ack", "nack", "error" or "response"
    data: bytes = b""  # response: the bytes after TFI (response code first)


class Pn532FrameParser(Framer):
    """Checks PN532 frames: start code 00 FF, LEN/LCS, TFI, DCS; postamble and preamble
    zeros are tolerated either way. Frames from the host (TFI D4, e.g. an echo
    on a loopback) and extended frames are dropped and counted."""

    MAX_BUFFER = 512

    def __init__(self, gap_s: float = 0.1) -> None:
        super().__init__(gap_s)
        self._buf = bytearray()

    def parse(self, data: bytes, now: float) -> list[Pn532Frame]:
        if self._gap(now) and self._buf.rstrip(b"\x00"):
            # Part of a frame, then silence: the rest is not coming.
            self.drops["gap"] += 1
            self._buf.clear()
        self._buf += data
        out: list[Pn532Frame] = []
        buf = self._buf
        while True:
            start = buf.find(b"\x00\xff")
            if start < 0:
                # Keep a trailing 00: it may be the first half of a start code.
                start = len(buf) - 1 if buf.endswith(b"\x00") else len(buf)
            if start:
                # Preamble and wake-up zeros are expected between frames; count the rest.
                self.noise_bytes += start - buf.count(0, 0, start)
                del buf[:start]
            if len(buf) < 4 or buf[1] != 0xFF:
                break
            length, lcs = buf[2], buf[3]
            if length == 0x00 and lcs == 0xFF:
                out.append(Pn532Frame("ack"))
                del buf[:4]
                continue
            if length == 0xFF and lcs == 0x00:
                out.append(Pn532Frame("nack"))
                del buf[:4]
                continue
            if length == 0xFF and lcs == 0xFF:
                self.drops["extended"] += 1
                del buf[:2]
                continue
            if (length + lcs) & 0xFF or length == 0:
                self.drops["lcs"] += 1
                del buf[:2]
                continue
            need = 4 + length + 1  # start code, LEN, LCS, TFI+data, DCS
            if len(buf) < need:
                break
            body = bytes(buf[4 : 4 + length])
            dcs = buf[4 + length]
            if (sum(body) + dcs) & 0xFF:
                self.drops["dcs"] += 1
                del buf[:2]
                continue
            del buf[:need]
            tfi = body[0]
            if tfi == PN532_ERROR_TFI and length == 1:
                out.append(Pn532Frame("error"))
            elif tfi == PN532_DEVICE_TFI and length >= 2:
                self.accepted += 1
                out.append(Pn532Frame("response", body[1:]))
            else:
                self.drops["tfi"] += 1
        if len(buf) > self.MAX_BUFFER:
            self.drops["overlong"] += 1
            buf.clear()
        return out


def parse_in_list_passive_target(data: bytes) -> bytes | None:
    """The canonical UID in an InListPassiveTarget (106 kbps type A) response, None if no card.

    `data` starts at the response code 0x4B: 4B NbTg Tg SENS_RES(2) SEL_RES
    NFCIDLength NFCID1 [ATS]. BadUid if a target is reported but malformed.
    """
    if len(data) < 2 or data[0] != CMD_IN_LIST_PASSIVE_TARGET + 1:
        raise BadUid("not an InListPassiveTarget response")
    if data[1] == 0:
        return None
    if len(data) < 7:
        raise BadUid("target data too short")
    n = data[6]
    if len(data) < 7 + n:
        raise BadUid("NFCID1 shorter than its length byte")
    uid = data[7 : 7 + n]
    if n not in (4, 7, 10):
        raise BadUid(f"an ISO 14443-A UID has 4, 7 or 10 bytes, not {n}")
    return canonical_uid(uid)


class Pn532Session:
    """The PN532 conversation as a pure state machine: wake it, configure it, then poll.

    Sequence: wake-up bytes, SAMConfiguration (normal mode), RFConfiguration
    (few passive-activation retries, so a poll with no card answers at once
    instead of waiting forever), GetFirmwareVersion, then InListPassiveTarget
    (one target, 106 kbps type A) every `poll_s`. Every command must be ACKed
    and answered within `timeout_s`; a NACK resends it; an error frame or a
    timeout counts as a failure, and after `max_failures` in a row the session
    starts again from the wake-up (the module may have been power-cycled).

    The caller writes what `start`, `on_bytes` and `tick` return to the port and
    calls `tick` at least every few tens of milliseconds.
    """

    def __init__(
        self,
        poll_s: float = 0.15,
        timeout_s: float = 0.5,
        max_failures: int = 3,
        gap_s: float = 0.1,
    ) -> None:
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.max_failures = max_failures
        self.parser = Pn532FrameParser(gap_s)
        self.ready = False  # the PN532 answered the whole set-up
        self.firmware: tuple[int, int, int] | None = None  # IC, version, revision
        self.failures = 0  # consecutive
        self.events: Counter[str] = Counter()  # timeouts, nacks, error frames, restarts
        self.last_answer_at: float | None = None
        self._steps: list[bytes] = []
        self._sent: bytes | None = None  # command data awaiting ACK / response
        self._acked = False
        self._deadline = 0.0
        self._next_poll_at = 0.0

    def start(self, now: float) -> bytes:
        """Bytes that wake and configure the PN532; call again to restart."""
        self.ready = False
        self._steps = [
            bytes([CMD_SAM_CONFIGURATION, 0x01, 0x14, 0x01]),
            bytes([CMD_RF_CONFIGURATION, 0x05, 0xFF, 0x01, 0x02]),
            bytes([CMD_GET_FIRMWARE_VERSION]),
        ]
        return PN532_WAKEUP + self._send_next(now)

    def _send_next(self, now: float) -> bytes:
        if self._steps:
            return self._send(self._steps.pop(0), now)
        self._sent = None
        self._next_poll_at = now + self.poll_s
        return b""

    def _send(self, data: bytes, now: float) -> bytes:
        self._sent = data
        self._acked = False
        self._deadline = now + self.timeout_s
        return pn532_command(data)

    def on_bytes(self, data: bytes, now: float) -> tuple[bytes, list[bytes]]:
        """Feed received bytes: (bytes to write, UIDs of cards seen)."""
        out = bytearray()
        uids: list[bytes] = []
        for frame in self.parser.parse(data, now):
            w, uid = self._on_frame(frame, now)
            out += w
            if uid is not None:
                uids.append(uid)
        return bytes(out), uids

    def _on_frame(self, frame: Pn532Frame, now: float) -> tuple[bytes, bytes | None]:
        sent = self._sent
        if sent is None:
            self.events["unexpected"] += 1
            return b"", None
        if frame.kind == "ack":
            self._acked = True
            self._deadline = now + self.timeout_s
            return b"", None
        if frame.kind == "nack":
            self.events["nack"] += 1
            return self._send(sent, now), None
        if frame.kind == "error":
            self.events["error_frame"] += 1
            return self._failed(now), None
        if not frame.data or frame.data[0] != sent[0] + 1:
            self.events["unexpected"] += 1
            return b"", None
        self.failures = 0
        self.last_answer_at = now
        uid: bytes | None = None
        if sent[0] == CMD_GET_FIRMWARE_VERSION and len(frame.data) >= 4:
            self.firmware = (frame.data[1], frame.data[2], frame.data[3])
        if sent[0] == CMD_IN_LIST_PASSIVE_TARGET:
            try:
                uid = parse_in_list_passive_target(frame.data)
            except BadUid:
                self.parser.drops["bad_target"] += 1
        write = self._send_next(now)
        if self._sent is None:
            self.ready = True
        return write, uid

    def _failed(self, now: float) -> bytes:
        self.failures += 1
        if self.failures >= self.max_failures:
            self.events["restart"] += 1
            self.failures = 0
            # An ACK from the host aborts whatever the PN532 is doing.
            return PN532_ACK + self.start(now)
        if self._sent is not None:
            return PN532_ACK + self._send(self._sent, now)
        return b""

    def tick(self, now: float) -> bytes:
        """Timeouts and the next poll: bytes to write, possibly none."""
        if self._sent is not None:
            if now >= self._deadline:
                self.events["timeout"] += 1
                return self._failed(now)
            return b""
        if now >= self._next_poll_at:
            return self._send(bytes([CMD_IN_LIST_PASSIVE_TARGET, 0x01, 0x00]), now)
        return b""
