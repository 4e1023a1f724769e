"""A small built-in canteen lunch, run through the real decision core.

This module owns the newcomer's first run: it makes an issuer and a handful of
cadres with the token-issuing code of protocol/issue.py, installs their lists in a
real state directory, presents QR codes and card swipes at lunch time through
the same Checkout the daemon uses, prints every committed verdict, then
verifies the ledger it wrote. It is a demonstration, never part of a terminal's
normal work, and the only terminal module that signs tokens. It never imports the
simulator (hwsim): its keys come from fixed seeds, so every run draws the same cadres.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path

from protocol.issue import Issuer, Wallet, cti_from_seed, enrol, key_from_seed
from terminal import config, ledger, state, trust
from terminal.core import reasons
from terminal.core.checkout import Checkout, Decision

DEMO_ISSUER = "hn-demo"


def run_demo(state_dir: str | None, config_path: str | None) -> int:
    settings = config.load(config_path)
    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="canteen-demo-") as tmp:
            return _run(Path(tmp), settings)
    return _run(Path(state_dir), settings)


def _lunch_time(settings: config.Settings) -> int:
    """Today (in the canteen's zone) at the middle of the lunch window, as Unix seconds."""
    meal = next((m for m in settings.meals if m.name == "lunch"), settings.meals[0])
    today = dt.datetime.now(settings.timezone).date()
    start = dt.datetime.combine(today, meal.start, settings.timezone)
    end = dt.datetime.combine(today, meal.end, settings.timezone)
    return int((start + (end - start) / 2).timestamp())


def _run(root: Path, settings: config.Settings) -> int:
    now = _lunch_time(settings)
    own_unit = sorted(settings.units)[0]
    issuer = Issuer(DEMO_ISSUER, key_from_seed("demo-issuer"))

    def cadre(sub: str, unit: str, name: str, seed: str) -> Wallet:
        """A cadre enrolled yesterday on a phone whose key and credential id come from ``seed``."""
        key, cti = key_from_seed(seed), cti_from_seed(seed)
        return enrol(issuer, sub, unit, name, holder_key=key, cti=cti, now=now - 86400)

    zhang = cadre("D0001", own_unit, "张伟", "demo-zhang")
    li = cadre("D0002", "visiting-bureau", "李娜", "demo-li")
    wang = cadre("D0003", own_unit, "王芳", "demo-wang")
    zhao = cadre("D0004", own_unit, "赵强", "demo-zhao")

    paths = state.prepare(root)
    store = trust.TrustStore(paths.trust)
    store.replace_issuers(
        trust.parse_issuer_keys([issuer.trust_entry()]), trust.ListHeader(1, now, None), now
    )
    store.replace_revocations(
        trust.parse_revocations(
            [{"kind": "credential", "iss": DEMO_ISSUER, "cti": zhao.cti.hex()}]
        ),
        trust.ListHeader(1, now - 3600, None),
        now,
    )
    wang_card, lost_card = bytes.fromhex("0a1b2c3d"), bytes.fromhex("0badcafe")
    store.replace_roster(
        [
            trust.RosterCard(wang_card, DEMO_ISSUER, "D0003", own_unit, "王芳", "active"),
            trust.RosterCard(lost_card, DEMO_ISSUER, "D0009", own_unit, "周敏", "lost"),
        ],
        trust.ListHeader(1, now - 3600, None),
        now,
    )
    book = state.open_ledger(paths.ledger, paths.key, settings.terminal_id, now * 1000)
    counter = Checkout(settings, book, store)
    lang = settings.language

    zhang_code = zhang.draw(now)
    steps: list[tuple[str, Callable[[int], Decision]]] = [
        ("张伟 shows a QR code", lambda ms: counter.present_qr(zhang_code, ms)),
        ("李娜 (visitor) shows a QR code", lambda ms: counter.present_qr(li.draw(ms // 1000), ms)),
        ("a screenshot of 张伟's code again", lambda ms: counter.present_qr(zhang_code, ms)),
        ("张伟 draws a new code", lambda ms: counter.present_qr(zhang.draw(ms // 1000), ms)),
        ("王芳 swipes her card", lambda ms: counter.present_card(wang_card, ms)),
        ("王芳 shows her QR code too", lambda ms: counter.present_qr(wang.draw(ms // 1000), ms)),
        ("赵强 (credential revoked)", lambda ms: counter.present_qr(zhao.draw(ms // 1000), ms)),
        ("a card reported lost", lambda ms: counter.present_card(lost_card, ms)),
        ("an unknown card", lambda ms: counter.present_card(bytes.fromhex("12345678"), ms)),
        ("a forged code", lambda ms: counter.present_qr("CT1:NOT+A+REAL+CODE", ms)),
    ]
    print(f"Demo canteen {settings.canteen_name} ({settings.canteen_id}), state in {root}")
    try:
        for i, (what, act) in enumerate(steps):
            decision = act((now + 3 * i) * 1000)
            e = decision.entry
            when = dt.datetime.fromtimestamp(e.at_ms / 1000, settings.timezone)
            if decision.accepted:
                outcome = f"ACCEPT {e.meal} {e.amount_fen / 100:.2f} yuan ({decision.tier})"
            else:
                outcome = f"REFUSE {e.reason}: {reasons.text(e.reason or '', lang)}"
            who = decision.display_name or "-"
            print(f"#{e.seq:<3} {when:%H:%M:%S}  {what:<36} {who:<4} {outcome}")
    finally:
        book.close()
        store.close()
    report = ledger.verify_file(paths.ledger)
    print(f"ledger {paths.ledger}: {'verifies' if report.ok else f'BAD: {report.problem}'}")
    print(f"  {report.entries} entries, {report.checkpoints} signed checkpoints")
    return 0 if report.ok else 1
