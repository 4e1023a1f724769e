"""Durable writes: a small file replaced whole, and one SQLite write transaction.

This module owns the one way the terminal and the county tools replace a small
file on disk: write a temp file beside it, fsync it, rename it over the old one,
then fsync the directory so the rename itself survives. It also owns the one
shape of a SQLite write transaction (``write_transaction``): BEGIN IMMEDIATE,
then COMMIT, or ROLLBACK on any exception. It never decides what to write and
never sets a database's journal or sync settings (the ledger and the trust store
do that; SQLite does its own durability there).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o644,
    *,
    make_parent: bool = True,
    exact_mode: bool = False,
) -> None:
    """Temp file, fsync, rename, fsync of the directory: the old file or the new, whole.

    ``make_parent=False``: the directory must exist already (someone else makes it,
    with its owner and group). ``exact_mode``: the file gets ``mode`` whatever the
    process umask, set before the rename, so no reader ever sees it with fewer bits.
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name: two writers of the same file never write into each other's temp.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if exact_mode:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def write_transaction(
    conn: sqlite3.Connection, savepoint: str | None = None
) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``conn``: committed when the block ends, else rolled back.

    ``conn`` must be opened with ``isolation_level=None`` (we issue BEGIN and
    COMMIT ourselves). BEGIN IMMEDIATE takes the write lock at once, so what
    the block reads cannot change before it commits. With ``savepoint`` the
    block is a savepoint of a transaction already open instead (RELEASE, or
    ROLLBACK TO on an exception), and the outer transaction decides durability.

    SQLite rolls some failures back by itself (a full disk, an I/O error): the
    block then ends with ``sqlite3.OperationalError`` instead of committing
    nothing in silence. A failed COMMIT is rolled back too. The rollback's own
    error never hides the one that caused it.
    """
    conn.execute("BEGIN IMMEDIATE" if savepoint is None else f"SAVEPOINT {savepoint}")
    try:
        yield conn
        if not conn.in_transaction:
            raise sqlite3.OperationalError("the transaction was rolled back by SQLite")
        conn.execute("COMMIT" if savepoint is None else f"RELEASE {savepoint}")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                if savepoint is None:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
        raise
