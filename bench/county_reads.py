"""County reads at a city's volume: `entries` with filters and `report` by date range.

Run:  PYTHONPATH=.:hw-sim .venv/bin/python bench/county_reads.py [--entries 2000000]
          [--backends sqlite,pg] [--before 748e408] [--runs 3] [--keep]

What it owns: the time county IT waits for ``canteen-county entries`` and ``report`` on
a county of ``--entries`` history entries (2 million by default: 365 days, 1,205
canteens, three terminals each), on SQLite and on PostgreSQL, with the commands of this
checkout ("after") beside those of commit ``--before`` ("before": 748e408, the last
before the reads took ranges and filters). It changes no product code.

The history is bench/county_scale.py's (``history_rows``, ``bulk_load``: COPY on
PostgreSQL, executemany on SQLite, then ANALYZE), into a database brought to the
migrations' head. PostgreSQL is a throwaway cluster (tests/pgkit.py, with the memory of
a small dedicated server, as county_scale.py makes it).

Each command runs as county IT runs it (``python -m county.cli ... --database URL``, a
new process) with its standard output read through a pipe and counted; the figure is
the median wall time of ``--runs`` runs. The commands:

- ``entries --from D --to D``: one local day (the history's last). Before: ``entries``,
  which printed every entry (the only way to get a day was to filter that);
- ``entries --canteen C0001``. Before: ``entries`` as above;
- ``report``: after, the default window (the last 7 local days); before, every day;
- ``report --from M1 --to M2``: the last whole calendar month. Before: ``report``.

Then the plan of every query the new commands run (EXPLAIN QUERY PLAN on SQLite,
EXPLAIN on PostgreSQL), so the figures can be read with the indexes that made them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hw-sim"), str(ROOT / "bench")]

from county_scale import (  # noqa: E402
    UTC8,
    County,
    bulk_load,
    checkout_of,
    code_env,
    start_cluster,
)
from figures import report  # noqa: E402
from sqlalchemy import Connection, event  # noqa: E402

from county.db import Database  # noqa: E402
from county.db.migrations import upgrade  # noqa: E402
from county.reports import DayRange  # noqa: E402
from county.store import CountyStore  # noqa: E402

BEFORE = "748e408"


def run_command(code: Path, args: list[str]) -> tuple[float, int]:
    """(seconds, lines printed) of ``canteen-county ARGS`` run from the checkout ``code``."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "county.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=code_env(code),
        cwd=code,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines = 0
    while chunk := proc.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise SystemExit(f"canteen-county {' '.join(args)}: {err.decode().strip()}")
    return time.perf_counter() - began, lines


def timed(code: Path, args: list[str], runs: int) -> tuple[float, int, list[float]]:
    times = []
    lines = 0
    for _ in range(runs):
        t, lines = run_command(code, args)
        times.append(t)
    return statistics.median(times), lines, times


def plans(url: str, work: Callable[[CountyStore], Any]) -> list[tuple[str, str]]:
    """(statement, plan) of each query on the entries table that ``work`` runs."""
    store = CountyStore(url)
    seen: list[tuple[str, Any]] = []

    def note(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if "FROM entries" in statement and not statement.startswith("EXPLAIN"):
            seen.append((statement, params))

    event.listen(store.db.engine, "before_cursor_execute", note)
    try:
        work(store)
        out = []
        with store.db.read() as conn:
            for statement, params in seen:
                if store.db.is_sqlite:
                    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                    plan = "\n".join(str(r[3]) for r in rows)
                else:
                    rows = conn.exec_driver_sql("EXPLAIN " + statement, params)
                    plan = "\n".join(str(r[0]) for r in rows)
                out.append((" ".join(statement.split())[:160], plan))
        return out
    finally:
        event.remove(store.db.engine, "before_cursor_execute", note)
        store.close()


def bench_backend(name: str, url: str, before: Path | None, runs: int, last_day: dt.date) -> None:
    day = last_day.isoformat()
    month_end = last_day.replace(day=1) - dt.timedelta(days=1)
    month = (month_end.replace(day=1).isoformat(), month_end.isoformat())
    db = ["--database", url]
    every = ["entries", *db]
    cases = [
        (f"entries --from {day} --to {day}", [*every, "--from", day, "--to", day], every),
        ("entries --canteen C0001", [*every, "--canteen", "C0001"], every),
        ("report (last 7 days)", ["report", *db], ["report", *db]),
        (
            f"report --from {month[0]} --to {month[1]}",
            ["report", *db, "--from", month[0], "--to", month[1]],
            ["report", *db],
        ),
    ]
    start, _, _ = timed(ROOT, ["--help"], runs)
    report(f"{name}: canteen-county --help", start, "s", "the floor: starting Python and "
           "importing the county", "-", True, 2)  # fmt: skip
    before_cache: dict[str, tuple[float, int]] = {}
    for label, after_args, before_args in cases:
        reference = "-"
        if before is not None:
            key = " ".join(before_args)
            if key not in before_cache:
                t, n, _ = timed(before, before_args, runs)
                before_cache[key] = (t, n)
            t, n = before_cache[key]
            reference = f"before ({BEFORE}, {before_args[0]} unfiltered): {t:.2f} s, {n:,} lines"
        t, n, times = timed(ROOT, after_args, runs)
        report(
            f"{name}: {label}",
            t,
            "s",
            f"{n:,} lines, runs {', '.join(f'{x:.2f}' for x in times)}; {reference}",
            "-",
            True,
            2,
        )
    now = int(dt.datetime.combine(last_day, dt.time(23), UTC8).timestamp() * 1000)
    first_week = (last_day - dt.timedelta(days=6)).isoformat()
    one_day, week = DayRange(day, day), DayRange(first_week, day)
    works: list[tuple[str, Callable[[CountyStore], Any]]] = [
        (f"entries --from {day} --to {day}", lambda s: next(s.iter_entries(days=one_day), 0)),
        ("entries --canteen C0001", lambda s: next(s.iter_entries(canteen="C0001"), 0)),
        ("entries --terminal H00000", lambda s: next(s.iter_entries("H00000"), 0)),
        (
            "entries --canteen C0001 --from/--to one day",
            lambda s: next(s.iter_entries(canteen="C0001", days=one_day), 0),
        ),
        ("report (7 days)", lambda s: s.report(now, 86_400_000, days=week)),
        (
            "report (7 days) --canteen C0001",
            lambda s: s.report(now, 86_400_000, days=week, canteen="C0001"),
        ),
    ]
    for label, work in works:
        print(f"   plans of {label}:")
        for statement, plan in plans(url, work):
            print(f"     {statement}")
            print("\n".join("       " + line for line in plan.splitlines()))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--entries", type=int, default=2_000_000, help="history entries")
    ap.add_argument("--backends", default="sqlite,pg", help="sqlite, pg or both")
    ap.add_argument("--before", default=BEFORE, help="the reference commit; none to skip")
    ap.add_argument("--runs", type=int, default=3, help="runs of each command (median)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-county-reads-"))
    print(f"bench/county_reads.py on {os.cpu_count()} cores: {a.entries:,} entries; work {tmp}")
    today = dt.datetime.now(UTC8).replace(hour=0, minute=0, second=0, microsecond=0)
    first_ms = int((today - dt.timedelta(days=365)).timestamp() * 1000)
    last_day = (today - dt.timedelta(days=1)).date()
    before = checkout_of(a.before, tmp) if a.before != "none" else None
    cluster = None
    try:
        for backend in [b.strip() for b in a.backends.split(",") if b.strip()]:
            if backend == "sqlite":
                url = f"sqlite:///{tmp / 'county.sqlite'}"
            elif backend == "pg":
                cluster = start_cluster(tmp)
                url = cluster.create_database("county")
            else:
                ap.error("--backends takes sqlite, pg or both")
            db = Database(url)
            try:
                upgrade(db)
            finally:
                db.close()
            took = bulk_load(County(backend, tmp / backend, url), a.entries, first_ms)
            print(f"{backend}: {a.entries:,} entries loaded in {took:.0f} s", flush=True)
            bench_backend("SQLite" if backend == "sqlite" else "PostgreSQL", url, before,
                          a.runs, last_day)  # fmt: skip
            if cluster is not None:
                cluster.remove()
                cluster = None
    finally:
        if cluster is not None:
            cluster.remove()
        if a.keep:
            print(f"work folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
