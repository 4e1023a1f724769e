"""County intake, in-process: the same batches through CountyStore.intake on the store
before the SQLAlchemy port (SQLite, raw sqlite3) and on this checkout's store (SQLite and
PostgreSQL), in one run.

Run:  .venv/bin/python bench/county_intake.py [--old-ref 8cc7463] [--rounds 1.0]
          [--alternate 3] [--sizes 0,1,3,50,200] [--no-pg] [--json FILE]

Each batch size gets its own terminal; its batches are accepted QR sales of distinct
cadres, each with the phone's real signed code (protocol/issue.py), so every sale is
verified as evidence and looked up for conflicts, and a checkpoint signed with the
terminal's ledger key over the last entry (as a terminal sends them). The batches are
made once and the very same documents go through each store, each store in its own
process (the old checkout's ``county`` package must not meet this one's). Printed per
store and batch size: median and p99 of one sync's store work (see ``worker``) and the
database statements it ran per batch (SQLAlchemy's before_cursor_execute plus the
statements county/storekit.py's ``Prepared`` ran on the new store, sqlite3's trace
callback on the old one).

``--old-ref REF`` compares with another commit's store instead (any commit whose
CountyStore has add_terminal, bind_certificate, add_issuer_keys and intake). The
stores run one after the other, so on a machine shared with other work each sees a
different load: ``--alternate N`` runs them N times in turn, each time on a new
database, and prints the median of the runs' medians with each run's median and the
load average beside it. Size 0 is an empty batch (the county's clock moves 5 minutes
a sync, as for an idle terminal; sales move it a second).

Figures (commit 8eb7cbf, ``--sizes 0,1,200 --rounds 0.5 --alternate 3``, 2 cores shared
with other sessions, load average 5.3-7.5; median ms of one sync's store work,
statements a batch in brackets, BEGIN included):

    batch of                   0             1             200
    8cc7463 (raw sqlite3)      0.54 (10)     2.88 (23)     184 (1018)
    SQLite now                 0.74 (4)      3.29 (12)     135 (12)
    PostgreSQL now             1.43 (2.5)    7.81 (12)     148 (12)

Before that commit (intake and note_clock in two transactions, every statement through
SQLAlchemy) a one-sale batch took 7.7 ms on SQLite against 3.0 ms on 8cc7463.

The old store is checked out with ``git worktree add`` into a temporary folder (removed
at the end). PostgreSQL is a throwaway cluster started as the tests start theirs
(tests/pgkit.py), migrated to head, and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OLD_REF = "8cc7463"  # the last commit before the store moved onto SQLAlchemy
SIZES = (0, 1, 3, 50, 200)
# Timed batches per size (times --rounds); a terminal's genesis batch is not timed.
# Size 0 is a sync with nothing new (an empty batch: the terminal asks for the time).
ROUNDS = {0: 200, 1: 200, 3: 150, 50: 30, 200: 12}
WARMUP = 3  # batches per size run before the timed ones (caches, first compilation)
T0_MS = 1_780_000_000_000
ISS = "bench-intake"
ISSUER_SEED = "bench/county_intake issuer"


# --- the batches (made once, in the parent) ---------------------------------------------


class _Chain:
    """One simulated terminal's chain: entries appended, batches cut with a checkpoint
    signed by its ledger key over the last entry."""

    def __init__(self, terminal_id: str, key: Any) -> None:
        from protocol.chain import GENESIS_PREV_HASH

        self.terminal_id, self.key = terminal_id, key
        self.seq, self.last = 0, GENESIS_PREV_HASH
        self.rows: list[list[Any]] = []

    def append(self, fields: list[Any]) -> None:
        from protocol.chain import entry_hash

        self.seq += 1
        hashed = [self.seq, *fields]
        digest = entry_hash(self.last, hashed)
        self.rows.append([*hashed, self.last.hex(), digest.hex()])
        self.last = digest

    def batch(self) -> dict[str, Any]:
        from protocol.chain import checkpoint_message

        tail = self.rows[-1]
        message = checkpoint_message(self.terminal_id, tail[0], bytes.fromhex(tail[17]))
        doc = {
            "nonce": os.urandom(16).hex(),
            "entries": list(self.rows),
            "checkpoints": [[tail[0], tail[17], tail[2], self.key.sign(message).hex()]],
        }
        self.rows.clear()
        return doc


def make_batches(sizes: list[int], scale: float) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT)]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol import issue
    from protocol.chain import (
        GENESIS,
        SALE,
        canonical_json,
    )

    issuer = issue.Issuer(ISS, issue.key_from_seed(ISSUER_SEED))
    cadre = 0
    terminals = []
    for size in sizes:
        tid = f"bench-t{size}"
        chain = _Chain(tid, Ed25519PrivateKey.generate())
        key = chain.key
        append, batch = chain.append, chain.batch
        public = key.public_key().public_bytes_raw()
        detail = canonical_json({"terminal_id": tid, "public_key": public.hex()})
        append(["g-" + tid, T0_MS, GENESIS, *([None] * 9), 0, None, detail])
        docs = [batch()]
        at_ms = T0_MS + 60_000
        for _ in range(WARMUP + max(1, round(ROUNDS.get(size, 30) * scale))):
            if size == 0:
                docs.append({"nonce": os.urandom(16).hex(), "entries": [], "checkpoints": []})
                continue
            for _ in range(size):
                cadre += 1
                at_ms += 1000
                now_s = at_ms // 1000
                cti = cadre.to_bytes(12, "big")
                wallet = issue.enrol(
                    issuer,
                    f"c{cadre}",
                    "u1",
                    f"Cadre {cadre}",
                    holder_key=Ed25519PrivateKey.generate(),
                    cti=cti,
                    now=now_s - 86_400,
                )
                code = wallet.draw(now_s)  # the counter it signs is wallet.ctr after this
                append(
                    [
                        f"e{cadre}",
                        at_ms,
                        SALE,
                        "accept",
                        None,
                        "qr",
                        f"{ISS}/c{cadre}",
                        f"qr/{ISS}/{cti.hex()}",
                        wallet.ctr,
                        "u1",
                        "2026-05-28",
                        "lunch",
                        1500,
                        None,
                        canonical_json({"qr": code}),
                    ]
                )
            docs.append(batch())
        terminals.append({"size": size, "terminal": tid, "key": public.hex(), "docs": docs})
    return {"trust": [issuer.trust_entry()], "terminals": terminals}


# --- one store (in a child process) -----------------------------------------------------


def worker(code: str, url: str, batches_file: str) -> None:
    """Run every terminal's batches through the store of the checkout ``code``; print the
    timings as one JSON line.

    What is timed is the store's work for one sync as that checkout's app asks for it:
    ``intake``, then ``note_clock`` where the app calls it after the intake (before
    the clock was read inside the intake transaction), so every checkout is timed
    for the same job."""
    sys.path[:0] = [code]
    from county.store import CountyStore

    app_source = (Path(code) / "county" / "app.py").read_text()
    separate_clock = "store.note_clock" in app_source

    data = json.loads(Path(batches_file).read_text())
    target: Any = Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else url
    store = CountyStore(target)
    statements = [0]
    if hasattr(store, "db"):
        from sqlalchemy import event

        def count(*_args: Any) -> None:
            statements[0] += 1

        event.listen(store.db.engine, "before_cursor_execute", count)
        try:  # statements run on the driver's cursor (county/storekit.py), not seen above
            from county.storekit import Prepared

            prepared: Any = Prepared
        except ImportError:
            prepared = None
    else:
        store._conn.set_trace_callback(lambda _sql: statements.__setitem__(0, statements[0] + 1))
        prepared = None

    def counted() -> int:
        return statements[0] + (prepared.runs if prepared is not None else 0)

    now = T0_MS + 10 * 86_400_000
    store.add_issuer_keys(data["trust"], now)
    out = []
    try:
        for term in data["terminals"]:
            secret = store.add_terminal(term["terminal"], "c1", now)
            store.bind_certificate(
                secret, term["terminal"], f"{term['size']:064x}", bytes.fromhex(term["key"]), now
            )
            docs = term["docs"]
            times, stmts = [], []
            for i, doc in enumerate(docs):
                # The county's clock moves as a terminal's syncs come: every 5 minutes
                # for an idle terminal's empty batch, a second apart for sales.
                now += 300_000 if term["size"] == 0 else 1000
                before = counted()
                start = time.perf_counter()
                result = store.intake(term["terminal"], doc, now)
                if separate_clock:
                    store.note_clock(term["terminal"], now)
                took = time.perf_counter() - start
                if result.status != "ok" or (i and result.accepted != term["size"]):
                    raise SystemExit(f"{term['terminal']} batch {i}: {result}")
                if i > WARMUP:  # the genesis batch and the warm-up are not timed
                    times.append(took)
                    stmts.append(counted() - before)
            out.append({"size": term["size"], "times": times, "statements": stmts})
        # Every sale must have been verified as evidence: a bench of refusals measures
        # the wrong path.
        for name in ("sales_without_evidence", "sales_unjudged"):
            if store.counter(name):
                raise SystemExit(f"{store.counter(name)} {name}: {store.alarms()[:1]}")
    finally:
        store.close()
    print(json.dumps(out))


# --- the parent ---------------------------------------------------------------------------


def run_store(code: Path, url: str, batches: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(code), url, str(batches)],
        capture_output=True,
        text=True,
        cwd=code,
        env=dict(os.environ, PYTHONPATH=str(code)),
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"the store at {code} failed:\n{done.stderr[-3000:]}")
    result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def quantile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--rounds", type=float, default=1.0, help="scale the timed batches")
    ap.add_argument(
        "--alternate",
        type=int,
        default=1,
        help="run the stores this many times, one after the other in turn (each time on a "
        "new database), and print the median of the runs' medians",
    )
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--no-old", action="store_true", help="this checkout only")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="county-intake-"))
    batches = tmp / "batches.json"
    start = time.perf_counter()
    batches.write_text(json.dumps(make_batches(sizes, args.rounds)))
    print(f"batches made in {time.perf_counter() - start:.1f} s", flush=True)
    # Per store, one list of results per run (each a list of per-size timings).
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    loads: list[float] = []
    old = tmp / "old"
    cluster = None
    try:
        stores: list[tuple[str, Path, Any]] = []
        if not args.no_old:
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(old), args.old_ref],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            label = " (before the port)" if args.old_ref == OLD_REF else ""
            stores.append((f"SQLite, {args.old_ref}{label}", old, "old"))
        stores.append(("SQLite, this checkout", ROOT, "new"))
        if not args.no_pg:
            sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
            from pgkit import Cluster

            from county.db import Database
            from county.db.migrations import upgrade

            cluster = Cluster()
            cluster.make()
            stores.append(("PostgreSQL, this checkout", ROOT, None))
        for turn in range(args.alternate):
            for name, code, sqlite_name in stores:
                if sqlite_name is not None:
                    url = f"sqlite:///{tmp / f'{sqlite_name}{turn}.sqlite'}"
                else:
                    assert cluster is not None
                    url = cluster.create_database(f"bench_intake_{turn}")
                    db = Database(url)
                    try:
                        upgrade(db)
                    finally:
                        db.close()
                loads.append(os.getloadavg()[0])
                runs.setdefault(name, []).append(run_store(code, url, batches))
                print(f"run {turn + 1}: {name} done", flush=True)
        loads.append(os.getloadavg()[0])
    finally:
        if cluster is not None:
            cluster.remove()
        if old.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
        shutil.rmtree(tmp, ignore_errors=True)
    figures = []
    print(f"load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f}")
    print(
        f"{'store':<38} {'batch':>5} {'n':>5} {'median ms':>10} {'p99 ms':>9} "
        f"{'stmts/batch':>12}  medians of the runs (ms)"
    )
    for name, turns in runs.items():
        for k, size in enumerate(sizes):
            items = [turn[k] for turn in turns]
            medians = [statistics.median(item["times"]) * 1000 for item in items]
            pooled = [t for item in items for t in item["times"]]
            median = statistics.median(medians)
            p99 = quantile(pooled, 0.99) * 1000
            per_batch = statistics.mean(x for item in items for x in item["statements"])
            figures.append(
                {
                    "store": name,
                    "size": size,
                    "median_ms": median,
                    "run_medians_ms": medians,
                    "p99_ms": p99,
                    "statements_per_batch": per_batch,
                    "batches": len(pooled),
                    "load_average": [min(loads), max(loads)],
                }
            )
            shown = ", ".join(f"{m:.2f}" for m in medians)
            print(
                f"{name:<38} {size:>5} {len(pooled):>5} {median:>10.2f} {p99:>9.2f} "
                f"{per_batch:>12.2f}  {shown}"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
