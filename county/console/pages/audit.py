"""The audit log for the admin, /console/audit: newest first, 50 to a page, filtered by
user, action and local dates (county/console/audit.py holds the queries)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from county.console import audit, auth, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render, translator
from county.localtime import LocalTimeError, midnight_ms, parse_date

router = APIRouter()

NAV = [NavItem("/console/audit", "nav.audit", "audit.about", roles=("admin",), order=90)]
PAGE_SIZE = 50

i18n.register(
    {
        "audit.title": {"zh": "审计日志", "en": "Audit log"},
        "audit.about": {
            "zh": "谁在何时做了什么：登录、退出和每一项修改。",
            "en": "Who did what and when: logins, logouts and every change.",
        },
        "audit.user": {"zh": "用户", "en": "User"},
        "audit.action": {"zh": "操作", "en": "Action"},
        "audit.any": {"zh": "全部", "en": "Any"},
        "audit.from": {"zh": "开始日期", "en": "From"},
        "audit.to": {"zh": "结束日期", "en": "To"},
        "audit.time": {"zh": "时间", "en": "Time"},
        "audit.target": {"zh": "对象", "en": "Target"},
        "audit.detail": {"zh": "详情", "en": "Detail"},
        "audit.count": {"zh": "共 {count} 条", "en": "{count} rows"},
        "audit.empty": {"zh": "没有符合条件的记录。", "en": "No rows match."},
        "audit.act.login": {"zh": "登录", "en": "Logged in"},
        "audit.act.login.failed": {"zh": "登录失败", "en": "Failed login"},
        "audit.act.login.refused": {"zh": "拒绝登录", "en": "Login refused"},
        "audit.act.logout": {"zh": "退出登录", "en": "Logged out"},
        "audit.act.password.change": {"zh": "修改密码", "en": "Changed password"},
        "audit.act.password.failed": {"zh": "修改密码失败", "en": "Password change failed"},
        "audit.act.user.add": {"zh": "添加用户", "en": "Added a user"},
        "audit.act.user.disable": {"zh": "停用用户", "en": "Disabled a user"},
        "audit.act.user.enable": {"zh": "启用用户", "en": "Enabled a user"},
        "audit.act.user.reset": {"zh": "重置密码", "en": "Reset a password"},
        "audit.act.terminal.add": {"zh": "登记终端", "en": "Registered a terminal"},
        "audit.act.terminal.retire": {"zh": "停用终端", "en": "Retired a terminal"},
        "audit.act.terminal.replace": {"zh": "更换终端", "en": "Replaced a terminal"},
        "audit.act.terminal.recover": {"zh": "恢复终端流水", "en": "Recovered a ledger"},
        "audit.act.conflict.withdraw": {"zh": "撤销冲突", "en": "Withdrew a conflict"},
        "audit.act.issuers.import": {"zh": "导入签发方密钥", "en": "Imported issuer keys"},
        "audit.act.publish.settings": {"zh": "发布设置", "en": "Published settings"},
        "audit.act.publish.trust": {"zh": "发布信任列表", "en": "Published the trust list"},
        "audit.act.publish.roster": {"zh": "发布卡名单", "en": "Published the card roster"},
        "audit.act.publish.directory": {"zh": "发布单位目录", "en": "Published the directory"},
        "audit.act.revoke": {"zh": "吊销", "en": "Revoked"},
        "audit.act.rotate": {"zh": "轮换密钥", "en": "Rotated keys"},
        "audit.act.agencies.import": {"zh": "导入单位", "en": "Imported agencies"},
        "audit.act.agencies.publish": {"zh": "发布单位目录", "en": "Published agencies"},
        "audit.act.canteens.import": {"zh": "导入食堂", "en": "Imported canteens"},
        "audit.act.cadres.import": {"zh": "导入干部", "en": "Imported cadres"},
        "audit.bad_date": {
            "zh": "日期无效：{why}",
            "en": "Bad date: {why}",
        },
    }
)


def action_label(t: i18n.Translator, action: str) -> str:
    """A known action in words (the code stays beside it); another page's action as it is
    unless that page registered ``audit.act.<action>``."""
    key = f"audit.act.{action}"
    return t(key) if i18n.known(key) else ""


@router.get("/console/audit")
def audit_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_role("admin"))],
    who: Annotated[str, Query(alias="user", max_length=64)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    date_from: Annotated[str, Query(alias="from", max_length=10)] = "",
    date_to: Annotated[str, Query(alias="to", max_length=10)] = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    config = request.app.state.config
    error = ""
    start_ms = end_ms = None
    try:
        if date_from:
            start_ms = midnight_ms(parse_date(date_from, "from"), config.zone)
        if date_to:
            end_ms = midnight_ms(parse_date(date_to, "to") + dt.timedelta(days=1), config.zone)
        if start_ms is not None and end_ms is not None and start_ms >= end_ms:
            raise LocalTimeError(f"{date_from} > {date_to}")
    except LocalTimeError as exc:
        error = str(exc)
        start_ms = end_ms = None
    f = audit.AuditFilter(user=who or None, action=action or None, start_ms=start_ms, end_ms=end_ms)
    with request.app.state.engine.connect() as conn:
        total = audit.count(conn, f)
        rows = audit.page(conn, f, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        choices = audit.actions(conn)
    base = {"user": who, "action": action, "from": date_from, "to": date_to}
    base = {k: v for k, v in base.items() if v}

    def page_url(n: int) -> str:
        return "/console/audit?" + urlencode({**base, "page": n})

    return render(
        request, "audit.html", user=user, rows=rows, total=total, page=page,
        newer=page_url(page - 1) if page > 1 else "",
        older=page_url(page + 1) if page * PAGE_SIZE < total else "",
        who=who, action=action, date_from=date_from, date_to=date_to, actions=choices,
        error=error, status_code=400 if error else 200,
        action_label=lambda a: action_label(translator(request), a),
    )  # fmt: skip
