"""The decoder chain (issue 18): zxing-cpp, then a second look at the region where it
located a QR symbol but decoded none.

The frames in tests/data/hard-frames/ were drawn by bench/hard_frames.py
(`--commit-subset 3`) from real tokens: a cracked screen, strong glare and moiré from
the screen's pixels. zxing-cpp alone reads none of them; the chain reads each. They go
through the real camera path: an image folder opened by cv2.VideoCapture in the camera
thread, decoded, filtered and put on the queue, then verified as tokens.
"""

from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path

import cv2
import pytest
import scanimages as si
from conftest import wait_for
from hwsim.wallet import Issuer, StaticKeyring, key_from_seed

from protocol.tokens import verify_presentation
from terminal.core.events import QrPresented
from terminal.scanner.camera import Camera, CameraSettings
from terminal.scanner.qr import (
    FALLBACK_MAX_SIDE,
    FALLBACK_MIN_SIDE,
    ZxingDecoder,
    decode_frame,
    located_region,
    make_decoder,
    prepare_frame,
    region_image,
)

HARD = Path(__file__).parent / "data" / "hard-frames"
# The issuer bench/hard_frames.py draws its tokens with.
KEYRING = StaticKeyring([Issuer("hn-chenzhou", key_from_seed("bench-hard-frames")).issuer_key()])
WAIT_S = 15.0


@pytest.fixture(scope="module")
def hard() -> list[dict[str, object]]:
    meta: list[dict[str, object]] = json.loads((HARD / "texts.json").read_text("utf-8"))
    assert len(meta) == len(list(HARD.glob("frame_*.jpg"))) >= 3
    return meta


def test_each_hard_frame_is_read_by_the_chain_only(hard: list[dict[str, object]]) -> None:
    alone, chain = ZxingDecoder(fallback=False), make_decoder("zxing")
    for k, item in enumerate(hard):
        frame = cv2.imread(str(HARD / f"frame_{k:04d}.jpg"), cv2.IMREAD_COLOR)
        assert decode_frame(alone, frame) == [], item["kind"]
        assert decode_frame(chain, frame) == [item["text"]], item["kind"]
        assert isinstance(chain, ZxingDecoder) and chain.last_fallback_ms is not None


def test_camera_presents_codes_only_the_fallback_reads(
    tmp_path: Path, hard: list[dict[str, object]]
) -> None:
    folder = tmp_path / "frames"
    shutil.copytree(HARD, folder)
    q: queue.Queue[QrPresented] = queue.Queue()
    camera = Camera(CameraSettings(source=str(folder), fps=30, same_text_s=3600.0), q)
    camera.start()
    try:
        got = [q.get(timeout=WAIT_S) for _ in hard]
    finally:
        camera.stop()
    assert [e.text for e in got] == [item["text"] for item in hard]
    for event, item in zip(got, hard, strict=True):
        drawn_at = item["drawn_at"]
        assert isinstance(drawn_at, int)
        assert verify_presentation(event.text, drawn_at + 1, KEYRING).sub.startswith("h")


def test_camera_without_the_fallback_presents_nothing_from_them(
    tmp_path: Path, hard: list[dict[str, object]]
) -> None:
    # The same folder and camera path with zxing-cpp alone: the folder replays, and after
    # several passes nothing has been presented. This is what the chain adds.
    folder = tmp_path / "frames"
    shutil.copytree(HARD, folder)
    q: queue.Queue[QrPresented] = queue.Queue()
    settings = CameraSettings(source=str(folder), fps=60, same_text_s=3600.0)
    camera = Camera(settings, q, decoder=ZxingDecoder(fallback=False))
    camera.start()
    try:
        assert wait_for(lambda: camera.health().counters.get("frames", 0) >= 3 * len(hard))
    finally:
        camera.stop()
    assert q.empty()
    assert camera.health().counters.get("decode_errors", 0) == 0


def test_empty_frames_never_get_the_second_look() -> None:
    chain = ZxingDecoder()
    for scene in si.scenes(12, (1280, 720), first_seed=9000):
        frame = si.render_frame(None, scene)
        assert decode_frame(chain, frame) == []
        assert chain.last_fallback_ms is None


def test_readable_codes_do_not_get_the_second_look() -> None:
    chain = ZxingDecoder()
    text = "CT1:" + "A" * 300  # any text: the chain only reads, tokens.py judges
    for scene in si.scenes(4, (1280, 720), first_seed=700):
        assert decode_frame(chain, si.render_frame(text, scene)) == [text]
        assert chain.last_fallback_ms is None


def test_located_region_grows_a_finder_pattern_more_than_a_whole_code() -> None:
    square = [(100.0, 100.0), (120.0, 100.0), (120.0, 120.0), (100.0, 120.0)]
    whole = located_region((720, 1280), [(True, square)])
    finder = located_region((720, 1280), [(False, square)])
    assert whole is not None and finder is not None
    assert whole[2] - whole[0] < 30 and finder[2] - finder[0] > 200
    assert finder[0] == 0 and finder[1] == 0  # clipped to the frame
    # Two located pieces of one code: one region holding both.
    both = located_region((720, 1280), [(True, square), (True, [(x + 300, y) for x, y in square])])
    assert both is not None and both[0] < 100 and both[2] > 420
    # Nothing located, or a region that falls outside the frame: no second look.
    assert located_region((720, 1280), []) is None
    outside = [(2000.0, 2000.0), (2010.0, 2000.0), (2010.0, 2010.0), (2000.0, 2010.0)]
    assert located_region((720, 1280), [(True, outside)]) is None


def test_region_image_is_bounded_whatever_the_region() -> None:
    gray = prepare_frame(si.render_frame(None, si.random_scene(3, (1920, 1080))))
    assert gray is not None
    for region in [(0, 0, 40, 30), (10, 10, 600, 400), (0, 0, 1920, 1080)]:
        image = region_image(gray, region)
        assert FALLBACK_MIN_SIDE <= max(image.shape) <= FALLBACK_MAX_SIDE
        assert image.dtype == gray.dtype and image.flags["C_CONTIGUOUS"]
