"""Camera frames of a phone screen showing a QR code, for the scanner's tests and bench.

The renderer lives in the hardware simulator (hw-sim/hwsim/render.py) so that
the tests, bench/scan.py and the simulated camera a technician runs all draw
the same pictures; this module keeps the names the tests and the bench import.
It never decodes anything.
"""

from __future__ import annotations

from hwsim.render import (
    Image,
    Scene,
    qr_matrix,
    qr_version,
    random_scene,
    render_frame,
    scenes,
    with_seed,
    write_folder,
)

__all__ = [
    "Image",
    "Scene",
    "qr_matrix",
    "qr_version",
    "random_scene",
    "render_frame",
    "scenes",
    "with_seed",
    "write_folder",
]
