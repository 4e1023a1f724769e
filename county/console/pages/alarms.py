"""Alarms and conflicts to review, /console/alarms (issue 16; docs/alarms.md).

Everyone sees the list (the undecided first; filters by state, kind and terminal) and
each alarm's or conflict's page with its evidence: the entries it names as the county
holds them, their signed codes verified again now, the cadre's name from the directory,
local times, what it revoked and the decision taken. The admin alone confirms or
withdraws, with a reason (POST with the session's CSRF token, ``auth.check_csrf``);
withdrawing a conflict lifts what it alone revoked through the signed update, as
``canteen-county conflicts withdraw`` does (county/review.py holds the one code path).
Each decision writes its audit row in the same transaction as the change. A refusal
changes nothing and says why on the page (status 400); finance and the inspector get no
form, and a POST from them is 403.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import Connection

from county import review
from county.console import audit, auth, i18n
from county.console.auth import User
from county.console.pages import NavItem
from county.console.render import render
from county.errors import StoreError

router = APIRouter()

PATH = "/console/alarms"
NAV = [NavItem(PATH, "alarms.nav", "alarms.about", order=35)]

KINDS = (
    "fork",
    "altered",
    "bad_checkpoint",
    "bad_genesis",
    "unsigned",
    "bad_evidence",
    "clock",
    "presentation_twice",
    "served_twice",
)

i18n.register(
    {
        "alarms.nav": {"zh": "告警与冲突", "en": "Alarms and conflicts"},
        "alarms.title": {"zh": "告警与冲突复核", "en": "Reviewing alarms and conflicts"},
        "alarms.about": {
            "zh": "逐条查看证据（两条记录、签名码复核、姓名与时间），确认或撤销。",
            "en": "See each one's evidence (both entries, signed codes checked again, names, "
            "times); confirm or withdraw it.",
        },
        "alarms.help": {
            "zh": "待复核的排在前面。撤销冲突会通过签名更新解除它造成的吊销，终端下次同步后生效；"
            "告警的确认或撤销只是复核记录，不改变终端的状态。",
            "en": "Those waiting for review come first. Withdrawing a conflict lifts what it "
            "revoked through a signed update, in force on the terminals after their next sync; "
            "confirming or withdrawing an alarm is a reviewed note and changes no terminal.",
        },
        "alarms.filter.state": {"zh": "状态", "en": "State"},
        "alarms.filter.what": {"zh": "类别", "en": "Type"},
        "alarms.filter.kind": {"zh": "种类", "en": "Kind"},
        "alarms.filter.terminal": {"zh": "终端", "en": "Terminal"},
        "alarms.filter.any": {"zh": "全部", "en": "Any"},
        "alarms.count": {"zh": "共 {count} 条", "en": "{count} shown"},
        "alarms.empty": {"zh": "没有符合条件的告警或冲突。", "en": "No alarm or conflict matches."},
        "alarms.what.alarm": {"zh": "告警", "en": "Alarm"},
        "alarms.what.conflict": {"zh": "冲突", "en": "Conflict"},
        "alarms.state.open": {"zh": "待复核", "en": "To review"},
        "alarms.state.confirmed": {"zh": "已确认", "en": "Confirmed"},
        "alarms.state.withdrawn": {"zh": "已撤销", "en": "Withdrawn"},
        "alarms.kind.fork": {"zh": "账本分叉", "en": "Forked ledger"},
        "alarms.kind.altered": {"zh": "记录被改动", "en": "Altered entry"},
        "alarms.kind.bad_checkpoint": {"zh": "检查点签名无效", "en": "Bad checkpoint"},
        "alarms.kind.bad_genesis": {"zh": "账本起点不符", "en": "Bad genesis"},
        "alarms.kind.unsigned": {"zh": "批次未签名", "en": "Unsigned batch"},
        "alarms.kind.bad_evidence": {"zh": "售餐无有效凭证", "en": "Sale without evidence"},
        "alarms.kind.clock": {"zh": "时钟偏差", "en": "Clock out of tolerance"},
        "alarms.kind.presentation_twice": {
            "zh": "同一付款码用了两次",
            "en": "One code used twice",
        },
        "alarms.kind.served_twice": {"zh": "同一餐就餐两次", "en": "Served one meal twice"},
        "alarms.col.item": {"zh": "编号", "en": "No."},
        "alarms.col.kind": {"zh": "种类", "en": "Kind"},
        "alarms.col.state": {"zh": "状态", "en": "State"},
        "alarms.col.who": {"zh": "干部", "en": "Cadre"},
        "alarms.col.where": {"zh": "终端", "en": "Terminals"},
        "alarms.col.found": {"zh": "发现时间", "en": "Found"},
        "alarms.col.evidence": {"zh": "签名码复核", "en": "Signed codes"},
        "alarms.col.problem": {"zh": "说明", "en": "What"},
        "alarms.open_item": {"zh": "查看", "en": "Open"},
        "alarms.back": {"zh": "返回列表", "en": "Back to the list"},
        "alarms.item_title": {"zh": "{what} {id}", "en": "{what} {id}"},
        "alarms.found": {"zh": "发现于 {time}", "en": "Found {time}"},
        "alarms.times": {
            "zh": "共出现 {times} 次，最近 {last}",
            "en": "Seen {times} times, last {last}",
        },
        "alarms.cadre": {"zh": "干部", "en": "Cadre"},
        "alarms.signed_name": {"zh": "签名中的姓名", "en": "Name in the signed code"},
        "alarms.unit": {"zh": "单位", "en": "Agency"},
        "alarms.meal": {"zh": "餐次", "en": "Meal"},
        "alarms.revokes": {"zh": "吊销的凭证", "en": "Revoked credentials"},
        "alarms.revokes_none": {"zh": "无", "en": "None"},
        "alarms.hashes": {
            "zh": "终端报来的哈希 {theirs}；县里的 {ours}",
            "en": "The terminal's hash {theirs}; the county's {ours}",
        },
        "alarms.evidence": {"zh": "证据", "en": "Evidence"},
        "alarms.entry.first": {"zh": "第一条记录", "en": "First entry"},
        "alarms.entry.second": {"zh": "第二条记录", "en": "Second entry"},
        "alarms.entry.entry": {"zh": "相关记录", "en": "The entry"},
        "alarms.entry.terminal": {"zh": "终端", "en": "Terminal"},
        "alarms.entry.seq": {"zh": "序号", "en": "Entry"},
        "alarms.entry.canteen": {"zh": "食堂", "en": "Canteen"},
        "alarms.entry.time": {"zh": "时间", "en": "Time"},
        "alarms.entry.method": {"zh": "方式", "en": "Method"},
        "alarms.entry.credential": {"zh": "凭证", "en": "Credential"},
        "alarms.entry.amount": {"zh": "金额", "en": "Amount"},
        "alarms.entry.hash": {"zh": "哈希", "en": "Hash"},
        "alarms.entry.check": {"zh": "复核结果", "en": "Checked now"},
        "alarms.entry.missing": {
            "zh": "县里没有这条记录。",
            "en": "The county holds no entry with this number.",
        },
        "alarms.verified": {"zh": "通过", "en": "verifies"},
        "alarms.not_verified": {"zh": "未通过", "en": "does not verify"},
        "alarms.verified_key": {
            "zh": "签名有效，签发方密钥 {key}",
            "en": "Verifies with issuer key {key}",
        },
        "alarms.decision": {"zh": "复核结论", "en": "Decision"},
        "alarms.decided": {
            "zh": "{state}：{by}，{time}。理由：{reason}",
            "en": "{state} by {by} on {time}. Reason: {reason}",
        },
        "alarms.undecided": {"zh": "尚未复核。", "en": "Not reviewed yet."},
        "alarms.reason": {
            "zh": "理由（必填，一行，最多 {most} 字）",
            "en": "Reason (required, one line, at most {most} characters)",
        },
        "alarms.do_confirm": {"zh": "确认", "en": "Confirm"},
        "alarms.do_withdraw": {"zh": "撤销", "en": "Withdraw"},
        "alarms.confirm_help.alarm": {
            "zh": "确认：告警属实，已处理。",
            "en": "Confirm: the alarm is real and was dealt with.",
        },
        "alarms.withdraw_help.alarm": {
            "zh": "撤销：告警不成立。仅作复核记录，不改变终端和账本（例如分叉的账本仍是分叉的）。",
            "en": "Withdraw: the alarm does not hold. A reviewed note only: the terminal and "
            "its ledger stay as they are (a forked chain stays forked).",
        },
        "alarms.confirm_help.conflict": {
            "zh": "确认：冲突属实，吊销继续有效。",
            "en": "Confirm: the conflict is real; its revocations stay.",
        },
        "alarms.withdraw_help.conflict": {
            "zh": "撤销：冲突不成立。只由它造成的吊销将通过签名更新解除，终端下次同步后恢复受理。",
            "en": "Withdraw: the conflict does not hold. What it alone revoked is lifted by a "
            "signed update; terminals accept the credential again after their next sync.",
        },
        "alarms.done": {
            "zh": "{what} {id} 已{decision}：{reason}",
            "en": "{what} {id} {decision}: {reason}",
        },
        "alarms.done_lifted": {
            "zh": "已解除 {count} 项吊销，签名吊销列表第 {version} 版；终端下次同步后生效。",
            "en": "{count} revocation(s) lifted in signed revocation list version {version}; "
            "in force on the terminals after their next sync.",
        },
        "alarms.done_unpublished": {
            "zh": "已解除 {count} 项吊销；本县不发布签名更新，请把 canteen-county revocations "
            "的列表装到终端上。",
            "en": "{count} revocation(s) lifted; this county publishes no signed updates: "
            "install the list from 'canteen-county revocations' on the terminals.",
        },
        "alarms.done_nothing": {
            "zh": "它的吊销还由其他冲突维持，没有解除任何吊销。",
            "en": "Its revocations stand on another conflict: nothing lifted.",
        },
        "alarms.decision.confirm": {"zh": "确认", "en": "confirmed"},
        "alarms.decision.withdraw": {"zh": "撤销", "en": "withdrawn"},
        "alarms.refused": {
            "zh": "未执行，未做任何更改：{why}",
            "en": "Not done, nothing changed: {why}",
        },
        "alarms.read_only": {
            "zh": "只有管理员可以确认或撤销。",
            "en": "Only an admin confirms or withdraws.",
        },
        "audit.act.alarm.confirm": {"zh": "确认告警", "en": "Confirmed an alarm"},
        "audit.act.alarm.withdraw": {"zh": "撤销告警", "en": "Withdrew an alarm"},
        "audit.act.conflict.confirm": {"zh": "确认冲突", "en": "Confirmed a conflict"},
    }
)

_LISTS: dict[Path, Any] = {}


def _lists(request: Request) -> Any:
    """The county's published lists (meal windows, card roster) the evidence is judged by,
    as the intake judged it; None for a county without a data directory."""
    from county.published import Published

    data = request.app.state.config.data
    if data is None:
        return None
    path = Path(data)
    if path not in _LISTS:
        _LISTS[path] = Published(path)
    return _LISTS[path]


def _clean(value: str, what: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise HTTPException(400, f"{what}: control characters are not allowed")
    return value.strip()


@router.get(PATH)
def alarms_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    state: Annotated[str, Query(max_length=20)] = "",
    what: Annotated[str, Query(max_length=20)] = "",
    kind: Annotated[str, Query(max_length=40)] = "",
    terminal: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    state, what = _clean(state, "state"), _clean(what, "what")
    kind, terminal = _clean(kind, "kind"), _clean(terminal, "terminal")
    if state and state not in review.STATES:
        raise HTTPException(400, f"state {state!r} is none of {', '.join(review.STATES)}")
    if what and what not in review.WHATS:
        raise HTTPException(400, f"{what!r} is neither an alarm nor a conflict")
    if kind and kind not in KINDS:
        raise HTTPException(400, f"kind {kind!r} is none of {', '.join(KINDS)}")
    config = request.app.state.config
    with request.app.state.engine.connect() as conn:
        rows = review.items(
            conn,
            config.zone,
            _lists(request),
            state=state or None,
            what=what or None,
            kind=kind or None,
            terminal=terminal or None,
        )
    return render(
        request, "alarms.html", user=user, rows=rows, state=state, what=what, kind=kind,
        terminal=terminal, states=review.STATES, whats=review.WHATS, kinds=KINDS,
    )  # fmt: skip


def _item_or_404(conn: Connection, request: Request, what: str, item_id: int) -> dict[str, Any]:
    if what not in review.WHATS:
        raise HTTPException(404)
    found = review.item(conn, what, item_id, request.app.state.config.zone, _lists(request))
    if found is None:
        raise HTTPException(404)
    return found


def _item_page(
    request: Request,
    user: User,
    what: str,
    item_id: int,
    *,
    status_code: int = 200,
    refused: str = "",
    done: dict[str, Any] | None = None,
) -> Response:
    with request.app.state.engine.connect() as conn:
        found = _item_or_404(conn, request, what, item_id)
    return render(
        request, "alarm.html", user=user, item=found, refused=refused, done=done,
        most=review.MAX_REASON, kinds=KINDS, status_code=status_code,
    )  # fmt: skip


@router.get(PATH + "/{what}/{item_id}")
def item_page(
    request: Request,
    user: Annotated[User, Depends(auth.require_user)],
    what: str,
    item_id: int,
) -> Response:
    return _item_page(request, user, what, item_id)


@router.post(PATH + "/{what}/{item_id}/{decision}")
def decide(
    request: Request,
    user: Annotated[User, Depends(auth.check_csrf)],
    what: str,
    item_id: int,
    decision: str,
    reason: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    from county import updates

    if what not in review.WHATS or decision not in review.DECISIONS:
        raise HTTPException(404)
    config = request.app.state.config
    now = config.now_ms()
    action = f"{what}.{decision}"

    def write_audit(conn: Connection, lifted: list[Any]) -> None:
        detail = {"reason": reason.strip()}
        if lifted:
            detail["lifted"] = json.dumps(lifted, ensure_ascii=False, sort_keys=True)
        audit.record(
            conn, user=user.name, action=action, target=str(item_id),
            detail=json.dumps(detail, ensure_ascii=False), at_ms=now,
        )  # fmt: skip

    done: dict[str, Any] = {"what": what, "id": item_id, "decision": decision}
    try:
        if what == review.CONFLICT and decision == review.WITHDRAW:
            result = review.withdraw_conflict(
                request.app.state.db, config.data, item_id, reason, user.name, now, write_audit
            )
            done.update(lifted=len(result.lifted), version=result.version)
            done["published"] = result.published_lifted
        else:
            with request.app.state.db.write() as conn:
                review.decide(conn, what, item_id, decision, reason, user.name, now)
                write_audit(conn, [])
    except (StoreError, updates.UpdatesError) as exc:
        return _item_page(
            request, user, what, item_id, status_code=400, refused=" ".join(str(exc).split())
        )
    done["reason"] = review.check_reason(reason, decision, what)
    return _item_page(request, user, what, item_id, done=done)
