"""Ledger benchmarks: the SIGKILL crash loop and ``verify_file`` time.

``crash_loop`` starts tests/ledger_writer.py on one ledger file again and again
and kills it with SIGKILL at random moments, then checks that every entry the
writer acknowledged (printed after ``append`` returned) is in the ledger exactly
once at the same seq, and that the file verifies. ``verify_timing`` builds a
ledger of n entries through ``Ledger.append`` (tests/ledger_writer.py's synthetic
entries, each committed on its own, with short details) and times ``verify_file``
on it.
tests/test_ledger_crash.py and bench/core.py reuse both. Run:

    python bench/ledger_bench.py --kills 1000 --verify 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "ledger_writer.py"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))  # the synthetic ledger writer

from ledger_writer import T0_MS, write_synthetic  # noqa: E402

from terminal.ledger import Ledger  # noqa: E402  (path set up above for direct runs)
from terminal.ledger_audit import verify_file  # noqa: E402
from terminal.ledger_key import load_or_create_signing_key  # noqa: E402


def _writer_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "hw-sim")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _pick_delay(rng: random.Random) -> tuple[bool, float]:
    """(wait for the first acknowledged line?, then sleep this long) for one kill."""
    roll = rng.random()
    if roll < 0.2:
        # From spawn: lands anywhere in start-up, open, migrations or the first appends.
        return False, rng.uniform(0.0, 0.4)
    if roll < 0.5:
        return True, rng.uniform(0.0, 0.002)  # very short: mid-transaction more often
    return True, rng.uniform(0.0, 0.05)


def crash_loop(
    kills: int, dir: str | os.PathLike[str], *, seed: int | None = None, checkpoint_every: int = 8
) -> dict[str, Any]:
    """Kill a ledger writer ``kills`` times; return what survived and what did not."""
    rng = random.Random(seed)
    work = Path(dir)
    ledger_path = work / "crash.db"
    key_path = work / "terminal.key"
    load_or_create_signing_key(key_path)
    env = _writer_env()
    acknowledged: list[tuple[int, str]] = []
    killed_before_first_line = 0
    started = time.perf_counter()
    for _ in range(kills):
        wait_first, delay = _pick_delay(rng)
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(ledger_path), str(key_path), str(checkpoint_every)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # Unbuffered: readline below must not take more than the first line into a
            # buffer that communicate() (reading the pipe's descriptor itself) never sees:
            # the lines after it were lost and the next one began mid-line.
            bufsize=0,
        )
        assert proc.stdout is not None
        head = b""
        if wait_first:
            head = proc.stdout.readline()
            if not head:
                _, err = proc.communicate()
                raise RuntimeError(f"ledger writer exited early: {err.decode(errors='replace')}")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate()
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(
                f"ledger writer exited with {proc.returncode}: {err.decode(errors='replace')}"
            )
        text = (head + rest).decode()
        lines = text.split("\n")
        # A line without its newline was cut by the kill mid-print: not acknowledged.
        complete = lines[:-1]
        if not complete:
            killed_before_first_line += 1
        for line in complete:
            parts = line.split()
            if len(parts) != 2:
                raise RuntimeError(f"the ledger writer printed {line!r}, not 'seq entry_id'")
            seq, entry_id = parts
            acknowledged.append((int(seq), entry_id))
    elapsed = time.perf_counter() - started

    report = verify_file(ledger_path)
    uri = ledger_path.absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        stored = dict(conn.execute("SELECT entry_id, seq FROM entries"))
        rows = conn.execute("SELECT count(*), count(DISTINCT entry_id) FROM entries").fetchone()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    lost = [(s, e) for s, e in acknowledged if stored.get(e) != s]
    seqs = [s for s, _ in acknowledged]
    ids = [e for _, e in acknowledged]
    duplicated = (len(seqs) - len(set(seqs))) + (len(ids) - len(set(ids))) + (rows[0] - rows[1])
    return {
        "kills": kills,
        "acknowledged": len(acknowledged),
        "lost": len(lost),
        "lost_examples": lost[:5],
        "duplicated": duplicated,
        "entries_in_ledger": rows[0],
        "killed_before_first_line": killed_before_first_line,
        "verify_ok": report.ok,
        "verify_problem": report.problem,
        "integrity": integrity,
        "seconds": round(elapsed, 2),
    }


def verify_timing(n_entries: int, dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Build an n-entry ledger through ``Ledger.append`` and time ``verify_file`` on it."""
    work = Path(dir)
    path = work / f"verify-{n_entries}.db"
    key = load_or_create_signing_key(work / "verify.key")
    ledger = Ledger.open(path, terminal_id="bench", signing_key=key, now_ms=T0_MS)
    started = time.perf_counter()
    # Genesis is the first entry. Short details, as the reference in docs/ledger.md.
    write_synthetic(ledger, n_entries - 1, start=1, keep_code=False)
    build = time.perf_counter() - started
    ledger.close()
    started = time.perf_counter()
    report = verify_file(path)
    seconds = time.perf_counter() - started
    return {
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "verify_ok": report.ok,
        "verify_seconds": round(seconds, 3),
        "verified_per_second": round(report.entries / seconds),
        "durable_appends_per_second": round((n_entries - 1) / build),
        "file_bytes": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000, help="SIGKILLs in the crash loop")
    parser.add_argument("--verify", type=int, default=100_000, help="entries to verify")
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, help="random seed for the kill schedule")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        figures: dict[str, Any] = {}
        if args.verify:
            (Path(work) / "v").mkdir()
            figures["verify"] = verify_timing(args.verify, Path(work) / "v")
        if args.kills:
            (Path(work) / "c").mkdir()
            figures["crash_loop"] = crash_loop(args.kills, Path(work) / "c", seed=args.seed)
    print(json.dumps(figures, indent=2))
    crash = figures.get("crash_loop", {})
    verify = figures.get("verify", {})
    met = (
        crash.get("lost", 0) == 0
        and crash.get("duplicated", 0) == 0
        and crash.get("verify_ok", True)
        and verify.get("verify_ok", True)
        and (not args.verify or args.verify < 100_000 or verify["verify_seconds"] < 3.0)
    )
    print("targets met" if met else "TARGETS MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
