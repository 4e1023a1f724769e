"""QR decoding of one camera frame: frame checks and the three decoders behind one interface.

This module owns turning a frame (a numpy image as OpenCV gives it) into the
QR texts it shows: `prepare_frame` refuses or shrinks frames that are empty,
None, tiny, oddly shaped or huge so that every frame costs bounded time, and
`make_decoder` builds the decoder a setting names: zxing-cpp (the default),
pyzbar over Debian's libzbar0, or OpenCV's QRCodeDetector. The default carries
a second look (`RegionFallback`): when zxing-cpp locates a QR symbol or finder
pattern but decodes nothing, only that region, cropped and resized to a bounded
size, is read again: other binarizers, sharpened, and pyzbar. It reads QR
codes only. It never opens a camera, never keeps state between frames
(deduplication is the camera thread's job) and never interprets the text: a
token is checked by protocol/tokens.py in the decision worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

ZXING = "zxing"
PYZBAR = "pyzbar"
OPENCV = "opencv"
# "none" reads frames and decodes nothing: for measuring what decoding costs
# (bench/daemon.py) and for watching a camera's frame rate without selling.
NONE = "none"
DECODERS: tuple[str, ...] = (ZXING, PYZBAR, OPENCV)  # the ones that read codes
CAMERA_DECODERS: tuple[str, ...] = (*DECODERS, NONE)  # what a camera may be set to
DEFAULT_DECODER = ZXING

# A QR symbol is at least 21 modules wide; anything smaller cannot hold one.
MIN_SIDE = 21
# Frames are decoded at most this wide/high: 1920 keeps a 300 px code of a
# 4K frame readable while an 8K frame costs a bounded, small resize.
DEFAULT_MAX_SIDE = 1920

Gray = npt.NDArray[np.uint8]


class DecoderUnavailable(Exception):
    """The chosen decoder's library is missing; the message says what to install or choose."""


class QrDecoder(Protocol):
    """Decodes the QR codes in one 8-bit grayscale, C-contiguous image."""

    name: str

    def decode(self, gray: Gray) -> list[str]:
        """Every QR text found, in the decoder's order; [] when none."""
        ...


def prepare_frame(frame: object, max_side: int = DEFAULT_MAX_SIDE) -> Gray | None:
    """The frame as 8-bit grayscale no larger than `max_side`, or None if it cannot hold a code.

    Accepts what cv2.VideoCapture and cv2.imread return: HxW, HxWx1, HxWx3
    (BGR) or HxWx4 (BGRA) uint8 arrays, of any size and stride. Anything else
    (None, empty, 1x1, other dtypes or shapes) gives None, never an exception.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
        return None
    if frame.ndim == 3 and frame.shape[2] in (1, 3, 4):
        channels = frame.shape[2]
    elif frame.ndim == 2:
        channels = 1
    else:
        return None
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if min(h, w) < MIN_SIDE or max_side < MIN_SIDE:
        return None
    longest = max(h, w)
    if longest > 2 * max_side:
        # Huge frames (8K) are decimated straight to max_side by nearest neighbour
        # (about 2 ms for 8K): a code big enough to matter there keeps several px
        # per module, and the frame never reaches a full-size colour conversion.
        scale = max_side / longest
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min(size) < MIN_SIDE:
            return None
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST)
        h, w = size[1], size[0]
        longest = max(h, w)
    if channels == 3:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2GRAY)
    elif channels == 4:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGRA2GRAY)
    else:
        gray = frame.reshape(h, w)
    if longest > max_side:
        scale = max_side / longest
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min(size) < MIN_SIDE:
            return None
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)


def decode_frame(decoder: QrDecoder, frame: object, max_side: int = DEFAULT_MAX_SIDE) -> list[str]:
    """`prepare_frame` then `decoder.decode`; [] for a frame that cannot hold a code.

    Decoder exceptions propagate: the camera thread logs them and skips the frame.
    """
    gray = prepare_frame(frame, max_side)
    if gray is None:
        return []
    return decoder.decode(gray)


# The region fallback (docs/devices.md, "A second look"). zxing-cpp reports a symbol it
# located but could not decode as an invalid result with its corners: a whole QR code,
# or a lone finder pattern taken for a Micro QR or rMQR symbol. A token code (version 13,
# 69 modules) reaches about five such quads' widths past a lone finder pattern, so the
# region is grown by FINDER_REACH of them; around a whole code a small margin suffices.
FINDER_REACH = 6.0
WHOLE_MARGIN = 0.15
# The region is resized so its longer side lies in this range: small codes get more
# pixels per module, and the time of the second look is bounded whatever the frame.
FALLBACK_MIN_SIDE = 500
FALLBACK_MAX_SIDE = 900
# Unsharp masking (region + AMOUNT * (region - blurred)) undoes some of the motion and
# focus blur and JPEG smear that make a located symbol undecodable; sigma in pixels of
# the resized region. Chosen on the hard set's frames 0-39 and checked on 1000-1029.
SHARPEN_AMOUNT = 1.0
SHARPEN_SIGMA = 1.5
_WHOLE_QR = frozenset({"QRCode", "QRCodeModel2", "QRCodeModel1"})

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 excluded


def located_region(shape: tuple[int, ...], quads: Sequence[tuple[bool, Any]]) -> Region | None:
    """The part of a frame of `shape` (h, w) that holds the symbols zxing-cpp located:
    `quads` are (whole, corners) pairs, `whole` True for a full QR code, corners four
    (x, y) points. None when nothing of it falls inside the frame."""
    h, w = int(shape[0]), int(shape[1])
    boxes = []
    for whole, corners in quads:
        xs = [float(x) for x, _ in corners]
        ys = [float(y) for _, y in corners]
        side = max(max(xs) - min(xs), max(ys) - min(ys), 8.0)
        grow = (WHOLE_MARGIN if whole else FINDER_REACH) * side
        boxes.append((min(xs) - grow, min(ys) - grow, max(xs) + grow, max(ys) + grow))
    if not boxes:
        return None
    x0 = max(0, int(min(b[0] for b in boxes)))
    y0 = max(0, int(min(b[1] for b in boxes)))
    x1 = min(w, int(max(b[2] for b in boxes)) + 1)
    y1 = min(h, int(max(b[3] for b in boxes)) + 1)
    if x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE:
        return None
    return x0, y0, x1, y1


def region_image(gray: Gray, region: Region) -> Gray:
    """The region cropped and resized to FALLBACK_MIN_SIDE..FALLBACK_MAX_SIDE (longer side)."""
    x0, y0, x1, y1 = region
    crop = gray[y0:y1, x0:x1]
    longest = max(crop.shape)
    scale = 1.0
    if longest < FALLBACK_MIN_SIDE:
        scale = FALLBACK_MIN_SIDE / longest
    elif longest > FALLBACK_MAX_SIDE:
        scale = FALLBACK_MAX_SIDE / longest
    if scale != 1.0:
        # Cubic when enlarging keeps module edges sharp; area when shrinking averages.
        how = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
        return np.ascontiguousarray(
            cv2.resize(crop, None, fx=scale, fy=scale, interpolation=how), dtype=np.uint8
        )
    return np.ascontiguousarray(crop)


def sharpened(image: Gray) -> Gray:
    """`image` with an unsharp mask (SHARPEN_AMOUNT, SHARPEN_SIGMA), still 8-bit."""
    blurred = cv2.GaussianBlur(image, (0, 0), SHARPEN_SIGMA)
    out = cv2.addWeighted(image, 1.0 + SHARPEN_AMOUNT, blurred, -SHARPEN_AMOUNT, 0)
    return np.ascontiguousarray(out, dtype=np.uint8)


class RegionFallback:
    """The second look at a located but undecoded symbol, on the region only, cheapest
    first, stopping at the first pass that reads anything: zxing-cpp with its global
    histogram binarizer; the region sharpened, with zxing-cpp's local-average then
    global-histogram binarizer; pyzbar (another binarizer and sampler). Measured on
    bench/hard_frames.py's set against OpenCV's WeChat decoder and others
    (docs/devices.md)."""

    def __init__(self) -> None:
        import zxingcpp

        self._zx: Any = zxingcpp
        self._pyzbar: Any = None
        try:
            from pyzbar import pyzbar

            self._pyzbar = pyzbar
            self._symbols = [pyzbar.ZBarSymbol.QRCODE]
        except ImportError as e:  # libzbar0 missing: the zxing half still helps
            log.warning("decoder fallback: pyzbar cannot load (%s); install libzbar0", e)

    def decode(self, gray: Gray, region: Region) -> list[str]:
        image = region_image(gray, region)
        binarizer = self._zx.Binarizer
        texts = self._zxing(image, binarizer.GlobalHistogram)
        if texts:
            return texts
        sharp = sharpened(image)
        texts = self._zxing(sharp, binarizer.LocalAverage) or self._zxing(
            sharp, binarizer.GlobalHistogram
        )
        if texts or self._pyzbar is None:
            return texts
        symbols = self._pyzbar.decode(image, symbols=self._symbols)
        return [bytes(s.data).decode("utf-8", "replace") for s in symbols if s.data]

    def _zxing(self, image: Gray, binarizer: Any) -> list[str]:
        found = self._zx.read_barcodes(
            image,
            formats=self._zx.BarcodeFormat.QRCode,
            try_rotate=False,
            try_invert=False,
            try_downscale=False,
            binarizer=binarizer,
        )
        return [str(b.text) for b in found if b.text]


class ZxingDecoder:
    """zxing-cpp: the default. QR only, no rotation or inversion passes (QR finder
    patterns are found at any angle anyway; token codes are dark on light).

    With `fallback` (the default), a frame where zxing-cpp locates a symbol but decodes
    none gets `RegionFallback`'s second look; a frame with no located symbol (an empty
    counter) costs nothing more. `last_fallback_ms` is that look's time on the last
    frame (None when there was none), for bench/scan.py to count it separately.
    """

    name = ZXING

    def __init__(self, fallback: bool = True) -> None:
        try:
            import zxingcpp
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise DecoderUnavailable(
                f"decoder zxing needs the zxing-cpp package ({e}); "
                "install it with pip install zxing-cpp"
            ) from e
        self._zx: Any = zxingcpp
        self._formats = zxingcpp.BarcodeFormat.QRCode
        self._fallback = RegionFallback() if fallback else None
        self.last_fallback_ms: float | None = None

    def decode(self, gray: Gray) -> list[str]:
        self.last_fallback_ms = None
        found = self._zx.read_barcodes(
            gray,
            formats=self._formats,
            try_rotate=False,
            try_invert=False,
            try_downscale=True,
            return_errors=self._fallback is not None,
        )
        texts = [str(b.text) for b in found if b.valid and b.text]
        if texts or self._fallback is None:
            return texts
        quads = [(b.format.name in _WHOLE_QR, _corners(b.position)) for b in found]
        region = located_region(gray.shape, quads)
        if region is None:
            return []
        started = time.perf_counter()
        try:
            return self._fallback.decode(gray, region)
        finally:
            self.last_fallback_ms = (time.perf_counter() - started) * 1000


def _corners(position: Any) -> list[tuple[float, float]]:
    return [
        (float(p.x), float(p.y))
        for p in (
            position.top_left,
            position.top_right,
            position.bottom_right,
            position.bottom_left,
        )
    ]


class PyzbarDecoder:
    """pyzbar over libzbar (Debian package libzbar0), QR symbols only."""

    name = PYZBAR

    def __init__(self) -> None:
        try:
            from pyzbar import pyzbar
        except ImportError as e:
            # pyzbar raises ImportError both when the package is missing and
            # when it cannot load the shared library.
            raise DecoderUnavailable(
                f"decoder pyzbar cannot load ({e}): install the Debian package libzbar0 "
                "(apt install libzbar0) and the pyzbar package, or set decoder = zxing"
            ) from e
        self._pyzbar: Any = pyzbar
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]

    def decode(self, gray: Gray) -> list[str]:
        found = self._pyzbar.decode(gray, symbols=self._symbols)
        return [bytes(s.data).decode("utf-8", "replace") for s in found if s.data]


class OpencvDecoder:
    """OpenCV's QRCodeDetector: no extra dependency, but slow on 1280x720 frames."""

    name = OPENCV

    def __init__(self) -> None:
        # Not thread-safe: each decoder (one per camera thread) has its own detector.
        self._detector: Any = cv2.QRCodeDetector()

    def decode(self, gray: Gray) -> list[str]:
        ok, texts, _points, _straight = self._detector.detectAndDecodeMulti(gray)
        if not ok:
            return []
        return [str(t) for t in texts if t]


class NullDecoder:
    """Finds nothing, at no cost."""

    name = NONE

    def decode(self, gray: Gray) -> list[str]:
        del gray
        return []


def make_decoder(name: str = DEFAULT_DECODER) -> QrDecoder:
    """The decoder a setting names; DecoderUnavailable (one clear line) if it cannot load."""
    if name == ZXING:
        return ZxingDecoder()
    if name == PYZBAR:
        return PyzbarDecoder()
    if name == OPENCV:
        return OpencvDecoder()
    if name == NONE:
        return NullDecoder()
    raise DecoderUnavailable(
        f"unknown decoder {name!r}: choose one of {', '.join(CAMERA_DECODERS)}"
    )
