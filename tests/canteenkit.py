"""A checkout canteen for the decision-core tests: a real state directory, trust store and
ledger file, opened and reopened the way the daemon does, and wallets of one test issuer.

It owns the issuer, the lunch time the tests sell at, and `Canteen`; it never starts a
thread, a server or a device (the `canteen` fixture in conftest.py builds one).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet

from terminal import config, state, trust
from terminal.core.checkout import Checkout

SETTINGS = dataclasses.replace(config.load(), units=frozenset({"own"}))
TZ = SETTINGS.timezone
ISSUER = Issuer("hn-test", key_from_seed("checkout-issuer"))


def at(hhmm: str, day: int = 26) -> int:
    """Unix seconds at a local time on 2026-11-<day>."""
    h, m = map(int, hhmm.split(":"))
    return int(dt.datetime(2026, 11, day, h, m, tzinfo=TZ).timestamp())


LUNCH = at("12:00")


class Canteen:
    """A terminal's state directory, opened and reopened like the daemon would."""

    def __init__(self, root: Path, settings: config.Settings = SETTINGS) -> None:
        self.root = root
        self.settings = settings
        self.counter: Checkout | None = None
        self.open(LUNCH * 1000 - 86400_000)

    def open(self, now_ms: int) -> Checkout:
        book, store = state.open_state(self.root, self.settings.terminal_id, now_ms)
        self.counter = Checkout(self.settings, book, store)
        return self.counter

    def restart(self) -> Checkout:
        self.close()
        return self.open(LUNCH * 1000)

    def close(self) -> None:
        if self.counter is not None:
            self.counter.ledger.close()
            self.counter.trust.close()
            self.counter = None

    @property
    def c(self) -> Checkout:
        assert self.counter is not None
        return self.counter

    def install(
        self,
        *,
        issued_at: int = LUNCH - 3600,
        revoked: list[dict[str, str]] | None = None,
        cards: list[trust.RosterCard] | None = None,
        version: int = 1,
    ) -> None:
        store = self.c.trust
        header = trust.ListHeader(version, issued_at, None)
        store.replace_issuers(trust.parse_issuer_keys([ISSUER.trust_entry()]), header, issued_at)
        store.replace_revocations(trust.parse_revocations(revoked or []), header, issued_at)
        store.replace_roster(cards or [], header, issued_at)


def wallet(sub: str, unit: str = "own", **kw: object) -> Wallet:
    return make_wallet(ISSUER, sub, unit, f"cadre {sub}", now=LUNCH - 86400, seed=sub, **kw)  # type: ignore[arg-type]
