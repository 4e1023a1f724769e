"""The county server against hostile clients, over real TLS on 127.0.0.1 (issue 11, 6-10):
bodies capped before they are read, malformed input answered 400 (never 500), slow clients
cut, and the update paths of a county without an update repository answered 404.

Hostile clients are raw ``ssl`` sockets or ``http.client``, so each test sends exactly the
bytes an attacker would; a normal terminal is the project's own sync client or requests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import select
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from countykit import (
    FAST,
    County,
    make_county,
    provision_terminal,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from county import ca
from county import updates as county_updates
from county.app import CountyServer, HttpLimits
from county.db.engine import WRITER_CACHE_KIB, Database
from county.store import Limits
from protocol.chain import entry_hash
from terminal.sync import SyncClient


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


@pytest.mark.slow
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


# --- 7. malformed means 400, never 500 ---------------------------------------------------

JSON = {"Content-Type": "application/json"}


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def valid_batch(term: Any) -> dict[str, Any]:
    """A batch the server accepts: the terminal's genesis entry (and its checkpoint)."""
    from terminal.sync import LedgerReader

    reader = LedgerReader(term.ledger_path)
    try:
        last = reader.last_seq()
        return {
            "nonce": "01",
            "entries": reader.batch(1, last),
            "checkpoints": reader.checkpoints(1, last),
        }
    finally:
        reader.close()


def provision_doc(**over: Any) -> dict[str, Any]:
    doc = {"code": "00" * 10, "csr": "x", "ledger_key": "11" * 32, "nonce": "22"}
    doc.update(over)
    return doc


def test_malformed_bodies_get_a_one_line_400(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    # 100,000 deep is 200 KB: beyond the provisioning cap (413), so 30,000 there.
    for path, who, depth in (("/v1/ledger", term, 100_000), ("/v1/provision", None, 30_000)):
        cases: list[tuple[str, bytes, dict[str, str]]] = [
            ("nested deep", b'{"nonce": ' + deep(depth) + b"}", JSON),
            ("top level nested deep", deep(depth), JSON),
            ("a JSON array", b"[]", JSON),
            ("an empty body", b"", JSON),
            ("not JSON", b"{nonce:", JSON),
            ("not UTF-8", b'{"nonce": "\xff"}', JSON),
            ("NaN", b'{"nonce": NaN}', JSON),
            (
                "a wrong Content-Type",
                json.dumps(provision_doc()).encode(),
                {"Content-Type": "text/plain"},
            ),
            ("no Content-Type", json.dumps(provision_doc()).encode(), {}),
            ("a lone surrogate", b'{"code": "\\ud800", "nonce": "00"}', JSON),
        ]
        for what, body, headers in cases:
            status, answer = request(county, "POST", path, body, headers, term=who)
            assert status == 400, (path, what, status, answer[:300])
            one_line_problem(answer)
    # Nonces: not hex, and longer than 64 bytes, on both endpoints.
    batch = valid_batch(term)
    for nonce in ("zz", "ab" * 65):
        status, answer = request(
            county,
            "POST",
            "/v1/ledger",
            json.dumps({**batch, "nonce": nonce}).encode(),
            JSON,
            term=term,
        )
        assert status == 400, (nonce, answer[:300])
        assert "nonce" in one_line_problem(answer)
        status, answer = request(
            county, "POST", "/v1/provision", json.dumps(provision_doc(nonce=nonce)).encode(), JSON
        )
        assert status == 400, (nonce, answer[:300])
        assert "nonce" in one_line_problem(answer)
    # Provisioning fields of the wrong type or missing.
    for doc in (provision_doc(code=7), provision_doc(csr=None), {"code": "00", "csr": "x"}):
        status, answer = request(county, "POST", "/v1/provision", json.dumps(doc).encode(), JSON)
        assert status == 400, (doc, answer[:300])
        one_line_problem(answer)
    # After all that, the genuine batch is still taken.
    status, answer = request(
        county, "POST", "/v1/ledger", json.dumps(batch).encode(), JSON, term=term
    )
    assert status == 200, answer[:300]


@pytest.mark.parametrize("field", [0, 2, 9, 13])  # seq, at_ms, ctr, amount_fen
def test_integers_beyond_64_bits_in_a_batch_get_400(
    county: County, tmp_path: Path, field: int
) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    batch = valid_batch(term)
    for value in (2**63, 2**64 + 5, -(2**63) - 1):
        entries = [list(e) for e in batch["entries"]]
        entries[-1][field] = value
        # Re-hashed, as a thief holding the terminal's keys would: the hash check passes.
        entries[-1][17] = entry_hash(bytes.fromhex(entries[-1][16]), entries[-1][:16]).hex()
        status, answer = request(
            county,
            "POST",
            "/v1/ledger",
            json.dumps({**batch, "entries": entries}).encode(),
            JSON,
            term=term,
        )
        assert status == 400, (field, value, status, answer[:300])
        one_line_problem(answer)
    # A checkpoint's seq and time too.
    if batch["checkpoints"]:
        cps = [list(c) for c in batch["checkpoints"]]
        cps[0][0] = 2**63
        status, answer = request(
            county,
            "POST",
            "/v1/ledger",
            json.dumps({**batch, "checkpoints": cps}).encode(),
            JSON,
            term=term,
        )
        assert status == 400, answer[:300]


def test_a_database_that_cannot_answer_now_is_a_503_to_retry(tmp_path: Path) -> None:
    """Another writer holding the county's SQLite file past the busy timeout is an outage
    for this request (DatabaseUnavailable): 503 with Retry-After, nothing stored, and the
    same batch is taken once the writer lets go."""
    county = make_county(tmp_path)
    county.server = CountyServer(county.data, limits=Limits(busy_timeout_ms=200)).start()
    try:
        term = provision_terminal(county, tmp_path / "t", "t1", "c1")
        body = json.dumps(valid_batch(term)).encode()
        other = sqlite3.connect(county.data / "county.sqlite", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # a writer that does not let go
            conn = http.client.HTTPSConnection(
                "127.0.0.1", county.server.port, timeout=20, context=client_context(county, term)
            )
            try:
                conn.request("POST", "/v1/ledger", body=body, headers=JSON)
                resp = conn.getresponse()
                answer = resp.read()
            finally:
                conn.close()
            assert resp.status == 503, answer[:300]
            assert resp.getheader("Retry-After") == "5"
            assert "busy" in one_line_problem(answer)
        finally:
            other.execute("ROLLBACK")
            other.close()
        status, answer = request(county, "POST", "/v1/ledger", body, JSON, term=term)
        assert status == 200 and json.loads(answer)["accepted"] == 1, answer[:300]
    finally:
        county.stop()


def test_a_writer_of_the_same_server_holding_its_turn_is_a_503_then_the_batch_goes_in(
    tmp_path: Path,
) -> None:
    """The writers of one SQLite county process take turns in the process (Database.write),
    not in SQLite's busy handler: a write transaction of the server's own held past the
    busy timeout is a 503 for the next writer, which says so; once it ends, the same
    batch is taken."""
    county = make_county(tmp_path)
    county.server = CountyServer(county.data, limits=Limits(busy_timeout_ms=300)).start()
    try:
        term = provision_terminal(county, tmp_path / "t", "t1", "c1")
        body = json.dumps(valid_batch(term)).encode()
        with county.store.db.write():  # this process's turn to write, held by the test
            status, answer = request(county, "POST", "/v1/ledger", body, JSON, term=term)
        assert status == 503, answer[:300]
        assert "other writers held it for 0.3 s" in one_line_problem(answer)
        status, answer = request(county, "POST", "/v1/ledger", body, JSON, term=term)
        assert status == 200 and json.loads(answer)["accepted"] == 1, answer[:300]
    finally:
        county.stop()


def test_the_servers_commits_reach_the_database_file_without_a_writer_copying_them(
    tmp_path: Path,
) -> None:
    """A SQLite county server copies its write-ahead log into the database file in a
    thread of its own after each write (Database.checkpoint_in_background), where SQLite
    would leave it to a writer's commit once the log reaches 1,000 pages: a small batch,
    far below that, is in the file itself soon after it is answered."""
    county = make_county(tmp_path)
    county.start()
    try:
        term = provision_terminal(county, tmp_path / "t", "t1", "c1")
        status, answer = request(
            county, "POST", "/v1/ledger", json.dumps(valid_batch(term)).encode(), JSON, term=term
        )
        assert status == 200 and json.loads(answer)["accepted"] == 1, answer[:300]
        path = county.data / "county.sqlite"

        def in_the_file() -> int:
            # immutable=1 reads the database file alone, never the write-ahead log.
            file = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            try:
                return int(file.execute("SELECT count(*) FROM entries").fetchone()[0])
            except sqlite3.Error:
                return 0  # the file does not have the table yet
            finally:
                file.close()

        wait_for(lambda: in_the_file() >= 1, 20, "the entry in the database file")
    finally:
        county.stop()


def test_a_sqlite_servers_writes_keep_one_connection_and_its_cache(tmp_path: Path) -> None:
    """SQLite drops a connection's page cache whenever another connection has written
    since its last transaction, so writes spread over the pool would read every index
    page they touch again. A SQLite county's writes go through one connection of their
    own with a 64 MiB cache, even while a read holds a pooled one; reads use the pool."""
    db = Database(f"sqlite:///{tmp_path / 'county.sqlite'}")
    writers: list[object] = []

    def write(value: int) -> None:
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            conn.exec_driver_sql(f"INSERT INTO t VALUES ({value})")
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -WRITER_CACHE_KIB
            writers.append(conn.connection.dbapi_connection)

    try:
        write(1)
        with db.read() as reading:
            reader = reading.connection.dbapi_connection
            assert reading.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
            write(2)
        with ThreadPoolExecutor(1) as other_thread:
            other_thread.submit(write, 3).result()
        assert len(writers) == 3 and all(w is writers[0] for w in writers)
        assert reader is not writers[0]
        with db.read() as reading:
            assert reading.exec_driver_sql("SELECT count(*) FROM t").scalar() == 3
    finally:
        db.close()


def stop_within_the_graceful_time(county: County, caplog: pytest.LogCaptureFixture) -> None:
    """Stop ``county``'s server; fail if uvicorn said it ran out of its graceful-shutdown
    time waiting for a connection (its logger does not propagate, so it is listened to)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        county.stop()
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "graceful shutdown exceeded" in m], said


def test_a_stopping_server_closes_an_idle_connection_without_waiting_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A terminal's idle keep-alive connection does not hold up a stop or a restart: the
    server closes it at once, TLS first. A TLS close alone would wait for the client's
    close_notify, which a pooled connection nobody reads never sends, so every stop ran
    out uvicorn's graceful-shutdown time and said so in the log."""
    county = make_county(tmp_path)
    county.start()
    try:
        term = provision_terminal(county, tmp_path / "t", "t1", "c1")
        assert county.server is not None
        conn = http.client.HTTPSConnection(
            "127.0.0.1", county.server.port, timeout=20, context=client_context(county, term)
        )
        try:
            conn.request("GET", "/v1/health")
            answer = conn.getresponse()
            assert answer.status == 200 and answer.getheader("connection") != "close"
            answer.read()
            idle = conn.sock  # kept open, as a terminal's pool keeps it
            assert idle is not None
            stop_within_the_graceful_time(county, caplog)
            idle.settimeout(5)
            assert idle.recv(1) == b""  # the server's close_notify, then its FIN
        finally:
            conn.close()
    finally:
        county.stop()


def test_a_stop_with_a_connection_already_closing_ends_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that asked for ``Connection: close``, read its answer and keeps its socket
    open leaves the server's side closing, waiting for its close_notify. A stop then
    meets a TLS connection already closing: the server still ends its shutdown without
    an error in its thread and without running out the graceful-shutdown time, and the
    client has its whole answer."""
    county = make_county(tmp_path)
    county.start()
    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    try:
        assert county.server is not None
        raw = socket.create_connection(("127.0.0.1", county.server.port), timeout=20)
        tls = client_context(county).wrap_socket(raw, server_hostname="127.0.0.1")
        try:
            tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: county\r\nConnection: close\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = tls.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            stop_within_the_graceful_time(county, caplog)
            assert crashed == []
            assert tls.recv(1) == b""  # the server's close_notify
        finally:
            tls.close()
    finally:
        county.stop()


def test_an_unexpected_failure_is_a_one_line_500_without_traceback(county: County) -> None:
    # A real failure inside the server, not a mock: its database handle is gone.
    county.store.close()
    status, answer = request(
        county, "POST", "/v1/provision", json.dumps(provision_doc()).encode(), JSON
    )
    assert status == 500
    problem = one_line_problem(answer)
    assert "see its log" in problem and "File " not in problem


class KeepAlive:
    """One HTTPS connection reused across requests, reopened when the server closes it."""

    def __init__(self, county: County, term: Any = None) -> None:
        self.port = county.server.port if county.server else 0
        self.ctx = client_context(county, term)
        self.conn: http.client.HTTPSConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=20, context=self.ctx
                )
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (http.client.RemoteDisconnected, ConnectionError, ssl.SSLError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, leaning on what breaks parsers: huge integers, odd text, nesting."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**40, -1, 0]),
        st.floats(allow_nan=False),
        st.text(max_size=40),
        st.sampled_from(["", "zz", "00" * 65, "\ud800", "\x00", "ab" * 32, "é" * 10]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
        ),
        max_leaves=20,
    )


@st.composite
def hostile_batches(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """A genuine batch with something broken, or something else altogether."""
    how = draw(st.sampled_from(["field", "entry", "checkpoint", "top", "any", "bytes", "deep"]))
    doc: Any = json.loads(json.dumps(good))
    if how == "field" and doc["entries"]:
        entry = draw(st.sampled_from(doc["entries"]))
        entry[draw(st.integers(0, 17))] = draw(json_values())
        if draw(st.booleans()):  # re-hashed, so the checks go past the hash
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                entry[17] = entry_hash(bytes.fromhex(entry[16]), entry[:16]).hex()
    elif how == "entry":
        doc["entries"].append(draw(json_values()))
    elif how == "checkpoint":
        doc["checkpoints"] = draw(st.lists(json_values(), max_size=3))
    elif how == "top":
        doc[draw(st.sampled_from(["nonce", "entries", "checkpoints"]))] = draw(json_values())
    elif how == "any":
        doc = draw(json_values())
    elif how == "bytes":
        return draw(st.binary(max_size=200))
    else:
        depth = draw(st.integers(500, 50_000))
        return b'{"entries": ' + deep(depth) + b"}"
    return json.dumps(doc).encode()


@st.composite
def hostile_provisions(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["field", "any", "bytes", "deep"]))
    if how == "field":
        doc = provision_doc()
        doc[draw(st.sampled_from(["code", "csr", "ledger_key", "nonce", "x"]))] = draw(
            json_values()
        )
        return json.dumps(doc).encode()
    if how == "any":
        return json.dumps(draw(json_values())).encode()
    if how == "bytes":
        return draw(st.binary(max_size=200))
    return deep(draw(st.integers(500, 30_000)))


@pytest.mark.slow
def test_fuzzed_bodies_never_get_a_5xx(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    good = valid_batch(term)
    ledger, provision = KeepAlive(county, term), KeepAlive(county)
    seen: dict[int, int] = {}

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=hostile_batches(good), prov=hostile_provisions())
    def check(batch: bytes, prov: bytes) -> None:
        for client, path, body in (
            (ledger, "/v1/ledger", batch),
            (provision, "/v1/provision", prov),
        ):
            status, answer = client.post(path, body, JSON)
            seen[status] = seen.get(status, 0) + 1
            assert status < 500, (path, body[:300], status, answer[:300])
            if status != 200:
                json.loads(answer)["problem"]

    try:
        check()
    finally:
        ledger.close()
        provision.close()
    assert seen.get(400, 0) > 100, seen  # the fuzz did reach the parsers


# --- 6. bodies capped before they are read --------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


@dataclass
class CountyProcess:
    county: County
    proc: subprocess.Popen[str]
    port: int

    def status(self, field: str) -> int:
        """A /proc/PID/status figure of the server process, in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")


@pytest.fixture(name="county_process")
def county_process_fixture(tmp_path: Path) -> Iterator[CountyProcess]:
    """``canteen-county serve`` in a child process, so its memory can be read on its own."""
    county = make_county(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "county.cli", "serve", "--data", str(county.data), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'hw-sim'}"),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("serving on ")[1].split()[0]
        port = int(url.rsplit(":", 1)[1])
        running = CountyProcess(county, proc, port)
        deadline = time.monotonic() + 30
        while True:  # the line comes before the socket listens
            try:
                if get(running, "/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the county server did not start"
            time.sleep(0.05)
        yield running
    finally:
        proc.terminate()
        proc.wait(10)


def get(running: CountyProcess, path: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca.CAPaths(running.county.data).ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", running.port, timeout=10, context=ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pieces(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """``total`` bytes of a JSON-looking body, one reused block at a time (never in memory)."""
    block = b"[" * size
    while total > 0:
        yield block[: min(size, total)]
        total -= size


def answer_waiting(sock: ssl.SSLSocket) -> bool:
    return bool(sock.pending() or select.select([sock], [], [], 0)[0])


def read_status(sock: ssl.SSLSocket) -> int | None:
    """The status code of the server's answer, or None if the connection died without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split()[1])


def stream_upload(
    port: int,
    ctx: ssl.SSLContext,
    path: str,
    total: int,
    *,
    chunked: bool,
    heed_answer: bool = True,
) -> tuple[int | None, int]:
    """POST a ``total``-byte body as fast as the server takes it: (status, bytes sent).

    Stops sending once an answer is waiting (``heed_answer``) or the server closes;
    a client that ignores the answer measures how much the server still reads."""
    sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1"
    )
    try:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
        )
        sent = 0
        try:
            for piece in pieces(total):
                if heed_answer and answer_waiting(sock):
                    break
                sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what it should do
        return read_status(sock), sent
    finally:
        sock.close()


def test_bodies_are_capped_before_they_are_read(
    county_process: CountyProcess, tmp_path: Path
) -> None:
    running = county_process
    term = provision_terminal(
        running.county, tmp_path / "t", "t1", "c1", server=f"https://127.0.0.1:{running.port}"
    )
    anyone = client_context(running.county)
    terminal = client_context(running.county, term)
    before_kib = running.status("VmRSS")
    total = 150 * MB
    # Four declared 150 MB bodies at once (the attack of issue 11), then endless chunked
    # ones that declare nothing, with and without a terminal certificate.
    uploads = [
        ("/v1/provision", anyone, False, {413}),
        ("/v1/ledger", anyone, False, {413}),
        ("/v1/ledger", terminal, False, {413}),
        ("/no/such/path", anyone, False, {413}),
        ("/v1/provision", anyone, True, {413}),
        ("/v1/ledger", terminal, True, {413}),
        # Answered before the body is read (no certificate, no route); the body is not
        # read after the answer either: the server closes the connection.
        ("/v1/ledger", anyone, True, {401}),
        ("/no/such/path", anyone, True, {404}),
    ]
    with ThreadPoolExecutor(len(uploads)) as pool:
        results = list(
            pool.map(
                lambda u: stream_upload(running.port, u[1], u[0], total, chunked=u[2]), uploads
            )
        )
    for (path, _ctx, chunked, expected), (status, sent) in zip(uploads, results, strict=True):
        assert status in expected, (path, chunked, status, sent)
        # It stopped reading at the cap: the client could not push the whole body in.
        assert sent < 32 * MB, (path, chunked, sent)
    # A client that ignores the 413 and keeps sending is cut off too.
    status, sent = stream_upload(
        running.port, anyone, "/v1/provision", total, chunked=False, heed_answer=False
    )
    assert sent < 32 * MB, sent
    peak_kib = running.status("VmHWM")
    assert peak_kib - before_kib < 64 * 1024, (before_kib, peak_kib)
    assert get(running, "/v1/health")[0] == 200


# --- 8. slow clients are cut ---------------------------------------------------------

QUICK = HttpLimits(header_timeout_s=1, body_timeout_s=1, tls_timeout_s=1)


@pytest.fixture(name="quick_county")
def quick_county_fixture(tmp_path: Path) -> Iterator[County]:
    """A county whose deadlines for the handshake, the headers and the body are 1 s."""
    county = make_county(tmp_path)
    county.server = CountyServer(county.data, http_limits=QUICK).start()
    try:
        yield county
    finally:
        county.stop()


def drip_until_closed(
    socks: list[Any], first: bytes, deadline_s: float, served: Callable[[], None]
) -> dict[int, bytes]:
    """Send ``first`` on each socket, then a byte on each now and then, until the server
    has closed them all; meanwhile ``served()`` must succeed. What each one received."""
    for sock in socks:
        sock.sendall(first)
    received: dict[int, bytes] = {}
    open_ = {sock.fileno(): sock for sock in socks}
    deadline = time.monotonic() + deadline_s
    rounds = 0
    while open_ and time.monotonic() < deadline:
        for sock in list(open_.values()):
            with contextlib.suppress(OSError):  # closed: the read below sees it
                sock.send(b"x")
        readable, _, _ = select.select(list(open_.values()), [], [], 0.2)
        for sock in readable:
            fd = sock.fileno()
            try:
                data = sock.recv(4096)
            except (ssl.SSLWantReadError, TimeoutError):
                continue  # part of a record; the rest comes
            except OSError:
                data = b""  # reset: closed
            received[fd] = received.get(fd, b"") + data
            if not data:
                del open_[fd]
        rounds += 1
        if rounds % 5 == 0:
            served()
    assert not open_, f"{len(open_)} of {len(socks)} slow connections still open"
    return received


def tls_connect(county: County, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    assert county.server is not None
    sock = socket.create_connection(("127.0.0.1", county.server.port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def test_connections_dripping_headers_are_closed_and_others_served(
    quick_county: County, tmp_path: Path
) -> None:
    county = quick_county
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    ctx = client_context(county)
    socks = [tls_connect(county, ctx) for _ in range(300)]
    try:

        def served() -> None:
            assert request(county, "GET", "/v1/health")[0] == 200
            client = SyncClient(term.ledger_path, term.identity, FAST)
            result = client.sync_once(time.monotonic() + 10)
            assert result.error is None, result.error

        got = drip_until_closed(socks, b"POST /v1/ledger HTTP/1.1\r\nHost: 127.", 30, served)
    finally:
        for sock in socks:
            sock.close()
    answered = [data for data in got.values() if data]
    assert answered and all(data.startswith(b"HTTP/1.1 408 ") for data in answered)
    assert b"headers took longer than 1 s" in answered[0]


def test_connections_dripping_a_body_are_answered_408_and_closed(
    quick_county: County, tmp_path: Path
) -> None:
    county = quick_county
    term = provision_terminal(county, tmp_path / "t", "t1", "c1")
    heads = {
        "/v1/provision": client_context(county),
        "/v1/ledger": client_context(county, term),
    }
    socks = [tls_connect(county, ctx) for ctx in heads.values() for _ in range(10)]
    paths = [path for path in heads for _ in range(10)]
    try:
        for sock, path in zip(socks, paths, strict=True):
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 5000\r\n\r\n{".encode()
            )

        def served() -> None:
            assert request(county, "GET", "/v1/health")[0] == 200

        got = drip_until_closed(socks, b'"', 30, served)
    finally:
        for sock in socks:
            sock.close()
    answered = [data for data in got.values() if data]
    assert answered and all(data.startswith(b"HTTP/1.1 408 ") for data in answered)
    assert b"body took longer than 1 s" in answered[0]


def test_unfinished_tls_handshakes_are_cut(quick_county: County) -> None:
    county = quick_county
    assert county.server is not None
    # A TLS record header promising a ClientHello that never comes whole.
    socks = [
        socket.create_connection(("127.0.0.1", county.server.port), timeout=5) for _ in range(50)
    ]
    try:
        drip_until_closed(
            socks,
            b"\x16\x03\x01\x02\x00\x01",
            30,
            lambda: None,
        )
    finally:
        for sock in socks:
            sock.close()
    assert request(county, "GET", "/v1/health")[0] == 200


def test_openapi_still_describes_the_provisioning_body(county: County) -> None:
    status, body = request(county, "GET", "/openapi.json")
    assert status == 200
    post = json.loads(body)["paths"]["/v1/provision"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"code", "csr", "ledger_key", "nonce"} <= set(schema["properties"])
    assert "413" in post["responses"]
