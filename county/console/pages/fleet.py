"""The fleet in the console, /console/fleet (issue 16; docs/fleet.md): one row per terminal.

Every role reads it (nothing here changes anything): a chart and figures of the fleet's
states, the table sorted by any column (a link per heading) and filtered by state
(silent, clock, behind on updates, alarms, ...), canteen and retired terminals, the
silent and the out-of-tolerance first; and a page per terminal, /console/fleet/ID, with
its figures, its recent syncs and its alarms. The queries are county/fleet.py's, which
the command ``canteen-county fleet`` prints too; this module only renders.
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from county import fleet
from county.console import auth, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render
from county.db.schema import terminals

router = APIRouter()

NAV = [NavItem("/console/fleet", "fleet.nav", "fleet.about", order=20)]
PATH = "/console/fleet"

# The table's columns, in order: (sort key or "" for none, i18n key of the heading).
COLUMNS = (
    ("terminal", "fleet.col.terminal"),
    ("canteen", "fleet.col.canteen"),
    ("attention", "fleet.col.state"),
    ("last_seen", "fleet.col.last_seen"),
    ("backlog", "fleet.col.backlog"),
    ("software", "fleet.col.software"),
    ("update", "fleet.col.update"),
    ("lists_age", "fleet.col.lists_age"),
    ("clock", "fleet.col.clock"),
    ("alarms", "fleet.col.alarms"),
)
# The states the chart counts, in the order shown.
CHARTED = (fleet.SILENT, fleet.CLOCK, fleet.BEHIND, fleet.ALARMS, fleet.OK)
_COLOURS = {
    fleet.SILENT: "#c0392b",
    fleet.CLOCK: "#d68910",
    fleet.BEHIND: "#2874a6",
    fleet.ALARMS: "#7d3c98",
    fleet.OK: "#239b56",
}

i18n.register(
    {
        "fleet.nav": {"zh": "终端状态", "en": "Fleet"},
        "fleet.title": {"zh": "终端状态", "en": "Fleet"},
        "fleet.about": {
            "zh": "每台终端一行：失联、时钟超差、更新落后者在前。",
            "en": "One row per terminal: the silent, wrong clocks and those behind first.",
        },
        "fleet.col.terminal": {"zh": "终端", "en": "Terminal"},
        "fleet.col.canteen": {"zh": "食堂", "en": "Canteen"},
        "fleet.col.state": {"zh": "状态", "en": "State"},
        "fleet.col.last_seen": {"zh": "最近联系", "en": "Last seen"},
        "fleet.col.backlog": {"zh": "未上传", "en": "Backlog"},
        "fleet.col.software": {"zh": "软件版本", "en": "Software"},
        "fleet.col.update": {"zh": "更新集", "en": "Update set"},
        "fleet.col.lists_age": {"zh": "名单时效", "en": "Lists age"},
        "fleet.col.clock": {"zh": "时钟偏差", "en": "Clock"},
        "fleet.col.alarms": {"zh": "告警", "en": "Alarms"},
        "fleet.state.silent": {"zh": "失联", "en": "Silent"},
        "fleet.state.clock": {"zh": "时钟超差", "en": "Clock off"},
        "fleet.state.behind": {"zh": "更新落后", "en": "Behind"},
        "fleet.state.alarms": {"zh": "有告警", "en": "Alarms"},
        "fleet.state.ok": {"zh": "正常", "en": "OK"},
        "fleet.state.waiting": {"zh": "待激活", "en": "Not provisioned"},
        "fleet.state.retired": {"zh": "已停用", "en": "Retired"},
        "fleet.filter.state": {"zh": "状态", "en": "State"},
        "fleet.filter.canteen": {"zh": "食堂", "en": "Canteen"},
        "fleet.filter.any": {"zh": "全部", "en": "Any"},
        "fleet.filter.retired": {"zh": "含已停用", "en": "Retired too"},
        "fleet.count": {"zh": "共 {count} 台", "en": "{count} terminals"},
        "fleet.empty": {"zh": "没有符合条件的终端。", "en": "No terminal matches."},
        "fleet.never": {"zh": "从未", "en": "never"},
        "fleet.ago": {"zh": "{age}前", "en": "{age} ago"},
        "fleet.age.s": {"zh": "{n} 秒", "en": "{n} s"},
        "fleet.age.min": {"zh": "{n} 分钟", "en": "{n} min"},
        "fleet.age.h": {"zh": "{n} 小时", "en": "{n} h"},
        "fleet.age.d": {"zh": "{n} 天", "en": "{n} d"},
        "fleet.update.none": {"zh": "未发布", "en": "none published"},
        "fleet.update.unknown": {"zh": "未上报", "en": "not reported"},
        "fleet.update.current": {"zh": "第 {set} 版 · 最新", "en": "set {set} · current"},
        "fleet.update.behind": {
            "zh": "第 {set} 版 · 落后（{parts}）",
            "en": "set {set} · behind ({parts})",
        },
        "fleet.update.county": {"zh": "县级最新第 {set} 版", "en": "the county is at set {set}"},
        "fleet.update.via_medium": {"zh": "经U盘更新", "en": "applied from a USB medium"},
        "fleet.part.settings": {"zh": "设置", "en": "settings"},
        "fleet.part.trust": {"zh": "信任名单", "en": "trust list"},
        "fleet.part.roster": {"zh": "卡名单", "en": "roster"},
        "fleet.part.directory": {"zh": "单位目录", "en": "directory"},
        "fleet.part.revocations": {"zh": "吊销名单", "en": "revocations"},
        "fleet.chart.title": {"zh": "终端状态分布", "en": "Fleet state"},
        "fleet.chart.caption": {
            "zh": "各状态终端数（一台终端可同时计入多项）",
            "en": "Terminals in each state (one may count under several)",
        },
        "fleet.rules": {
            "zh": "失联：服务时段（{start}–{end}）内超过 {minutes} 分钟未联系；"
            "时钟超差：偏差超过 {tolerance} 秒；更新落后：所用内容与县级最新发布不同。",
            "en": "Silent: no contact for over {minutes} minutes of service hours "
            "({start}–{end}); clock off: more than {tolerance} s either way; behind: the "
            "content it runs differs from the county's newest.",
        },
        "fleet.back": {"zh": "返回终端列表", "en": "Back to the fleet"},
        "fleet.page.title": {"zh": "终端 {terminal}", "en": "Terminal {terminal}"},
        "fleet.page.registered": {"zh": "登记时间", "en": "Registered"},
        "fleet.page.provisioned": {"zh": "激活时间", "en": "Provisioned"},
        "fleet.page.acked": {"zh": "已确认流水号", "en": "Acknowledged up to"},
        "fleet.page.status_at": {"zh": "状态上报时间", "en": "Status reported"},
        "fleet.page.lists": {"zh": "名单", "en": "Lists"},
        "fleet.page.list_line": {
            "zh": "{name}：第 {version} 版，签发于 {issued}",
            "en": "{name}: version {version}, vouched for at {issued}",
        },
        "fleet.page.retired": {
            "zh": "已于 {when} 停用：{reason}",
            "en": "Retired at {when}: {reason}",
        },
        "fleet.page.replaced_by": {"zh": "接替终端：{terminal}", "en": "Replaced by {terminal}"},
        "fleet.page.syncs": {"zh": "同步记录", "en": "Syncs"},
        "fleet.page.syncs_note": {
            "zh": "最近 {keep} 次写入数据的上传；空闲时每 10 分钟记一次心跳。",
            "en": "The newest {keep} uploads that wrote something; an idle terminal's "
            "heartbeat every 10 minutes.",
        },
        "fleet.page.no_syncs": {"zh": "尚无同步记录。", "en": "No sync recorded yet."},
        "fleet.page.alarms": {"zh": "告警", "en": "Alarms"},
        "fleet.page.no_alarms": {"zh": "无告警。", "en": "No alarm."},
        "fleet.sync.time": {"zh": "时间", "en": "Time"},
        "fleet.sync.outcome": {"zh": "结果", "en": "Outcome"},
        "fleet.sync.accepted": {"zh": "接收", "en": "Accepted"},
        "fleet.sync.duplicates": {"zh": "重复", "en": "Duplicates"},
        "fleet.sync.acked": {"zh": "确认至", "en": "Acked to"},
        "fleet.sync.last_seq": {"zh": "终端末笔", "en": "Terminal's last"},
        "fleet.sync.alarm": {"zh": "告警", "en": "Alarm"},
        "fleet.outcome.ok": {"zh": "成功", "en": "ok"},
        "fleet.outcome.gap": {"zh": "缺段", "en": "gap"},
        "fleet.outcome.refused": {"zh": "拒收", "en": "refused"},
        "fleet.alarm.kind": {"zh": "类型", "en": "Kind"},
        "fleet.alarm.seq": {"zh": "流水号", "en": "Entry"},
        "fleet.alarm.problem": {"zh": "问题", "en": "Problem"},
        "fleet.alarm.first": {"zh": "首次", "en": "First"},
        "fleet.alarm.last": {"zh": "最近", "en": "Last"},
        "fleet.alarm.times": {"zh": "次数", "en": "Times"},
    }
)


def age(t: i18n.Translator, seconds: int | None) -> str:
    """An age in words of the page's language: 45 秒, 12 min, 3 h, 2 d."""
    if seconds is None:
        return ""
    if seconds < 90:
        return t("fleet.age.s", n=seconds)
    if seconds < 90 * 60:
        return t("fleet.age.min", n=seconds // 60)
    if seconds < 36 * 3600:
        return t("fleet.age.h", n=seconds // 3600)
    return t("fleet.age.d", n=seconds // 86400)


def update_text(t: i18n.Translator, update: dict[str, Any]) -> str:
    state = update["state"]
    if state in ("none", "unknown"):
        return t(f"fleet.update.{state}")
    if state == "behind":
        parts = ", ".join(t(f"fleet.part.{p}") for p in update["differs"])
        return t("fleet.update.behind", set=update["set"], parts=parts)
    return t("fleet.update.current", set=update["set"])


def state_chart(t: i18n.Translator, counts: dict[str, int]) -> str:
    """Horizontal bars of the fleet's states as inline SVG (matplotlib; text stays text,
    so the browser draws Chinese with its own fonts)."""
    labels = tuple(t(f"fleet.state.{s}") for s in CHARTED)
    values = tuple(counts.get(s, 0) for s in CHARTED)
    return _state_svg(labels, values, t("fleet.chart.title"))


@functools.lru_cache(maxsize=32)
def _state_svg(labels: tuple[str, ...], values: tuple[int, ...], title: str) -> str:
    """The chart itself, cached: drawing it costs about 0.3 s of CPU (1 s and more on a
    loaded 2-core machine, bench/console.py), and a fleet page shown again with the same
    counts draws nothing."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # Text stays text (the browser draws Chinese with its own fonts); measured with a CJK
    # font when one is installed (Debian's fonts-noto-cjk).
    fonts = ["Noto Sans CJK SC", "WenQuanYi Micro Hei", "DejaVu Sans"]
    with (
        warnings.catch_warnings(),
        plt.rc_context({"svg.fonttype": "none", "font.size": 10, "font.sans-serif": fonts}),
    ):
        # Without a CJK font matplotlib warns for each glyph; the browser draws them anyway.
        warnings.simplefilter("ignore", UserWarning)
        fig, ax = plt.subplots(figsize=(4.6, 1.9))
        try:
            bars = ax.barh(
                list(labels[::-1]), list(values[::-1]), color=[_COLOURS[s] for s in CHARTED][::-1]
            )
            ax.bar_label(bars, padding=3)
            ax.set_xlim(0, max([*values, 1]) * 1.2)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            ax.set_title(title, loc="left", fontsize=11)
            fig.tight_layout()
            out = io.StringIO()
            fig.savefig(out, format="svg")
        finally:
            plt.close(fig)
    svg = out.getvalue()
    return svg[svg.index("<svg") :]  # inline: no XML declaration or doctype


def _canteens(conn: Any) -> list[str]:
    return [c for (c,) in conn.execute(select(terminals.c.canteen).distinct().order_by("canteen"))]


@router.get(PATH)
def fleet_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    sort: Annotated[str, Query(max_length=20)] = "attention",
    desc: Annotated[int, Query(ge=0, le=1)] = 0,
    state: Annotated[str, Query(max_length=20)] = "",
    canteen: Annotated[str, Query(max_length=64)] = "",
    retired: Annotated[int, Query(ge=0, le=1)] = 0,
) -> Response:
    config = request.app.state.config
    now = config.now_ms()
    rules = fleet.FleetRules(zone=config.zone)
    try:
        with request.app.state.engine.connect() as conn:
            rows = fleet.fleet(
                conn,
                config.data,
                now,
                rules,
                canteen=canteen or None,
                only=[state] if state else [],
                retired=bool(retired),
                sort=sort,
                descending=bool(desc),
            )
            every = rows if not (state or canteen) else fleet.fleet(conn, config.data, now, rules)
            canteen_choices = _canteens(conn)
    except fleet.FleetError as exc:
        raise HTTPException(400, str(exc)) from None
    t = i18n.translator(getattr(request.state, "lang", i18n.DEFAULT_LANGUAGE))
    counts = fleet.state_counts(every)
    kept = {"state": state, "canteen": canteen, "retired": retired or ""}
    kept = {k: v for k, v in kept.items() if v}

    def sort_url(key: str) -> str:
        flip = key == sort and not desc
        return PATH + "?" + urlencode({**kept, "sort": key, **({"desc": 1} if flip else {})})

    for row in rows:
        seen = row["last_seen_ms"]
        row["ago"] = (
            t("fleet.ago", age=age(t, max(0, (now - seen) // 1000)))
            if seen is not None
            else t("fleet.never")
        )
        row["update_text"] = update_text(t, row["update"])
        row["lists_age_text"] = age(t, row["lists_age_s"])
    return render(
        request, "fleet.html", user=user, rows=rows, counts=counts, charted=CHARTED,
        chart=state_chart(t, counts), columns=COLUMNS, sort=sort, desc=bool(desc),
        sort_url=sort_url, state=state, states=fleet.STATES, canteen=canteen,
        canteens=canteen_choices, retired=bool(retired), rules=rules,
        silent_minutes=rules.silent_after_ms // 60_000,
    )  # fmt: skip


@router.get(PATH + "/{terminal_id}")
def terminal_page(
    request: Request,
    terminal_id: str,
    user: Annotated[User, Depends(auth.require_user)],
) -> Response:
    config = request.app.state.config
    now = config.now_ms()
    rules = fleet.FleetRules(zone=config.zone)
    with request.app.state.engine.connect() as conn:
        page = fleet.terminal_page(conn, config.data, terminal_id[:200], now, rules)
    if page is None:
        raise HTTPException(404, terminal_id[:64])
    t = i18n.translator(getattr(request.state, "lang", i18n.DEFAULT_LANGUAGE))
    row = page["row"]
    seen = row["last_seen_ms"]
    row["ago"] = (
        t("fleet.ago", age=age(t, max(0, (now - seen) // 1000)))
        if seen is not None
        else t("fleet.never")
    )
    row["update_text"] = update_text(t, row["update"])
    row["lists_age_text"] = age(t, row["lists_age_s"])
    return render(
        request, "terminal.html", user=user, row=row, syncs=page["syncs"],
        alarms=page["alarms"], keep=fleet.SYNC_LOG_KEEP,
    )  # fmt: skip
