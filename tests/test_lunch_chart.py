"""The lunch-rush chart (hw-sim/hwsim/scenario/chart.py), drawn with matplotlib from a small
hand-made RunRecord, without running a lunch: the legend names every mark, line and band,
the time axis is labelled in the canteen's local time, and the PNG is a real image of the
size the report promises."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import struct
import zoneinfo
from pathlib import Path

import pytest
from hwsim.scenario import chart
from hwsim.scenario.record import RunRecord
from hwsim.scenario.report import draw_chart

ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
T0 = int(dt.datetime(2026, 12, 3, 11, 30, tzinfo=ZONE).timestamp() * 1000)
MIN = 60_000


def _record() -> RunRecord:
    """25 simulated minutes: QR and card sales, two refusals, an outage, two updates."""
    presentations = []
    for i in range(40):
        method = "qr" if i % 3 else "card"
        verdict = "refuse" if i in (7, 30) else "accept"
        presentations.append(
            {
                "presented_sim_ms": T0 + i * 37_000,
                "latency_ms": 150.0 + (i % 7) * 40,
                "method": method,
                "verdict": verdict,
            }
        )
    samples = [
        {"sim_ms": T0 + i * 10_000, "queue": i % 3, "unsynced": max(0, 40 - abs(i - 80) // 2)}
        for i in range(150)
    ]
    events = [
        {"kind": "settings", "sim_ms": T0 + 5 * MIN},
        {"kind": "revocation", "sim_ms": T0 + 17 * MIN},
        {"kind": "outage_start", "sim_ms": T0 + 10 * MIN},
    ]
    return RunRecord(
        options={"seed": 7},
        origin_ms=T0,
        presentations=presentations,
        samples=samples,
        events=events,
        outage={"start_sim_ms": T0 + 10 * MIN, "end_sim_ms": T0 + 14 * MIN},
    )


def test_svg_has_every_legend_label_and_local_time_ticks(tmp_path: Path) -> None:
    path = chart.draw(_record(), tmp_path / "lunch.svg")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<?xml") and "</svg>" in text
    for key, label in chart.LABELS.items():
        if key in ("p50", "p99"):
            continue
        assert label in text, label
    # The percentile lines carry their value; the 40 latencies are 150..390 ms.
    assert re.search(r"p50 \d+ ms", text) and re.search(r"p99 \d+ ms", text)
    # Ticks every 5 simulated minutes of local time over the 24.8 minutes, 11:30 to 11:50.
    ticks = re.findall(r">(\d\d:\d\d)<", text)
    assert ticks == ["11:30", "11:35", "11:40", "11:45", "11:50"], ticks


def test_png_is_written_through_the_report_at_its_size(tmp_path: Path) -> None:
    path = draw_chart(_record(), tmp_path / "out" / "lunch-rush.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (chart.WIDTH_PX, chart.HEIGHT_PX)


def test_an_empty_run_still_gives_an_image(tmp_path: Path) -> None:
    path = chart.draw(RunRecord(options={}, origin_ms=T0), tmp_path / "empty.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("span_min", "step_min"), [(3, 1), (25, 5), (120, 10), (600, 60), (100_000, 180)]
)
def test_time_ticks_never_crowd(span_min: int, step_min: int) -> None:
    ticks = chart.time_ticks(T0 + 1, T0 + span_min * MIN)
    steps = {b - a for a, b in itertools.pairwise(ticks)}
    assert steps == {step_min * MIN} or len(ticks) == 1
    assert ticks[0] >= T0 + 1 and ticks[0] % (step_min * MIN) == 0
    assert span_min >= 100_000 or len(ticks) <= chart.MAX_TICKS


def test_an_unwritable_path_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"^cannot write the chart .*lunch\.png: "):
        chart.draw(_record(), blocker / "sub" / "lunch.png")
