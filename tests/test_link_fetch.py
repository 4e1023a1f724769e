"""The update fetch over the county link hands python-tuf the bytes of the file.

A server (or a mirror in front of it) may send a file with Content-Encoding gzip;
the terminal's earlier fetcher decoded it, so python-tuf saw the file itself.
These tests serve one file plainly, gzip-encoded when asked, and gzip-encoded
always, and check that ``LinkFetcher`` yields the same bytes each time.
"""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator

import pytest

from terminal.link.fetch import LinkFetcher
from terminal.link.transport import Link

BODY = b'{"signed": {"_type": "timestamp"}, "signatures": []}\n' * 200


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        asked = "gzip" in self.headers.get("Accept-Encoding", "")
        if self.path == "/always" or (self.path == "/asked" and asked):
            data = gzip.compress(BODY)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
        else:
            data = BODY
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.parametrize("path", ["/plain", "/asked", "/always"])
def test_fetch_yields_the_file_whatever_its_content_encoding(server: str, path: str) -> None:
    with Link(None) as link:
        fetcher = LinkFetcher(link, 30)
        fetcher.start()
        got = b"".join(fetcher.fetch(server + path))
    assert got == BODY
    assert fetcher.bytes_received == len(BODY)
