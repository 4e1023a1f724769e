"""Pictures of a phone showing a token QR code: the flat screen, and what a camera sees.

This module owns drawing: a code drawn with segno at error correction M (as
issuers draw token v1), on a phone screen with a bezel, an app header and text
lines; that phone placed over a cluttered counter in a 1280x720 or 640x480
frame with perspective, rotation, lens blur, sensor noise, screen glare,
exposure and JPEG compression; and the empty counter alone. Everything is
deterministic from a seed. The simulated camera, `hw-sim phone --png`, the
scanner tests (tests/scanimages.py re-exports this module) and bench/scan.py
all draw with it, so what the tests prove is what a technician sees. It never
decodes anything and never opens a device or a socket: readers of these
pictures are the real decoders.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

import cv2
import numpy as np
import numpy.typing as npt
import segno

Image = npt.NDArray[np.uint8]
FloatImage = npt.NDArray[np.float32]
_MODULE = 8  # px per module in the flat phone picture before it is warped into the frame
_QUIET = 4  # quiet-zone modules, as the QR standard asks


@dataclass(frozen=True)
class Scene:
    """How one frame is made. `code_px` is the code's width in the frame (without quiet zone)."""

    size: tuple[int, int] = (1280, 720)  # (width, height)
    code_px: float = 340.0
    rotate_deg: float = 0.0  # in the image plane
    tilt: float = 0.06  # perspective: corner jitter as a fraction of the code width
    blur_sigma: float = 0.8  # lens / focus blur, px
    noise_sigma: float = 4.0  # sensor noise, grey levels
    glare: float = 0.3  # peak brightness a glare spot adds (0..1); 0 for none
    exposure: float = 1.0  # overall gain
    screen_black: int = 35  # a phone screen's "black" as the camera sees it
    screen_white: int = 225
    jpeg_quality: int = 80  # 0 for no JPEG round trip
    seed: int = 0


@functools.lru_cache(maxsize=64)
def qr_matrix(text: str) -> npt.NDArray[np.bool_]:
    """The code's modules (True = dark), no quiet zone, error correction M as issued."""
    qr = segno.make(text, error="m", boost_error=False, micro=False)
    rows = list(qr.matrix_iter(scale=1, border=0))
    matrix = np.array(rows, dtype=bool)
    matrix.setflags(write=False)  # cached: shared between callers
    return matrix


def qr_version(text: str) -> int:
    """The QR version (size) a token text needs at error correction M."""
    version = segno.make(text, error="m", boost_error=False, micro=False).version
    return int(version)


def phone_face(
    text: str | None, rng: np.random.Generator, s: Scene
) -> tuple[Image, Image, float, tuple[float, float]]:
    """The phone face-on: (BGR picture, mask of its outline, code width, code centre) in px."""
    n = qr_matrix(text).shape[0] if text is not None else 69
    code = n * _MODULE
    screen_w = int(code / 0.72)
    screen_h = int(screen_w * 2.05)
    bezel = int(screen_w * 0.04)
    w, h = screen_w + 2 * bezel, screen_h + 2 * bezel
    phone = np.zeros((h, w, 3), np.uint8)
    phone[:] = (18, 18, 22)
    mask = np.zeros((h, w), np.uint8)
    radius = int(w * 0.1)
    cv2.rectangle(mask, (radius, 0), (w - radius, h), 255, -1)
    cv2.rectangle(mask, (0, radius), (w, h - radius), 255, -1)
    for cx, cy in ((radius, radius), (w - radius, radius), (radius, h - radius)):
        cv2.circle(mask, (cx, cy), radius, 255, -1)
    cv2.circle(mask, (w - radius, h - radius), radius, 255, -1)
    white, black = s.screen_white, s.screen_black
    tint = rng.integers(-8, 9, 3)
    sx0, sy0 = bezel, bezel
    screen = phone[sy0 : sy0 + screen_h, sx0 : sx0 + screen_w]
    screen[:] = np.clip(np.array([white, white, white]) + tint, 0, 255)
    # App header bar and a few lines of text, so the decoder sees clutter as a real app has.
    header = (int(rng.integers(40, 90)), int(rng.integers(120, 180)), int(rng.integers(40, 90)))
    cv2.rectangle(screen, (0, 0), (screen_w, int(screen_h * 0.09)), header, -1)
    code_x = (screen_w - code) // 2
    code_y = int(screen_h * 0.18)
    for i in range(6):
        y = code_y + code + int(_MODULE * 6) + i * int(_MODULE * 5)
        x_end = int(screen_w * rng.uniform(0.4, 0.9))
        cv2.rectangle(
            screen, (int(screen_w * 0.08), y), (x_end, y + int(_MODULE * 2)), (90, 90, 90), -1
        )
    if text is not None:
        modules = qr_matrix(text)
        pix = np.where(modules, black, white).astype(np.uint8)
        pix = np.repeat(np.repeat(pix, _MODULE, axis=0), _MODULE, axis=1)
        screen[code_y : code_y + code, code_x : code_x + code] = pix[:, :, None]
    else:
        # An app page with no code: a photo-like placeholder where the code would be.
        cv2.rectangle(screen, (code_x, code_y), (code_x + code, code_y + code), (200, 190, 180), -1)
    centre = (sx0 + code_x + code / 2, sy0 + code_y + code / 2)
    return phone, mask, float(code), centre


def phone_screen_png(text: str, seed: int = 0) -> bytes:
    """A PNG of the phone face-on (transparent outside its outline), black and white as a
    screen shows them: to display on a monitor in front of a real terminal's camera."""
    scene = Scene(screen_black=0, screen_white=255, seed=seed)
    phone, mask, _, _ = phone_face(text, np.random.default_rng(seed), scene)
    bgra = np.dstack([phone, mask])
    ok, png = cv2.imencode(".png", bgra)
    if not ok:
        raise ValueError("OpenCV could not encode the phone picture as PNG")
    return png.tobytes()


def counter_background(size: tuple[int, int], rng: np.random.Generator) -> Image:
    """The canteen counter under the camera: soft blobs of colour and a few objects."""
    w, h = size
    small = rng.integers(40, 200, (6, 8, 3)).astype(np.uint8)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.rectangle(bg, p1, p2, colour, -1)
        else:
            cv2.circle(bg, p1, int(rng.integers(10, max(11, h // 3))), colour, -1)
    return np.asarray(cv2.GaussianBlur(bg, (0, 0), 2.0), dtype=np.uint8)


def hold_phone(
    background: Image,
    text: str | None,
    scene: Scene,
    rng: np.random.Generator,
    face: tuple[Image, Image, float, tuple[float, float]] | None = None,
) -> FloatImage:
    """The phone held over `background` (perspective, rotation, glare, exposure), before
    the camera's own blur, noise and compression (`camera_effects`). `face` is a
    `phone_face` result drawn with `rng` and then altered (a cracked screen, its pixel
    grid: bench/hard_frames.py); None draws it here."""
    h, w = background.shape[:2]
    phone, mask, code_flat, centre = face if face is not None else phone_face(text, rng, scene)
    scale = scene.code_px / code_flat
    angle = math.radians(scene.rotate_deg)
    ph, pw = phone.shape[:2]
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    # Put the code's centre somewhere that keeps the whole code (rotated, tilted) in frame.
    half = scene.code_px * (0.5 * math.sqrt(2) + scene.tilt + 0.05)
    cx = rng.uniform(min(half, w / 2), max(w - half, w / 2))
    cy = rng.uniform(min(half, h / 2), max(h - half, h / 2))
    cos, sin = math.cos(angle), math.sin(angle)
    dst = []
    for x, y in src:
        dx, dy = (x - centre[0]) * scale, (y - centre[1]) * scale
        jitter = rng.uniform(-1, 1, 2) * scene.tilt * scene.code_px * math.hypot(dx, dy)
        jitter /= max(1.0, scene.code_px)
        dst.append([cx + cos * dx - sin * dy + jitter[0], cy + sin * dx + cos * dy + jitter[1]])
    homography = cv2.getPerspectiveTransform(src, np.array(dst, np.float32))
    warped = cv2.warpPerspective(phone, homography, (w, h), flags=cv2.INTER_AREA)
    warped_mask = cv2.warpPerspective(mask, homography, (w, h), flags=cv2.INTER_LINEAR)
    alpha = (warped_mask.astype(np.float32) / 255.0)[:, :, None]
    img = background.astype(np.float32) * (1 - alpha) + warped.astype(np.float32) * alpha
    if scene.glare > 0:
        gx = cx + rng.uniform(-0.6, 0.6) * scene.code_px
        gy = cy + rng.uniform(-0.6, 0.6) * scene.code_px
        sigma = scene.code_px * rng.uniform(0.08, 0.2)
        # Only the window where the spot is visible: a full-frame grid is slow.
        x0, x1 = max(0, int(gx - 6 * sigma)), min(w, int(gx + 6 * sigma) + 1)
        y0, y1 = max(0, int(gy - 4 * sigma)), min(h, int(gy + 4 * sigma) + 1)
        if x1 > x0 and y1 > y0:
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            spot = np.exp(-((xx - gx) ** 2 / (5 * sigma**2) + (yy - gy) ** 2 / (2 * sigma**2)))
            img[y0:y1, x0:x1] += (255.0 * scene.glare * spot * alpha[y0:y1, x0:x1, 0])[:, :, None]
    img *= scene.exposure
    return img


def camera_effects(img: FloatImage, scene: Scene, rng: np.random.Generator) -> Image:
    """Lens blur, sensor noise and the JPEG round trip of `scene` applied to a picture."""
    if scene.blur_sigma > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), scene.blur_sigma), dtype=np.float32)
    if scene.noise_sigma > 0:
        img = img + rng.normal(0, scene.noise_sigma, img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if scene.jpeg_quality > 0:
        ok, jpg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, scene.jpeg_quality])
        if not ok:
            raise ValueError("OpenCV could not encode a frame as JPEG")
        out = np.asarray(cv2.imdecode(jpg, cv2.IMREAD_COLOR), dtype=np.uint8)
    return out


def render_frame(text: str | None, scene: Scene) -> Image:
    """One BGR camera frame of a phone showing `text` as a QR code (None: no code)."""
    rng = np.random.default_rng(scene.seed)
    background = counter_background(scene.size, rng)
    return camera_effects(hold_phone(background, text, scene, rng), scene, rng)


def random_scene(
    seed: int,
    size: tuple[int, int] = (1280, 720),
    code_px: tuple[float, float] = (300.0, 420.0),
) -> Scene:
    """A varied but readable scene: the conditions of a phone held 8 to 15 cm from the lens."""
    rng = np.random.default_rng(10_000 + seed)
    return Scene(
        size=size,
        code_px=float(rng.uniform(*code_px)),
        rotate_deg=float(rng.uniform(-25, 25)),
        tilt=float(rng.uniform(0.0, 0.1)),
        blur_sigma=float(rng.uniform(0.3, 1.3)),
        noise_sigma=float(rng.uniform(1.0, 6.0)),
        glare=float(rng.uniform(0.0, 0.45)) if rng.random() < 0.6 else 0.0,
        exposure=float(rng.uniform(0.8, 1.15)),
        screen_black=int(rng.integers(20, 60)),
        screen_white=int(rng.integers(190, 245)),
        jpeg_quality=int(rng.integers(55, 92)),
        seed=seed,
    )


def code_px_range(size: tuple[int, int]) -> tuple[float, float]:
    """How wide a code held 8 to 15 cm from the lens appears at this frame size."""
    return (300.0, 420.0) if size[1] >= 720 else (220.0, 330.0)


def scenes(count: int, size: tuple[int, int] = (1280, 720), first_seed: int = 0) -> list[Scene]:
    """`count` varied readable scenes with consecutive seeds."""
    return [random_scene(first_seed + i, size, code_px_range(size)) for i in range(count)]


def write_folder(folder: str, frames: Iterable[Image], quality: int = 92) -> list[str]:
    """Write frames as frame_0000.jpg, frame_0001.jpg, ...: an image folder camera source."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = os.path.join(folder, f"frame_{i:04d}.jpg")
        if not cv2.imwrite(path, frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths


def with_seed(scene: Scene, seed: int) -> Scene:
    """The same scene conditions with another seed (another placement, noise, clutter)."""
    return replace(scene, seed=seed)
