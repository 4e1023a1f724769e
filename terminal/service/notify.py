"""systemd's notify protocol and the journal's log format, for the daemon.

This module owns how the daemon speaks to systemd: ``Notifier`` sends
READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 datagrams over $NOTIFY_SOCKET (a
no-op without systemd), and ``JournalFormatter`` prefixes each log line with
its syslog priority for journald. It never decides what the state is (the
daemon does) and never daemonizes: systemd does that.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import ClassVar

log = logging.getLogger("canteen.daemon")


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (<3> error .. <7> debug); journald reads it."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self._PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Notifier:
    """sd_notify over $NOTIFY_SOCKET: a datagram per message; a no-op without systemd.

    Errors are logged once, not swallowed: a watchdog that silently stops
    pinging would make systemd kill a healthy terminal without a word why.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._failed = False
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        if self._sock is None or not self.address:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(text.encode("utf-8"), target)
        except OSError as exc:
            if not self._failed:
                log.error("systemd notify to %s failed: %s", self.address, exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
