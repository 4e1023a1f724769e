"""Kitchen planning in the console, /console/meals (issue 16): meals per meal window per
canteen, per day or per weekday, as a chart and a table whose every number opens its
entries.

Read-only, for every role. The figures come from county/meals.py (the same functions as
``canteen-county meals``; docs/inspection.md defines them): accepted sales no reversal
names, counted in the meal windows the county published for each canteen (else the
terminal's defaults). Without a canteen the page compares the canteens (meals per window
per day on average, and the period's totals); with one it shows that canteen per day or
per weekday. Every number links to /console/meals/entries, which lists the sales behind
it with the inspection entries view's template. Bad query text is a 400 page that says
what is wrong.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from county import inspection, meals
from county.console import auth, charts, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.pages.inspection import cached, on_both_cores
from county.console.render import render
from county.directory import load_directory
from county.localtime import DateRange, LocalTimeError, local_date, parse_date

router = APIRouter()

PATH = "/console/meals"
NAV = [NavItem(PATH, "meals.nav", "meals.about", order=55)]
DEFAULT_DAYS = 28  # the last four weeks, today included
MAX_DAYS = 366
ENTRY_LIMIT = 1000
CHART_WIDTH = 720  # px; the template's <img> says the same
CHART_CANTEENS = 12  # the canteens with the most meals, in the comparison chart
OUTSIDE = "-"  # the window of the sales outside every window, in a URL
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

i18n.register(
    {
        "meals.nav": {"zh": "就餐统计", "en": "Meals"},
        "meals.title": {"zh": "就餐统计（备餐参考）", "en": "Meals per window (kitchen planning)"},
        "meals.about": {
            "zh": "各食堂每个餐段每天的就餐人次，按日或按星期，供备餐参考。",
            "en": "Meals per meal window per canteen, per day or weekday, for kitchen planning.",
        },
        "meals.from": {"zh": "开始日期", "en": "From"},
        "meals.to": {"zh": "结束日期", "en": "To"},
        "meals.canteen": {"zh": "食堂", "en": "Canteen"},
        "meals.all_canteens": {"zh": "全部食堂（对比）", "en": "All canteens (compare)"},
        "meals.by": {"zh": "按", "en": "Per"},
        "meals.by_weekday": {"zh": "星期", "en": "Weekday"},
        "meals.by_day": {"zh": "日期", "en": "Day"},
        "meals.bad_query": {"zh": "查询条件无效：{why}", "en": "Bad query: {why}"},
        "meals.period": {
            "zh": "{first} 至 {last}，共 {days} 天（{zone}）",
            "en": "{first} to {last}, {days} days ({zone})",
        },
        "meals.rule": {
            "zh": "就餐人次：已受理且未冲正的消费，按消费时间落入食堂的哪个餐段计"
            "（县里发布的餐段设置，未发布则按终端默认）；不在任何餐段内的另列。",
            "en": "Meals: accepted sales not reversed, counted in the meal window of "
            "their canteen that holds the sale's time (the windows the county published, "
            "else the terminal's defaults); sales outside every window are shown apart.",
        },
        "meals.windows_of": {"zh": "餐段：{windows}", "en": "Windows: {windows}"},
        "meals.outside": {"zh": "餐段外", "en": "Outside windows"},
        "meals.total": {"zh": "合计", "en": "Total"},
        "meals.per_day": {"zh": "日均", "en": "Per day"},
        "meals.day": {"zh": "日期", "en": "Day"},
        "meals.weekday": {"zh": "星期", "en": "Weekday"},
        "meals.days": {"zh": "天数", "en": "Days"},
        "meals.mean": {"zh": "平均", "en": "Average"},
        "meals.sum": {"zh": "总计", "en": "Sum"},
        "meals.compare": {"zh": "各食堂对比", "en": "The canteens side by side"},
        "meals.none": {"zh": "本期没有就餐记录。", "en": "No meals in the period."},
        "meals.no_canteens": {"zh": "还没有食堂。", "en": "No canteens yet."},
        "meals.chart_compare": {
            "zh": "各食堂每餐段日均就餐人次",
            "en": "Meals per window per day, on average, per canteen",
        },
        "meals.chart_weekday": {
            "zh": "{canteen}：每餐段平均就餐人次（按星期）",
            "en": "{canteen}: meals per window, average per weekday",
        },
        "meals.chart_day": {
            "zh": "{canteen}：每餐段每日就餐人次",
            "en": "{canteen}: meals per window per day",
        },
        "meals.chart_cut": {
            "zh": "图中仅显示就餐人次最多的 {n} 个食堂，表中为全部。",
            "en": "The chart shows the {n} canteens with the most meals; the table shows all.",
        },
        "meals.open": {"zh": "查看", "en": "Open"},
        "meals.wd0": {"zh": "周一", "en": "Mon"},
        "meals.wd1": {"zh": "周二", "en": "Tue"},
        "meals.wd2": {"zh": "周三", "en": "Wed"},
        "meals.wd3": {"zh": "周四", "en": "Thu"},
        "meals.wd4": {"zh": "周五", "en": "Fri"},
        "meals.wd5": {"zh": "周六", "en": "Sat"},
        "meals.wd6": {"zh": "周日", "en": "Sun"},
        "meals.window.breakfast": {"zh": "早餐", "en": "Breakfast"},
        "meals.window.lunch": {"zh": "午餐", "en": "Lunch"},
        "meals.window.dinner": {"zh": "晚餐", "en": "Dinner"},
    }
)


def window_label(t: i18n.Translator, name: str) -> str:
    """A window's name as the reader reads it: the usual three translated, any other name
    the county gave a window as it wrote it."""
    if name == meals.OTHER:
        return t("meals.outside")
    key = f"meals.window.{name}"
    return t(key) if i18n.known(key) else name


def _default_dates(request: Request) -> tuple[str, str]:
    config = request.app.state.config
    today = local_date(int(config.now_ms()), config.zone) or dt.date.today()
    return (today - dt.timedelta(days=DEFAULT_DAYS - 1)).isoformat(), today.isoformat()


def _dates(request: Request, date_from: str, date_to: str) -> tuple[DateRange | None, str]:
    for name, value in request.query_params.multi_items():
        if _CONTROL.search(value):
            return None, f"{name}: control characters are not allowed"
    default_from, default_to = _default_dates(request)
    try:
        dates = DateRange(
            parse_date(date_from or default_from, "from"),
            parse_date(date_to or default_to, "to"),
            request.app.state.config.zone,
        )
        if (dates.last - dates.first).days >= MAX_DAYS:
            raise LocalTimeError(f"at most {MAX_DAYS} days at a time")
        inspection.check_dates(dates.first, dates.last)
    except (LocalTimeError, inspection.InspectionError) as exc:
        return None, str(exc)
    return dates, ""


def _windows(request: Request, ids: list[str]) -> dict[str | None, meals.Windows]:
    data = request.app.state.config.data
    return meals.published_windows(data, ids) if data is not None else meals.default_windows()


@functools.lru_cache(maxsize=64)
def _chart(
    kind: str,
    labels: tuple[str, ...],
    series: tuple[tuple[str, tuple[float, ...]], ...],
    title: str,
) -> str:
    """A chart as a data: URI, cached: a page shown again draws nothing. A line chart
    shows whole meals per day; a bar chart averages, whose ticks may be fractions."""
    made = [charts.Series(name, values) for name, values in series]
    if kind == "line":
        svg = charts.line_chart(labels, made, title=title, width_px=CHART_WIDTH)
    else:
        svg = charts.bar_chart(
            labels, made, title=title, width_px=CHART_WIDTH, y_format=charts.count_ticks
        )
    return charts.data_uri(svg)


@router.get(PATH)
def meals_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    canteen: Annotated[str, Query(max_length=64)] = "",
    by: Annotated[str, Query(pattern="^(weekday|day)$")] = "weekday",
) -> Response:
    dates, error = _dates(request, date_from, date_to)
    form = {"date_from": date_from, "date_to": date_to, "canteen": canteen, "by": by}
    t = i18n.translator(str(getattr(request.state, "lang", i18n.DEFAULT_LANGUAGE)))
    with request.app.state.engine.connect() as conn:
        directory = load_directory(conn)
        names = {c: x.name for c, x in directory.canteens.items()}
        if dates is None:
            return render(
                request, "meals.html", user=user, error=error, form=form, dates=None,
                canteens=sorted(names), names=names, status_code=400,
            )  # fmt: skip
        known: list[str] = cached(
            conn,
            ("meals-canteens", dates),
            lambda: inspection.canteens_seen(conn, dates.start_ms, dates.end_ms, dates.zone),
        )
        ids = [canteen] if canteen else known
        table = _windows(request, ids)
        # One canteen: its meals per day (a long period in two halves on two
        # connections at once); every canteen: only their totals per window, which is
        # all that page shows.
        per_day = bool(canteen)
        parts = meals.halves(dates.first, dates.last) if per_day else [(dates.first, dates.last)]
        found: list[meals.CanteenMeals] = cached(
            conn,
            (
                "meals",
                dates,
                tuple(ids),
                per_day,
                tuple(sorted(table.items(), key=lambda kv: kv[0] or "")),
            ),
            lambda: meals.joined(
                on_both_cores(
                    request.app.state.engine,
                    *(
                        functools.partial(
                            meals.meals_per_window,
                            first=first,
                            last=last,
                            zone=dates.zone,
                            windows=table,
                            canteens=ids,
                            by_day=per_day,
                        )
                        for first, last in parts
                    ),
                )
            ),
        )
    base = {"from": dates.first.isoformat(), "to": dates.last.isoformat()}

    def link(
        c: str, window: str | None = None, day: dt.date | None = None, weekday: int | None = None
    ) -> str:
        """The entries behind a number: of canteen ``c``, in ``window`` (None: every
        window), on ``day`` (None: the period), on every ``weekday`` of the period."""
        query: dict[str, Any] = {**base, "canteen": c}
        if day is not None:
            query["from"] = query["to"] = day.isoformat()
        if window is not None:
            query["window"] = OUTSIDE if window == meals.OTHER else window
        if weekday is not None:
            query["weekday"] = weekday
        return PATH + "/entries?" + urlencode(query)

    def name_of(c: str) -> str:
        return names.get(c) or c

    chart = ""
    chart_cut = False
    columns: list[str] = []
    if canteen:
        one = found[0]
        columns = one.columns
        shown = [w for w in columns if w != meals.OTHER] or columns
        if by == "weekday":
            labels = tuple(t(f"meals.wd{i}") for i in range(7))
            series = tuple(
                (window_label(t, w), tuple(round(one.weekday_mean(i, w), 1) for i in range(7)))
                for w in shown
            )
            chart = _chart(
                "bar", labels, series, t("meals.chart_weekday", canteen=name_of(canteen))
            )
        else:
            labels = tuple(d.strftime("%m-%d") for d in one.days)
            series = tuple(
                (window_label(t, w), tuple(float(one.on(d, w)) for d in one.days)) for w in shown
            )
            chart = _chart("line", labels, series, t("meals.chart_day", canteen=name_of(canteen)))
    elif found:
        for c in found:
            columns += [w for w in c.columns if w not in columns and w != meals.OTHER]
        if any(c.window_total(meals.OTHER) for c in found):
            columns.append(meals.OTHER)
        busiest = sorted(found, key=lambda c: (-c.total, c.canteen))[:CHART_CANTEENS]
        busiest = [c for c in found if c in busiest and c.total]
        chart_cut = len(busiest) < len([c for c in found if c.total])
        if busiest:
            days = len(found[0].days)
            series = tuple(
                (
                    window_label(t, w),
                    tuple(round(c.window_total(w) / days, 1) for c in busiest),
                )
                for w in columns
                if w != meals.OTHER
            )
            labels = tuple(name_of(c.canteen) for c in busiest)
            chart = _chart("bar", labels, series, t("meals.chart_compare"))
    return render(
        request,
        "meals.html",
        user=user,
        error="",
        form=form,
        dates=dates,
        period={
            "first": dates.first.isoformat(),
            "last": dates.last.isoformat(),
            "days": (dates.last - dates.first).days + 1,
            "zone": str(dates.zone),
        },
        found=found,
        columns=columns,
        chart=chart,
        chart_cut=chart_cut,
        chart_canteens=CHART_CANTEENS,
        link=link,
        name_of=name_of,
        window_label=lambda w: window_label(t, w),
        windows_text=lambda c: ", ".join(
            f"{window_label(t, w.name)} {w.start:%H:%M}–{w.end:%H:%M}" for w in c.windows
        ),
        canteens=sorted(set(known) | set(names)),
        names=names,
        other=meals.OTHER,
    )


@router.get(PATH + "/entries")
def meal_entries_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    canteen: Annotated[str, Query(min_length=1, max_length=64)],
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    window: Annotated[str, Query(max_length=64)] = "",
    weekday: Annotated[int | None, Query(ge=0, le=6)] = None,
) -> Response:
    config = request.app.state.config
    dates, error = _dates(request, date_from, date_to)
    rows: list[dict[str, Any]] = []
    total = 0
    if dates is not None:
        with request.app.state.engine.connect() as conn:
            directory = load_directory(conn)
            table = _windows(request, [canteen])
            chosen = None if not window else meals.OTHER if window == OUTSIDE else window
            try:
                keys = meals.meal_entries(
                    conn, dates.first, dates.last, zone=dates.zone, windows=table,
                    canteen=canteen, window=chosen, weekday=weekday, limit=ENTRY_LIMIT + 1,
                )  # fmt: skip
            except meals.MealsError as exc:
                error = str(exc)
            else:
                total = len(keys)
                rows = inspection.entry_rows(
                    conn, keys[:ENTRY_LIMIT], zone=config.zone, directory=directory
                )
    return render(
        request, "inspection_entries.html", user=user, error=error, rows=rows, total=total,
        limit=ENTRY_LIMIT, status_code=400 if error else 200,
    )  # fmt: skip
