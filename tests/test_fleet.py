"""The fleet (issue 16, docs/fleet.md): the status a terminal sends with each upload, the
fleet's rows and their order, the update set judged by content after a real `rotate
targets`, and a set applied from a USB medium reaching the county through the daemon.

Real county servers over mTLS, real ledgers and SyncClients, a real daemon where the flow
needs one; the fleet's queries run on the county's own database (both backends where
marked).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from countykit import (
    ON_EACH_BACKEND,
    County,
    make_county,
    post_ledger,
    provision_terminal,
    server_chain,
    signed_rows,
    sync,
)
from daemonkit import (
    ISSUER,
    UPDATES_SYNC,
    ReaderPty,
    ledger_entries,
    updating_daemon,
    write_settings,
)
from sqlalchemy import delete, insert, select, update

from county import fleet
from county import updates as cu
from county.cli import main as county_main
from county.db.schema import alarms, clock_offsets, sync_log, terminal_status, terminals
from protocol.wire import STATUS_MAX_BYTES, StatusInvalid, parse_status
from terminal.sync import LedgerReader, software_version

SHANGHAI = fleet.FleetRules().zone
NOON = int(dt.datetime(2026, 5, 28, 12, 0, tzinfo=SHANGHAI).timestamp() * 1000)
MIN = 60_000


def county_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = county_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the status in the upload -------------------------------------------------------------


def _last_seq(book: Path) -> int:
    reader = LedgerReader(book)
    try:
        return reader.last_seq()
    finally:
        reader.close()


def _status_row(county: County, terminal_id: str) -> dict[str, Any] | None:
    with county.store.db.read() as conn:
        row = (
            conn.execute(select(terminal_status).where(terminal_status.c.terminal == terminal_id))
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


@ON_EACH_BACKEND
def test_each_upload_carries_the_terminal_status(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    term.append_entries(3)
    last = _last_seq(term.ledger_path)
    sync(term)  # which records the county's time after it: one entry more, not sent
    row = _status_row(county, "t1")
    assert row is not None
    assert (row["software"], row["last_seq"]) == (software_version(), last)
    assert json.loads(row["status"])["last_seq"] == last
    with county.store.db.read() as conn:
        logged = conn.execute(select(sync_log.c.outcome, sync_log.c.accepted)).all()
    assert logged == [("ok", last)]

    # An old terminal sends no status: its upload is taken as before, the status kept.
    term.append_entries(2)
    rows, cps = signed_rows(term, last + 1, last + 3)
    answer = post_ledger(term, {"nonce": "", "entries": rows, "checkpoints": cps})
    assert answer.status_code == 200 and answer.json()["acked_seq"] == last + 3
    assert _status_row(county, "t1") == row

    # Unknown fields (a newer terminal) are dropped, not refused.
    answer = post_ledger(
        term, {"nonce": "", "entries": [], "checkpoints": [], "status": {"future": 1}}
    )
    assert answer.status_code == 200
    kept = _status_row(county, "t1")
    assert kept is not None and json.loads(kept["status"]) == {}


BAD_STATUSES: list[tuple[Any, str]] = [
    ([], "must be a JSON object"),
    ("fine", "must be a JSON object"),
    ({"software": 5}, "status.software"),
    ({"software": ""}, "status.software"),
    ({"software": "v" * 65}, "status.software"),
    ({"software": "1.0\n2"}, "status.software"),
    ({"last_seq": -1}, "status.last_seq"),
    ({"last_seq": "3"}, "status.last_seq"),
    ({"last_seq": True}, "status.last_seq"),
    ({"update_set": 1.5}, "status.update_set"),
    ({"lists": []}, "status.lists must be an object"),
    ({"lists": {"roster": 3}}, "status.lists.roster"),
    ({"lists": {"roster": {"version": -2}}}, "status.lists.roster.version"),
    ({"clock_trusted": "yes"}, "status.clock_trusted"),
    ({"padding": "x" * STATUS_MAX_BYTES}, f"larger than {STATUS_MAX_BYTES}"),
]


def test_a_malformed_status_is_400_and_stores_nothing(county: County, tmp_path: Path) -> None:
    term = provision_terminal(county, tmp_path / "t1", "t1", "c1")
    term.append_entries(2)
    rows, cps = signed_rows(term, 1, 3)
    for status, says in BAD_STATUSES:
        with pytest.raises(StatusInvalid) as refused:
            parse_status(status)
        assert says in str(refused.value), (status, str(refused.value))
        answer = post_ledger(
            term, {"nonce": "", "entries": rows, "checkpoints": cps, "status": status}
        )
        assert answer.status_code == 400, status
        problem = answer.json()["problem"]
        assert says in problem and "\n" not in problem, problem
        assert server_chain(county.store, "t1") == []
        assert _status_row(county, "t1") is None
    # The same batch with a good status is taken.
    answer = post_ledger(
        term, {"nonce": "", "entries": rows, "checkpoints": cps, "status": {"last_seq": 3}}
    )
    assert answer.status_code == 200 and answer.json()["acked_seq"] == 3


# --- the fleet's rows ---------------------------------------------------------------------


def test_service_hours_count_the_day_not_the_night() -> None:
    rules = fleet.FleetRules()
    evening = int(dt.datetime(2026, 5, 27, 19, 59, tzinfo=SHANGHAI).timestamp() * 1000)
    morning = int(dt.datetime(2026, 5, 28, 6, 40, tzinfo=SHANGHAI).timestamp() * 1000)
    # 19:59-20:00, then 06:30-06:40: 11 minutes of service hours over a night.
    assert fleet.service_ms_between(evening, morning, rules, 10**12) == 11 * MIN
    assert fleet.service_ms_between(morning, evening, rules, 10**12) == 0
    # A terminal silent for a year: counting stops past what is enough.
    year_ago = morning - 365 * 86_400_000
    assert 20 * MIN < fleet.service_ms_between(year_ago, morning, rules, 20 * MIN) < 2 * 86_400_000


def _seen(county: County, terminal_id: str, at_ms: int | None) -> None:
    with county.store.db.write() as conn:
        conn.execute(
            update(terminals)
            .where(terminals.c.terminal_id == terminal_id)
            .values(last_seen_ms=at_ms)
        )


@ON_EACH_BACKEND
def test_the_silent_and_the_wrong_clocks_come_first(
    county: County, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for tid, canteen in (("t-ok", "c1"), ("t-clock", "c1"), ("t-silent", "c2"), ("t-old", "c2")):
        # Its genesis uploaded: no sale, so no alarm but those this test adds.
        sync(provision_terminal(county, tmp_path / tid, tid, canteen))
    county.code("t-wait", "c3")  # registered, never provisioned
    _seen(county, "t-ok", NOON - 5 * MIN)
    _seen(county, "t-clock", NOON - 1 * MIN)
    _seen(county, "t-silent", NOON - 16 * MIN)
    _seen(county, "t-old", NOON - 400 * 86_400_000)
    with county.store.db.write() as conn:
        # The clock offsets intake keeps from time_signal entries: t-clock's runs 95 s slow.
        conn.execute(delete(clock_offsets).where(clock_offsets.c.terminal == "t-clock"))
        conn.execute(
            insert(clock_offsets).values(
                terminal="t-clock",
                scanned_seq=2,
                seq=2,
                ahead_ms=-95_000,
                server_ms=NOON,
                noted_ms=NOON,
            )
        )
        conn.execute(
            insert(alarms).values(
                terminal="t-ok", kind="fork", seq=2, problem="test", first_ms=NOON, last_ms=NOON
            )
        )
        # Reviewed alarms are dealt with: neither counts, nor makes t-wait an 'alarms' row.
        for seq, decided in ((3, "confirmed"), (4, "withdrawn")):
            conn.execute(
                insert(alarms).values(
                    {
                        "terminal": "t-wait",
                        "kind": "fork",
                        "seq": seq,
                        "problem": "test",
                        "first_ms": NOON,
                        "last_ms": NOON,
                        f"{decided}_ms": NOON,
                        f"{decided}_by": "admin",
                        f"{decided}_reason": "checked",
                    }
                )
            )
        # t-old is retired: never silent, and left out unless asked for.
        conn.execute(
            update(terminals).where(terminals.c.terminal_id == "t-old").values(retired_ms=NOON)
        )
    with county.store.db.read() as conn:
        rows = fleet.fleet(conn, county.data, NOON)
        every = fleet.fleet(conn, county.data, NOON, retired=True)
        silent = fleet.fleet(conn, county.data, NOON, only=[fleet.SILENT])
        c1 = fleet.fleet(conn, county.data, NOON, canteen="c1", sort="clock", descending=True)
        # Twelve minutes later t-ok is silent too (17 minutes of service hours).
        later = fleet.fleet(conn, county.data, NOON + 12 * MIN)
    order = [(r["terminal"], r["states"]) for r in rows]
    assert order == [
        ("t-silent", ["silent"]),
        ("t-clock", ["clock"]),
        ("t-ok", ["alarms"]),
        ("t-wait", ["waiting"]),
    ]
    ok = rows[2]
    assert rows[3]["alarms"] == 0
    assert ok["alarms"] == 1 and ok["backlog"] == 0 and ok["software"] == software_version()
    assert ok["update"]["state"] == "none"  # this county publishes no updates
    assert rows[1]["clock_ahead_ms"] == -95_000 and rows[1]["clock_ok"] is False
    assert [r["terminal"] for r in every][-1] == "t-old"
    assert every[-1]["states"] == ["retired"]
    assert [r["terminal"] for r in silent] == ["t-silent"]
    assert [r["terminal"] for r in c1] == ["t-clock", "t-ok"]
    assert [r["terminal"] for r in later if "silent" in r["states"]] == ["t-ok", "t-silent"]
    assert fleet.state_counts(rows)["silent"] == 1
    with county.store.db.read() as conn:
        with pytest.raises(fleet.FleetError, match="sort 'age'"):
            fleet.fleet(conn, county.data, NOON, sort="age")
        page = fleet.terminal_page(conn, county.data, "t-ok", NOON)
        assert fleet.terminal_page(conn, county.data, "nobody", NOON) is None
    assert page is not None and page["alarms"][0]["kind"] == "fork"
    assert page["syncs"][0]["outcome"] == "ok" and page["syncs"][0]["accepted"] == 1

    # The command: a table, JSON, the silent only (at the wall clock: all old by now).
    args = ["fleet", "--data", str(county.data)]
    if county.database_url:
        args += ["--database", county.database_url]
    code, out, _ = county_cli(capsys, *args)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["terminal", "canteen", "state"]
    assert "t-old" not in out
    code, out, _ = county_cli(capsys, *args, "--json", "--silent", "--retired")
    doc = json.loads(out)
    assert code == 0 and "t-old" not in [r["terminal"] for r in doc["terminals"]]
    code, _, err = county_cli(capsys, *args, "--timezone", "Mars/Olympus")
    assert code == 2 and "Mars/Olympus" in err and err.count("\n") == 1


def test_the_sync_history_is_bounded(county: County, tmp_path: Path) -> None:
    with county.store.db.write() as conn:
        for i in range(fleet.SYNC_LOG_KEEP + 7):
            fleet.note_upload(conn, "t1", NOON + i, status={"last_seq": i}, outcome="ok")
        fleet.note_upload(conn, "t2", NOON, status=None, outcome="gap")
    with county.store.db.read() as conn:
        history = fleet.sync_history(conn, "t1")
        n = conn.execute(select(sync_log.c.id).where(sync_log.c.terminal == "t1")).all()
        assert fleet.sync_history(conn, "t2")[0]["outcome"] == "gap"
    assert len(n) == fleet.SYNC_LOG_KEEP == len(history)
    assert history[0]["last_seq"] == fleet.SYNC_LOG_KEEP + 6 and history[-1]["last_seq"] == 7


# --- the update set: content, not set numbers -----------------------------------------------

ROSTER = "uid,iss,sub,unit,display_name,status\n0a1b2c3d4e,hn-daemon,K1,own,Card holder,active\n"


def _standing(county: County) -> dict[str, Any]:
    from county.store import CountyStore

    store = CountyStore(county.data / "county.sqlite")
    try:
        with store.db.read() as conn:
            rows = fleet.fleet(conn, county.data, int(time.time() * 1000), retired=True)
    finally:
        store.close()
    return {r["terminal"]: r["update"] for r in rows}


def _root_version(state_dir: Path) -> int:
    doc = json.loads((state_dir / "tuf" / "metadata" / "root.json").read_bytes())
    return int(doc["signed"]["version"])


@pytest.mark.slow
def test_after_rotate_targets_a_current_terminal_shows_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with updating_daemon(tmp_path, ROSTER) as run:
        county = run.county
        wait_for(
            lambda: _standing(county).get("t-daemon", {}).get("state") == "current",
            what="the county to hear the first set",
        )
        before = _standing(county)["t-daemon"]
        code, out, err = county_cli(
            capsys,
            "rotate",
            "--data",
            str(county.data),
            "--root-keys",
            str(tmp_path / "root-keys"),
            "targets",
        )
        assert code == 0, err
        # The terminal takes the rotated root (same content, nothing to apply) ...
        wait_for(
            lambda: _root_version(run.state_dir) == 2, what="the terminal to take the rotation"
        )
        after = _standing(county)["t-daemon"]
        # ... and is still current, though its set number is behind the county's.
        assert after["state"] == "current" and after["set"] == before["set"]
        assert after["county_set"] > after["set"]
        code, out, _ = county_cli(capsys, "applied", "--data", str(county.data), "--text")
        assert code == 0 and out.startswith(f"t-daemon: set {after['set']}, current,")
        assert "county is at" not in out
    # The daemon is stopped: a new roster leaves it behind, on the roster alone.
    (tmp_path / "roster2.csv").write_text(ROSTER.replace("Card holder", "Holder"), encoding="utf-8")
    with cu.CountyRepository(county.data) as repo:
        repo.publish_roster(tmp_path / "roster2.csv", run.now)
    behind = _standing(county)["t-daemon"]
    assert behind["state"] == "behind" and behind["differs"] == ["roster"]
    code, out, _ = county_cli(capsys, "applied", "--data", str(county.data), "--text")
    assert f"behind on roster (county is at {behind['county_set']})" in out


@pytest.mark.slow
def test_a_set_from_a_usb_medium_reaches_the_county(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from terminal import trust
    from terminal import updates as tu
    from terminal.commands.main import main as terminal_main
    from terminal.service import daemon

    now = int(time.time())
    county = make_county(tmp_path)
    cu.init_repository(county.data, tmp_path / "root-keys", now)
    (tmp_path / "trust.json").write_text(json.dumps([ISSUER.trust_entry()]), encoding="utf-8")
    (tmp_path / "roster.csv").write_text(ROSTER, encoding="utf-8")
    with cu.CountyRepository(county.data) as repo:
        repo.publish_trust(tmp_path / "trust.json", now)
        repo.publish_roster(tmp_path / "roster.csv", now)
    county.start()
    reader = ReaderPty()
    try:
        state_dir = tmp_path / "state"
        provision_terminal(county, state_dir, "t-daemon", "c-daemon")
        county.pin_root(state_dir)
        assert _standing(county)["t-daemon"]["state"] == "unknown"
        # The technician's USB stick: a copy of the county's repository, applied by command.
        usb = tmp_path / "usb"
        shutil.copytree(county.data / "updates" / "repository", usb / "repository")
        code = terminal_main(
            ["update", "apply", str(usb), "--state", str(state_dir), "--canteen", "c-daemon"]
        )
        capsys.readouterr()
        assert code == 0 and (state_dir / "updates" / "unrecorded.json").is_file()

        settings_path = write_settings(
            tmp_path, reader_port=reader.path, camera_source=None, extra=UPDATES_SYNC
        )
        # As 'canteen-terminal run' starts it: the set in force reconciled first.
        store = trust.TrustStore(state_dir / "trust.sqlite")
        try:
            note = tu.begin_start(state_dir, store)
        finally:
            store.close()
        assert note.ledger_draft() is not None
        d = daemon.Daemon(
            tu.effective_settings(settings_path, note),
            notifier=daemon.Notifier(""),
            config_path=str(settings_path),
            start_note=note,
        )
        thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        try:
            # The daemon records the set at its start; the next sync takes it to the county.
            wait_for(
                lambda: _standing(county)["t-daemon"]["state"] == "current",
                what="the USB set to reach the county",
            )
        finally:
            d.request_stop()
            thread.join(15)
    finally:
        county.stop()
        reader.close()
    standing = _standing(county)["t-daemon"]
    assert standing["via"] == "medium"
    recorded = [
        e for e in ledger_entries(state_dir / "ledger.sqlite") if e["kind"] == "config_applied"
    ]
    assert len(recorded) == 1
    assert recorded[0]["detail"]["via"] == "medium"
    assert not (state_dir / "updates" / "unrecorded.json").exists()


def test_update_standing_compares_content_part_by_part() -> None:
    content = {
        "settings": "s1",
        "trust": "t1",
        "roster": "r2",
        "directory": None,
        "revocations": "v1",
    }
    reported = {
        "settings": {"sha256": "s1"},
        "trust": {"sha256": "t1"},
        "roster": {"sha256": "r1"},
        "revocations": {"sha256": "v1"},
    }
    pub = fleet.Published(
        county_set=13,
        content=lambda canteen: content,
        applied={
            "t-behind": {"set": 12, "detail": reported},
            "t-current": {"set": 9, "detail": {**reported, "roster": {"sha256": "r2"}}},
            "t-back": {"set": 9, "detail": {"set": 9, "rolled_back_from": 12}},
        },
    )
    current = fleet.update_standing(pub, "t-current", "c1")
    assert (current["state"], current["set"], current["county_set"]) == ("current", 9, 13)
    behind = fleet.update_standing(pub, "t-behind", "c1")
    assert (behind["state"], behind["differs"]) == ("behind", ["roster"])
    back = fleet.update_standing(pub, "t-back", "c1")
    assert back["state"] == "behind" and back["rolled_back_from"] == 12
    assert fleet.update_standing(pub, "t-new", "c1")["state"] == "unknown"
    assert fleet.update_standing(None, "t-new", "c1")["state"] == "none"
