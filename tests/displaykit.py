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
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet

from terminal import config, state, trust
from terminal.core.checkout import NO_SUCH_SALE, Checkout, Decision, ReversalRefused
from terminal.core.desk import (
    Charge,
    DaySummary,
    DayTotals,
    Refusal,
    Reversal,
    charge_of,
    pin_matches,
)
from terminal.display.settings import DisplaySettings
from terminal.display.settings import load as load_display
from terminal.ledger import LedgerEntry, LedgerError
from terminal.service import daemon

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
        # A daemon thread: a test that fails half-way must not keep pytest from exiting.
        self._thread = threading.Thread(
            target=self._work, args=(root,), name="decision-worker", daemon=True
        )
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
    return daemon.decision_view(d)


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
        c = self.t.c
        return charge_of(sale, self.t.names.get(sale.seq), c.settings.unit_names, c.directory)

    def reverse(self, sale_seq: int, staff: str, within_s: int) -> Reversal | Refusal:
        def act() -> Reversal | Refusal:
            try:
                e = self.t.c.reverse(sale_seq, self.t.clock_ms, within_s, staff)
            except ReversalRefused as refused:
                return Refusal(refused.code, str(refused))
            except LedgerError as err:
                # Checkout.reverse leaves "already reversed" to the ledger's trigger check;
                # docs/reasons.md names it no_such_sale.
                return Refusal(NO_SUCH_SALE, str(err))
            assert e.ref_seq is not None
            return Reversal(e.seq, e.ref_seq, e.at_ms, e.amount_fen, e.meal)

        return self.t.run(act)

    # The daemon's own figures (terminal/service/daemon.py), on this terminal's worker.
    def today_totals(self) -> DayTotals:
        return self.t.run(lambda: daemon.day_totals(self.t.c, self.t.clock_ms))

    def day_summary(self) -> DaySummary:
        return self.t.run(lambda: daemon.day_summary(self.t.c, self.t.clock_ms))


def display_settings(**changes: Any) -> DisplaySettings:
    """The [display] defaults with a PIN, port 0 and any changes."""
    fields: dict[str, Any] = {"port": 0, "staff_pin": "4821", **changes}
    return dataclasses.replace(load_display(), **fields)


class Kit:
    """A running screen over a test terminal, and plain HTTP helpers against it."""

    def __init__(self, root: Path, **display: Any) -> None:
        from terminal.display.server import Screen

        self.terminal = Terminal(root)
        self.desk = CheckoutDesk(self.terminal, display.pop("staff_pin", "4821"))
        self.settings = display_settings(staff_pin=self.desk.pin, **display)
        self.screen = Screen(self.settings, self.desk)
        self.terminal.screen = self.screen
        self.screen.start()

    @property
    def url(self) -> str:
        return self.screen.url

    def close(self) -> None:
        self.screen.stop()
        self.terminal.close()

    def get(self, path: str) -> tuple[int, Any]:
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON or raw bytes, headers) of a POST with a JSON body."""
        import json
        import urllib.error
        import urllib.request

        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                raw, status, head = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as err:
            raw, status, head = err.read(), err.code, dict(err.headers)
        if head.get("Content-Type", "").startswith("application/json"):
            return status, json.loads(raw), head
        return status, raw, head

    def ready(self, **changes: Any) -> dict[str, Any]:
        """A typical ready status at lunch, with changes; sent to the screen."""
        status: dict[str, Any] = {
            "state": "ready",
            "sentence": "就绪",
            "online": True,
            "since_ms": self.terminal.clock_ms - 3 * 3600_000,
            "unsynced": 3,
            "last_sync_ms": self.terminal.clock_ms - 120_000,
            "list_age_s": 3600,
            "settings_version": 7,
            "clock_trusted": True,
            "canteen_name": SETTINGS.canteen_name,
            "meal": "lunch",
            "price_fen": 1000,
            "price_visitor_fen": 1500,
        }
        status.update(changes)
        self.screen.set_status(status)
        return status


class EventReader:
    """A raw SSE client: reads (event, data) pairs from /events."""

    def __init__(self, kit: Kit, timeout: float = 5.0, cookie: str | None = None) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", kit.screen.port), timeout=timeout)
        host = f"127.0.0.1:{kit.screen.port}"
        extra = f"Cookie: {cookie}\r\n" if cookie else ""
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        self.file = self.sock.makefile("rb")
        self.status_line = self.file.readline().decode()
        while self.file.readline() not in (b"\r\n", b"\n", b""):
            pass

    def next(self, skip: tuple[str, ...] = ("ping",)) -> tuple[str, Any]:
        import json

        name, data = "message", ""
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("the stream ended")
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                name = text[7:]
            elif text.startswith("data: "):
                data += text[6:]
            elif text == "":
                if data and name not in skip:
                    return name, json.loads(data)
                name, data = "message", ""

    def close(self) -> None:
        self.file.close()
        self.sock.close()
