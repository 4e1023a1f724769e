"""The wire batch SQLite builds is the batch Python built (issue 12, performance).

The sync thread now takes each batch's JSON from one SQLite statement (so it does not
hold the GIL while the decision worker waits). Whatever a ledger holds (names in Chinese,
quotes, backslashes, control characters, NULLs), the county must parse the same values
as from json.dumps over the rows, or its hash check would refuse the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from terminal import state
from terminal.ledger import ACCEPT, REJECT, SALE, EntryDraft
from terminal.sync import EMPTY_BATCH, LedgerReader, encode_body

T0 = 1_780_000_000_000


def test_the_sqlite_batch_parses_to_the_rows_python_reads(tmp_path: Path) -> None:
    paths = state.prepare(tmp_path / "t")
    book = state.open_ledger(paths.ledger, paths.key, "t1", T0)
    odd = 'ünïcödé 张伟 "quoted" back\\slash tab\t newline\n nul-ish \x01 \u2028 😀'
    for i in range(40):
        book.append(
            EntryDraft(
                kind=SALE,
                verdict=ACCEPT if i % 3 else REJECT,
                reason=None if i % 3 else "replayed",
                method="qr",
                cadre=f"iss/{odd}" if i % 3 else None,
                credential=f"qr/iss/{i:08x}" if i % 3 else None,
                ctr=i if i % 3 else None,
                unit="单位" if i % 3 else None,
                day="2026-05-28",
                meal="lunch",
                amount_fen=1000 if i % 3 else 0,
                detail={"qr": odd, "n": i, "nested": {"a": [1, None, "x"]}},
            ),
            T0 + i,
        )
    book.close()
    reader = LedgerReader(paths.ledger)
    try:
        last = reader.last_seq()
        for start, limit in ((1, 500), (5, 7), (last, 10)):
            batch = reader.wire_batch(start, limit, last)
            rows = [r for r in reader.batch(start, limit) if r[0] <= last]
            assert json.loads(batch.text) == rows
            assert len(batch) == len(rows) and batch[0] == rows[0] and batch[-1] == rows[-1]
            doc = {"nonce": "ab" * 8, "entries": batch, "checkpoints": [[1, "00", 2, "ff"]]}
            plain = {"nonce": "ab" * 8, "entries": rows, "checkpoints": [[1, "00", 2, "ff"]]}
            assert json.loads(encode_body(doc)) == plain
        # An upper bound below the start, as at the end of a ledger: nothing to send.
        assert reader.wire_batch(last + 1, 500, last) is EMPTY_BATCH
        assert json.loads(encode_body({"nonce": "00", "entries": EMPTY_BATCH})) == {
            "nonce": "00",
            "entries": [],
        }
    finally:
        reader.close()
