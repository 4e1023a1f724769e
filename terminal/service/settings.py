"""The tables of the settings that the service reads, each typed by its owner.

This module owns the ``[daemon]`` table (``DaemonSettings``) and hands out
every other part's typed table from the one loaded ``config.Settings``:
``[camera]`` and ``[reader]`` as the scanner's dataclasses, ``[display]`` by
terminal/display/settings.py, ``[sync]`` by terminal/config.py.
``check_settings`` checks them all, so a typo anywhere stops a start before
any thread runs. It never opens a device: the scanner modules (and OpenCV
and pyserial with them) are imported only when a camera or reader table is
read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from terminal import config
from terminal.display import settings as display
from terminal.display.settings import DisplaySettings

if TYPE_CHECKING:
    from terminal.scanner.camera import CameraSettings
    from terminal.scanner.reader import ReaderSettings

# Settings lines belong to the daemon's log (journald shows them as canteen.daemon).
log = logging.getLogger("canteen.daemon")

T = TypeVar("T")


@dataclass(frozen=True)
class DaemonSettings:
    min_free_mb: int
    queue_size: int
    worker_stall_s: int
    retention_days: int
    camera: bool
    reader: bool


def daemon_settings(settings: config.Settings) -> DaemonSettings:
    section = settings.section("daemon")
    result = DaemonSettings(
        min_free_mb=section.get_int("min_free_mb", 1, 100_000),
        queue_size=section.get_int("queue_size", 1, 100_000),
        worker_stall_s=section.get_int("worker_stall_s", 2, 3600),
        retention_days=section.get_int("retention_days", 7, 36500),
        camera=section.get_bool("camera"),
        reader=section.get_bool("reader"),
    )
    if "check_ahead" in section.data:
        # The check-ahead process was removed in issue 13 (docs/architecture.md, "No
        # check-ahead process"). A terminal upgraded with the line still in its settings
        # must still start: the option is ignored, and the log says so.
        section.used.add("check_ahead")
        log.warning(
            "%s: [daemon] check_ahead is no longer an option and is ignored (the decision "
            "worker checks every code); remove this line",
            settings.source,
        )
    section.check_unused()
    return result


def camera_settings(settings: config.Settings) -> CameraSettings:
    from terminal.scanner.camera import CameraSettings

    return _table(
        settings,
        "camera",
        lambda s: CameraSettings(
            source=s.get_str("source"),
            width=s.get_int("width", 16, 8192),
            height=s.get_int("height", 16, 8192),
            fps=s.get_int("fps", 1, 240),
            fourcc=s.get_str("fourcc"),
            decoder=s.get_str("decoder", ("zxing", "pyzbar", "opencv", "none")),
            stall_s=s.get_float("stall_s", 0.1, 600),
            same_text_s=s.get_float("same_text_s", 0, 600),
            confirm_s=s.get_float("confirm_s", 0.01, 60),
        ),
    )


def reader_settings(settings: config.Settings) -> ReaderSettings:
    from terminal.scanner.reader import ReaderSettings

    return _table(
        settings,
        "reader",
        lambda s: ReaderSettings(
            port=s.get_str("port"),
            kind=s.get_str("kind", ("rdm6300", "ascii", "pn532")),
            ascii_format=s.get_str("ascii_format", ("hex", "dec")),
            ascii_byte_order=s.get_str("ascii_byte_order", ("msb_first", "lsb_first")),
            card_leave_s=s.get_float("card_leave_s", 0, 60),
        ),
    )


def _table(settings: config.Settings, name: str, build: Callable[[config.Section], T]) -> T:
    """The table ``name`` built by ``build``: a value its dataclass refuses is a ConfigError
    naming the table, and an option nothing read is one too."""
    s = settings.section(name)
    try:
        result = build(s)
    except ValueError as exc:
        raise config.ConfigError(f"{settings.source}: [{name}]: {exc}") from None
    s.check_unused()
    return result


def display_settings(settings: config.Settings) -> DisplaySettings:
    return display.from_settings(settings)


def sync_settings(settings: config.Settings) -> config.SyncSettings:
    return config.sync_settings(settings)


def check_settings(settings: config.Settings) -> None:
    """Every table of the settings, each by its owner: the first problem is a ConfigError."""
    daemon_settings(settings)
    camera_settings(settings)
    reader_settings(settings)
    display_settings(settings)
    sync_settings(settings)
