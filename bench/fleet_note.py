"""What the fleet's note costs an upload (docs/fleet.md, "What is kept, and what it costs").

Run:  .venv/bin/python bench/fleet_note.py [N]

Two terminals provisioned by a real county server (then stopped), N one-sale batches
each with a checkpoint signed by the ledger key, through ``county.app._take_batch`` on
one SQLite CountyStore in this process: one terminal without its status (as an old
terminal, no note written), the other with it (status upserted and a sync-history line
in the intake's transaction), alternating batch by batch so both see the same load.
Printed: median and p90 ms of each, the first 10 left out.

Figures (commit 6d57ec7, N=150, 2 cores shared with other sessions, load average 7-9):

    without the note   median 11.63 ms, p90 20.77 ms
    with the note      median 12.95 ms, p90 18.42 ms

With the note in a second transaction and built as SQLAlchemy Core each time (the
commit before), the same run gave 10.46 against 17.46 ms.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "hw-sim")]

from countykit import make_county, provision_terminal, signed_rows  # noqa: E402

from county.app import FleetNotes, _take_batch  # noqa: E402
from county.store import CountyStore  # noqa: E402


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="fleet-note-"))
    county = make_county(root).start()
    terms = [provision_terminal(county, root / f"t{i}", f"t{i}", "c1") for i in range(2)]
    county.stop()
    for t in terms:
        t.append_entries(n)
    store = CountyStore(county.data / "county.sqlite")
    seen = FleetNotes(600_000)
    times: dict[str, list[float]] = {"without the note": [], "with the note": []}
    try:
        for seq in range(1, n + 2):
            for t, kind in zip(terms, times, strict=True):
                rows, cps = signed_rows(t, seq, seq)
                status = {"software": "bench", "last_seq": seq}
                doc = {"nonce": "", "entries": rows, "checkpoints": cps, "status": status}
                noted = kind == "with the note"
                started = time.perf_counter()
                result = _take_batch(
                    county.data,
                    store,
                    t.terminal_id,
                    doc,
                    1_780_000_000_000 + seq * 1000,
                    status if noted else None,
                    seen if noted else None,
                )
                times[kind].append((time.perf_counter() - started) * 1000)
                assert result.status == "ok", result
    finally:
        store.close()
    for kind, values in times.items():
        v = sorted(values[10:])
        print(
            f"{kind:18} median {statistics.median(v):.2f} ms, "
            f"p90 {v[int(len(v) * 0.9)]:.2f} ms (n={len(v)})"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
