"""The daemon's ledger check at start, at 1,000,000 entries: full walk vs from the mark.

Builds a state directory whose ledger holds N entries (default 1,000,000) made
through ``Ledger.append`` in groups by tests/ledger_writer.py (accepted QR sales
keep a signed code of about 200 characters, as real ones do; every tenth a
refusal, every fiftieth a reversal), then times ``state.check_ledger``, the
function the decision worker runs before it opens the ledger for writing:

- the first start (no ``ledger-verified.json``): the whole chain is re-hashed
  and every checkpoint signature checked;
- a restart after a day of sales (1,000 entries appended since the last start):
  only those are re-hashed, from the checkpoint the previous start verified;
- a restart with nothing new.

Then one slice of the idle audit (``ChainAudit.step``, 5,000 entries, what
the decision worker spends per idle second re-hashing entries before the mark)
and the whole audit. ``ledger verify`` (``verify_file``, which adds SQLite's
integrity check) is timed on the same file as the reference. Target: a restart after a day of sales
checks in under 1 s at 1,000,000 entries. Run:

    python bench/ledger_start.py [--entries 1000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))  # the synthetic ledger writer

from figures import RESULTS, report  # noqa: E402
from ledger_writer import T0_MS, write_synthetic  # noqa: E402

from terminal import state  # noqa: E402
from terminal.ledger_audit import ChainAudit, verify_file  # noqa: E402
from terminal.service.daemon import AUDIT_SLICE  # noqa: E402

GROUP = 2000  # appends per commit while building (the daemon groups up to 32)


def append(root: Path, count: int, start: int) -> None:
    paths = state.StatePaths(root)
    book = state.open_ledger(paths.ledger, paths.key, "bench-terminal", T0_MS)
    try:
        write_synthetic(book, count, start=start, group=GROUP)
    finally:
        book.close()


def timed_check(root: Path) -> tuple[float, int]:
    started = time.perf_counter()
    result = state.check_ledger(root)
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"the bench ledger failed its check: {result.problem}")
    return elapsed, result.checked


def run(entries: int, day: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ledger-start-") as tmp:
        root = state.prepare(Path(tmp) / "state").root
        started = time.perf_counter()
        append(root, entries - 1, 0)  # plus genesis
        print(f"built {entries:,} entries in {time.perf_counter() - started:.1f} s", flush=True)
        size_mb = state.StatePaths(root).ledger.stat().st_size / 1e6

        first_s, first_n = timed_check(root)
        report(
            f"first start, no mark: whole chain ({first_n:,} entries, {size_mb:.0f} MB)",
            first_s,
            "s",
            "once, after an upgrade",
            "reported",
            True,
        )
        append(root, day, entries)
        day_s, day_n = timed_check(root)
        report(
            f"restart after a day's {day_n:,} entries, from the last verified checkpoint",
            day_s,
            "s",
            f"whole chain {first_s:.1f} s",
            "< 1 s",
            day_s < 1.0,
        )
        again_s, again_n = timed_check(root)
        report(
            f"restart with nothing new ({again_n} entries re-hashed)",
            again_s,
            "s",
            f"whole chain {first_s:.1f} s",
            "< 1 s",
            again_s < 1.0,
        )
        paths = state.StatePaths(root)
        book = state.open_ledger(paths.ledger, paths.key, "bench-terminal", T0_MS)
        try:
            audit = ChainAudit(book, entries)
            slices = []
            while not audit.done:
                started = time.perf_counter()
                audit.step(AUDIT_SLICE)
                slices.append(time.perf_counter() - started)
            assert audit.problem is None, audit.problem
        finally:
            book.close_unsigned()
        slices.sort()
        report(
            f"idle audit, one slice of {AUDIT_SLICE:,} entries (median; worst "
            f"{slices[-1] * 1000:.0f} ms)",
            slices[len(slices) // 2] * 1000,
            "ms",
            "the worker is busy this long once per idle second",
            "< 100 ms",
            slices[len(slices) // 2] < 0.1,
        )
        report(
            f"idle audit, whole ({len(slices)} slices)",
            sum(slices),
            "s",
            f"whole chain at start {first_s:.1f} s",
            "reported",
            True,
        )
        started = time.perf_counter()
        verified = verify_file(state.StatePaths(root).ledger)
        verify_s = time.perf_counter() - started
        assert verified.ok, verified.problem
        report(
            "ledger verify (whole chain and SQLite integrity check)",
            verify_s,
            "s",
            "offline tool",
            "reported",
            True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--day", type=int, default=1000, help="entries since the last start")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    run(a.entries, a.day)
    if a.json:
        print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
