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
MAX_HEADER_LINE = 4096
MAX_HEADERS = 32
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
        try:
            self._conn.request("GET", path, headers={"Accept": "multipart/x-mixed-replace"})
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
        self._boundary = b"--" + found.group(1).encode("latin-1")
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
            frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
            if frame is not None:
                self.height, self.width = frame.shape[:2]
                return True, frame
            log.warning("%s: a part that is not a JPEG was skipped", self.url)

    def release(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # shutdown wakes the reader thread out of a blocking recv; close alone may not.
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        if self._thread is not threading.current_thread():
            self._thread.join(self._timeout + 1)

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
        while not line.startswith(self._boundary):  # the CRLF after a part, or a preamble
            if line.strip():
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
        chunks: list[bytes] = []
        size = 0
        while True:
            line: bytes = fp.readline(65536)
            if not line:
                raise StreamError("the stream ended inside a part")
            if line.startswith(self._boundary):
                self._pushback = line
                break
            chunks.append(line)
            size += len(line)
            if size > MAX_PART_BYTES:
                raise StreamError("a part without a length grew past 8 MB: not a camera frame")
        data = b"".join(chunks)
        return data[:-2] if data.endswith(b"\r\n") else data
