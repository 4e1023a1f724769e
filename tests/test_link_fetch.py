"""The update fetch over the county link, as the terminal's earlier fetcher did it.

A server (or a mirror in front of it) may send a file with Content-Encoding gzip;
the earlier fetcher decoded it, so python-tuf saw the file itself. These tests
serve one file plainly, gzip-encoded when asked, and gzip-encoded always, and
check that ``LinkFetcher`` yields the same bytes each time. A mirror named
without the county CA ('update fetch --server') is checked against the
system's CAs, as the earlier fetcher checked it, not against another bundle.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tuf.api import exceptions as tuf_errors

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


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """An HTTPS mirror for 127.0.0.1 whose CA is in tmp_path/ca.pem (another in other.pem)."""
    ca_key, ca = _ca("mirror CA")
    _, other = _ca("another CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "other.pem").write_bytes(_pem(other))
    (tmp_path / "leaf.pem").write_bytes(_pem(leaf))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def _fetch_from_mirror(url: str) -> bytes:
    with Link(None, system_trust=True) as link:
        fetcher = LinkFetcher(link, 30)
        fetcher.start()
        return b"".join(fetcher.fetch(url))


def test_a_mirror_is_checked_against_the_systems_cas(
    mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL reads the system's CA file from SSL_CERT_FILE when it is set: the mirror's
    # CA stands in for one county IT installed on the Pi.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    assert _fetch_from_mirror(mirror + "/plain") == BODY
    # A system that does not trust the mirror's CA refuses it.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "other.pem"))
    with pytest.raises(tuf_errors.DownloadError, match="certificate verify failed"):
        _fetch_from_mirror(mirror + "/plain")
