"""`canteen-terminal scan-image FILE...`: decode the QR codes in image files, one JSON line each.

This module owns the scan-image command: reading each file with OpenCV,
decoding it with the chosen decoder exactly as the camera thread does
(terminal/scanner/qr.py), and printing ``{"file", "texts", "decoder", "ms"}``
per file (plus ``"error"`` when a file cannot be read). Technicians use it to
check a camera's snapshot; tests and checks use it too. It never verifies a
token, never opens a camera and never writes anything but its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from terminal.scanner.qr import DECODERS, DEFAULT_DECODER, DecoderUnavailable, make_decoder

HELP = "decode the QR codes in image files (a camera snapshot), one JSON line per file"


def add_scan_image(subparsers: Any) -> None:
    """Add `scan-image` to the canteen-terminal command's subparsers."""
    p = subparsers.add_parser(
        "scan-image",
        help=HELP,
        description=HELP
        + ". Exit status 0 when every file was read (with or without a code), 1 when a file "
        "could not be read, 2 when the decoder cannot load.",
    )
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="image files (JPEG, PNG, ...)")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default=DEFAULT_DECODER,
        help=f"QR decoder (default {DEFAULT_DECODER})",
    )
    p.set_defaults(func=cmd_scan_image)


def cmd_scan_image(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """The handler: returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        decoder = make_decoder(args.decoder)
    except DecoderUnavailable as e:
        print(f"canteen-terminal scan-image: {e}", file=err)
        return 2
    # OpenCV is imported only now: the core commands must not need it.
    import cv2

    from terminal.scanner.qr import decode_frame

    status = 0
    for name in args.files:
        line: dict[str, Any] = {"file": name, "texts": [], "decoder": decoder.name, "ms": 0.0}
        # IMREAD_COLOR: 8-bit BGR whatever the file holds (16-bit, grey, alpha).
        image = cv2.imread(name, cv2.IMREAD_COLOR) if _readable(name) else None
        if image is None:
            line["error"] = "cannot read this file as an image: check the path and format"
            status = 1
        else:
            started = time.perf_counter()
            try:
                line["texts"] = decode_frame(decoder, image)
            except Exception as e:  # a decoder failing on one file must not end the run
                line["error"] = f"decoder {decoder.name} failed on this image: {e}"
                status = 1
            line["ms"] = round((time.perf_counter() - started) * 1000, 3)
        print(json.dumps(line, ensure_ascii=False), file=out, flush=True)
    return status


def _readable(name: str) -> bool:
    try:
        with open(name, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m terminal.commands.scan FILE...`: the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="canteen-terminal scan-image", description=HELP)
    configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
