"""Charts for console pages, drawn on the server with matplotlib as SVG (issue 16).

This module owns how a console chart looks: a line chart (trends) and a grouped bar
chart (this period beside another), each with a legend, readable ticks and a title,
returned as SVG text and as a ``data:`` URI an ``<img>`` shows (the console's CSP allows
``img-src data:``; an image keeps each chart's ids to itself). Text is written as SVG
text, not paths, so the browser draws it in the console's fonts (Chinese included) and
the file stays small. It uses matplotlib's object API (no pyplot state), safe from any
request thread. Any page may use it; it reads no database.
"""

from __future__ import annotations

import base64
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before any figure: no display, no GUI toolkit
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

# The console's colours (static/console.css): accent first, then quieter ones.
COLOURS = ("#1f5fa8", "#9fb3c8", "#b44d12", "#2f7d32", "#7b3fa0", "#616e7c")
# Text is measured in matplotlib's own DejaVu Sans (the CJK fonts cost 3 times as much
# to lay out); the browser draws it, falling back to a CJK font for Chinese glyphs.
FONTS = ["DejaVu Sans"]
_RC: Any = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": FONTS,
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9fb3c8",
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.color": "#e4e7eb",
    "svg.hashsalt": "county-console",  # the same data give the same bytes
}
# matplotlib warns of glyphs its own fallback font lacks; the browser draws the text.
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Series:
    """One line or one set of bars: its legend name and a value per label (None: no
    value there, a gap in a line)."""

    name: str
    values: Sequence[float | None]
    dashed: bool = False


def _figure(width_px: int, height_px: int) -> Figure:
    # Fixed margins: a layout engine measured every label twice, half the drawing time.
    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.78, bottom=0.22)
    return fig


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # missing glyphs (see above)
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return out.getvalue()


def _axes_common(
    ax: Axes, labels: Sequence[str], y_label: str, fmt: Callable[[float], str] | None
) -> None:
    if y_label:
        ax.set_ylabel(y_label)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=fmt is None, min_n_ticks=2))
    if fmt is not None:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    ax.set_ylim(bottom=0)
    # At most ~12 x labels, whatever the number of points.
    step = max(1, (len(labels) + 11) // 12)
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels([labels[i] for i in range(0, len(labels), step)])
    ax.tick_params(axis="x", labelrotation=30 if len(labels) > 6 else 0, labelsize=9)


def _chart(
    draw: Callable[[Axes], None],
    labels: Sequence[str],
    series: Sequence[Series],
    title: str,
    y_label: str,
    y_format: Callable[[float], str] | None,
    width_px: int,
    height_px: int,
) -> str:
    """One chart's frame (axes, title, legend above the plot) around ``draw``, as SVG."""
    with matplotlib.rc_context(_RC):
        fig = _figure(width_px, height_px)
        ax = fig.add_subplot()
        draw(ax)
        _axes_common(ax, labels, y_label, y_format)
        if title:
            fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")
        if series:
            ax.legend(
                loc="lower left",
                bbox_to_anchor=(0, 1.0),
                frameon=False,
                fontsize=9,
                ncols=min(4, len(series)),
            )
        return _svg(fig)


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str = "",
    y_label: str = "",
    y_format: Callable[[float], str] | None = None,
    width_px: int = 640,
    height_px: int = 260,
) -> str:
    """A line per series over ``labels`` (months, days), as SVG text."""

    def draw(ax: Axes) -> None:
        xs = list(range(len(labels)))
        for i, s in enumerate(series):
            ys = [float("nan") if v is None else float(v) for v in s.values]
            ax.plot(
                xs,
                ys,
                label=s.name,
                color=COLOURS[i % len(COLOURS)],
                linestyle="--" if s.dashed else "-",
                marker="o",
                markersize=3,
                linewidth=1.8,
            )

    return _chart(draw, labels, series, title, y_label, y_format, width_px, height_px)


def bar_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str = "",
    y_label: str = "",
    y_format: Callable[[float], str] | None = None,
    width_px: int = 640,
    height_px: int = 260,
) -> str:
    """Bars side by side per label, one colour per series, as SVG text."""

    def draw(ax: Axes) -> None:
        width = 0.8 / max(1, len(series))
        for i, s in enumerate(series):
            xs = [x - 0.4 + width * (i + 0.5) for x in range(len(labels))]
            ys = [0.0 if v is None else float(v) for v in s.values]
            ax.bar(xs, ys, width=width * 0.95, label=s.name, color=COLOURS[i % len(COLOURS)])

    return _chart(draw, labels, series, title, y_label, y_format, width_px, height_px)


def data_uri(svg: str) -> str:
    """The SVG as a ``data:`` URI for an ``<img src>``."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def yuan_ticks(fen: float) -> str:
    """A y tick of money in fen, shown in yuan (12,345 or 1.2万 style kept simple)."""
    value = fen / 100
    if abs(value) >= 10_000:
        return f"{value / 10_000:,.1f}万"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def count_ticks(value: float) -> str:
    """A y tick of a count or an average of counts: 12, 1,250 or 0.5 (one decimal only
    where the tick is not whole, so small averages do not read 0.100)."""
    if value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.1f}"


__all__ = [
    "COLOURS",
    "Series",
    "bar_chart",
    "count_ticks",
    "data_uri",
    "line_chart",
    "yuan_ticks",
]
