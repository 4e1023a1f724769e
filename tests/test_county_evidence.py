"""The county acts only on proof (issue 11): every test goes through the real county server
over HTTPS with the terminal's client certificate.

A QR sale is evidence only when the phone's signed code verifies again at the county and
names the entry's cadre, credential, counter and unit; a card conflict revokes the card
only; every batch must end on a checkpoint signed with the pinned ledger key; one copied
code is one conflict; two terminals of one canteen are compared too; held batches expire;
and county IT reviews and withdraws conflicts, which lifts their revocations through a
signed update the terminals apply.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from countykit import (
    FAST,
    ON_EACH_BACKEND,
    T0_MS,
    County,
    Terminal,
    copy_county,
    make_county,
    post_ledger,
    provision_terminal,
    sync,
)
from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet
from sqlalchemy import text

from county import updates as cu
from county.app import CountyServer
from county.cli import main as county_main
from county.store import BAD_EVIDENCE, UNSIGNED, Limits
from protocol.chain import checkpoint_message, entry_hash
from terminal import trust
from terminal import updates as tu
from terminal.core.checkout import reversal_draft
from terminal.ledger import ACCEPT, SALE, EntryDraft, load_or_create_signing_key
from terminal.sync import SyncClient

T0 = T0_MS // 1000
DAY = "2026-05-28"


ISSUER = Issuer("hn-chenzhou", key_from_seed("evidence-issuer"))
# The cards of the tests, and whose they are in the roster county IT published.
CARDS = {"04a1b2c3": "K", "04010203": "X", "04ffee01": "Q", "04c0ffee": "M", "04beef01": "U"}


@pytest.fixture(name="issuer")
def issuer_fixture() -> Issuer:
    return ISSUER


@pytest.fixture(name="published", scope="module")
def published_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A county data directory with its update repository, the issuer's trust list and
    the card roster published: made once, copied for each test (publishing takes seconds)."""
    root = tmp_path_factory.mktemp("published")
    county = make_county(root)
    now = int(time.time())
    cu.init_repository(county.data, root / "root-keys", now)
    trust_file = root / "trust.json"
    trust_file.write_text(
        json.dumps({"version": 1, "issued_at": now, "entries": [ISSUER.trust_entry()]})
    )
    roster = root / "roster.csv"
    roster.write_text(
        "uid,iss,sub,unit,display_name,status\n"
        + "".join(
            f"{uid},{ISSUER.iss},{sub},u-tax,Cadre {sub},active\n" for uid, sub in CARDS.items()
        )
    )
    with cu.CountyRepository(county.data) as repo:
        repo.publish_trust(trust_file, now)  # also the keys the county verifies codes with
        repo.publish_roster(roster, now)
    return county.data


def fresh_county(published: Path, tmp_path: Path) -> County:
    data = tmp_path / "county"
    copy_county(published, data)
    return County(data)


@pytest.fixture(name="county")
def county_fixture(
    published: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[County]:
    c = fresh_county(published, tmp_path)
    if getattr(request, "param", "sqlite") == "postgresql":  # ON_EACH_BACKEND
        c.database_url = str(request.getfixturevalue("pg_county_url"))
        # Publishing the trust list put its keys in the SQLite file; this county's
        # database is another one.
        cu.import_published_issuer_keys(c.data, int(time.time()), c.database_url)
    # The refresher's first round runs at start; the tests publish conflicts themselves
    # after that, so no later round may race them.
    c.server = CountyServer(c.data, refresh_interval_s=3600, database_url=c.database_url).start()
    try:
        yield c
    finally:
        c.stop()


def wallet(issuer: Issuer, sub: str, unit: str = "u-tax") -> Wallet:
    return make_wallet(issuer, sub, unit, f"Cadre {sub}", now=T0 - 86_400, seed=sub)


def qr_sale(w: Wallet, qr: str, ctr: int, **override: Any) -> EntryDraft:
    """An accepted QR sale as a terminal records it: the signed code kept in detail."""
    fields: dict[str, Any] = {
        "kind": SALE,
        "verdict": ACCEPT,
        "method": "qr",
        "cadre": f"{w.iss}/{w.sub}",
        "credential": f"qr/{w.iss}/{w.cti.hex()}",
        "ctr": ctr,
        "unit": w.unit,
        "day": DAY,
        "meal": "lunch",
        "amount_fen": 1200,
        "detail": {"qr": qr},
    }
    fields.update(override)
    return EntryDraft(**fields)


def card_sale(w: Wallet, uid: str) -> EntryDraft:
    return EntryDraft(
        kind=SALE,
        verdict=ACCEPT,
        method="card",
        cadre=f"{w.iss}/{w.sub}",
        credential=f"card/{uid}",
        unit=w.unit,
        day=DAY,
        meal="lunch",
        amount_fen=1200,
    )


def record(term: Terminal, draft: EntryDraft, at_ms: int = T0_MS) -> None:
    book = term.open_ledger()
    try:
        book.append(draft, at_ms)
    finally:
        book.close()


def alarms_of(county: County, kind: str) -> list[dict[str, Any]]:
    return [a for a in county.store.alarms() if a["kind"] == kind]


# --- 1. evidence before consequences ---------------------------------------------------


def test_a_terminal_cannot_get_another_cadre_revoked(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    honest = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    stolen = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    a, b = wallet(issuer, "A"), wallet(issuer, "B")
    # B really eats at the honest terminal.
    record(honest, qr_sale(b, b.draw(T0), 1))
    sync(honest)
    # The stolen terminal claims B ate there too, three ways:
    # without the signed code; with A's real code under B's name; with a code altered.
    a_code = a.draw(T0)
    forged = [
        qr_sale(b, "", 7, detail={"price": "own"}),
        qr_sale(b, a_code, 1),
        qr_sale(b, b.draw(T0)[:-4] + "AAAA", 2),
        # A's own code with B's credential id: the credential disagrees.
        qr_sale(a, a_code, 1, credential=f"qr/{b.iss}/{b.cti.hex()}"),
    ]
    for draft in forged:
        record(stolen, draft)
    sync(stolen)
    assert county.store.conflicts() == []
    assert county.store.revocations() == []
    bad = alarms_of(county, BAD_EVIDENCE)
    assert [(x["terminal"], x["seq"]) for x in bad] == [("b1", 2), ("b1", 3), ("b1", 4), ("b1", 5)]
    problems = [x["problem"] for x in bad]
    assert "does not keep the phone's signed code" in problems[0]
    assert "cadre" in problems[1] and "is not the one the phone signed" in problems[1]
    assert "does not verify here" in problems[2]
    assert "credential" in problems[3]
    # The entries are still the terminal's record: stored, acknowledged, nothing lost.
    assert county.store.terminal("b1").acked_seq == 5  # type: ignore[union-attr]


def test_an_unknown_issuer_key_is_no_evidence(county: County, tmp_path: Path) -> None:
    stranger = Issuer("hn-elsewhere", key_from_seed("unknown-to-the-county"))
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    w = wallet(stranger, "S")
    code = w.draw(T0)
    for term in (a, b):
        record(term, qr_sale(w, code, 1))
        sync(term)
    assert county.store.conflicts() == []
    assert next(x["problem"] for x in alarms_of(county, BAD_EVIDENCE)).endswith(
        "(unknown_issuer_key)"
    )


@ON_EACH_BACKEND
def test_verified_codes_still_make_conflicts(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    w = wallet(issuer, "W", unit="u-water")
    record(a, qr_sale(w, w.draw(T0), 1))
    sync(a)
    record(b, qr_sale(w, w.draw(T0 + 60), 2))
    sync(b)
    [c] = county.store.conflicts()
    assert c["kind"] == "served_twice" and c["name"] == "Cadre W"
    assert (c["first"]["terminal"], c["second"]["terminal"]) == ("a1", "b1")
    assert c["first"]["hash"] and c["second"]["hash"] and c["reason"]
    assert c["revokes"] == [f"qr/{w.iss}/{w.cti.hex()}"]
    assert alarms_of(county, BAD_EVIDENCE) == []


def test_a_code_seen_once_cannot_be_moved_to_another_meal(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    """A stolen terminal keeps the codes shown to it. It can neither date one hours later
    nor label a cadre's breakfast "lunch" to clash with the cadre's real lunch elsewhere."""
    stolen = provision_terminal(county, tmp_path / "s", "s1", "canteen-s")
    honest = provision_terminal(county, tmp_path / "h", "h1", "canteen-h")
    w = wallet(issuer, "P")
    breakfast = w.draw(T0)
    record(stolen, qr_sale(w, breakfast, 1, meal="breakfast"), T0_MS)
    # The same code, dated four hours on as lunch: the phone signed another time.
    record(stolen, qr_sale(w, breakfast, 1, meal="lunch"), T0_MS + 4 * 3_600_000)
    # The same code at its own time, but labelled lunch.
    record(stolen, qr_sale(w, breakfast, 1, meal="lunch"), T0_MS + 1_000)
    sync(stolen)
    # The cadre's real lunch, four hours after breakfast, at another canteen.
    record(honest, qr_sale(w, w.draw(T0 + 4 * 3600), 2), T0_MS + 4 * 3_600_000)
    sync(honest)
    assert county.store.conflicts() == []
    [moved] = [x for x in alarms_of(county, BAD_EVIDENCE) if x["terminal"] == "s1"]
    assert moved["seq"] == 3 and "presentation_stale" in moved["problem"]


def _local_s(hhmm: str) -> int:
    """Unix seconds of 2026-05-29 at ``hhmm`` in the canteens' time zone (UTC+8)."""
    import datetime as dt

    h, m = (int(x) for x in hhmm.split(":"))
    zone = dt.timezone(dt.timedelta(hours=8))
    return int(dt.datetime(2026, 5, 29, h, m, tzinfo=zone).timestamp())


def test_a_meal_relabelled_against_the_published_windows_is_no_evidence(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    """Where county IT published the meal windows, the meal of a sale must be the one the
    canteen serves at its time: here lunch starts 30 minutes after breakfast ends, closer
    than any time span could separate, and the relabelled breakfast is still caught."""
    settings = tmp_path / "windows.toml"
    settings.write_text(
        "".join(
            f'[[meals]]\nname = "{name}"\nstart = "{start}"\nend = "{end}"\n'
            "price_own_fen = 500\nprice_visitor_fen = 800\n\n"
            for name, start, end in (("breakfast", "07:00", "09:00"), ("lunch", "09:30", "11:30"))
        )
    )
    with cu.CountyRepository(county.data) as repo:
        for canteen in ("canteen-s", "canteen-h"):
            repo.publish_settings(settings, canteen, int(time.time()))
    stolen = provision_terminal(county, tmp_path / "s", "s1", "canteen-s")
    honest = provision_terminal(county, tmp_path / "h", "h1", "canteen-h")
    w = wallet(issuer, "L")
    breakfast = _local_s("08:55")
    record(
        stolen, qr_sale(w, w.draw(breakfast), 1, day="2026-05-29", meal="lunch"), breakfast * 1000
    )
    sync(stolen)
    lunch = _local_s("09:40")
    record(honest, qr_sale(w, w.draw(lunch), 2, day="2026-05-29", meal="lunch"), lunch * 1000)
    sync(honest)
    assert county.store.conflicts() == []
    [bad] = alarms_of(county, BAD_EVIDENCE)
    assert bad["terminal"] == "s1" and "serves breakfast on 2026-05-29" in bad["problem"]
    assert alarms_of(county, BAD_EVIDENCE) == [bad]  # the honest lunch is evidence


def test_without_published_windows_a_relabelled_breakfast_is_kept_apart_by_time(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    """No meal windows published: the two sales' times must lie within two hours, shorter
    than the shortest default gap between meals (09:00 to 11:30)."""
    stolen = provision_terminal(county, tmp_path / "s", "s1", "canteen-s")
    honest = provision_terminal(county, tmp_path / "h", "h1", "canteen-h")
    w = wallet(issuer, "N")
    breakfast, lunch = _local_s("08:50"), _local_s("11:35")
    record(stolen, qr_sale(w, w.draw(breakfast), 1, day="2026-05-29"), breakfast * 1000)
    sync(stolen)
    record(honest, qr_sale(w, w.draw(lunch), 2, day="2026-05-29"), lunch * 1000)
    sync(honest)
    assert county.store.conflicts() == []


def test_a_card_sale_must_name_the_cards_holder_in_the_published_roster(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    stolen = provision_terminal(county, tmp_path / "s", "s1", "canteen-s")
    v = wallet(issuer, "V")
    record(a, qr_sale(v, v.draw(T0), 1))  # V's real lunch
    sync(a)
    # K's card, and a card in no roster, each claimed for V's lunch.
    record(stolen, card_sale(v, "04a1b2c3"))
    record(stolen, card_sale(v, "0badcafe"))
    sync(stolen)
    assert county.store.conflicts() == []
    problems = [x["problem"] for x in alarms_of(county, BAD_EVIDENCE)]
    assert len(problems) == 2
    assert "belongs to hn-chenzhou/K" in problems[0] and "belongs to nobody" in problems[1]


# --- 2. cards ----------------------------------------------------------------------------


@ON_EACH_BACKEND
def test_a_card_conflict_revokes_the_card_never_the_phone(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    c = provision_terminal(county, tmp_path / "c", "c1", "canteen-c")
    w = wallet(issuer, "K")
    record(a, qr_sale(w, w.draw(T0), 1))  # the cadre's phone, at a1
    sync(a)
    record(b, card_sale(w, "04a1b2c3"))  # the cadre's card, at b1 the same lunch
    sync(b)
    record(c, card_sale(w, "04a1b2c3"))  # and again at c1
    sync(c)
    found = county.store.conflicts()
    assert [x["kind"] for x in found] == ["served_twice", "served_twice"]
    assert {(x["first"]["terminal"], x["second"]["terminal"]) for x in found} == {
        ("a1", "b1"),
        ("a1", "c1"),
    }
    assert all(x["second"]["method"] == "card" for x in found)
    assert all("card" in x["reason"] for x in found)
    revoked = county.store.revocations()
    assert [(r["kind"], r.get("uid")) for r in revoked] == [("card", "04a1b2c3")]


def test_a_card_uid_the_terminals_cannot_revoke_is_no_evidence(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    """A card sale whose UID no revocation list would take: were it a conflict, its
    revocation could never be published, and it would hold back every other one."""
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    w = wallet(issuer, "Y")
    record(a, qr_sale(w, w.draw(T0), 1))
    sync(a)
    record(b, card_sale(w, "04aa"))  # two bytes: not a card UID
    sync(b)
    assert county.store.conflicts() == []
    [bad] = alarms_of(county, BAD_EVIDENCE)
    assert "is not a card UID" in bad["problem"]


def _undo(term: Terminal) -> None:
    """Staff reverse the terminal's last sale, as the screen's undo does."""
    book = term.open_ledger()
    try:
        sale = book.last_sale()
        assert sale is not None
        book.append(reversal_draft(sale, "staff"), T0_MS + 1)
    finally:
        book.close()


@ON_EACH_BACKEND
def test_a_reversed_sale_is_no_conflict_whichever_arrives_first(
    county: County, tmp_path: Path, issuer: Issuer
) -> None:
    now = int(time.time())
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    c = provision_terminal(county, tmp_path / "c", "c1", "canteen-c")
    w = wallet(issuer, "X")
    record(a, card_sale(w, "04010203"))
    sync(a)
    # Charged by mistake at b1 and undone at once: both arrive in one batch.
    record(b, card_sale(w, "04010203"))
    _undo(b)
    sync(b)
    assert county.store.conflicts() == []
    # Charged at c1, uploaded (a conflict, the card revoked), then undone by staff.
    record(c, card_sale(w, "04010203"))
    sync(c)
    [conflict] = county.store.conflicts()
    published = cu.publish_conflict_revocations(county.data, now, county.database_url)
    assert published.revocations_added == 1
    _undo(c)
    sync(c)
    [after] = county.store.conflicts()
    assert after["id"] == conflict["id"] and after["withdrawn_ms"] is not None
    assert "reversed entry" in after["withdrawn_reason"]
    assert county.store.revocations() == []
    # The refresher's next round takes the card off the signed list.
    published = cu.publish_conflict_revocations(county.data, now, county.database_url)
    assert published.revocations_lifted == 1
    with cu.CountyRepository(county.data) as repo:
        assert repo.revocation_count() == 0


# --- 4. the pinned ledger key authenticates every batch ---------------------------------


def _chained(term: Terminal, n: int) -> list[list[Any]]:
    """Entries that continue the terminal's acknowledged chain, as someone with a copy
    of its ledger (but not its ledger key) could write them."""
    book = term.open_ledger()
    try:
        last = book.entry(book.last_seq())
        assert last is not None
        seq, prev = last.seq, last.hash
    finally:
        book.close()
    rows = []
    for i in range(1, n + 1):
        fields = [
            seq + i,
            secrets.token_hex(8),
            T0_MS + i,
            SALE,
            ACCEPT,
            None,
            "card",
            "hn-chenzhou/X",
            "card/0badc0de",
            None,
            "u-tax",
            DAY,
            "dinner",
            99_999,
            None,
            "{}",
        ]
        digest = entry_hash(prev, fields)
        rows.append([*fields, prev.hex(), digest.hex()])
        prev = digest
    return rows


@ON_EACH_BACKEND
def test_the_tls_key_alone_cannot_inject_entries(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    w = wallet(issuer, "G")
    record(term, qr_sale(w, w.draw(T0), 1))
    sync(term)
    acked = county.store.terminal("a1").acked_seq  # type: ignore[union-attr]
    rows = _chained(term, 3)
    # Without any checkpoint, and with one signed by another key: both refused.
    stranger = key_from_seed("not-the-ledger-key")
    last = rows[-1]
    wrong = stranger.sign(checkpoint_message("a1", last[0], bytes.fromhex(last[17])))
    for checkpoints in ([], [[last[0], last[17], last[2], wrong.hex()]]):
        answer = post_ledger(term, {"nonce": "00", "entries": rows, "checkpoints": checkpoints})
        assert answer.status_code == 409, answer.text
        assert answer.json()["alarm"] in (UNSIGNED, "bad_checkpoint")
        assert answer.json()["acked_seq"] == acked
    assert county.store.terminal("a1").acked_seq == acked  # type: ignore[union-attr]
    # A flood of such batches, each with other hashes, is one alarm row that counts them.
    for _ in range(20):
        assert (
            post_ledger(term, {"nonce": "", "entries": _chained(term, 2), "checkpoints": []}).ok
            is False
        )
    [flood] = alarms_of(county, UNSIGNED)
    assert flood["times"] == 21 and "no checkpoint" in flood["problem"]
    # The genuine terminal is not locked out: its next sale syncs as usual.
    record(term, qr_sale(w, w.draw(T0 + 600), 2, meal="dinner"))
    sync(term)
    book = term.open_ledger()
    try:
        # Everything was acknowledged, the sale included; only the county's time may
        # follow it, recorded from the answer when more than offset_record_ms passed
        # since the last one (the flood above takes that long on a busy machine).
        unacked = [
            e.kind
            for e in map(book.entry, range(1, book.last_seq() + 1))
            if e is not None and e.acked_at_ms is None
        ]
        assert unacked in ([], ["time_signal"]), unacked
    finally:
        book.close()
    held = list(county.store.iter_entries("a1"))
    assert [e["meal"] for e in held if e["kind"] == SALE] == ["lunch", "dinner"]
    assert all(e["amount_fen"] != 99_999 for e in held)


# --- 5. the same canteen; one copied code is one conflict --------------------------------


@ON_EACH_BACKEND
def test_two_terminals_of_one_canteen_are_compared(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    one = provision_terminal(county, tmp_path / "a1", "a1", "canteen-a")
    two = provision_terminal(county, tmp_path / "a2", "a2", "canteen-a")
    w = wallet(issuer, "Q")
    record(one, qr_sale(w, w.draw(T0), 1))
    sync(one)
    record(two, card_sale(w, "04ffee01"))
    sync(two)
    [c] = county.store.conflicts()
    assert c["kind"] == "served_twice"
    assert (c["first"]["canteen"], c["second"]["canteen"]) == ("canteen-a", "canteen-a")
    assert c["revokes"] == ["card/04ffee01"]


@ON_EACH_BACKEND
def test_a_replayed_screenshot_is_one_conflict(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    one = provision_terminal(county, tmp_path / "a1", "a1", "canteen-a")
    two = provision_terminal(county, tmp_path / "a2", "a2", "canteen-a")
    w = wallet(issuer, "R")
    code = w.draw(T0)
    for term in (one, two):
        record(term, qr_sale(w, code, 1))
        sync(term)
    [c] = county.store.conflicts()
    assert c["kind"] == "presentation_twice"
    report = county.store.report(int(time.time() * 1000), 3_600_000)
    assert sum(d["conflicts"] for d in report["days"]) == 1
    assert report["conflicts_by_unit"] == {"u-tax": {"presentation_twice": 1}}


# --- 9. held batches expire ---------------------------------------------------------------


def test_held_batches_expire(tmp_path: Path, issuer: Issuer, county_db_url: str) -> None:
    county = make_county(tmp_path, county_db_url)
    county.server = CountyServer(
        county.data, limits=Limits(held_ttl_ms=200), database_url=county_db_url
    ).start()
    try:
        term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
        sync(term)
        book = term.open_ledger()
        try:
            for i in range(4):
                book.append(card_sale(wallet(issuer, f"H{i}"), f"0{i}aa"), T0_MS)
        finally:
            book.close()
        # Send only the last two entries: a gap, so the batch is held.
        book = term.open_ledger()
        try:
            key = book._key  # the terminal's own ledger key: a genuine but early batch
            rows = [
                [
                    *[getattr(e, c) for c in _columns()],
                    e.prev_hash.hex(),
                    e.hash.hex(),
                ]
                for e in (book.entry(book.last_seq() - 1), book.entry(book.last_seq()))
                if e is not None
            ]
        finally:
            book.close()
        for row in rows:
            row[15] = json.dumps(row[15], sort_keys=True, separators=(",", ":"))
        last = rows[-1]
        signature = key.sign(checkpoint_message("a1", last[0], bytes.fromhex(last[17])))
        answer = post_ledger(
            term,
            {
                "nonce": "",
                "entries": rows,
                "checkpoints": [[last[0], last[17], 0, signature.hex()]],
            },
        )
        assert answer.status_code == 200 and answer.json()["status"] == "gap", answer.text

        def held() -> int:
            with county.store.db.read() as conn:
                return int(conn.execute(text("SELECT count(*) FROM held_batches")).scalar_one())

        assert held() == 1
        # Any later request from any terminal sweeps batches held longer than the limit.
        other = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")

        def swept() -> bool:
            post_ledger(other, {"nonce": "", "entries": [], "checkpoints": []})
            return not held()

        wait_for(swept, 10, "the held batch to expire", every_s=0.05)
    finally:
        county.stop()


def _columns() -> tuple[str, ...]:
    from protocol.chain import HASHED_COLUMNS

    return HASHED_COLUMNS


# --- 3. review: conflicts listed with evidence, withdrawn, lifted on the terminals ---------


def test_withdrawing_a_conflict_lifts_its_revocation_on_the_terminals(
    county: County, tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time())
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    county.pin_root(a.root)
    store = trust.TrustStore(a.root / "trust.sqlite")
    try:
        assert tu.update_once(tu.updater_for_county(a.root), store, now) is not None
        w = wallet(issuer, "V")
        record(a, qr_sale(w, w.draw(T0), 1))
        sync(a)
        record(b, qr_sale(w, w.draw(T0 + 30), 2))
        sync(b)
        assert cu.publish_conflict_revocations(county.data, now).revocations_added == 1
        applied = tu.update_once(tu.updater_for_county(a.root), store, now)
        assert applied is not None and applied.changed == ("revocations",)
        key = trust.revocation_key("credential", w.iss, w.cti)
        assert store._has(key)

        # County IT reviews: names, both terminals, local times, hashes.
        assert county_main(["conflicts", "--data", str(county.data)]) == 0
        listing = capsys.readouterr().out
        [conflict] = county.store.conflicts()
        assert f"conflict {conflict['id']} served_twice [standing, not reviewed]" in listing
        assert "Cadre V" in listing and "terminal a1 (canteen-a)" in listing
        assert "terminal b1 (canteen-b)" in listing and "2026-05-28 " in listing

        assert (
            county_main(
                [
                    "conflicts",
                    "withdraw",
                    str(conflict["id"]),
                    "--data",
                    str(county.data),
                    "--reason",
                    "the cadre was on an inspection trip; both meals approved",
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert "lifted 1 revocation(s)" in out
        # Withdrawn once only; an unknown conflict is one line, exit 2.
        assert (
            county_main(
                [
                    "conflicts",
                    "withdraw",
                    str(conflict["id"]),
                    "--data",
                    str(county.data),
                    "--reason",
                    "again",
                ]
            )
            == 2
        )
        assert (
            county_main(
                ["conflicts", "withdraw", "999", "--data", str(county.data), "--reason", "x"]
            )
            == 2
        )
        assert "no conflict 999" in capsys.readouterr().err
        assert county.store.revocations() == []
        # The refresher does not bring it back.
        assert cu.publish_conflict_revocations(county.data, now).revocations_added == 0

        lifted = tu.update_once(tu.updater_for_county(a.root), store, now)
        assert lifted is not None and lifted.changed == ("revocations",)
        assert not store._has(key)
        # Withdrawn conflicts leave the report and stay on record.
        report = county.store.report(int(time.time() * 1000), 3_600_000)
        assert sum(d["conflicts"] for d in report["days"]) == 0
        assert county_main(["conflicts", "--all", "--data", str(county.data)]) == 0
        assert "WITHDRAWN" in capsys.readouterr().out
    finally:
        store.close()


@ON_EACH_BACKEND
def test_a_withdrawn_conflict_keeps_county_its_own_revocation(
    county: County, tmp_path: Path, issuer: Issuer
) -> None:
    """County IT revoked the card by hand too: withdrawing the conflict leaves it revoked."""
    now = int(time.time())
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    w = wallet(issuer, "M")
    for term in (a, b):
        record(term, card_sale(w, "04c0ffee"))
        sync(term)
    cu.publish_conflict_revocations(county.data, now, county.database_url)
    with cu.CountyRepository(county.data) as repo:
        repo.revoke([{"kind": "card", "uid": "04c0ffee"}], now)
        count = repo.revocation_count()
    [conflict] = county.store.conflicts()
    lifted = county.store.withdraw_conflict(conflict["id"], "reviewed", T0_MS)
    assert lifted == [{"kind": "card", "uid": "04c0ffee"}]
    with cu.CountyRepository(county.data) as repo:
        pub = repo.lift(lifted, now)
        assert pub.revocations_lifted == 0 and repo.revocation_count() == count


@pytest.mark.slow
def test_a_county_takes_the_keys_of_a_trust_list_published_before(
    tmp_path: Path, issuer: Issuer
) -> None:
    """A repository whose trust list was published before the county kept issuer keys:
    the server takes them in at start, so the codes of that list's cadres are evidence."""
    county = make_county(tmp_path)
    now = int(time.time())
    cu.init_repository(county.data, tmp_path / "root-keys", now)
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(
        json.dumps({"version": 1, "issued_at": now, "entries": [issuer.trust_entry()]})
    )
    with cu.CountyRepository(county.data) as repo:
        repo.publish_trust(trust_file, now)
    import sqlite3

    db = sqlite3.connect(county.data / "county.sqlite")
    with db:
        db.execute("DELETE FROM issuer_keys")
    db.close()
    county.start()
    try:
        wait_for(lambda: county.store.issuer_key_count() > 0, 10, "the published keys")
    finally:
        county.stop()


@ON_EACH_BACKEND
def test_a_signed_entry_with_a_detail_nested_too_deep_is_stored_not_a_500(
    county: County, tmp_path: Path, issuer: Issuer
) -> None:
    """Entry details are read at the county (evidence, applied sets, clock offsets): a detail nested
    100,000 deep in a correctly chained and signed batch is stored and answered 200, so the
    terminal is not told to retry a batch forever."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    deep = "[" * 100_000 + "]" * 100_000
    with county.store.db.read() as conn:
        seq, prev = conn.execute(
            text("SELECT acked_seq, last_hash FROM terminals WHERE terminal_id = 'a1'")
        ).one()
    rows: list[list[Any]] = []
    for kind in ("config_applied", "time_signal", SALE):
        seq += 1
        fields = [seq, secrets.token_hex(8), T0_MS, kind, ACCEPT, None, "qr"]
        fields += ["iss/x", "qr/iss/00", 1, "u", DAY, "lunch", 0, None, deep]
        digest = entry_hash(prev, fields)
        rows.append([*fields, prev.hex(), digest.hex()])
        prev = digest
    key = load_or_create_signing_key(term.root / "terminal-key.pem")
    last = rows[-1]
    signature = key.sign(checkpoint_message("a1", last[0], bytes.fromhex(last[17])))
    answer = post_ledger(
        term,
        {
            "nonce": "",
            "entries": rows,
            "checkpoints": [[last[0], last[17], 0, signature.hex()]],
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 3
    assert [x["seq"] for x in alarms_of(county, BAD_EVIDENCE)] == [last[0]]


def test_re_registering_a_terminal_cuts_its_old_certificate_off_at_once(
    county: County, issuer: Issuer, tmp_path: Path
) -> None:
    """A stolen terminal: county IT registers the terminal id again (a new code for the
    replacement device) and the certificate on the stolen one stops working now."""
    term = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    sync(term)
    # In another process, as `canteen-county terminal add` would: the server must notice.
    assert (
        county_main(
            [
                "terminal",
                "add",
                "--data",
                str(county.data),
                "--canteen",
                "canteen-a",
                "--terminal",
                "a1",
            ]
        )
        == 0
    )
    record(term, card_sale(wallet(issuer, "T"), "04aa"))
    result = SyncClient(term.ledger_path, term.identity, FAST).sync_once(time.monotonic() + 10)
    assert result.error_kind == "refused" and "not (or no longer)" in (result.error or "")


def test_revocations_published_before_origins_were_kept_can_still_be_lifted(
    county: County, tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A county upgraded from the release without origins: its conflict revocations were
    published without one. The upgrade marks them as the conflict checks', so withdrawing
    the conflict lifts them (it used to say "lifted 0" and leave the cadre revoked)."""
    import sqlite3

    now = int(time.time())
    a = provision_terminal(county, tmp_path / "a", "a1", "canteen-a")
    b = provision_terminal(county, tmp_path / "b", "b1", "canteen-b")
    w = wallet(issuer, "U")
    for term in (a, b):
        record(term, card_sale(w, "04beef01"))
        sync(term)
    assert cu.publish_conflict_revocations(county.data, now).revocations_added == 1
    source = sqlite3.connect(cu.RepoPaths(county.data).source)
    with source:
        source.execute("ALTER TABLE revocations DROP COLUMN origin")  # as the old release
    source.close()
    [conflict] = county_main_json(county.data)
    assert (
        county_main(
            [
                "conflicts",
                "withdraw",
                str(conflict["id"]),
                "--data",
                str(county.data),
                "--reason",
                "reviewed: a faulty reader",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "lifted 1 revocation(s)" in out and "stay revoked" not in out
    with cu.CountyRepository(county.data) as repo:
        assert repo.revocation_count() == 0


def county_main_json(data: Path) -> list[dict[str, Any]]:
    from county.store import CountyStore

    store = CountyStore(data / "county.sqlite")
    try:
        return store.conflicts()
    finally:
        store.close()
