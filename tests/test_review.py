"""The review of alarms and conflicts (issue 16): county/review.py and the commands
``canteen-county alarms confirm|withdraw`` and ``conflicts confirm|withdraw``.

A real county database on each backend holds a conflict between two stored entries, one
whose phone code is the phone's and one a terminal altered after the fact, and an alarm:
the review lists them with the codes verified again now, the directory's names and
local times; each is confirmed or withdrawn once, with a one-line reason, by a named
person. The browser side, and a withdrawal reaching a terminal, are in
tests/test_console_alarms.py.
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from countykit import T0_MS
from hwsim.wallet import Issuer, Wallet, key_from_seed, make_wallet
from sqlalchemy import Connection, insert, select

from county import conflicts, review
from county.cli import main as county_main
from county.console import audit
from county.db import Database
from county.db.migrations import prepare
from county.db.schema import alarms, cadres, canteens, conflict_revocations, entries
from county.db.schema import conflicts as conflicts_table
from county.errors import StoreError
from county.users_cli import cli_user

T0 = T0_MS // 1000
ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
ISSUER = Issuer("hn-review", key_from_seed("review-issuer"))
# The wallet's codes count up as they are drawn: each county gets a fresh copy.
WALLET = make_wallet(ISSUER, "V", "u-tax", "Cadre V", now=T0 - 86_400, seed="V")
CREDENTIAL = f"qr/{WALLET.iss}/{WALLET.cti.hex()}"
CADRE = f"{WALLET.iss}/{WALLET.sub}"


def _entry(
    terminal: str, canteen: str, seq: int, w: Wallet, ctr: int, **over: Any
) -> dict[str, Any]:
    at_ms = T0_MS + seq * 1000
    row: dict[str, Any] = {
        "terminal": terminal,
        "canteen": canteen,
        "seq": seq,
        "entry_id": f"{terminal}-{seq}",
        "at_ms": at_ms,
        "kind": "sale",
        "verdict": "accept",
        "method": "qr",
        "cadre": CADRE,
        "credential": CREDENTIAL,
        "ctr": ctr,
        "unit": w.unit,
        "day": "2026-05-28",
        "meal": "lunch",
        "amount_fen": 1200,
        "detail": json.dumps({"qr": w.draw(at_ms // 1000)}),
        "prev_hash": bytes(32),
        "hash": seq.to_bytes(32, "big"),
        "received_ms": at_ms,
    }
    row.update(over)
    return row


def seed(conn: Connection) -> dict[str, int]:
    """Two stored sales of cadre V at two canteens (the second altered by its terminal:
    its counter is not the one the phone signed), their conflict with its revocation, a
    fork alarm against a third terminal, the issuer's key and the directory's names."""
    conflicts.add_issuer_keys(conn, [ISSUER.trust_entry()], T0_MS)
    w = make_wallet(ISSUER, "V", "u-tax", "Cadre V", now=T0 - 86_400, seed="V")
    first = _entry("a1", "canteen-a", 1, w, 1)
    second = _entry("b1", "canteen-b", 1, w, 2)
    second["ctr"] = 7  # the terminal wrote another counter than the phone signed
    conn.execute(insert(entries), [first, second])
    conn.execute(insert(cadres).values(cadre=CADRE, unit="u-tax", name="王五", imported_ms=T0_MS))
    conn.execute(
        insert(canteens),
        [
            {"canteen": "canteen-a", "name": "县委食堂", "operator": "u-tax", "imported_ms": T0_MS},
            {"canteen": "canteen-b", "name": "镇食堂", "operator": "u-tax", "imported_ms": T0_MS},
        ],
    )
    conflict_id = conn.execute(
        insert(conflicts_table)
        .values(
            kind="served_twice", credential=CREDENTIAL, cadre=CADRE, unit="u-tax",
            day="2026-05-28", meal="lunch", first_terminal="a1", first_seq=1,
            second_terminal="b1", second_seq=1, found_ms=T0_MS + 5000,
            first_canteen="canteen-a", second_canteen="canteen-b", name="Cadre V",
            reason="V was served lunch twice",
        )
        .returning(conflicts_table.c.id)
    ).scalar_one()  # fmt: skip
    conn.execute(
        insert(conflict_revocations).values(
            conflict_id=conflict_id,
            credential=CREDENTIAL,
            entry=json.dumps({"kind": "credential", "iss": WALLET.iss, "cti": WALLET.cti.hex()}),
            created_ms=T0_MS,
        )
    )
    alarm_id = conn.execute(
        insert(alarms)
        .values(
            terminal="c1", kind="fork", seq=4, theirs=b"\x01" * 32, ours=b"\x02" * 32,
            problem="entry 4 differs from the county's", first_ms=T0_MS, last_ms=T0_MS,
        )
        .returning(alarms.c.id)
    ).scalar_one()  # fmt: skip
    return {"conflict": int(conflict_id), "alarm": int(alarm_id)}


@pytest.fixture(name="db")
def db_fixture(county_db_url: str) -> Iterator[Database]:
    db = Database(county_db_url)
    try:
        prepare(db)
        yield db
    finally:
        db.close()


def _review_columns(db: Database, what: str, item_id: int) -> tuple[Any, ...]:
    table = alarms if what == "alarm" else conflicts_table
    c = table.c
    with db.read() as conn:
        return tuple(
            conn.execute(
                select(
                    c.confirmed_ms, c.confirmed_by, c.confirmed_reason,
                    c.withdrawn_ms, c.withdrawn_by, c.withdrawn_reason,
                ).where(c.id == item_id)
            ).one()
        )  # fmt: skip


def test_the_list_shows_the_evidence_verified_now_with_names_and_local_times(
    db: Database,
) -> None:
    with db.write() as conn:
        ids = seed(conn)
    with db.read() as conn:
        found = review.items(conn, ZONE)
    assert [(x["what"], x["id"]) for x in found] == [
        ("conflict", ids["conflict"]),  # found later: first among the open ones
        ("alarm", ids["alarm"]),
    ]
    c = found[0]
    assert c["state"] == "open" and c["decision"] is None
    assert c["cadre_name"] == "王五" and c["signed_name"] == "Cadre V"
    assert c["revokes"] == [CREDENTIAL]
    first, second = c["entries"]
    assert (first["terminal"], first["canteen_name"], second["canteen_name"]) == (
        "a1",
        "县委食堂",
        "镇食堂",
    )
    # Local times of the county's zone (UTC+8), to the second.
    assert first["local"] == "2026-05-29 04:26:41" and c["found"] == "2026-05-29 04:26:45"
    assert first["verified"], first["check"]
    assert first["check"].startswith(f"verifies with issuer key {ISSUER.iss} ")
    assert first["key"] == f"{ISSUER.iss} " + review.key_label(ISSUER.public_key)
    assert not second["verified"] and second["key"] == ""
    assert second["check"] == ("refused: the entry's ctr '7' is not the one the phone signed ('2')")
    a = found[1]
    assert a["kind"] == "fork" and a["theirs"] == "01" * 32
    [entry] = a["entries"]
    assert not entry["found"] and entry["check"] == "the county holds no entry with this number"

    # Filters: state, type, kind, terminal (either side of a conflict).
    with db.read() as conn:
        assert [x["what"] for x in review.items(conn, ZONE, what="alarm")] == ["alarm"]
        assert [x["what"] for x in review.items(conn, ZONE, kind="served_twice")] == ["conflict"]
        assert [x["what"] for x in review.items(conn, ZONE, terminal="a1")] == ["conflict"]
        assert [x["what"] for x in review.items(conn, ZONE, terminal="c1")] == ["alarm"]
        assert review.items(conn, ZONE, state="confirmed") == []
        assert review.open_counts(conn) == {"alarm": 1, "conflict": 1}
        with pytest.raises(StoreError, match="state 'nope' is none of"):
            review.items(conn, ZONE, state="nope")
        assert review.item(conn, "alarm", 10**30, ZONE) is None
        assert review.item(conn, "other", 1, ZONE) is None

    # A decided item goes after the open ones.
    with db.write() as conn:
        review.decide(conn, "conflict", ids["conflict"], "confirm", "seen", "wang", T0_MS)
    with db.read() as conn:
        assert [x["what"] for x in review.items(conn, ZONE)] == ["alarm", "conflict"]
        assert [x["what"] for x in review.items(conn, ZONE, state="open")] == ["alarm"]
        assert review.open_counts(conn) == {"alarm": 1, "conflict": 0}


def test_each_decision_is_taken_once_with_a_reason_by_a_named_person(db: Database) -> None:
    with db.write() as conn:
        ids = seed(conn)
    a, c = ids["alarm"], ids["conflict"]
    bad = {
        "": "say why the alarm is confirmed",
        "   ": "say why the alarm is confirmed",
        "two\nlines": "one line of text",
        "x" * (review.MAX_REASON + 1): f"at most {review.MAX_REASON}",
    }
    for reason, why in bad.items():
        with pytest.raises(StoreError, match=why), db.write() as conn:
            review.decide(conn, "alarm", a, "confirm", reason, "wang", T0_MS)
    for item_id in (0, -1, 999, 2**70):
        with pytest.raises(StoreError, match=f"no alarm {item_id}:"), db.write() as conn:
            review.decide(conn, "alarm", item_id, "confirm", "ok", "wang", T0_MS)
    with (
        pytest.raises(StoreError, match="neither confirm nor withdraw"),
        db.write() as conn,
    ):
        review.decide(conn, "alarm", a, "approve", "ok", "wang", T0_MS)
    assert _review_columns(db, "alarm", a) == (None,) * 6

    with db.write() as conn:
        assert review.decide(conn, "alarm", a, "withdraw", " a test fork ", "wang", T0_MS) == []
    assert _review_columns(db, "alarm", a) == (None, None, None, T0_MS, "wang", "a test fork")
    for decision in ("confirm", "withdraw"):
        with pytest.raises(StoreError) as refused, db.write() as conn:
            review.decide(conn, "alarm", a, decision, "again", "li", T0_MS + 1)
        assert str(refused.value) == f"alarm {a} was withdrawn already (by wang)"
    assert _review_columns(db, "alarm", a)[3:] == (T0_MS, "wang", "a test fork")

    # A confirmed conflict keeps its revocation, and cannot then be withdrawn.
    with db.write() as conn:
        assert review.decide(conn, "conflict", c, "confirm", "real", "li", T0_MS) == []
        assert [r["conflict"] for r in conflicts.revocations(conn)] == [c]
    confirmed = f"conflict {c} was confirmed already \\(by li\\)"
    with pytest.raises(StoreError, match=confirmed), db.write() as conn:
        review.decide(conn, "conflict", c, "withdraw", "changed my mind", "wang", T0_MS)
    assert _review_columns(db, "conflict", c) == (T0_MS, "li", "real", None, None, None)


def test_withdrawing_a_conflict_lifts_what_it_alone_revoked(db: Database) -> None:
    with db.write() as conn:
        ids = seed(conn)
    lines: list[Any] = []
    done = review.withdraw_conflict(
        db, None, ids["conflict"], "both meals approved", "wang", T0_MS,
        also=lambda conn, lifted: lines.append((conn.in_transaction(), lifted)),
    )  # fmt: skip
    lifted = [{"kind": "credential", "iss": WALLET.iss, "cti": WALLET.cti.hex()}]
    assert done == review.Withdrawal(lifted, None, 0)
    assert lines == [(True, lifted)]
    assert _review_columns(db, "conflict", ids["conflict"])[3:] == (
        T0_MS,
        "wang",
        "both meals approved",
    )
    with db.read() as conn:
        assert conflicts.revocations(conn) == []
    # Refused before anything: an empty reason, an unknown conflict.
    with pytest.raises(StoreError, match="say why the conflict is withdrawn"):
        review.withdraw_conflict(db, None, ids["conflict"], " ", "wang", T0_MS)
    with pytest.raises(StoreError, match="no conflict 77:"):
        review.withdraw_conflict(db, None, 77, "x", "wang", T0_MS)


# --- the commands ---------------------------------------------------------------------


def _county(tmp_path: Path) -> Path:
    data = tmp_path / "county"
    data.mkdir()
    db = Database(f"sqlite:///{data / 'county.sqlite'}")
    try:
        prepare(db)
        with db.write() as conn:
            seed(conn)
    finally:
        db.close()
    return data


def test_the_review_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _county(tmp_path)
    d = ["--data", str(data)]

    def run(*argv: str) -> tuple[int, str, str]:
        rc = county_main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    assert run(
        "alarms", "confirm", "1", *d, "--reason", "the SD card was swapped; see ticket 12"
    ) == (
        0,
        "alarm 1 confirmed: the SD card was swapped; see ticket 12\n",
        "",
    )
    rc, out, err = run("alarms", "withdraw", "1", *d, "--reason", "again")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "alarm 1 was confirmed already (by cli:" in err
    rc, _, err = run("alarms", "withdraw", "9", *d, "--reason", "x")
    assert rc == 2 and err.count("\n") == 1 and "no alarm 9:" in err
    rc, _, err = run("conflicts", "confirm", "1", *d, "--reason", "a\tb")
    assert rc == 2 and "one line of text" in err
    rc, _, err = run("conflicts", "confirm", "1", *d, "--reason", "y" * 501)
    assert rc == 2 and "at most 500" in err
    with pytest.raises(SystemExit) as usage:
        county_main(["conflicts", "confirm", "1", *d])
    assert usage.value.code == 2 and "--reason" in capsys.readouterr().err
    rc, _, err = run("alarms", "confirm", "1", "--data", str(tmp_path / "none"), "--reason", "x")
    assert rc == 2 and "no such county data directory" in err
    # The conflict is still open: withdrawn now, with no signed updates in this county.
    rc, out, _ = run("conflicts", "withdraw", "1", *d, "--reason", "approved trip")
    assert rc == 0 and "conflict 1 withdrawn: approved trip" in out
    assert "this county publishes no signed updates" in out
    rc, _, err = run("conflicts", "confirm", "1", *d, "--reason", "too late")
    assert rc == 2 and "conflict 1 was withdrawn already (by cli:" in err

    db = Database(f"sqlite:///{data / 'county.sqlite'}")
    try:
        assert _review_columns(db, "alarm", 1)[:3] == (
            _review_columns(db, "alarm", 1)[0],
            cli_user(),
            "the SD card was swapped; see ticket 12",
        )
        assert _review_columns(db, "conflict", 1)[4:] == (cli_user(), "approved trip")
        with db.read() as conn:
            rows = audit.page(conn, audit.AuditFilter(), 100)
    finally:
        db.close()
    # Only what succeeded is in the audit log, under the command's user.
    assert sorted((r["action"], r["target"], r["user"]) for r in rows) == [
        ("alarm.confirm", "1", cli_user()),
        ("conflict.withdraw", "1", cli_user()),
    ]
    # The listings still answer, and say who decided.
    rc, out, _ = run("conflicts", "--all", "--json", *d)
    listed = json.loads(out)
    assert rc == 0 and listed["withdrawn_reason"] == "approved trip"
    assert listed["withdrawn_by"] == cli_user() and listed["confirmed_ms"] is None
    rc, out, _ = run("conflicts", "--all", *d)
    assert rc == 0 and "[WITHDRAWN " in out and f" by {cli_user()}: approved trip]" in out
    rc, out, _ = run("alarms", "--text", *d)
    assert rc == 0
    assert f"by {cli_user()}: the SD card was swapped; see ticket 12]" in out
    assert "[confirmed " in out
    rc, out, _ = run("alarms", *d)
    alarm = json.loads(out.splitlines()[0])
    assert (alarm["confirmed_by"], alarm["withdrawn_ms"]) == (cli_user(), None)


def test_alarms_and_conflicts_from_before_the_review_columns_stay_valid(tmp_path: Path) -> None:
    """A county at revision 0005 with an alarm and a conflict: upgraded, both are open,
    can be decided, and the anomalies finder's index is there."""
    from sqlalchemy import inspect

    from county.db import migrations

    db = Database(f"sqlite:///{tmp_path / 'county.sqlite'}")
    try:
        assert migrations.upgrade(db, "0005") == (None, "0005")
        with db.write() as conn:
            conn.execute(
                insert(alarms).values(
                    terminal="c1", kind="clock", seq=0, problem="ahead 90 s",
                    first_ms=T0_MS, last_ms=T0_MS,
                )
            )  # fmt: skip
            conn.execute(
                insert(conflicts_table).values(
                    kind="served_twice", first_terminal="a1", first_seq=1,
                    second_terminal="b1", second_seq=1, found_ms=T0_MS,
                )
            )  # fmt: skip
        assert migrations.upgrade(db) == ("0005", migrations.head())
        with db.read() as conn:
            found = review.items(conn, ZONE)
            assert [(x["what"], x["state"]) for x in found] == [
                ("alarm", "open"),
                ("conflict", "open"),
            ]
            [index] = [
                i
                for i in inspect(conn).get_indexes("entries")
                if i["name"] == "entries_sales_cadre"
            ]
        assert index["column_names"] == ["at_ms", "cadre", "canteen"]
        # Partial: accepted sales only, as entries_sales_at.
        where = str(index["dialect_options"]["sqlite_where"])
        assert "kind = 'sale'" in where and "verdict = 'accept'" in where
        with db.write() as conn:
            review.decide(conn, "alarm", 1, "confirm", "clock replaced", "wang", T0_MS)
            review.decide(conn, "conflict", 1, "withdraw", "test data", "wang", T0_MS)
        assert _review_columns(db, "alarm", 1)[:3] == (T0_MS, "wang", "clock replaced")
        assert _review_columns(db, "conflict", 1)[3:] == (T0_MS, "wang", "test data")
    finally:
        db.close()
