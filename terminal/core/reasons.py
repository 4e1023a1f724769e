"""Every verdict reason code in plain words, for the staff and for the cadre.

This module owns the wording that the screen and the command line show next to
a reason code: what happened, and what the person in front of the terminal
should do next, in Chinese and in English. docs/reasons.md says the same for
readers of the documentation, and a test keeps the two and the code constants
in step. It holds no logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ReasonText:
    zh: str  # what the screen says, Chinese
    en: str  # what the screen says, English
    todo_zh: str  # what to do next
    todo_en: str


REASONS: Mapping[str, ReasonText] = MappingProxyType(
    {
        "malformed": ReasonText(
            "无法识别的二维码",
            "Not a canteen code",
            "请刷新手机上的就餐码后重试",
            "Refresh the meal code on the phone and show it again",
        ),
        "unsupported_alg": ReasonText(
            "二维码签名方式不受支持",
            "Code signed in an unsupported way",
            "请更新手机应用后重试",
            "Update the phone app and try again",
        ),
        "unknown_issuer_key": ReasonText(
            "发码平台未获信任",
            "Issuer not trusted here",
            "请改用饭卡；工作人员请联系县信息中心更新密钥",
            "Use a canteen card; staff: ask county IT to update the issuer keys",
        ),
        "bad_credential_signature": ReasonText(
            "凭证签名无效",
            "Credential signature invalid",
            "疑似伪造，请出示有效证件并联系管理员",
            "Possible forgery: ask for ID and call the canteen manager",
        ),
        "bad_presentation_signature": ReasonText(
            "二维码签名无效",
            "Code signature invalid",
            "疑似伪造，请在本人手机上重新生成就餐码",
            "Possible forgery: draw a new code on the cadre's own phone",
        ),
        "credential_expired": ReasonText(
            "就餐凭证已过期",
            "Credential expired",
            "请在手机应用中更新凭证（需要联网）",
            "Renew the credential in the phone app (needs network)",
        ),
        "credential_not_yet_valid": ReasonText(
            "就餐凭证尚未生效",
            "Credential not yet valid",
            "请稍后再试或检查手机时间",
            "Try later or check the phone's clock",
        ),
        "presentation_stale": ReasonText(
            "二维码已过时",
            "Code too old",
            "请刷新就餐码后立即出示",
            "Refresh the code and show it at once",
        ),
        "presentation_from_future": ReasonText(
            "二维码时间超前",
            "Code dated in the future",
            "请检查手机时间设置后重试",
            "Check the phone's clock and try again",
        ),
        "replayed": ReasonText(
            "二维码已使用过",
            "Code already used",
            "请刷新就餐码；截图不能重复使用",
            "Draw a new code; a screenshot cannot be reused",
        ),
        "revoked": ReasonText(
            "凭证已被注销",
            "Credential revoked",
            "请联系本单位一卡通管理员",
            "Contact your unit's one-card administrator",
        ),
        "clock_untrusted": ReasonText(
            "终端时间不可信",
            "Terminal clock not trusted",
            "工作人员：请连接网络同步时间，或联系技术人员",
            "Staff: connect the network to set the time, or call a technician",
        ),
        "outside_meal_window": ReasonText(
            "当前不是供餐时间",
            "Not a meal time",
            "请在供餐时间内就餐",
            "Come back during a meal window",
        ),
        "already_served": ReasonText(
            "本餐次已就餐",
            "Already served this meal",
            "每餐次限一次；如系误扣，请工作人员撤销",
            "One meal per window; if charged by mistake, staff can reverse it",
        ),
        "daily_meal_cap": ReasonText(
            "已达今日离线就餐次数上限",
            "Daily offline meal limit reached",
            "请改日就餐，或待网络恢复后再试",
            "Come back tomorrow, or try again once the network is back",
        ),
        "daily_amount_cap": ReasonText(
            "已达今日离线消费金额上限",
            "Daily offline amount limit reached",
            "请改日就餐，或待网络恢复后再试",
            "Come back tomorrow, or try again once the network is back",
        ),
        "offline_entries_cap": ReasonText(
            "终端离线记录已满",
            "Terminal's offline record is full",
            "工作人员：请恢复网络连接以上传记录",
            "Staff: restore the network so the records can be uploaded",
        ),
        "offline_amount_cap": ReasonText(
            "终端离线消费金额已达上限",
            "Terminal's offline amount limit reached",
            "工作人员：请恢复网络连接以上传记录",
            "Staff: restore the network so the records can be uploaded",
        ),
        "sync_overdue": ReasonText(
            "终端长时间未与县服务器同步",
            "Terminal has not synced for too long",
            "工作人员：请恢复网络连接，或联系县信息中心",
            "Staff: restore the network or call county IT",
        ),
        "revocation_list_stale": ReasonText(
            "注销名单过旧，暂停扫码支付",
            "Revocation list too old: QR payments paused",
            "请改用饭卡；工作人员请恢复网络以更新名单",
            "Use a canteen card; staff: restore the network to update the list",
        ),
        "roster_stale": ReasonText(
            "饭卡名单过旧，暂停刷卡支付",
            "Card roster too old: card payments paused",
            "请改用手机扫码；工作人员请恢复网络以更新名单",
            "Use the phone code; staff: restore the network to update the roster",
        ),
        "card_unknown": ReasonText(
            "未登记的饭卡",
            "Card not registered",
            "请改用手机扫码，或到单位一卡通管理员处登记",
            "Use the phone code, or register the card with your unit's administrator",
        ),
        "card_revoked": ReasonText(
            "饭卡已挂失或停用",
            "Card reported lost or blocked",
            "请改用手机扫码；工作人员请留存此卡",
            "Use the phone code; staff: keep the card",
        ),
    }
)


def text(code: str, language: str = "zh") -> str:
    """One line for the screen: what happened, then what to do."""
    r = REASONS.get(code)
    if r is None:
        return code
    if language == "en":
        return f"{r.en}. {r.todo_en}."
    return f"{r.zh}。{r.todo_zh}。"
