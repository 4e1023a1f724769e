"""Meals per meal window per canteen and local day (county/meals.py, `canteen-county meals`).

Two counties. A generated month (`hw-sim county history`, 2 canteens, real hash-chained
entries) counted against a reference computed here from the entries table row by row in
Python (local time by zoneinfo, the terminal's default windows), for the whole month and
for a period that starts and ends mid-month; the CLI's lines against the same. And a
hand-built county (tests/test_inspection.py's Ledger and directory) for the edges: a sale
on a window's first and last millisecond, a reversed sale, the period's first and last
millisecond, a canteen with windows of its own (another lunch, a window named 'supper'),
the entries behind a count by window and weekday; on SQLite and (slow) PostgreSQL. The
windows the county published (slow: `updates init` makes root keys). The CLI's bad input:
one line, exit status 2.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hwsim.cli import main as hwsim_main
from sqlalchemy import select
from test_inspection import DAY, Ledger, local_ms

from county import meals
from county.cli import main as county_main
from county.db.schema import entries
from county.store import CountyStore
from protocol.chain import ACCEPT, REJECT, REVERSAL, SALE

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
DEFAULTS = meals.default_windows()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    code = county_main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _cells(found: list[meals.CanteenMeals]) -> dict[tuple[str, str, str], int]:
    return {(c.canteen, d.isoformat(), w): n for c in found for (d, w), n in c.cells.items()}


# -- a generated month, against a reference ----------------------------------------------


@pytest.fixture(scope="module", name="month")
def month_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CountyStore]]:
    root = tmp_path_factory.mktemp("meals-history")
    data = root / "data"
    args = ["county", "history", "--months", "1", "--seed", "5", "--canteens", "2"]
    args += ["--agencies", "40", "--cadres", "30", "--start", "2026-10-01"]
    args += ["--placeholder-codes", "--data", str(data)]
    assert hwsim_main(args) == 0
    store = CountyStore(f"sqlite:///{data / 'county.sqlite'}")
    yield data, store
    store.close()


def reference(
    store: CountyStore, first: dt.date, last: dt.date, windows: meals.WindowTable
) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], list[tuple[str, int]]]]:
    """(counts per (canteen, day, window), keys per (canteen, window)) of the period, row
    by row: accepted sales no reversal names, by their local time in Shanghai."""
    e = entries.c
    with store.db.read() as conn:
        rows = conn.execute(
            select(e.terminal, e.seq, e.canteen, e.at_ms, e.kind, e.verdict, e.ref_seq)
        ).all()
    reversed_keys = {(r.terminal, r.ref_seq) for r in rows if r.kind == REVERSAL}
    counts: Counter[tuple[str, str, str]] = Counter()
    keys: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for r in sorted(rows, key=lambda r: (r.at_ms, r.terminal, r.seq)):
        if r.kind != SALE or r.verdict != ACCEPT or (r.terminal, r.seq) in reversed_keys:
            continue
        when = dt.datetime.fromtimestamp(r.at_ms / 1000, SHANGHAI)
        if not first <= when.date() <= last:
            continue
        tod = when.time()
        window = next(
            (w.name for w in meals.windows_for(windows, r.canteen) if w.start <= tod < w.end),
            meals.OTHER,
        )
        counts[(r.canteen, when.date().isoformat(), window)] += 1
        keys.setdefault((r.canteen, window), []).append((r.terminal, r.seq))
    return dict(counts), keys


@pytest.mark.parametrize(
    "first, last", [("2026-10-01", "2026-10-31"), ("2026-10-06", "2026-10-19")]
)
def test_a_generated_month_matches_the_reference(
    month: tuple[Path, CountyStore], first: str, last: str
) -> None:
    _, store = month
    d0, d1 = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    with store.db.read() as conn:
        ids = sorted({str(c) for (c,) in conn.execute(select(entries.c.canteen).distinct())})
        found = meals.meals_per_window(conn, d0, d1, zone=SHANGHAI, windows=DEFAULTS, canteens=ids)
        want, keys = reference(store, d0, d1, DEFAULTS)
        assert sum(want.values()) > 100  # a real month, not an empty one
        assert _cells(found) == want
        assert [len(c.days) for c in found] == [(d1 - d0).days + 1] * len(ids)
        # The history plants off-hours sales: some count outside every window.
        if first == "2026-10-01":
            assert any(w == meals.OTHER for (_, _, w) in want)
        for (canteen, window), expected in keys.items():
            got = meals.meal_entries(
                conn, d0, d1, zone=SHANGHAI, windows=DEFAULTS, canteen=canteen, window=window
            )
            assert got == expected, (canteen, window)


def test_the_cli_prints_the_same(
    month: tuple[Path, CountyStore], capsys: pytest.CaptureFixture[str]
) -> None:
    data, store = month
    lines = _cli(capsys, "meals", "--data", str(data), "--from", "2026-10-06", "--to", "2026-10-19")
    assert lines[0]["row"] == "period" and lines[0]["windows"] == "published"
    want, _ = reference(store, dt.date(2026, 10, 6), dt.date(2026, 10, 19), DEFAULTS)
    got: dict[tuple[str, str, str], int] = {}
    for line in lines:
        if line["row"] == "day":
            for window, n in [*line["meals"].items(), (meals.OTHER, line["outside"])]:
                if n:
                    got[(line["canteen"], line["day"], window)] = n
            assert line["total"] == sum(line["meals"].values()) + line["outside"]
    assert got == want
    canteens = [x for x in lines if x["row"] == "canteen"]
    assert sum(x["total"] for x in canteens) == sum(want.values())
    assert all(x["days"] == 14 for x in canteens)
    only = _cli(
        capsys, "meals", "--data", str(data), "--from", "2026-10-06", "--to", "2026-10-19",
        "--canteen", canteens[0]["canteen"],
    )  # fmt: skip
    assert [x for x in only if x["row"] == "canteen"] == [canteens[0]]


# -- a hand-built county: the edges ---------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hand_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'county.sqlite'}"
    else:
        url = str(request.getfixturevalue("pg_county_url"))
    return url


OWN = {
    **DEFAULTS,
    "c1": (
        meals.Window("lunch", dt.time(11), dt.time(14)),
        meals.Window("supper", dt.time(20), dt.time(22)),
    ),
}
NEXT = (dt.date.fromisoformat(DAY) + dt.timedelta(days=1)).isoformat()


def test_edges_reversals_and_a_canteen_with_its_own_windows(hand_url: str) -> None:
    store = CountyStore(hand_url)
    try:
        with store.db.write() as conn:
            book = Ledger(conn)
            k: dict[str, tuple[str, int]] = {}
            k["first_ms"] = book.put("t3", at_ms=local_ms(DAY, 0))  # 00:00 outside
            k["before_lunch"] = book.put("t3", at_ms=local_ms(DAY, 11, 30) - 1)
            k["lunch_opens"] = book.put("t3", at_ms=local_ms(DAY, 11, 30))
            k["lunch_reversed"] = book.put("t3", at_ms=local_ms(DAY, 12))
            book.reverse(k["lunch_reversed"], local_ms(DAY, 12, 5))
            k["lunch_closes"] = book.put("t3", at_ms=local_ms(DAY, 13, 30))  # outside
            k["last_ms"] = book.put("t3", at_ms=local_ms(NEXT, 0) - 1)  # outside
            k["next_day"] = book.put("t3", at_ms=local_ms(NEXT, 7))  # not in the period
            k["refused"] = book.put("t3", at_ms=local_ms(DAY, 12, 1), verdict=REJECT)
            # c1 (t1, t2): lunch 11:00-14:00 and supper 20:00-22:00 of its own.
            k["c1_1345"] = book.put("t1", at_ms=local_ms(DAY, 13, 45))
            k["c1_1100"] = book.put("t2", at_ms=local_ms(DAY, 11))
            k["c1_0730"] = book.put("t1", at_ms=local_ms(DAY, 7, 30))  # no breakfast: outside
            k["c1_2100"] = book.put("t2", at_ms=local_ms(DAY, 21))
            book.flush()
        day = dt.date.fromisoformat(DAY)
        with store.db.read() as conn:
            found = meals.meals_per_window(
                conn, day, day, zone=SHANGHAI, windows=OWN, canteens=["c1", "c2", "c9"]
            )
            assert _cells(found) == {
                ("c2", DAY, "lunch"): 1,
                ("c2", DAY, meals.OTHER): 4,
                ("c1", DAY, "lunch"): 2,
                ("c1", DAY, "supper"): 1,
                ("c1", DAY, meals.OTHER): 1,
            }
            c1, c2, c9 = found
            assert [w.name for w in c1.windows] == ["lunch", "supper"]
            assert c1.columns == ["lunch", "supper", meals.OTHER]
            assert c2.columns == ["breakfast", "lunch", "dinner", meals.OTHER]
            assert (
                c9.cells == {} and c9.total == 0 and c9.columns == ["breakfast", "lunch", "dinner"]
            )
            weekday = day.weekday()
            assert c2.weekday_total(weekday) == 5 and c2.weekday_days(weekday) == 1
            assert c2.weekday_total((weekday + 1) % 7) == 0

            def keys(canteen: str, window: str | None, wd: int | None = None) -> list[Any]:
                return meals.meal_entries(
                    conn, day, day, zone=SHANGHAI, windows=OWN, canteen=canteen,
                    window=window, weekday=wd,
                )  # fmt: skip

            assert keys("c2", "lunch") == [k["lunch_opens"]]
            assert keys("c2", meals.OTHER) == [
                k["first_ms"], k["before_lunch"], k["lunch_closes"], k["last_ms"]
            ]  # fmt: skip
            assert keys("c1", "lunch") == [k["c1_1100"], k["c1_1345"]]
            assert keys("c1", "supper", weekday) == [k["c1_2100"]]
            assert keys("c1", "supper", (weekday + 1) % 7) == []
            assert len(keys("c1", None)) == 4
            with pytest.raises(meals.MealsError, match="'breakfast': canteen c1 has lunch, supper"):
                keys("c1", "breakfast")
            with pytest.raises(meals.MealsError, match="weekday 7"):
                keys("c1", None, 7)
            # A week: the next day's breakfast counts, the day's figures are unchanged.
            week = meals.meals_per_window(
                conn, day, day + dt.timedelta(days=6), zone=SHANGHAI, windows=OWN, canteens=["c2"]
            )[0]
            assert week.on(day + dt.timedelta(days=1), "breakfast") == 1
            assert week.on(day, meals.OTHER) == 4 and len(week.days) == 7
    finally:
        store.close()


# -- the published windows --------------------------------------------------------------------


@pytest.mark.slow  # updates init makes root keys: about 6 s
def test_the_windows_the_county_published(tmp_path: Path) -> None:
    data = tmp_path / "county"
    keys = str(tmp_path / "k")
    assert county_main(["updates", "init", "--data", str(data), "--root-keys", keys]) == 0
    assert meals.published_windows(data, ["c1"]) == DEFAULTS  # nothing published yet
    everyone = tmp_path / "all.toml"
    everyone.write_text(
        '[[meals]]\nname = "lunch"\nstart = "11:00"\nend = "13:00"\n'
        "price_own_fen = 700\nprice_visitor_fen = 900\n"
        '[[meals]]\nname = "breakfast"\nstart = "06:00"\nend = "10:00"\n'
        "price_own_fen = 300\nprice_visitor_fen = 500\n",
        encoding="utf-8",
    )
    own = tmp_path / "c1.toml"
    own.write_text(
        '[[meals]]\nname = "supper"\nstart = "20:00"\nend = "22:00"\n'
        "price_own_fen = 700\nprice_visitor_fen = 900\n",
        encoding="utf-8",
    )
    assert county_main(["publish", "settings", "--data", str(data), str(everyone), "--all"]) == 0
    assert (
        county_main(["publish", "settings", "--data", str(data), str(own), "--canteen", "c1"]) == 0
    )
    table = meals.published_windows(data, ["c1", "c2"])
    assert [w.name for w in table["c1"]] == ["supper"]
    # In order of their start, whatever the file's order.
    assert [(w.name, w.start) for w in table["c2"]] == [
        ("breakfast", dt.time(6)),
        ("lunch", dt.time(11)),
    ]
    assert table[None] == DEFAULTS[None]


# -- the CLI's refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "2026-13-01", "--to", "2026-12-31"], "--from '2026-13-01': expected a date"),
        (["--from", "2026-05-01", "--to", "2026-02-30"], "--to '2026-02-30'"),
        (["--from", "2026-06-01", "--to", "2026-05-01"], "is after"),
        (["--from", "0001-01-01", "--to", "0001-01-02"], "lies within"),
        (["--from", "2026-05-01", "--to", "2026-05-31", "--timezone", "Mars/Base"], "Mars/Base"),
        (["--from", "2026-05-01"], "--to"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'county.sqlite'}"
    try:
        code = county_main(["meals", *args, "--database", url])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("canteen-county")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "county.sqlite").exists()


def test_cli_refuses_a_county_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    code = county_main(
        ["meals", "--data", str(tmp_path / "data"), "--from", "2026-05-01", "--to", "2026-05-31"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no county database" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data" / "county.sqlite").exists()


def test_a_period_in_two_halves_joined_is_the_whole(month: tuple[Path, CountyStore]) -> None:
    """The console counts a long period's meals in two halves at once (meals.halves,
    meals.joined): the same canteens, days and cells as one pass."""
    _, store = month
    d0, d1 = dt.date(2026, 9, 1), dt.date(2026, 11, 30)
    parts = meals.halves(d0, d1)
    assert len(parts) == 2 and parts[0][0] == d0 and parts[1][1] == d1
    assert parts[1][0] - parts[0][1] == dt.timedelta(days=1)
    assert meals.halves(d0, d0 + dt.timedelta(days=30)) == [(d0, d0 + dt.timedelta(days=30))]
    with store.db.read() as conn:
        ids = sorted({str(c) for (c,) in conn.execute(select(entries.c.canteen).distinct())})
        whole = meals.meals_per_window(conn, d0, d1, zone=SHANGHAI, windows=DEFAULTS, canteens=ids)
        halves = [
            meals.meals_per_window(conn, a, b, zone=SHANGHAI, windows=DEFAULTS, canteens=ids)
            for a, b in parts
        ]
    joined = meals.joined(halves)
    assert sum(c.total for c in whole) > 100
    assert [(c.canteen, c.days, c.cells) for c in joined] == [
        (c.canteen, c.days, c.cells) for c in whole
    ]


def test_totals_only_are_the_per_day_counts_summed(month: tuple[Path, CountyStore]) -> None:
    """The page of every canteen asks only each canteen's totals per window
    (by_day=False): the same totals as the per-day cells summed, and nothing per day."""
    _, store = month
    d0, d1 = dt.date(2026, 10, 1), dt.date(2026, 10, 31)
    with store.db.read() as conn:
        ids = sorted({str(c) for (c,) in conn.execute(select(entries.c.canteen).distinct())})
        args: dict[str, Any] = {"zone": SHANGHAI, "windows": DEFAULTS, "canteens": ids}
        daily = meals.meals_per_window(conn, d0, d1, **args)
        totals = meals.meals_per_window(conn, d0, d1, by_day=False, **args)
    assert sum(c.total for c in daily) > 100
    for day, whole in zip(daily, totals, strict=True):
        assert whole.totals_only and len(whole.days) == len(day.days)
        assert whole.columns == day.columns
        assert [whole.window_total(w) for w in day.columns] == [
            day.window_total(w) for w in day.columns
        ]
        with pytest.raises(ValueError, match="not per day"):
            whole.on(d0, day.columns[0])
