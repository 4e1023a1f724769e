"""hw-sim scenario lunch-rush: the shortened lunch against a real daemon passes its own checks,
and those checks fail when the run is wrong (a wrong expectation, a lost or doubled entry, a
ledger that does not verify, a partition that leaked, a signed update that was never applied
or did not rule the decisions after it, a sale at the wrong price tier). The quick run at the
counter (the plan decided by the terminal's core, with the published directory) charges
cadres of every agency tier the price the directory and the settings give them."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from hwsim import cli
from hwsim.scenario.counter import play_counter
from hwsim.scenario.lunch import play
from hwsim.scenario.plan import (
    CANTEEN_ID,
    CARD_KINDS,
    FIRST_MEAL,
    HOSTILE_KINDS,
    OUTAGE_END,
    OUTAGE_START,
    PRICES_AFTER,
    PRICES_BEFORE,
    REVOCATION,
    REVOKED_LATER,
    SETTINGS,
    Options,
    ScenarioError,
    lunch_window,
    make_plan,
)
from hwsim.scenario.record import RunRecord, code_chain, entry_marks, qr_marks
from hwsim.scenario.report import (
    applied_entry,
    check,
    check_algorithms,
    check_counter,
    entry_tier,
    figures,
    report_text,
)

from protocol.agencies import (
    HIGHER_LEVEL,
    LOWER_LEVEL,
    OTHER_REGION,
    OWN,
    SAME_LEVEL,
    UNLISTED,
    parse_directory,
)
from terminal import config
from terminal.ledger import LedgerEntry

CROSS_LEVEL = (OWN, SAME_LEVEL, HIGHER_LEVEL, LOWER_LEVEL, OTHER_REGION, UNLISTED)

ORIGIN_S = 1_780_000_000


@pytest.fixture(scope="module", name="run")
def run_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunRecord, str]]:
    out = tmp_path_factory.mktemp("lunch")
    record, _failures, text = play(Options.shortened(out), progress=lambda _s: None)
    yield record, text
    assert (out / "run.json").exists()


@pytest.mark.slow
def test_short_lunch_passes_every_check(run: tuple[RunRecord, str]) -> None:
    record, text = run
    assert check(record) == [], text
    assert "checks passed" in text


@pytest.mark.slow
def test_short_lunch_covers_every_kind_and_reports_figures(run: tuple[RunRecord, str]) -> None:
    record, text = run
    kinds = Counter(p["kind"] for p in record.presentations)
    assert set(HOSTILE_KINDS) <= set(kinds)
    assert kinds[REVOKED_LATER] == 2
    f = figures(record)
    assert f["presentations"] == 40
    reasons = f["decisions_by_reason"]
    for reason in (
        "accept",
        "already_served",
        "revoked",
        "card_revoked",
        "card_unknown",
        "credential_expired",
        "unknown_issuer_key",
        "bad_credential_signature",
        "bad_presentation_signature",
    ):
        assert reasons.get(reason), (reason, reasons)
    assert reasons.get("replayed", 0) + reasons.get("presentation_stale", 0) == 1
    # Prices changed mid-lunch: some tier was charged both its old and its new price.
    entries = {e["seq"]: e for e in record.ledger_entries}
    charged: dict[str, set[int]] = {}
    for p in record.presentations:
        if p["verdict"] == "accept":
            tier = entry_tier(entries[p["seq"]])
            assert tier is not None
            charged.setdefault(tier, set()).add(p["amount_fen"])
    assert any(
        {lunch_window(prices).price_for(tier) for prices in (PRICES_BEFORE, PRICES_AFTER)}
        == amounts
        for tier, amounts in charged.items()
    ), charged
    # Cadres of every tier were served, each at the tier the directory gives them.
    assert set(CROSS_LEVEL) <= set(f["tiers"]), f["tiers"]
    assert all(t["sales"] == t["expected"] for t in f["tiers"].values()), f["tiers"]
    assert "accepted sales by price tier" in text
    assert f["latency_ms"]["p50"] is not None and f["latency_ms"]["p99"] is not None
    # The network came back only after min_offline cadres were served offline.
    assert f["outage"]["presentations_offline"] >= Options.shortened(Path("x")).min_offline
    assert f["outage"]["resync_real_s"] is not None
    assert f["ledger_entries"] == f["county_entries"]
    assert "time to resync after the outage" in text and "p99" in text
    # The settings change and the revocation came as signed updates, not stand-ins.
    assert "STAND-IN" not in text
    updates = {u["kind"]: u for u in f["updates"]}
    assert set(updates) == {SETTINGS, REVOCATION}
    for u in updates.values():
        assert u["applied_seq"] is not None and u["to_applied_real_s"] >= 0
    assert "settings change: signed update set" in text and "config_applied entry" in text
    applied = [e for e in record.ledger_entries if e["kind"] == "config_applied"]
    assert len(applied) >= 3  # the first lists, the settings, the revocation
    chart = Path(record.options["out"]) / "lunch-rush.png"
    img = cv2.imread(str(chart))
    assert img is not None and img.shape[1] >= 1000


@pytest.mark.slow
def test_run_record_round_trips(run: tuple[RunRecord, str]) -> None:
    record, _ = run
    again = RunRecord.from_json(record.to_json())
    assert again == record
    assert check(again) == []


def spoiled(record: RunRecord) -> RunRecord:
    return copy.deepcopy(record)


@pytest.mark.slow
def test_a_wrong_expectation_fails(run: tuple[RunRecord, str]) -> None:
    record = spoiled(run[0])
    refused = next(p for p in record.presentations if p["kind"] == "expired")
    refused["expected_reason"] = "revoked"
    failures = check(record)
    assert len(failures) == 1
    assert f"presentation {refused['n']}" in failures[0] and "expected revoked" in failures[0]

    record = spoiled(run[0])
    sale = next(p for p in record.presentations if p["verdict"] == "accept")
    sale["expected_verdict"], sale["expected_reason"] = "reject", "already_served"
    assert any("expected reject already_served" in x for x in check(record))

    record = spoiled(run[0])
    sale = next(p for p in record.presentations if p["verdict"] == "accept")
    sale["expected_amount_fen"] = 1
    assert any("expected 1" in x for x in check(record))


@pytest.mark.slow
def test_a_lost_or_doubled_entry_fails(run: tuple[RunRecord, str]) -> None:
    record = spoiled(run[0])
    sale = next(p for p in record.presentations if p["verdict"] == "accept")
    record.county_entries = [e for e in record.county_entries if e["seq"] != sale["seq"]]
    failures = check(record)
    assert any("entries missing at the county" in x for x in failures), failures
    assert any("accepted sales at the county" in x for x in failures), failures

    record = spoiled(run[0])
    record.county_entries.append(dict(record.county_entries[-1]))
    assert any("twice" in x for x in check(record))

    record = spoiled(run[0])
    record.county_entries[3]["hash"] = "00" * 32
    assert any("differs from the ledger" in x for x in check(record))


@pytest.mark.slow
def test_a_missing_verdict_or_an_extra_one_fails(run: tuple[RunRecord, str]) -> None:
    record = spoiled(run[0])
    record.presentations[5]["verdict"] = None
    assert any("no verdict reached the screen" in x for x in check(record))
    record = spoiled(run[0])
    record.extra_decisions.append({"seq": 999, "verdict": "accept", "reason": None})
    assert any("no presentation asked for" in x for x in check(record))


@pytest.mark.slow
def test_each_decision_is_matched_to_its_own_presentation(run: tuple[RunRecord, str]) -> None:
    """A presentation is paired with the decision whose ledger entry carries its code, its
    digest, its credential or its card; a decision for any other code (a camera misread)
    is not taken for it."""
    record = run[0]
    entries = {e["seq"]: e for e in record.ledger_entries}
    for p in record.presentations:
        e = entries[p["seq"]]
        assert e["method"] == p["method"], (p, e)
        if p["method"] == "card":
            assert e["credential"].startswith("card/")
    accepted_qr = next(
        p for p in record.presentations if p["method"] == "qr" and p["verdict"] == "accept"
    )
    text = entries[accepted_qr["seq"]]["detail"]["qr"]
    own = qr_marks(text, None)
    assert entry_marks(_entry(entries[accepted_qr["seq"]])) & own
    misread = text[:-3] + "AAA"
    stray = LedgerEntry(
        kind="sale",
        verdict="reject",
        reason="malformed",
        method="qr",
        detail={
            "qr_sha256": hashlib.sha256(misread.encode()).hexdigest()[:32],
            "qr_length": len(misread),
        },
    )
    assert not entry_marks(stray) & own
    assert entry_marks(stray) & qr_marks(misread, None)
    # A second meal by QR is refused after the credential verified: matched by credential.
    second = next(p for p in record.presentations if p["kind"] == "second_meal")
    first = next(p for p in record.presentations if p["n"] == second["ref"])
    assert entries[second["seq"]]["credential"] == entries[first["seq"]]["credential"]


def _entry(row: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        kind=row["kind"],
        verdict=row["verdict"],
        reason=row["reason"],
        method=row["method"],
        credential=row["credential"],
        detail=row["detail"],
    )


@pytest.mark.slow
def test_a_bad_ledger_or_a_leaky_outage_fails(run: tuple[RunRecord, str]) -> None:
    record = spoiled(run[0])
    record.ledger_verify = {"ok": False, "problem": "entry 7 altered"}
    assert any("does not verify: entry 7 altered" in x for x in check(record))

    record = spoiled(run[0])
    during = [
        s
        for s in record.samples
        if record.outage["start_real"] + 1 <= s["real"] <= record.outage["end_real"]
    ]
    during[-1]["county_acked"] += 1
    assert any("partition leaked" in x for x in check(record))

    record = spoiled(run[0])
    for s in record.samples:
        s["county_acked"] = 0
    assert any("never caught up" in x for x in check(record))
    assert "CHECKS FAILED" in report_text(record, check(record), None)


@pytest.mark.slow
def test_an_update_not_applied_or_not_in_force_fails(run: tuple[RunRecord, str]) -> None:
    record = spoiled(run[0])
    settings = next(e for e in record.events if e["kind"] == SETTINGS)
    record.ledger_entries = [
        e
        for e in record.ledger_entries
        if not (e["kind"] == "config_applied" and e["detail"]["set"] >= settings["published_set"])
    ]
    failures = check(record)
    assert any("settings publication" in x and "never applied" in x for x in failures)
    assert any("revocation publication" in x and "never applied" in x for x in failures)

    # A lunch sale after the settings set was applied, charged the old price.
    record = spoiled(run[0])
    entry = applied_entry(record, next(e for e in record.events if e["kind"] == SETTINGS))
    assert entry is not None
    sale = next(
        e
        for e in record.ledger_entries
        if e["kind"] == "sale" and e["verdict"] == "accept" and e["seq"] > entry["seq"]
    )
    tier = entry_tier(sale)
    assert tier is not None
    sale["amount_fen"] = lunch_window(PRICES_BEFORE).price_for(tier)
    assert any(
        f"entry {sale['seq']}: a lunch sale after the settings set was applied" in x
        for x in check(record)
    )

    # A presentation the publication revoked, decided before the set was in force.
    record = spoiled(run[0])
    entry = applied_entry(record, next(e for e in record.events if e["kind"] == REVOCATION))
    assert entry is not None
    later = next(p for p in record.presentations if p["kind"] == REVOKED_LATER)
    later["seq"] = entry["seq"] - 1
    later["reason"] = None
    failures = check(record)
    assert any("decided before the revocation set was applied" in x for x in failures)
    assert any("not refused revoked" in x for x in failures)


@pytest.mark.slow
def test_a_sale_at_another_tier_or_without_one_fails(run: tuple[RunRecord, str]) -> None:
    record = spoiled(run[0])
    sale = next(
        p
        for p in record.presentations
        if p["verdict"] == "accept" and p["expected_tier"] == LOWER_LEVEL
    )
    entry = next(e for e in record.ledger_entries if e["seq"] == sale["seq"])
    entry["detail"]["tier"] = SAME_LEVEL
    failures = check(record)
    assert any(
        f"presentation {sale['n']}" in x and "charged as same_level, expected lower_level" in x
        for x in failures
    ), failures

    # The directory came with the first signed set, before the first sale.
    record = spoiled(run[0])
    for e in record.ledger_entries:
        if e["kind"] == "config_applied":
            e["detail"]["changed"] = [c for c in e["detail"]["changed"] if c != "directory"]
    assert "the agency directory was never applied: no config_applied entry names it" in check(
        record
    )


# --- the quick run at the counter: the terminal's core, no devices ----------------------------


@pytest.fixture(scope="module", name="counter_run")
def counter_run_fixture(tmp_path_factory: pytest.TempPathFactory) -> RunRecord:
    return play_counter(Options.shortened(tmp_path_factory.mktemp("counter")), ORIGIN_S)


def test_the_counter_charges_every_tier_its_price(counter_run: RunRecord) -> None:
    """Cadres of the canteen's own agency, of its county's other bureaus, of the city and
    province, of its townships, of other counties and cities, and of a unit the directory
    does not know: each accepted sale records the tier protocol.agencies gives its unit at
    this canteen, and charges that tier's lunch price as the terminal's settings loader
    reads the canteen's settings."""
    record = counter_run
    assert check_counter(record) == []
    out = Path(record.options["out"])
    directory = parse_directory(
        json.loads((out / "published-directory.json").read_text(encoding="utf-8"))
    )
    settings = config.load(out / "terminal.toml")
    lunch = next(m for m in settings.meals if m.name == "lunch")
    operator = directory.operator_of(CANTEEN_ID)
    assert operator is not None and operator in settings.units
    assert len(directory.agencies) >= 200
    entries = {e["seq"]: e for e in record.ledger_entries}
    tiers: Counter[str] = Counter()
    for p in record.presentations:
        if p["verdict"] != "accept":
            continue
        tier = directory.tier(p["unit"], operator, settings.units)
        assert entry_tier(entries[p["seq"]]) == tier, p
        assert p["amount_fen"] == lunch.price_for(tier) == PRICES_BEFORE.get(tier, 1500), p
        tiers[tier] += 1
    assert set(tiers) == set(CROSS_LEVEL), tiers
    assert len({lunch.price_for(t) for t in tiers}) == len(tiers)  # six different prices
    f = figures(record)
    assert {t: v["sales"] for t, v in f["tiers"].items()} == dict(tiers)
    # Every other kind at the counter is refused as the lunch expects it.
    assert f["decisions_by_reason"]["already_served"] == 2


def test_the_counter_checks_fail_on_a_wrong_tier_or_price(counter_run: RunRecord) -> None:
    accepted = [p for p in counter_run.presentations if p["verdict"] == "accept"]
    upper = next(p for p in accepted if p["expected_tier"] == HIGHER_LEVEL)

    record = spoiled(counter_run)
    entry = next(e for e in record.ledger_entries if e["seq"] == upper["seq"])
    entry["detail"]["tier"] = "visitor"
    assert check_counter(record) == [
        f"presentation {upper['n']} ({upper['method']} {upper['kind']} {upper['who']} of "
        f"{upper['unit']}): charged as visitor, expected higher_level"
    ]

    record = spoiled(counter_run)
    entry = next(e for e in record.ledger_entries if e["seq"] == upper["seq"])
    del entry["detail"]["tier"]
    assert any("records no price tier, expected higher_level" in x for x in check_counter(record))

    record = spoiled(counter_run)
    row = next(p for p in record.presentations if p["n"] == upper["n"])
    row["amount_fen"] = PRICES_BEFORE["visitor"]
    assert any(
        f"charged 1500 fen, expected {PRICES_BEFORE[HIGHER_LEVEL]}" in x
        for x in check_counter(record)
    )


def test_the_counter_decides_every_mix_of_ed25519_and_sm2(counter_run: RunRecord) -> None:
    """The default lunch is mixed (token.md §7): an Ed25519 and an SM2 issuer key, 30% of
    the phones SM2; codes of each of the four issuer/phone mixes come and are accepted, and
    the hostile codes forged against the SM2 key are refused as the Ed25519 ones are."""
    record = counter_run
    f = figures(record)
    chains = f["chains"]
    assert set(chains) == {"ed25519/ed25519", "ed25519/sm2", "sm2/ed25519", "sm2/sm2"}
    assert all(c["accepted"] >= 1 for c in chains.values()), chains
    qr = [p for p in record.presentations if p["method"] == "qr"]
    phones = Counter(str(p["chain"]).split("/")[1] for p in qr if p["kind"] == "first_meal")
    assert 0.15 <= phones["sm2"] / sum(phones.values()) <= 0.45, phones
    forged = {p["kind"]: p for p in qr if p["kind"].startswith("forged")}
    assert forged["forged_key"]["chain"] == forged["forged_credential"]["chain"] == "sm2/sm2"
    assert forged["forged_key"]["reason"] == "unknown_issuer_key"
    assert forged["forged_credential"]["reason"] == "bad_credential_signature"


def test_the_algorithm_check_fails_when_the_mix_was_not_tested(counter_run: RunRecord) -> None:
    record = spoiled(counter_run)
    for p in record.presentations:
        if p.get("chain") and p["chain"].startswith("sm2/"):
            p["verdict"] = "reject"  # as if no code of the SM2 issuer had been accepted
    assert "sm2_share 0.3, but no accepted code was signed by an sm2 issuer key" in (
        check_algorithms(record)
    )
    record = spoiled(counter_run)
    for p in record.presentations:
        p["chain"] = "ed25519/ed25519" if p.get("chain") else None
    assert len(check_algorithms(record)) == 2
    record.options["sm2_share"] = 0.0
    assert check_algorithms(record) == []


def test_code_chain_reads_the_two_algorithms_or_nothing() -> None:
    from hwsim.wallet import Issuer, make_wallet, sm2_key_from_seed

    issuer = Issuer("hn-x", sm2_key_from_seed("chain"))
    wallet = make_wallet(issuer, "s1", "u", "n", now=ORIGIN_S)
    text = wallet.draw(ORIGIN_S)
    assert code_chain(text) == "sm2/ed25519"
    assert code_chain(wallet.draw(ORIGIN_S, alg=-19)) == "sm2/ed25519"
    assert code_chain(wallet.draw(ORIGIN_S, alg=-70002)) is None  # no alg this project knows
    for junk in ("", "CT1:", "CT1:AB", text[:-10], "not a code"):
        assert code_chain(junk) is None


def test_an_all_ed25519_or_all_sm2_lunch(tmp_path: Path) -> None:
    for share, keys in ((0.0, {"Ed25519"}), (1.0, {"SM2-SM3"})):
        plan = make_plan(Options.shortened(tmp_path / str(share), sm2_share=share), ORIGIN_S)
        population = plan.cast.population
        assert {i.alg for i in population.issuers} == keys
        assert {c.wallet.holder_alg for c in population.cadres} == keys
    with pytest.raises(ScenarioError, match="--sm2-share"):
        Options.shortened(tmp_path, sm2_share=1.5).check()


# --- the plan, without running anything --------------------------------------------------------


def test_full_plan_shape(tmp_path: Path) -> None:
    opts = Options(out=tmp_path)
    plan = make_plan(opts, ORIGIN_S)
    arrivals = plan.arrivals
    assert len(arrivals) == 300
    qr = sum(a.method == "qr" for a in arrivals)
    assert 0.66 <= qr / 300 <= 0.74
    hostile = [a for a in arrivals if a.kind in HOSTILE_KINDS]
    assert len(hostile) == 15
    assert all((a.method == "card") == (a.kind in CARD_KINDS) for a in hostile)
    assert [a.n for a in arrivals] == list(range(300))
    assert all(x.at_s <= y.at_s for x, y in itertools.pairwise(arrivals))
    for a in arrivals:
        if a.kind == "replay":
            assert a.ref == a.n - 1 and arrivals[a.ref].who == a.who
        if a.kind in ("second_meal", "second_meal_card"):
            assert a.ref is not None and a.ref < a.n and arrivals[a.ref].kind == FIRST_MEAL
            assert arrivals[a.ref].who == a.who and arrivals[a.ref].method == a.method
    events = {e.kind: e.at_s for e in plan.events}
    assert events[OUTAGE_END] - events[OUTAGE_START] == 600
    assert events[SETTINGS] < events[OUTAGE_START] < events[OUTAGE_END] < events[REVOCATION]
    later = [a for a in arrivals if a.kind == REVOKED_LATER]
    assert len(later) == 2 and all(a.at_s > events[REVOCATION] for a in later)
    # Everyone eats in the lunch window (11:30 to 13:30 local, arrivals from 11:31).
    assert arrivals[-1].at_s < 2 * 3600 - 600
    # The same seed gives the same lunch.
    again = make_plan(opts, ORIGIN_S).arrivals
    assert [(a.kind, a.who, a.at_s) for a in again] == [(a.kind, a.who, a.at_s) for a in arrivals]
    # Cadres of every tier come to eat, the canteen's own agency the most.
    seating = plan.seating
    tiers = Counter(
        seating.tier(plan.cast.cadre(a.who).unit) for a in arrivals if a.kind == FIRST_MEAL
    )
    assert set(tiers) == set(CROSS_LEVEL) and tiers.most_common(1)[0][0] == OWN, tiers
    assert seating.directory.operator_of(CANTEEN_ID) == seating.operator


def test_options_refuse_what_cannot_work(tmp_path: Path) -> None:
    for bad in (
        Options(out=tmp_path, speed=100),
        Options(out=tmp_path, cadres=10),
        Options(out=tmp_path, outage_s=-1),
    ):
        with pytest.raises(ScenarioError):
            bad.check()


def test_cli_help_and_a_bad_speed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["scenario", "--help"])
    out = capsys.readouterr().out
    for word in ("lunch-rush", "--cadres", "--speed", "--short", "--out", "--seed", "outage"):
        assert word in out
    assert "--counter" in out and "tier" in out
    assert cli.main(["scenario", "lunch-rush", "--speed", "500", "--out", str(tmp_path)]) == 2
    assert "--speed must be between" in capsys.readouterr().err
    assert "--sm2-share" in out
    argv = ["scenario", "lunch-rush", "--sm2-share", "-0.1", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sm2-share must be between 0 and 1" in err


def test_cli_counter_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["scenario", "lunch-rush", "--short", "--counter", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "checks passed" in out and "higher_level" in out and "unlisted" in out
    assert "sm2/sm2" in out and "ed25519/sm2" in out  # the mixed lunch, by default
    assert (tmp_path / "report.txt").read_text(encoding="utf-8").strip() == out.strip()
    # The same folder again would find its cadres served: refused, one line.
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
