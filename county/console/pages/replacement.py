"""Terminal replacement in the console, /console/replacement (issue 16; docs/technicians.md).

Everyone sees the retired terminals (when, why, their successor) and the replacement
actions of the audit log; the admin alone retires a terminal, provisions a successor
(the one-time code is shown once, on the answer page) and uploads an old device's
recovery file. Each action is a POST with the session's CSRF token and writes its audit
row in the same transaction as the change (county/replacement.py does both); a refusal
changes nothing and says why on the page (status 400), an upload larger than
``MAX_RECOVERY_BYTES`` is 413.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from sqlalchemy import Connection, select

from county import replacement
from county.console import audit, auth, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render
from county.db.schema import terminals
from county.storekit import Limits, StoreError

router = APIRouter()

NAV = [NavItem("/console/replacement", "replacement.nav", "replacement.about", order=40)]
PATH = "/console/replacement"

i18n.register(
    {
        "replacement.nav": {"zh": "终端更换", "en": "Replacement"},
        "replacement.title": {"zh": "终端停用与更换", "en": "Retiring and replacing terminals"},
        "replacement.about": {
            "zh": "停用坏掉的终端、为食堂登记新终端、从旧终端的存储卡找回账本。",
            "en": "Retire a dead terminal, register its successor, recover its ledger.",
        },
        "replacement.steps": {
            "zh": "步骤见 docs/technicians.md：取出旧终端的存储卡，导出账本，停用，登记新终端，"
            "上传账本文件，在终端一览中查看。",
            "en": "The steps are in docs/technicians.md: pull the old device's SD card, "
            "export its ledger, retire it, register the replacement, upload the ledger file, "
            "check the fleet.",
        },
        "replacement.retire": {"zh": "停用终端", "en": "Retire a terminal"},
        "replacement.retire_help": {
            "zh": "停用后该终端的证书立即失效，不再计入“失联”，编号不再使用。",
            "en": "Its certificate is refused at once, it no longer counts as silent, and "
            "its id is never used again.",
        },
        "replacement.replace": {"zh": "登记替换终端", "en": "Register a replacement"},
        "replacement.replace_help": {
            "zh": "新终端使用新的编号和密钥，登记在旧终端的食堂；旧终端若未停用则一并停用。",
            "en": "The new device gets a new id and key at the old one's canteen; the old "
            "one is retired too if it is not yet.",
        },
        "replacement.recover": {"zh": "找回旧终端账本", "en": "Recover an old ledger"},
        "replacement.recover_help": {
            "zh": "上传 canteen-terminal ledger export --format recovery 生成的文件（最大 "
            "{mib} MiB）。县里用登记时固定的密钥核验，每条记录只收一次。",
            "en": "Upload the file 'canteen-terminal ledger export --format recovery' made "
            "(at most {mib} MiB). The county verifies it with the key pinned at provisioning "
            "and takes each entry once.",
        },
        "replacement.terminal": {"zh": "终端", "en": "Terminal"},
        "replacement.old": {"zh": "旧终端", "en": "Old terminal"},
        "replacement.new": {"zh": "新终端编号（可留空）", "en": "New terminal id (optional)"},
        "replacement.reason": {"zh": "原因", "en": "Reason"},
        "replacement.reason_optional": {
            "zh": "停用原因（可留空）",
            "en": "Why the old one is retired (optional)",
        },
        "replacement.file": {"zh": "账本文件", "en": "Ledger file"},
        "replacement.do_retire": {"zh": "停用", "en": "Retire"},
        "replacement.do_replace": {"zh": "登记", "en": "Register"},
        "replacement.do_recover": {"zh": "上传并核验", "en": "Upload and verify"},
        "replacement.none_active": {"zh": "没有在用的终端。", "en": "No terminal in service."},
        "replacement.retired_list": {"zh": "已停用的终端", "en": "Retired terminals"},
        "replacement.none_retired": {
            "zh": "还没有停用的终端。",
            "en": "No terminal has been retired.",
        },
        "replacement.canteen": {"zh": "食堂", "en": "Canteen"},
        "replacement.when": {"zh": "停用时间", "en": "Retired"},
        "replacement.successor": {"zh": "替换为", "en": "Replaced by"},
        "replacement.history": {"zh": "操作记录", "en": "History"},
        "replacement.time": {"zh": "时间", "en": "Time"},
        "replacement.user": {"zh": "用户", "en": "User"},
        "replacement.action": {"zh": "操作", "en": "Action"},
        "replacement.detail": {"zh": "详情", "en": "Detail"},
        "replacement.no_history": {"zh": "暂无记录。", "en": "Nothing yet."},
        "replacement.action.terminal.retire": {"zh": "停用", "en": "retired"},
        "replacement.action.terminal.replace": {"zh": "替换", "en": "replaced"},
        "replacement.action.terminal.recover": {"zh": "找回账本", "en": "ledger recovered"},
        "replacement.done_retire": {
            "zh": "终端 {terminal} 已停用：{reason}。其证书已失效。",
            "en": "Terminal {terminal} is retired: {reason}. Its certificate is refused.",
        },
        "replacement.done_replace": {
            "zh": "终端 {new} 已登记在食堂 {canteen}，替换 {old}。在新终端的设置中写 "
            '[terminal] id = "{new}"，再运行下面的命令（{days} 天内有效，只显示这一次）：',
            "en": "Terminal {new} is registered at canteen {canteen} in place of {old}. Set "
            '[terminal] id = "{new}" in its settings, then run on it (valid {days} days, '
            "shown only this once):",
        },
        "replacement.done_recover": {
            "zh": "终端 {terminal}：新收 {new} 条，已有 {known} 条；"
            "账本末条 {head}（哈希 {hash}）。",
            "en": "Terminal {terminal}: {new} new entries taken, {known} already held; head "
            "entry {head} (hash {hash}).",
        },
        "replacement.refused": {
            "zh": "未执行，未做任何更改：{why}",
            "en": "Not done, nothing changed: {why}",
        },
        "replacement.no_file": {"zh": "请选择账本文件。", "en": "Choose a ledger file."},
        "replacement.too_large": {
            "zh": "文件超过 {mib} MiB，未读取。请从县里已有的最后一条之后导出（--from）。",
            "en": "The file is larger than {mib} MiB and was not read; export it from the "
            "entry after the county's last one (--from).",
        },
    }
)

_MIB = replacement.MAX_RECOVERY_BYTES // 2**20
# What a page shows after an action; a plain GET shows none of it.
_NOTHING_DONE: dict[str, Any] = {
    "refused": "",
    "refused_key": "",
    "retired_now": None,
    "replaced": None,
    "recovered": None,
}
_ACTIONS = ("terminal.retire", "terminal.replace", "terminal.recover")


def _choices(conn: Connection) -> dict[str, list[str]]:
    """Terminal ids for the forms: in service, not yet replaced, with a pinned key."""
    t = terminals.c
    rows = conn.execute(
        select(t.terminal_id, t.retired_ms, t.replaced_by, t.ledger_key.is_not(None)).order_by(
            t.terminal_id
        )
    ).all()
    return {
        "active": [r[0] for r in rows if r[1] is None],
        "replaceable": [r[0] for r in rows if r[2] is None],
        "recoverable": [r[0] for r in rows if r[3]],
    }


def _page(request: Request, user: User, *, status_code: int = 200, **done: Any) -> Response:
    with request.app.state.engine.connect() as conn:
        retired = replacement.history(conn)
        choices = _choices(conn)
        rows = [
            r
            for r in audit.page(conn, audit.AuditFilter(action="terminal."), 200)
            if r["action"] in _ACTIONS
        ]
    return render(
        request,
        "replacement.html",
        user=user,
        retired=retired,
        choices=choices,
        history=rows,
        mib=_MIB,
        status_code=status_code,
        **{**_NOTHING_DONE, **done},
    )


def _admin(user: User) -> User:
    if user.role != "admin":
        raise auth.Forbidden()
    return user


def _refused(request: Request, user: User, exc: Exception) -> Response:
    return _page(request, user, status_code=400, refused=" ".join(str(exc).split()))


@router.get(PATH)
def replacement_page(
    request: Request, user: Annotated[User, Depends(auth.require_user)]
) -> Response:
    return _page(request, user)


@router.post(PATH + "/retire")
def retire(
    request: Request,
    user: Annotated[User, Depends(auth.check_csrf)],
    terminal: Annotated[str, Form(max_length=200)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    _admin(user)
    now = request.app.state.config.now_ms()
    try:
        done = replacement.retire(
            request.app.state.db, terminal, reason, user=user.name, now_ms=now
        )
    except StoreError as exc:
        return _refused(request, user, exc)
    return _page(request, user, retired_now={"terminal": done.terminal_id, "reason": done.reason})


@router.post(PATH + "/replace")
def replace(
    request: Request,
    user: Annotated[User, Depends(auth.check_csrf)],
    old: Annotated[str, Form(max_length=200)] = "",
    new: Annotated[str, Form(max_length=200)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    from county.app import new_provisioning_code

    _admin(user)
    config = request.app.state.config
    ttl = Limits().code_ttl_ms
    try:
        done = replacement.replace_terminal(
            request.app.state.db,
            old,
            new.strip() or None,
            reason.strip() or None,
            user=user.name,
            now_ms=config.now_ms(),
            code_ttl_ms=ttl,
        )
    except StoreError as exc:
        return _refused(request, user, exc)
    code = new_provisioning_code(Path(config.data), done.secret) if config.data else done.secret
    return _page(
        request,
        user,
        replaced={
            "old": done.old.terminal_id,
            "new": done.new_id,
            "canteen": done.canteen,
            "days": ttl // 86_400_000,
            "code": code,
        },
    )


@router.post(PATH + "/recover")
def recover(
    request: Request,
    user: Annotated[User, Depends(auth.check_csrf)],
    terminal: Annotated[str, Form(max_length=200)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    from county.published import Published

    _admin(user)
    config = request.app.state.config
    if file is None or not file.filename:
        return _page(request, user, status_code=400, refused_key="replacement.no_file")
    fd, name = tempfile.mkstemp(prefix="recovery-", suffix=".jsonl")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            while block := file.file.read(1 << 20):
                size += len(block)
                if size > replacement.MAX_RECOVERY_BYTES:
                    return _page(
                        request, user, status_code=413, refused_key="replacement.too_large"
                    )
                out.write(block)
        try:
            done = replacement.recover(
                request.app.state.db,
                terminal,
                Path(name),
                limits=Limits(),
                lists=Published(config.data) if config.data else None,
                user=user.name,
                now_ms=config.now_ms(),
            )
        except StoreError as exc:
            return _refused(request, user, exc)
    finally:
        os.unlink(name)
    return _page(
        request,
        user,
        recovered={
            "terminal": done.terminal_id,
            "new": done.new,
            "known": done.known,
            "head": done.head_seq,
            "hash": done.head_hash[:16],
        },
    )
