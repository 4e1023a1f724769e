"""What the staff panel asks of the terminal: the ``StaffDesk`` protocol and its answers.

This module owns the contract between the screen and whoever runs the
decision worker (the daemon; a test helper in tests/displaykit.py): who a PIN
belongs to, the last charge, a reversal, today's totals by meal and the
end-of-day summary, and the CSV form of that summary. It never touches the
ledger, a clock or the network itself: the implementation does, on the one
decision worker, and the screen only calls it from its HTTP threads.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from protocol.agencies import Directory
from protocol.chain import LedgerEntry


@dataclass(frozen=True)
class Charge:
    """An accepted, not reversed sale that staff may be asked to undo."""

    seq: int  # ledger sequence number of the sale
    at_ms: int  # trusted time of the sale, Unix ms UTC
    display_name: str | None  # the cadre's name, when the terminal still knows it
    unit: str | None  # unit code
    meal: str | None
    amount_fen: int
    method: str  # "qr" or "card"
    # The unit's name: the agency directory's, else the settings' unit_names, if known.
    unit_name: str | None = None
    # The price tier the sale was charged at, as its entry records it; None for a sale
    # recorded before terminals recorded tiers (never guessed).
    tier: str | None = None


def charge_of(
    sale: LedgerEntry,
    display_name: str | None,
    unit_names: Mapping[str, str],
    directory: Directory | None = None,
) -> Charge:
    """The charge staff see for ``sale``, with the cadre's name, the unit's name if known
    (the installed directory first, then ``unit_names``) and the recorded price tier."""
    unit = sale.unit or ""
    named = directory.name_of(unit) if directory is not None else None
    tier = sale.detail.get("tier")
    return Charge(
        seq=sale.seq,
        at_ms=sale.at_ms,
        display_name=display_name,
        unit=sale.unit,
        meal=sale.meal,
        amount_fen=sale.amount_fen,
        method=sale.method or "",
        unit_name=named or unit_names.get(unit),
        tier=tier if isinstance(tier, str) else None,
    )


@dataclass(frozen=True)
class Reversal:
    """A committed reversal entry."""

    seq: int  # the reversal entry's sequence number
    sale_seq: int  # the sale it reverses
    at_ms: int
    amount_fen: int
    meal: str | None


@dataclass(frozen=True)
class Refusal:
    """A staff action that was not done, with a code and a sentence for the staff."""

    code: str  # no_such_sale, reversal_too_late, nothing_to_reverse, busy, ...
    message: str


@dataclass(frozen=True)
class MealTotal:
    meal: str  # meal window name; "" for sales outside any window (none today)
    sales: int  # accepted sales, reversed ones included
    sales_fen: int
    reversals: int
    reversed_fen: int
    refusals: int  # refused presentations that named this meal

    @property
    def net_fen(self) -> int:
        return self.sales_fen - self.reversed_fen


@dataclass(frozen=True)
class DayTotals:
    """Today's figures by meal, as the staff panel shows them."""

    day: str  # local service day, YYYY-MM-DD
    meals: tuple[MealTotal, ...]
    generated_at_ms: int

    @property
    def net_fen(self) -> int:
        return sum(m.net_fen for m in self.meals)


@dataclass(frozen=True)
class DaySummary:
    """The end-of-day summary to print or export."""

    totals: DayTotals
    terminal_id: str
    canteen_id: str
    canteen_name: str
    first_seq: int | None  # the day's first and last ledger entries
    last_seq: int | None
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    unsynced_entries: int = 0  # not yet acknowledged by the county server

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"]["net_fen"] = self.totals.net_fen
        for item, meal in zip(data["totals"]["meals"], self.totals.meals, strict=True):
            item["net_fen"] = meal.net_fen
        return data


class DeskClosed(Exception):
    """The terminal is not doing staff actions now (a ledger that failed its check):
    the message says why, for staff, in one line."""


class StaffDesk(Protocol):
    """Implemented by the daemon over its decision worker; every call may block briefly."""

    def staff_for_pin(self, pin: str) -> str | None:
        """The staff identity recorded in a reversal, or None when the PIN is wrong.

        Compare in constant time (``hmac.compare_digest``); the screen adds the lockout.
        """
        ...

    def last_charge(self) -> Charge | None:
        """The newest accepted sale that is not reversed, or None."""
        ...

    def reverse(self, sale_seq: int, staff: str, within_s: int) -> Reversal | Refusal:
        """Reverse that sale if it is accepted, not reversed and at most ``within_s`` old."""
        ...

    def today_totals(self) -> DayTotals:
        """Totals by meal for the local service day now."""
        ...

    def day_summary(self) -> DaySummary:
        """The end-of-day summary for the local service day now."""
        ...


def pin_matches(expected: str, given: str) -> bool:
    """Constant-time PIN comparison; an empty expected PIN matches nothing."""
    if not expected:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


CSV_COLUMNS = (
    "terminal_id",
    "canteen_id",
    "day",
    "meal",
    "sales",
    "sales_fen",
    "reversals",
    "reversed_fen",
    "net_fen",
    "refusals",
)


def summary_csv(summary: DaySummary) -> str:
    """One row per meal and a total row; money in fen, as in the ledger."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    who = (summary.terminal_id, summary.canteen_id, summary.totals.day)
    for m in summary.totals.meals:
        writer.writerow(
            (*who, m.meal, m.sales, m.sales_fen, m.reversals, m.reversed_fen, m.net_fen, m.refusals)
        )
    meals = summary.totals.meals
    writer.writerow(
        (
            *who,
            "total",
            sum(m.sales for m in meals),
            sum(m.sales_fen for m in meals),
            sum(m.reversals for m in meals),
            sum(m.reversed_fen for m in meals),
            summary.totals.net_fen,
            sum(m.refusals for m in meals),
        )
    )
    return out.getvalue()
