"""The home page, /console: who is logged in, four figures of the county today, and a
card for each page this user may open (the NAV of every module in PAGES)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import Connection, func, select

from county.console import auth, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render
from county.db.schema import alarms, conflicts, terminals
from county.localtime import local_date

router = APIRouter()

NAV = [NavItem("/console", "nav.home", order=0)]

i18n.register(
    {
        "home.title": {"zh": "首页", "en": "Home"},
        "home.welcome": {"zh": "{name}，您好", "en": "Welcome, {name}"},
        "home.role": {"zh": "角色：{role}", "en": "Role: {role}"},
        "home.today": {"zh": "今日 {day}", "en": "Today, {day}"},
        "home.terminals": {"zh": "在用终端", "en": "Terminals in service"},
        "home.silent": {"zh": "24 小时未联系", "en": "Silent for 24 hours"},
        "home.alarms": {"zh": "告警", "en": "Alarms"},
        "home.conflicts": {"zh": "待复核冲突", "en": "Conflicts to review"},
        "home.pages": {"zh": "功能", "en": "Pages"},
        "home.no_pages": {
            "zh": "暂无其他页面。",
            "en": "No other pages yet.",
        },
    }
)

SILENT_MS = 24 * 3_600_000


def figures(conn: Connection, now_ms: int) -> dict[str, int]:
    """The home page's figures: terminals in service, those silent for 24 hours, alarms,
    standing conflicts."""
    live = terminals.c.retired_ms.is_(None)
    count = func.count()
    in_service = conn.execute(select(count).select_from(terminals).where(live)).scalar_one()
    silent = conn.execute(
        select(count)
        .select_from(terminals)
        .where(live)
        .where(
            (terminals.c.last_seen_ms.is_(None)) | (terminals.c.last_seen_ms < now_ms - SILENT_MS)
        )
    ).scalar_one()
    alarm_count = conn.execute(select(count).select_from(alarms)).scalar_one()
    standing = conn.execute(
        select(count).select_from(conflicts).where(conflicts.c.withdrawn_ms.is_(None))
    ).scalar_one()
    return {
        "terminals": int(in_service),
        "silent": int(silent),
        "alarms": int(alarm_count),
        "conflicts": int(standing),
    }


@router.get("/console")
def home(request: Request, user: Annotated[User, Depends(auth.require_user)]) -> Response:
    config = request.app.state.config
    now = config.now_ms()
    with request.app.state.engine.connect() as conn:
        numbers: dict[str, Any] = figures(conn, now)
    day = local_date(now, config.zone)
    return render(request, "home.html", user=user, figures=numbers, today=str(day or ""))
