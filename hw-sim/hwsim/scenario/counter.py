"""The lunch-rush scenario at the counter alone: the plan decided by the terminal's core, fast.

This module owns the quick run of a plan: no camera, card reader, county,
daemon or clock thread. The cast's codes and cards go straight to the
terminal's decision core (terminal.core.checkout.Checkout) on a real state
directory (a real ledger and trust store, with the first lists installed as
the lunch installs them), at each arrival's planned time, with the
scenario's agency directory handed to the checkout as the decision worker
hands it the directory it installed. Every arrival is presented (a replay
shows its first code again), and the lunch's model gives what each must get:
the verdict, the reason, the price tier by Directory.tier and its price by
MealWindow.price_for. The record has the lunch's shape, so
``hwsim.scenario.report`` judges it (``check_counter``). What the run leaves
out the whole lunch covers: the devices, the signed update set that brings the
directory, the outage and the county's copy.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hwsim.scenario.canteen import install_lists, settings_text
from hwsim.scenario.clock import LUNCH_OPENS, ORIGIN, lunch_origin_ms, seconds_between
from hwsim.scenario.model import LunchModel
from hwsim.scenario.plan import (
    PRICES_BEFORE,
    Options,
    ScenarioError,
    code_text,
    make_plan,
    unit_of,
)
from hwsim.scenario.record import RunRecord, code_chain


def play_counter(opts: Options, now_s: float) -> RunRecord:
    """Decide ``opts``'s plan at the counter, in ``opts.out``; the lunch-shaped record."""
    from terminal import config, ledger, state
    from terminal.core.checkout import Checkout

    opts.check()
    out = Path(opts.out)
    if (out / "state").exists():
        raise ScenarioError(
            f"{out} already holds a run (its ledger would serve nobody twice); use another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    origin_ms = lunch_origin_ms(now_s)
    plan = make_plan(opts, origin_ms // 1000)
    record = RunRecord(
        options={k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
        origin_ms=origin_ms,
    )
    model = LunchModel(plan.cast, opts.speed, plan.seating)
    settings_path = out / "terminal.toml"
    # No device is started: the settings name addresses nothing listens on.
    settings_path.write_text(
        settings_text(
            "http://127.0.0.1:9",
            str(out / "no-reader"),
            PRICES_BEFORE,
            opts.speed,
            plan.seating.own_units,
        ),
        encoding="utf-8",
    )
    settings = config.load(settings_path)
    # The directory the checkout is handed, as the lunch's county publishes it.
    (out / "published-directory.json").write_text(
        json.dumps(plan.seating.directory.as_json(), ensure_ascii=False, indent=1),
        encoding="utf-8",
    )
    state_dir = out / "state"
    install_lists(state_dir, plan.cast, origin_ms // 1000)
    book, store = state.open_state(state_dir, settings.terminal_id, origin_ms)
    counter = Checkout(settings, book, store)
    counter.directory = plan.seating.directory
    opened_ms = origin_ms + seconds_between(ORIGIN, LUNCH_OPENS) * 1000
    shown: dict[int, tuple[str, int]] = {}  # arrival -> (code text, phone time)
    try:
        for a in plan.arrivals:
            wall_ms = opened_ms + int(a.at_s * 1000)
            mono_ms = wall_ms - origin_ms  # the counter's monotonic clock, from the origin
            code_age: float | None = None
            chain: str | None = None
            if a.method == "qr":
                if a.kind == "replay":
                    assert a.ref is not None
                    text, t = shown[a.ref]
                else:
                    t = wall_ms // 1000
                    text = code_text(plan, a, t, opts.seed)
                shown[a.n] = (text, t)
                code_age = (wall_ms - t * 1000) / 1000
                chain = code_chain(text)
                decision = counter.present_qr(text, wall_ms, mono_ms)
            else:
                uid = (
                    plan.cast.unknown_uids[a.who]
                    if a.kind == "unknown_card"
                    else plan.cast.cadre(a.who).card_uid
                )
                assert uid is not None
                decision = counter.present_card(uid, wall_ms, mono_ms)
            expected = model.expect(a, code_age)
            entry = decision.entry
            record.presentations.append(
                {
                    "n": a.n,
                    "kind": a.kind,
                    "method": a.method,
                    "who": a.who,
                    "ref": a.ref,
                    "planned_sim_ms": wall_ms,
                    "presented_sim_ms": wall_ms,
                    "code_age_s": code_age,
                    "chain": chain,
                    "offline": False,
                    "expected_verdict": expected.verdict,
                    "expected_reason": expected.reason,
                    "expected_amount_fen": expected.amount_fen,
                    "expected_also": list(expected.also),
                    "unit": unit_of(plan, a),
                    "expected_tier": expected.tier,
                    "seq": entry.seq,
                    "verdict": entry.verdict,
                    "reason": entry.reason,
                    "amount_fen": entry.amount_fen,
                    "decision_method": entry.method,
                    "latency_ms": None,
                }
            )
    finally:
        counter.ledger.close()
        counter.trust.close()
    text_out = io.StringIO()
    ledger.export_file(state_dir / "ledger.sqlite", "jsonl", text_out)
    record.ledger_entries = [json.loads(line) for line in text_out.getvalue().splitlines()]
    record.ambiguous = model.ambiguous
    (out / "run.json").write_text(record.to_json(), encoding="utf-8")
    return record


def summary(record: RunRecord) -> dict[str, Any]:
    """Decisions by reason, accepted sales by tier and QR codes by key algorithms, for a
    person reading the quick run."""
    from hwsim.scenario.report import figures

    f = figures(record)
    return {
        "decisions_by_reason": f["decisions_by_reason"],
        "tiers": f["tiers"],
        "chains": f["chains"],
    }


def counter_text(record: RunRecord, failures: list[str]) -> str:
    """The quick run's report: decisions by reason, sales by tier, and every failed check."""
    s = summary(record)
    lines = [
        f"lunch-rush at the counter: {len(record.presentations)} presentations decided by "
        f"the terminal's core, seed {record.options['seed']}",
        "decisions by reason:",
    ]
    lines += [f"  {reason:28} {n:5}" for reason, n in s["decisions_by_reason"].items()]
    lines.append("accepted sales by price tier (as the entries record it; expected):")
    lines += [
        f"  {tier:28} {t['sales']:5} ({t['fen'] / 100:.2f} yuan; expected {t['expected']})"
        for tier, t in s["tiers"].items()
    ]
    if s["chains"]:
        lines.append("QR codes by key algorithms, issuer/phone (shown, accepted):")
        lines += [
            f"  {chain:28} {c['codes']:5} {c['accepted']:5}" for chain, c in s["chains"].items()
        ]
    if failures:
        lines.append(f"CHECKS FAILED ({len(failures)}):")
        lines += [f"  - {x}" for x in failures[:50]]
    else:
        lines.append(
            "checks passed: every decision as expected, every sale at the price tier the "
            "directory gives its diner and that tier's price"
        )
    return "\n".join(lines)
