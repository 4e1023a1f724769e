"""The hard set: phone-screen frames the default decoder is expected to struggle with.

This module owns drawing the frames that issue 18's second decoder is measured on: real
canteen tokens (hw-sim wallets) on a phone screen as hw-sim/hwsim/render.py draws it,
made hard in one way each: a small code (140 to 210 px across), motion blur, strong
glare, moiré from the screen's pixel grid, steep tilt, low light, or a cracked screen.
Every frame is deterministic from its index, so bench/scan.py, the committed test
frames (tests/data/hard-frames/, written by `--commit-subset`) and anyone re-running it
see the same pictures. It never decodes anything except when choosing the committed
subset (frames the default decoder misses and the fallback reads). Run:

    PYTHONPATH=.:hw-sim python bench/hard_frames.py --out DIR [--per-kind 40]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "hw-sim"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from hwsim import render  # noqa: E402
from hwsim.wallet import Issuer, key_from_seed, make_wallet  # noqa: E402

KINDS = ("small", "motion", "glare", "moire", "tilt", "lowlight", "cracked")
NOW = 1_790_000_000
ISSUER = Issuer("hn-chenzhou", key_from_seed("bench-hard-frames"))


@dataclass(frozen=True)
class HardFrame:
    kind: str
    index: int
    text: str
    frame: render.Image


def _base_scene(kind: str, index: int, rng: np.random.Generator) -> render.Scene:
    # Codes of the hard set are smaller than the ordinary set's 300-420 px: a phone held
    # at arm's length, which is where every other trouble starts to matter.
    small = kind == "small"
    return replace(
        render.random_scene(50_000 + index, (1280, 720), (140.0, 210.0) if small else (180, 260)),
        seed=90_000 + index,
        glare=0.0,
    )


def _moire(face: render.Image, rng: np.random.Generator) -> render.Image:
    """The screen's sub-pixel grid: RGB stripes and dark gaps between pixels. Sampled by
    the camera at a period close to its own, it beats into moiré bands."""
    h, w = face.shape[:2]
    period = int(rng.integers(3, 5))  # flat px per screen pixel
    grid = np.ones((h, w, 3), np.float32)
    xs = np.arange(w) % period
    ys = np.arange(h) % period
    gap = float(rng.uniform(0.35, 0.6))
    grid[:, xs == period - 1, :] *= gap
    grid[ys == period - 1, :, :] *= gap
    for c in range(3):  # BGR stripes within each screen pixel
        grid[:, (xs * 3 // period) == c, c] *= 1.25
    out: render.Image = np.clip(face.astype(np.float32) * grid, 0, 255).astype(np.uint8)
    return out


def _cracks(face: render.Image, rng: np.random.Generator) -> render.Image:
    """A cracked screen: a few bright and dark jagged lines from an impact point."""
    h, w = face.shape[:2]
    out = face.copy()
    impact = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.5) * h))
    for _ in range(int(rng.integers(4, 8))):
        angle = rng.uniform(0, 2 * math.pi)
        x, y = float(impact[0]), float(impact[1])
        points = [(int(x), int(y))]
        for _ in range(int(rng.integers(6, 14))):
            angle += rng.uniform(-0.5, 0.5)
            step = rng.uniform(0.03, 0.09) * w
            x, y = x + step * math.cos(angle), y + step * math.sin(angle)
            points.append((int(x), int(y)))
        colour = (235, 235, 235) if rng.random() < 0.5 else (25, 25, 25)
        thick = int(rng.integers(2, 7))
        cv2.polylines(out, [np.array(points, np.int32)], False, colour, thick, cv2.LINE_AA)
    return out


def _motion(img: render.FloatImage, rng: np.random.Generator) -> render.FloatImage:
    """Linear motion blur: the phone still moving into place during the exposure."""
    length = int(rng.integers(3, 8))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
    kernel = np.asarray(cv2.warpAffine(kernel, rot, (length, length)), dtype=np.float32)
    kernel /= max(1e-6, float(kernel.sum()))
    return np.asarray(cv2.filter2D(img, -1, kernel), dtype=np.float32)


def hard_frame(kind: str, index: int, text: str) -> render.Image:
    """Frame `index` of `kind`, showing `text`, as a 1280x720 BGR camera frame."""
    if kind not in KINDS:
        raise ValueError(f"unknown hard-frame kind {kind!r}: one of {', '.join(KINDS)}")
    rng = np.random.default_rng([KINDS.index(kind), index])
    scene = _base_scene(kind, index, rng)
    if kind == "glare":
        scene = replace(scene, glare=float(rng.uniform(0.7, 1.1)), screen_white=245)
    elif kind == "tilt":
        scene = replace(scene, tilt=float(rng.uniform(0.22, 0.35)))
    elif kind == "lowlight":
        scene = replace(
            scene,
            exposure=float(rng.uniform(0.22, 0.35)),
            noise_sigma=float(rng.uniform(3.0, 6.0)),
            jpeg_quality=int(rng.integers(50, 75)),
        )
    draw = np.random.default_rng(scene.seed)
    background = render.counter_background(scene.size, draw)
    face = render.phone_face(text, draw, scene)
    if kind == "moire":
        face = (_moire(face[0], rng), *face[1:])
    elif kind == "cracked":
        face = (_cracks(face[0], rng), *face[1:])
    held = render.hold_phone(background, text, scene, draw, face=face)
    if kind == "motion":
        held = _motion(held, rng)
    return render.camera_effects(held, scene, draw)


def hard_set(per_kind: int, first_index: int = 0) -> list[HardFrame]:
    """`per_kind` frames of every kind, each a fresh token from its own wallet."""
    frames = []
    for kind in KINDS:
        for i in range(first_index, first_index + per_kind):
            wallet = make_wallet(ISSUER, f"h{i:04d}", "unit", "hard", now=NOW - 86400, seed=f"{i}")
            text = wallet.draw(NOW + i)
            frames.append(HardFrame(kind, i, text, hard_frame(kind, i, text)))
    return frames


def write_set(folder: str, frames: list[HardFrame], quality: int = 92) -> None:
    """frame_NNNN.jpg for the camera's image-folder source, and texts.json beside them."""
    render.write_folder(folder, [f.frame for f in frames], quality)
    meta = [{"kind": f.kind, "index": f.index, "text": f.text} for f in frames]
    with open(os.path.join(folder, "texts.json"), "w", encoding="utf-8") as out:
        json.dump(meta, out, indent=1)


def commit_subset(folder: str, count: int, window: tuple[int, int] = (800, 600)) -> int:
    """Write `count` frames that only the second look reads, for tests/data/hard-frames/.

    Each is cut to `window` around the symbol (small files to commit), written as JPEG
    and read back, and kept only if, read from the file, zxing-cpp alone decodes nothing
    and the chain decodes its token: what the tests rely on is checked on the bytes they
    will read. One frame per kind at most, in KINDS order, first indices first."""
    from terminal.scanner.qr import ZxingDecoder, decode_frame

    alone, chain = ZxingDecoder(fallback=False), ZxingDecoder(fallback=True)
    os.makedirs(folder, exist_ok=True)
    kept: list[dict[str, object]] = []
    for index in range(200):
        for kind in KINDS:
            if len(kept) >= count or any(k["kind"] == kind for k in kept):
                continue
            wallet = make_wallet(
                ISSUER, f"h{index:04d}", "unit", "hard", now=NOW - 86400, seed=f"{index}"
            )
            text = wallet.draw(NOW + index)
            frame = hard_frame(kind, index, text)
            if decode_frame(alone, frame) or decode_frame(chain, frame) != [text]:
                continue
            cut = _cut(frame, chain, window)
            path = os.path.join(folder, f"frame_{len(kept):04d}.jpg")
            cv2.imwrite(path, cut, [cv2.IMWRITE_JPEG_QUALITY, 90])
            back = cv2.imread(path, cv2.IMREAD_COLOR)
            if decode_frame(alone, back) or decode_frame(chain, back) != [text]:
                os.remove(path)
                continue
            kept.append({"kind": kind, "index": index, "text": text, "drawn_at": NOW + index})
        if len(kept) >= count:
            break
    with open(os.path.join(folder, "texts.json"), "w", encoding="utf-8") as out:
        json.dump(kept, out, indent=1)
    return len(kept)


def _cut(frame: render.Image, chain: object, window: tuple[int, int]) -> render.Image:
    """`window` of `frame` centred on the symbol the second look read."""
    import zxingcpp

    from terminal.scanner.qr import located_region, prepare_frame

    gray = prepare_frame(frame)
    assert gray is not None
    found = zxingcpp.read_barcodes(
        gray, formats=zxingcpp.BarcodeFormat.QRCode, try_rotate=False, return_errors=True
    )
    quads = [
        (False, [(p.x, p.y) for p in (b.position.top_left, b.position.bottom_right)]) for b in found
    ]
    region = located_region(gray.shape, quads) or (0, 0, gray.shape[1], gray.shape[0])
    h, w = frame.shape[:2]
    cx, cy = (region[0] + region[2]) // 2, (region[1] + region[3]) // 2
    x0 = min(max(0, cx - window[0] // 2), max(0, w - window[0]))
    y0 = min(max(0, cy - window[1] // 2), max(0, h - window[1]))
    return np.ascontiguousarray(frame[y0 : y0 + window[1], x0 : x0 + window[0]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the frames")
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument(
        "--commit-subset",
        type=int,
        metavar="N",
        help="instead: N frames only the second look reads (tests/data/hard-frames)",
    )
    args = parser.parse_args()
    if args.commit_subset:
        kept = commit_subset(args.out, args.commit_subset)
        print(f"{kept} frames in {args.out}")
        return 0 if kept == args.commit_subset else 1
    frames = hard_set(args.per_kind)
    write_set(args.out, frames)
    print(f"{len(frames)} frames in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
