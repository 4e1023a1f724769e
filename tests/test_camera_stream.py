"""The http(s) camera source read like a V4L2 device with one buffer: the newest frame wins.

A real MJPEG server on 127.0.0.1 numbers its frames (grey blocks whose levels give the
frame's number); the terminal's own open_capture reads it. A reader that falls behind
the stream (a slow core) must get the newest frame, never one that waited in a socket
buffer, and a URL that is no MJPEG stream is one clear line.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest
from conftest import wait_for

from terminal.scanner.camera import CameraSettings, open_capture
from terminal.scanner.mjpeg import MjpegStream, jpeg_size

# Frame k shows its number in two grey blocks, level (k % 25) * 10 top left and
# (k // 25 % 25) * 10 top right: frames are told apart over 625 in a row.
LEVELS = 25
NUMBERS = LEVELS * LEVELS
WAIT_S = 10.0


class NumberedStream:
    """multipart/x-mixed-replace frames at `fps`, each showing its number; `sent` counts them."""

    def __init__(self, fps: float = 25, with_length: bool = True, kind: str = "mjpeg") -> None:
        self.sent = -1
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (240, 320), dtype=np.uint8)
        self.jpegs = []
        for k in range(NUMBERS):
            frame = base.copy()
            frame[:80, :80] = k % LEVELS * 10
            frame[:80, -80:] = k // LEVELS * 10
            self.jpegs.append(cv2.imencode(".jpg", frame)[1].tobytes())
        owner = self
        self._gone = threading.Event()
        gone = self._gone

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if kind == "html":
                    body = b"<html>not a camera</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                k = 0
                while not gone.is_set():
                    jpg = owner.jpegs[k % NUMBERS]
                    head = "--frame\r\nContent-Type: image/jpeg\r\n"
                    if with_length:
                        head += f"Content-Length: {len(jpg)}\r\n"
                    try:
                        self.wfile.write(head.encode() + b"\r\n" + jpg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    owner.sent = k
                    k += 1
                    gone.wait(1.0 / fps)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/stream.mjpg"

    def stop(self) -> None:
        self._gone.set()
        self._server.shutdown()
        self._server.server_close()


def number(frame: np.ndarray) -> int:
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    low = round(float(grey[:80, :80].mean()) / 10) % LEVELS
    high = round(float(grey[:80, -80:].mean()) / 10) % LEVELS
    return high * LEVELS + low


@pytest.fixture()
def stream() -> Iterator[NumberedStream]:
    s = NumberedStream()
    yield s
    s.stop()


def sent_at_least(server: NumberedStream, n: int) -> Callable[[], bool]:
    return lambda: server.sent >= n


def reads_after_falling_behind(server: NumberedStream) -> list[int]:
    """For reads that each come 10 frames late: how much newer each frame read is than the
    newest frame sent before the read began (0: that one; negative: an older one)."""
    cap, described = open_capture(CameraSettings(source=server.url, stall_s=3.0))
    assert isinstance(cap, MjpegStream), described
    assert "newest" in described
    try:
        newer = []
        for _ in range(3):
            assert cap.read()[0]
            # The reader falls 10 frames behind (decoding on a starved core, say).
            assert wait_for(sent_at_least(server, server.sent + 10))
            newest = server.sent
            ok, frame = cap.read()
            assert ok
            newer.append((number(frame) - newest + NUMBERS // 2) % NUMBERS - NUMBERS // 2)
        return newer
    finally:
        cap.release()


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "boundary-only"])
def test_a_reader_that_falls_behind_gets_the_newest_frame(with_length: bool) -> None:
    server = NumberedStream(with_length=with_length)
    try:
        # FFmpeg read these in order: each read gave the frame after the last one read,
        # 9 or more frames older than the newest sent (more once the socket buffers
        # fill). Here a frame or two may still be on its way to the reader thread, and a
        # part without Content-Length is whole only when the next one begins.
        assert all(n >= -3 for n in reads_after_falling_behind(server))
    finally:
        server.stop()


def test_frames_are_grey_and_the_size_is_known(stream: NumberedStream) -> None:
    cap, _ = open_capture(CameraSettings(source=stream.url))
    try:
        ok, frame = cap.read()
        assert ok and frame.ndim == 2 and frame.dtype == np.uint8
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
            320,
            240,
        )
    finally:
        cap.release()


def test_a_stream_that_stops_ends_reads(stream: NumberedStream) -> None:
    cap, _ = open_capture(CameraSettings(source=stream.url, stall_s=1.0))
    try:
        assert cap.read()[0]
        stream.stop()
        assert wait_for(lambda: not cap.read()[0])
        assert not cap.isOpened()
    finally:
        cap.release()


def test_no_server_and_not_a_stream_are_one_clear_line() -> None:
    page = NumberedStream(kind="html")
    try:
        with pytest.raises(OSError, match="not a multipart MJPEG stream"):
            MjpegStream(page.url, 2.0)
    finally:
        page.stop()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    with pytest.raises(OSError, match=r"cannot reach .* check that the stream's server") as e:
        open_capture(CameraSettings(source=url, stall_s=1.0))
    assert "\n" not in str(e.value)


class RawStream:
    """A one-connection HTTP/1.1 server on 127.0.0.1 that answers with `head` and then
    whatever `body(conn)` writes; stops with the test."""

    def __init__(self, content_type: str, body: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.done = threading.Event()

        def serve() -> None:
            conn, _ = self._listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n".encode())
                with contextlib.suppress(OSError):
                    body(conn)
            self.done.set()

        threading.Thread(target=serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/stream.mjpg"

    def close(self) -> None:
        self._listener.close()


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    return cv2.imencode(".jpg", np.full((height, width), 128, np.uint8))[1].tobytes()


def test_release_stops_the_reader_of_a_stream_that_drips_without_lengths() -> None:
    """No Content-Length (the response takes the socket over) and a byte every 0.2 s,
    inside the per-read timeout: release() must still stop the reader thread."""
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n")
        while not stop.wait(0.2):
            conn.sendall(b"x")

    server = RawStream("multipart/x-mixed-replace; boundary=frame", drip)
    try:
        reader = MjpegStream(server.url, timeout_s=1.0)
        assert wait_for(lambda: reader._thread.is_alive())
        reader.release()
        assert wait_for(lambda: not reader._thread.is_alive(), timeout_s=3.0)
    finally:
        stop.set()
        server.close()


def test_a_frame_declaring_too_many_pixels_is_skipped_undecoded() -> None:
    bomb = bytearray(_jpeg())
    size = jpeg_size(bytes(bomb))
    assert size == (64, 48)
    # The same JPEG with a frame header claiming 16000x16000: half a GB if decoded.
    sof = next(i for i in range(2, len(bomb)) if bomb[i] == 0xFF and bomb[i + 1] == 0xC0)
    bomb[sof + 5 : sof + 9] = (16000).to_bytes(2, "big") * 2
    assert jpeg_size(bytes(bomb)) == (16000, 16000)
    good = _jpeg(80, 60)
    stop, go = threading.Event(), threading.Event()

    def part(conn: socket.socket, jpg: bytes) -> None:
        length = str(len(jpg)).encode()
        conn.sendall(
            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + length + b"\r\n\r\n"
        )
        conn.sendall(jpg + b"\r\n")

    def parts(conn: socket.socket) -> None:
        part(conn, bytes(bomb))
        go.wait(10)  # the good frame only once the bomb was read
        part(conn, good)
        stop.wait(10)

    server = RawStream("multipart/x-mixed-replace; boundary=frame", parts)
    try:
        reader = MjpegStream(server.url, timeout_s=10.0)
        try:
            assert wait_for(lambda: reader.parts == 1)
            # The good frame is sent only once the bomb was skipped (never decoded); the
            # same read() then goes on to it.
            threading.Thread(
                target=lambda: wait_for(lambda: reader._not_frames == 1) and go.set(),
                daemon=True,
            ).start()
            ok, frame = reader.read()
            assert ok and frame.shape == (60, 80)
            assert reader._not_frames == 1
        finally:
            reader.release()
    finally:
        stop.set()
        go.set()
        server.close()


def test_a_boundary_declared_with_its_dashes_is_read() -> None:
    stop = threading.Event()
    jpg = _jpeg()

    def parts(conn: socket.socket) -> None:
        while not stop.is_set():
            conn.sendall(b"--myboundary\r\nContent-Type: image/jpeg\r\n\r\n" + jpg + b"\r\n")
            stop.wait(0.05)

    server = RawStream("multipart/x-mixed-replace; boundary=--myboundary", parts)
    try:
        reader = MjpegStream(server.url, timeout_s=3.0)
        try:
            ok, frame = reader.read()
            assert ok and frame.shape == (48, 64)
        finally:
            reader.release()
    finally:
        stop.set()
        server.close()
