"""Durable file writes: the old file or the new one, whole, even after a power cut.

This module owns the one way the terminal and the county tools replace a small
file on disk: write a temp file beside it, fsync it, rename it over the old one,
then fsync the directory so the rename itself survives. It never decides what
to write and never writes the ledger or the trust store (SQLite does its own
durability there).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync of the directory: the old file or the new, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name: two writers of the same file never write into each other's temp.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
