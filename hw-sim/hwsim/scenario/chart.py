"""The lunch-rush chart: latency, decision queue and backlog over the simulated lunch.

Drawn with matplotlib (the Agg backend, no display; its object API, no pyplot state), the
chart library of the county console's charts (county/console/charts.py, issue 16), in
place of the hand-drawn OpenCV image it replaces. It shows what that image showed:

- top panel: latency from presentation to verdict on the screen stream, one mark per
  presentation (QR accepted, card accepted, refused), the p50 and p99 as lines;
- bottom panel: entries not yet at the county (the backlog) and events waiting in the
  decision queue, sampled every 100 ms;
- both panels: the outage as a grey band, the signed settings change and revocation as
  vertical lines, local times of day (the canteen's zone) on a shared x axis.

Each panel has a legend naming every mark, line and band; the ticks are chosen so the
time labels never crowd (at most about a dozen), and the y ticks are whole numbers. The
file's type follows its suffix: ``.png`` (the report's ``lunch-rush.png``) or ``.svg``
(text kept as text). It reads only the RunRecord.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before any figure: no display, no GUI toolkit
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from hwsim.scenario.clock import local_time
from hwsim.scenario.model import ACCEPT
from hwsim.scenario.record import RunRecord
from hwsim.scenario.report import _percentile  # the report's p50/p99, the same figures

WIDTH_PX, HEIGHT_PX, DPI = 1400, 820, 100
# Tick steps for the time axis, in simulated minutes: the first giving at most MAX_TICKS.
TICK_MINUTES = (1, 2, 5, 10, 15, 20, 30, 60, 120, 180)
MAX_TICKS = 12
COLOURS = {
    "qr": "#1f5fa8",
    "card": "#2f7d32",
    "refused": "#c62828",
    "p50": "#8a96a3",
    "p99": "#7b3fa0",
    "backlog": "#b44d12",
    "queue": "#7b3fa0",
    "outage": "#d9d9d9",
    "settings": "#e08a00",
    "revocation": "#c62828",
}
# The legend's labels (the unit test looks for them).
LABELS = {
    "qr": "QR, accepted",
    "card": "card, accepted",
    "refused": "refused",
    "p50": "p50",
    "p99": "p99",
    "backlog": "backlog: entries not at the county",
    "queue": "decision queue: events waiting",
    "outage": "network outage",
    "settings": "signed settings change",
    "revocation": "signed revocation",
}
_RC: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "lunch-rush",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e7eb",
}


def time_ticks(t0: int, t1: int) -> list[int]:
    """Whole local minutes (Unix ms) between t0 and t1, at the smallest step of
    TICK_MINUTES that gives at most MAX_TICKS of them."""
    span_min = max(1.0, (t1 - t0) / 60_000)
    step_min = next((m for m in TICK_MINUTES if span_min / m <= MAX_TICKS), TICK_MINUTES[-1])
    step = step_min * 60_000
    # Multiples of the step in UTC: the canteen's zone (Asia/Shanghai, UTC+8) is a whole
    # number of every step up to two hours away, so they are round local times too.
    first = -(-t0 // step) * step
    return list(range(first, t1 + 1, step))


def _marks(record: RunRecord) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in LABELS}
    for p in record.presentations:
        lat = p.get("latency_ms")
        if lat is None:
            continue
        key = "refused" if p.get("verdict") != ACCEPT else "qr" if p["method"] == "qr" else "card"
        out[key][0].append(int(p["presented_sim_ms"]))
        out[key][1].append(float(lat))
    return out


def _time_axis(ax: Axes, t0: int, t1: int) -> None:
    ax.set_xlim(t0, t1)
    ax.xaxis.set_major_locator(FixedLocator(time_ticks(t0, t1)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: local_time(int(v), "%H:%M")))


def _world(ax: Axes, record: RunRecord, legend: bool) -> None:
    """The outage band and the signed publications, on one panel."""
    outage = record.outage
    if outage:
        ax.axvspan(
            outage["start_sim_ms"],
            outage["end_sim_ms"],
            color=COLOURS["outage"],
            alpha=0.6,
            zorder=0,
            label=LABELS["outage"] if legend else None,
        )
    shown: set[str] = set()
    for e in record.events:
        kind = e.get("kind")
        if kind in ("settings", "revocation"):
            ax.axvline(
                e["sim_ms"],
                color=COLOURS[kind],
                linewidth=1.2,
                linestyle="--",
                label=LABELS[kind] if legend and kind not in shown else None,
            )
            shown.add(kind)


def draw(record: RunRecord, path: Path) -> Path:
    """Draw the chart of ``record`` into ``path`` (.png or .svg) and return the path."""
    fmt = "svg" if path.suffix.lower() == ".svg" else "png"
    ps = record.presentations
    samples = record.samples
    times = [int(p["presented_sim_ms"]) for p in ps] + [int(s["sim_ms"]) for s in samples]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
        fig.subplots_adjust(left=0.07, right=0.76, top=0.9, bottom=0.08, hspace=0.32)
        top, bottom = fig.subplots(2, 1, sharex=True)
        fig.suptitle(
            f"lunch-rush: {len(ps)} presentations, seed {record.options.get('seed', '-')}",
            x=0.07,
            ha="left",
            fontweight="bold",
        )
        if times:
            t0, t1 = min(times), max(times)
            t1 = max(t1, t0 + 60_000)
            marks = _marks(record)
            for key, marker, size in (("qr", "o", 14), ("card", "o", 14), ("refused", "x", 30)):
                xs, ys = marks[key]
                top.scatter(
                    xs, ys, s=size, marker=marker, color=COLOURS[key], label=LABELS[key], zorder=3
                )
            lat = [float(p["latency_ms"]) for p in ps if p.get("latency_ms") is not None]
            for q in (50, 99):
                v = _percentile(lat, q)
                if v is not None:
                    top.axhline(
                        v,
                        color=COLOURS[f"p{q}"],
                        linewidth=1.2,
                        linestyle="-." if q == 50 else ":",
                        label=f"{LABELS[f'p{q}']} {v:.0f} ms",
                    )
            _world(top, record, legend=True)
            backlog = [s.get("unsynced") or 0 for s in samples]
            queue = [s.get("queue") or 0 for s in samples]
            sim = [int(s["sim_ms"]) for s in samples]
            bottom.plot(
                sim, backlog, color=COLOURS["backlog"], linewidth=1.8, label=LABELS["backlog"]
            )
            bottom.plot(sim, queue, color=COLOURS["queue"], linewidth=1.4, label=LABELS["queue"])
            _world(bottom, record, legend=False)
            _time_axis(bottom, t0, t1)
        top.set_ylim(bottom=0)
        bottom.set_ylim(bottom=0)
        top.set_title("latency, presentation to verdict on the screen", loc="left", fontsize=11)
        top.set_ylabel("ms")
        bottom.set_title("backlog and decision queue", loc="left", fontsize=11)
        bottom.set_ylabel("entries / events")
        bottom.set_xlabel("local time (simulated)")
        bottom.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        top.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        bottom.tick_params(axis="x", labelbottom=True)
        for ax in (top, bottom):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=10)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format=fmt, metadata={"Software": None} if fmt == "png" else None)
        except OSError as exc:
            raise OSError(f"cannot write the chart {path}: {exc.strerror or exc}") from None
    return path


__all__ = ["LABELS", "draw", "time_ticks"]
