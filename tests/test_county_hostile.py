"""The county server against hostile clients, over real TLS on 127.0.0.1 (issue 11, 6-10):
bodies capped before they are read, malformed input answered 400 (never 500), slow clients
cut, and the update paths of a county without an update repository answered 404.

Hostile clients are raw ``ssl`` sockets or ``http.client``, so each test sends exactly the
bytes an attacker would; a normal terminal is the project's own sync client or requests.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path
from typing import Any

from test_sync_support import (
    County,
    county_fixture,  # noqa: F401  (the county fixture)
)

from county import ca
from county import updates as county_updates


def client_context(county: County, term: Any = None) -> ssl.SSLContext:
    """A client that trusts the county CA, with a terminal's certificate when given one."""
    ctx = ssl.create_default_context(cafile=str(ca.CAPaths(county.data).ca_cert))
    if term is not None:
        ctx.load_cert_chain(str(term.identity.cert_file), str(term.identity.key_file))
    return ctx


def request(
    county: County,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    term: Any = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        county.server.port if county.server else 0,
        timeout=20,
        context=client_context(county, term),
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def one_line_problem(body: bytes) -> str:
    """The answer's problem text, checked to be a single line of JSON."""
    assert b"\n" not in body.strip(), body[:300]
    problem = json.loads(body)["problem"]
    assert isinstance(problem, str) and problem and "\n" not in problem
    assert "Traceback" not in problem
    return problem


# --- 10. no update repository yet ----------------------------------------------------


def test_update_paths_answer_404_until_updates_init_then_serve_without_restart(
    county: County, tmp_path: Path
) -> None:
    for path in (
        "/tuf/metadata/timestamp.json",
        "/tuf/metadata/2.root.json",
        "/tuf/targets/settings/abc.toml",
    ):
        status, body = request(county, "GET", path)
        assert status == 404, (path, status, body[:300])
        assert "updates init" in one_line_problem(body)
    # The same server, once county IT makes the repository, serves the signed files.
    county_updates.init_repository(county.data, tmp_path / "root-keys", int(time.time()))
    status, body = request(county, "GET", "/tuf/metadata/timestamp.json")
    assert status == 200, body[:300]
    assert json.loads(body)["signed"]["_type"] == "timestamp"
    status, _ = request(county, "GET", "/tuf/metadata/1.root.json")
    assert status == 200
    # A file that does not exist is still an ordinary 404.
    status, _ = request(county, "GET", "/tuf/metadata/99.root.json")
    assert status == 404
