"""Logging in and out, and changing one's password: /console/login, /console/logout,
/console/password. Open to every role (an inspector too changes their own password)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from county.console import audit, auth, i18n, users
from county.console.auth import User
from county.console.render import render

router = APIRouter()

i18n.register(
    {
        "login.title": {"zh": "登录", "en": "Log in"},
        "login.name": {"zh": "用户名", "en": "User name"},
        "login.password": {"zh": "密码", "en": "Password"},
        "login.submit": {"zh": "登录", "en": "Log in"},
        "login.wrong": {"zh": "用户名或密码错误。", "en": "Wrong user name or password."},
        "login.locked": {
            "zh": "该用户登录失败次数过多，请 {minutes} 分钟后再试。",
            "en": "Too many failed logins for this name; try again in {minutes} minutes.",
        },
        "login.disabled": {
            "zh": "该账号已停用，请联系县信息中心。",
            "en": "This account is disabled; ask county IT.",
        },
        "login.expired": {
            "zh": "登录已过期，请重新登录。",
            "en": "Your session has expired; please log in again.",
        },
        "login.required": {"zh": "请先登录。", "en": "Please log in first."},
        "login.logged_out": {"zh": "您已退出登录。", "en": "You have logged out."},
        "login.changed": {
            "zh": "密码已修改，请用新密码登录。",
            "en": "Your password was changed; log in with the new one.",
        },
        "login.hint": {
            "zh": "账号由县信息中心用 canteen-county user add 创建。",
            "en": "County IT creates accounts with canteen-county user add.",
        },
        "password.title": {"zh": "修改密码", "en": "Change password"},
        "password.first": {
            "zh": "您正在使用一次性密码，请先设置自己的新密码。",
            "en": "You logged in with a one-time password: choose your own password first.",
        },
        "password.current": {"zh": "当前密码", "en": "Current password"},
        "password.new": {"zh": "新密码", "en": "New password"},
        "password.repeat": {"zh": "再次输入新密码", "en": "New password again"},
        "password.rule": {
            "zh": "至少 10 个字符，不能与用户名相同。",
            "en": "At least 10 characters, not your user name.",
        },
        "password.submit": {"zh": "修改密码", "en": "Change password"},
        "password.wrong_current": {
            "zh": "当前密码不正确，密码未修改。",
            "en": "The current password is wrong; nothing was changed.",
        },
        "password.mismatch": {
            "zh": "两次输入的新密码不一致，密码未修改。",
            "en": "The two new passwords differ; nothing was changed.",
        },
        "password.same": {
            "zh": "新密码不能与当前密码相同。",
            "en": "The new password must differ from the current one.",
        },
        "password.too_short": {
            "zh": "新密码太短（至少 10 个字符）。",
            "en": "The new password is too short (at least 10 characters).",
        },
        "password.too_long": {
            "zh": "新密码太长（最多 256 个字符）。",
            "en": "The new password is too long (at most 256 characters).",
        },
        "password.is_name": {
            "zh": "新密码不能是用户名。",
            "en": "The new password cannot be your user name.",
        },
        "password.too_simple": {
            "zh": "新密码过于简单。",
            "en": "The new password is too simple.",
        },
    }
)


def _safe_next(target: str | None) -> str:
    """Where to go after the login: a console path of this site, else the home page."""
    if not target:
        return "/console"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console") or "\\" in target:
        return "/console"
    if parts.path.startswith(("/console/login", "/console/logout")):
        return "/console"
    return target


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _login_page(
    request: Request, *, message: str = "", error: str = "", next_url: str = "", name: str = "",
    status_code: int = 200,
) -> Response:  # fmt: skip
    token = request.cookies.get(auth.LOGIN_COOKIE) or auth.new_token()
    if len(token) > 100:
        token = auth.new_token()
    response = render(
        request, "login.html", message=message, error=error, next_url=_safe_next(next_url),
        name=name, login_csrf=token, status_code=status_code,
    )  # fmt: skip
    response.set_cookie(
        auth.LOGIN_COOKIE, token, path="/console/login", httponly=True, samesite="strict",
        secure=auth.secure(request),
    )  # fmt: skip
    return response


MESSAGES = {
    "expired": "login.expired",
    "required": "login.required",
    "logged_out": "login.logged_out",
    "changed": "login.changed",
}


@router.get("/console/login")
def login_form(request: Request, why: str = "", next: str = "") -> Response:
    if auth.current_session(request) is not None and not why:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, message=MESSAGES.get(why, ""), next_url=next)


@router.post("/console/login", dependencies=[Depends(auth.check_login_csrf)])
def login(
    request: Request,
    name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    result = auth.log_in(request, name, password, _client(request))
    if not result.ok:
        if result.why == "locked":
            minutes = max(1, -(-result.retry_after_ms // 60_000))
            error = i18n.t("login.locked", str(request.state.lang), minutes=minutes)
        else:
            error = i18n.t(f"login.{result.why}", str(request.state.lang))
        return _login_page(
            request, error=error, next_url=next, name=name[:64],
            status_code=429 if result.why == "locked" else 401,
        )  # fmt: skip
    response = RedirectResponse(_safe_next(next), status_code=303)
    auth.set_session_cookie(request, response, result.token)
    return response


@router.post("/console/logout")
def logout(request: Request, user: Annotated[User, Depends(auth.check_own_csrf)]) -> Response:
    auth.log_out(request, request.state.session)
    response = RedirectResponse("/console/login?why=logged_out", status_code=303)
    auth.clear_session_cookie(request, response)
    return response


@router.get(auth.PASSWORD_PATH)
def password_form(request: Request, user: Annotated[User, Depends(auth.require_user)]) -> Response:
    return render(
        request, "password.html", user=user, error="", first=request.state.session.one_time
    )


@router.post(auth.PASSWORD_PATH)
def change_password(
    request: Request,
    user: Annotated[User, Depends(auth.check_own_csrf)],
    current: Annotated[str, Form(max_length=1000)] = "",
    new: Annotated[str, Form(max_length=1000)] = "",
    repeat: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    session = request.state.session
    db = request.app.state.db
    now = request.app.state.config.now_ms()
    with db.read() as conn:
        row = users.get_user(conn, user.name)
    problem: str | None
    if not users.verify_password(row, current):
        problem = "wrong_current"
    elif new != repeat:
        problem = "mismatch"
    elif new == current:
        problem = "same"
    else:
        problem = users.password_problem(user.name, new)
    if problem is not None:
        if problem == "wrong_current":
            with db.write() as conn:
                audit.record(
                    conn, user=user.name, action="password.failed", detail="wrong current",
                    at_ms=now,
                )  # fmt: skip
        return render(
            request, "password.html", user=user, error=f"password.{problem}",
            first=session.one_time, status_code=400,
        )  # fmt: skip
    with db.write() as conn:
        users.set_password(conn, user.name, new)
        users.end_sessions(conn, user.name)
        audit.record(
            conn, user=user.name, action="password.change",
            detail="from one-time password" if session.one_time else "", at_ms=now,
        )  # fmt: skip
    response = RedirectResponse("/console/login?why=changed", status_code=303)
    auth.clear_session_cookie(request, response)
    return response
