"""An MJPEG-over-HTTP camera read the way a V4L2 device with one buffer is read: newest frame wins.

This module owns the http(s):// camera source (an IP camera, or hw-sim's camera): one
connection, a reader thread that takes the multipart stream apart and keeps only the
newest JPEG part, and `read()`, which decodes that part, and only that part, straight
to 8-bit grey. It exists because FFmpeg through cv2.VideoCapture reads such a stream
in order: when decoding falls behind the stream (a Pi-class core, a slow frame), the
parts wait in the socket buffers and every frame read is older than the last, by up to
seconds; a V4L2 device with `buffer_frames = 1` overwrites instead. Dropping parts
unread also saves their JPEG decode. It offers the few cv2.VideoCapture methods the
camera thread and selftest call. It never decodes a QR code and never touches the
event queue.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

MAX_PART_BYTES = 8 * 1024 * 1024  # a 4K JPEG at high quality is about 2 MB
# Pixels of one frame: a few MB of JPEG can declare 16000x16000 (half a GB decoded).
MAX_PIXELS = 4096 * 4096
MAX_HEADER_LINE = 4096
MAX_HEADERS = 32
MAX_BLANK_LINES = 64  # between two parts: a CRLF or two, not an endless trickle
_SKIP_LOG_S = 60.0  # parts skipped as not a frame: one log line a minute at most
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class StreamError(OSError):
    """The URL does not serve an MJPEG stream, or the stream broke; the message says which."""


class NotMjpeg(StreamError):
    """The URL answered, but with something other than a multipart stream (a video file?)."""


class MjpegStream:
    """A multipart/x-mixed-replace JPEG stream; `read()` gives the newest part as grey.

    Opening connects and checks the answer (OSError if the server is unreachable
    or serves something else); a thread then reads parts until `release()` or an
    error, and `read()` waits up to `timeout_s` for a part newer than the last
    one it returned.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StreamError(f"{url} is not an http(s) URL")
        self.url = url
        self._timeout = timeout_s
        conn_cls = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self._conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self._sock: socket.socket | None = None
        try:
            self._conn.request("GET", path, headers={"Accept": "multipart/x-mixed-replace"})
            # Kept now: without a Content-Length the response takes the socket over, and
            # release() must still be able to shut it to wake the reader thread.
            self._sock = self._conn.sock
            resp = self._conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            raise StreamError(f"cannot reach {url}: {e}") from None
        ctype = resp.getheader("Content-Type", "")
        found = _BOUNDARY.search(ctype)
        if resp.status != 200 or not ctype.lower().startswith("multipart/") or found is None:
            self._conn.close()
            raise NotMjpeg(
                f"{url} answered {resp.status} {ctype or 'without a content type'}, "
                "not a multipart MJPEG stream"
            )
        self._resp = resp
        given = found.group(1).encode("latin-1")
        # Some cameras declare the boundary with its leading "--" already; take both.
        self._boundary: tuple[bytes, ...] = (b"--" + given,) + (
            (given,) if given.startswith(b"--") else ()
        )
        self._skipped_logged = 0.0
        self._not_frames = 0
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._taken = 0
        self._error: str | None = None
        self._closed = False
        self._pushback: bytes | None = None  # a boundary line read while scanning for it
        self.width = 0
        self.height = 0
        self.parts = 0  # parts received
        self.skipped = 0  # parts replaced by a newer one before read() took them
        self._thread = threading.Thread(target=self._receive, name="camera-mjpeg", daemon=True)
        self._thread.start()

    # -- what cv2.VideoCapture offers and the camera thread uses (hence the camelCase) --

    def isOpened(self) -> bool:
        with self._cond:
            return not self._closed and self._error is None

    def getBackendName(self) -> str:
        return "MJPEG reader (newest part)"

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self.width)
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self.height)
        if prop == cv2.CAP_PROP_FOURCC:
            return float(cv2.VideoWriter.fourcc(*"MJPG"))
        return 0.0  # the frame rate is not in the stream: the camera thread measures it

    def read(self) -> tuple[bool, Any]:
        """(True, grey frame) for the newest part not yet returned; (False, None) when none
        comes within the timeout or the stream broke. A part that is not a JPEG is skipped."""
        deadline = time.monotonic() + self._timeout
        while True:
            with self._cond:
                if not self._cond.wait_for(
                    lambda: self._seq > self._taken or self._error is not None or self._closed,
                    max(0.0, deadline - time.monotonic()),
                ):
                    return False, None
                if self._seq <= self._taken:  # broke or released, nothing newer
                    return False, None
                jpeg, self._taken = self._jpeg, self._seq
            assert jpeg is not None
            size = jpeg_size(jpeg)
            frame = None
            if size is not None and size[0] * size[1] <= MAX_PIXELS:
                frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
            if frame is not None:
                self.height, self.width = frame.shape[:2]
                return True, frame
            self._not_frames += 1
            if time.monotonic() - self._skipped_logged >= _SKIP_LOG_S:
                self._skipped_logged = time.monotonic()
                log.warning(
                    "%s: %d part(s) skipped: not a JPEG, or larger than %d pixels",
                    self.url,
                    self._not_frames,
                    MAX_PIXELS,
                )

    def release(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # shutdown wakes the reader thread out of a blocking recv; close alone may not.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not threading.current_thread():
            self._thread.join(self._timeout + 1)
        # Closed only once the reader is out of it: http.client is not thread-safe.
        with contextlib.suppress(OSError):
            self._resp.close()
        self._conn.close()

    # -- the reader thread --

    def _receive(self) -> None:
        try:
            while not self._closed:
                jpeg = self._next_part()
                with self._cond:
                    if self._seq > self._taken:
                        self.skipped += 1  # newest wins: the unread one is dropped undecoded
                    self._jpeg = jpeg
                    self._seq += 1
                    self.parts += 1
                    self._cond.notify_all()
        except (OSError, ValueError, http.client.HTTPException) as e:
            with self._cond:
                if not self._closed:
                    self._error = str(e) or type(e).__name__
                    log.info("%s: stream ended: %s", self.url, self._error)
                self._cond.notify_all()

    def _line(self) -> bytes:
        if self._pushback is not None:
            line, self._pushback = self._pushback, None
            return line
        line = self._resp.readline(MAX_HEADER_LINE + 1)
        if not line:
            raise StreamError("the stream ended")
        if len(line) > MAX_HEADER_LINE:
            raise StreamError("a part header line is too long: not an MJPEG stream")
        return line

    def _next_part(self) -> bytes:
        line = self._line()
        blank = 0
        while not line.startswith(self._boundary):  # the CRLF after a part, or a preamble
            blank += 1
            if line.strip() or blank > MAX_BLANK_LINES:
                raise StreamError("data between parts: not an MJPEG stream")
            line = self._line()
        if line.rstrip().endswith(b"--"):
            raise StreamError("the server ended the stream")
        length = None
        for _ in range(MAX_HEADERS):
            line = self._line()
            if not line.strip():
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        else:
            raise StreamError("a part has too many header lines")
        if length is not None:
            if not 0 < length <= MAX_PART_BYTES:
                raise StreamError(f"a part of {length} bytes: not a camera frame")
            data: bytes = self._resp.read(length)
            if len(data) < length:
                raise StreamError("the stream ended inside a part")
            return data
        return self._part_until_boundary()

    def _part_until_boundary(self) -> bytes:
        """A part without Content-Length (some IP cameras): up to the next boundary line."""
        fp = self._resp
        data = bytearray()  # one buffer: a part of millions of short lines costs its bytes
        while True:
            line: bytes = fp.readline(65536)
            if not line:
                raise StreamError("the stream ended inside a part")
            if line.startswith(self._boundary):
                self._pushback = line
                break
            data += line
            if len(data) > MAX_PART_BYTES:
                raise StreamError("a part without a length grew past 8 MB: not a camera frame")
        if data.endswith(b"\r\n"):
            del data[-2:]
        return bytes(data)


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic), which carry
# the frame's size; the others (DHT C4, JPG C8, DAC CC) are not frames.
_SOF = frozenset((*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read before decoding; None if not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF and i + 9 <= len(data):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None
