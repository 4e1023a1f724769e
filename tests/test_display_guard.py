"""The screen server against a hostile local process: PIN guessing, event slots, deep nesting.

Real HTTP on 127.0.0.1 to a real screen server over a real Checkout
(tests/displaykit.py). Only the PIN buckets' monotonic clock is moved by the
test, so an hour of guessing takes seconds. The kiosk's start page is opened
in Debian's Chromium (Playwright, headless), as the kiosk unit opens it.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL, Browser, wait_for
from displaykit import LUNCH, EventReader, Kit, wallet

from terminal.display.server import KIOSK_COOKIE, KIOSK_DIR_ENV

PIN = "4821"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
        wait_for(lambda: kit.screen.streams <= slots, what="the pushed-out streams to close")
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


# ---- the kiosk's start page: a session from the moment it starts, without a PIN ----


@pytest.fixture
def kiosk_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kit]:
    """A screen that writes its start page where canteen-terminal.service tells it to."""
    (tmp_path / "kiosk").mkdir(mode=0o750)
    monkeypatch.setenv(KIOSK_DIR_ENV, str(tmp_path / "kiosk"))
    old = os.umask(0o077)  # the daemon's (UMask= in canteen-terminal.service)
    try:
        k = Kit(tmp_path / "state", max_clients=3)
    finally:
        os.umask(old)
    k.ready()
    yield k
    k.close()


def start_url(kit: Kit) -> str:
    assert kit.screen.kiosk_page is not None
    page = kit.screen.kiosk_page.read_text()
    match = re.search(r'http-equiv="refresh" content="0; url=(http://[^"]+)"', page)
    assert match, page
    return match.group(1)


def get_raw(kit: Kit, target: str, method: str = "GET") -> tuple[int, dict[str, str]]:
    """(status, headers) of a GET that does not follow redirects."""
    conn = http.client.HTTPConnection("127.0.0.1", kit.screen.port, timeout=10)
    try:
        conn.request(method, target.removeprefix(kit.url.rstrip("/")))
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def test_the_start_page_token_gives_a_kiosk_session_once(kiosk_kit: Kit) -> None:
    clock = FakeClock()
    kiosk_kit.screen.clock = clock
    page = kiosk_kit.screen.kiosk_page
    assert page is not None and stat.S_IMODE(page.stat().st_mode) == 0o640
    first = start_url(kiosk_kit)
    assert first.startswith(kiosk_kit.url + "?kiosk=")
    # Another process has spent the shared PIN budget.
    for _ in range(kiosk_kit.settings.staff_tries):
        kiosk_kit.post("/staff/open", {"pin": "0000"})
    assert kiosk_kit.post("/staff/open", {"pin": PIN})[0] == 429
    # A HEAD does not spend it.
    status, head = get_raw(kiosk_kit, first, "HEAD")
    assert (status, head["Location"]) == (303, "/") and "Set-Cookie" not in head
    # The token, once: a session cookie and on to the plain page.
    status, head = get_raw(kiosk_kit, first)
    assert (status, head["Location"]) == (303, "/")
    cookie = cookie_from(head)
    # The session has its own budget: the right PIN is checked and lets staff in.
    assert kiosk_kit.post("/staff/open", {"pin": PIN}, {"Cookie": cookie})[0] == 200
    # Used, it is worth nothing; the start page already holds the next one.
    status, head = get_raw(kiosk_kit, first)
    assert (status, head["Location"]) == (303, "/") and "Set-Cookie" not in head
    second = start_url(kiosk_kit)
    assert second != first
    for wrong in (second[:-1], second + "x", kiosk_kit.url + "?kiosk=", kiosk_kit.url + "?kiosk"):
        status, head = get_raw(kiosk_kit, wrong)
        assert (status, head["Location"]) == (303, "/") and "Set-Cookie" not in head
    status, head = get_raw(kiosk_kit, second)
    assert status == 303 and cookie_from(head)


def test_no_kiosk_directory_no_token(kit: Kit) -> None:
    assert kit.screen.kiosk_page is None
    status, head = get_raw(kit, "/?kiosk=anything")
    assert (status, head["Location"]) == (303, "/") and "Set-Cookie" not in head


def test_a_missing_kiosk_directory_is_one_warning_and_the_screen_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Not created by the server: it must come from systemd-tmpfiles with the kiosk's group.
    monkeypatch.setenv(KIOSK_DIR_ENV, str(tmp_path / "kiosk"))
    k = Kit(tmp_path / "state")
    try:
        assert "cannot write the kiosk start page" in caplog.text
        assert not (tmp_path / "kiosk").exists()
        assert k.get("/state")[0] == 200
        assert get_raw(k, "/?kiosk=x")[0] == 303
    finally:
        k.close()


class Intruder:
    """A local process from boot on: wrong PINs without pause, event streams in a loop."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.stop = threading.Event()
        self.guesses = 0
        self.streams = 0
        self.thread = threading.Thread(target=self._run, name="intruder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        held: list[EventReader] = []
        while not self.stop.is_set():
            self.kit.post("/staff/open", {"pin": f"{self.guesses % 10000:04d}"})
            self.guesses += 1
            # Take every slot it can, and keep reconnecting: each new stream pushes out the
            # oldest stream without a kiosk session.
            try:
                held.append(EventReader(self.kit, timeout=2))
                self.streams += 1
            except OSError:
                pass
            while len(held) > self.kit.settings.max_clients:
                held.pop(0).close()
            self.stop.wait(0.02)  # the intruder's own pace, not a test's wait
        for reader in held:
            reader.close()


def test_a_fresh_kiosk_gets_its_feed_and_the_pin_while_a_process_attacks_from_boot(
    kiosk_kit: Kit, tmp_path: Path, browser: Browser
) -> None:
    from playwright.sync_api import expect

    kit = kiosk_kit
    intruder = Intruder(kit)
    try:
        wait_for(
            lambda: kit.post("/staff/open", {"pin": PIN})[0] == 429 and kit.screen.evicted >= 3,
            what="the intruder to get going",
        )
        # A fresh profile, as after a reboot: no cookie. The kiosk unit opens the
        # start page from the file.
        context = browser.new_context(viewport=SMALL)
        page: Any = context.new_page()
        page.clock.install(time=kit.terminal.clock_ms / 1000)
        assert kit.screen.kiosk_page is not None
        page.goto(kit.screen.kiosk_page.as_uri())
        page.wait_for_url(kit.url)  # the plain address, without the token
        expect(page.locator("#idle-meal")).to_have_text(re.compile(r"午餐|Lunch"))
        assert [c["name"] for c in context.cookies()] == [KIOSK_COOKIE]
        evicted = kit.screen.evicted
        sale = kit.terminal.present(wallet("K1", "李四").draw(LUNCH))
        expect(page.locator("body")).to_have_attribute("data-view", "accept")
        expect(page.locator("#verdict-who")).to_contain_text("李四")
        # The staff panel opens with the right PIN, through the page's own pad.
        page.locator("#staff-button").click()
        for digit in PIN:
            page.locator(f'#pin-pad button[data-key="{digit}"]').click()
        page.locator("#pin-ok").click()
        expect(page.locator("#panel-view")).to_be_visible()
        expect(page.locator("#last-charge")).to_contain_text("李四")
        # All the while the intruder kept reconnecting and is still locked out.
        wait_for(lambda: kit.screen.evicted >= evicted + 3, what="the intruder to reconnect")
        assert kit.post("/staff/open", {"pin": PIN})[0] == 429
        assert sale.entry.seq > 0
    finally:
        intruder.stop.set()
        intruder.thread.join(timeout=10)
