"""The canteen rules as a pure function: meal windows, prices, caps and stale lists."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from protocol.tokens import Allowance
from terminal import config
from terminal.core import policy

SETTINGS = dataclasses.replace(config.load(), units=frozenset({"own-unit"}))
TZ = SETTINGS.timezone
DAY = 86400
LIMITS = SETTINGS.lists


def at(hhmm: str, day: dt.date = dt.date(2026, 11, 26)) -> int:
    h, m = map(int, hhmm.split(":"))
    return int(dt.datetime.combine(day, dt.time(h, m), TZ).timestamp())


def facts(**changes: object) -> policy.Facts:
    base = policy.Facts(
        served_this_meal=False,
        day_meals=0,
        day_fen=0,
        unsynced_entries=0,
        unsynced_fen=0,
        since_ack_s=60,
        revocation_age_s=3600,
        roster_age_s=3600,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


QR_OWN = policy.Diner("hn/1", "own-unit", "张伟", policy.QR)
QR_VISITOR = policy.Diner("hn/2", "other-unit", "李娜", policy.QR)
CARD_OWN = policy.Diner("hn/3", "own-unit", "王芳", policy.CARD)


def decide(diner: policy.Diner, when: int, **fact_changes: object) -> policy.Verdict:
    return policy.decide(
        SETTINGS, diner, policy.service_at(SETTINGS, when), facts(**fact_changes), when
    )


def test_meal_windows_are_local_and_end_exclusive() -> None:
    lunch = policy.service_at(SETTINGS, at("11:30"))
    assert lunch is not None and lunch.meal.name == "lunch" and lunch.day == "2026-11-26"
    assert policy.service_at(SETTINGS, at("13:30")) is None  # end is exclusive
    assert policy.service_at(SETTINGS, at("13:29")) is not None
    assert policy.service_at(SETTINGS, at("10:00")) is None
    # 23:30 UTC is 07:30 next morning in Asia/Shanghai: breakfast of the local day.
    utc = int(dt.datetime(2026, 11, 25, 23, 30, tzinfo=dt.UTC).timestamp())
    breakfast = policy.service_at(SETTINGS, utc)
    assert breakfast is not None and (breakfast.meal.name, breakfast.day) == (
        "breakfast",
        "2026-11-26",
    )


def test_prices_own_unit_and_visitor() -> None:
    assert decide(QR_OWN, at("12:00")) == policy.Verdict(True, None, 1000, {"tier": "own"}, "own")
    assert decide(QR_VISITOR, at("12:00")).amount_fen == 1500
    assert decide(QR_OWN, at("08:00")).amount_fen == 300


def test_outside_every_window() -> None:
    assert decide(QR_OWN, at("15:00")).reason == policy.OUTSIDE_MEAL_WINDOW
    assert decide(CARD_OWN, at("03:00")).reason == policy.OUTSIDE_MEAL_WINDOW


def test_once_per_meal_window() -> None:
    assert decide(QR_OWN, at("12:00"), served_this_meal=True).reason == policy.ALREADY_SERVED
    assert decide(CARD_OWN, at("12:00"), served_this_meal=True).reason == policy.ALREADY_SERVED


def test_daily_caps_from_settings() -> None:
    caps = SETTINGS.caps
    v = decide(QR_OWN, at("18:00"), day_meals=caps.qr_meals_per_day)
    assert v.reason == policy.DAILY_MEAL_CAP
    v = decide(QR_OWN, at("18:00"), day_meals=1, day_fen=caps.qr_fen_per_day - 799)
    assert v.reason == policy.DAILY_AMOUNT_CAP
    assert decide(QR_OWN, at("18:00"), day_meals=1, day_fen=caps.qr_fen_per_day - 800).accepted


def test_credential_allowance_lowers_but_never_raises_caps() -> None:
    tight = dataclasses.replace(QR_OWN, allowance=Allowance(meals_per_day=1, fen_per_day=None))
    assert decide(tight, at("18:00"), day_meals=1).reason == policy.DAILY_MEAL_CAP
    cheap = dataclasses.replace(QR_OWN, allowance=Allowance(meals_per_day=None, fen_per_day=900))
    assert decide(cheap, at("12:00")).reason == policy.DAILY_AMOUNT_CAP
    generous = dataclasses.replace(QR_OWN, allowance=Allowance(99, 10_000_000))
    v = decide(generous, at("18:00"), day_meals=SETTINGS.caps.qr_meals_per_day)
    assert v.reason == policy.DAILY_MEAL_CAP


def test_cards_have_their_own_lower_caps() -> None:
    n = SETTINGS.caps.card_meals_per_day
    assert decide(CARD_OWN, at("18:00"), day_meals=n).reason == policy.DAILY_MEAL_CAP
    assert decide(QR_OWN, at("18:00"), day_meals=n).accepted


def test_terminal_offline_caps() -> None:
    caps = SETTINGS.caps
    v = decide(QR_OWN, at("12:00"), unsynced_entries=caps.unsynced_entries)
    assert v.reason == policy.OFFLINE_ENTRIES_CAP
    assert decide(QR_OWN, at("12:00"), unsynced_entries=caps.unsynced_entries - 1).accepted
    v = decide(QR_OWN, at("12:00"), unsynced_fen=caps.unsynced_fen - 999)
    assert v.reason == policy.OFFLINE_AMOUNT_CAP
    v = decide(QR_OWN, at("12:00"), since_ack_s=caps.sync_overdue_s + 1)
    assert v.reason == policy.SYNC_OVERDUE
    assert decide(QR_OWN, at("12:00"), since_ack_s=caps.sync_overdue_s).accepted


def test_revocation_list_soft_limit_lowers_caps() -> None:
    soft = LIMITS.revocation_soft_s + 1
    pct = SETTINGS.caps.stale_caps_percent
    lowered = SETTINGS.caps.qr_meals_per_day * pct // 100
    v = decide(QR_OWN, at("18:00"), revocation_age_s=soft, day_meals=lowered)
    assert v.reason == policy.DAILY_MEAL_CAP and v.detail["caps_lowered_percent"] == pct
    v = decide(QR_OWN, at("18:00"), revocation_age_s=LIMITS.revocation_soft_s, day_meals=lowered)
    assert v.accepted
    entries = SETTINGS.caps.unsynced_entries * pct // 100
    v = decide(QR_OWN, at("12:00"), revocation_age_s=soft, unsynced_entries=entries)
    assert v.reason == policy.OFFLINE_ENTRIES_CAP


def test_revocation_list_hard_limit_refuses_qr_not_cards() -> None:
    hard = LIMITS.revocation_hard_s + 1
    assert decide(QR_OWN, at("12:00"), revocation_age_s=hard).reason == policy.REVOCATION_LIST_STALE
    assert decide(QR_OWN, at("12:00"), revocation_age_s=None).reason == policy.REVOCATION_LIST_STALE
    card = decide(CARD_OWN, at("12:00"), revocation_age_s=hard)
    assert card.accepted and card.detail["caps_lowered_percent"] == SETTINGS.caps.stale_caps_percent


def test_roster_hard_limit_refuses_cards_not_qr() -> None:
    old = LIMITS.roster_hard_s + 1
    assert decide(CARD_OWN, at("12:00"), roster_age_s=old).reason == policy.ROSTER_STALE
    assert decide(CARD_OWN, at("12:00"), roster_age_s=None).reason == policy.ROSTER_STALE
    assert decide(QR_OWN, at("12:00"), roster_age_s=old).accepted


@pytest.mark.parametrize("hhmm", ["07:00", "11:30", "17:30", "19:29"])
def test_every_window_start_is_served(hhmm: str) -> None:
    assert decide(QR_OWN, at(hhmm)).accepted
