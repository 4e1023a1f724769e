"""The console's users for the admin, /console/users: who may log in, with which role,
and the same actions as ``canteen-county user`` (add, disable, enable, reset). A new or
reset password is shown once, on the page that made it, and never stored readable."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from county.console import audit, auth, i18n, users
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render

router = APIRouter()
PATH = "/console/users"

NAV = [NavItem(PATH, "users.nav", "users.about", roles=("admin",), order=85)]

i18n.register(
    {
        "users.nav": {"zh": "用户管理", "en": "Users"},
        "users.title": {"zh": "用户管理", "en": "Console users"},
        "users.about": {
            "zh": "添加、停用用户，重置密码。",
            "en": "Add and disable users, reset passwords.",
        },
        "users.name": {"zh": "用户名", "en": "Name"},
        "users.role": {"zh": "角色", "en": "Role"},
        "users.created": {"zh": "创建时间", "en": "Created"},
        "users.state": {"zh": "状态", "en": "State"},
        "users.active": {"zh": "正常", "en": "Active"},
        "users.disabled": {"zh": "已停用（{at}）", "en": "Disabled ({at})"},
        "users.one_time": {"zh": "待设置密码", "en": "Must set a password"},
        "users.actions": {"zh": "操作", "en": "Actions"},
        "users.add": {"zh": "添加用户", "en": "Add a user"},
        "users.disable": {"zh": "停用", "en": "Disable"},
        "users.enable": {"zh": "启用", "en": "Enable"},
        "users.reset": {"zh": "重置密码", "en": "Reset password"},
        "users.you": {"zh": "（您）", "en": "(you)"},
        "users.password_once": {
            "zh": "{name} 的一次性密码（只显示这一次，请当面或电话告知本人；首次登录须修改）：",
            "en": "One-time password of {name} (shown this once; tell them in person or by "
            "phone; they must change it at first login):",
        },
        "users.done_disable": {
            "zh": "已停用 {name}，其登录已全部结束。",
            "en": "{name} is disabled; their sessions ended.",
        },
        "users.done_enable": {"zh": "已启用 {name}。", "en": "{name} is enabled."},
        "users.not_self": {
            "zh": "不能停用自己的账号。",
            "en": "You cannot disable your own account.",
        },
        "users.error": {"zh": "未做任何修改：{why}", "en": "Nothing was changed: {why}"},
    }
)


def _page(
    request: Request, user: User, *, message: str = "", password: str = "", error: str = "",
    status_code: int = 200,
) -> Response:  # fmt: skip
    with request.app.state.db.read() as conn:
        rows = users.list_users(conn)
    return render(
        request, "users.html", user=user, rows=rows, roles=tuple(reversed(users.ROLES)),
        message=message,
        password=password, error=error, status_code=status_code,
    )  # fmt: skip


@router.get(PATH)
def users_page(
    request: Request, user: Annotated[User, Depends(auth.require_role("admin"))]
) -> Response:
    return _page(request, user)


def _admin(user: User) -> User:
    if user.role != "admin":
        raise auth.Forbidden()
    return user


@router.post(PATH + "/add")
def add(
    request: Request,
    user: Annotated[User, Depends(auth.check_csrf)],
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    _admin(user)
    t = i18n.translator(str(request.state.lang))
    now = request.app.state.config.now_ms()
    try:
        with request.app.state.db.write() as conn:
            password = users.add_user(conn, name.strip(), role, now)
            audit.record(
                conn, user=user.name, action="user.add", target=name.strip(),
                detail=f"role {role}", at_ms=now,
            )  # fmt: skip
    except users.UserError as exc:
        return _page(request, user, error=t("users.error", why=str(exc)), status_code=400)
    return _page(
        request, user, message=t("users.password_once", name=name.strip()), password=password
    )


@router.post(PATH + "/{name}/{action}")
def act(
    request: Request,
    name: str,
    action: str,
    user: Annotated[User, Depends(auth.check_csrf)],
) -> Response:
    _admin(user)
    t = i18n.translator(str(request.state.lang))
    now = request.app.state.config.now_ms()
    if action not in ("disable", "enable", "reset"):
        return _page(request, user, error=t("error.not_found"), status_code=404)
    if action == "disable" and name == user.name:
        return _page(request, user, error=t("users.not_self"), status_code=400)
    password = ""
    try:
        with request.app.state.db.write() as conn:
            if action == "disable":
                changed = users.disable_user(conn, name, now)
            elif action == "enable":
                changed = users.enable_user(conn, name)
            else:
                password = users.reset_user(conn, name)
                changed = True
            if changed:
                audit.record(conn, user=user.name, action=f"user.{action}", target=name, at_ms=now)
    except users.UserError as exc:
        return _page(request, user, error=t("users.error", why=str(exc)), status_code=400)
    if password:
        return _page(request, user, message=t("users.password_once", name=name), password=password)
    return _page(request, user, message=t(f"users.done_{action}", name=name))
