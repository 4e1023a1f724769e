"""What the page is sent: decisions and status, checked, cleaned and put into words.

This module owns the shape of the JSON that goes to the page and the cleaning
of every text in it. Display names and units come from signed tokens and the
card roster but may hold anything, so control, format (bidi overrides,
zero-width) and separator characters are removed and lengths are capped here;
the page also writes them only through ``textContent``. It words reason codes,
meal names and price tiers in the screen's language (terminal/core/reasons.py,
protocol/agencies.py TIER_NAMES_ZH), with the note a diner of a unit the agency
directory does not list is owed: why they paid the visitor price. It never reads
a clock, the ledger or the network, and never raises on a bad field from the
daemon: a field of the wrong type is sent as null.
"""

from __future__ import annotations

import unicodedata
from typing import Any, TypedDict

from protocol import agencies
from terminal.core import reasons

MAX_NAME = 40  # characters of a display name or unit shown
MAX_TEXT = 200  # characters of any other text (sentences, names of things)

# "": entries that named no meal (a refused code or card, or outside every window).
MEAL_WORDS = {
    "zh": {
        "breakfast": "早餐",
        "lunch": "午餐",
        "dinner": "晚餐",
        "supper": "夜宵",
        "": "无餐次",
    },
    "en": {
        "breakfast": "Breakfast",
        "lunch": "Lunch",
        "dinner": "Dinner",
        "supper": "Supper",
        "": "No meal",
    },
}
STATES = ("starting", "ready", "degraded", "stopped")

# The price tiers in words (protocol/agencies.py TIERS); a tier the screen has no words
# for is not shown.
TIER_WORDS = {
    "zh": dict(agencies.TIER_NAMES_ZH),
    "en": {
        agencies.OWN: "Own agency",
        agencies.SAME_LEVEL: "Same-level agency",
        agencies.HIGHER_LEVEL: "Visitor from a higher level",
        agencies.LOWER_LEVEL: "Visitor from a lower level",
        agencies.OTHER_REGION: "Visitor from another region",
        agencies.UNLISTED: "Unit not in the directory",
        agencies.VISITOR: "Visitor",
    },
}
# Said under the verdict when the diner's unit is not in the installed directory.
UNLISTED_NOTE = {
    "zh": "该单位不在单位名录中，按来客价收费",
    "en": "This unit is not in the agency directory: visitor price charged",
}


class DecisionView(TypedDict, total=False):
    """What the daemon passes to ``Screen.show_decision`` after the ledger commit."""

    seq: int
    verdict: str  # "accept" or "reject"
    reason: str | None  # reason code (docs/reasons.md) for a refusal
    display_name: str | None
    unit: str | None  # unit code
    # The unit's name: the agency directory's, else the settings' [canteen] unit_names.
    unit_name: str | None
    tier: str | None  # the price tier charged (protocol/agencies.py TIERS), if reached
    meal: str | None  # meal window name
    amount_fen: int
    method: str  # "qr" or "card"
    at_ms: int  # trusted time of the entry, Unix ms UTC


class StatusView(TypedDict, total=False):
    """What the daemon passes to ``Screen.set_status`` on every change."""

    state: str  # starting / ready / degraded / stopped
    sentence: str  # what the person in front of the terminal should do
    online: bool  # county server reachable
    since_ms: int  # online or offline since
    unsynced: int  # ledger entries not yet acknowledged
    last_sync_ms: int | None  # last acknowledged sync
    list_age_s: int | None  # age of the oldest trust list
    settings_version: str | int | None
    clock_trusted: bool
    canteen_name: str
    meal: str | None  # meal window being served now
    price_fen: int | None  # own-unit price of that meal
    price_visitor_fen: int | None


def clean_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """Printable text only: no control, format or separator characters; None if not text."""
    if not isinstance(value, str):
        return None
    kept = []
    for ch in value:
        category = unicodedata.category(ch)
        # Cc control, Cf format (bidi overrides, zero-width), Cs/Co/Cn, Zl/Zp separators.
        if category[0] == "C" or category in ("Zl", "Zp"):
            continue
        kept.append(" " if category == "Zs" else ch)
    text = " ".join("".join(kept).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def meal_label(meal: object, language: str) -> str | None:
    name = clean_text(meal, MAX_NAME)
    if name is None:
        return None
    return MEAL_WORDS.get(language, {}).get(name, name)


def tier_label(tier: object, language: str) -> str | None:
    """The tier in the screen's language; None for no tier or one without words."""
    if not isinstance(tier, str):
        return None
    return TIER_WORDS.get(language, TIER_WORDS["zh"]).get(tier)


def tier_fields(tier: object, language: str) -> dict[str, str | None]:
    """``tier``, ``tier_text`` and ``tier_note`` (the unlisted unit's note) for the page."""
    text = tier_label(tier, language)
    if text is None or not isinstance(tier, str):
        return {"tier": None, "tier_text": None, "tier_note": None}
    note = UNLISTED_NOTE.get(language, UNLISTED_NOTE["zh"]) if tier == agencies.UNLISTED else None
    return {"tier": tier, "tier_text": text, "tier_note": note}


def decision(view: dict[str, Any] | DecisionView, language: str) -> dict[str, Any]:
    """The ``decision`` event for the page."""
    raw: dict[str, Any] = dict(view)
    accepted = raw.get("verdict") == "accept"
    reason = clean_text(raw.get("reason"), MAX_NAME)
    words = reasons.REASONS.get(reason) if reason else None
    reason_text: str | None
    reason_todo: str | None
    if words is not None:
        reason_text = words.en if language == "en" else words.zh
        reason_todo = words.todo_en if language == "en" else words.todo_zh
    else:
        # A code the screen has no words for is shown as it is, so staff can look it up.
        reason_text, reason_todo = reason, None
    method = raw.get("method")
    return {
        "seq": _int(raw.get("seq")),
        "verdict": "accept" if accepted else "reject",
        "reason": None if accepted else reason,
        "reason_text": None if accepted else reason_text,
        "reason_todo": None if accepted else reason_todo,
        "display_name": clean_text(raw.get("display_name"), MAX_NAME),
        "unit": clean_text(raw.get("unit"), MAX_NAME),
        "unit_name": clean_text(raw.get("unit_name"), MAX_NAME),
        **tier_fields(raw.get("tier"), language),
        "meal": clean_text(raw.get("meal"), MAX_NAME),
        "meal_label": meal_label(raw.get("meal"), language),
        "amount_fen": _int(raw.get("amount_fen")),
        "method": method if method in ("qr", "card") else None,
        "at_ms": _int(raw.get("at_ms")),
    }


def status(view: dict[str, Any] | StatusView, language: str) -> dict[str, Any]:
    """The ``status`` event for the page."""
    raw: dict[str, Any] = dict(view)
    state = raw.get("state")
    version = raw.get("settings_version")
    return {
        "state": state if state in STATES else "degraded",
        "sentence": clean_text(raw.get("sentence")),
        "online": _bool(raw.get("online")),
        "since_ms": _int(raw.get("since_ms")),
        "unsynced": _int(raw.get("unsynced")),
        "last_sync_ms": _int(raw.get("last_sync_ms")),
        "list_age_s": _int(raw.get("list_age_s")),
        "settings_version": clean_text(str(version), MAX_NAME)
        if isinstance(version, str | int) and not isinstance(version, bool)
        else None,
        "clock_trusted": _bool(raw.get("clock_trusted")),
        "canteen_name": clean_text(raw.get("canteen_name"), MAX_NAME),
        "meal": clean_text(raw.get("meal"), MAX_NAME),
        "meal_label": meal_label(raw.get("meal"), language),
        "price_fen": _int(raw.get("price_fen")),
        "price_visitor_fen": _int(raw.get("price_visitor_fen")),
    }
