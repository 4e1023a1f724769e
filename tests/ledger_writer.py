"""The one synthetic ledger writer: made-up sales through ``Ledger.append``, for tests and bench.

``synthetic_draft`` makes entry n of a made-up lunch (accepted QR sales that keep a
signed code of about 200 characters, as real ones do; every tenth a refusal; now and
then a reversal of the sale just made). ``write_synthetic`` appends many of them, one
commit each or in groups. bench/ledger_start.py and bench/ledger_bench.py import both
(they put tests/ on their path); nothing in terminal/ does.

Run as ``python tests/ledger_writer.py LEDGER KEY [CHECKPOINT_EVERY]`` it is the
crash test's child (tests/test_ledger_crash.py, bench/ledger_bench.py): it opens
the ledger and appends synthetic entries with the wall clock's time, with an
acknowledgement now and then, printing ``seq entry_id`` and flushing only after
``append`` returned: each printed line is an entry the ledger promised to keep.
The parent kills it with SIGKILL at random moments. It must never print before
the commit. It never reads or changes a ledger otherwise.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time

from terminal.ledger import (
    ACCEPT,
    REJECT,
    REVERSAL,
    SALE,
    EntryDraft,
    Ledger,
    LedgerEntry,
    load_or_create_signing_key,
)

T0_MS = 1_772_000_000_000  # 2026-02-25, Unix ms: the first synthetic entry's time
STEP_MS = 1500  # one presentation every 1.5 s
QR_TEXT = "CT1:" + "A" * 208  # the signed code an accepted sale keeps, about real size


def synthetic_draft(
    n: int, rng: random.Random, last_sale: int, *, reverse_every: int = 50, keep_code: bool = True
) -> EntryDraft:
    """Entry ``n``: every ``reverse_every``-th a reversal of ``last_sale`` (the newest
    accepted sale not reversed yet; 0 for none), every tenth a refusal, else an
    accepted QR sale. Without ``keep_code`` the sale keeps a short detail instead of
    its signed code (bench/ledger_bench.py's verify figure in docs/ledger.md was
    measured on such entries)."""
    if last_sale and n % reverse_every == 0:
        return EntryDraft(kind=REVERSAL, ref_seq=last_sale, amount_fen=1200, detail={"staff": "s"})
    if n % 10 == 9:
        return EntryDraft(
            kind=SALE,
            verdict=REJECT,
            reason="already_served",
            method="qr",
            detail={"qr_sha256": f"{rng.getrandbits(64):016x}", "qr_length": 212},
        )
    return EntryDraft(
        kind=SALE,
        verdict=ACCEPT,
        method="qr",
        cadre=f"hn/{rng.randrange(5000)}",
        credential=f"qr/hn/{rng.getrandbits(64):016x}",
        ctr=n,
        unit="u-17",
        day="2026-03-01",
        meal="lunch",
        amount_fen=1200,
        detail={"qr": QR_TEXT, "price": "own"} if keep_code else {"kid": "k1", "n": n},
    )


def write_synthetic(
    book: Ledger,
    count: int,
    *,
    start: int = 0,
    t0_ms: int = T0_MS,
    step_ms: int = STEP_MS,
    group: int = 1,
    keep_code: bool = True,
) -> None:
    """Append ``count`` synthetic entries numbered from ``start``, entry n at
    ``t0_ms + n * step_ms``; ``group`` appends per commit (1: each durable on its own).
    The same ``start`` gives the same entries (but their random ids); ``keep_code`` is
    ``synthetic_draft``'s."""
    rng = random.Random(start)
    last_sale = 0
    end = start + count
    for first in range(start, end, group):
        with book.group() if group > 1 else contextlib.nullcontext():
            for n in range(first, min(first + group, end)):
                draft = synthetic_draft(n, rng, last_sale, keep_code=keep_code)
                entry = book.append(draft, t0_ms + n * step_ms)
                last_sale = _unreversed(entry, last_sale)


def _unreversed(entry: LedgerEntry, last_sale: int) -> int:
    """The newest accepted sale not reversed yet, after ``entry``; 0 when there is none."""
    if entry.kind == SALE and entry.verdict == ACCEPT:
        return entry.seq
    return 0 if entry.kind == REVERSAL else last_sale


def main(argv: list[str]) -> int:
    ledger_path, key_path = argv[0], argv[1]
    every = int(argv[2]) if len(argv) > 2 else 8
    key = load_or_create_signing_key(key_path)
    now = time.time_ns() // 1_000_000
    ledger = Ledger.open(
        ledger_path, terminal_id="crash-test", signing_key=key, now_ms=now, checkpoint_every=every
    )
    # The trusted-time floor: never record a time below what is already there.
    floor = ledger.last_time_ms()
    rng = random.Random()
    out = sys.stdout
    # Numbered on from the last entry, so reversals and acks keep coming across kills.
    n = ledger.last_seq()
    last_sale = 0
    while True:
        n += 1
        at_ms = max(floor, time.time_ns() // 1_000_000)
        floor = at_ms
        entry = ledger.append(synthetic_draft(n, rng, last_sale, reverse_every=7), at_ms)
        last_sale = _unreversed(entry, last_sale)
        out.write(f"{entry.seq} {entry.entry_id}\n")
        out.flush()
        if n % 13 == 0 and entry.seq > 3:
            ledger.mark_acked(entry.seq - 3, at_ms)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
