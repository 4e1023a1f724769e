"""Day totals as staff see them: the panel, the printed summary and the CSV over real HTTP.

The figures are the daemon's own (terminal/service/daemon.py day_totals / day_summary) over
a real ledger written by a real Checkout (tests/displaykit.py).
"""

from __future__ import annotations

import csv
import io

from displaykit import LUNCH, Kit, at, wallet

from terminal.ledger import REJECT

PIN = "4821"


def test_every_refusal_of_the_day_is_counted_even_with_no_meal(kit: Kit) -> None:
    t = kit.terminal
    c1 = wallet("R1")
    t.present(c1.draw(LUNCH))  # a sale
    t.present(c1.draw(LUNCH + 1))  # already served: names lunch
    t.present("CT1:not-a-code")  # malformed: names no meal and no day
    t.present("hello")  # not a code at all
    t.run(lambda: t.c.present_card(bytes.fromhex("0badcafe"), t.clock_ms))  # unknown card
    t.clock_ms = at("15:00") * 1000
    t.present(wallet("R2").draw(at("15:00")))  # between meals: a day but no meal
    refused = [e for e in t.entries() if e.verdict == REJECT]
    assert len(refused) == 5
    assert sum(1 for e in refused if e.meal is None) == 4

    status, panel, _ = kit.post("/staff/open", {"pin": PIN})
    assert status == 200
    meals = {m["meal"]: m for m in panel["totals"]["meals"]}
    assert sum(m["refusals"] for m in meals.values()) == 5
    assert meals["lunch"]["refusals"] == 1 and meals[""]["refusals"] == 4
    assert meals[""]["meal_label"] == "无餐次" and meals[""]["sales"] == 0

    status, summary, _ = kit.post("/staff/summary", {"pin": PIN})
    assert status == 200
    assert sum(summary["refusals_by_reason"].values()) == 5
    assert sum(m["refusals"] for m in summary["totals"]["meals"]) == 5
    assert summary["first_seq"] == t.entries()[1].seq  # seq 1 is the genesis, the day before
    assert summary["last_seq"] == t.entries()[-1].seq

    status, raw, _ = kit.post("/staff/summary.csv", {"pin": PIN})
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert rows[-1]["meal"] == "total" and rows[-1]["refusals"] == "5"
    assert sum(int(r["refusals"]) for r in rows[:-1]) == 5
