"""The console's texts in Chinese (the default) and English.

Every visible string of a page goes through ``t(key, lang, **fmt)``; templates call
``t("key", **fmt)`` with the request's language bound (render.py). A page module
registers its own keys once, at import, with a unique prefix (``fleet.``, ``audit.``):

    register({"fleet.title": {"zh": "终端概况", "en": "Fleet"}})

A key registered twice with different texts is a programming error (ValueError), so two
modules cannot silently overwrite each other. A key nobody registered renders as
``⟦key⟧``, which the tests look for on every page.

The language: ``?lang=en`` or ``?lang=zh`` on any URL chooses it and a cookie remembers
it (app.py's middleware); without either, Chinese.
"""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"
LANG_COOKIE = "console_lang"
MISSING_MARK = "⟦{}⟧"

_messages: dict[str, dict[str, str]] = {}

Translator = Callable[..., str]


def register(messages: dict[str, dict[str, str]]) -> None:
    """Add ``messages`` (key -> {"zh": ..., "en": ...}); both languages are required."""
    for key, texts in messages.items():
        missing = [lang for lang in LANGUAGES if not texts.get(lang)]
        if missing:
            raise ValueError(f"console text {key!r} has no {', '.join(missing)} text")
        old = _messages.get(key)
        if old is not None and old != texts:
            raise ValueError(f"console text {key!r} is registered twice with different texts")
        _messages[key] = dict(texts)


def known(key: str) -> bool:
    return key in _messages


def t(key: str, lang: str = DEFAULT_LANGUAGE, /, **fmt: object) -> str:
    """The text of ``key`` in ``lang``, formatted with ``fmt`` (str.format names)."""
    texts = _messages.get(key)
    if texts is None:
        return MISSING_MARK.format(key)
    text = texts.get(lang) or texts[DEFAULT_LANGUAGE]
    if fmt:
        try:
            return text.format(**fmt)
        except (KeyError, IndexError, ValueError):
            return MISSING_MARK.format(key)
    return text


def translator(lang: str) -> Translator:
    """``t`` with the language bound, as templates and pages call it."""

    def bound(key: str, /, **fmt: object) -> str:
        return t(key, lang, **fmt)

    return bound


def choose(query: str | None, cookie: str | None) -> str:
    """The language of a request: the query's ``lang``, else the cookie's, else Chinese."""
    for wanted in (query, cookie):
        if wanted in LANGUAGES:
            return str(wanted)
    return DEFAULT_LANGUAGE


register(
    {
        "app.name": {"zh": "县级食堂一卡通管理平台", "en": "County canteen card console"},
        "app.short": {"zh": "一卡通平台", "en": "Canteen console"},
        "lang.switch": {"zh": "English", "en": "中文"},
        "role.admin": {"zh": "管理员", "en": "Administrator"},
        "role.finance": {"zh": "财务", "en": "Finance"},
        "role.inspector": {"zh": "纪检监察", "en": "Inspector"},
        "nav.home": {"zh": "首页", "en": "Home"},
        "nav.audit": {"zh": "审计日志", "en": "Audit log"},
        "nav.password": {"zh": "修改密码", "en": "Change password"},
        "nav.logout": {"zh": "退出登录", "en": "Log out"},
        "nav.menu": {"zh": "功能", "en": "Pages"},
        "common.none": {"zh": "无", "en": "none"},
        "common.yuan": {"zh": "{amount} 元", "en": "¥{amount}"},
        "common.filter": {"zh": "筛选", "en": "Filter"},
        "common.clear": {"zh": "清除", "en": "Clear"},
        "common.newer": {"zh": "较新", "en": "Newer"},
        "common.older": {"zh": "较早", "en": "Older"},
        "common.page": {"zh": "第 {page} 页", "en": "Page {page}"},
        "common.save": {"zh": "保存", "en": "Save"},
        "common.read_only": {
            "zh": "您的角色为只读，不能进行修改。",
            "en": "Your role is read-only: you cannot change anything.",
        },
        "error.title": {"zh": "出错了", "en": "Something went wrong"},
        "error.forbidden": {
            "zh": "您没有权限执行此操作，未做任何修改。",
            "en": "You are not allowed to do this; nothing was changed.",
        },
        "error.csrf": {
            "zh": "表单已失效（安全校验未通过），未做任何修改。请返回后刷新页面重试。",
            "en": "The form has expired (security check failed); nothing was changed. "
            "Go back, reload the page and try again.",
        },
        "error.not_found": {"zh": "页面不存在。", "en": "There is no such page."},
        "error.bad_request": {
            "zh": "请求无效：{why}。未做任何修改。",
            "en": "Bad request: {why}. Nothing was changed.",
        },
        "error.unavailable": {
            "zh": "数据库暂时无法响应，请稍后重试。",
            "en": "The database cannot answer right now; try again in a moment.",
        },
        "error.too_large": {
            "zh": "提交的内容过大，未做任何修改。",
            "en": "What was sent is too large; nothing was changed.",
        },
        "error.length_required": {
            "zh": "请求缺少长度，未做任何修改。",
            "en": "The request has no length; nothing was changed.",
        },
        "error.back_home": {"zh": "返回首页", "en": "Back to the home page"},
    }
)
