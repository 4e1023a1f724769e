"""`canteen-terminal config check FILE`: a settings file, checked as `run` would read it.

This module owns the config command: it loads the file, has every table
checked by its owner (the core, the service, camera, reader, screen and
sync), and says whether `run` could use the state directory and find the
devices. It changes nothing and opens no device.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from terminal import config
from terminal.commands import cli
from terminal.commands.service import SYSTEMD_STATE


def cmd_config_check(a: argparse.Namespace) -> int:
    from terminal.service import settings as sections

    s = config.load(a.file)
    sections.check_settings(s)  # camera, reader, daemon, display and sync tables too
    # What `run` needs beyond the file: a state directory it can use, and the devices.
    state_line = _state_dir_line(a.file, s.state_dir)
    dset = sections.daemon_settings(s)
    devices = []
    if dset.camera:
        devices.append(_device_line("camera", sections.camera_settings(s).source))
    if dset.reader:
        devices.append(_device_line("card reader", sections.reader_settings(s).port))
    meals = ", ".join(f"{m.name} {m.start:%H:%M}-{m.end:%H:%M}" for m in s.meals)
    print(f"{a.file}: ok: terminal {s.terminal_id}, canteen {s.canteen_id}, meals {meals}")
    for line in (state_line, *devices):
        print(f"  {line}")
    return 0


def _state_dir_line(file: str, root: Path) -> str:
    """Whether `run` can use or create the state directory; a CommandError when it cannot."""
    if root.exists():
        if not root.is_dir():
            raise cli.CommandError(f"{file}: [terminal] state_dir {root}: not a directory")
        if os.access(root, os.W_OK | os.X_OK):
            return f"state directory {root}: exists, writable"
        if root == SYSTEMD_STATE:
            return f"state directory {root}: exists, owned by the service's user (systemd)"
        raise cli.CommandError(
            f"{file}: [terminal] state_dir {root}: not writable by this user; "
            "run the terminal as its owner or choose another state_dir"
        )
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return f"state directory {root}: will be created at the first start"
    if root == SYSTEMD_STATE:
        return f"state directory {root}: systemd creates it for the service (StateDirectory)"
    why = "not a directory" if not parent.is_dir() else "not writable by this user"
    raise cli.CommandError(
        f"{file}: [terminal] state_dir {root}: cannot be created: {parent} is {why}; "
        "choose another state_dir, or create it for the user that runs the terminal"
    )


def _device_line(what: str, where: str) -> str:
    """Whether a device path is there now; `run` opens a missing one when it appears."""
    if where.isdigit():
        where = f"/dev/video{where}"  # OpenCV's camera index
    if not where.startswith("/"):
        return (
            f"{what} {where}: not a device path; `run` connects to it and retries until it answers"
        )
    if Path(where).exists():
        return f"{what} {where}: present"
    return (
        f"{what} {where}: missing now; `run` starts without it, says so in `status`, and "
        "opens it when it appears (check the cable and the udev rule, docs/install.md)"
    )


def add_commands(sub: Any) -> None:
    """Add `config check` to canteen-terminal."""
    p = sub.add_parser("config", help="check a settings file")
    csub = cli.subcommands(p, "config_command", "ACTION")
    p = csub.add_parser("check", help="load a settings file and report the first problem")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_config_check)
