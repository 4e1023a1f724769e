"""The finders over a generated history (issue 16): every planted batch and anomaly of
`hw-sim county history` is found, and nothing that was not planted.

Two years of a small county (3 canteens, 60 cadres) are written once per backend with a
manifest (hw-sim/hwsim/history.py says what it holds); the county's own commands
(`canteen-county batches` and `anomalies`, JSON lines) are compared with it, field by
field, and the year-on-year figures of the second year are the planted batches of each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hwsim.cli import main as hwsim_main

from county.cli import main as county_main

pytestmark = pytest.mark.slow

FIRST, LAST = "2024-12-01", "2026-11-30"
HISTORY = [
    "county",
    "history",
    "--months",
    "24",
    "--seed",
    "7",
    "--canteens",
    "3",
    "--agencies",
    "40",
    "--cadres",
    "60",
    "--start",
    FIRST,
    "--placeholder-codes",
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """(the county options of a command, the manifest) of a generated history."""
    root = tmp_path_factory.mktemp(f"history-{request.param}")
    data = root / "data"
    manifest = root / "manifest.json"
    if request.param == "sqlite":
        where = ["--data", str(data)]
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if not cluster.running():
            cluster.start()
        name = "inspection_history"
        template = request.getfixturevalue("pg_county_template")  # at the migrations' head
        where = ["--database", cluster.create_database(name, template), "--data", str(data)]
        request.addfinalizer(lambda: cluster.drop_database(name))
    assert hwsim_main([*HISTORY, *where, "--manifest", str(manifest)]) == 0
    yield where, json.loads(manifest.read_text(encoding="utf-8"))


def _lines(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    code = county_main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_every_planted_batch_and_none_other(
    history: tuple[list[str], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    where, manifest = history
    lines = _lines(capsys, "batches", *where, "--from", FIRST, "--to", LAST)
    got = sorted(
        (b["canteen"], b["unit"], b["start_ms"], b["end_ms"], b["people"], b["cadres"])
        for b in lines
        if b["row"] == "batch"
    )
    want = sorted(
        (b["canteen"], b["unit"], b["start_ms"], b["end_ms"], b["people"], b["cadres"])
        for b in manifest["batches"]
    )
    assert len(want) > 20
    assert got == want
    # The second year beside the first, as planted.
    second = _lines(capsys, "batches", *where, "--from", "2025-12-01", "--to", LAST)
    period, total = second[0], second[-1]

    def planted(lo: int, hi: int) -> list[dict[str, Any]]:
        return [b for b in manifest["batches"] if lo <= b["start_ms"] < hi]

    now = planted(period["start_ms"], period["end_ms"])
    before = planted(period["previous_start_ms"], period["previous_end_ms"])
    assert len(now) + len(before) == len(want)
    assert (total["batches"], total["previous_batches"]) == (len(now), len(before))
    assert total["people"] == sum(b["people"] for b in now)
    assert total["previous_people"] == sum(b["people"] for b in before)


def test_every_planted_anomaly_and_none_other(
    history: tuple[list[str], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    where, manifest = history
    lines = _lines(capsys, "anomalies", *where, "--from", FIRST, "--to", LAST)
    assert lines[0]["kinds"] == ["repeat_batches", "multi_canteen_day", "off_hours", "holiday"]
    planted = manifest["anomalies"]

    def of(kind: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return [a for a in planted if a["kind"] == kind], [x for x in lines if x["row"] == kind]

    want, got = of("repeat_batches")
    assert want
    assert sorted((x["canteen"], x["unit"], x["starts_ms"]) for x in got) == sorted(
        (a["canteen"], a["unit"], a["starts_ms"]) for a in want
    )
    want, got = of("multi_canteen_day")
    assert want
    assert sorted((x["cadre"], x["day"], x["canteens"]) for x in got) == sorted(
        (a["cadre"], a["day"], sorted(a["canteens"])) for a in want
    )
    for kind in ("off_hours", "holiday"):
        want, got = of(kind)
        assert want
        assert sorted(tuple(x["entries"][0]) for x in got) == sorted(
            (a["terminal"], a["seq"]) for a in want
        )
        assert all(
            x["cadre"] == a["cadre"]
            for x, a in zip(
                sorted(got, key=lambda x: tuple(x["entries"][0])),
                sorted(want, key=lambda a: (a["terminal"], a["seq"])),
                strict=True,
            )
        )
    # The holidays came from DATA/holidays.txt, the generator's list.
    holidays = Path(where[where.index("--data") + 1]) / "holidays.txt"
    assert sorted(holidays.read_text(encoding="utf-8").split()) == manifest["holidays"]
