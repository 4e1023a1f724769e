"""Stray QR reads: how often the decoder reports a code that is not there, and how many of
those would have become presentations without and with the camera's StrayFilter.

Each "phone" is a fresh token v1 code from a simulated wallet, drawn by the hardware
simulator's camera exactly as `hw-sim camera` serves it (a motion-smeared entry frame,
four steady frames a pixel or two apart, a smeared exit frame; 960x540 as in the
lunch-rush scenario, scenes from `render.random_scene`), JPEG-decoded and read with the
terminal's default decoder. A read whose text differs from the code shown is a stray.
Every phone's frames then go through the camera's two filters (StrayFilter, then the
PresenceFilter) to count the presentations that would not be the code shown. Work is
split over processes, one per core. Run:

    PYTHONPATH=.:hw-sim python bench/stray_reads.py [--phones 3000] [--jobs 2]

The figure it guards: 0 stray presentations with the filter, whatever the raw rate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "hw-sim", ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from figures import RESULTS, report  # noqa: E402


def phones(job: int, count: int) -> dict[str, Any]:
    import cv2
    import numpy as np
    from hwsim import population as pop
    from hwsim import render
    from hwsim.camera import CameraSim, _Show

    from terminal.scanner.camera import StrayFilter
    from terminal.scanner.device import PresenceFilter
    from terminal.scanner.qr import decode_frame, make_decoder

    people = pop.make_population(
        now=1_790_000_000,
        cadres=50,
        units=pop.DEFAULT_UNITS,
        cards_fraction=0.1,
        seed=f"stray-reads/{job}",
    )
    wallets = [c.wallet for c in people.cadres]
    camera = CameraSim(port=0, fps=15, size=(960, 540), seed=7)
    camera._background = render.counter_background(camera.size, np.random.default_rng(7))
    decoder = make_decoder("zxing")
    rng = random.Random(job)
    frames = reads = strays = raw_wrong = filtered_wrong = 0
    examples: list[str] = []
    for _ in range(count):
        text = rng.choice(wallets).draw(1_790_000_000 + rng.randint(0, 10**6))
        scene = render.random_scene(
            7 * 100_003 + rng.randint(1, 400), camera.size, render.code_px_range(camera.size)
        )
        presence, strays_filter = PresenceFilter(3.0), StrayFilter(1.0)
        raw_seen: set[str] = set()
        for k, jpeg in enumerate(camera._draw(_Show(text, 0.35, scene))):
            frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            texts = decode_frame(decoder, frame)
            frames += 1
            reads += len(texts)
            now = k / 15
            for got in texts:
                if got != text:
                    strays += 1
                    examples.append(got[:16])
                    if got not in raw_seen:
                        raw_wrong += 1  # with no filter: a new text is a presentation
                raw_seen.add(got)
            for got in strays_filter.keep(texts, now, presence):
                if presence.admit(got, now) and got != text:
                    filtered_wrong += 1
    return {
        "frames": frames,
        "reads": reads,
        "strays": strays,
        "raw_wrong": raw_wrong,
        "filtered_wrong": filtered_wrong,
        "examples": examples[:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    per = [args.phones // args.jobs + (i < args.phones % args.jobs) for i in range(args.jobs)]
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        parts = list(pool.map(phones, range(args.jobs), per))
    total = {k: sum(p[k] for p in parts) for k in ("frames", "reads", "strays")}
    raw_wrong = sum(p["raw_wrong"] for p in parts)
    filtered_wrong = sum(p["filtered_wrong"] for p in parts)
    examples = [e for p in parts for e in p["examples"]]
    print(
        f"{args.phones} phones, {total['frames']} frames, {total['reads']} reads, "
        f"{total['strays']} stray reads {examples}"
    )
    report(
        "stray reads per 10,000 reads",
        total["strays"] * 10_000 / max(1, total["reads"]),
        "",
        "the decoder alone (zxing-cpp)",
        "none required: the filter must catch them",
        True,
        digits=2,
    )
    report(
        "stray presentations with the camera's filters",
        filtered_wrong,
        "",
        f"{raw_wrong} without the stray filter",
        "0",
        filtered_wrong == 0,
        digits=0,
    )
    if args.json:
        print(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
