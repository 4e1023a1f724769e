"""One TLS connection a sync: the daemon's update check rides the sync's connection.

The real county server (SQLite, mTLS, its update repository) behind the fault proxy,
which here only counts the TCP connections the terminal opens; an ASGI layer records
the requests. Before this, a sync and its update check took three handshakes (the
upload, python-tuf's root probe, whose unread 404 closed its connection, and the
timestamp); the county's CPU per sync is what it costs (docs/county-scale.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import faultproxy
import pytest
from countykit import PATIENT, County, make_county, provision_terminal
from tuf.api import exceptions as tuf_errors

from county import updates as cu
from county.app import ASGIApp
from terminal import updates as tu
from terminal.link.fetch import LinkFetcher
from terminal.sync import SyncClient


@dataclass
class Served:
    county: County
    proxy: faultproxy.FaultProxy
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One county for the module (its CA, repository and server take seconds to make);
    each test provisions a terminal of its own."""
    tmp = tmp_path_factory.mktemp("county")
    county = make_county(tmp)
    cu.init_repository(county.data, tmp / "root-keys", int(time.time()))
    paths: list[str] = []

    def recording(app: ASGIApp) -> ASGIApp:
        async def record(scope: faultproxy.Scope, receive: object, send: object) -> None:
            if scope["type"] == "http":
                paths.append(scope["path"])
            await app(scope, receive, send)  # type: ignore[arg-type]

        return record

    county.start(wrap=recording)
    assert county.server is not None
    faults: dict[int, faultproxy.Fault] = {}
    proxy = faultproxy.FaultProxy(
        ("127.0.0.1", county.server.port), lambda n: faults.get(n, faultproxy.Fault())
    ).start()
    proxy.faults = faults  # type: ignore[attr-defined]
    try:
        yield Served(county, proxy, paths)
    finally:
        proxy.stop()
        county.stop()


def _client(served: Served, root: Path) -> SyncClient:
    # Provisioned through the proxy: the identity's server is the proxy, as the daemon's
    # updater reads it, so the sync and the update check name the same host.
    terminal_id = f"t{served.proxy.connections}"  # a new one for each test
    term = provision_terminal(served.county, root, terminal_id, "c1", server=served.proxy.url)
    served.county.pin_root(term.root)
    term.append_entries(3)
    return SyncClient(term.ledger_path, term.identity, PATIENT)


def test_a_404_leaves_the_connection_to_the_next_file(served: Served, tmp_path: Path) -> None:
    """python-tuf's first request of a refresh, the next root version, is a 404."""
    link = _client(served, tmp_path / "t").link
    fetcher = LinkFetcher(link, 30)
    opened_before = served.proxy.connections
    with pytest.raises(tuf_errors.DownloadHTTPError):
        b"".join(fetcher.fetch(served.proxy.url + "/tuf/metadata/2.root.json"))
    data = b"".join(fetcher.fetch(served.proxy.url + "/tuf/metadata/timestamp.json"))
    assert json.loads(data)["signed"]["_type"] == "timestamp"
    assert served.proxy.connections - opened_before == 1
    assert link.opened == 1
    link.close()


@pytest.mark.slow  # the first refresh verifies and stores every metadata file: seconds
def test_the_update_check_rides_the_syncs_connection(served: Served, tmp_path: Path) -> None:
    client = _client(served, tmp_path / "t")
    client.keep_connection = True  # as the daemon sets it
    opened_before = served.proxy.connections
    served.paths.clear()

    result = client.sync_once(time.monotonic() + 60)
    assert result.error is None and result.acked_seq == result.local_last_seq == 4, result.error
    # As the daemon's refresh after a sync: the updater on the sync's Link.
    at_ms = client.county_time_ms()
    prepared = tu.updater_for_county(client.identity.root, link=client.link).prepare_in_force(at_ms)

    assert prepared.changed  # the first refresh downloads the whole set
    # The upload, python-tuf's probe for the next root (404), the timestamp and the rest.
    assert served.paths[0] == "/v1/ledger"
    assert "/tuf/metadata/2.root.json" in served.paths
    assert "/tuf/metadata/timestamp.json" in served.paths
    assert len(served.paths) >= 4, served.paths
    assert served.proxy.connections - opened_before == 1, served.paths
    assert client.link.opened == 0  # the refresh closed the sync's connection


def test_each_sync_starts_on_a_new_connection(served: Served, tmp_path: Path) -> None:
    client = _client(served, tmp_path / "t")
    client.keep_connection = True
    opened_before = served.proxy.connections
    for _ in range(2):
        assert client.sync_once(time.monotonic() + 60).error is None
    # Kept after each sync, never reused by the next one (it may be black-holed).
    assert served.proxy.connections - opened_before == 2
    assert client.link.opened == 1

    client.keep_connection = False  # the CLI and the tests: closed when the sync ends
    assert client.sync_once(time.monotonic() + 60).error is None
    assert served.proxy.connections - opened_before == 3
    assert client.link.opened == 0


def test_a_failed_sync_leaves_no_connection(served: Served, tmp_path: Path) -> None:
    client = _client(served, tmp_path / "t")
    client.keep_connection = True
    # The next connection is cut as soon as the server answers (in its handshake).
    served.proxy.faults[served.proxy.connections] = faultproxy.Fault(  # type: ignore[attr-defined]
        faultproxy.CUT_AFTER, after=1
    )
    result = client.sync_once(time.monotonic() + 60)
    assert result.error_kind == "network", result.error
    assert served.proxy.triggered[faultproxy.CUT_AFTER] == 1
    assert client.link.opened == 0
    # The next sync works, on a new connection.
    assert client.sync_once(time.monotonic() + 60).error is None


def test_every_connection_of_a_link_shares_one_tls_context_without_the_system_cas(
    served: Served, tmp_path: Path
) -> None:
    """The county's certificate is checked by ServerCheck against the pinned CA, so the
    ssl module's context needs no CA: one context a Link, with the client certificate,
    never the system's CA store (which urllib3 loaded for every new connection)."""
    client = _client(served, tmp_path / "t")
    link = client.link
    assert link.tls is not None
    for _ in range(3):  # each sync a new connection (the CLI's way)
        assert client.sync_once(time.monotonic() + 60).error is None
    assert link.tls.cert_store_stats()["x509_ca"] == 0
    # What every connection pool of the Link is made with:
    manager = link.session.get_adapter(served.proxy.url).poolmanager
    assert manager.connection_pool_kw["ssl_context"] is link.tls
