"""The real daemon with simulated devices, its screen in Debian's Chromium (Playwright).

A phone is shown to hw-sim's camera and cards are swiped on hw-sim's reader; the daemon
decides, commits, and only then the page shows the verdict. Staff reverse a sale with
the PIN and are refused with a wrong one. Screenshots at 800x480 go to
test-artifacts/daemon/ (or $TEST_ARTIFACTS/daemon).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL, shot, wait_for
from daemonkit import PIN, install_sim_lists, write_settings
from hwsim import population as pop
from hwsim.camera import CameraSim
from hwsim.reader import ReaderSim

from terminal import config, ledger
from terminal.service import daemon

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect


@dataclass
class Canteen:
    daemon: daemon.Daemon
    camera: CameraSim
    reader: ReaderSim
    population: pop.Population
    book: Path


@pytest.fixture
def canteen(tmp_path: Path) -> Iterator[Canteen]:
    now = int(time.time())
    population = pop.make_population(
        now=now - 3600, cadres=6, units=["own"], cards_fraction=0.5, seed="browser"
    )
    pop.write_population(population, tmp_path / "sim")
    install_sim_lists(tmp_path / "sim", tmp_path / "state", now)
    camera = CameraSim(port=0, fps=10, hold_s=1.0, lifetime_s=300).start()
    reader = ReaderSim("rdm6300", tmp_path / "reader", lifetime_s=300).start()
    settings = write_settings(tmp_path, reader_port=str(reader.link), camera_source=camera.url)
    d = daemon.Daemon(config.load(settings), notifier=daemon.Notifier(""))
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: d.state == daemon.READY, what="the daemon to be ready")
        yield Canteen(d, camera, reader, population, tmp_path / "state" / "ledger.sqlite")
    finally:
        d.request_stop()
        thread.join(15)
        camera.stop()
        reader.stop()
    assert ledger.verify_file(tmp_path / "state" / "ledger.sqlite").ok


def open_page(browser: Any, c: Canteen) -> Any:
    page = browser.new_page(viewport=SMALL)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(c.daemon.screen.url)
    expect(page.locator("#canteen")).to_have_text("Test canteen")
    return page


def test_a_phone_at_the_camera_appears_on_the_page(browser: Any, canteen: Canteen) -> None:
    page = open_page(browser, canteen)
    shot(page, "idle-800x480", "daemon")
    cadre = canteen.population.cadres[0]
    canteen.camera.show(cadre.wallet.draw(int(time.time())), wait=False)
    expect(page.locator("body")).to_have_attribute("data-view", "accept", timeout=15000)
    expect(page.locator("#verdict-who")).to_contain_text(cadre.display_name)
    expect(page.locator("#verdict-what")).to_contain_text("¥10.00")
    shot(page, "accept-800x480", "daemon")
    # The page showed it only after the commit: the entry is in the ledger now.
    assert ledger.stats_file(canteen.book)["by_verdict"].get("accept") == 1
    assert page.errors == []


def test_a_refused_card_shows_its_reason(browser: Any, canteen: Canteen) -> None:
    page = open_page(browser, canteen)
    canteen.reader.swipe(bytes.fromhex("00deadbeef"))
    expect(page.locator("body")).to_have_attribute("data-view", "reject", timeout=15000)
    expect(page.locator("#verdict-title")).to_have_text("Card not registered")
    expect(page.locator("#verdict-todo")).to_contain_text("Use the phone code")
    shot(page, "refusal-800x480", "daemon")


def enter_pin(page: Any, pin: str) -> None:
    page.locator("#staff-button").click()
    expect(page.locator("#pin-view")).to_be_visible()
    for digit in pin:
        page.locator(f'#pin-pad button[data-key="{digit}"]').click()
    page.locator("#pin-ok").click()


def test_staff_reverse_with_the_pin_and_a_wrong_pin_is_refused(
    browser: Any, canteen: Canteen
) -> None:
    page = open_page(browser, canteen)
    card = canteen.population.cards()[0]
    canteen.reader.swipe(card.card_uid or b"")
    expect(page.locator("body")).to_have_attribute("data-view", "accept", timeout=15000)
    enter_pin(page, "0000")
    expect(page.locator("#pin-message")).to_contain_text("4")  # tries left
    expect(page.locator("#panel-view")).to_be_hidden()
    shot(page, "staff-wrong-pin-800x480", "daemon")
    page.reload()
    expect(page.locator("#canteen")).to_have_text("Test canteen")
    enter_pin(page, PIN)
    expect(page.locator("#panel-view")).to_be_visible()
    expect(page.locator("#last-charge")).to_contain_text(card.display_name)
    page.locator("#reverse-button").click()
    page.locator("#reverse-yes").click()
    expect(page.locator("body")).to_have_attribute("data-reversal", "done", timeout=10000)
    shot(page, "staff-reversed-800x480", "daemon")
    wait_for(
        lambda: ledger.stats_file(canteen.book)["by_kind"].get("reversal") == 1,
        what="the reversal entry",
    )
