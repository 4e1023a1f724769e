"""A PN532 NFC module in HSU (UART) mode, as the terminal's card reader sees it on the wire.

This module owns the device side of the PN532 conversation, written from NXP's
PN532 user manual (UM0701-02), not from the terminal's code: it finds host
frames (00 00 FF LEN LCS D4 data DCS 00) among wake-up bytes, ACKs each good
command and answers SAMConfiguration, RFConfiguration, GetFirmwareVersion and
InListPassiveTarget (one ISO 14443-A target when a card is in the field, none
otherwise), NACKs a frame with a bad checksum, and answers an unknown command
with an error frame. Faults can be injected for tests ("nack", "error",
"bad_dcs", or `silent`). It is pure: bytes in, bytes out, no port and no
clock, so the simulated reader (hwsim.reader) and the scanner tests drive the
same emulator. It never checks what the host does with its answers.
"""

from __future__ import annotations

import threading

ACK = bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00])
NACK = bytes([0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00])
ERROR_FRAME = bytes([0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00])
FIRMWARE = bytes([0x32, 0x01, 0x06, 0x07])  # PN532, v1.6, supports ISO 14443 A/B and 18092

_HOST = 0xD4
_DEVICE = 0xD5
_GET_FIRMWARE_VERSION = 0x02
_SAM_CONFIGURATION = 0x14
_RF_CONFIGURATION = 0x32
_IN_LIST_PASSIVE_TARGET = 0x4A
FAULTS = ("nack", "error", "bad_dcs")


def device_frame(data: bytes) -> bytes:
    """A PN532-to-host normal information frame: 00 00 FF LEN LCS D5 data DCS 00."""
    body = bytes([_DEVICE]) + data
    if len(body) > 255:
        raise ValueError("a normal PN532 frame carries at most 254 data bytes")
    return (
        bytes([0x00, 0x00, 0xFF, len(body), (-len(body)) & 0xFF])
        + body
        + bytes([(-sum(body)) & 0xFF, 0x00])
    )


def target_data(uid: bytes) -> bytes:
    """One ISO 14443-A target as InListPassiveTarget reports it: Tg, SENS_RES, SEL_RES,
    NFCIDLength, NFCID1 (a Mifare Classic 1K for 4-byte UIDs, an Ultralight for longer)."""
    if len(uid) not in (4, 7, 10):
        raise ValueError(f"an ISO 14443-A card has a 4, 7 or 10 byte UID, not {len(uid)}")
    sens_res, sel_res = (b"\x00\x04", 0x08) if len(uid) == 4 else (b"\x00\x44", 0x00)
    return bytes([0x01]) + sens_res + bytes([sel_res, len(uid)]) + uid


class Pn532Emulator:
    """The PN532 at the far end of the wire: `receive(host bytes) -> bytes to send back`.

    `card` is the UID in the field (None: no card). `card_reads` counts the
    InListPassiveTarget answers that reported a card. `faults` is consumed one
    per command. Thread-safe: a test or the simulator may set `card` while
    another thread feeds bytes.
    """

    MAX_BUFFER = 1024

    def __init__(self) -> None:
        self.card: bytes | None = None
        self.silent = False
        self.faults: list[str] = []
        self.commands: list[int] = []  # command codes answered, in order
        self.card_reads = 0
        self.nacks_sent = 0
        self._buf = bytearray()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget half-received bytes, as a power cycle does (a replugged module)."""
        with self._lock:
            self._buf.clear()

    def receive(self, data: bytes) -> bytes:
        with self._lock:
            buf = self._buf
            buf += data
            out = bytearray()
            while True:
                start = buf.find(b"\x00\xff")
                if start < 0:
                    # Keep a last 00: it may be the first half of a start code.
                    del buf[: len(buf) - 1 if buf.endswith(b"\x00") else len(buf)]
                    break
                del buf[:start]
                if len(buf) < 4:
                    break
                length, lcs = buf[2], buf[3]
                if (length, lcs) in ((0x00, 0xFF), (0xFF, 0x00)):
                    del buf[:4]  # the host's ACK (abort) or NACK: nothing to answer
                    continue
                if (length + lcs) & 0xFF or length == 0:
                    del buf[:2]
                    continue
                if len(buf) < 4 + length + 1:
                    break
                body = bytes(buf[4 : 4 + length])
                dcs = buf[4 + length]
                del buf[: 4 + length + 1]
                if self.silent:
                    continue
                if (sum(body) + dcs) & 0xFF or body[0] != _HOST or length < 2:
                    self.nacks_sent += 1
                    out += NACK
                    continue
                out += self._answer(body[1:])
            if len(buf) > self.MAX_BUFFER:
                buf.clear()
            return bytes(out)

    def _answer(self, command: bytes) -> bytes:
        fault = self.faults.pop(0) if self.faults else None
        if fault == "nack":
            self.nacks_sent += 1
            return NACK
        if fault == "error":
            return ACK + ERROR_FRAME
        code = command[0]
        if code in (_SAM_CONFIGURATION, _RF_CONFIGURATION):
            data = bytes([code + 1])
        elif code == _GET_FIRMWARE_VERSION:
            data = bytes([code + 1]) + FIRMWARE
        elif code == _IN_LIST_PASSIVE_TARGET:
            card = self.card
            if card is None:
                data = bytes([code + 1, 0x00])
            else:
                data = bytes([code + 1, 0x01]) + target_data(card)
                self.card_reads += 1
        else:
            return ACK + ERROR_FRAME
        self.commands.append(code)
        answer = bytearray(device_frame(data))
        if fault == "bad_dcs":
            answer[-2] ^= 0x5A
        return ACK + bytes(answer)
