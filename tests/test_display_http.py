"""The screen server over real HTTP on 127.0.0.1: state, the event stream, staff actions.

Behind the staff endpoints is a real Checkout with a real ledger and trust
store, run on one worker thread as the daemon runs it (tests/displaykit.py).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import socket
import time
from pathlib import Path

import pytest
from conftest import wait_for
from displaykit import LUNCH, EventReader, Kit, wallet

from terminal.config import ConfigError
from terminal.display import settings as display_settings
from terminal.display import views
from terminal.display.server import Screen
from terminal.ledger import REVERSAL

PIN = "4821"


def test_state_has_settings_status_and_the_recent_decision(kit: Kit) -> None:
    status, snap = kit.get("/state")
    assert status == 200
    assert snap["language"] == "zh" and snap["timezone"] == "Asia/Shanghai"
    assert snap["status"]["state"] == "starting" and snap["decision"] is None
    kit.ready(canteen_name="城关\u202e镇\x00食堂")
    d = kit.terminal.present(wallet("C1", "张三").draw(LUNCH))
    _, snap = kit.get("/state")
    assert snap["status"]["state"] == "ready" and snap["status"]["online"] is True
    assert snap["status"]["canteen_name"] == "城关镇食堂"  # bidi override and NUL gone
    assert snap["status"]["meal_label"] == "午餐" and snap["status"]["settings_version"] == "7"
    assert snap["decision"]["seq"] == d.entry.seq and snap["decision"]["display_name"] == "张三"


def test_stream_gives_the_state_on_connect_then_each_decision(kit: Kit) -> None:
    kit.ready()
    reader = EventReader(kit)
    try:
        assert reader.status_line.startswith("HTTP/1.0 200")
        name, hello = reader.next()
        assert name == "hello" and hello["status"]["meal"] == "lunch"
        li = wallet("C2", "李四")
        sale = kit.terminal.present(li.draw(LUNCH))
        name, event = reader.next()
        assert name == "decision"
        assert event["seq"] == sale.entry.seq and event["verdict"] == "accept"
        assert (event["display_name"], event["meal_label"], event["amount_fen"]) == (
            "李四",
            "午餐",
            1000,
        )
        again = kit.terminal.present(li.draw(LUNCH + 1))  # same cadre, same meal
        name, event = reader.next()
        assert event["verdict"] == "reject" and event["reason"] == "already_served"
        assert event["seq"] == again.entry.seq
        assert event["reason_text"] == "本餐次已就餐" and "撤销" in event["reason_todo"]
        kit.ready(online=False)
        name, event = reader.next()
        assert name == "status" and event["online"] is False
    finally:
        reader.close()


def test_a_reconnecting_screen_gets_the_verdict_still_showing(kit: Kit) -> None:
    kit.terminal.present(wallet("C3").draw(LUNCH))
    reader = EventReader(kit)
    try:
        _, hello = reader.next()
        assert hello["decision"]["display_name"] == "cadre C3"
        assert 0 <= hello["decision_age_ms"] < 4000
    finally:
        reader.close()


def test_hostile_display_names_are_cleaned_before_they_leave(kit: Kit) -> None:
    reader = EventReader(kit)
    try:
        reader.next()
        kit.screen.show_decision(
            {
                "seq": 9,
                "verdict": "accept",
                "display_name": "<b>王\u202e五</b>\x1b[31m\u2028" + "x" * 100,
                "unit": ["not", "text"],
                "meal": "lunch",
                "amount_fen": True,
                "method": "telepathy",
                "at_ms": LUNCH * 1000,
            }
        )
        _, event = reader.next()
        name = event["display_name"]
        assert name.startswith("<b>王五</b>[31m") and len(name) == views.MAX_NAME
        assert not any(ch in name for ch in "\u202e\x1b\u2028")
        assert event["unit"] is None and event["amount_fen"] is None and event["method"] is None
    finally:
        reader.close()


def test_a_screen_that_stops_reading_never_blocks_the_daemon(tmp_path: Path) -> None:
    k = Kit(tmp_path / "state", client_queue=4)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", k.screen.port))
    stuck.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{k.screen.port}\r\n\r\n".encode())
    try:
        wait_for(lambda: k.screen.streams >= 1, what="the stuck stream")
        slowest = 0.0
        calls = 0
        sentence = "请恢复网络连接" * 28  # about 600 bytes an event
        while k.screen.dropped == 0:
            started = time.perf_counter()
            k.ready(sentence=sentence + str(calls))
            slowest = max(slowest, time.perf_counter() - started)
            calls += 1
            assert calls < 50_000, "the stuck screen was never dropped"
        assert slowest < 0.05, f"set_status waited {slowest:.3f} s on a screen"
        wait_for(lambda: k.screen.streams == 0, what="the stuck stream to be dropped")
        # A healthy screen connecting now gets the current state and the next decision.
        reader = EventReader(k)
        try:
            _, hello = reader.next()
            assert hello["status"]["sentence"].endswith(str(calls - 1))
            k.terminal.present(wallet("C4").draw(LUNCH))
            assert reader.next()[0] == "decision"
        finally:
            reader.close()
    finally:
        stuck.close()
        k.close()


def test_stop_ends_every_stream(kit: Kit) -> None:
    reader = EventReader(kit)
    reader.next()
    started = time.monotonic()
    kit.screen.stop()
    with pytest.raises((EOFError, OSError)):
        reader.next()
    assert time.monotonic() - started < 3
    reader.close()


def test_wrong_pins_are_refused_then_locked_out(tmp_path: Path) -> None:
    k = Kit(tmp_path / "state", staff_lockout_s=1)
    clock = [1000.0]
    k.screen.clock = lambda: clock[0]
    try:
        for left in (4, 3, 2, 1, 0):
            status, body, _ = k.post("/staff/open", {"pin": "0000"})
            assert (status, body["error"], body["tries_left"]) == (403, "wrong_pin", left)
        assert body["retry_after_s"] == 1
        status, body, head = k.post("/staff/open", {"pin": "0000"})
        assert (status, body["error"]) == (429, "locked") and head["Retry-After"] == "1"
        # Without a kiosk session, even the right PIN waits for the budget (test_display_guard).
        status, body, _ = k.post("/staff/open", {"pin": PIN})
        assert status == 429
        clock[0] += 1
        status, body, _ = k.post("/staff/open", {"pin": PIN})
        assert status == 200 and body["staff"] == "staff"
        status, body, _ = k.post("/staff/totals", {"pin": "9" * 100})
        assert status == 403 and body["tries_left"] == 0  # one try back per staff_lockout_s
    finally:
        k.close()


def test_staff_actions_are_off_without_a_pin(tmp_path: Path) -> None:
    k = Kit(tmp_path / "state", staff_pin="")
    try:
        status, body, _ = k.post("/staff/open", {"pin": ""})
        assert (status, body["error"]) == (403, "staff_off")
        assert k.get("/state")[1]["staff_enabled"] is False
    finally:
        k.close()


def test_reversal_with_the_pin_leaves_a_reversal_entry(kit: Kit) -> None:
    zhao = wallet("C5", "赵六")
    sale = kit.terminal.present(zhao.draw(LUNCH))
    status, body, _ = kit.post("/staff/open", {"pin": PIN})
    assert status == 200
    assert body["last_charge"]["seq"] == sale.entry.seq
    assert body["last_charge"]["display_name"] == "赵六"
    status, body, _ = kit.post("/staff/reverse", {"pin": PIN, "seq": sale.entry.seq})
    assert status == 200, body
    reversal = body["reversal"]
    assert reversal["sale_seq"] == sale.entry.seq and reversal["amount_fen"] == 1000
    assert body["last_charge"] is None
    lunch = next(m for m in body["totals"]["meals"] if m["meal"] == "lunch")
    assert (lunch["sales"], lunch["reversals"], lunch["net_fen"]) == (1, 1, 0)
    entries = kit.terminal.entries()
    stored = [e for e in entries if e.kind == REVERSAL]
    assert len(stored) == 1 and stored[0].seq == reversal["seq"]
    assert stored[0].ref_seq == sale.entry.seq and stored[0].detail == {"staff": "staff"}
    status, body, _ = kit.post("/staff/reverse", {"pin": PIN})
    assert (status, body["error"]) == (409, "nothing_to_reverse")
    status, body, _ = kit.post("/staff/reverse", {"pin": PIN, "seq": sale.entry.seq})
    assert (status, body["error"]) == (409, "no_such_sale")
    # The cadre may eat again now the charge is undone.
    assert kit.terminal.present(zhao.draw(LUNCH + 5)).accepted


def test_a_late_reversal_is_refused_for_county_it(kit: Kit) -> None:
    kit.terminal.present(wallet("C6").draw(LUNCH))
    kit.terminal.clock_ms += 11 * 60_000  # the setting allows 10 minutes
    status, body, _ = kit.post("/staff/reverse", {"pin": PIN})
    assert (status, body["error"]) == (409, "reversal_too_late")
    assert not [e for e in kit.terminal.entries() if e.kind == REVERSAL]


def test_day_summary_as_json_and_csv(kit: Kit) -> None:
    c7 = wallet("C7")
    kit.terminal.present(c7.draw(LUNCH))
    kit.terminal.present(wallet("V1", unit="elsewhere").draw(LUNCH))
    kit.terminal.present(c7.draw(LUNCH + 1))  # already served
    kit.terminal.present("CT1:not-a-code")
    status, summary, _ = kit.post("/staff/summary", {"pin": PIN})
    assert status == 200
    assert summary["refusals_by_reason"] == {"already_served": 1, "malformed": 1}
    assert summary["totals"]["net_fen"] == 2500 and summary["canteen_name"] == "示例机关食堂"
    status, raw, head = kit.post("/staff/summary.csv", {"pin": PIN})
    assert status == 200 and head["Content-Type"].startswith("text/csv")
    assert (
        head["Content-Disposition"] == 'attachment; filename="canteen-demo-terminal-2026-11-26.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    lunch = next(r for r in rows if r["meal"] == "lunch")
    total = rows[-1]
    assert (lunch["sales"], lunch["sales_fen"], lunch["refusals"]) == ("2", "2500", "1")
    assert (total["meal"], total["net_fen"], total["day"]) == ("total", "2500", "2026-11-26")
    assert {r["terminal_id"] for r in rows} == {"demo-terminal"}


def test_requests_from_elsewhere_or_malformed_are_refused(kit: Kit) -> None:
    assert kit.post("/staff/open", {"pin": PIN}, {"Host": "evil.example:80"})[0] == 421
    assert kit.post("/staff/open", {"pin": PIN}, {"Origin": "http://evil.example"})[0] == 421
    assert kit.post("/staff/open", b"pin=4821", {"Content-Type": "text/plain"})[0] == 415
    assert kit.post("/staff/open", b"{" + b" " * 5000 + b"}")[0] == 413
    assert kit.post("/staff/open", [PIN])[0] == 400
    assert kit.post("/staff/launch", {"pin": PIN})[0] == 404
    assert kit.get("/nothing")[0] == 404


def test_a_second_screen_on_a_taken_port_fails_loudly(kit: Kit) -> None:
    other = Screen(dataclasses.replace(kit.settings, port=kit.screen.port), kit.desk)
    with pytest.raises(OSError):
        other.start()


def test_display_settings_are_strict(tmp_path: Path) -> None:
    good = display_settings.load()
    assert (good.host, good.port, good.staff_pin, good.reversal_minutes) == (
        "127.0.0.1",
        8765,
        "",
        10,
    )
    cases = {
        "[display]\nstaf_pin = '1234'\n": "[display] staf_pin: unknown option",
        "[display]\nstaff_pin = 1234\n": "[display] staff_pin: must be digits in quotes",
        "[display]\nstaff_pin = '12a4'\n": "[display] staff_pin: must be 4 to 12 digits",
        "[display]\nhost = '0.0.0.0'\n": "[display] host: must be one of 127.0.0.1",
        "[display]\nsound = 1\n": "[display] sound: must be true or false",
        "[display]\nverdict_seconds = 0\n": "[display] verdict_seconds: must be at least 1",
        "[terminal]\nlanguage = 'en'\n[display]\nstaff_pin = '0042'\n": None,
    }
    for text, expected in cases.items():
        file = tmp_path / "terminal.toml"
        file.write_text(text, encoding="utf-8")
        if expected is None:
            loaded = display_settings.load(file)
            assert (loaded.language, loaded.staff_pin) == ("en", "0042")
            continue
        with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            display_settings.load(file)
