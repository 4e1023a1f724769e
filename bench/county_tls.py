"""What one request costs the county server, by how it arrives: a new TLS connection
(a full mTLS handshake), a resumed TLS session, or a connection kept from the request
before (issue 14: what a sync's handshakes cost).

Run:  PYTHONPATH=.:hw-sim .venv/bin/python bench/county_tls.py [--requests 300] [--rounds 2]

A county (SQLite, its CA and update repository) and one provisioned terminal; the
server is ``CountyServer`` in a child process of its own, so its CPU time (user +
system, from /proc) is the server's alone. For each way of arriving, the same client
(``http.client`` over one ``ssl.SSLContext`` with the terminal's certificate, the
county CA pinned) sends ``--requests`` requests one after another: GET /v1/health,
GET the TUF timestamp, and POST an empty ledger batch (the signed time: a read of the
terminal's row and the certificate look-up). The server's CPU over those requests,
divided by their number, is the figure; the client's wall time per request beside it.

The child runs no timestamp refresher (the repository was signed just before), whose
rounds would count as the requests' CPU. Resumption needs session tickets, which
``server_ssl_context`` turns off (``num_tickets = 0``); the child turns them on for the
"resumed" rows only. Each way is run ``--rounds`` times in turn, so a neighbour's load
falls on all of them alike.

``--lookup 300,3615`` also times the certificate look-up the ledger endpoint makes on
every upload (``CountyStore.terminal_for_cert``, in-process, on a throwaway PostgreSQL
cluster as tests/pgkit.py makes one) with that many provisioned terminals: whether
the terminal count makes it dearer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hw-sim"), str(ROOT / "tests")]

from countykit import make_county, provision_terminal  # noqa: E402

from county import updates as cu  # noqa: E402

NEW, RESUMED, KEPT = "new connection", "resumed session", "kept connection"

CHILD = r"""
import os, sys
from pathlib import Path
from county import app
if os.environ.get("BENCH_TICKETS"):
    made = app.server_ssl_context
    def with_tickets(paths):
        ctx = made(paths)
        ctx.num_tickets = 2
        return ctx
    app.server_ssl_context = with_tickets
server = app.CountyServer(Path(sys.argv[1]), port=0)
# No re-signing thread: its rounds (at start, then every minute) would count as requests'.
server._start_refresher = lambda: None
print(server.port, flush=True)
server.run()
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(
    c: http.client.HTTPSConnection, label: str, method: str, path: str, body: bytes | None
) -> None:
    """One request on ``c``, its answer read whole; anything but 200 ends the bench."""
    headers = {"Content-Type": "application/json"} if body else {}
    c.request(method, path, body=body, headers=headers)
    answer = c.getresponse()
    answer.read()
    if answer.status != 200:
        raise SystemExit(f"{label}: HTTP {answer.status}")


def measure(data: Path, ids: tuple[Path, Path, Path], way: str, n: int) -> dict[str, tuple]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'hw-sim'}")
    if way == RESUMED:
        env["BENCH_TICKETS"] = "1"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        deadline = time.monotonic() + 30
        while True:  # the socket is bound; uvicorn listens once it has started
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit("the county server did not start") from None
                time.sleep(0.05)
        ca_file, cert, key = ids
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca_file)
        ctx.check_hostname = False  # the county's certificate names 127.0.0.1: not the point
        ctx.load_cert_chain(cert, key)
        batch = json.dumps({"nonce": "00" * 16, "entries": [], "checkpoints": []}).encode()
        asks = (
            ("GET /v1/health", "GET", "/v1/health", None),
            ("GET timestamp", "GET", "/tuf/metadata/timestamp.json", None),
            ("POST empty batch", "POST", "/v1/ledger", batch),
        )
        out: dict[str, tuple] = {}
        for label, method, path, body in asks:
            session: ssl.SSLSession | None = None
            conn: http.client.HTTPSConnection | None = None
            resumed = 0
            one = (label, method, path, body)

            for warm in range(2):  # the first connection and its imports are not the point
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
                for _ in range(10 if warm else 1):
                    ask(c, *one)
                c.close()
            time.sleep(0.2)
            cpu_before, began = cpu_s(child.pid), time.perf_counter()
            for _ in range(n):
                if way == KEPT:
                    if conn is None:
                        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
                    ask(conn, *one)
                    continue
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
                raw = socket.create_connection(("127.0.0.1", port))
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client does
                c.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
                ask(c, *one)
                tls = c.sock
                assert isinstance(tls, ssl.SSLSocket)
                resumed += tls.session_reused
                session = tls.session if way == RESUMED else None
                c.close()
            wall = (time.perf_counter() - began) / n
            if conn is not None:
                conn.close()
            time.sleep(0.3)  # the server's side of the last close
            out[label] = ((cpu_s(child.pid) - cpu_before) / n, wall, resumed)
        return out
    finally:
        child.terminate()
        child.wait(10)


def time_lookup(counts: list[int], asks: int = 2000) -> None:
    """``terminal_for_cert`` over ``asks`` certificates at each terminal count."""
    import hashlib

    import pgkit

    from county.db import migrations
    from county.db.engine import Database
    from county.store import CountyStore

    cluster = pgkit.Cluster().make()
    try:
        for n in counts:
            url = cluster.create_database(f"lookup{n}")
            db = Database(url)
            migrations.upgrade(db)
            db.close()
            store = CountyStore(url)
            shas = []
            for i in range(n):
                secret = store.add_terminal(f"t{i}", f"c{i // 3}", 1_780_000_000_000)
                sha = hashlib.sha256(b"%d" % i).hexdigest()
                store.bind_certificate(secret, f"t{i}", sha, os.urandom(32), 1_780_000_000_000)
                shas.append(sha)
            for sha in shas[:50]:
                store.terminal_for_cert(sha)
            cpu, began = time.process_time(), time.perf_counter()
            for j in range(asks):
                if store.terminal_for_cert(shas[(j * 7919) % n]) is None:
                    raise SystemExit("a provisioned certificate was not found")
            wall = (time.perf_counter() - began) / asks * 1000
            cpu = (time.process_time() - cpu) / asks * 1000
            store.close()
            print(f"certificate look-up, {n} terminals: {wall:.2f} ms wall, {cpu:.2f} ms CPU "
                  f"of the server's process, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    finally:
        cluster.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="requests of each kind")
    ap.add_argument("--rounds", type=int, default=2, help="times each way is run, in turn")
    ap.add_argument("--lookup", metavar="N,N", help="also time the certificate look-up")
    a = ap.parse_args()
    if a.requests < 1 or a.rounds < 1:
        ap.error("--requests and --rounds take a positive number")
    try:
        counts = [int(n) for n in a.lookup.split(",")] if a.lookup else []
    except ValueError:
        ap.error("--lookup takes terminal counts, e.g. 300,3615")
    if any(n < 1 for n in counts):
        ap.error("--lookup takes positive terminal counts")
    tmp = Path(tempfile.mkdtemp(prefix="bench-county-tls-"))
    county = make_county(tmp)
    cu.init_repository(county.data, tmp / "root-keys", int(time.time()))
    county.start()
    try:
        ident = provision_terminal(county, tmp / "t", "t1", "c1").identity
    finally:
        county.stop()
    ids = (ident.ca_file, ident.cert_file, ident.key_file)
    print(f"bench/county_tls.py: {a.requests} requests of each kind, {a.rounds} rounds, load "
          f"average {os.getloadavg()[0]:.2f} at the start")  # fmt: skip
    runs: dict[tuple[str, str], list[tuple]] = {}
    for _ in range(a.rounds):
        for way in (NEW, RESUMED, KEPT):
            for label, figures in measure(county.data, ids, way, a.requests).items():
                runs.setdefault((way, label), []).append(figures)
    print(
        f"{'arrives on':16} {'request':17} {'server CPU/request':>19} {'wall/request':>13}  resumed"
    )
    for (way, label), figures in runs.items():
        cpu = statistics.median(f[0] for f in figures) * 1000
        wall = statistics.median(f[1] for f in figures) * 1000
        resumed = min(f[2] for f in figures)
        rounds = ", ".join(f"{f[0] * 1000:.2f}" for f in figures)
        print(f"{way:16} {label:17} {cpu:>11.2f} ms ({rounds}) {wall:>9.2f} ms  {resumed}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if counts:
        time_lookup(counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
