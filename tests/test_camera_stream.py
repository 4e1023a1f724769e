"""The http(s) camera source read like a V4L2 device with one buffer: the newest frame wins.

A real MJPEG server on 127.0.0.1 numbers its frames (a grey block whose level is the
frame's number); the terminal's own open_capture reads it. A reader that falls behind
the stream (a slow core) must get the newest frame, never one that waited in a socket
buffer, and a URL that is no MJPEG stream is one clear line.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest

from terminal.scanner.camera import CameraSettings, open_capture
from terminal.scanner.mjpeg import MjpegStream

LEVELS = 25  # frame k shows level (k % LEVELS) * 10 in its top-left block
WAIT_S = 10.0


def wait_for(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


class NumberedStream:
    """multipart/x-mixed-replace frames at `fps`, each showing its number; `sent` counts them."""

    def __init__(self, fps: float = 50, with_length: bool = True, kind: str = "mjpeg") -> None:
        self.sent = -1
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (240, 320), dtype=np.uint8)
        self.jpegs = []
        for v in range(LEVELS):
            frame = base.copy()
            frame[:80, :80] = v * 10
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
                    jpg = owner.jpegs[k % LEVELS]
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


def level(frame: np.ndarray) -> int:
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return round(float(grey[:80, :80].mean()) / 10) % LEVELS


@pytest.fixture()
def stream() -> Iterator[NumberedStream]:
    s = NumberedStream()
    yield s
    s.stop()


def frames_behind_after_falling_behind(server: NumberedStream) -> list[int]:
    """How far behind the newest frame each read is, when each read comes 10 frames late."""
    cap, described = open_capture(CameraSettings(source=server.url, stall_s=3.0))
    assert isinstance(cap, MjpegStream), described
    assert "newest" in described
    try:
        behind = []
        for _ in range(3):
            assert cap.read()[0]
            # The reader falls 10 frames behind (decoding on a starved core, say).
            start = server.sent
            assert wait_for(lambda s=start: server.sent >= s + 10)
            ok, frame = cap.read()
            assert ok
            behind.append((server.sent - level(frame)) % LEVELS)
        return behind
    finally:
        cap.release()


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "boundary-only"])
def test_a_reader_that_falls_behind_gets_the_newest_frame(with_length: bool) -> None:
    server = NumberedStream(with_length=with_length)
    try:
        # FFmpeg read these in order: 10 frames late every time (later still once the
        # socket buffers fill). The newest frame is at most a frame or two old.
        assert all(b <= 2 for b in frames_behind_after_falling_behind(server))
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


def test_a_stream_that_stops_ends_reads_and_release_is_prompt(stream: NumberedStream) -> None:
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
