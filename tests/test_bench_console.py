"""bench/console.py's measuring loop over a tiny SQLite county (issue 16).

The bench itself runs over two years of a county on PostgreSQL (docs/console.md gives its
figures); this runs its plan and its loop, in-process, over one month of two canteens:
every page it plans answers 200 and is timed as many times as the loop says, the
drill-downs are the ones the pages link, a page the console lacks is dropped, and a bad
answer or a slow page is a MISS.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
START = dt.date(2026, 1, 1)
ZONE = dt.timezone(dt.timedelta(hours=8))
# The console's clock: noon on the last day of the one-month history.
NOW_MS = int(dt.datetime(2026, 1, 31, 12, 0, tzinfo=ZONE).timestamp() * 1000)


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_console", ROOT / "bench" / "console.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_console"] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


@pytest.fixture(name="tiny", scope="module")
def tiny_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    import consolekit  # noqa: F401  (its cheap password hasher: a login costs milliseconds)
    from hwsim.history import Options, write_history

    from county.console.app import ConsoleConfig, ConsoleServer

    data = tmp_path_factory.mktemp("tiny-county")
    options = Options(months=1, start=START, canteens=2, cadres=60, placeholder_codes=True)
    write_history(options, f"sqlite:///{data / 'county.sqlite'}", show_progress=False)
    bench.add_user(None, data)
    server = ConsoleServer(ConsoleConfig(data=data, now_ms=lambda: NOW_MS)).start()
    try:
        yield data, server.url
    finally:
        server.stop()


@pytest.mark.slow  # a history, a console and some 40 page views: 15 s at a load of 9
def test_plan_and_loop_time_every_page(tiny: tuple[Path, str]) -> None:
    data, base = tiny
    session = bench.log_in(base)
    values = bench.county_values(None, data)
    assert values["canteen"] and values["terminal"] and values["unit"]

    def get(path: str) -> str:
        return str(session.get(base + path, timeout=60).text)

    end = dt.date(2026, 1, 31)
    pages = bench.plan_pages(get, values, end, START, variants=2, limit=1)
    pages.append(bench.Page("not written yet", "/console/no-such-page", ["/console/no-such"]))
    present = bench.measure(session, base, pages, repeat=1)
    names = {p.name for p in present}
    assert {"home", "fleet", "fleet/ID", "inspection batches", "inspection spending",
            "inspection anomalies", "inspection entries", "replacement", "users",
            "audit"} <= names  # fmt: skip
    assert "not written yet" not in names
    for page in present:
        assert page.errors == [], page.errors
        assert len(page.repeated) == 1
        assert len(page.cold) == 1 + len(page.variants)
        assert 0 < page.first < 60 and all(0 < t < 60 for t in page.repeated + page.cold)
    entries = next(p for p in present if p.name == "inspection entries")
    for link in (entries.default, *entries.variants):
        assert link.startswith("/console/inspection/entries?"), link
    # A period the console refuses (400) is an error of the page, and a MISS.
    bad = bench.Page("batches", "/console/inspection", ["/console/inspection?from=2026-13-01"])
    (measured,) = bench.measure(session, base, [bad], repeat=1)
    assert measured.errors and "HTTP 400" in measured.errors[0]
    assert not measured.verdict()


def test_periods_lie_within_the_history() -> None:
    two_years = bench.periods(dt.date(2026, 11, 30), dt.date(2024, 12, 1))
    assert two_years == {
        "year": ("2025-12-01", "2026-11-30"),
        "quarter": ("2026-09-01", "2026-11-30"),
        "month": ("2026-11-01", "2026-11-30"),
        "year before": ("2024-12-01", "2025-11-30"),
    }
    # Three months: no year before, and no period starts before the history.
    short = bench.periods(dt.date(2025, 2, 28), dt.date(2024, 12, 1))
    assert set(short) == {"year", "quarter", "month"}
    assert short["year"] == short["quarter"] == ("2024-12-01", "2025-02-28")


def test_verdict_and_quantile() -> None:
    assert bench.quantile([0.1] * 19 + [5.0], 0.95) == 0.1
    assert bench.quantile([0.1] * 18 + [5.0, 5.0], 0.95) == 5.0
    fast = bench.Page("p", "/console", repeated=[0.1] * 20, cold=[0.2, 0.3])
    assert fast.verdict()
    slow_cold = bench.Page("p", "/console", repeated=[0.1] * 20, cold=[0.2, 1.5])
    assert not slow_cold.verdict()
    slow_repeat = bench.Page("p", "/console", repeated=[0.1] * 18 + [1.2] * 2, cold=[0.2])
    assert not slow_repeat.verdict()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--variants", "1"], "--variants at least 2"),
        (["--months", "0"], "--months must be 1 to 120"),
        (["--canteens", "0"], "--canteens must be 1 to 2000"),
        (["--keep", "FILE"], "not a folder"),
    ],
)
def test_bad_options_are_refused_before_anything_is_made(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    before = set(Path("/tmp").glob("console-bench-*"))
    with pytest.raises(SystemExit) as stop:
        bench.main([str(a_file) if x == "FILE" else x for x in args])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert words in err
    assert set(Path("/tmp").glob("console-bench-*")) == before  # no work folder made
