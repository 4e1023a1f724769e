"""The county's own file I/O: durable small-file writes and list files read for a command.

This module owns how the county replaces a small file (TUF metadata, targets and
signing keys): a temp file beside it, fsync, rename over the old one, fsync of the
directory, so a crash leaves the old file or the new one, whole. It also reads a
list file (token.md §5 JSON) that county IT names, and hands the bytes to
protocol/lists.py. It never decides what to write or what a list means. The
terminal has the same few lines in terminal/durable.py: the county keeps its own
copy rather than import the terminal's I/O layer, and protocol/ does no I/O.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from protocol.lists import TrustError, parse_list_json


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: after a crash the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer, so two writers never write into one temp file.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def write_new_files(files: dict[Path, bytes], mode: int = 0o644) -> None:
    """Write files that do not exist yet (content-addressed targets), many at once.

    Each file is whole under its name or absent, as with ``write_atomic``, but the
    fsyncs are grouped: every temp file is written, then all are synced, renamed, and
    each directory synced once. The first fsync commits the filesystem's journal for
    all of them, so the 4,096 revocation shards of a new repository are written in
    about a quarter of the time one durable write each took (docs/updates.md)."""
    pending: list[tuple[int, Path, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            pending.append((fd, tmp, path))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        for fd, _, _ in pending:
            os.fsync(fd)
        for _, tmp, path in pending:
            os.replace(tmp, path)
    finally:
        for fd, tmp, _ in pending:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    for parent in sorted({path.parent for path in files}):
        directory = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the renames themselves survive a power cut
        finally:
            os.close(directory)


def read_list_file(path: str | Path, name: str) -> Any:
    """A list file (JSON) as county IT gave it; a ``TrustError`` that names the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the {name} list: {exc.strerror}") from None
    return parse_list_json(data, str(path), name)
