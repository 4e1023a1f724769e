"""python-tuf's fetcher over the county link, and over a repository copy on a USB stick.

This module owns how python-tuf's ``Updater`` gets bytes: ``LinkFetcher``
implements ``FetcherInterface`` over a ``Link`` (terminal/link/transport.py: the
one Session, mTLS, the server certificate checked at the trusted time), with one
deadline across every download of a refresh; ``DirectoryFetcher`` reads a copy of
the repository from a mounted medium. Both count the bytes they hand over. They
translate link trouble into python-tuf's download errors and never verify
anything themselves: python-tuf checks lengths, hashes and signatures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tuf.api import exceptions as tuf_errors
from tuf.ngclient.fetcher import FetcherInterface

from terminal.link.transport import DeadlineExceeded, Link, LinkError

# Bytes of an error answer read so that its connection serves the next request.
ERROR_BODY_BYTES = 4096


class LinkFetcher(FetcherInterface):
    """HTTP(S) through a Link with one total deadline across a refresh, and a byte count.

    ``start()`` sets the deadline ``deadline_s`` from now; every request of the
    refresh must end before it, however slowly the server trickles. ``timeouts``
    (connect, read) apply to each request; None: the Link's own. Every download
    read to its end, and a small error answer (the 404 that ends python-tuf's
    search for a newer root), leaves the connection to the next request of the
    refresh: one TLS handshake a refresh, or none on a Link a sync has just used.
    """

    def __init__(
        self, link: Link, deadline_s: float, timeouts: tuple[float, float] | None = None
    ) -> None:
        self.link = link
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s
        self.timeouts = timeouts

    @property
    def bytes_received(self) -> int:
        return self.link.bytes_received

    def start(self) -> None:
        self.deadline = time.monotonic() + self.deadline_s

    def _slow(self) -> tuf_errors.SlowRetrievalError:
        return tuf_errors.SlowRetrievalError(f"the update deadline of {self.deadline_s:g} s passed")

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            answer = self.link.open("GET", url, self.deadline, timeouts=self.timeouts)
        except DeadlineExceeded:
            raise self._slow() from None
        except LinkError as exc:
            raise tuf_errors.DownloadError(str(exc)) from exc
        if answer.status >= 400:
            # A small error body read to its end keeps the connection for the next file
            # (a larger one, or trouble reading it, closes the connection instead).
            with contextlib.suppress(LinkError):
                answer.read(ERROR_BODY_BYTES)
            answer.close()
            raise tuf_errors.DownloadHTTPError(f"HTTP {answer.status} for {url}", answer.status)
        return self._chunks(answer.chunks())

    def _chunks(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        except DeadlineExceeded:
            raise self._slow() from None
        except LinkError as exc:
            raise tuf_errors.DownloadError(str(exc)) from exc


class DirectoryFetcher(FetcherInterface):
    """A copy of the repository on a USB stick: ``dir:///metadata/...`` and ``dir:///targets/``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.bytes_received = 0

    def start(self) -> None:
        return None

    def _fetch(self, url: str) -> Iterator[bytes]:
        rel = unquote(urlsplit(url).path).lstrip("/")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise tuf_errors.DownloadHTTPError(f"{rel}: not on the update medium", 404)
        return self._chunks(path)

    def _chunks(self, path: Path) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(64 * 1024):
                self.bytes_received += len(chunk)
                yield chunk
