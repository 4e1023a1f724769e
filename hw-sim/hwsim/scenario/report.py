"""The lunch-rush scenario's verdict on itself: checks, figures, the printed report and a chart.

This module owns judging a ``RunRecord`` (hwsim.scenario.record): the checks that
make the scenario fail (every decision as the model expected, one decision
per presentation, every accepted sale's entry recording the price tier the
directory gives its diner and charged that tier's price, the ledger verifies,
the county holds exactly the ledger's
entries and so every accepted sale once, the outage was real and the terminal
caught up after it, each signed publication reached the ledger as a
``config_applied`` entry (the agency directory's before the first sale) and
governed the decisions after it: the new prices
for the accepted sales, ``revoked`` / ``card_revoked`` for the revoked
presentations), the figures of the report (decisions by reason, accepted
sales by price tier, latency from
presentation to verdict on the screen stream, time to resync, time from each
publication to its ``config_applied`` entry, QR codes by the algorithms of their
issuer and phone keys, Ed25519 or SM2; a run with SM2 in its mix fails unless
codes with an SM2 key were accepted) and a PNG
chart of latency, queue and backlog over the simulated lunch, drawn with
matplotlib (hwsim.scenario.chart). It reads only the record: it never runs or reaches a
terminal, so a saved run.json can be checked again, and tests can spoil a
record to see the checks fail.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from hwsim.scenario.clock import local_time
from hwsim.scenario.model import ACCEPT
from hwsim.scenario.plan import (
    PRICES_AFTER,
    PRICES_BEFORE,
    REVOCATION,
    REVOKED_LATER,
    SETTINGS,
    lunch_window,
)
from hwsim.scenario.record import RunRecord
from protocol.agencies import TIERS

CONFIG_APPLIED = "config_applied"  # terminal.ledger.CONFIG_APPLIED
REVOKED_REASONS = ("revoked", "card_revoked")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# --- checks -----------------------------------------------------------------------------------


def check(record: RunRecord) -> list[str]:
    """Every way the run went wrong, one line each; empty when the lunch was right."""
    failures = [f"run: {p}" for p in record.problems]
    failures += _check_decisions(record)
    failures += check_tiers(record)
    failures += _check_ledger_and_county(record)
    failures += _check_outage(record)
    failures += _check_updates(record)
    failures += check_algorithms(record)
    return failures


def check_counter(record: RunRecord) -> list[str]:
    """The checks of a quick run at the counter (hwsim.scenario.counter): the decisions and
    their tiers and prices; it has no devices, outage, county or publications to check."""
    return (
        [f"run: {p}" for p in record.problems]
        + _check_decisions(record)
        + check_tiers(record)
        + check_algorithms(record)
    )


def check_algorithms(record: RunRecord) -> list[str]:
    """A lunch with SM2 in its mix (``sm2_share`` above 0) must have accepted codes signed
    by an SM2 issuer key and codes signed by an SM2 phone key, and one with Ed25519 in it
    (below 1) codes of an Ed25519 issuer and phone; otherwise the mix was not tested."""
    share = float(record.options.get("sm2_share", 0.0))
    accepted = [p.get("chain") for p in record.presentations if p["verdict"] == ACCEPT]
    chains = [c.split("/") for c in accepted if c]
    wanted = []
    if share > 0:
        wanted += [("issuer", 0, "sm2"), ("phone", 1, "sm2")]
    if share < 1:
        wanted += [("issuer", 0, "ed25519"), ("phone", 1, "ed25519")]
    return [
        f"sm2_share {share:g}, but no accepted code was signed by an {alg} {who} key"
        for who, i, alg in wanted
        if not any(c[i] == alg for c in chains)
    ]


def _check_decisions(record: RunRecord) -> list[str]:
    out = []
    seqs: Counter[int] = Counter()
    for p in record.presentations:
        what = f"presentation {p['n']} ({p['method']} {p['kind']} {p['who']})"
        if p["verdict"] is None:
            out.append(f"{what}: no verdict reached the screen")
            continue
        seqs[p["seq"]] += 1
        if p["verdict"] != p["expected_verdict"]:
            out.append(
                f"{what}: {p['verdict']} {p['reason'] or ''}, expected {p['expected_verdict']} "
                f"{p['expected_reason'] or ''}".rstrip()
            )
        elif p["verdict"] != ACCEPT and p["reason"] != p["expected_reason"]:
            if p["reason"] not in p.get("expected_also", []):
                out.append(f"{what}: reason {p['reason']}, expected {p['expected_reason']}")
        elif p["verdict"] == ACCEPT and p["amount_fen"] != p["expected_amount_fen"]:
            out.append(
                f"{what}: charged {p['amount_fen']} fen, expected {p['expected_amount_fen']}"
            )
        if p["decision_method"] != p["method"]:
            out.append(f"{what}: decided as {p['decision_method']}, presented as {p['method']}")
    for seq, n in seqs.items():
        if n > 1:
            out.append(f"entry {seq} was matched to {n} presentations")
    for extra in record.extra_decisions:
        out.append(
            f"a decision no presentation asked for: entry {extra.get('seq')} "
            f"{extra.get('verdict')} {extra.get('reason') or ''}".rstrip()
        )
    return out


def entry_tier(entry: dict[str, Any] | None) -> str | None:
    """The price tier an accepted sale's entry records ({"tier": ...} in its detail)."""
    tier = ((entry or {}).get("detail") or {}).get("tier")
    return tier if isinstance(tier, str) else None


def check_tiers(record: RunRecord) -> list[str]:
    """Every accepted sale's entry records the tier the model expected (Directory.tier on
    the published directory, computed by the scenario): a sale without a tier, or at
    another, is a failure. The price is checked with the decision (expected_amount_fen is
    that tier's price in the settings in force)."""
    ledger = {e["seq"]: e for e in record.ledger_entries}
    out = []
    for p in record.presentations:
        if p["verdict"] != ACCEPT or p["expected_verdict"] != ACCEPT:
            continue
        want = p.get("expected_tier")
        got = entry_tier(ledger.get(p["seq"]))
        what = f"presentation {p['n']} ({p['method']} {p['kind']} {p['who']} of {p.get('unit')})"
        if got is None:
            out.append(f"{what}: entry {p['seq']} records no price tier, expected {want}")
        elif got != want:
            out.append(f"{what}: charged as {got}, expected {want}")
    return out


def _check_ledger_and_county(record: RunRecord) -> list[str]:
    out = []
    verify = record.ledger_verify
    if not verify.get("ok"):
        out.append(f"the ledger does not verify: {verify.get('problem')}")
    ledger = {e["seq"]: e for e in record.ledger_entries}
    county_seqs = Counter(e["seq"] for e in record.county_entries)
    county = {e["seq"]: e for e in record.county_entries}
    twice = sorted(s for s, n in county_seqs.items() if n > 1)
    if twice:
        out.append(f"the county holds entries twice: {twice[:10]}")
    lost = sorted(set(ledger) - set(county))
    if lost:
        out.append(f"entries missing at the county: {len(lost)}, first {lost[:10]}")
    foreign = sorted(set(county) - set(ledger))
    if foreign:
        out.append(f"the county holds entries the ledger does not: {foreign[:10]}")
    altered = [s for s in set(ledger) & set(county) if ledger[s]["hash"] != county[s]["hash"]]
    if altered:
        out.append(f"the county's copy differs from the ledger at {sorted(altered)[:10]}")
    prev = None
    for seq in sorted(county):
        if prev is not None and county[seq]["prev_hash"] != county[prev]["hash"]:
            out.append(f"the county's chain is broken before entry {seq}")
            break
        prev = seq
    # The accepted sales: exactly the presentations the model accepted, once each.
    accepted = {s for s, e in ledger.items() if e["kind"] == "sale" and e["verdict"] == ACCEPT}
    at_county = {s for s, e in county.items() if e["kind"] == "sale" and e["verdict"] == ACCEPT}
    # A presentation whose verdict never reached the screen has no seq: _check_decisions
    # reports it ("no verdict reached the screen"), so it is not compared here.
    expected = {
        p["seq"]
        for p in record.presentations
        if p["expected_verdict"] == ACCEPT and p["seq"] is not None
    }
    if accepted != expected:
        out.append(
            f"accepted sales in the ledger {len(accepted)} != accepted presentations "
            f"{len(expected)} (differ at {sorted(accepted ^ expected)[:10]})"
        )
    if at_county != accepted:
        out.append(
            f"accepted sales at the county {len(at_county)} != in the ledger {len(accepted)}"
        )
    for p in record.presentations:
        e = ledger.get(p["seq"]) if p["seq"] is not None else None
        if p["verdict"] is not None and (
            e is None or e["verdict"] != p["verdict"] or e["reason"] != p["reason"]
        ):
            out.append(f"presentation {p['n']}: the screen's verdict is not entry {p['seq']}")
    return out


def _check_outage(record: RunRecord) -> list[str]:
    outage = record.outage
    if not outage:
        return ["the outage never happened"]
    out = []
    offline = [p for p in record.presentations if p["offline"]]
    if not offline:
        out.append("nobody presented during the outage")
    during = [
        s for s in record.samples if outage["start_real"] + 1.0 <= s["real"] <= outage["end_real"]
    ]
    if during and len({s["county_acked"] for s in during}) > 1:
        out.append("the county received entries during the outage: the partition leaked")
    if during and max(s["unsynced"] or 0 for s in during) == 0:
        out.append("the terminal had no backlog during the outage")
    if resync_seconds(record) is None:
        out.append("the terminal never caught up with the county after the outage")
    return out


def applied_entry(record: RunRecord, event: dict[str, Any]) -> dict[str, Any] | None:
    """The ledger's ``config_applied`` entry that put a publication's update set in force."""
    want = event.get("published_set")
    if want is None:
        return None
    for e in sorted(record.ledger_entries, key=lambda e: e["seq"]):
        if e["kind"] != CONFIG_APPLIED or e.get("reason") == "rolled_back":
            continue
        got = (e.get("detail") or {}).get("set")
        if isinstance(got, int) and got >= want:
            return e
    return None


def _check_updates(record: RunRecord) -> list[str]:
    """The settings change and the revocation came as signed sets, and ruled what followed."""
    out = []
    ledger = sorted(record.ledger_entries, key=lambda e: e["seq"])
    # The agency directory comes with the first signed set, before the lunch opens.
    directory = next(
        (
            e
            for e in ledger
            if e["kind"] == CONFIG_APPLIED
            and e.get("reason") != "rolled_back"
            and "directory" in ((e.get("detail") or {}).get("changed") or [])
        ),
        None,
    )
    sales = [e["seq"] for e in ledger if e["kind"] == "sale"]
    if directory is None:
        out.append("the agency directory was never applied: no config_applied entry names it")
    elif sales and sales[0] < directory["seq"]:
        out.append(
            f"entry {sales[0]} was decided before the agency directory was applied "
            f"(config_applied entry {directory['seq']})"
        )
    for kind, changed in ((SETTINGS, "settings"), (REVOCATION, "revocations")):
        event = next((e for e in record.events if e["kind"] == kind), None)
        if event is None:
            out.append(f"the {kind} publication never happened")
            continue
        entry = applied_entry(record, event)
        if entry is None:
            out.append(
                f"the {kind} publication (update set {event.get('published_set')}) has no "
                "config_applied entry in the ledger: it was never applied"
            )
            continue
        if changed not in ((entry.get("detail") or {}).get("changed") or []):
            out.append(f"config_applied entry {entry['seq']} does not name {changed} as changed")
        if entry["at_ms"] < event["sim_ms"]:
            out.append(f"config_applied entry {entry['seq']} comes before the {kind} publication")
        if kind == SETTINGS:
            for e in ledger:
                if e["kind"] != "sale" or e["verdict"] != ACCEPT or e.get("meal") != "lunch":
                    continue
                prices = PRICES_AFTER if e["seq"] > entry["seq"] else PRICES_BEFORE
                when = "after" if prices is PRICES_AFTER else "before"
                tier = entry_tier(e)
                if tier is None:
                    allowed = sorted(set(prices.values()))
                    if e["amount_fen"] not in allowed:
                        out.append(
                            f"entry {e['seq']}: a lunch sale {when} the settings set was "
                            f"applied (entry {entry['seq']}) charged {e['amount_fen']} fen, "
                            f"not one of {allowed}"
                        )
                    continue
                price = lunch_window(prices).price_for(tier)
                if e["amount_fen"] != price:
                    out.append(
                        f"entry {e['seq']}: a lunch sale {when} the settings set was applied "
                        f"(entry {entry['seq']}) charged {e['amount_fen']} fen, not the "
                        f"{tier} price {price}"
                    )
        else:
            for p in record.presentations:
                if p["kind"] != REVOKED_LATER:
                    continue
                what = f"presentation {p['n']} ({p['method']} revoked by the publication)"
                if p["seq"] is not None and p["seq"] < entry["seq"]:
                    out.append(f"{what}: decided before the revocation set was applied")
                if p["verdict"] is not None and p["reason"] not in REVOKED_REASONS:
                    out.append(f"{what}: {p['verdict']} {p['reason'] or ''}, not refused revoked")
    return out


# --- figures -------------------------------------------------------------------------------


def update_figures(record: RunRecord) -> list[dict[str, Any]]:
    """Each publication: its set, and the time until its config_applied entry."""
    speed = float(record.options["speed"])
    out = []
    for event in record.events:
        if event["kind"] not in (SETTINGS, REVOCATION):
            continue
        entry = applied_entry(record, event)
        sim_s = None if entry is None else (entry["at_ms"] - event["sim_ms"]) / 1000
        out.append(
            {
                "kind": event["kind"],
                "published_sim_ms": event["sim_ms"],
                "set": event.get("published_set"),
                "applied_seq": None if entry is None else entry["seq"],
                "to_applied_simulated_s": None if sim_s is None else round(sim_s, 1),
                "to_applied_real_s": None if sim_s is None else round(sim_s / speed, 2),
            }
        )
    return out


def resync_seconds(record: RunRecord) -> float | None:
    """Real seconds from the network's return until the county held what the ledger held then."""
    outage = record.outage
    if not outage or outage.get("last_seq_at_end") is None:
        return None
    target = outage["last_seq_at_end"]
    for s in record.samples:
        if s["real"] >= outage["end_real"] and s["county_acked"] >= target:
            return float(s["real"] - outage["end_real"])
    return None


def figures(record: RunRecord) -> dict[str, Any]:
    """The numbers of the report, as JSON-ready values."""
    speed = float(record.options["speed"])
    ps = record.presentations
    outcome: Counter[str] = Counter(
        "accept" if p["verdict"] == ACCEPT else p["reason"] or "no verdict" for p in ps
    )
    latency = [p["latency_ms"] for p in ps if p["latency_ms"] is not None]
    by_method = {
        m: [p["latency_ms"] for p in ps if p["method"] == m and p["latency_ms"] is not None]
        for m in ("qr", "card")
    }
    hostile = Counter(p["kind"] for p in ps if p["kind"] not in ("first_meal",))
    resync = resync_seconds(record)
    outage = record.outage
    backlog = [s["unsynced"] or 0 for s in record.samples]
    lag = [(p["presented_sim_ms"] - p["planned_sim_ms"]) / 1000 for p in ps]
    accepted = [p for p in ps if p["verdict"] == ACCEPT]
    return {
        "tiers": tier_figures(record),
        "presentations": len(ps),
        "qr": sum(p["method"] == "qr" for p in ps),
        "card": sum(p["method"] == "card" for p in ps),
        "not_first_meals": dict(sorted(hostile.items())),
        "decisions_by_reason": dict(outcome.most_common()),
        "accepted_fen": sum(p["amount_fen"] or 0 for p in accepted),
        "latency_ms": {
            "p50": _percentile(latency, 50),
            "p99": _percentile(latency, 99),
            "max": max(latency) if latency else None,
            "qr_p50": _percentile(by_method["qr"], 50),
            "qr_p99": _percentile(by_method["qr"], 99),
            "card_p50": _percentile(by_method["card"], 50),
            "card_p99": _percentile(by_method["card"], 99),
        },
        "outage": {
            "simulated_s": (outage["end_sim_ms"] - outage["start_sim_ms"]) / 1000
            if outage
            else None,
            "presentations_offline": sum(bool(p["offline"]) for p in ps),
            "max_backlog_entries": max(backlog) if backlog else None,
            "resync_real_s": None if resync is None else round(resync, 2),
            "resync_simulated_s": None if resync is None else round(resync * speed, 1),
        },
        "updates": update_figures(record),
        "chains": chain_figures(record),
        "ledger_entries": len(record.ledger_entries),
        "county_entries": len(record.county_entries),
        "ambiguous_replays": record.ambiguous,
        "max_lag_simulated_s": round(max(lag), 1) if lag else None,
        "real_seconds": record.real_seconds,
    }


def chain_figures(record: RunRecord) -> dict[str, dict[str, Any]]:
    """QR codes by ``ISSUER/PHONE`` key algorithms (record.code_chain): how many were shown
    and accepted, and their latency to the verdict (None in a run at the counter)."""
    out: dict[str, dict[str, Any]] = {}
    named = {str(p["chain"]) for p in record.presentations if p.get("chain")}
    for chain in sorted(named):
        ps = [p for p in record.presentations if p.get("chain") == chain]
        latency = [p["latency_ms"] for p in ps if p["latency_ms"] is not None]
        out[chain] = {
            "codes": len(ps),
            "accepted": sum(p["verdict"] == ACCEPT for p in ps),
            "p50_ms": _percentile(latency, 50),
            "p99_ms": _percentile(latency, 99),
        }
    return out


def tier_figures(record: RunRecord) -> dict[str, dict[str, int]]:
    """Accepted sales by the tier their entries record ('unknown' without one): sales, fen,
    and how many the model expected at that tier, in protocol.agencies TIERS order."""
    ledger = {e["seq"]: e for e in record.ledger_entries}
    counts: dict[str, dict[str, int]] = {}
    for p in record.presentations:
        if p["verdict"] == ACCEPT:
            tier = entry_tier(ledger.get(p["seq"])) or "unknown"
            row = counts.setdefault(tier, {"sales": 0, "fen": 0, "expected": 0})
            row["sales"] += 1
            row["fen"] += p["amount_fen"] or 0
        if p["expected_verdict"] == ACCEPT and p.get("expected_tier"):
            row = counts.setdefault(p["expected_tier"], {"sales": 0, "fen": 0, "expected": 0})
            row["expected"] += 1
    order = {tier: i for i, tier in enumerate(TIERS)}
    return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order))))


def _hm(ms: int) -> str:
    return local_time(ms, "%H:%M")


def report_text(record: RunRecord, failures: list[str], chart: Path | None) -> str:
    """The report a person reads: what happened, the figures, and every failed check."""
    f = figures(record)
    lat = f["latency_ms"]
    out = f["outage"]
    opts = record.options
    lines = [
        f"lunch-rush: {f['presentations']} presentations ({f['qr']} QR, {f['card']} card) "
        f"at {float(opts['speed']):g}x, {f['real_seconds']:.0f} real seconds, seed {opts['seed']}",
        "decisions by reason:",
    ]
    lines += [f"  {reason:28} {n:5}" for reason, n in f["decisions_by_reason"].items()]
    lines.append(
        "not first meals (planned): "
        + ", ".join(f"{k} {v}" for k, v in f["not_first_meals"].items())
    )
    lines.append(f"accepted amount: {f['accepted_fen'] / 100:.2f} yuan")
    if f["tiers"]:
        lines.append("accepted sales by price tier (as the entries record it; expected):")
        lines += [
            f"  {tier:28} {t['sales']:5} ({t['fen'] / 100:.2f} yuan; expected {t['expected']})"
            for tier, t in f["tiers"].items()
        ]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    lines.append(
        f"latency, presentation to verdict on the screen stream: p50 {ms(lat['p50'])}, "
        f"p99 {ms(lat['p99'])}, max {ms(lat['max'])}"
    )
    lines.append(
        f"  QR (phone in view to verdict): p50 {ms(lat['qr_p50'])}, p99 {ms(lat['qr_p99'])}; "
        f"card (swipe to verdict): p50 {ms(lat['card_p50'])}, p99 {ms(lat['card_p99'])}"
    )
    if f["chains"]:
        lines.append("QR codes by key algorithms, issuer/phone (shown, accepted, latency):")
        lines += [
            f"  {chain:28} {c['codes']:5} {c['accepted']:5}   p50 {ms(c['p50_ms'])}, "
            f"p99 {ms(c['p99_ms'])}"
            for chain, c in f["chains"].items()
        ]
    if record.outage:
        lines.append(
            f"outage: {_hm(record.outage['start_sim_ms'])}-{_hm(record.outage['end_sim_ms'])}"
            f" ({out['simulated_s'] / 60:.1f} simulated min), {out['presentations_offline']} "
            f"presentations offline, backlog up to {out['max_backlog_entries']} entries"
        )
    resync = (
        "never"
        if out["resync_real_s"] is None
        else f"{out['resync_real_s']:.2f} real s = {out['resync_simulated_s']:.0f} simulated s"
    )
    lines.append(f"time to resync after the outage: {resync}")
    for u in f["updates"]:
        what = "settings change" if u["kind"] == SETTINGS else "revocation"
        applied = (
            "never applied"
            if u["applied_seq"] is None
            else f"config_applied entry {u['applied_seq']} after {u['to_applied_real_s']:.2f} "
            f"real s = {u['to_applied_simulated_s']:.0f} simulated s"
        )
        lines.append(
            f"{what}: signed update set {u['set']} published at "
            f"{_hm(u['published_sim_ms'])}, {applied}"
        )
    lines.append(
        f"ledger: {f['ledger_entries']} entries, verifies: "
        f"{'yes' if record.ledger_verify.get('ok') else 'NO'}; county holds "
        f"{f['county_entries']}"
    )
    if f["ambiguous_replays"]:
        lines.append(
            f"replays at the edge of their freshness (replayed or stale both right): "
            f"{f['ambiguous_replays']}"
        )
    lines.append(f"latest cadre behind plan: {f['max_lag_simulated_s']} simulated s")
    if chart is not None:
        lines.append(f"chart: {chart}")
    if failures:
        lines.append(f"CHECKS FAILED ({len(failures)}):")
        lines += [f"  - {x}" for x in failures[:50]]
        if len(failures) > 50:
            lines.append(f"  ... and {len(failures) - 50} more")
    else:
        lines.append(
            "checks passed: every decision as expected, every sale at the price tier the "
            "directory gives its diner and that tier's price, ledger verifies, county holds "
            "exactly the ledger's entries (none lost, none twice), resynced after the outage, "
            "signed settings and revocation applied and in force for the decisions after them"
        )
    return "\n".join(lines)


# --- the chart --------------------------------------------------------------------------------


def draw_chart(record: RunRecord, path: Path) -> Path:
    """Latency per presentation (top) and queue and backlog (bottom) over the simulated
    lunch, with legends and local time labels: hwsim.scenario.chart draws it (matplotlib)."""
    from hwsim.scenario import chart

    return chart.draw(record, path)
