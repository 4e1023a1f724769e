"""The camera thread: frames from cv2.VideoCapture to de-duplicated QrPresented events.

This module owns the camera: choosing the OpenCV backend from the source
setting (a V4L2 device path, a video file, an image folder, or an MJPEG HTTP
URL), opening it with the capture settings, reading frames, decoding them with
the configured decoder, putting one `QrPresented` on the event queue per code
held in view, and releasing and reopening with backoff when frames stop or the
device disappears. It never decides anything about a code, never touches the
ledger, the policy or the display, and never blocks the queue's consumer: if
the queue is full the event is dropped and counted.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2

from protocol.tokens import PREFIX
from terminal.core.events import QrPresented
from terminal.scanner.device import (
    DOWN,
    STOPPED,
    UP,
    Backoff,
    DeviceHealth,
    HealthBoard,
    PresenceFilter,
    start_thread,
    stop_thread,
)
from terminal.scanner.mjpeg import MjpegStream, NotMjpeg
from terminal.scanner.qr import (
    CAMERA_DECODERS,
    DEFAULT_DECODER,
    QrDecoder,
    decode_frame,
    make_decoder,
)

log = logging.getLogger(__name__)

V4L2 = "v4l2"
URL = "url"
FOLDER = "folder"
FILE = "file"

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[A-Za-z]+)$")


@dataclass(frozen=True)
class CameraSettings:
    """Camera and QR decoding settings; defaults suit a phone held 8 to 15 cm from the lens."""

    # /dev/v4l/by-id/... (or /dev/videoN), a video file, an image folder (or a
    # printf pattern such as frames/%04d.jpg), or an http(s):// MJPEG URL.
    source: str = "/dev/video0"
    width: int = 1280
    height: int = 720
    fps: int = 30  # asked of a device; the pace at which files and folders are played
    fourcc: str = "MJPG"  # set before width/height/fps: USB cameras give 720p30 only in MJPG
    buffer_frames: int = 1  # driver queue; 1 means we always decode a recent frame
    decoder: str = DEFAULT_DECODER  # zxing | pyzbar | opencv
    stall_s: float = 3.0  # no new frame for this long: release and reopen
    reopen_backoff_s: float = 0.5  # first wait before reopening; doubles per failure
    reopen_backoff_max_s: float = 10.0
    same_text_s: float = 3.0  # a text seen again within this long of its last sighting is
    # the same presentation (a new code from the same phone is a new text)
    confirm_s: float = 1.0  # a text that is not a canteen token must be read in a second
    # frame within this long before it is a presentation (a one-frame misread never is)
    max_frame_side: int = 1920  # larger frames are shrunk before decoding

    def __post_init__(self) -> None:
        problems = []
        if not self.source:
            problems.append("source is empty")
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            problems.append("width, height and fps must be > 0")
        if len(self.fourcc) != 4:
            problems.append(f"fourcc must be 4 characters, not {self.fourcc!r}")
        if self.buffer_frames < 1:
            problems.append("buffer_frames must be >= 1")
        if self.decoder not in CAMERA_DECODERS:
            names = ", ".join(CAMERA_DECODERS)
            problems.append(f"decoder must be one of {names}, not {self.decoder!r}")
        if self.stall_s <= 0 or self.same_text_s < 0:
            problems.append("stall_s must be > 0 and same_text_s >= 0")
        if self.confirm_s <= 0:
            problems.append("confirm_s must be > 0")
        if not 0 < self.reopen_backoff_s <= self.reopen_backoff_max_s:
            problems.append("need 0 < reopen_backoff_s <= reopen_backoff_max_s")
        if self.max_frame_side < 64:
            problems.append("max_frame_side must be >= 64")
        if problems:
            raise ValueError("camera settings: " + "; ".join(problems))


def source_kind(source: str) -> str:
    """V4L2, URL, FOLDER or FILE: which OpenCV backend a source setting needs."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", source, re.IGNORECASE):
        return URL
    if source.startswith("/dev/") or source.isdigit():
        return V4L2
    if os.path.isdir(source) or "%" in os.path.basename(source):
        return FOLDER
    if os.path.isfile(source) or os.path.splitext(source)[1]:
        return FILE
    return FOLDER  # not there (yet): a name without an extension is taken for a folder


def folder_pattern(folder: str) -> str | None:
    """The printf pattern OpenCV's image-sequence backend needs for the numbered images
    in `folder` (e.g. frames/frame_%04d.jpg), or None if it holds none."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        m = _NUMBERED.match(name)
        if m and m.group(3).lower() in _IMAGE_EXT:
            prefix, digits, ext = m.groups()
            return os.path.join(folder, f"{prefix.replace('%', '%%')}%0{len(digits)}d{ext}")
    return None


def _ffmpeg_url(source: str, timeout_ms: int) -> Any:
    return cv2.VideoCapture(
        source,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms],
    )


def open_capture(settings: CameraSettings, kind: str | None = None) -> tuple[Any, str]:
    """An opened cv2.VideoCapture for the source and a line describing it; OSError if it
    cannot be opened (missing device, unreachable URL, empty folder). An http(s) MJPEG
    stream is read by `MjpegStream` instead, which keeps only the newest part as a V4L2
    device with one buffer does (FFmpeg would hand out every part in order, however
    late). `kind` is
    `source_kind(settings.source)` unless given (a camera fixes it at start, so a
    folder that disappears is still a folder)."""
    source = settings.source
    kind = kind if kind is not None else source_kind(source)
    timeout_ms = int(settings.stall_s * 1000)
    if kind == V4L2:
        if not source.isdigit() and not os.path.exists(source):
            raise OSError(f"camera device {source} is not there: check the USB cable")
        cap = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_V4L2)
        if cap.isOpened():
            # Order matters for UVC cameras: the pixel format first, or the
            # driver may refuse 1280x720 at 30 fps in its default YUYV.
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*settings.fourcc))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, settings.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.height)
            cap.set(cv2.CAP_PROP_FPS, settings.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, settings.buffer_frames)
    elif kind == URL and source.lower().startswith(("http://", "https://")):
        try:
            stream = MjpegStream(source, settings.stall_s)
        except NotMjpeg:
            stream = None  # another kind of stream over HTTP: FFmpeg reads it below
        except OSError as e:
            raise OSError(
                f"{e} ({kind}): check that the stream's server is running and reachable"
            ) from None
        if stream is not None:
            return stream, f"{kind} {source}: MJPEG over HTTP, the newest part read in grey"
        cap = _ffmpeg_url(source, timeout_ms)
    elif kind == URL:
        cap = _ffmpeg_url(source, timeout_ms)
    elif kind == FOLDER:
        pattern = folder_pattern(source) if os.path.isdir(source) else source
        if pattern is None:
            raise OSError(
                f"image folder {source} is missing or has no numbered images (frame_0001.jpg)"
            )
        cap = cv2.VideoCapture(pattern, cv2.CAP_IMAGES)
    else:
        if not os.path.exists(source):
            raise OSError(f"video file {source} is not there")
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        what = {
            V4L2: "check the camera's USB cable and that no other program uses it",
            URL: "check that the stream's server is running and reachable",
            FOLDER: "check that the folder holds numbered images",
            FILE: "check that the file is a video OpenCV can read",
        }[kind]
        raise OSError(f"OpenCV cannot open camera source {source} ({kind}): {what}")
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
    got = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)) if fourcc > 0 else "?"
    described = (
        f"{kind} {source} via {cap.getBackendName()}: "
        f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))} "
        f"(the driver claims {cap.get(cv2.CAP_PROP_FPS):.0f} fps), fourcc {got.strip() or '?'}"
    )
    return cap, described


RATE_WINDOW_S = 5.0  # the measured frame rate is over the frames of the last few seconds


class FrameRate:
    """Frames per second actually read, over the last ``RATE_WINDOW_S``.

    The rate the settings ask for, and the one the driver claims, are not what a camera
    delivers (a USB camera in low light, a stream over a slow link): status and selftest
    show this one. Written by the camera thread, read from any thread.
    """

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=1024)

    def add(self, at: float) -> None:
        self._times.append(at)

    def clear(self) -> None:
        self._times.clear()

    def per_second(self, now: float) -> float | None:
        """None until two frames came in the window (also when frames stopped)."""
        times = [t for t in list(self._times) if now - t <= RATE_WINDOW_S]
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


class Camera:
    """Owns one cv2.VideoCapture in its own thread and puts QrPresented events on `events`.

    start() returns at once; the thread opens the source, reopens it with
    backoff whenever it fails, and runs until stop(). health() may be called
    from any thread.
    """

    def __init__(
        self,
        settings: CameraSettings,
        events: queue.Queue[Any],
        *,
        name: str = "camera",
        clock: Callable[[], float] = time.monotonic,
        decoder: QrDecoder | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._events = events
        self._clock = clock
        # Built here, not in the thread, so a missing decoder library is one
        # clear DecoderUnavailable at start instead of a dead thread.
        self._decoder = decoder if decoder is not None else make_decoder(settings.decoder)
        self.kind = source_kind(settings.source)
        self._board = HealthBoard(name, clock())
        self._presence = PresenceFilter(settings.same_text_s)
        self._strays = StrayFilter(settings.confirm_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate = FrameRate()

    def start(self) -> None:
        self._thread = start_thread(self._thread, self._run, self.name)

    def measured_fps(self) -> float | None:
        """Frames per second read over the last few seconds; None when none are coming."""
        return self._rate.per_second(self._clock())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to end and wait; a driver read can delay it by up to stall_s."""
        stop_thread(self._thread, self._stop, self.name, timeout_s)

    def health(self) -> DeviceHealth:
        return self._board.snapshot(self._clock(), self.settings.stall_s)

    def _run(self) -> None:
        backoff = Backoff(self.settings.reopen_backoff_s, self.settings.reopen_backoff_max_s)
        while not self._stop.is_set():
            try:
                cap, described = open_capture(self.settings, self.kind)
            except (OSError, cv2.error) as e:
                delay = backoff.next_delay()
                self._down(f"{e}; retrying in {delay:.1f} s", counter="open_failures")
                self._stop.wait(delay)
                continue
            log.info("%s: opened %s", self.name, described)
            self._rate.clear()
            self._board.set_state(UP, f"reading {described}", self._clock())
            try:
                why = self._read_frames(cap, backoff)
            finally:
                cap.release()
            if self._stop.is_set():
                break
            if why is None:  # a file or folder came to its end: replay without waiting
                continue
            delay = backoff.next_delay()
            self._down(f"{why}; reopening in {delay:.1f} s", counter="reopens")
            self._stop.wait(delay)
        self._board.set_state(STOPPED, "stopped", self._clock())

    def _down(self, detail: str, counter: str) -> None:
        log.warning("%s: %s", self.name, detail)
        self._board.count(counter)
        self._board.set_state(DOWN, detail, self._clock())

    def _read_frames(self, cap: Any, backoff: Backoff) -> str | None:
        """Read until stopped or failed: the reason it stopped, or None at a file's end."""
        s = self.settings
        kind = self.kind
        paced = kind in (FILE, FOLDER)
        period = 1.0 / s.fps
        next_at = self._clock()
        last_frame_at = self._clock()
        last_path_check = last_frame_at
        frames = 0
        while not self._stop.is_set():
            try:
                ok, frame = cap.read()
            except cv2.error as e:  # some backends raise instead of returning False
                log.warning("%s: read failed: %s", self.name, e)
                ok, frame = False, None
            now = self._clock()
            if not ok or frame is None:
                if paced and frames:  # a file or folder ended: replay it (simulator)
                    return None
                if now - last_frame_at > s.stall_s or paced or kind == URL:
                    return f"{s.source} stopped sending frames"
                # V4L2 can fail a read or two while it settles; give it stall_s.
                self._stop.wait(0.01)
                continue
            frames += 1
            last_frame_at = now
            self._rate.add(now)
            self._board.activity(now)
            self._board.count("frames")
            if frames == 1:
                backoff.reset()
            self._decode_and_post(frame, now)
            if kind == V4L2 and now - last_path_check > 1.0:
                last_path_check = now
                if not s.source.isdigit() and not os.path.exists(s.source):
                    return f"camera device {s.source} disappeared: check the USB cable"
            if paced:
                next_at = max(next_at + period, now - period)
                self._stop.wait(max(0.0, next_at - self._clock()))
        return "stopping"

    def _decode_and_post(self, frame: Any, seen_at: float) -> None:
        try:
            texts = decode_frame(self._decoder, frame, self.settings.max_frame_side)
        except Exception:
            # One bad frame (or a decoder bug on it) must not stop the camera.
            log.exception("%s: decoder %s failed on a frame", self.name, self._decoder.name)
            self._board.count("decode_errors")
            return
        dropped = self._strays.dropped
        for text in self._strays.keep(texts, seen_at, self._presence):
            if not self._presence.admit(text, seen_at):
                continue
            try:
                self._events.put_nowait(QrPresented(text=text, seen_at=seen_at, source=self.name))
                self._board.count("codes")
            except queue.Full:
                log.warning("%s: event queue full; a code was dropped", self.name)
                self._board.count("queue_full")
        if self._strays.dropped > dropped:
            self._board.count("unconfirmed_reads", self._strays.dropped - dropped)


class StrayFilter:
    """Keeps a decoder's stray reads from becoming presentations.

    A QR decoder now and then finds a small symbol that is not there, in the
    modules of a large code or in sensor noise (zxing-cpp read "6872" beside a
    token code once in 12,001 reads of 3,000 simulated phones).
    Such a text would be refused as ``malformed`` and flash a red verdict at a
    cadre whose code is fine. So a text that is not a canteen token (no ``CT1:``
    prefix): is dropped when a token is read in the same frame (the phone in
    view is what the cadre shows); otherwise it must be read again in a later
    frame within ``confirm_s`` before it passes. A real foreign code (a payment
    app's QR held up by mistake) is read in every frame, so it passes on its
    second frame and the cadre is told it is not a canteen code. Token texts
    pass at once: no delay for the cadres the terminal is for. A text the
    presence filter still holds passes too, so a code in view stays one
    presentation. Memory is bounded to ``max_keys`` candidates.
    """

    def __init__(self, confirm_s: float, max_keys: int = 32) -> None:
        # A candidate read again within confirm_s is "the same" to a PresenceFilter of
        # that window: its admit() is False exactly when the read is confirmed.
        self._candidates = PresenceFilter(confirm_s, max_keys)
        self.dropped = 0  # reads kept from becoming presentations, for health counters

    def keep(self, texts: list[str], now: float, presence: PresenceFilter) -> list[str]:
        """The texts of one frame that may go on to the presence filter."""
        if not texts:
            return texts
        token_in_view = any(t.startswith(PREFIX) for t in texts)
        kept = []
        for text in dict.fromkeys(texts):  # the same text twice in one frame is one read
            if text.startswith(PREFIX) or presence.holds(text, now):
                kept.append(text)
                continue
            if not token_in_view and not self._candidates.admit(text, now):
                kept.append(text)  # read again within confirm_s: confirmed
            else:
                self.dropped += 1
        return kept

    def __len__(self) -> int:
        return len(self._candidates)
