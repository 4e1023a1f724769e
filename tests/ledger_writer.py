"""Child process for the ledger crash test: append entries until killed.

Run as ``python tests/ledger_writer.py LEDGER KEY [CHECKPOINT_EVERY]``. It opens
the ledger and appends sales, with a reversal and an acknowledgement now and
then, printing ``seq entry_id`` and flushing only after ``append`` returned:
each printed line is an entry the ledger promised to keep. The parent kills it
with SIGKILL at random moments. It must never print before the commit.
"""

from __future__ import annotations

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
    load_or_create_signing_key,
)


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
    n = 0
    while True:
        n += 1
        at_ms = max(floor, time.time_ns() // 1_000_000)
        floor = at_ms
        last = ledger.last_sale() if n % 7 == 0 else None
        if last is not None:
            draft = EntryDraft(kind=REVERSAL, ref_seq=last.seq, amount_fen=last.amount_fen)
        else:
            accepted = rng.random() < 0.8
            draft = EntryDraft(
                kind=SALE,
                verdict=ACCEPT if accepted else REJECT,
                reason=None if accepted else "already_served",
                method="qr",
                cadre=f"iss/{rng.randrange(500)}",
                credential=f"qr/iss/{rng.getrandbits(64):016x}",
                ctr=n,
                day="2026-03-01",
                meal="lunch",
                amount_fen=1200 if accepted else 0,
                detail={"n": n},
            )
        entry = ledger.append(draft, at_ms)
        out.write(f"{entry.seq} {entry.entry_id}\n")
        out.flush()
        if n % 13 == 0 and entry.seq > 3:
            ledger.mark_acked(entry.seq - 3, at_ms)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
