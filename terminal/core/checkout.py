"""The decision at the counter: a QR text or a card UID in, a committed verdict out.

This module owns the order of the checks (token.md §4 steps 1 to 8 for QR
codes, the roster for cards), recording the clock faults of the trusted time
(terminal/core/clock.py), and turning each outcome into exactly one ledger
entry. It holds the installed agency directory (set by the service at start and
after each update set, as it sets the settings) so the meal policy decides the
price tier offline, and it names the diner's agency for the screen.
It is what the one decision worker runs;
nothing here is thread-safe and nothing needs to be. A verdict is returned only
after its entry is committed, so nothing reaches the screen that the ledger
does not hold. It imports no device or network library and takes the wall
clock as an argument, so tests drive it with a fake clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from protocol.agencies import Directory
from protocol.chain import (
    ACCEPT,
    CLOCK_FAULT,
    REJECT,
    REVERSAL,
    SALE,
    TIME_SIGNAL,
    TOKEN_CHECK,
    EntryDraft,
    LedgerEntry,
)
from protocol.lists import REVOCATIONS, ROSTER
from protocol.tokens import (
    REPLAYED,
    REVOKED,
    Presentation,
    SignatureMemo,
    TokenRejected,
    verify_presentation,
)
from terminal.config import Settings
from terminal.core import policy
from terminal.core.clock import TrustedClock
from terminal.core.ports import Book, Lists

NO_SUCH_SALE = "no_such_sale"
REVERSAL_TOO_LATE = "reversal_too_late"


@dataclass(frozen=True)
class Decision:
    """A committed verdict with what the screen and the command line show."""

    entry: LedgerEntry
    display_name: str | None = None
    iss: str | None = None
    sub: str | None = None
    cti: bytes | None = None
    # The price tier charged (protocol/agencies.py TIERS), when the decision reached the
    # price; the screen words it (and says so when the unit is not in the directory).
    tier: str | None = None
    # The diner's agency by name: the directory's name, else the settings' [canteen]
    # unit_names; None when neither knows the unit (the screen shows its code).
    unit_name: str | None = None

    @property
    def accepted(self) -> bool:
        return self.entry.verdict == ACCEPT

    @property
    def reason(self) -> str | None:
        return self.entry.reason

    def as_json(self) -> dict[str, Any]:
        """The verify-token line: {"verdict", "reason", "iss", "sub", "cti", "ctr"}."""
        return {
            "verdict": self.entry.verdict,
            "reason": self.entry.reason,
            "iss": self.iss,
            "sub": self.sub,
            "cti": self.cti.hex() if self.cti is not None else None,
            "ctr": self.entry.ctr,
        }


def credential_ref(iss: str, cti: bytes) -> str:
    return f"qr/{iss}/{cti.hex()}"


def card_ref(uid: bytes) -> str:
    return f"card/{uid.hex()}"


B = TypeVar("B", bound=Book)
L = TypeVar("L", bound=Lists)


class Checkout(Generic[B, L]):
    """Runs every check for one presentation and records the outcome.

    Generic over the ledger (``B``) and the lists (``L``) it is given, so that the
    service keeps their full types (``TerminalCheckout``) while the core names only
    what it asks of them (terminal/core/ports.py).
    """

    def __init__(self, settings: Settings, ledger: B, trust: L) -> None:
        self.settings = settings
        self.ledger = ledger
        self.trust = trust
        # The installed agency directory; None until one is installed (then prices are
        # own or visitor only). The service sets it at start and after each update set.
        self.directory: Directory | None = None
        # Parsed issuer keys and good signatures, kept between codes (protocol/tokens.py).
        self.token_memo = SignatureMemo()
        self.clock = TrustedClock(
            ledger.last_time_ms(),
            settings.clock_fault_tolerance_s * 1000,
            settings.clock_earliest_s * 1000,
        )
        self._restore_clock()
        genesis = ledger.entry(1)
        # With no acknowledged sync yet, "time since the last sync" counts from the ledger's start.
        self._began_ms = genesis.at_ms if genesis is not None else self.clock.floor_ms

    # ---- time ----

    def _restore_clock(self) -> None:
        """Take the wall clock's standing from the newest recorded county time.

        However far back it is: a terminal the county found fast, offline since and busy
        (or fed thousands of refusals at the counter), must not come back from a power
        cut trusting its wall clock. The floor is the newest time from that entry on: a
        floor lowered by the county (after a wall clock that ran ahead) stays lowered.
        """
        found = self.ledger.last_of_kind(TIME_SIGNAL)
        if found is None:
            return
        entry, newest = found
        ahead = entry.detail.get("wall_ahead_ms")
        off = entry.detail.get("clock_trusted") is False and type(ahead) is int
        self.clock.restore(ahead if off else None, newest)

    def now(self, wall_ms: int, mono_ms: int | None = None) -> int:
        """Trusted time for a decision at ``wall_ms``; records a clock fault when one starts.

        ``mono_ms`` is the monotonic clock in ms: with it, a wall clock the county
        found wrong is replaced by the county's time carried on by this clock.
        """
        trusted, fault_started = self.clock.read(wall_ms, mono_ms)
        if fault_started:
            self._append(
                EntryDraft(
                    kind=CLOCK_FAULT,
                    detail={
                        "wall_ms": wall_ms,
                        "floor_ms": trusted,
                        "behind_ms": trusted - wall_ms,
                    },
                ),
                trusted,
            )
        return trusted

    def _append(self, draft: EntryDraft, at_ms: int) -> LedgerEntry:
        entry = self.ledger.append(draft, at_ms)
        self.clock.raise_floor(at_ms)
        return entry

    # ---- QR ----

    def verify_token(self, text: str, wall_ms: int, mono_ms: int | None = None) -> Decision:
        """Token checks only (steps 1 to 7, no meal policy), as verify-token does.

        Accepted checks are recorded like sales, so they are the replay memory.
        """
        now_ms = self.now(wall_ms, mono_ms)
        outcome = self._token_checks(text, now_ms)
        if isinstance(outcome, str):
            return self._refuse_token(text, outcome, now_ms, TOKEN_CHECK)
        if isinstance(outcome, tuple):
            return self._refuse_verified(text, *outcome, now_ms, TOKEN_CHECK)
        p = outcome
        draft = _verified_draft(p, TOKEN_CHECK, ACCEPT)
        return Decision(
            self._append(draft, now_ms),
            p.display_name,
            p.iss,
            p.sub,
            p.cti,
            unit_name=self.unit_name(p.unit),
        )

    def present_qr(self, text: str, wall_ms: int, mono_ms: int | None = None) -> Decision:
        """A code from the camera: every check, the meal policy, and one ledger entry."""
        now_ms = self.now(wall_ms, mono_ms)
        if not self.clock.sells(now_ms):
            return self._refuse_token(text, policy.CLOCK_UNTRUSTED, now_ms, SALE)
        outcome = self._token_checks(text, now_ms)
        if isinstance(outcome, str):
            return self._refuse_token(text, outcome, now_ms, SALE)
        if isinstance(outcome, tuple):
            return self._refuse_verified(text, *outcome, now_ms, SALE)
        p = outcome
        diner = policy.Diner(f"{p.iss}/{p.sub}", p.unit, p.display_name, policy.QR, p.allowance)
        entry, tier = self._decide(
            diner,
            now_ms,
            credential=credential_ref(p.iss, p.cti),
            ctr=p.ctr,
            # The phone's signed code is kept so the county can check every accepted sale.
            detail={"qr": text},
        )
        return Decision(entry, p.display_name, p.iss, p.sub, p.cti, tier, self.unit_name(p.unit))

    def _token_checks(
        self, text: str, now_ms: int
    ) -> Presentation | str | tuple[Presentation, str, dict[str, Any]]:
        """The presentation; a reason code when it did not verify (steps 1-5); or
        (presentation, reason, detail) when it verified and is replayed or revoked."""
        try:
            p = verify_presentation(
                text,
                now_ms // 1000,
                self.trust,
                self.settings.window_s,
                self.settings.skew_s,
                self.token_memo,
            )
        except TokenRejected as rejected:
            return rejected.code
        highest = self.ledger.highest_ctr(credential_ref(p.iss, p.cti))
        if highest is not None and p.ctr <= highest:
            return p, REPLAYED, {"highest_ctr": highest}
        kind = self.trust.revoked_kind(p)
        if kind is not None:
            return p, REVOKED, {"revoked": kind}
        return p

    def _refuse_verified(
        self,
        text: str,
        p: Presentation,
        reason: str,
        detail: dict[str, Any],
        now_ms: int,
        kind: str,
    ) -> Decision:
        # Steps 1-5 passed, so the signed fields are proven: the county sees which cadre and
        # credential still try after a revocation (or who replays). The code itself is not
        # kept; its digest matches it against other attempts, as for unverified codes.
        draft = _verified_draft(p, kind, REJECT, reason, {**detail, **_text_digest(text)})
        return Decision(
            self._append(draft, now_ms),
            p.display_name,
            p.iss,
            p.sub,
            p.cti,
            unit_name=self.unit_name(p.unit),
        )

    def _refuse_token(self, text: str, reason: str, now_ms: int, kind: str) -> Decision:
        # Nothing from an unverified payload is recorded; a digest lets the county match
        # repeated attempts with the same text without storing hostile bytes.
        draft = EntryDraft(
            kind=kind, verdict=REJECT, reason=reason, method=policy.QR, detail=_text_digest(text)
        )
        return Decision(self._append(draft, now_ms))

    # ---- cards ----

    def present_card(self, uid: bytes, wall_ms: int, mono_ms: int | None = None) -> Decision:
        """A card UID (canonical bytes) from the reader, looked up in the roster."""
        now_ms = self.now(wall_ms, mono_ms)
        ref = card_ref(uid)
        reason: str | None = None
        card = self.trust.card(uid)
        if not self.clock.sells(now_ms):
            reason = policy.CLOCK_UNTRUSTED
        elif card is None:
            reason = policy.CARD_UNKNOWN
        elif card.status != "active" or self.trust.card_revoked(uid):
            reason = policy.CARD_REVOKED
        elif self.trust.cadre_revoked(card.iss, card.sub):
            # The holder is revoked (token.md §5 kind "cadre"): their card goes with their codes.
            reason = REVOKED
        if reason is not None or card is None:
            detail: dict[str, Any] = {"card_status": card.status} if card else {}
            if reason == REVOKED:
                detail["revoked"] = "cadre"
            draft = EntryDraft(
                kind=SALE,
                verdict=REJECT,
                reason=reason,
                method=policy.CARD,
                credential=ref,
                cadre=card.cadre if card else None,
                detail=detail,
            )
            entry = self._append(draft, now_ms)
            if card is None:
                return Decision(entry)
            return Decision(entry, card.display_name, unit_name=self.unit_name(card.unit))
        diner = policy.Diner(card.cadre, card.unit, card.display_name, policy.CARD)
        entry, tier = self._decide(diner, now_ms, credential=ref, ctr=None, detail={})
        return Decision(
            entry, card.display_name, card.iss, card.sub, None, tier, self.unit_name(card.unit)
        )

    # ---- names ----

    def unit_name(self, unit: str | None) -> str | None:
        """The agency of ``unit`` by name: the installed directory's name, else the
        settings' [canteen] unit_names; None when neither knows it."""
        if unit is None:
            return None
        named = self.directory.name_of(unit) if self.directory is not None else None
        return named or self.settings.unit_names.get(unit)

    # ---- the meal policy, shared by both paths ----

    def facts(self, cadre: str, service: policy.Service | None, now_ms: int) -> policy.Facts:
        now_s = now_ms // 1000
        day = service.day if service else policy.local_day(self.settings, now_s)
        served = service is not None and self.ledger.served(cadre, service.day, service.meal.name)
        day_meals, day_fen = self.ledger.day_totals(cadre, day)
        unsynced, unsynced_fen = self.ledger.unsynced()
        last_ack = self.ledger.last_ack_ms()
        since = last_ack if last_ack is not None else self._began_ms
        return policy.Facts(
            served_this_meal=served,
            day_meals=day_meals,
            day_fen=day_fen,
            unsynced_entries=unsynced,
            unsynced_fen=unsynced_fen,
            since_ack_s=max(0, (now_ms - since) // 1000),
            revocation_age_s=self._age(REVOCATIONS, now_s),
            roster_age_s=self._age(ROSTER, now_s),
        )

    def _age(self, name: str, now_s: int) -> int | None:
        info = self.trust.list_info(name)
        return None if info is None else max(0, now_s - info.issued_at)

    def _decide(
        self,
        diner: policy.Diner,
        now_ms: int,
        *,
        credential: str,
        ctr: int | None,
        detail: dict[str, Any],
    ) -> tuple[LedgerEntry, str | None]:
        """The sale entry of the meal policy's verdict, and the price tier it reached."""
        now_s = now_ms // 1000
        service = policy.service_at(self.settings, now_s)
        verdict = policy.decide(
            self.settings,
            diner,
            service,
            self.facts(diner.cadre, service, now_ms),
            now_s,
            self.directory,
        )
        draft = EntryDraft(
            kind=SALE,
            verdict=ACCEPT if verdict.accepted else REJECT,
            reason=verdict.reason,
            method=diner.method,
            cadre=diner.cadre,
            credential=credential,
            ctr=ctr,
            unit=diner.unit,
            day=service.day if service else policy.local_day(self.settings, now_s),
            meal=service.meal.name if service else None,
            amount_fen=verdict.amount_fen,
            detail={**verdict.detail, **(detail if verdict.accepted else {})},
        )
        return self._append(draft, now_ms), verdict.tier

    # ---- staff ----

    def reverse(self, seq: int, wall_ms: int, within_s: int, staff: str) -> LedgerEntry:
        """Undo an accepted sale by a new reversal entry; nothing is edited."""
        now_ms = self.now(wall_ms)
        sale = self.ledger.entry(seq)
        if sale is None or sale.kind != SALE or sale.verdict != ACCEPT:
            raise ReversalRefused(NO_SUCH_SALE, f"entry {seq} is not an accepted sale")
        if self.ledger.reversal_of(seq) is not None:
            raise ReversalRefused(NO_SUCH_SALE, f"sale {seq} is already reversed")
        if now_ms - sale.at_ms > within_s * 1000:
            raise ReversalRefused(
                REVERSAL_TOO_LATE,
                f"sale {seq} is older than {within_s // 60} minutes; ask county IT to refund it",
            )
        return self._append(reversal_draft(sale, staff), now_ms)


def _verified_draft(
    p: Presentation,
    kind: str,
    verdict: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> EntryDraft:
    """An entry for a code whose signature verified: its cadre, credential, counter and
    unit are proven, so they are recorded."""
    return EntryDraft(
        kind=kind,
        verdict=verdict,
        reason=reason,
        method=policy.QR,
        cadre=f"{p.iss}/{p.sub}",
        credential=credential_ref(p.iss, p.cti),
        ctr=p.ctr,
        unit=p.unit,
        detail=detail if detail is not None else {},
    )


def _text_digest(text: str) -> dict[str, Any]:
    """What is kept of a code's text when it is refused: a digest and the length, not the bytes."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
    return {"qr_sha256": digest, "qr_length": len(text)}


def reversal_draft(sale: LedgerEntry, staff: str) -> EntryDraft:
    """The entry that undoes ``sale``: its diner, unit, meal and amount, naming it and the staff."""
    return EntryDraft(
        kind=REVERSAL,
        method=sale.method,
        cadre=sale.cadre,
        credential=sale.credential,
        unit=sale.unit,
        day=sale.day,
        meal=sale.meal,
        amount_fen=sale.amount_fen,
        ref_seq=sale.seq,
        detail={"staff": staff},
    )


class ReversalRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
