"""Discipline inspection in the console, /console/inspection (issue 16): reception batches,
spending year on year, anomalies, and the entries behind every number.

Read-only, for every role. The figures come from county/inspection.py (the same functions
as `canteen-county batches | spending | anomalies`; docs/inspection.md defines them);
this module parses the query, renders the templates inspection_*.html and draws two
charts with county/console/charts.py. Every number links to /console/inspection/entries,
which lists the entries behind it with names and local times: a query there names either
the figure (what=batches|spending with the same filters) or the entries themselves
(keys=TERMINAL:SEQ,...). Bad query text is a 400 page that says what is wrong.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import functools
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import Connection, Engine, func, select

from county import inspection
from county.console import auth, charts, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render
from county.db.schema import agencies, canteens, terminals
from county.directory import load_directory
from county.localtime import DateRange, LocalTimeError, local_date, parse_date

router = APIRouter()

NAV = [NavItem("/console/inspection", "inspection.nav", "inspection.about", order=60)]
ENTRY_LIMIT = 1000
MAX_KEYS = 5000
NO_GROUP = "-"  # a spending group with no agency / no township, in a URL
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

i18n.register(
    {
        "inspection.nav": {"zh": "纪检监督", "en": "Inspection"},
        "inspection.about": {
            "zh": "公务接待批次、工作餐支出同比、重复接待和异常消费，每个数字可查到明细。",
            "en": "Reception batches, work-meal spending year on year, repeats and "
            "anomalies; every number opens its entries.",
        },
        "inspection.tab_batches": {"zh": "接待批次", "en": "Reception batches"},
        "inspection.tab_spending": {"zh": "工作餐支出", "en": "Work-meal spending"},
        "inspection.tab_anomalies": {"zh": "异常提示", "en": "Anomalies"},
        "inspection.from": {"zh": "开始日期", "en": "From"},
        "inspection.to": {"zh": "结束日期", "en": "To"},
        "inspection.canteen": {"zh": "食堂", "en": "Canteen"},
        "inspection.unit": {"zh": "来访单位", "en": "Visiting agency"},
        "inspection.agency": {"zh": "单位", "en": "Agency"},
        "inspection.township": {"zh": "乡镇", "en": "Township"},
        "inspection.month": {"zh": "月份", "en": "Month"},
        "inspection.min_people": {"zh": "最少人数", "en": "Min. people"},
        "inspection.window_min": {"zh": "时间窗(分钟)", "en": "Window (min)"},
        "inspection.by": {"zh": "分组", "en": "Group by"},
        "inspection.any": {"zh": "全部", "en": "All"},
        "inspection.bad_query": {"zh": "查询条件无效：{why}", "en": "Bad query: {why}"},
        "inspection.period": {
            "zh": "本期 {first} 至 {last}，上年同期 {pfirst} 至 {plast}（{zone}）",
            "en": "Period {first} to {last}; a year before {pfirst} to {plast} ({zone})",
        },
        "inspection.rule": {
            "zh": "接待批次：同一来访单位（非食堂运营单位）至少 {n} 名不同人员，"
            "自首笔消费起 {m} 分钟内在同一食堂就餐；已冲正的消费不计。",
            "en": "A batch: at least {n} distinct cadres of one visiting agency (not the "
            "canteen's operator) served at one canteen within {m} minutes of the first "
            "sale; reversed sales do not count.",
        },
        "inspection.batches": {"zh": "批次", "en": "Batches"},
        "inspection.people": {"zh": "人次", "en": "People"},
        "inspection.prev_batches": {"zh": "上年同期批次", "en": "Batches a year before"},
        "inspection.prev_people": {"zh": "上年同期人次", "en": "People a year before"},
        "inspection.change": {"zh": "同比", "en": "Change"},
        "inspection.by_canteen": {"zh": "按食堂", "en": "By canteen"},
        "inspection.by_unit": {"zh": "按来访单位", "en": "By visiting agency"},
        "inspection.by_month": {"zh": "按月份", "en": "By month"},
        "inspection.total": {"zh": "合计", "en": "Total"},
        "inspection.list": {"zh": "批次明细", "en": "The batches"},
        "inspection.start": {"zh": "开始时间", "en": "Start"},
        "inspection.end": {"zh": "结束时间", "en": "End"},
        "inspection.amount": {"zh": "金额(元)", "en": "Amount (yuan)"},
        "inspection.sales": {"zh": "笔数", "en": "Sales"},
        "inspection.entries_link": {"zh": "明细", "en": "Entries"},
        "inspection.none": {"zh": "本期没有接待批次。", "en": "No batches in the period."},
        "inspection.more_batches": {
            "zh": "仅列出前 {n} 个批次，其余请缩小范围或使用命令行。",
            "en": "The first {n} batches only; narrow the filters or use the CLI.",
        },
        "inspection.chart_batches": {
            "zh": "每月接待批次：本期与上年同期",
            "en": "Batches per month, this period and a year before",
        },
        "inspection.this_period": {"zh": "本期", "en": "This period"},
        "inspection.year_before": {"zh": "上年同期", "en": "A year before"},
        "inspection.spending_rule": {
            "zh": "工作餐支出：已受理消费减去冲正，按就餐人员所在单位；乡镇为其所属乡镇政府。",
            "en": "Work-meal spending: accepted sales less reversals, by the diner's "
            "agency; a township is the township government the agency belongs to.",
        },
        "inspection.net": {"zh": "支出(元)", "en": "Spending (yuan)"},
        "inspection.prev_net": {"zh": "上年同期(元)", "en": "A year before (yuan)"},
        "inspection.meals": {"zh": "餐次", "en": "Meals"},
        "inspection.no_township": {"zh": "（不属乡镇）", "en": "(no township)"},
        "inspection.no_agency": {"zh": "（未知单位）", "en": "(no agency)"},
        "inspection.by_group": {"zh": "分单位汇总", "en": "Per group"},
        "inspection.by_group_month": {"zh": "分月明细", "en": "Per group and month"},
        "inspection.month_totals": {"zh": "每月合计", "en": "Per month"},
        "inspection.chart_spending": {
            "zh": "每月工作餐支出(元)：本期与上年同期",
            "en": "Work-meal spending per month (yuan), this period and a year before",
        },
        "inspection.no_spending": {
            "zh": "本期没有工作餐支出。",
            "en": "No spending in the period.",
        },
        "inspection.repeats": {"zh": "重复接待", "en": "Repeated batches"},
        "inspection.repeats_rule": {
            "zh": "同一单位在同一食堂 {days} 天内 {n} 次及以上接待批次。",
            "en": "{n} or more batches of one agency at one canteen within {days} days.",
        },
        "inspection.multi": {"zh": "同日多食堂就餐", "en": "Several canteens a day"},
        "inspection.multi_rule": {
            "zh": "同一人员同一天在两个及以上食堂有消费。",
            "en": "A cadre with sales at two canteens or more on one day.",
        },
        "inspection.off_hours": {"zh": "非就餐时段消费", "en": "Sales off hours"},
        "inspection.off_hours_rule": {
            "zh": "消费时间不在食堂任何就餐时段内（按县里发布的设置，未发布则按终端默认时段）。",
            "en": "Sales outside every meal window of their canteen (the published "
            "settings, else the terminal's defaults).",
        },
        "inspection.holiday": {"zh": "节假日消费", "en": "Sales on holidays"},
        "inspection.holiday_rule": {
            "zh": "法定节假日的消费（节假日表：数据目录下 holidays.txt）。",
            "en": "Sales on public holidays (the list: holidays.txt in the data folder).",
        },
        "inspection.no_holidays": {
            "zh": "未找到节假日表 holidays.txt，未检查节假日消费。",
            "en": "No holidays.txt list: holiday sales were not looked for.",
        },
        "inspection.found": {"zh": "{n} 项", "en": "{n} found"},
        "inspection.nothing": {"zh": "未发现。", "en": "None found."},
        "inspection.cadre": {"zh": "人员", "en": "Cadre"},
        "inspection.day": {"zh": "日期", "en": "Day"},
        "inspection.canteens": {"zh": "食堂", "en": "Canteens"},
        "inspection.time": {"zh": "时间", "en": "Time"},
        "inspection.starts": {"zh": "各批次开始时间", "en": "Batch starts"},
        "inspection.entries_title": {"zh": "消费明细", "en": "Entries"},
        "inspection.entries_count": {
            "zh": "共 {n} 条",
            "en": "{n} entries",
        },
        "inspection.entries_cut": {
            "zh": "仅显示前 {n} 条。",
            "en": "Only the first {n} are shown.",
        },
        "inspection.terminal": {"zh": "终端", "en": "Terminal"},
        "inspection.seq": {"zh": "流水号", "en": "Seq"},
        "inspection.name": {"zh": "姓名", "en": "Name"},
        "inspection.meal": {"zh": "餐别", "en": "Meal"},
        "inspection.state": {"zh": "状态", "en": "State"},
        "inspection.reversed": {"zh": "已冲正", "en": "reversed"},
        "inspection.refused": {"zh": "已拒绝", "en": "refused"},
        "inspection.accepted": {"zh": "已受理", "en": "accepted"},
        "inspection.back": {"zh": "返回", "en": "Back"},
        "inspection.no_entries": {"zh": "没有对应的消费记录。", "en": "No entries."},
    }
)


@dataclass(frozen=True)
class Filters:
    dates: DateRange
    text_from: str
    text_to: str

    def query(self, **more: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"from": self.text_from, "to": self.text_to}
        base.update({k: v for k, v in more.items() if v not in (None, "")})
        return base


def _default_dates(request: Request) -> tuple[str, str]:
    """The last three months: from the first day of the month two months ago to today."""
    config = request.app.state.config
    today = local_date(int(config.now_ms()), config.zone) or dt.date.today()
    month = today.month - 2
    year = today.year + (month - 1) // 12
    first = dt.date(year, (month - 1) % 12 + 1, 1)
    return first.isoformat(), today.isoformat()


def _filters(request: Request, date_from: str, date_to: str) -> tuple[Filters | None, str]:
    for name, value in request.query_params.multi_items():
        if _CONTROL.search(value):
            # No id holds one, and PostgreSQL refuses NUL in any text it is given.
            return None, f"{name}: control characters are not allowed"
    default_from, default_to = _default_dates(request)
    text_from, text_to = date_from or default_from, date_to or default_to
    try:
        dates = DateRange(
            parse_date(text_from, "from"), parse_date(text_to, "to"), request.app.state.config.zone
        )
        if (dates.last - dates.first).days > 3 * 366:
            raise LocalTimeError("at most three years at a time")
        inspection.check_dates(dates.first, dates.last)
    except (LocalTimeError, inspection.InspectionError) as exc:
        return None, str(exc)
    return Filters(dates, text_from, text_to), ""


def _period(f: Filters) -> dict[str, str]:
    zone = f.dates.zone
    prev_start = inspection.year_before_ms(f.dates.start_ms, zone)
    prev_end = inspection.year_before_ms(f.dates.end_ms, zone)
    last = local_date(prev_end - 1, zone)
    first = local_date(prev_start, zone)
    return {
        "first": f.dates.first.isoformat(),
        "last": f.dates.last.isoformat(),
        "pfirst": "" if first is None else first.isoformat(),
        "plast": "" if last is None else last.isoformat(),
        "zone": str(zone),
    }


def _bad(request: Request, user: User, template: str, error: str, **context: Any) -> Response:
    return render(request, template, user=user, error=error, status_code=400, **context)


_RESULTS: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
_RESULTS_LOCK = threading.Lock()
RESULTS_KEPT = 32


def _stamp(conn: Connection) -> tuple[Any, ...]:
    """What the inspection figures depend on, read cheaply: which database, every
    terminal's acknowledged seq and last contact (entries arrive only by a terminal's
    upload or a county command that moves them too), and when the directory was last
    imported. Equal stamps, equal figures. Rows written into the entries table behind the
    county's back are seen at the next sync of any terminal."""
    t = terminals.c
    seqs = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(t.acked_seq), 0),
            func.max(t.last_seen_ms),
            func.max(t.registered_ms),
        )
    ).one()
    imported = conn.execute(
        select(
            select(func.max(agencies.c.imported_ms)).scalar_subquery(),
            select(func.max(canteens.c.imported_ms)).scalar_subquery(),
        )
    ).one()
    return (conn.engine.url.render_as_string(hide_password=True), *seqs, *imported)


def _seen(conn: Connection, key: tuple[Any, ...]) -> Any:
    """What ``cached`` holds for ``key`` while the county is unchanged, else None."""
    full = (*key, _stamp(conn))
    with _RESULTS_LOCK:
        return _RESULTS.get(full)


def _batches_seen(
    conn: Connection,
    f: Filters,
    canteen: str,
    unit: str,
    min_people: int,
    window_min: int,
    year: str,
) -> list[inspection.Batch] | None:
    """The batches the batches page found for this drill-down's period and options, if
    it still holds them: for these canteen and unit filters, or for none (then this
    canteen's and unit's: batches are grouped per canteen and unit, so filtering them
    here finds what the filtered query would). None when neither was seen: a drill-down
    from the page the officer just read answers at once instead of finding its batches
    again (a year of a 5-million-entry county: some 9 s on a loaded 2-core machine)."""
    which = 1 if year == "before" else 0
    for c, u in ((canteen, unit), ("", "")):
        found = _seen(conn, ("batches", f.dates, c, u, min_people, window_min))
        if found is not None:
            return [
                b
                for b in found[which]
                if (not canteen or b.canteen == canteen) and (not unit or b.unit == unit)
            ]
    return None


def on_both_cores(engine: Engine, *jobs: Callable[[Connection], Any]) -> list[Any]:
    """Each of ``jobs`` run with a connection of its own (a read transaction each), at
    the same time, and their results in order.

    A year's figures and the year before's, or the batch finder and the other anomaly
    finders, are independent queries of a few hundred milliseconds each; one after the
    other they kept an officer waiting past a second on this 2-core machine, side by
    side they take the longer of the two (docs/console.md "Speed"). The entries a sync
    adds between the two snapshots are today's, which no year-before figure holds."""

    def run(job: Callable[[Connection], Any]) -> Any:
        with engine.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                # The two cores are taken by the jobs themselves: PostgreSQL's own
                # parallel workers would only add their overhead (0.85 s against 0.60 s
                # for a year's meals alone, measured on this machine).
                conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
            return job(conn)

    if len(jobs) < 2:
        return [run(job) for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(jobs), "console-query") as pool:
        return [f.result() for f in [pool.submit(run, job) for job in jobs]]


def cached(conn: Connection, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """``make()``, or what it gave before for the same ``key`` while the county's entries
    and directory are unchanged (``_stamp``): an officer opening the same period every
    morning, or going back from the entries to the figures, waits once."""
    full = (*key, _stamp(conn))
    with _RESULTS_LOCK:
        if full in _RESULTS:
            _RESULTS.move_to_end(full)
            return _RESULTS[full]
    value = make()
    with _RESULTS_LOCK:
        _RESULTS[full] = value
        while len(_RESULTS) > RESULTS_KEPT:
            _RESULTS.popitem(last=False)
    return value


@functools.lru_cache(maxsize=64)
def _chart(
    kind: str,
    labels: tuple[str, ...],
    series: tuple[tuple[str, tuple[float | None, ...], bool], ...],
    title: str,
    money: bool,
) -> str:
    """A chart as a data: URI, cached: a page shown again draws nothing."""
    made = [charts.Series(name, values, dashed) for name, values, dashed in series]
    draw = charts.line_chart if kind == "line" else charts.bar_chart
    fmt = charts.yuan_ticks if money else None
    return charts.data_uri(draw(labels, made, title=title, y_format=fmt))


# -- reception batches -------------------------------------------------------------------


SHOWN_BATCHES = 300


@router.get("/console/inspection")
def batches_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    canteen: Annotated[str, Query(max_length=64)] = "",
    unit: Annotated[str, Query(max_length=64)] = "",
    min_people: Annotated[int, Query(ge=2, le=10_000)] = inspection.DEFAULT_MIN_PEOPLE,
    window_min: Annotated[int, Query(ge=1, le=1440)] = inspection.DEFAULT_WINDOW_MIN,
) -> Response:
    f, error = _filters(request, date_from, date_to)
    form = {
        "date_from": date_from,
        "date_to": date_to,
        "canteen": canteen,
        "unit": unit,
        "min_people": min_people,
        "window_min": window_min,
    }
    if f is None:
        return _bad(request, user, "inspection_batches.html", error, form=form, f=None)
    zone = f.dates.zone
    opts = {"min_people": min_people, "window_min": window_min}
    with request.app.state.engine.connect() as conn:
        directory = load_directory(conn)
        found = cached(
            conn,
            ("batches", f.dates, canteen, unit, min_people, window_min),
            lambda: tuple(
                on_both_cores(
                    request.app.state.engine,
                    *(
                        functools.partial(
                            inspection.find_batches,
                            start_ms=lo,
                            end_ms=hi,
                            canteen=canteen or None,
                            unit=unit or None,
                            min_people=min_people,
                            window_min=window_min,
                        )
                        for lo, hi in inspection.year_and_year_before(
                            f.dates.start_ms, f.dates.end_ms, zone
                        )
                    ),
                )
            ),
        )
        summaries = {
            by: inspection.batch_summary(
                conn,
                f.dates.start_ms,
                f.dates.end_ms,
                by=by,
                zone=zone,
                directory=directory,
                found=found,
            )
            for by in inspection.BY_BATCH
        }
    t = i18n.translator(str(getattr(request.state, "lang", i18n.DEFAULT_LANGUAGE)))
    months = summaries["month"].rows
    chart = _chart(
        "bar",
        tuple(r.key or "" for r in months),
        (
            (t("inspection.this_period"), tuple(float(r.count) for r in months), False),
            (t("inspection.year_before"), tuple(float(r.previous_count) for r in months), False),
        ),
        t("inspection.chart_batches"),
        False,
    )
    base = f.query(canteen=canteen, unit=unit, **opts)

    def link(**more: Any) -> str:
        return "/console/inspection/entries?" + urlencode(
            {"what": "batches", **base, **{k: v for k, v in more.items() if v}}
        )

    canteen_names = {c: x.name for c, x in directory.canteens.items()}
    return render(
        request,
        "inspection_batches.html",
        user=user,
        f=f,
        form=form,
        error="",
        period=_period(f),
        summaries=summaries,
        total=summaries["canteen"].total,
        batches=summaries["canteen"].total.batches[:SHOWN_BATCHES],
        shown=SHOWN_BATCHES,
        chart=chart,
        link=link,
        keys_link=_keys_link,
        canteen_names=canteen_names,
        agency_name=directory.name_of,
        canteens=sorted(directory.canteens),
    )


def _keys_link(keys: Sequence[tuple[str, int]]) -> str:
    return "/console/inspection/entries?" + urlencode(
        {"keys": ",".join(f"{t}:{s}" for t, s in keys)}
    )


# -- spending ----------------------------------------------------------------------------


@router.get("/console/inspection/spending")
def spending_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    by: Annotated[str, Query(pattern="^(agency|township)$")] = "township",
    canteen: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    f, error = _filters(request, date_from, date_to)
    form = {"date_from": date_from, "date_to": date_to, "by": by, "canteen": canteen}
    if f is None:
        return _bad(request, user, "inspection_spending.html", error, form=form, f=None)
    with request.app.state.engine.connect() as conn:
        directory = load_directory(conn)
        found = cached(
            conn,
            ("spending", f.dates, by, canteen),
            lambda: inspection.spending(
                conn,
                f.dates.start_ms,
                f.dates.end_ms,
                by=by,
                zone=f.dates.zone,
                directory=directory,
                canteen=canteen or None,
            ),
        )
    t = i18n.translator(str(getattr(request.state, "lang", i18n.DEFAULT_LANGUAGE)))
    months = found.month_totals
    chart = _chart(
        "line",
        tuple(m.month or "" for m in months),
        (
            (t("inspection.this_period"), tuple(float(m.net_fen) for m in months), False),
            (t("inspection.year_before"), tuple(float(m.previous_net_fen) for m in months), True),
        ),
        t("inspection.chart_spending"),
        True,
    )
    base = f.query(by=by, canteen=canteen)

    def link(
        group: str | None, month: str | None = None, before: bool = False, every: bool = False
    ) -> str:
        """The entries behind a figure: of ``group`` (every group with ``every``), in
        ``month`` (the whole period when None), of the year before with ``before``."""
        more = {"group": "" if every else NO_GROUP if group is None else group}
        more["month"] = month or ""
        if before:
            more["year"] = "before"
        return "/console/inspection/entries?" + urlencode(
            {"what": "spending", **base, **{k: v for k, v in more.items() if v}}
        )

    return render(
        request,
        "inspection_spending.html",
        user=user,
        f=f,
        form=form,
        error="",
        period=_period(f),
        found=found,
        chart=chart,
        link=link,
        canteens=sorted(directory.canteens),
    )


# -- anomalies ---------------------------------------------------------------------------


@router.get("/console/inspection/anomalies")
def anomalies_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    repeat_batches: Annotated[int, Query(ge=2, le=1000)] = inspection.DEFAULT_REPEAT_BATCHES,
    repeat_days: Annotated[int, Query(ge=1, le=366)] = inspection.DEFAULT_REPEAT_DAYS,
) -> Response:
    f, error = _filters(request, date_from, date_to)
    form = {
        "date_from": date_from,
        "date_to": date_to,
        "repeat_batches": repeat_batches,
        "repeat_days": repeat_days,
    }
    if f is None:
        return _bad(request, user, "inspection_anomalies.html", error, form=form, f=None)
    config = request.app.state.config
    data: Path | None = config.data
    holidays = None
    holidays_error = ""
    if data is not None and (Path(data) / inspection.HOLIDAYS_FILE).is_file():
        try:
            holidays = inspection.read_holidays(Path(data) / inspection.HOLIDAYS_FILE)
        except inspection.InspectionError as exc:
            holidays_error = str(exc)
    zone = f.dates.zone
    lo, hi = f.dates.start_ms, f.dates.end_ms
    with request.app.state.engine.connect() as conn:
        directory = load_directory(conn)
        if data is not None:
            ids = inspection.canteens_seen(conn, lo, hi, zone)
            windows = inspection.published_windows(data, ids)
        else:
            windows = inspection.default_windows()
        frozen_windows = tuple(sorted(windows.items(), key=lambda kv: kv[0] or ""))

        def the_rest(c: Connection) -> tuple[Any, ...]:
            return (
                inspection.find_multi_canteen_days(c, lo, hi, zone=zone),
                inspection.find_off_hours(c, lo, hi, zone=zone, windows=windows),
                inspection.find_holiday_sales(c, lo, hi, zone=zone, holidays=holidays)
                if holidays is not None
                else None,
            )

        def find() -> tuple[Any, ...]:
            # The repeated batches (the batch finder over the period) beside the rest.
            repeats, rest = on_both_cores(
                request.app.state.engine,
                functools.partial(
                    inspection.find_repeat_batches,
                    start_ms=lo,
                    end_ms=hi,
                    min_batches=repeat_batches,
                    days=repeat_days,
                ),
                the_rest,
            )
            return (repeats, *rest)

        key = ("anomalies", f.dates, repeat_batches, repeat_days, frozen_windows, holidays)
        repeats, multi, off, on_holidays = cached(conn, key, find)
    return render(
        request,
        "inspection_anomalies.html",
        user=user,
        f=f,
        form=form,
        error="",
        period=_period(f),
        repeats=repeats,
        multi=multi,
        off=off,
        holidays=on_holidays,
        holidays_error=holidays_error,
        keys_link=_keys_link,
        agency_name=directory.name_of,
        canteen_names={c: x.name for c, x in directory.canteens.items()},
    )


# -- the entries behind a number ---------------------------------------------------------


def _parse_keys(text: str) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for part in text.split(","):
        if _CONTROL.search(part):
            raise ValueError("control characters are not allowed")
        terminal, sep, seq = part.strip().rpartition(":")
        if not sep or not terminal or not seq.isdigit() or len(seq) > 18:
            raise ValueError(f"{part[:40]!r} is not TERMINAL:SEQ")
        keys.append((terminal, int(seq)))
    if len(keys) > MAX_KEYS:
        raise ValueError(f"more than {MAX_KEYS} entries at once")
    return keys


@router.get("/console/inspection/entries")
def entries_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    what: Annotated[str, Query(pattern="^(batches|spending|keys)$")] = "keys",
    keys: Annotated[str, Query(max_length=200_000)] = "",
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    canteen: Annotated[str, Query(max_length=64)] = "",
    unit: Annotated[str, Query(max_length=64)] = "",
    month: Annotated[str, Query(pattern="^([0-9]{4}-[0-9]{2})?$")] = "",
    year: Annotated[str, Query(pattern="^(now|before)?$")] = "",
    by: Annotated[str, Query(pattern="^(agency|township)?$")] = "",
    group: Annotated[str, Query(max_length=64)] = "",
    min_people: Annotated[int, Query(ge=2, le=10_000)] = inspection.DEFAULT_MIN_PEOPLE,
    window_min: Annotated[int, Query(ge=1, le=1440)] = inspection.DEFAULT_WINDOW_MIN,
) -> Response:
    config = request.app.state.config
    zone = config.zone
    error = ""
    found: list[tuple[str, int]] = []
    if what == "keys":
        try:
            found = _parse_keys(keys) if keys else []
        except ValueError as exc:
            error = str(exc)
    else:
        f, error = _filters(request, date_from, date_to)
        if f is not None:
            lo, hi = f.dates.start_ms, f.dates.end_ms
            if year == "before":
                lo, hi = inspection.year_before_ms(lo, zone), inspection.year_before_ms(hi, zone)
    if error:
        return render(
            request, "inspection_entries.html", user=user, error=error, rows=[], total=0,
            limit=ENTRY_LIMIT, status_code=400,
        )  # fmt: skip
    with request.app.state.engine.connect() as conn:
        directory = load_directory(conn)
        if what == "batches":
            assert f is not None  # a batches drill-down has its period (error otherwise)
            batches = _batches_seen(conn, f, canteen, unit, min_people, window_min, year)
            if batches is None:  # found once, then remembered as the pages' figures are
                batches = cached(
                    conn,
                    ("batch entries", f.dates, canteen, unit, min_people, window_min, year),
                    lambda: inspection.find_batches(
                        conn,
                        lo,
                        hi,
                        min_people=min_people,
                        window_min=window_min,
                        canteen=canteen or None,
                        unit=unit or None,
                    ),
                )
            if month:
                batches = [b for b in batches if inspection.month_of(b.start_ms, zone) == month]
            found = [k for b in batches for k in b.entries]
        elif what == "spending":
            if month:
                bounds = [(a, b) for m, a, b in inspection.month_bounds(lo, hi, zone) if m == month]
                if bounds:
                    lo, hi = bounds[0]
                else:
                    lo = hi
            chosen = None if group == NO_GROUP else group
            which = inspection.group_filter(directory, by or "agency", chosen) if group else {}
            found = inspection.spending_entries(
                conn, lo, hi, canteen=canteen or None, limit=ENTRY_LIMIT + 1, **which
            )
        total = len(found)
        rows = inspection.entry_rows(conn, found[:ENTRY_LIMIT], zone=zone, directory=directory)
    return render(
        request, "inspection_entries.html", user=user, error="", rows=rows, total=total,
        limit=ENTRY_LIMIT,
    )  # fmt: skip
