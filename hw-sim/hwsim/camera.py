"""The simulated camera: an MJPEG stream on 127.0.0.1 of a canteen counter, where phones
showing QR codes are held up on command and taken away again.

This module owns the camera side of the terminal's http:// camera source: one
pacer thread publishes a frame every 1/fps seconds (the empty counter, or the
phone being shown), every client of /stream.mjpg gets the newest frame as a
multipart/x-mixed-replace part, and a render thread draws each phone once per
show (hwsim.render: perspective, rotation, blur, glare, noise) into a handful
of slightly different pre-encoded JPEG frames, so no drawing ever happens on
the pacer's or a client's time. Shows queue up like cadres at a counter: each
is in view for its hold time, then the counter is empty for a moment. Commands
arrive on the same server: POST /show (JSON {"text": ...} or {"wallet": path}),
GET /health, GET /snapshot.jpg, and GET / (a page to watch the stream in a
browser). It binds loopback addresses only, stops by itself after
`lifetime_s` if given, never decodes a frame and never talks to the terminal
except by being read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import ipaddress
import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from hwsim import CAMERA_PORT, render
from hwsim.phone import WalletError, draw_code

DEFAULT_PORT = CAMERA_PORT
STREAM_PATH = "/stream.mjpg"
BOUNDARY = "frame"
_MAX_BODY = 64 * 1024
_MAX_QUEUE = 32
_VARIANTS = 4  # slightly different frames per show and for the empty counter


class CameraSimError(Exception):
    """The simulated camera cannot do what was asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Show:
    """One phone held up: its text, how long, and the frames drawn for it."""

    text: str
    hold_s: float
    scene: render.Scene
    frames: list[bytes] = field(default_factory=list)  # entry, steady variants..., exit
    started: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None  # Unix seconds the first frame was published
    # Unix seconds the first steady frame was published: the entry frame before it is a
    # smear no decoder reads, so frame-to-page counts from here (bench/daemon.py).
    readable_at: float | None = None
    number: int = 0
    error: str | None = None


class _Latest:
    """The newest frame and its number; stream clients wait here for the next one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0
        self.jpeg = b""

    def publish(self, jpeg: bytes) -> None:
        with self._cond:
            self.seq += 1
            self.jpeg = jpeg
            self._cond.notify_all()

    def next_after(self, seq: int, timeout_s: float) -> tuple[int, bytes] | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.seq > seq, timeout_s):
                return None
            return self.seq, self.jpeg


class CameraSim:
    """A simulated MJPEG camera on `host`:`port` (0: any free port).

    `start()` serves; `show(text)` holds a phone showing `text` up to the
    camera and, by default, returns once it is in view; `stop()` ends the
    stream and frees the port. With `lifetime_s` it stops by itself.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        fps: float = 15.0,
        size: tuple[int, int] = (1280, 720),
        *,
        hold_s: float = 1.5,
        gap_s: float = 0.4,
        seed: int = 0,
        jpeg_quality: int = 85,
        lifetime_s: float | None = None,
    ) -> None:
        if not is_loopback(host):
            raise CameraSimError(
                f"the simulated camera serves on loopback addresses only, not {host}; "
                "run it on the terminal itself"
            )
        if not 1 <= fps <= 60:
            raise CameraSimError("fps must be between 1 and 60")
        if hold_s <= 0 or gap_s < 0:
            raise CameraSimError("hold must be > 0 s and the gap between phones >= 0 s")
        self.host = host
        self.port = port
        self.fps = fps
        self.size = size
        self.hold_s = hold_s
        self.gap_s = gap_s
        self.seed = seed
        self.jpeg_quality = jpeg_quality
        self.lifetime_s = lifetime_s
        self._latest = _Latest()
        self._stopped = threading.Event()
        self._requests: queue.Queue[_Show | None] = queue.Queue()
        self._ready: queue.Queue[_Show | None] = queue.Queue()
        self._pending = 0  # asked for and not yet finished showing
        self._pending_lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._timer: threading.Timer | None = None
        self._idle: list[bytes] = []
        self._background: render.Image | None = None
        self._intervals: deque[float] = deque(maxlen=256)
        self._showing: _Show | None = None
        self._recent: deque[_Show] = deque(maxlen=64)  # for readable_at(), newest last
        self._shows = 0
        self._clients = 0
        self._started_at = 0.0

    # ---- life ----

    @property
    def url(self) -> str:
        """The stream, as the terminal's [camera] source."""
        return f"http://{self._url_host}:{self.port}{STREAM_PATH}"

    @property
    def control_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def start(self) -> CameraSim:
        if self._server is not None:
            raise CameraSimError("this simulated camera is already started")
        rng = np.random.default_rng(self.seed)
        self._background = render.counter_background(self.size, rng)
        idle_scene = render.Scene(size=self.size, noise_sigma=3.0, blur_sigma=0.6)
        self._idle = [
            self._encode(self._background.astype(np.float32), idle_scene, rng)
            for _ in range(_VARIANTS)
        ]
        self._latest.publish(self._idle[0])
        try:
            server = _Server((self.host, self.port), _handler(self))
        except OSError as exc:
            raise CameraSimError(
                f"cannot serve on {self.host}:{self.port} ({exc.strerror}); is another "
                "simulated camera running? choose another --port"
            ) from None
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._started_at = time.monotonic()
        for target, name in (
            (server.serve_forever, "hwsim-camera-http"),
            (self._pace, "hwsim-camera-pacer"),
            (self._render_loop, "hwsim-camera-render"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.lifetime_s is not None:
            self._timer = threading.Timer(self.lifetime_s, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        """End every stream and free the port; safe to call twice and from any thread."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        self._requests.put(None)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5.0)
        # Anyone still waiting for a show hears that it will not happen.
        for waiting in (self._requests, self._ready):
            while True:
                try:
                    show = waiting.get_nowait()
                except queue.Empty:
                    break
                if show is not None:
                    show.error = "the simulated camera stopped"
                    show.started.set()

    def __enter__(self) -> CameraSim:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---- commands ----

    def show(
        self,
        text: str,
        *,
        hold_s: float | None = None,
        scene: dict[str, Any] | None = None,
        wait: bool = True,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Hold a phone showing `text` up to the camera for `hold_s` (default: the camera's).

        `scene` overrides fields of the drawn scene (render.Scene: code_px,
        rotate_deg, tilt, blur_sigma, noise_sigma, glare, exposure, ...). With
        `wait` it returns once the phone is in view; phones asked for while
        another is shown wait their turn.
        """
        if self._server is None or self._stopped.is_set():
            raise CameraSimError("the simulated camera is not running")
        if not isinstance(text, str) or not text or len(text) > 4000:
            raise CameraSimError("the text to show must be 1 to 4000 characters")
        hold = self.hold_s if hold_s is None else float(hold_s)
        if not 0 < hold <= 60:
            raise CameraSimError("hold must be more than 0 and at most 60 seconds")
        with self._pending_lock:
            if self._pending >= _MAX_QUEUE:
                raise CameraSimError(f"{_MAX_QUEUE} phones are already waiting; try again")
            self._pending += 1
            self._shows += 1
            number = self._shows
        base = render.random_scene(
            self.seed * 100_003 + number, self.size, render.code_px_range(self.size)
        )
        try:
            drawn = dataclasses.replace(base, **(scene or {}))
        except TypeError as exc:
            with self._pending_lock:
                self._pending -= 1
            raise CameraSimError(f"bad scene field: {exc}") from None
        show = _Show(text, hold, drawn, number=number)
        self._recent.append(show)
        self._requests.put(show)
        answer: dict[str, Any] = {"show": number, "hold_s": hold, "queued": self._pending - 1}
        if wait:
            if not show.started.wait(timeout_s):
                raise CameraSimError("the phone did not come into view in time")
            if show.error:
                raise CameraSimError(show.error)
            answer["started_at"] = show.started_at
        return answer

    def readable_at(self, show: int) -> float | None:
        """When show number `show` (from show()'s answer) first published a frame a decoder
        can read (Unix seconds), or None if not yet (or it is one of the 64 before)."""
        for s in reversed(self._recent):
            if s.number == show:
                return s.readable_at
        return None

    def health(self) -> dict[str, Any]:
        intervals = list(self._intervals)
        return {
            "ok": not self._stopped.is_set(),
            "url": self.url,
            "fps": self.fps,
            "size": f"{self.size[0]}x{self.size[1]}",
            "frames": self._latest.seq,
            "clients": self._clients,
            "showing": self._showing is not None,
            "waiting": max(0, self._pending - (1 if self._showing else 0)),
            "shows": self._shows,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "interval_ms": {
                "mean": round(1000 * sum(intervals) / len(intervals), 2) if intervals else None,
                "max": round(1000 * max(intervals), 2) if intervals else None,
            },
        }

    def snapshot(self) -> bytes:
        """The newest frame (JPEG)."""
        return self._latest.jpeg

    # ---- drawing (render thread) ----

    def _encode(
        self, img: render.FloatImage, scene: render.Scene, rng: np.random.Generator
    ) -> bytes:
        if scene.blur_sigma > 0:
            img = np.asarray(cv2.GaussianBlur(img, (0, 0), scene.blur_sigma), dtype=np.float32)
        if scene.noise_sigma > 0:
            img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
                scene.noise_sigma
            )
        out = np.clip(img, 0, 255).astype(np.uint8)
        quality = min(self.jpeg_quality, scene.jpeg_quality) if scene.jpeg_quality else 95
        ok, jpg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise CameraSimError("OpenCV could not encode a frame")
        return bytes(jpg.tobytes())

    def _draw(self, show: _Show) -> list[bytes]:
        """Entry (motion-blurred), a few steady frames a pixel or two apart, exit."""
        assert self._background is not None
        rng = np.random.default_rng(show.scene.seed)
        held = render.hold_phone(self._background, show.text, show.scene, rng)
        h, w = held.shape[:2]
        frames = []
        # A phone moving into or out of view is a smear along its way: no code reads.
        kernel = np.full((1, 31), 1.0 / 31, np.float32)

        def moving(k: npt.NDArray[np.float32]) -> render.FloatImage:
            return np.asarray(cv2.filter2D(held, -1, k), dtype=np.float32)

        frames.append(
            self._encode(moving(kernel.T if rng.random() < 0.5 else kernel), show.scene, rng)
        )
        for _ in range(_VARIANTS):
            dx, dy = rng.uniform(-1.5, 1.5, 2)
            shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
            steady = cv2.warpAffine(held, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)
            frames.append(self._encode(np.asarray(steady, np.float32), show.scene, rng))
        frames.append(self._encode(moving(kernel), show.scene, rng))
        return frames

    def _render_loop(self) -> None:
        while not self._stopped.is_set():
            show = self._requests.get()
            if show is None:
                return
            try:
                show.frames = self._draw(show)
            except (ValueError, cv2.error, CameraSimError) as exc:
                show.error = f"cannot draw this text as a QR code: {exc}"
                with self._pending_lock:
                    self._pending -= 1
                show.started.set()
                continue
            self._ready.put(show)

    # ---- pacing (pacer thread) ----

    def _pace(self) -> None:
        period = 1.0 / self.fps
        next_at = time.monotonic()
        last = None
        k = 0
        show: _Show | None = None
        show_until = 0.0
        idle_until = 0.0  # the empty counter between two phones
        while not self._stopped.is_set():
            now = time.monotonic()
            if show is not None and now >= show_until:
                show = None
                self._showing = None
                idle_until = now + self.gap_s
                with self._pending_lock:
                    self._pending -= 1
            if show is None and now >= idle_until:
                with contextlib.suppress(queue.Empty):
                    show = self._ready.get_nowait()
                if show is not None:
                    show_until = now + show.hold_s
                    self._showing = show
                    k = 0
            if show is not None:
                frames = show.frames
                # Entry frame first, exit frame in the last period, steady ones between.
                if k == 0:
                    jpeg = frames[0]
                elif show_until - now <= period:
                    jpeg = frames[-1]
                else:
                    jpeg = frames[1 + (k - 1) % (len(frames) - 2)]
            else:
                jpeg = self._idle[k % len(self._idle)]
            self._latest.publish(jpeg)
            if show is not None and not show.started.is_set():
                show.started_at = time.time()
                show.started.set()
            elif show is not None and show.readable_at is None and jpeg is not show.frames[-1]:
                show.readable_at = time.time()
            if last is not None:
                self._intervals.append(now - last)
            last = now
            k += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay < -period:  # fell far behind (a suspended laptop): start the beat again
                next_at = time.monotonic()
                delay = 0.0
            self._stopped.wait(max(0.0, delay))

    # ---- serving (HTTP threads) ----

    def _stream(self, out: Any) -> None:
        seq = 0
        with self._pending_lock:
            self._clients += 1
        try:
            while not self._stopped.is_set():
                got = self._latest.next_after(seq, 1.0)
                if got is None:
                    continue
                seq, jpeg = got
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n"
                ).encode("ascii")
                out.write(head + jpeg + b"\r\n")
                out.flush()
        except OSError:
            pass  # the client went away
        finally:
            with self._pending_lock:
                self._clients -= 1

    def _show_request(self, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
        except ValueError:
            raise CameraSimError("the body must be a JSON object") from None
        if not isinstance(request, dict):
            raise CameraSimError("the body must be a JSON object")
        text = request.get("text")
        if text is None and request.get("wallet"):
            now = request.get("now")
            try:
                text, _ = draw_code(request["wallet"], int(now if now is not None else time.time()))
            except WalletError as exc:
                raise CameraSimError(str(exc)) from None
        if not isinstance(text, str):
            raise CameraSimError('give "text" (a QR text) or "wallet" (a wallet file path)')
        scene = request.get("scene")
        if scene is not None and not isinstance(scene, dict):
            raise CameraSimError('"scene" must be an object of render.Scene fields')
        hold = request.get("hold_s")
        return self.show(
            text,
            hold_s=float(hold) if hold is not None else None,
            scene=scene,
            wait=bool(request.get("wait", True)),
        )


class _Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        if ":" in self.server_address[0]:
            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()


_PAGE = """<!doctype html><meta charset="utf-8"><title>hw-sim camera</title>
<body style="background:#222;color:#ddd;font-family:sans-serif">
<p>hw-sim camera: the terminal's [camera] source is <code>{url}</code></p>
<img src="{path}" style="max-width:100%"></body>
"""


def _handler(sim: CameraSim) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "hw-sim-camera"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == STREAM_PATH:
                self.connection.settimeout(10.0)  # a client that stops reading is let go
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache, no-store")
                self.end_headers()
                sim._stream(self.wfile)
            elif path == "/health":
                self._json(200, sim.health())
            elif path == "/snapshot.jpg":
                jpeg = sim.snapshot()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(jpeg)))
                self.end_headers()
                self.wfile.write(jpeg)
            elif path == "/":
                body = _PAGE.format(url=sim.url, path=STREAM_PATH).encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._json(
                    404, {"ok": False, "error": f"no {path} here; the stream is {STREAM_PATH}"}
                )

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path != "/show":
                self._json(404, {"ok": False, "error": "POST /show is the only command"})
                return
            # A JSON content type keeps a web page from posting here without a CORS preflight.
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                self._json(415, {"ok": False, "error": "send the command as application/json"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= _MAX_BODY:
                self._json(413, {"ok": False, "error": f"the body must be 1..{_MAX_BODY} bytes"})
                return
            try:
                answer = sim._show_request(self.rfile.read(length))
            except CameraSimError as exc:
                self._json(400, {"ok": False, "error": str(exc)})
                return
            except (ValueError, TypeError) as exc:  # e.g. "hold_s": "soon"
                self._json(400, {"ok": False, "error": f"bad field in the request: {exc}"})
                return
            self._json(200, {"ok": True, **answer})

    return Handler


class CameraControl:
    """A client of a running simulated camera (what `hw-sim camera show` uses)."""

    def __init__(
        self, url: str = f"http://127.0.0.1:{DEFAULT_PORT}", timeout_s: float = 60.0
    ) -> None:
        base = url.rstrip("/")
        if base.endswith(STREAM_PATH):
            base = base[: -len(STREAM_PATH)]
        self.base = base
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(doc).encode("utf-8") if doc is not None else None
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
            except ValueError:
                answer = {"ok": False, "error": f"HTTP {exc.code}"}
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CameraSimError(
                f"no simulated camera answers at {self.base} ({reason}); start one with "
                "hw-sim camera"
            ) from None
        if not answer.get("ok"):
            raise CameraSimError(str(answer.get("error", "the simulated camera refused")))
        return dict(answer)

    def show(
        self,
        text: str | None = None,
        *,
        wallet: str | Path | None = None,
        hold_s: float | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {"wait": wait}
        if text is not None:
            doc["text"] = text
        if wallet is not None:
            doc["wallet"] = str(wallet)
        if hold_s is not None:
            doc["hold_s"] = hold_s
        return self._call("POST", "/show", doc)

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")
