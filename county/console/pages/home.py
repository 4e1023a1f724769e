"""The home page, /console: who is logged in, the county's figures that want attention
(silent terminals, clocks, updates, alarms, conflicts), and a card for each page this
user may open (the NAV of every module in PAGES)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import Connection

from county.console import auth, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import nav_items, render
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
        "home.silent": {"zh": "失联终端", "en": "Silent terminals"},
        "home.clock": {"zh": "时钟偏差超限", "en": "Clock out of tolerance"},
        "home.behind": {"zh": "更新未到位", "en": "Behind on updates"},
        "home.alarms": {"zh": "待复核告警", "en": "Alarms to review"},
        "home.conflicts": {"zh": "待复核冲突", "en": "Conflicts to review"},
        "home.pages": {"zh": "功能", "en": "Pages"},
        "home.no_pages": {
            "zh": "暂无其他页面。",
            "en": "No other pages yet.",
        },
    }
)


def figures(conn: Connection, data: Path | None, now_ms: int, zone: Any) -> dict[str, int]:
    """The home page's figures: terminals in service and how many of them are silent,
    have a clock out of tolerance or are behind on updates (county/fleet.py's rules,
    the same as the fleet page), and the alarms and conflicts waiting for review (nobody
    confirmed or withdrew them yet, county/review.py)."""
    from county.fleet import FleetRules, fleet, state_counts

    rows = fleet(conn, data, now_ms, FleetRules(zone=zone))
    states = state_counts(rows)
    from county.review import open_counts

    waiting = open_counts(conn)  # alarms and conflicts nobody reviewed yet
    return {
        "terminals": len(rows),
        "silent": states["silent"],
        "clock": states["clock"],
        "behind": states["behind"],
        "alarms": waiting["alarm"],
        "conflicts": waiting["conflict"],
    }


@router.get("/console")
def home(request: Request, user: Annotated[User, Depends(auth.require_user)]) -> Response:
    config = request.app.state.config
    now = config.now_ms()
    with request.app.state.engine.connect() as conn:
        numbers = figures(conn, config.data, now, config.zone)
    day = local_date(now, config.zone)
    paths = {n.path for n in nav_items() if user.role in n.roles}
    return render(
        request, "home.html", user=user, figures=numbers, today=str(day or ""),
        fleet="/console/fleet" if "/console/fleet" in paths else "",
        review="/console/alarms" if "/console/alarms" in paths else "",
    )  # fmt: skip
