"""Rendering a console page: the Jinja2 templates in county/console/templates/.

``render(request, "page.html", user=user, **context)`` gives every template:
``t`` (the request's language bound), ``lang``, ``other_lang`` and ``lang_url`` (the
switch), ``user`` (or None), ``csrf`` (the session's token, for every form), ``nav``
(NavItems of the pages this user may open), ``path``, and the filters ``yuan``
(fen -> "12.50"), ``local`` (UTC ms -> local "YYYY-MM-DD HH:MM:SS") and ``local_day``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from county.console import i18n
from county.console.pages import PAGES, NavItem
from county.localtime import local_text

TEMPLATES = Path(__file__).parent / "templates"

env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def yuan(fen: int | None) -> str:
    """Money as yuan with two decimals: 1250 -> "12.50", -5 -> "-0.05"."""
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole:,}.{cents:02d}"


env.filters["yuan"] = yuan


def lang_of(request: Request) -> str:
    return str(getattr(request.state, "lang", i18n.DEFAULT_LANGUAGE))


def translator(request: Request) -> i18n.Translator:
    return i18n.translator(lang_of(request))


def nav_items() -> list[NavItem]:
    """The NAV entries of every module in PAGES, by their ``order``, then PAGES order."""
    items: list[NavItem] = []
    for name in PAGES:
        module = importlib.import_module(f"county.console.pages.{name}")
        items.extend(getattr(module, "NAV", ()))
    return sorted(items, key=lambda n: n.order)


def lang_url(request: Request, lang: str) -> str:
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    query.append(("lang", lang))
    return f"{request.url.path}?{urlencode(query)}"


def render(
    request: Request,
    template: str,
    *,
    user: Any = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    lang = lang_of(request)
    session = getattr(request.state, "session", None)
    zone = request.app.state.config.zone
    role = getattr(user, "role", None)
    other = "en" if lang == "zh" else "zh"
    page = env.get_template(template).render(
        request=request,
        t=i18n.translator(lang),
        lang=lang,
        other_lang=other,
        lang_url=lang_url(request, other),
        user=user,
        csrf=session.csrf if session is not None and user is not None else "",
        nav=[n for n in nav_items() if role in n.roles] if user is not None else [],
        path=request.url.path,
        local=lambda ms: local_text(ms, zone),
        local_day=lambda ms: local_text(ms, zone)[:10],
        **context,
    )
    return HTMLResponse(page, status_code=status_code)
