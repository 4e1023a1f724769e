"""Devices: camera frames to QR texts, serial reader bytes to card UIDs, as queue events.

This package owns the terminal's two input devices. Each device thread puts
`terminal.core.events.QrPresented` or `CardPresented` on the queue the daemon gives
it and reports a `DeviceHealth` snapshot; nothing here touches the ledger, the
policy, the trust state or the display, and no core module imports this
package. It is a package rather than one module because it has two jobs with
two device libraries: the camera (OpenCV, `camera.py` and `qr.py`) and the card
reader (pyserial, `reader.py` and the pure `framing.py`); `device.py` holds what
both share. Importing this package imports neither device library; import the
submodule you need (a reader-only terminal never loads OpenCV).
"""

from __future__ import annotations

from terminal.scanner.device import DeviceHealth, PresenceFilter

__all__ = ["DeviceHealth", "PresenceFilter"]
