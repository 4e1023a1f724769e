"""hw-sim county history (issue 16): a county's generated past, into either backend.

Checked against the rows themselves, with counters written here independently of the
generator: every planted batch and anomaly is in the entries, and nothing that looks like
one was left there by chance; the same seed gives the same rows and manifest; the chains
re-hash; the county's own commands read the result.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hwsim.cli import main as hwsim_main
from sqlalchemy import select

from county.cli import main as county_main
from county.conflicts import Keyring
from county.db import Database
from county.db.copy import verify_chains
from county.db.schema import canteens, entries
from county.evidence import Proof, check_sale

UTC8 = dt.timezone(dt.timedelta(hours=8))
SMALL = [
    "--months",
    "1",
    "--canteens",
    "4",
    "--cadres",
    "160",
    "--start",
    "2024-12-15",
    "--seed",
    "7",
]
# terminal/defaults.toml's meal windows, local minutes.
WINDOWS = ((7 * 60, 9 * 60), (11 * 60 + 30, 13 * 60 + 30), (17 * 60 + 30, 19 * 60 + 30))


def generate(tmp: Path, *extra: str, name: str = "county") -> tuple[Path, dict[str, Any]]:
    data = tmp / name
    manifest = tmp / f"{name}.json"
    rc = hwsim_main(["county", "history", "--data", str(data), "--manifest", str(manifest), *extra])
    assert rc == 0
    return data, json.loads(manifest.read_text(encoding="utf-8"))


def rows(url: str) -> list[dict[str, Any]]:
    db = Database(url)
    try:
        with db.read() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(select(entries).order_by(entries.c.terminal, entries.c.seq))
            ]
    finally:
        db.close()


def operators(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        with db.read() as conn:
            return {r.canteen: r.operator for r in conn.execute(select(canteens))}
    finally:
        db.close()


def local(at_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at_ms / 1000, UTC8)


def found_batches(sales: list[dict[str, Any]], ops: dict[str, str]) -> list[dict[str, Any]]:
    """Groups of >= 4 distinct cadres of one non-operator unit at one canteen, each sale
    within 15 minutes of the group's first: the simplest reading of the issue's rule."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in sales:
        if s["unit"] != ops[s["canteen"]]:
            by[(s["canteen"], s["unit"])].append(s)
    out = []
    for (canteen, unit), group in by.items():
        group.sort(key=lambda s: s["at_ms"])
        i = 0
        while i < len(group):
            j = i
            while j + 1 < len(group) and group[j + 1]["at_ms"] - group[i]["at_ms"] <= 15 * 60_000:
                j += 1
            people = {s["cadre"] for s in group[i : j + 1]}
            if len(people) >= 4:
                out.append(
                    {
                        "canteen": canteen,
                        "unit": unit,
                        "start_ms": group[i]["at_ms"],
                        "end_ms": group[j]["at_ms"],
                        "people": len(people),
                        "cadres": sorted(people),
                    }
                )
                i = j + 1
            else:
                i += 1
    return sorted(out, key=lambda b: (b["start_ms"], b["canteen"], b["unit"]))


def check_against_rows(url: str, manifest: dict[str, Any]) -> None:
    every = rows(url)
    ops = operators(url)
    accepted = [r for r in every if r["kind"] == "sale" and r["verdict"] == "accept"]
    key = lambda b: (b["start_ms"], b["canteen"], b["unit"])  # noqa: E731
    # Every planted batch, exactly, and no other.
    assert sorted(found_batches(accepted, ops), key=key) == sorted(manifest["batches"], key=key)
    # Nor among all sales, refused ones counted (a finder that forgets the verdict).
    all_sales = [r for r in every if r["kind"] == "sale"]
    assert len(found_batches(all_sales, ops)) == len(manifest["batches"])
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in manifest["anomalies"]:
        kinds[a["kind"]].append(a)
    assert set(kinds) == {"repeat_batches", "multi_canteen_day", "off_hours", "holiday"}
    # Off-hours: accepted sales outside every default window are exactly the planted ones.
    off = {
        (r["terminal"], r["seq"], r["cadre"])
        for r in accepted
        if not any(
            lo <= local(r["at_ms"]).hour * 60 + local(r["at_ms"]).minute < hi for lo, hi in WINDOWS
        )
    }
    assert off == {(a["terminal"], a["seq"], a["cadre"]) for a in kinds["off_hours"]}
    # Every sale (refused too) of a holiday is a planted one.
    holidays = set(manifest["holidays"])
    on_holiday = {
        (r["terminal"], r["seq"], r["cadre"], r["day"]) for r in all_sales if r["day"] in holidays
    }
    assert on_holiday == {(a["terminal"], a["seq"], a["cadre"], a["day"]) for a in kinds["holiday"]}
    # Cadres at several canteens in a day: exactly the planted ones.
    where: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in all_sales:
        where[(r["cadre"], r["day"])].add(r["canteen"])
    multi = {(c, d, tuple(sorted(k))) for (c, d), k in where.items() if len(k) > 1}
    assert multi == {
        (a["cadre"], a["day"], tuple(a["canteens"])) for a in kinds["multi_canteen_day"]
    }
    # Repeats: 3 batches of one agency at one canteen within 30 days, and only those.
    starts: dict[tuple[str, str], list[int]] = defaultdict(list)
    for b in manifest["batches"]:
        starts[(b["canteen"], b["unit"])].append(b["start_ms"])
    repeated = set()
    for pair, times in starts.items():
        times.sort()
        for i in range(len(times) - 2):
            if times[i + 2] - times[i] <= 30 * 86_400_000:
                repeated.add((*pair, tuple(times[i : i + 3])))
    assert repeated == {
        (a["canteen"], a["unit"], tuple(a["starts_ms"])) for a in kinds["repeat_batches"]
    }


@pytest.mark.slow
def test_manifest_matches_the_rows_and_nothing_is_accidental(tmp_path: Path) -> None:
    data, manifest = generate(tmp_path, *SMALL)
    assert manifest["seed"] == 7 and manifest["months"] == 1 and manifest["start"] == "2024-12-15"
    assert manifest["min_people"] == 4 and manifest["window_min"] == 15
    assert manifest["batches"] and all(
        b["people"] == len(b["cadres"]) >= 4 for b in manifest["batches"]
    )
    url = f"sqlite:///{data / 'county.sqlite'}"
    check_against_rows(url, manifest)
    # The holidays file the finders read: the manifest's list (1 January in this month).
    assert manifest["holidays"] == ["2025-01-01"]
    assert (data / "holidays.txt").read_text().split() == manifest["holidays"]
    db = Database(url)
    try:
        check = verify_chains(db)
        assert check.terminals >= 4 and check.entries == len(rows(url))
    finally:
        db.close()


@pytest.mark.slow
def test_same_seed_same_rows_and_manifest(tmp_path: Path) -> None:
    a, ma = generate(tmp_path, *SMALL, name="a")
    b, mb = generate(tmp_path, *SMALL, name="b")
    assert ma == mb
    ra, rb = rows(f"sqlite:///{a / 'county.sqlite'}"), rows(f"sqlite:///{b / 'county.sqlite'}")
    assert ra == rb and len(ra) > 1000
    _c, mc = generate(tmp_path, *SMALL[:-1], "8", name="c")
    assert mc["batches"] != ma["batches"]


def test_sales_carry_tiers_prices_and_codes_the_county_verifies(tmp_path: Path) -> None:
    data, _ = generate(tmp_path, *SMALL)
    url = f"sqlite:///{data / 'county.sqlite'}"
    every = [r for r in rows(url) if r["kind"] == "sale"]
    accepted = [r for r in every if r["verdict"] == "accept"]
    tiers = {json.loads(r["detail"])["tier"] for r in accepted}
    assert {"own", "unlisted"} <= tiers and len(tiers) >= 3
    assert all(r["amount_fen"] > 0 for r in accepted)
    assert {r["reason"] for r in every if r["verdict"] == "reject"} == {"already_served"}
    qr = [r for r in accepted if r["method"] == "qr"]
    assert len(qr) > 100
    db = Database(url)
    try:
        with db.read() as conn:
            keyring = Keyring(conn)
            for r in qr[:: max(1, len(qr) // 50)]:
                proof = check_sale(r, keyring)
                assert isinstance(proof, Proof), proof
                assert proof.cadre == r["cadre"] and proof.credential == r["credential"]
    finally:
        db.close()


@pytest.mark.slow
def test_postgresql_county_reads_it(tmp_path: Path, pg_county_url: str) -> None:
    manifest = tmp_path / "m.json"
    args = ["county", "history", "--database", pg_county_url, "--manifest", str(manifest)]
    assert hwsim_main([*args, *SMALL, "--holidays", str(tmp_path / "h.txt")]) == 0
    planted = json.loads(manifest.read_text(encoding="utf-8"))
    check_against_rows(pg_county_url, planted)
    # The same seed into SQLite gives the same rows.
    data, again = generate(tmp_path, *SMALL)
    assert again == planted
    assert rows(f"sqlite:///{data / 'county.sqlite'}") == rows(pg_county_url)
    db = Database(pg_county_url)
    try:
        verify_chains(db)
    finally:
        db.close()
    out = io.StringIO()
    with redirect_stdout(out):
        rc = county_main(
            ["report", "--database", pg_county_url, "--from", "2024-12-16", "--to", "2024-12-20"]
        )
    assert rc == 0
    report = json.loads(out.getvalue())
    assert sum(d["meals"] for d in report["days"]) > 300
    out = io.StringIO()
    with redirect_stdout(out):
        rc = county_main(
            ["entries", "--database", pg_county_url, "--from", "2024-12-16", "--to", "2024-12-16"]
        )
    assert rc == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines and {line["day"] for line in lines} == {"2024-12-16"}


def test_bad_input_is_one_line_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = generate(tmp_path, *SMALL)
    before = (data / "county.sqlite").read_bytes()
    cases = [
        ["--data", str(data), *SMALL],  # not a new county
        ["--data", str(tmp_path / "x"), "--months", "0"],
        ["--data", str(tmp_path / "x"), "--canteens", "0"],
        [],  # no database named
        ["--data", str(tmp_path / "x"), "--manifest", str(tmp_path / "no" / "m.json")],
        ["--data", str(tmp_path / "x"), "--holidays", str(tmp_path)],  # a folder
        ["--data", str(data / "county.sqlite")],  # a file, not a folder
    ]
    for extra in cases:
        assert hwsim_main(["county", "history", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hw-sim: error: ") and "\n" not in err, err
    assert (data / "county.sqlite").read_bytes() == before
    assert not (tmp_path / "x" / "county.sqlite").exists()
    with pytest.raises(SystemExit):
        hwsim_main(["county", "history", "--data", str(tmp_path / "y"), "--start", "2024-13-01"])


@pytest.mark.slow
def test_two_years_give_the_rucheng_and_anren_figures(tmp_path: Path) -> None:
    """Fewer batches and people in the second year (Rucheng: 45 -> 20 batches), and the
    work-meal spending of some townships' agencies down by about a quarter (Anren)."""
    two_years = ["--months", "24", "--canteens", "6", "--cadres", "300", "--placeholder-codes"]
    data, manifest = generate(tmp_path, *two_years)
    url = f"sqlite:///{data / 'county.sqlite'}"
    check_against_rows(url, manifest)
    split = int(dt.datetime(2025, 12, 1, tzinfo=UTC8).timestamp() * 1000)
    first = [b for b in manifest["batches"] if b["start_ms"] < split]
    second = [b for b in manifest["batches"] if b["start_ms"] >= split]
    assert 0 < len(second) < 0.6 * len(first)
    assert sum(b["people"] for b in second) < 0.7 * sum(b["people"] for b in first)
    spent: dict[tuple[str, bool], int] = defaultdict(int)
    for r in rows(url):
        if r["kind"] == "sale" and r["verdict"] == "accept":
            spent[(r["unit"], r["at_ms"] >= split)] += r["amount_fen"]
    # The townships that run a canteen of the county: their cadres' meals.
    towns = {op for op in operators(url).values() if op[-3:].isdigit() and "-" not in op}
    ratios = sorted(
        spent[(u, True)] / spent[(u, False)] for u in towns if spent[(u, False)] > 50_000
    )
    assert len(ratios) >= 4
    assert 0.68 < ratios[0] < 0.80  # the falling townships: about 26 % less
    assert 0.93 < ratios[-1] < 1.07  # and the others, about the same
