"""The screen server against a hostile local process: PIN guessing, event slots, deep nesting.

Real HTTP on 127.0.0.1 to a real screen server over a real Checkout
(tests/displaykit.py). Only the PIN buckets' monotonic clock is moved by the
test, so an hour of guessing takes seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from displaykit import LUNCH, EventReader, Kit, wallet

from terminal.display.server import KIOSK_COOKIE

PIN = "4821"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path / "state")
    yield k
    k.close()


def cookie_from(head: dict[str, str]) -> str:
    """The kiosk session cookie the browser would keep, as it sends it back."""
    value = head["Set-Cookie"].split(";", 1)[0]
    assert value.startswith(KIOSK_COOKIE + "=")
    attributes = head["Set-Cookie"].lower()
    assert "httponly" in attributes and "samesite=strict" in attributes
    return value


def test_an_hour_of_guessing_is_bounded_and_the_kiosk_still_gets_in(kit: Kit) -> None:
    clock = FakeClock()
    kit.screen.clock = clock
    # Earlier that day staff opened the panel at the kiosk: its browser keeps the session.
    status, _, head = kit.post("/staff/open", {"pin": PIN})
    assert status == 200
    kiosk = cookie_from(head)
    checked = 0  # guesses the server compared with the PIN
    kiosk_opened = 0
    started = clock.now
    step_s = 5.0
    while clock.now < started + 3600:
        status, body, _ = kit.post("/staff/open", {"pin": f"{checked % 10000:04d}"[::-1]})
        if status == 403:
            assert body["error"] == "wrong_pin"
            checked += 1
        else:
            assert (status, body["error"]) == (429, "locked")
        if int(clock.now - started) % 600 == 0:
            # Every ten minutes of the attack, staff at the kiosk open the panel.
            status, body, _ = kit.post("/staff/open", {"pin": PIN}, {"Cookie": kiosk})
            assert status == 200 and body["staff"] == "staff"
            kiosk_opened += 1
        clock.now += step_s
    # staff_tries (5) at once, then one per staff_lockout_s (60 s): 65 an hour at most.
    tries, refill = kit.settings.staff_tries, kit.settings.staff_lockout_s
    assert checked <= tries + 3600 / refill
    assert checked >= 3600 / refill - 1  # bounded, not shut: the budget refills
    assert kiosk_opened == 6
    # A forged or foreign session cookie is the shared budget, which is spent.
    status, _, _ = kit.post("/staff/open", {"pin": PIN}, {"Cookie": f"{KIOSK_COOKIE}=ab.cd"})
    assert status == 429


def test_the_kiosk_session_has_its_own_bounded_budget(kit: Kit) -> None:
    clock = FakeClock()
    kit.screen.clock = clock
    status, _, head = kit.post("/staff/open", {"pin": PIN})
    kiosk = cookie_from(head)
    for left in (4, 3, 2, 1, 0):
        status, body, _ = kit.post("/staff/open", {"pin": "0000"}, {"Cookie": kiosk})
        assert (status, body["tries_left"]) == (403, left)
    assert body["retry_after_s"] == 60
    status, body, head = kit.post("/staff/open", {"pin": "0000"}, {"Cookie": kiosk})
    assert (status, body["error"]) == (429, "locked") and head["Retry-After"] == "60"
    # Someone at the kiosk guessing does not spend the budget of other clients...
    status, _, _ = kit.post("/staff/open", {"pin": PIN})
    assert status == 200
    # ...and the kiosk waits for its budget like anyone else, then a right PIN refills it.
    assert kit.post("/staff/open", {"pin": PIN}, {"Cookie": kiosk})[0] == 429
    clock.now += 60
    assert kit.post("/staff/open", {"pin": PIN}, {"Cookie": kiosk})[0] == 200
    status, body, _ = kit.post("/staff/open", {"pin": "0000"}, {"Cookie": kiosk})
    assert body["tries_left"] == 4


def test_a_process_holding_every_event_slot_does_not_keep_the_kiosk_out(kit: Kit) -> None:
    kit.ready()
    _, _, head = kit.post("/staff/open", {"pin": PIN})
    kiosk_cookie = cookie_from(head)
    slots = kit.settings.max_clients
    hogs = [EventReader(kit) for _ in range(slots)]
    readers = list(hogs)
    try:
        for hog in hogs:
            assert hog.next()[0] == "hello"
        # The kiosk's page with its session: it gets a stream and the next verdict.
        kiosk = EventReader(kit, cookie=kiosk_cookie)
        readers.append(kiosk)
        assert kiosk.status_line.split()[1] == "200"
        assert kiosk.next()[0] == "hello"
        # The hog reconnects again and again: the kiosk's stream stays.
        for _ in range(2 * slots):
            hog = EventReader(kit)
            readers.append(hog)
            assert hog.status_line.split()[1] == "200"
            hog.next()
        deadline = time.monotonic() + 5
        while kit.screen.streams > slots:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sale = kit.terminal.present(wallet("G1").draw(LUNCH))
        name, event = kiosk.next(skip=("ping", "status"))
        assert (name, event["seq"]) == ("decision", sale.entry.seq)
        # A page without a session (a kiosk nobody has unlocked yet) still gets in:
        # the newest stream pushes out the oldest one without a session.
        fresh = EventReader(kit)
        readers.append(fresh)
        assert fresh.status_line.split()[1] == "200" and fresh.next()[0] == "hello"
    finally:
        for r in readers:
            r.close()


def test_when_every_slot_is_a_kiosk_session_a_stranger_is_refused(tmp_path: Path) -> None:
    k = Kit(tmp_path / "state", max_clients=2)
    try:
        _, _, head = k.post("/staff/open", {"pin": PIN})
        cookie = cookie_from(head)
        kiosks = [EventReader(k, cookie=cookie) for _ in range(2)]
        stranger = EventReader(k)
        try:
            assert stranger.status_line.split()[1] == "503"
            for kiosk in kiosks:
                assert kiosk.next()[0] == "hello"
        finally:
            stranger.close()
            for kiosk in kiosks:
                kiosk.close()
    finally:
        k.close()


def test_a_body_nested_2000_deep_gets_400_and_no_traceback(
    kit: Kit, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for body in (b"[" * 2000 + b"]" * 2000, b'{"pin":' + b"[" * 2000 + b"]" * 2000 + b"}"):
        status, answer, _ = kit.post("/staff/open", body)
        assert (status, answer["error"]) == (400, "bad_request")
        assert "\n" not in answer["message"]
    # The server still answers, and nothing printed or logged a traceback.
    assert kit.post("/staff/open", {"pin": PIN})[0] == 200
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info]
