"""A small terminal for the screen tests: a real Checkout on one worker thread, and its StaffDesk.

This module owns what the screen tests need in place of the daemon: a state
directory with a real ledger and trust store, opened and used only by one
worker thread (SQLite connections belong to the thread that opened them, as in
the daemon), a settable wall clock, wallets to draw real QR codes, and a
``StaffDesk`` that answers the screen's staff endpoints through that worker.
It never reaches into the screen: decisions go to it through ``show_decision``
exactly as the daemon will send them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import queue
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet

from terminal import config, policy, state, trust
from terminal.checkout import Checkout, Decision, ReversalRefused
from terminal.display.desk import (
    Charge,
    DaySummary,
    DayTotals,
    MealTotal,
    Refusal,
    Reversal,
    pin_matches,
)
from terminal.ledger import ACCEPT, REJECT, REVERSAL, SALE, LedgerEntry

SETTINGS = dataclasses.replace(config.load(), units=frozenset({"own"}))
TZ = SETTINGS.timezone
ISSUER = Issuer("hn-display", key_from_seed("display-issuer"))
T = TypeVar("T")


def at(hhmm: str, day: int = 26) -> int:
    """Unix seconds at a local time on 2026-11-<day>."""
    h, m = map(int, hhmm.split(":"))
    return int(dt.datetime(2026, 11, day, h, m, tzinfo=TZ).timestamp())


LUNCH = at("12:00")


class Terminal:
    """The decision worker of a test terminal: every ledger call runs on its one thread."""

    def __init__(self, root: Path) -> None:
        self.screen: Any = None  # set once the Screen is built; gets each decision
        self.clock_ms = LUNCH * 1000
        self.names: dict[int, str | None] = {}  # seq -> display name, as the daemon remembers
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._checkout: Checkout | None = None
        self._thread = threading.Thread(target=self._work, args=(root,), name="decision-worker")
        self._thread.start()
        self.run(self._install)

    # ---- the worker ----

    def _work(self, root: Path) -> None:
        book, store = state.open_state(root, SETTINGS.terminal_id, self.clock_ms - 86400_000)
        self._checkout = Checkout(SETTINGS, book, store)
        try:
            while (job := self._jobs.get()) is not None:
                fn, future = job
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            book.close()
            store.close()

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker and wait for it, as the daemon's queue does."""
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future.result(timeout=10)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    @property
    def c(self) -> Checkout:
        assert self._checkout is not None, "only on the worker"
        return self._checkout

    def _install(self) -> None:
        issued_at = LUNCH - 3600
        header = trust.ListHeader(1, issued_at, None)
        store = self.c.trust
        store.replace_issuers(trust.parse_issuer_keys([ISSUER.trust_entry()]), header, issued_at)
        store.replace_revocations(trust.parse_revocations([]), header, issued_at)
        store.replace_roster([], header, issued_at)

    # ---- presentations, as the daemon sends them to the screen ----

    def present(self, code: str) -> Decision:
        decision = self.run(lambda: self.c.present_qr(code, self.clock_ms))
        self.names[decision.entry.seq] = decision.display_name
        if self.screen is not None:
            self.screen.show_decision(view(decision))
        return decision

    def entries(self) -> list[LedgerEntry]:
        return self.run(lambda: list(self.c.ledger.entries()))


def view(d: Decision) -> dict[str, Any]:
    """The decision as the daemon hands it to ``Screen.show_decision``."""
    e = d.entry
    return {
        "seq": e.seq,
        "verdict": e.verdict,
        "reason": e.reason,
        "display_name": d.display_name,
        "unit": e.unit,
        "meal": e.meal,
        "amount_fen": e.amount_fen,
        "method": e.method,
        "at_ms": e.at_ms,
    }


def wallet(sub: str, name: str | None = None, unit: str = "own") -> Wallet:
    return make_wallet(ISSUER, sub, unit, name or f"cadre {sub}", now=LUNCH - 86400, seed=sub)


class CheckoutDesk:
    """The StaffDesk over the test terminal's worker."""

    def __init__(self, terminal: Terminal, pin: str) -> None:
        self.t = terminal
        self.pin = pin

    def staff_for_pin(self, pin: str) -> str | None:
        return "staff" if pin_matches(self.pin, pin) else None

    def last_charge(self) -> Charge | None:
        sale = self.t.run(lambda: self.t.c.ledger.last_sale())
        if sale is None:
            return None
        return Charge(
            seq=sale.seq,
            at_ms=sale.at_ms,
            display_name=self.t.names.get(sale.seq),
            unit=sale.unit,
            meal=sale.meal,
            amount_fen=sale.amount_fen,
            method=sale.method or "",
        )

    def reverse(self, sale_seq: int, staff: str, within_s: int) -> Reversal | Refusal:
        def act() -> Reversal | Refusal:
            try:
                e = self.t.c.reverse(sale_seq, self.t.clock_ms, within_s, staff)
            except ReversalRefused as refused:
                return Refusal(refused.code, str(refused))
            assert e.ref_seq is not None
            return Reversal(e.seq, e.ref_seq, e.at_ms, e.amount_fen, e.meal)

        return self.t.run(act)

    def _today(self) -> tuple[str, list[LedgerEntry]]:
        def read() -> tuple[str, list[LedgerEntry]]:
            day = policy.local_day(SETTINGS, self.t.clock_ms // 1000)
            return day, list(self.t.c.ledger.entries())

        return self.t.run(read)

    def today_totals(self) -> DayTotals:
        day, entries = self._today()
        return _totals(day, entries, self.t.clock_ms)

    def day_summary(self) -> DaySummary:
        day, entries = self._today()
        todays = [e for e in entries if _local_day(e.at_ms) == day]
        reasons = Counter(e.reason for e in todays if e.verdict == REJECT and e.reason)
        return DaySummary(
            totals=_totals(day, entries, self.t.clock_ms),
            terminal_id=SETTINGS.terminal_id,
            canteen_id=SETTINGS.canteen_id,
            canteen_name=SETTINGS.canteen_name,
            first_seq=todays[0].seq if todays else None,
            last_seq=todays[-1].seq if todays else None,
            refusals_by_reason=dict(sorted(reasons.items())),
            unsynced_entries=sum(1 for e in entries if e.acked_at_ms is None),
        )


def _local_day(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, TZ).strftime("%Y-%m-%d")


FIELDS = ("sales", "sales_fen", "reversals", "reversed_fen", "refusals")


def _totals(day: str, entries: list[LedgerEntry], now_ms: int) -> DayTotals:
    rows = {m.name: dict.fromkeys(FIELDS, 0) for m in SETTINGS.meals}
    for e in entries:
        if e.day != day or e.meal is None:
            continue
        row = rows.setdefault(e.meal, dict.fromkeys(FIELDS, 0))
        if e.kind == SALE and e.verdict == ACCEPT:
            row["sales"] += 1
            row["sales_fen"] += e.amount_fen
        elif e.kind == SALE and e.verdict == REJECT:
            row["refusals"] += 1
        elif e.kind == REVERSAL:
            row["reversals"] += 1
            row["reversed_fen"] += e.amount_fen
    meals = tuple(MealTotal(meal=name, **row) for name, row in rows.items())
    return DayTotals(day=day, meals=meals, generated_at_ms=now_ms)


def display_settings(**changes: Any) -> Any:
    """The [display] defaults with a PIN, port 0 and any changes."""
    from terminal.display import settings

    base = settings.load()
    return dataclasses.replace(base, port=0, staff_pin="4821", **changes)
